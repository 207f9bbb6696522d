//! Retention on the core's side: which finished jobs go, picked on the tick
//! in bounded batches from the index of finished jobs (`JobIndex::finished_before`),
//! dropped from memory and the indexes at once; the store's records are
//! deleted by the background [`crate::retention::Retirer`].

use super::*;

/// Jobs retired per tick at most (the tick is 200 ms).
pub(super) const RETIRE_BATCH: usize = 500;
/// Candidates looked at per tick at most (finished children of live parents are passed over).
const RETIRE_SCAN: usize = 4 * RETIRE_BATCH;
/// Jobs handed to the retirer and not yet deleted, past which the core waits.
const RETIRE_BACKLOG: usize = 4 * RETIRE_BATCH;
/// The meta counter: every retired job's id is below it.
pub(super) const RETIRED_BELOW: &str = "retired_below";

impl Core {
    /// On the tick: finished jobs that ended longer than `--retain` ago leave
    /// memory now and the store in the background. Never a live job, and never
    /// a finished child of a live parent (the parent's counts read it).
    pub(super) fn retire_finished(&mut self, step: &mut Step) {
        let Some(retain) = self.cfg.retain else {
            return;
        };
        if self.retirer.queued() > RETIRE_BACKLOG {
            return;
        }
        let cutoff = self.now.saturating_sub(retain.as_millis() as i64);
        let candidates = match self.store.finished_before(cutoff, RETIRE_SCAN) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "reading the finished-jobs index failed");
                return;
            }
        };
        let mut gone = Vec::new();
        let mut keys = Vec::new();
        for id in candidates {
            if gone.len() >= RETIRE_BATCH {
                break;
            }
            if self.retirer.retiring(id) {
                continue;
            }
            let Some(job) = self.job_record(id) else {
                continue;
            };
            let live = |id: &str| {
                id.parse::<u64>()
                    .ok()
                    .and_then(|p| self.jobs.get(&p))
                    .is_some_and(|p| !p.job.state().is_terminal())
            };
            // Live jobs are all in memory: a parent not there has finished.
            if !job.state().is_terminal()
                || live(&job.parent)
                || job.children.iter().any(|c| live(c))
            {
                continue;
            }
            gone.push(id);
            keys.extend(job.spec.as_ref().map(|s| s.dedup_key.clone()));
        }
        if gone.is_empty() {
            return;
        }
        for &id in &gone {
            self.drop_job(id);
            self.retired_below = self.retired_below.max(id + 1);
        }
        for key in keys {
            if self
                .dedup
                .get(&key)
                .is_some_and(|&(d, _)| gone.contains(&d))
            {
                self.dedup.remove(&key);
            }
        }
        step.writes.put_meta(RETIRED_BELOW, self.retired_below);
        tracing::info!(
            jobs = gone.len(),
            retired_below = self.retired_below,
            "retiring finished jobs older than --retain"
        );
        // The deletes go after this turn's writes (the counter first), from
        // the retirer's thread.
        let retirer = self.retirer.reserve(&gone);
        step.after.push(Box::new(move |ok| {
            if ok {
                retirer.send(gone);
            } else {
                retirer.cancel(&gone);
            }
        }));
    }
}

impl Core {
    /// On the tick: dedup keys older than the dedup window leave memory and
    /// the store (so a start reads only the keys of the window).
    pub(super) fn prune_dedup(&mut self, step: &mut Step) {
        let cutoff = self.now - self.cfg.dedup_window.as_millis() as i64;
        while self
            .dedup_order
            .front()
            .is_some_and(|(at, _)| *at <= cutoff)
        {
            let Some((at, key)) = self.dedup_order.pop_front() else {
                break;
            };
            if self.dedup.get(&key).is_some_and(|&(_, a)| a == at) {
                self.dedup.remove(&key);
                step.writes.remove_dedup(&key);
            }
        }
    }

    /// At load: only the keys within the window stay, in `dedup_order`;
    /// the others leave the store too (`w`: a store an older version wrote
    /// keeps every key until its job is retired).
    pub(super) fn prune_dedup_at_load(&mut self, w: &mut WriteSet) {
        let cutoff = self.now - self.cfg.dedup_window.as_millis() as i64;
        self.dedup.retain(|key, &mut (_, at)| {
            let keep = at > cutoff;
            if !keep {
                w.remove_dedup(key);
            }
            keep
        });
        let mut order: Vec<(i64, String)> = self
            .dedup
            .iter()
            .map(|(key, &(_, at))| (at, key.clone()))
            .collect();
        order.sort();
        self.dedup_order = order.into();
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::*;
    use msfleet_proto::{JobState::*, Outcome};
    use std::time::Duration;

    const HOUR: i64 = 3_600_000;

    fn retain_1h(c: &mut crate::Config) {
        c.retain = Some(Duration::from_secs(3600));
        c.lease_timeout = Duration::from_secs(3 * 3600);
    }

    /// Runs one job on `a` with one test result; returns its id.
    fn run_one(h: &mut Harness, a: &mut Conn, nodeid: &str) -> String {
        let job = h.submit(spec()).unwrap();
        let r = h.assignments(a)[0].attempt.clone().unwrap();
        h.update(a, &r, 1, started());
        h.update(a, &r, 2, test_result(nodeid, "passed"));
        h.update(a, &r, 3, finished(Outcome::Passed));
        assert_eq!(h.state(&job.id), Passed);
        job.id
    }

    fn history_of(h: &Harness, nodeid: &str) -> Vec<String> {
        h.core()
            .store
            .test_history(nodeid, "", 100)
            .unwrap()
            .into_iter()
            .map(|r| r.job_id)
            .collect()
    }

    /// A finished job older than --retain goes (memory, events, test
    /// history) and answers NotFound saying why; a recent finished job and a
    /// live one stay; all of it holds after a restart, and ids are not reused.
    #[test]
    fn old_finished_jobs_go_and_live_and_recent_ones_stay_across_a_restart() {
        let mut h = Harness::with(retain_1h);
        let mut a = h.register("a1", "cpu", 1);
        let old = run_one(&mut h, &mut a, "t.py::test_a");
        assert_eq!(history_of(&h, "t.py::test_a"), vec![old.clone()]);
        h.advance(2 * HOUR);
        h.heartbeat(&a, Vec::new());
        let recent = run_one(&mut h, &mut a, "t.py::test_a");
        let live = h.submit(spec()).unwrap().id;
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.update(&mut a, &r, 1, started());
        let queued = h.submit(spec()).unwrap().id;
        h.tick();
        let err = h
            .call(|reply| super::Command::GetJob {
                id: old.clone(),
                reply,
            })
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(
            err.message(),
            format!(
                "no job with id '{old}': it finished more than 1h ago and was deleted (msched --retain)"
            )
        );
        let listed: Vec<String> = h.jobs().into_iter().map(|j| j.id).collect();
        assert_eq!(listed, vec![queued.clone(), live.clone(), recent.clone()]);
        // The store's records go in the background; a restart waits for them.
        h.reload();
        assert!(h.events(&old).is_empty(), "its events are gone");
        assert_eq!(history_of(&h, "t.py::test_a"), vec![recent.clone()]);
        assert_eq!(h.state(&recent), Passed);
        assert_eq!(h.state(&live), Running);
        assert_eq!(h.state(&queued), Queued);
        h.tick();
        let listed: Vec<String> = h.jobs().into_iter().map(|j| j.id).collect();
        assert_eq!(listed, vec![queued.clone(), live.clone(), recent.clone()]);
        // Later the recent one ages out too; the live ones never do.
        h.advance(3 * HOUR);
        h.tick();
        let listed: Vec<String> = h.jobs().into_iter().map(|j| j.id).collect();
        assert_eq!(listed, vec![queued.clone(), live.clone()]);
        let q = h
            .call(|reply| super::Command::ListQueues { reply })
            .unwrap();
        let default = q.iter().find(|q| q.name == "default").unwrap();
        assert_eq!((default.pending, default.running), (1, 1));
        let next = h.submit(spec()).unwrap().id;
        assert!(next.parse::<u64>().unwrap() > queued.parse::<u64>().unwrap());
    }

    /// `retain: None` (`--retain off`) keeps every job.
    #[test]
    fn retention_off_keeps_every_job() {
        let mut h = Harness::with(|c| {
            c.retain = None;
            c.lease_timeout = Duration::from_secs(3 * 3600);
        });
        let mut a = h.register("a1", "cpu", 1);
        let old = run_one(&mut h, &mut a, "t.py::test_a");
        h.advance(100 * 24 * HOUR);
        h.tick();
        assert_eq!(h.state(&old), Passed);
    }

    /// A finished child of a live fan-out parent stays (the parent's counts
    /// read it) until the parent has finished too.
    #[test]
    fn a_finished_child_of_a_live_parent_stays() {
        let mut h = Harness::with(retain_1h);
        let mut a = h.register("a1", "cpu", 1);
        let mut b = h.register("b1", "gpu", 1);
        let mut s = spec();
        s.fanout = "each-profile".into();
        let parent = h.submit(s).unwrap();
        let got_a = h.assignments(&mut a);
        let got_b = h.assignments(&mut b);
        assert_eq!((got_a.len(), got_b.len()), (1, 1));
        let ra = got_a[0].attempt.clone().unwrap();
        h.finish(&mut a, &ra, Outcome::Passed);
        h.advance(2 * HOUR);
        h.heartbeat(&a, Vec::new());
        let rb = got_b[0].attempt.clone().unwrap();
        h.heartbeat(&b, vec![rb.clone()]);
        h.tick();
        assert_eq!(h.state(&got_a[0].job_id), Passed, "kept: its parent runs");
        h.finish(&mut b, &rb, Outcome::Passed);
        assert_eq!(h.state(&parent.id), Passed);
        h.advance(2 * HOUR);
        h.heartbeat(&a, Vec::new());
        h.heartbeat(&b, Vec::new());
        h.tick();
        assert!(h.jobs().is_empty(), "{:?}", h.jobs());
    }

    /// Dedup keys leave memory once their window has passed (a tick), also
    /// those loaded at a start; inside the window they still dedup.
    #[test]
    fn dedup_keys_are_forgotten_after_their_window() {
        let mut h = Harness::with(|c| c.dedup_window = Duration::from_secs(3600));
        let mut s = spec();
        s.dedup_key = "nightly".into();
        let first = h.submit(s.clone()).unwrap();
        h.advance(HOUR / 2);
        let mut t = spec();
        t.dedup_key = "other".into();
        h.submit(t).unwrap();
        h.reload();
        assert_eq!(h.core().dedup.len(), 2);
        assert!(h.submit(s.clone()).unwrap().deduplicated);
        h.advance(HOUR / 2);
        h.tick();
        assert_eq!(h.core().dedup.len(), 1, "the first key's window has passed");
        let again = h.submit(s).unwrap();
        assert!(!again.deduplicated);
        assert_ne!(again.id, first.id);
        let stored = |h: &Harness| h.core().store.load().unwrap().dedup.len();
        assert_eq!(stored(&h), 2, "the store holds the keys of the window");
        h.advance(2 * HOUR);
        h.reload();
        assert_eq!(
            h.core().dedup.len(),
            0,
            "a start skips keys past their window"
        );
        assert_eq!(stored(&h), 0, "and leaves them out of the store");
        let mut u = spec();
        u.dedup_key = "third".into();
        h.submit(u).unwrap();
        assert_eq!(stored(&h), 1);
        h.advance(2 * HOUR);
        h.tick();
        assert_eq!(stored(&h), 0, "a tick past its window removes it");
    }
}
