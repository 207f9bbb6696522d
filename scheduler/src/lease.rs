//! The lease table: which attempt of which task each agent holds.
//!
//! Invariant (enforced here and nowhere else): a task has at most one live
//! attempt, identified by (attempt, epoch). Epochs come from one counter that
//! only grows, so an update that names an older epoch is stale by construction.
//! A lease is renewed by any message from its agent and expires when the agent
//! has been silent for longer than the lease timeout.

use crate::clip;
use msfleet_proto::AttemptRef;
use std::collections::{BTreeSet, HashMap};

/// One live attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub agent: String,
    pub attempt: u32,
    pub epoch: u64,
}

/// Why an agent's message about a task was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("task {0} has no live attempt (unknown task, or it already finished)")]
    NoLiveAttempt(String),
    #[error("stale attempt {given}: the live attempt of task {task} is #{attempt}@{epoch}")]
    Stale {
        task: String,
        given: String,
        attempt: u32,
        epoch: u64,
    },
    #[error("attempt {given} is leased to agent '{owner}', not to '{caller}'")]
    NotYours {
        given: String,
        owner: String,
        caller: String,
    },
}

/// Live attempts by task and by agent.
#[derive(Debug, Default)]
pub struct LeaseTable {
    by_task: HashMap<u64, Lease>,
    by_agent: HashMap<String, BTreeSet<u64>>,
}

impl LeaseTable {
    /// Records a new live attempt of `task`, replacing nothing: the caller must
    /// have released the previous one.
    pub fn grant(&mut self, task: u64, lease: Lease) {
        debug_assert!(
            !self.by_task.contains_key(&task),
            "two live attempts of one task"
        );
        self.by_agent
            .entry(lease.agent.clone())
            .or_default()
            .insert(task);
        self.by_task.insert(task, lease);
    }

    /// Ends the live attempt of `task`, if any.
    pub fn release(&mut self, task: u64) -> Option<Lease> {
        let lease = self.by_task.remove(&task)?;
        if let Some(set) = self.by_agent.get_mut(&lease.agent) {
            set.remove(&task);
            if set.is_empty() {
                self.by_agent.remove(&lease.agent);
            }
        }
        Some(lease)
    }

    pub fn get(&self, task: u64) -> Option<&Lease> {
        self.by_task.get(&task)
    }

    /// Tasks leased to `agent`.
    pub fn held_by(&self, agent: &str) -> Vec<u64> {
        self.by_agent
            .get(agent)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn count_held_by(&self, agent: &str) -> usize {
        self.by_agent.get(agent).map_or(0, BTreeSet::len)
    }

    /// Checks that `r` names the live attempt of `task` and that `agent` holds it.
    pub fn check(&self, task: u64, r: &AttemptRef, agent: &str) -> Result<&Lease, LeaseError> {
        let lease = self
            .by_task
            .get(&task)
            .ok_or_else(|| LeaseError::NoLiveAttempt(clip(&r.task_id).into_owned()))?;
        if lease.attempt != r.attempt || lease.epoch != r.epoch {
            return Err(LeaseError::Stale {
                task: clip(&r.task_id).into_owned(),
                given: clip(&r.display()).into_owned(),
                attempt: lease.attempt,
                epoch: lease.epoch,
            });
        }
        if lease.agent != agent {
            return Err(LeaseError::NotYours {
                given: clip(&r.display()).into_owned(),
                owner: lease.agent.clone(),
                caller: agent.to_string(),
            });
        }
        Ok(lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(attempt: u32, epoch: u64) -> AttemptRef {
        AttemptRef {
            task_id: "1".into(),
            attempt,
            epoch,
        }
    }

    #[test]
    fn only_the_live_attempt_of_the_owner_passes() {
        let mut t = LeaseTable::default();
        t.grant(
            1,
            Lease {
                agent: "a".into(),
                attempt: 2,
                epoch: 9,
            },
        );
        assert!(t.check(1, &r(2, 9), "a").is_ok());
        assert!(matches!(
            t.check(1, &r(1, 4), "a"),
            Err(LeaseError::Stale { .. })
        ));
        assert!(matches!(
            t.check(1, &r(2, 9), "b"),
            Err(LeaseError::NotYours { .. })
        ));
        assert!(matches!(
            t.check(2, &r(2, 9), "a"),
            Err(LeaseError::NoLiveAttempt(_))
        ));
        assert_eq!(t.held_by("a"), vec![1]);
        t.release(1);
        assert!(t.held_by("a").is_empty());
        assert!(matches!(
            t.check(1, &r(2, 9), "a"),
            Err(LeaseError::NoLiveAttempt(_))
        ));
    }
}
