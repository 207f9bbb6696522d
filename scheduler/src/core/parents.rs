//! Parents: fan-out (one child per hardware profile or agent) and sharding (a
//! collect-only child, then one child per shard). **Invariant: a parent is
//! never queued itself**; its state and counts are derived from its children
//! in [`Core::refresh_parent`].

use super::*;

/// How many of the newest test-history records (one per agent per write,
/// up to a few hundred results each) a shard split reads for durations.
const SHARD_HISTORY_RECORDS: usize = 20_000;

impl Core {
    /// Children are submitted in their parent's submitter's name.
    fn submitter(&self, parent: u64) -> String {
        self.jobs
            .get(&parent)
            .map(|e| e.job.submitted_by.clone())
            .unwrap_or_default()
    }

    /// A child of `parent` running `spec`, shown under `column`.
    pub(super) fn spawn_child(
        &mut self,
        parent: u64,
        spec: JobSpec,
        column: &str,
        step: &mut Step,
    ) -> Result<String, Status> {
        let by = self.submitter(parent);
        // The child's span is a child of its parent's.
        let caller = self
            .jobs
            .get(&parent)
            .and_then(|e| telemetry::job_context(&e.job));
        let job = self.submit(spec, None, &by, caller.as_ref(), step)?;
        if let Some(e) = job
            .id
            .parse::<u64>()
            .ok()
            .and_then(|c| self.jobs.get_mut(&c))
        {
            e.job.parent = parent.to_string();
            e.job.column = column.to_string();
            step.touched.insert(job.id.parse().unwrap_or(0));
        }
        Ok(job.id)
    }

    /// A sharded job starts with one collect-only child; `split_shards` makes
    /// the shard children once it has collected.
    pub(super) fn spawn_collect(&mut self, parent: u64, step: &mut Step) {
        let Some(spec) = self.jobs.get(&parent).and_then(|e| e.job.spec.clone()) else {
            return;
        };
        let mut collect = spec.clone();
        collect.shards = 0;
        collect.collect_only = true;
        collect.retry_failed = 0;
        collect.dedup_key.clear();
        collect.name = format!("{} [collect]", spec.name);
        match self.spawn_child(parent, collect, "collect", step) {
            Ok(id) => {
                if let Some(e) = self.jobs.get_mut(&parent) {
                    e.job.children = vec![id];
                    step.touched.insert(parent);
                }
            }
            Err(status) => {
                let why = format!("could not start the collection: {}", status.message());
                self.set_state(parent, JobState::Error, &why, step);
            }
        }
    }

    /// Partitions the collected node ids into shards of about equal time
    /// ([`crate::shard::partition`]) and makes one child per non-empty shard.
    /// The ids are the collect child's last attempt's: those already in the
    /// store plus those applied in this turn (still in `step`), so a burst
    /// that carries the last ids and the Finished together drops none; the
    /// shards are written in the same batch as those ids. A split that cannot
    /// be made ends the parent `error` with the reason.
    pub(super) fn split_shards(&mut self, parent: u64, collect: u64, step: &mut Step) {
        let Some(spec) = self.jobs.get(&parent).and_then(|e| e.job.spec.clone()) else {
            return;
        };
        let last = self.jobs.get(&collect).map_or(0, |e| e.job.last_event_seq);
        let attempt = self.jobs.get(&collect).map_or(0, |e| e.job.attempts);
        let events = match self.store.events(collect, 0, last) {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(error = %e, "reading the collected tests");
                let why = format!("could not read the collected tests of job {collect}: {e}");
                self.set_state(parent, JobState::Error, &why, step);
                return;
            }
        };
        let mut ids: Vec<String> = events
            .into_iter()
            .filter(|ev| ev.attempt == attempt)
            .filter_map(|ev| match ev.kind {
                Some(job_event::Kind::Test(t)) if t.outcome == "collected" => Some(t.nodeid),
                _ => None,
            })
            .collect();
        ids.extend(
            step.collected
                .iter()
                .filter(|(job, a, _)| *job == collect && *a == attempt)
                .map(|(_, _, id)| id.clone()),
        );
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            let why = format!(
                "the collection (job {collect}) collected no tests, so there is nothing to shard"
            );
            self.set_state(parent, JobState::Error, &why, step);
            return;
        }
        // Durations recorded on the hardware profile the selection was collected
        // on (the shards' pool), else on any profile.
        let agent = self
            .jobs
            .get(&collect)
            .map(|c| c.job.agent.clone())
            .unwrap_or_default();
        let profile = agent_profile(&self.agents, &agent);
        // One pass over the newest history records (bounded), not one
        // search per test: this runs on the core thread.
        let on_profile = self
            .store
            .call_durations(&ids, &profile, SHARD_HISTORY_RECORDS)
            .unwrap_or_default();
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !on_profile.contains_key(*id))
            .cloned()
            .collect();
        let anywhere = if missing.is_empty() {
            Default::default()
        } else {
            self.store
                .call_durations(&missing, "", SHARD_HISTORY_RECORDS)
                .unwrap_or_default()
        };
        let known: Vec<(String, Option<f64>)> = ids
            .into_iter()
            .map(|id| {
                let d = on_profile.get(&id).or_else(|| anywhere.get(&id)).copied();
                (id, d)
            })
            .collect();
        let n = spec.shards.max(1) as usize;
        let shards = crate::shard::partition(&known, n);
        let (mut made, mut failed) = (Vec::new(), Vec::new());
        for (i, select) in shards.into_iter().enumerate() {
            if select.is_empty() {
                continue;
            }
            let mut child = spec.clone();
            child.shards = 0;
            child.dedup_key.clear();
            child.select = select;
            let column = format!("shard {}/{n}", i + 1);
            child.name = format!("{} [{column}]", spec.name);
            match self.spawn_child(parent, child, &column, step) {
                Ok(id) => made.push(id),
                Err(status) => {
                    tracing::error!(parent, %status, "could not start a shard");
                    failed.push(format!("{column}: {}", status.message()));
                }
            }
        }
        if let Some(e) = self.jobs.get_mut(&parent) {
            e.job.children.extend(made);
            step.touched.insert(parent);
        }
        if !failed.is_empty() {
            // Tests of a shard that never started would silently go missing.
            let why = format!("could not start every shard: {}", failed.join("; "));
            self.set_state(parent, JobState::Error, &why, step);
        }
    }

    // ------------------------------------------------------------ fan-out

    /// The columns a fan-out job covers: (profile or agent name, has an agent
    /// that takes work, requirement that pins a child to it). A drained,
    /// quarantined or offline agent's column is not run: a child pinned to it
    /// would only wait.
    pub(super) fn fanout_targets(
        &self,
        spec: &JobSpec,
        req: &Requirement,
    ) -> Result<Vec<(String, bool, String)>, Status> {
        let by_profile = match spec.fanout.as_str() {
            "each-profile" => true,
            "each-agent" => false,
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown fanout '{}': use each-profile or each-agent",
                    crate::clip(other)
                )))
            }
        };
        let mut groups: BTreeMap<String, bool> = BTreeMap::new();
        for (name, a) in &self.agents {
            if fits(req, spec, &a.attrs, a.caps()) {
                let key = if by_profile {
                    a.caps().profile.clone()
                } else {
                    name.clone()
                };
                *groups.entry(key).or_default() |= a.takes_work();
            }
        }
        if groups.is_empty() {
            return Err(Status::failed_precondition(
                "no registered agent matches this job, so there is nothing to fan out to",
            ));
        }
        let attr = if by_profile { "profile" } else { "agent.name" };
        Ok(groups
            .into_iter()
            .map(|(column, online)| {
                let quoted = column.replace('\\', "\\\\").replace('"', "\\\"");
                let pin = format!("{attr} == \"{quoted}\"");
                (column, online, pin)
            })
            .collect())
    }

    /// Makes one child job per online target; the others are recorded as not run.
    pub(super) fn spawn_children(
        &mut self,
        parent: u64,
        targets: Vec<(String, bool, String)>,
        step: &mut Step,
    ) {
        let Some(spec) = self.jobs.get(&parent).and_then(|e| e.job.spec.clone()) else {
            return;
        };
        let (mut children, mut not_run) = (Vec::new(), Vec::new());
        for (column, online, pin) in targets {
            if !online {
                not_run.push(column);
                continue;
            }
            let mut child = spec.clone();
            child.fanout.clear();
            child.dedup_key.clear();
            child.requirements = if spec.requirements.trim().is_empty() {
                pin
            } else {
                format!("({}) && {pin}", spec.requirements)
            };
            child.name = format!("{} [{column}]", spec.name);
            match self.spawn_child(parent, child, &column, step) {
                Ok(id) => children.push(id),
                Err(status) => not_run.push(format!("{column} ({})", status.message())),
            }
        }
        if let Some(e) = self.jobs.get_mut(&parent) {
            e.job.children = children;
            e.job.not_run = not_run;
            step.touched.insert(parent);
        }
        self.refresh_parent(parent, step);
    }

    /// Why nothing runs a child pinned by `column` of a parent fanned out
    /// `by_profile` or per agent.
    fn column_status(&self, column: &str, by_profile: bool) -> String {
        if !by_profile {
            return match self.agents.get(column) {
                None => format!("agent {column} is not registered"),
                // What `msctl agents` shows (drained, quarantined, lost,
                // offline), from the one function that decides it.
                Some(a) if !a.takes_work() => {
                    let running = self.leases.count_held_by(column);
                    format!(
                        "agent {column} is {}",
                        super::agents::agent_state(a, running).0
                    )
                }
                Some(_) => format!("agent {column} did not get to it"),
            };
        }
        let of: Vec<_> = self
            .agents
            .values()
            .filter(|a| a.caps().profile == column)
            .collect();
        if of.is_empty() {
            format!("no agent of profile {column} is registered")
        } else if !of.iter().any(|a| a.takes_work()) {
            format!(
                "no agent of profile {column} takes work (drained, quarantined, lost or offline)"
            )
        } else {
            format!("no agent of profile {column} got to it")
        }
    }

    /// On the tick: a fan-out parent's children still queued at the parent's
    /// deadline (its submit + `expire_after`) will not run: each ends
    /// `expired` and its column moves to the parent's not-run list with the
    /// reason, so the parent finishes (and a schedule's next slot can fire).
    pub(super) fn end_unrun_children(&mut self, step: &mut Step) {
        let now = self.now;
        // The live parents past their deadline, then their children still
        // pending (not a walk of the whole queue).
        let due: Vec<(u64, u64)> = self
            .index
            .live_parents()
            .into_iter()
            .filter_map(|parent| {
                let p = &self.jobs.get(&parent)?.job;
                let spec = p.spec.as_ref()?;
                let due =
                    !spec.fanout.is_empty() && !p.state().is_terminal() && now >= self.deadline(p);
                due.then(|| {
                    p.children
                        .iter()
                        .filter_map(|c| c.parse::<u64>().ok())
                        .filter(|c| self.pending.contains(*c))
                        .map(move |c| (c, parent))
                        .collect::<Vec<_>>()
                })
            })
            .flatten()
            .collect();
        for (child, parent) in due {
            let by_profile = self
                .jobs
                .get(&parent)
                .and_then(|p| p.job.spec.as_ref())
                .is_some_and(|s| s.fanout == "each-profile");
            let column = self.jobs[&child].job.column.clone();
            let why = self.column_status(&column, by_profile);
            self.pending.remove(child);
            if let Some(p) = self.jobs.get_mut(&parent) {
                let id = child.to_string();
                p.job.children.retain(|c| *c != id);
                p.job.not_run.push(format!("{column} ({why})"));
                step.touched.insert(parent);
            }
            let reason = format!("not run by its parent's deadline: {why}");
            self.set_state(child, JobState::Expired, &reason, step);
        }
    }

    /// Recomputes a fan-out parent's counts and state from its children.
    pub(super) fn refresh_parent(&mut self, parent: u64, step: &mut Step) {
        let Some(p) = self.jobs.get(&parent) else {
            return;
        };
        if p.job.state().is_terminal() {
            return;
        }
        let sharded = p.job.spec.as_ref().is_some_and(|s| s.shards > 1);
        if sharded && p.job.children.len() == 1 {
            let collect = p.job.children[0].parse::<u64>().unwrap_or(0);
            if self
                .jobs
                .get(&collect)
                .is_some_and(|c| c.job.state() == JobState::Passed)
            {
                self.split_shards(parent, collect, step);
            }
        }
        let Some(p) = self.jobs.get(&parent) else {
            return;
        };
        if p.job.state().is_terminal() {
            // A split that failed ended it.
            return;
        }
        let kids: Vec<u64> = p
            .job
            .children
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        let not_run = p.job.not_run.clone();
        let mut counts = TestCounts::default();
        let mut states = Vec::new();
        for k in &kids {
            if let Some(e) = self.jobs.get(k) {
                counts += e.job.tests.unwrap_or_default();
                states.push(e.job.state());
            }
        }
        let current = p.job.state();
        let current_reason = p.job.reason.clone();
        if let Some(e) = self.jobs.get_mut(&parent) {
            e.job.tests = Some(counts);
            step.touched.insert(parent);
        }
        let all_done = states.iter().all(|s| s.is_terminal());
        let next = if states.is_empty() {
            JobState::Error
        } else if all_done {
            if states.contains(&JobState::Failed) {
                JobState::Failed
            } else if states.iter().any(|s| {
                matches!(
                    s,
                    JobState::Error | JobState::TimedOut | JobState::Expired | JobState::NoResource
                )
            }) {
                JobState::Error
            } else if states.contains(&JobState::Cancelled) {
                JobState::Cancelled
            } else {
                JobState::Passed
            }
        } else if states
            .iter()
            .any(|s| matches!(s, JobState::Assigned | JobState::Running) || s.is_terminal())
        {
            JobState::Running
        } else {
            JobState::Queued
        };
        let done = states.iter().filter(|s| s.is_terminal()).count();
        let mut reason = format!("{done} of {} children finished", states.len());
        if all_done && !states.is_empty() {
            let mut by: BTreeMap<&str, usize> = BTreeMap::new();
            for s in &states {
                *by.entry(s.label()).or_default() += 1;
            }
            let parts: Vec<String> = by.iter().map(|(s, n)| format!("{n} {s}")).collect();
            reason = format!("children: {}", parts.join(", "));
        }
        if !not_run.is_empty() {
            reason += &format!("; not run on: {}", not_run.join(", "));
        }
        if states.is_empty() {
            reason = format!(
                "no agent that takes work to run on; not run on: {}",
                not_run.join(", ")
            );
        }
        // The reason moves too ("N of M children finished"), not only the state.
        if next != current || next.is_terminal() || reason != current_reason {
            self.set_state(parent, next, &reason, step);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::*;
    use msfleet_proto::{JobState::*, Outcome};

    fn fanout() -> msfleet_proto::JobSpec {
        let mut s = spec();
        s.fanout = "each-profile".into();
        s
    }

    #[test]
    fn a_fanout_parent_derives_state_and_counts_from_its_children() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "p-a", 1);
        let mut b = h.register("b1", "p-b", 1);
        let gone = h.register("c1", "p-c", 1);
        h.disconnect(&gone);
        let parent = h.submit(fanout()).unwrap();
        assert_eq!(parent.children.len(), 2);
        assert_eq!(parent.not_run, vec!["p-c"]);
        let ra = h.assignments(&mut a)[0].attempt.clone().unwrap();
        let rb = h.assignments(&mut b)[0].attempt.clone().unwrap();

        h.update(&mut a, &ra, 1, started());
        assert_eq!(h.state(&parent.id), Running);
        h.update(&mut a, &ra, 2, test_result("t.py::x", "passed"));
        h.update(&mut a, &ra, 3, finished(Outcome::Passed));
        assert_eq!(h.state(&parent.id), Running, "one child still going");

        h.update(&mut b, &rb, 1, started());
        h.update(&mut b, &rb, 2, test_result("t.py::x", "failed"));
        h.update(&mut b, &rb, 3, test_result("t.py::y", "passed"));
        h.update(&mut b, &rb, 4, finished(Outcome::Failed));
        let done = h.job(&parent.id);
        assert_eq!(done.state(), Failed, "a failed child fails the parent");
        let t = done.tests.unwrap();
        assert_eq!((t.passed, t.failed, t.total), (2, 1, 3));
        assert_eq!(done.reason, "children: 1 failed, 1 passed; not run on: p-c",);
        // The parent shows its children's results live, marked with the column.
        let live: Vec<String> = h
            .events(&parent.id)
            .into_iter()
            .filter_map(|e| match e.kind {
                Some(msfleet_proto::job_event::Kind::Test(t)) => Some(t.nodeid),
                _ => None,
            })
            .collect();
        assert_eq!(
            live,
            vec!["t.py::x [p-a]", "t.py::x [p-b]", "t.py::y [p-b]"]
        );
    }

    #[test]
    fn infrastructure_errors_of_children_make_the_parent_an_error_not_a_failure() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "p-a", 1);
        let mut b = h.register("b1", "p-b", 1);
        let parent = h.submit(fanout()).unwrap();
        let ra = h.assignments(&mut a)[0].attempt.clone().unwrap();
        let rb = h.assignments(&mut b)[0].attempt.clone().unwrap();
        h.finish(&mut a, &ra, Outcome::Passed);
        h.finish(&mut b, &rb, Outcome::TimedOut);
        assert_eq!(h.state(&parent.id), Error);
    }

    #[test]
    fn a_parent_is_never_queued_itself_also_after_a_reload() {
        let mut h = Harness::new();
        h.register("a1", "p-a", 1);
        let other = h.register("b1", "p-b", 1);
        h.disconnect(&other);
        let parent = h.submit(fanout()).unwrap();
        let child = parent.children[0].clone();
        h.reload();
        // After the reload no agent is connected; the one that comes back runs the child only.
        let mut a = h.register("a1", "p-a", 4);
        let got = h.assignments(&mut a);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].job_id, child);
        assert_eq!(h.job(&child).parent, parent.id);
    }

    #[test]
    fn fanning_out_to_no_matching_agent_is_refused() {
        let mut h = Harness::new();
        h.register("a1", "p-a", 1);
        let mut s = fanout();
        s.requirements = "gpu.count>=1".into();
        let e = h.submit(s).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(h.jobs().is_empty());
    }

    #[test]
    fn a_sharded_job_collects_once_then_splits_every_test_into_exactly_one_shard() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "p-a", 4);
        let mut s = spec();
        s.shards = 2;
        let parent = h.submit(s).unwrap();
        assert_eq!(parent.children.len(), 1, "the collect-only child");
        let collect = h.assignments(&mut a).remove(0);
        assert!(collect.spec.as_ref().unwrap().collect_only);
        let r = collect.attempt.unwrap();
        h.update(&mut a, &r, 1, started());
        for (i, id) in ["t.py::a", "t.py::b", "t.py::c"].iter().enumerate() {
            h.update(&mut a, &r, 2 + i as u64, test_result(id, "collected"));
        }
        let after = h.update(&mut a, &r, 5, finished(Outcome::Passed));
        let view = h.job(&parent.id);
        assert_eq!(view.children.len(), 3, "collect + 2 shards");
        assert_eq!(
            view.tests.unwrap().total,
            0,
            "collected items are not results"
        );
        let assigned: Vec<_> = after
            .iter()
            .filter_map(|m| match m {
                msfleet_proto::scheduler_message::Msg::Assign(x) => x.attempt.clone(),
                _ => None,
            })
            .collect();
        let (shards, all) = shard_selects(after);
        assert_eq!(all, vec!["t.py::a", "t.py::b", "t.py::c"]);
        assert_eq!(shards, 2);
        for r in &assigned {
            h.finish(&mut a, r, Outcome::Passed);
        }
        assert_eq!(h.state(&parent.id), Passed);
    }

    /// The shard children assigned among `msgs`, and every node id they select.
    fn shard_selects(msgs: Vec<msfleet_proto::scheduler_message::Msg>) -> (usize, Vec<String>) {
        let shards = assignments_in(msgs);
        let mut all: Vec<String> = shards
            .iter()
            .flat_map(|x| x.spec.clone().unwrap().select)
            .collect();
        all.sort();
        (shards.len(), all)
    }

    #[test]
    fn a_split_sees_ids_collected_in_the_same_turn_as_the_finish() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "p-a", 4);
        let mut s = spec();
        s.shards = 2;
        let parent = h.submit(s).unwrap();
        let r = h.assignments(&mut a).remove(0).attempt.unwrap();
        // Two ids arrive in earlier turns; the last two in the same burst as
        // the Finished (an agent resending its outbox after a reconnect).
        h.update(&mut a, &r, 1, started());
        h.update(&mut a, &r, 2, test_result("t.py::a", "collected"));
        h.update(&mut a, &r, 3, test_result("t.py::b", "collected"));
        let after = h.update_batch(
            &mut a,
            &r,
            vec![
                (2, test_result("t.py::a", "collected")),
                (3, test_result("t.py::b", "collected")),
                (4, test_result("t.py::c", "collected")),
                (5, test_result("t.py::d", "collected")),
                (6, finished(Outcome::Passed)),
            ],
        );
        let (n, all) = shard_selects(after);
        assert_eq!(n, 2);
        assert_eq!(
            all,
            vec!["t.py::a", "t.py::b", "t.py::c", "t.py::d"],
            "every collected test in exactly one shard"
        );
        assert_eq!(h.job(&parent.id).children.len(), 3);
    }

    #[test]
    fn a_whole_collection_in_one_turn_is_split_completely() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "p-a", 4);
        let mut s = spec();
        s.shards = 3;
        h.submit(s).unwrap();
        let r = h.assignments(&mut a).remove(0).attempt.unwrap();
        let mut burst = vec![(1, started())];
        let ids: Vec<String> = (0..7).map(|i| format!("t.py::t{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            burst.push((2 + i as u64, test_result(id, "collected")));
        }
        burst.push((9, finished(Outcome::Passed)));
        let (n, all) = shard_selects(h.update_batch(&mut a, &r, burst));
        assert_eq!(n, 3);
        assert_eq!(all, ids);
    }

    #[test]
    fn a_split_with_nothing_collected_ends_the_parent_error_with_the_reason() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "p-a", 4);
        let mut s = spec();
        s.shards = 2;
        let parent = h.submit(s).unwrap();
        let r = h.assignments(&mut a).remove(0).attempt.unwrap();
        h.finish(&mut a, &r, Outcome::Passed);
        let done = h.job(&parent.id);
        assert_eq!(done.state(), Error, "not passed with 0 tests");
        assert!(
            done.reason.contains("collected no tests"),
            "reason: {}",
            done.reason
        );
        assert_eq!(done.children.len(), 1, "no shards made");
    }
    fn drain(h: &mut Harness, name: &str, admin: msfleet_proto::AgentAdmin) {
        h.set_admin(name, admin).unwrap();
    }

    fn each_agent() -> msfleet_proto::JobSpec {
        let mut s = spec();
        s.fanout = "each-agent".into();
        s
    }

    const DAY_MS: i64 = 24 * 3600 * 1000;

    #[test]
    fn fanout_skips_agents_that_take_no_work_and_the_parent_finishes() {
        use msfleet_proto::AgentAdmin::*;
        let mut h = Harness::new();
        let mut a = h.register("a1", "p", 1);
        h.register("a2", "p", 1);
        h.register("a3", "p", 1);
        drain(&mut h, "a2", Drained);
        drain(&mut h, "a3", Quarantined);
        let parent = h.submit(each_agent()).unwrap();
        assert_eq!(parent.children.len(), 1, "only a1 takes work");
        assert_eq!(parent.not_run, vec!["a2", "a3"]);
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.finish(&mut a, &r, Outcome::Passed);
        let done = h.job(&parent.id);
        assert_eq!(done.state(), Passed);
        assert_eq!(done.reason, "children: 1 passed; not run on: a2, a3");
    }

    /// A child whose agent went silent (lost) before it started ends not run
    /// at the parent's deadline, its column saying `lost` as `msctl agents` does.
    #[test]
    fn a_child_whose_agent_is_lost_ends_not_run_and_the_column_says_lost() {
        let mut h = Harness::with(|c| c.lease_timeout = std::time::Duration::from_secs(3));
        let mut a = h.register("a1", "p", 1);
        let mut b = h.register("a2", "p", 1);
        h.fill_slot(&mut b, "agent.name == \"a2\"");
        let parent = h.submit(each_agent()).unwrap();
        assert_eq!(parent.children.len(), 2);
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.finish(&mut a, &r, Outcome::Passed);
        h.advance(3_100);
        h.heartbeat(&a, Vec::new());
        h.tick();
        h.advance(DAY_MS);
        h.heartbeat(&a, Vec::new());
        h.tick();
        let done = h.job(&parent.id);
        assert_eq!(done.state(), Passed, "{}", done.reason);
        assert_eq!(
            done.reason,
            "children: 1 passed; not run on: a2 (agent a2 is lost)"
        );
    }

    #[test]
    fn a_child_whose_agent_is_drained_before_it_starts_ends_not_run_by_the_deadline() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "p", 1);
        let mut b = h.register("a2", "p", 1);
        // a2's one slot is busy, so its child waits in the queue.
        h.fill_slot(&mut b, "agent.name == \"a2\"");
        let parent = h.submit(each_agent()).unwrap();
        assert_eq!(parent.children.len(), 2);
        drain(&mut h, "a2", msfleet_proto::AgentAdmin::Drained);
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.finish(&mut a, &r, Outcome::Passed);
        let mid = h.job(&parent.id);
        assert_eq!(mid.state(), Running);
        assert_eq!(mid.reason, "1 of 2 children finished");
        // Before the deadline nothing changes; at it the waiting child ends.
        h.advance(DAY_MS - 1);
        h.tick();
        assert_eq!(h.state(&parent.id), Running);
        let waiting = mid.children[1].clone();
        h.advance(1);
        h.tick();
        let child = h.job(&waiting);
        assert_eq!(child.state(), Expired);
        assert!(
            child.reason.contains("agent a2 is drained"),
            "{}",
            child.reason
        );
        let done = h.job(&parent.id);
        assert_eq!(done.state(), Passed, "{}", done.reason);
        assert_eq!(
            done.reason,
            "children: 1 passed; not run on: a2 (agent a2 is drained)"
        );
        assert_eq!(done.children.len(), 1);
    }

    #[test]
    fn a_profile_whose_agents_went_away_is_not_run_by_the_parents_own_expiry() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "p-a", 1);
        let mut b = h.register("b1", "p-b", 1);
        h.fill_slot(&mut b, "profile == \"p-b\"");
        let mut s = fanout();
        s.expire_after_ms = Some(60_000);
        let parent = h.submit(s).unwrap();
        h.disconnect(&b);
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.finish(&mut a, &r, Outcome::Failed);
        assert_eq!(h.state(&parent.id), Running);
        h.advance(60_000);
        h.tick();
        let done = h.job(&parent.id);
        assert_eq!(done.state(), Failed);
        assert!(
            done.reason.ends_with("not run on: p-b (no agent of profile p-b takes work (drained, quarantined, lost or offline))"),
            "{}",
            done.reason
        );
    }
}
