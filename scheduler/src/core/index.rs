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
    /// Fan-out and sharded parents that have not finished.
    live_parents: BTreeSet<u64>,
}

/// What the index files a job under.
struct Keys<'a> {
    state: i32,
    queue: &'a str,
    submitter: &'a str,
    parent: bool,
    live: bool,
}

fn keys(job: &Job, state: i32) -> Keys<'_> {
    Keys {
        state,
        queue: job.spec.as_ref().map_or("default", |s| s.queue.as_str()),
        submitter: &job.submitted_by,
        parent: jobs::is_fanout_parent(job),
        live: !JobState::try_from(state).is_ok_and(|s| s.is_terminal()),
    }
}

impl JobIndex {
    pub(super) fn add(&mut self, id: u64, job: &Job) {
        self.file(id, keys(job, job.state));
    }

    pub(super) fn remove(&mut self, id: u64, job: &Job) {
        self.unfile(id, keys(job, job.state));
    }

    /// Parents (fan-out or sharded) that have not finished.
    pub(super) fn live_parents(&self) -> Vec<u64> {
        self.live_parents.iter().copied().collect()
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
        if k.parent && k.live {
            self.live_parents.insert(id);
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
        if k.parent && k.live {
            self.live_parents.remove(&id);
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
/// Stored jobs one `ListJobs` call looks at at most when it reads finished
/// jobs from the store: past it the page ends early, with a cursor to go on.
const LIST_BUDGET: usize = 20_000;

impl Core {
    /// A job as stored or in memory (memory first).
    pub(super) fn job_record(&self, id: u64) -> Option<std::borrow::Cow<'_, Job>> {
        if let Some(e) = self.jobs.get(&id) {
            return Some(std::borrow::Cow::Borrowed(&e.job));
        }
        match self.store.job(id) {
            Ok(job) => job.map(std::borrow::Cow::Owned),
            Err(e) => {
                tracing::error!(job = id, error = %e, "reading a stored job failed");
                None
            }
        }
    }

    /// Brings finished job `id` into memory from the store if it is not
    /// there (every live job is); false when there is no such job.
    pub(super) fn ensure_loaded(&mut self, id: u64) -> bool {
        if self.jobs.contains_key(&id) {
            return true;
        }
        if self.retirer.retiring(id) {
            return false;
        }
        let Some(job) = self.job_record(id).map(|j| j.into_owned()) else {
            return false;
        };
        self.insert_loaded(id, job);
        self.finished_cache.push_back(id);
        true
    }

    /// A job read from the store into memory and the indexes.
    pub(super) fn insert_loaded(&mut self, id: u64, job: Job) {
        let req = job
            .spec
            .as_ref()
            .and_then(|s| Requirement::parse(&s.requirements).ok())
            .unwrap_or_default();
        let progress = (!job.state().is_terminal()).then(|| {
            Arc::new(
                watch::channel(Progress {
                    durable_seq: job.last_event_seq,
                    done: false,
                })
                .0,
            )
        });
        self.hold_job(
            id,
            JobEntry {
                job,
                req,
                attempt: None,
                progress,
            },
        );
    }

    /// A job enters memory, and its place in the indexes with it: the one
    /// way into `jobs` (submit and loading).
    pub(super) fn hold_job(&mut self, id: u64, entry: JobEntry) {
        self.index.add(id, &entry.job);
        self.jobs.insert(id, entry);
    }

    /// A job leaves memory and the indexes (cache eviction, retention).
    pub(super) fn drop_job(&mut self, id: u64) {
        if let Some(e) = self.jobs.remove(&id) {
            self.index.remove(id, &e.job);
        }
    }

    /// After a turn's writes: finished jobs past `Config::finished_cache` leave
    /// memory, oldest first; a finished child of a live parent stays (its
    /// parent's counts read it) and comes up again later.
    pub(super) fn evict_finished(&mut self) {
        let mut looked = 0;
        // Bounded per turn: finished children of live parents go round again.
        let budget = self.finished_cache.len().min(1024);
        while self.finished_cache.len() > self.cfg.finished_cache && looked < budget {
            looked += 1;
            let Some(id) = self.finished_cache.pop_front() else {
                break;
            };
            let Some(e) = self.jobs.get(&id) else {
                continue;
            };
            if !e.job.state().is_terminal() || e.attempt.is_some() {
                continue;
            }
            let parent_live = e
                .job
                .parent
                .parse::<u64>()
                .ok()
                .and_then(|p| self.jobs.get(&p))
                .is_some_and(|p| !p.job.state().is_terminal());
            if parent_live {
                self.finished_cache.push_back(id);
                continue;
            }
            self.drop_job(id);
        }
    }

    /// `ListJobs`: newest first, one page at a time. The cursor is the id of
    /// the last job of the page before: ids only grow, so a walk sees every
    /// job that existed when it started exactly once, whatever is submitted
    /// meanwhile. Live states come from the memory's index (every live job is
    /// in memory); the rest is read from the store newest first, at most
    /// [`LIST_BUDGET`] jobs per call (a short page then carries the cursor).
    pub(super) fn list_jobs(
        &self,
        req: &pb::ListJobsRequest,
    ) -> Result<pb::ListJobsResponse, Status> {
        self.list_jobs_within(req, LIST_BUDGET)
    }

    /// `list_jobs`, looking at most at `budget` stored jobs.
    fn list_jobs_within(
        &self,
        req: &pb::ListJobsRequest,
        budget: usize,
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
        let matches = |job: &Job| {
            let spec = job.spec.as_ref();
            state.is_none_or(|s| job.state() == s)
                && (req.queue.is_empty() || spec.is_some_and(|s| s.queue == req.queue))
                && (req.submitter.is_empty() || job.submitted_by == req.submitter)
                && labels.iter().all(|(k, v)| {
                    spec.and_then(|s| s.labels.get(*k))
                        .is_some_and(|have| have == v)
                })
        };
        let mut jobs = Vec::new();
        let mut next_cursor = String::new();
        if state.is_some_and(|s| !s.is_terminal()) {
            let ids = self
                .index
                .candidates(state, &req.queue, &req.submitter)
                .into_iter()
                .flat_map(|set| set.range(..before).rev().copied())
                .filter(|id| self.jobs.get(id).is_some_and(|e| matches(&e.job)));
            for id in ids {
                if jobs.len() == limit {
                    next_cursor = jobs.last().map(|j: &Job| j.id.clone()).unwrap_or_default();
                    break;
                }
                jobs.push(self.view(id));
            }
        } else {
            // Stored ids newest first, read in chunks as the page fills.
            let chunk = (limit + 1).max(256).min(budget.max(1));
            let mut ids = Vec::new().into_iter();
            let (mut below, mut looked, mut looked_at_all) = (before, 0, false);
            let mut last = None;
            loop {
                let Some(id) = ids.next() else {
                    if looked >= budget {
                        break;
                    }
                    let got = self
                        .store
                        .job_ids_before(below, chunk.min(budget - looked))
                        .map_err(|e| Status::internal(format!("reading stored jobs: {e}")))?;
                    let Some(&oldest) = got.last() else {
                        looked_at_all = true;
                        break;
                    };
                    looked += got.len();
                    below = oldest;
                    ids = got.into_iter();
                    continue;
                };
                if self.retirer.retiring(id) {
                    last = Some(id);
                    continue;
                }
                let hit = match self.jobs.get(&id) {
                    Some(e) => matches(&e.job).then(|| self.view(id)),
                    None => self
                        .store
                        .job(id)
                        .ok()
                        .flatten()
                        .filter(|j| matches(j))
                        .map(|mut j| {
                            j.spec = j.spec.as_ref().map(msfleet_proto::secrets::redacted);
                            j
                        }),
                };
                if let Some(j) = hit {
                    if jobs.len() == limit {
                        next_cursor = jobs.last().map(|j: &Job| j.id.clone()).unwrap_or_default();
                        break;
                    }
                    jobs.push(j);
                }
                last = Some(id);
            }
            if next_cursor.is_empty() && !looked_at_all {
                next_cursor = last.map(|id| id.to_string()).unwrap_or_default();
            }
        }
        Ok(pb::ListJobsResponse { jobs, next_cursor })
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

    fn cache_2(c: &mut crate::Config) {
        c.finished_cache = 2;
    }

    /// With room for 2 finished jobs in memory, the other finished ones are
    /// read from the store when asked for: show (with their counts), watch,
    /// list, cancel's refusal and dedup see them as before; a restart loads
    /// only what is live.
    #[test]
    fn finished_jobs_beyond_the_cache_are_read_from_the_store() {
        let mut h = Harness::with(cache_2);
        let mut a = h.register("a1", "cpu", 1);
        let mut done = Vec::new();
        for i in 0..5 {
            let mut s = spec();
            s.dedup_key = format!("k{i}");
            let job = h.submit(s).unwrap();
            let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
            h.update(&mut a, &r, 1, started());
            h.update(&mut a, &r, 2, test_result("t.py::test_x", "failed"));
            h.update(&mut a, &r, 3, finished(Outcome::Failed));
            done.push(job.id);
        }
        let live = h.submit(spec()).unwrap().id;
        let in_memory = h.core().jobs.len();
        assert_eq!(in_memory, 3, "the live job and 2 finished ones");
        let first = h.job(&done[0]);
        assert_eq!(first.state(), Failed);
        assert_eq!(
            first.tests.unwrap().failed,
            1,
            "its counts come back with it"
        );
        let w = h
            .call(|reply| super::Command::Watch {
                id: done[1].clone(),
                reply,
            })
            .unwrap();
        assert!(
            w.progress.borrow().done,
            "a finished job's watch ends at once"
        );
        let err = h.cancel(&done[2]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(
            err.message().contains("already finished (failed)"),
            "{}",
            err.message()
        );
        let mut again = spec();
        again.dedup_key = "k3".into();
        let dup = h.submit(again).unwrap();
        assert!(dup.deduplicated);
        assert_eq!(dup.id, done[3]);
        let mut all: Vec<String> = h.jobs().into_iter().map(|j| j.id).collect();
        all.reverse();
        let mut want = done.clone();
        want.push(live.clone());
        assert_eq!(all, want, "list reads the stored ones");
        let listed_failed = h
            .list(pb::ListJobsRequest {
                state: "failed".into(),
                limit: 2,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(listed_failed.jobs.len(), 2);
        assert_eq!(listed_failed.next_cursor, done[3]);
        h.tick();
        assert!(h.core().jobs.len() <= 3, "the cache stays bounded");
        h.reload();
        let ids: Vec<u64> = h.core().jobs.keys().copied().collect();
        assert_eq!(
            ids,
            vec![live.parse::<u64>().unwrap()],
            "a start loads what is live"
        );
        assert_eq!(h.job(&done[4]).state(), Failed);
        let mut again = spec();
        again.dedup_key = "k4".into();
        assert!(
            h.submit(again).unwrap().deduplicated,
            "dedup keys survive a restart"
        );
        let next = h.submit(spec()).unwrap().id.parse::<u64>().unwrap();
        assert!(
            next > live.parse::<u64>().unwrap(),
            "ids continue after the newest stored"
        );
    }

    /// A store written before the live index is read whole once, and the
    /// index is written: the next start loads only what is live.
    #[test]
    fn a_store_without_the_live_index_is_indexed_once() {
        let mut h = Harness::with(cache_2);
        let mut a = h.register("a1", "cpu", 1);
        for _ in 0..4 {
            h.submit(spec()).unwrap();
            let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
            h.finish(&mut a, &r, Outcome::Passed);
        }
        let live = h.submit(spec()).unwrap().id;
        // Take the index away, as an older msched left the store.
        let store = h.core().store.clone();
        let mut w = crate::store::WriteSet::default();
        for id in 1..=5u64 {
            w.set_live(id, false);
        }
        store.apply(w).unwrap();
        store.remove_meta_for_test(crate::store::LIVE_INDEX);
        drop(store);
        h.reload();
        assert!(
            h.core().jobs.len() <= 3,
            "read whole, then trimmed to the cache"
        );
        h.reload();
        let ids: Vec<u64> = h.core().jobs.keys().copied().collect();
        assert_eq!(ids, vec![live.parse::<u64>().unwrap()]);
        assert_eq!(h.jobs().len(), 5);
    }

    /// A filter that matches little looks at a bounded number of stored
    /// jobs per call: the page ends short, with a cursor to go on from, and
    /// the walk still finds every match once.
    #[test]
    fn a_sparse_filter_pages_within_its_budget() {
        let mut h = Harness::new();
        let mut made = Vec::new();
        for i in 0..10 {
            let mut s = spec();
            if i % 4 == 0 {
                s.labels.insert("pick".into(), "yes".into());
            }
            made.push((i % 4 == 0, h.submit(s).unwrap().id));
        }
        let want: Vec<String> = made
            .iter()
            .rev()
            .filter(|(pick, _)| *pick)
            .map(|(_, id)| id.clone())
            .collect();
        let mut seen = Vec::new();
        let mut cursor = String::new();
        let mut calls = 0;
        loop {
            let req = pb::ListJobsRequest {
                labels: vec!["pick=yes".into()],
                cursor: cursor.clone(),
                limit: 10,
                ..Default::default()
            };
            let page = h.core().list_jobs_within(&req, 3).unwrap();
            calls += 1;
            seen.extend(page.jobs.into_iter().map(|j| j.id));
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor;
        }
        assert_eq!(seen, want);
        assert_eq!(calls, 4, "10 jobs, 3 looked at per call");
    }
}

/// Fuzz target (`cargo test fuzz_list`; cases from `MSFLEET_FUZZ_CASES`):
/// any `ListJobs` request that passes the API's bounds (`limits`) is answered
/// with a page or an InvalidArgument with a short message, never a panic; a
/// page holds at most its limit, newest first, only jobs that match its
/// filters; and walking `next_cursor` from any page sees each job once.
#[cfg(test)]
mod fuzz {
    use super::super::harness::*;
    use super::{DEFAULT_PAGE, MAX_PAGE};
    use crate::limits::Bounded;
    use msfleet_proto::fuzz::{fuzz_config, MAX_ERROR_BYTES};
    use msfleet_proto::{self as pb};
    use proptest::prelude::*;

    fn request() -> impl Strategy<Value = pb::ListJobsRequest> {
        (
            prop_oneof![Just(String::new()), Just("default".into()), "[ -~]{0,12}"],
            prop_oneof![
                Just(String::new()),
                Just("queued".into()),
                Just("running".into()),
                Just("cancelled".into()),
                "[ -~]{0,12}"
            ],
            prop::collection::vec(
                prop_oneof![Just("team=ml".to_string()), "[ -~]{0,10}"],
                0..3,
            ),
            prop_oneof![0..12u32, any::<u32>()],
            prop_oneof![
                Just(String::new()),
                (0..12u64).prop_map(|n| n.to_string()),
                "[ -~]{0,24}"
            ],
            prop_oneof![Just(String::new()), Just("fuzzer".into()), "[a-z]{0,6}"],
        )
            .prop_map(|(queue, state, labels, limit, cursor, submitter)| {
                pb::ListJobsRequest {
                    queue,
                    state,
                    labels,
                    limit,
                    cursor,
                    submitter,
                }
            })
    }

    proptest! {
        #![proptest_config(fuzz_config())]

        #[test]
        fn fuzz_list_jobs_requests(
            jobs in 1..8usize,
            cancel in prop::collection::vec(any::<bool>(), 8),
            req in request(),
        ) {
            let mut h = Harness::new();
            h.register("a1", "cpu", 1);
            for (i, &cancelled) in cancel.iter().enumerate().take(jobs) {
                let mut s = spec();
                if i % 2 == 0 {
                    s.labels.insert("team".into(), "ml".into());
                }
                let id = h.submit(s).map_err(|e| TestCaseError::fail(e.to_string()))?.id;
                if cancelled {
                    h.cancel(&id).map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
            }
            if Bounded::check(&req).is_err() {
                return Ok(());
            }
            let page = match h.list(req.clone()) {
                Ok(p) => p,
                Err(e) => {
                    prop_assert_eq!(e.code(), tonic::Code::InvalidArgument);
                    prop_assert!(e.message().len() <= MAX_ERROR_BYTES, "{}", e.message());
                    return Ok(());
                }
            };
            let limit = match req.limit {
                0 => DEFAULT_PAGE,
                n => (n as usize).min(MAX_PAGE),
            };
            prop_assert!(page.jobs.len() <= limit);
            let ids: Vec<u64> = page.jobs.iter().map(|j| j.id.parse().unwrap_or(0)).collect();
            prop_assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {:?}", ids);
            for j in &page.jobs {
                prop_assert!(req.state.is_empty() || j.state().label() == req.state);
                prop_assert!(req.submitter.is_empty() || j.submitted_by == req.submitter);
            }
            // The rest of the walk: each job once, still newest first.
            let mut seen = ids;
            let mut next = page.next_cursor;
            while !next.is_empty() {
                let p = h
                    .list(pb::ListJobsRequest { cursor: next, ..req.clone() })
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                seen.extend(p.jobs.iter().map(|j| j.id.parse::<u64>().unwrap_or(0)));
                next = p.next_cursor;
            }
            prop_assert!(seen.windows(2).all(|w| w[0] > w[1]), "each once: {:?}", seen);
        }
    }
}
