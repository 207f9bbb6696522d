//! Maintained indexes over the jobs, so that the reads users make (`ListJobs`,
//! `ListQueues`, the metrics' gauges) do not walk every job on the core
//! thread: job ids by state, queue and submitter (for listing newest first,
//! from a cursor), and job counts per queue and state (fan-out parents apart:
//! they run nothing themselves). `Core::set_state`, the one transition
//! function, keeps them in step; `new_job`, the load and retention add and
//! drop jobs.

use super::*;

#[derive(Default)]
pub(super) struct JobIndex {
    by_state: HashMap<i32, BTreeSet<u64>>,
    by_queue: HashMap<String, BTreeSet<u64>>,
    by_submitter: HashMap<String, BTreeSet<u64>>,
    /// (queue, state) -> jobs, fan-out parents not counted.
    counts: HashMap<(String, i32), u64>,
    /// (end, id) of the finished jobs, oldest first: retention's candidates.
    finished: BTreeSet<(i64, u64)>,
}

/// What the index files a job under.
struct Keys<'a> {
    state: i32,
    queue: &'a str,
    submitter: &'a str,
    parent: bool,
    /// When it ended, if it did.
    ended: Option<i64>,
}

fn keys(job: &Job, state: i32) -> Keys<'_> {
    Keys {
        state,
        queue: job.spec.as_ref().map_or("default", |s| s.queue.as_str()),
        submitter: &job.submitted_by,
        parent: jobs::is_fanout_parent(job),
        ended: JobState::try_from(state)
            .is_ok_and(|s| s.is_terminal())
            .then_some(job.finished_at_ms),
    }
}

impl JobIndex {
    pub(super) fn add(&mut self, id: u64, job: &Job) {
        self.file(id, keys(job, job.state));
    }

    pub(super) fn remove(&mut self, id: u64, job: &Job) {
        self.unfile(id, keys(job, job.state));
    }

    /// Finished jobs that ended before `cutoff`, oldest first, at most `n`.
    pub(super) fn finished_before(&self, cutoff: i64, n: usize) -> Vec<u64> {
        self.finished
            .range(..(cutoff, 0))
            .take(n)
            .map(|&(_, id)| id)
            .collect()
    }

    fn file(&mut self, id: u64, k: Keys<'_>) {
        self.by_state.entry(k.state).or_default().insert(id);
        self.by_queue
            .entry(k.queue.to_string())
            .or_default()
            .insert(id);
        self.by_submitter
            .entry(k.submitter.to_string())
            .or_default()
            .insert(id);
        if !k.parent {
            *self
                .counts
                .entry((k.queue.to_string(), k.state))
                .or_default() += 1;
        }
        if let Some(at) = k.ended {
            self.finished.insert((at, id));
        }
    }

    fn unfile(&mut self, id: u64, k: Keys<'_>) {
        fn drop_from<K: std::hash::Hash + Eq>(
            map: &mut HashMap<K, BTreeSet<u64>>,
            key: &K,
            id: u64,
        ) {
            if let Some(set) = map.get_mut(key) {
                set.remove(&id);
                if set.is_empty() {
                    map.remove(key);
                }
            }
        }
        if let Some(at) = k.ended {
            self.finished.remove(&(at, id));
        }
        drop_from(&mut self.by_state, &k.state, id);
        drop_from(&mut self.by_queue, &k.queue.to_string(), id);
        drop_from(&mut self.by_submitter, &k.submitter.to_string(), id);
        if !k.parent {
            let key = (k.queue.to_string(), k.state);
            if let Some(n) = self.counts.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.counts.remove(&key);
                }
            }
        }
    }

    /// Jobs of `queue` in `state`, fan-out parents apart.
    pub(super) fn count(&self, queue: &str, state: JobState) -> u64 {
        self.counts
            .get(&(queue.to_string(), state as i32))
            .copied()
            .unwrap_or(0)
    }

    /// The narrowest id set the filters allow (`None`: every job).
    fn candidates(
        &self,
        state: Option<JobState>,
        queue: &str,
        submitter: &str,
    ) -> Option<&BTreeSet<u64>> {
        static EMPTY: BTreeSet<u64> = BTreeSet::new();
        let mut sets: Vec<&BTreeSet<u64>> = Vec::new();
        if let Some(s) = state {
            sets.push(self.by_state.get(&(s as i32)).unwrap_or(&EMPTY));
        }
        if !queue.is_empty() {
            sets.push(self.by_queue.get(queue).unwrap_or(&EMPTY));
        }
        if !submitter.is_empty() {
            sets.push(self.by_submitter.get(submitter).unwrap_or(&EMPTY));
        }
        sets.into_iter().min_by_key(|s| s.len())
    }
}

/// The largest page `ListJobs` returns, and the one it returns unasked.
const MAX_PAGE: usize = 10_000;
const DEFAULT_PAGE: usize = 100;

impl Core {
    /// `ListJobs`: newest first, from the narrowest index the filters allow,
    /// one page at a time. The cursor is the id of the last job of the page
    /// before: ids only grow, so a walk sees every job that existed when it
    /// started exactly once, whatever is submitted meanwhile.
    pub(super) fn list_jobs(
        &self,
        req: &pb::ListJobsRequest,
    ) -> Result<pb::ListJobsResponse, Status> {
        let state = match req.state.as_str() {
            "" => None,
            s => Some(JobState::from_label(s).ok_or_else(|| {
                let names: Vec<&str> = pb::ALL_STATES.iter().map(|s| s.label()).collect();
                Status::invalid_argument(format!(
                    "unknown state '{}' (states: {})",
                    crate::clip(s),
                    names.join(", ")
                ))
            })?),
        };
        if !req.queue.is_empty() && !self.cfg.queues.contains_key(&req.queue) {
            return Err(Status::invalid_argument(format!(
                "unknown queue '{}'",
                crate::clip(&req.queue)
            )));
        }
        let mut labels = Vec::new();
        for l in &req.labels {
            let (k, v) = l.split_once('=').ok_or_else(|| {
                Status::invalid_argument(format!(
                    "label filter '{}' must look like key=value",
                    crate::clip(l)
                ))
            })?;
            labels.push((k, v));
        }
        let before = match req.cursor.trim() {
            "" => u64::MAX,
            c => c.parse::<u64>().map_err(|_| {
                Status::invalid_argument(format!(
                    "bad cursor '{}': pass the next_cursor of the page before, unchanged",
                    crate::clip(c)
                ))
            })?,
        };
        let limit = match req.limit {
            0 => DEFAULT_PAGE,
            n => (n as usize).min(MAX_PAGE),
        };
        let matches = |id: &u64| {
            let Some(e) = self.jobs.get(id) else {
                return false;
            };
            let spec = e.job.spec.as_ref();
            state.is_none_or(|s| e.job.state() == s)
                && (req.queue.is_empty() || spec.is_some_and(|s| s.queue == req.queue))
                && (req.submitter.is_empty() || e.job.submitted_by == req.submitter)
                && labels.iter().all(|(k, v)| {
                    spec.and_then(|s| s.labels.get(*k))
                        .is_some_and(|have| have == v)
                })
        };
        let ids: Vec<u64> = match self.index.candidates(state, &req.queue, &req.submitter) {
            Some(set) => set
                .range(..before)
                .rev()
                .copied()
                .filter(|id| matches(id))
                .take(limit + 1)
                .collect(),
            None => self
                .jobs
                .range(..before)
                .rev()
                .map(|(&id, _)| id)
                .filter(|id| matches(id))
                .take(limit + 1)
                .collect(),
        };
        let next_cursor = if ids.len() > limit {
            ids[limit - 1].to_string()
        } else {
            String::new()
        };
        Ok(pb::ListJobsResponse {
            jobs: ids
                .into_iter()
                .take(limit)
                .map(|id| self.view(id))
                .collect(),
            next_cursor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::*;
    use msfleet_proto::{self as pb, JobState::*, Outcome};

    fn page(h: &mut Harness, cursor: &str, limit: u32) -> pb::ListJobsResponse {
        h.list(pb::ListJobsRequest {
            cursor: cursor.into(),
            limit,
            ..Default::default()
        })
        .expect("list")
    }

    /// Walking the pages from the newest sees every job that existed when
    /// the walk began exactly once, newest first, although jobs are
    /// submitted between the pages; the last page has no next cursor.
    #[test]
    fn a_cursor_walk_sees_every_job_once_while_others_are_submitted() {
        let mut h = Harness::new();
        h.register("a1", "cpu", 1);
        let mut made: Vec<u64> = (0..25)
            .map(|_| h.submit(spec()).unwrap().id.parse().unwrap())
            .collect();
        made.reverse();
        let mut seen = Vec::new();
        let mut cursor = String::new();
        let mut pages = 0;
        loop {
            let p = page(&mut h, &cursor, 7);
            pages += 1;
            assert!(p.jobs.len() <= 7);
            seen.extend(p.jobs.iter().map(|j| j.id.parse::<u64>().unwrap()));
            // Concurrent submits: newer than the walk, never in it.
            h.submit(spec()).unwrap();
            if p.next_cursor.is_empty() {
                break;
            }
            cursor = p.next_cursor;
        }
        assert_eq!(seen, made, "every job once, newest first");
        assert_eq!(pages, 4, "25 jobs in pages of 7");
        // A page that ends exactly at the oldest job says so.
        let all = page(&mut h, "", 29);
        assert_eq!(all.jobs.len(), 29);
        assert_eq!(all.next_cursor, "", "nothing older: no cursor");
    }

    #[test]
    fn a_bad_cursor_is_refused_with_what_to_pass() {
        let mut h = Harness::new();
        let err = h
            .list(pb::ListJobsRequest {
                cursor: "yesterday".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("bad cursor 'yesterday'"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("next_cursor"), "{}", err.message());
    }

    /// Filters by submitter, state and queue come from the index and page
    /// like the plain listing.
    #[test]
    fn listing_filters_by_submitter_state_and_queue() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        let first = h.submit(spec()).unwrap();
        let mut nightly = spec();
        nightly.queue = "nightly".into();
        let second = h.submit(nightly).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.finish(&mut a, &r, Outcome::Passed);
        let list = |h: &mut Harness, req: pb::ListJobsRequest| -> Vec<String> {
            h.list(req)
                .unwrap()
                .jobs
                .into_iter()
                .map(|j| j.id)
                .collect()
        };
        assert_eq!(h.state(&first.id), Passed);
        assert_eq!(
            list(
                &mut h,
                pb::ListJobsRequest {
                    submitter: SUBMITTER.into(),
                    ..Default::default()
                }
            ),
            vec![second.id.clone(), first.id.clone()]
        );
        assert!(list(
            &mut h,
            pb::ListJobsRequest {
                submitter: "someone-else".into(),
                ..Default::default()
            }
        )
        .is_empty());
        assert_eq!(
            list(
                &mut h,
                pb::ListJobsRequest {
                    state: "passed".into(),
                    ..Default::default()
                }
            ),
            vec![first.id.clone()]
        );
        let p = h
            .list(pb::ListJobsRequest {
                queue: "nightly".into(),
                state: "running".into(),
                ..Default::default()
            })
            .unwrap();
        assert!(
            p.jobs.is_empty(),
            "the nightly job runs once the slot is free"
        );
        let queues = h
            .call(|reply| super::Command::ListQueues { reply })
            .unwrap();
        let nightly = queues.iter().find(|q| q.name == "nightly").unwrap();
        assert_eq!((nightly.pending, nightly.running), (0, 1), "{queues:?}");
        let default = queues.iter().find(|q| q.name == "default").unwrap();
        assert_eq!((default.pending, default.running), (0, 0));
    }
}
