//! Pending-job order: priority first, FIFO within a priority, and aging so that
//! a low-priority job cannot starve.
//!
//! Aging raises a job's effective priority by one for every `aging` interval it
//! waits: `effective(t) = priority + (t - submitted) / aging`. Comparing two
//! jobs at the same time `t`, the `t` cancels out, so the order is fixed at
//! submit time by `rank = priority * aging - submitted` (higher runs first) and
//! a plain ordered set serves it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A job's place in the pending order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Slot {
    rank: Reverse<i128>,
    job: u64,
}

/// All pending jobs of all queues, in dispatch order.
#[derive(Debug, Default)]
pub struct PendingQueue {
    order: BTreeSet<Slot>,
    slots: HashMap<u64, (Slot, String)>,
    per_queue: BTreeMap<String, u64>,
}

impl PendingQueue {
    /// Adds `job`. `aging_ms` is the wait that is worth one priority step.
    pub fn push(&mut self, job: u64, queue: &str, priority: i32, submitted_ms: i64, aging_ms: u64) {
        self.remove(job);
        let rank = i128::from(priority) * i128::from(aging_ms.max(1)) - i128::from(submitted_ms);
        let slot = Slot {
            rank: Reverse(rank),
            job,
        };
        self.order.insert(slot);
        self.slots.insert(job, (slot, queue.to_string()));
        *self.per_queue.entry(queue.to_string()).or_default() += 1;
    }

    /// Removes `job`; returns whether it was pending.
    pub fn remove(&mut self, job: u64) -> bool {
        let Some((slot, queue)) = self.slots.remove(&job) else {
            return false;
        };
        self.order.remove(&slot);
        if let Some(n) = self.per_queue.get_mut(&queue) {
            *n = n.saturating_sub(1);
        }
        true
    }

    /// Pending job ids, first to run first.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.order.iter().map(|s| s.job)
    }

    pub fn contains(&self, job: u64) -> bool {
        self.slots.contains_key(&job)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// How many jobs of `queue` are pending.
    pub fn pending_in(&self, queue: &str) -> u64 {
        self.per_queue.get(queue).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn higher_priority_first_then_fifo() {
        let mut q = PendingQueue::default();
        q.push(1, "default", 0, 1_000, MIN);
        q.push(2, "default", 5, 2_000, MIN);
        q.push(3, "default", 0, 3_000, MIN);
        q.push(4, "nightly", 5, 4_000, MIN);
        assert_eq!(q.iter().collect::<Vec<_>>(), vec![2, 4, 1, 3]);
        assert_eq!(q.pending_in("default"), 3);
        assert!(q.remove(2));
        assert!(!q.remove(2));
        assert_eq!(q.pending_in("default"), 2);
        assert_eq!(q.iter().collect::<Vec<_>>(), vec![4, 1, 3]);
    }

    #[test]
    fn a_low_priority_job_overtakes_newer_high_priority_work_once_it_has_aged() {
        let mut q = PendingQueue::default();
        // priority 0 submitted at t=0; one step per minute.
        q.push(1, "default", 0, 0, MIN);
        // 2 priority steps higher, submitted 1 min later: still ahead.
        q.push(2, "default", 2, MIN as i64, MIN);
        // 2 steps higher but submitted 3 min later: the old job has aged past it.
        q.push(3, "default", 2, 3 * MIN as i64, MIN);
        assert_eq!(q.iter().collect::<Vec<_>>(), vec![2, 1, 3]);
    }
}
