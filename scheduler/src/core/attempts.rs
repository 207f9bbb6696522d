//! Attempts: task updates fenced by (task, attempt, epoch) and applied in
//! sequence, finishing, lost attempts and lease expiry, and dispatch (where a
//! pending job is matched to a free slot and leased).

use super::*;

impl Core {
    pub(super) fn update(&mut self, session: u64, mut u: pb::TaskUpdate, step: &mut Step) {
        let Some((name, tx)) = self.session_agent(session) else {
            return;
        };
        let r = u.attempt.clone().unwrap_or_default();
        let seq = u.seq;
        let reject = |step: &mut Step, message: String, abandon: bool| {
            step.send(
                &tx,
                scheduler_message::Msg::Reject(pb::Reject {
                    attempt: Some(r.clone()),
                    seq,
                    message,
                    abandon,
                }),
            );
        };
        let Ok(task) = r.task_id.parse::<u64>() else {
            return reject(
                step,
                format!("unknown task '{}'", crate::clip(&r.task_id)),
                true,
            );
        };
        if let Err(e) = self.leases.check(task, &r, &name) {
            return reject(step, e.to_string(), true);
        }
        let Some(e) = self.jobs.get_mut(&task) else {
            return reject(step, format!("unknown task '{task}'"), true);
        };
        let Some(att) = e.attempt.as_mut() else {
            return reject(step, format!("task {task} has no live attempt"), true);
        };
        if u.seq <= att.applied_seq {
            // A resend of something already durable: acknowledge again.
            let seq = att.applied_seq;
            step.send(
                &tx,
                scheduler_message::Msg::Ack(pb::Ack {
                    attempt: Some(r),
                    seq,
                }),
            );
            return;
        }
        if u.seq != att.applied_seq + 1 {
            let expected = att.applied_seq + 1;
            return reject(
                step,
                format!("update {} out of order: expected {expected}", u.seq),
                false,
            );
        }
        // Refuse bad content before anything changes: the sequence number stays free.
        match &mut u.kind {
            None => return reject(step, "empty task update".into(), false),
            Some(task_update::Kind::Log(chunk)) if chunk.data.len() > pb::MAX_LOG_CHUNK => {
                let message = format!(
                    "log chunk of {} bytes is over the {} byte limit; split it",
                    chunk.data.len(),
                    pb::MAX_LOG_CHUNK
                );
                return reject(step, message, false);
            }
            Some(task_update::Kind::Log(chunk)) if chunk.stream.len() > limits::MAX_WORD => {
                return reject(step, "log chunk stream name is too long".into(), false);
            }
            Some(task_update::Kind::Test(t)) => {
                if let Err(s) = limits::test_result(t) {
                    return reject(step, format!("test result refused: {}", s.message()), false);
                }
            }
            Some(task_update::Kind::Case(c)) => {
                if let Err(s) = limits::case_result(c) {
                    return reject(step, format!("case result refused: {}", s.message()), false);
                }
            }
            Some(task_update::Kind::Finished(f)) => limits::cut(&mut f.reason, limits::MAX_REASON),
            Some(_) => {}
        }
        att.applied_seq = u.seq;
        let attempt = att.attempt;
        let logged_before = att.log_bytes;
        if let Some(task_update::Kind::Log(chunk)) = &u.kind {
            att.log_bytes = att.log_bytes.saturating_add(chunk.data.len() as u64);
        }
        step.touched.insert(task);
        match u.kind {
            Some(task_update::Kind::Started(_)) if e.job.state() == JobState::Assigned => {
                e.job.started_at_ms = self.now;
                self.set_state(task, JobState::Running, "", step);
            }
            Some(task_update::Kind::Started(_)) => {}
            Some(task_update::Kind::Log(chunk)) => {
                self.log_within_limit(task, attempt, logged_before, chunk, step)
            }
            Some(task_update::Kind::Case(c)) => self.record_case(task, attempt, &name, c, step),
            Some(task_update::Kind::Test(t)) => self.record_test(task, attempt, &name, t, step),
            Some(task_update::Kind::Finished(f)) => self.finish(task, f, step),
            None => {}
        }
        step.send(
            &tx,
            scheduler_message::Msg::Ack(pb::Ack {
                attempt: Some(r),
                seq: u.seq,
            }),
        );
    }

    /// Stores a log chunk of `task`'s attempt, of which `before` bytes came
    /// earlier, within [`Config::max_log_bytes`]: the chunk that passes the
    /// limit is cut at it and followed by one marker event; every later chunk
    /// is dropped (still acknowledged: the agent has nothing to resend).
    fn log_within_limit(
        &mut self,
        task: u64,
        attempt: u32,
        before: u64,
        mut chunk: pb::LogChunk,
        step: &mut Step,
    ) {
        let limit = self.cfg.max_log_bytes;
        let after = before.saturating_add(chunk.data.len() as u64);
        if after <= limit {
            self.push_event(task, attempt, job_event::Kind::Log(chunk), step);
            return;
        }
        if before > limit {
            return; // past the limit, and the marker is already there
        }
        chunk.data.truncate((limit - before) as usize);
        if !chunk.data.is_empty() {
            self.push_event(task, attempt, job_event::Kind::Log(chunk), step);
        }
        let marker = pb::LogChunk {
            stream: "stderr".into(),
            data: log_limit_marker(limit).into_bytes(),
        };
        tracing::warn!(
            task,
            attempt,
            limit,
            "attempt output passed the log limit; dropping the rest"
        );
        self.push_event(task, attempt, job_event::Kind::Log(marker), step);
    }

    /// One test result of `task`'s live attempt: counted, kept in the test
    /// history of the agent's profile, and shown live on a parent, marked with
    /// the child's column. Collected items (a sharded job's collect-only
    /// child) are neither history nor forwarded.
    fn record_test(
        &mut self,
        task: u64,
        attempt: u32,
        agent: &str,
        t: pb::TestResult,
        step: &mut Step,
    ) {
        let profile = agent_profile(&self.agents, agent);
        let Some(e) = self.jobs.get_mut(&task) else {
            return;
        };
        e.job
            .tests
            .get_or_insert_with(Default::default)
            .record(&t.outcome);
        let run = pb::TestRun {
            job_id: e.job.id.clone(),
            time_ms: self.now,
            profile,
            agent: agent.to_string(),
            attempt,
            outcome: t.outcome.clone(),
            duration_s: t.duration_s,
            when: t.when.clone(),
        };
        let test_id = t.nodeid.clone();
        let collected = t.outcome == "collected";
        let forward = match e.job.parent.parse::<u64>() {
            Ok(parent) if !collected => {
                let mut ft = t.clone();
                ft.nodeid = format!("{} [{}]", t.nodeid, e.job.column);
                Some((parent, ft))
            }
            _ => None,
        };
        self.push_event(task, attempt, job_event::Kind::Test(t), step);
        let seq = self.jobs.get(&task).map_or(0, |e| e.job.last_event_seq);
        if collected {
            step.collected.push((task, attempt, test_id));
        } else {
            step.writes.put_test_run(&test_id, task, seq, &run);
        }
        if let Some((parent, ft)) = forward {
            self.push_event(parent, 0, job_event::Kind::Test(ft), step);
            self.refresh_parent(parent, step);
        }
    }

    pub(super) fn finish(&mut self, task: u64, f: pb::Finished, step: &mut Step) {
        if f.outcome() == Outcome::Requeue {
            let agent = self
                .leases
                .get(task)
                .map(|l| l.agent.clone())
                .unwrap_or_default();
            if let Some(s) = self.agents.get_mut(&agent).and_then(|a| a.session.as_mut()) {
                s.leaving = true;
            }
            let why = format!("agent {agent} gave it up: {}", f.reason);
            self.lose(task, &why, step);
            return;
        }
        let state = match f.outcome() {
            Outcome::Passed => JobState::Passed,
            Outcome::Failed => JobState::Failed,
            Outcome::Cancelled => JobState::Cancelled,
            Outcome::TimedOut => JobState::TimedOut,
            Outcome::Error | Outcome::Unspecified | Outcome::Requeue => JobState::Error,
        };
        let agent = self.leases.get(task).map(|l| l.agent.clone());
        self.leases.release(task);
        if let Some(e) = self.jobs.get_mut(&task) {
            e.attempt = None;
        }
        self.set_state(task, state, &f.reason, step);
        if let Some(agent) = agent {
            self.judge_agent(&agent, task, state, &f.reason, step);
        }
        step.dispatch = true;
    }

    /// The attempt of `task` is gone (agent lost or restarted): retry or give up.
    pub(super) fn lose(&mut self, task: u64, why: &str, step: &mut Step) {
        self.leases.release(task);
        let Some(e) = self.jobs.get_mut(&task) else {
            return;
        };
        let Some(att) = e.attempt.take() else { return };
        let retries = e.job.spec.as_ref().and_then(|s| s.retries).unwrap_or(0);
        tracing::warn!(task, attempt = att.attempt, agent = %att.agent, why, "attempt lost");
        if att.cancel_requested {
            self.set_state(
                task,
                JobState::Cancelled,
                &format!("cancelled ({why})"),
                step,
            );
        } else if e.job.attempts.saturating_sub(e.job.quarantined_attempts) <= retries {
            let spec = e.job.spec.clone().unwrap_or_default();
            let submitted = e.job.submitted_at_ms;
            self.pending.push(
                task,
                &spec.queue,
                spec.priority,
                submitted,
                self.aging_ms(&spec.queue),
            );
            self.set_state(
                task,
                JobState::Queued,
                &format!("attempt {} lost ({why}); requeued", att.attempt),
                step,
            );
        } else {
            self.set_state(
                task,
                JobState::Error,
                &format!("attempt {} lost ({why}); no retries left", att.attempt),
                step,
            );
        }
        step.dispatch = true;
    }

    pub(super) fn expire_leases(&mut self, step: &mut Step) {
        let now = self.now;
        let lease = self.cfg.lease_timeout.as_millis() as i64;
        let grace_end = self.started_ms + self.cfg.restart_grace.as_millis() as i64;
        let expired: Vec<(String, Vec<u64>)> = self
            .agents
            .iter()
            .filter(|(_, a)| now > (a.last_seen_ms + lease).max(grace_end))
            .map(|(n, _)| (n.clone(), self.leases.held_by(n)))
            .filter(|(_, held)| !held.is_empty())
            .collect();
        for (name, held) in expired {
            for task in held {
                self.lose(task, &format!("agent {name} silent past its lease"), step);
            }
        }
    }

    /// Hands pending jobs to agents with free slots, highest rank first (a
    /// drained or quarantined agent takes only its health checks).
    pub(super) fn dispatch(&mut self, step: &mut Step) {
        let mut free: Vec<(String, usize)> = self
            .agents
            .iter()
            .filter(|(_, a)| a.connected_for_work())
            .filter_map(|(n, a)| {
                let held = self.leases.count_held_by(n);
                (a.slots() > held).then(|| (n.clone(), a.slots() - held))
            })
            .collect();
        if free.is_empty() || self.pending.is_empty() {
            return;
        }
        // Least-loaded first, so work spreads over the fleet.
        free.sort_by_key(|(n, _)| self.leases.count_held_by(n));
        let mut chosen = Vec::new();
        for id in self.pending.iter() {
            if free.is_empty() {
                break;
            }
            let e = &self.jobs[&id];
            let Some(spec) = &e.job.spec else { continue };
            let pick = free.iter().position(|(n, _)| {
                let a = &self.agents[n];
                a.accepts(spec) && fits(&e.req, spec, &a.attrs, a.caps())
            });
            if let Some(i) = pick {
                chosen.push((id, free[i].0.clone()));
                free[i].1 -= 1;
                if free[i].1 == 0 {
                    free.remove(i);
                }
            }
        }
        for (id, agent) in chosen {
            self.assign(id, &agent, step);
        }
    }

    pub(super) fn assign(&mut self, id: u64, agent: &str, step: &mut Step) {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        step.writes.put_meta(NEXT_EPOCH, self.next_epoch);
        self.pending.remove(id);
        let Some(e) = self.jobs.get_mut(&id) else {
            return;
        };
        e.job.attempts += 1;
        e.job.agent = agent.to_string();
        e.job.tests = Some(TestCounts::default());
        e.job.cases.clear();
        let att = AttemptRecord {
            attempt: e.job.attempts,
            epoch,
            agent: agent.to_string(),
            applied_seq: 0,
            cancel_requested: false,
            log_bytes: 0,
        };
        let r = attempt_ref(id, &att);
        let spec = e.job.spec.clone();
        self.leases.grant(
            id,
            Lease {
                agent: agent.to_string(),
                attempt: att.attempt,
                epoch,
            },
        );
        let reason = format!("attempt {} on {agent}", att.attempt);
        e.attempt = Some(att);
        self.set_state(id, JobState::Assigned, &reason, step);
        if let Some(s) = self.agents.get(agent).and_then(|a| a.session.as_ref()) {
            step.send(
                &s.tx,
                scheduler_message::Msg::Assign(pb::Assignment {
                    attempt: Some(r),
                    job_id: id.to_string(),
                    spec,
                }),
            );
        }
    }
}

/// The one log line that says an attempt's output was cut at `limit` bytes.
pub fn log_limit_marker(limit: u64) -> String {
    let size = match limit {
        l if l >= 1 << 20 && l % (1 << 20) == 0 => format!("{} MiB", l >> 20),
        l if l >= 1 << 10 && l % (1 << 10) == 0 => format!("{} KiB", l >> 10),
        l => format!("{l} bytes"),
    };
    format!("\n[msfleet: this attempt's output passed the {size} log limit; the rest is dropped]\n")
}

pub(super) fn attempt_ref(id: u64, att: &AttemptRecord) -> AttemptRef {
    AttemptRef {
        task_id: id.to_string(),
        attempt: att.attempt,
        epoch: att.epoch,
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::*;
    use msfleet_proto::{scheduler_message::Msg, AttemptRef, JobState::*, Outcome};
    use std::time::Duration;

    fn lease_3s(c: &mut crate::Config) {
        c.lease_timeout = Duration::from_secs(3);
    }

    #[test]
    fn a_gone_agent_loses_its_attempt_after_the_lease_and_the_job_runs_elsewhere() {
        let mut h = Harness::with(lease_3s);
        let mut a = h.register("a1", "cpu", 1);
        let job = h.submit(spec()).unwrap();
        let first = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.update(&mut a, &first, 1, started());
        h.disconnect(&a);
        h.advance(3_000);
        h.tick();
        assert_eq!(h.state(&job.id), Running, "not lost at the lease's edge");
        h.advance(1);
        let mut b = h.register("b1", "cpu", 1);
        h.tick();
        let view = h.job(&job.id);
        assert_eq!(view.attempts, 2);
        assert_eq!(
            view.agent, "b1",
            "requeued and given to an agent that is alive"
        );
        let second = h.assignments(&mut b)[0].attempt.clone().unwrap();
        assert_eq!(second.attempt, 2);
        assert!(second.epoch > first.epoch, "a new lease has a higher epoch");
        // The old agent comes back claiming its attempt: refused and told to drop it.
        let mut back = h
            .register_as("a1", "a1-1", caps("cpu", 1), vec![first.clone()])
            .unwrap();
        let msgs = h.messages(&mut back);
        let (why, abandon) = reject(&msgs).expect("a stale attempt is refused");
        assert!(abandon, "{why}");
        assert!(msgs
            .iter()
            .any(|m| matches!(m, Msg::Registered(r) if r.resumed.is_empty())));
        h.finish(&mut b, &second, Outcome::Passed);
        assert_eq!(h.state(&job.id), Passed);
        assert_eq!(
            h.state_log(&job.id),
            vec![Queued, Assigned, Running, Queued, Assigned, Running, Passed]
        );
    }

    #[test]
    fn a_lost_attempt_without_retries_left_ends_the_job_in_error() {
        let mut h = Harness::with(lease_3s);
        let mut a = h.register("a1", "cpu", 1);
        let mut s = spec();
        s.retries = Some(0);
        let job = h.submit(s).unwrap();
        assert_eq!(h.assignments(&mut a).len(), 1);
        h.advance(3_001);
        h.tick();
        let view = h.job(&job.id);
        assert_eq!(
            view.state(),
            Error,
            "lost is infrastructure, not a test failure"
        );
        assert!(
            view.reason
                .contains("attempt 1 lost (agent a1 silent past its lease); no retries left"),
            "{}",
            view.reason
        );
    }

    #[test]
    fn the_restart_grace_keeps_leases_alive_until_it_ends() {
        let mut h = Harness::with(|c| {
            c.lease_timeout = Duration::from_secs(3);
            c.restart_grace = Duration::from_secs(10);
        });
        let mut a = h.register("a1", "cpu", 1);
        let job = h.submit(spec()).unwrap();
        assert_eq!(h.assignments(&mut a).len(), 1);
        h.disconnect(&a);
        h.advance(9_000);
        h.tick();
        assert_eq!(h.state(&job.id), Assigned, "inside the grace");
        h.advance(1_001);
        h.tick();
        assert_eq!(h.state(&job.id), Queued, "past the grace and the lease");
    }

    #[test]
    fn updates_are_fenced_by_epoch_and_applied_once_in_sequence() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        let job = h.submit(spec()).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();

        let stale = AttemptRef {
            epoch: r.epoch + 7,
            ..r.clone()
        };
        let msgs = h.update(&mut a, &stale, 1, started());
        let (_, abandon) = reject(&msgs).expect("wrong epoch refused");
        assert!(abandon);
        assert_eq!(
            h.state(&job.id),
            Assigned,
            "a refused update changes nothing"
        );

        let msgs = h.update(&mut a, &r, 2, started());
        let (why, abandon) = reject(&msgs).expect("a gap is refused");
        assert!(!abandon, "a gap is not fatal: the agent resends");
        assert!(why.contains("out of order: expected 1"), "{why}");

        let msgs = h.update(&mut a, &r, 1, started());
        assert!(msgs.iter().any(|m| is_ack(m, 1)));
        assert_eq!(h.state(&job.id), Running);
        h.update(&mut a, &r, 2, test_result("t.py::a", "passed"));
        // A resend of something durable is acknowledged again and not counted twice.
        let msgs = h.update(&mut a, &r, 2, test_result("t.py::a", "passed"));
        assert!(msgs.iter().any(|m| is_ack(m, 2)));
        assert_eq!(h.job(&job.id).tests.unwrap().passed, 1);

        let big = task_log(msfleet_proto::MAX_LOG_CHUNK + 1);
        let msgs = h.update(&mut a, &r, 3, big);
        let (why, abandon) = reject(&msgs).expect("oversized log refused");
        assert!(
            !abandon && why.contains("over the 65536 byte limit"),
            "{why}"
        );
        // The refused chunk did not use up sequence number 3.
        let msgs = h.update(&mut a, &r, 3, finished(Outcome::Passed));
        assert!(msgs.iter().any(|m| is_ack(m, 3)));
        assert_eq!(h.state(&job.id), Passed);
    }

    /// The log chunks stored for `job`: (bytes of output, markers).
    fn stored_logs(h: &Harness, job: &str) -> (usize, Vec<String>) {
        let mut bytes = 0;
        let mut markers = Vec::new();
        for ev in h.events(job) {
            if let Some(msfleet_proto::job_event::Kind::Log(c)) = ev.kind {
                let text = String::from_utf8_lossy(&c.data).to_string();
                if text.contains("[msfleet:") {
                    markers.push(text);
                } else {
                    bytes += c.data.len();
                }
            }
        }
        (bytes, markers)
    }

    #[test]
    fn an_attempts_log_stops_at_the_limit_with_one_marker_and_a_reload_keeps_the_total() {
        let mut h = Harness::with(|c| c.max_log_bytes = 100);
        let mut a = h.register("a1", "cpu", 1);
        let job = h.submit(spec()).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.update(&mut a, &r, 1, started());
        h.update(&mut a, &r, 2, task_log(60));
        // A restart between chunks: the 60 bytes still count.
        h.reload();
        let mut a = h
            .register_as("a1", "a1-1", caps("cpu", 1), vec![r.clone()])
            .unwrap();
        h.messages(&mut a);
        let msgs = h.update(&mut a, &r, 3, task_log(60));
        assert!(msgs.iter().any(|m| is_ack(m, 3)), "{msgs:?}");
        let msgs = h.update(&mut a, &r, 4, task_log(60));
        assert!(
            msgs.iter().any(|m| is_ack(m, 4)),
            "a dropped chunk is still acknowledged: {msgs:?}"
        );
        h.update(&mut a, &r, 5, test_result("t.py::a", "passed"));
        h.reload();
        let mut a = h
            .register_as("a1", "a1-1", caps("cpu", 1), vec![r.clone()])
            .unwrap();
        h.messages(&mut a);
        h.update(&mut a, &r, 6, task_log(10));
        h.update(&mut a, &r, 7, test_result("t.py::b", "failed"));
        h.update(&mut a, &r, 8, finished(Outcome::Failed));
        let (bytes, markers) = stored_logs(&h, &job.id);
        assert_eq!(bytes, 100, "output is kept up to the limit exactly");
        assert_eq!(markers.len(), 1, "{markers:?}");
        assert!(
            markers[0].contains("passed the 100 bytes log limit; the rest is dropped"),
            "{}",
            markers[0]
        );
        let view = h.job(&job.id);
        assert_eq!(view.state(), Failed, "the final state still applies");
        let tests = view.tests.unwrap();
        assert_eq!((tests.passed, tests.failed), (1, 1), "results still count");
    }

    #[test]
    fn the_log_limit_marker_names_the_limit_in_binary_units() {
        assert!(super::log_limit_marker(256 << 20).contains("the 256 MiB log limit"));
        assert!(super::log_limit_marker(64 << 10).contains("the 64 KiB log limit"));
    }

    #[test]
    fn oversized_test_and_case_results_are_refused_and_change_no_count() {
        use msfleet_proto::{task_update::Kind, CaseResult, TestResult};
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        let job = h.submit(spec()).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.update(&mut a, &r, 1, started());
        let ok = TestResult {
            nodeid: "t.py::a".into(),
            when: "call".into(),
            outcome: "failed".into(),
            ..Default::default()
        };
        let bad: Vec<(Kind, &str)> = vec![
            (
                Kind::Test(TestResult {
                    longrepr: "x".repeat((1 << 20) + 1),
                    ..ok.clone()
                }),
                "longrepr is too long",
            ),
            (
                Kind::Test(TestResult {
                    nodeid: "n".repeat(4097),
                    ..ok.clone()
                }),
                "nodeid is too long",
            ),
            (
                Kind::Test(TestResult {
                    markers: vec!["slow".into(); 257],
                    ..ok.clone()
                }),
                "markers has too many items",
            ),
            (
                Kind::Case(CaseResult {
                    name: "c".into(),
                    operators_missing: vec!["o".repeat(1024); 1025],
                    ..Default::default()
                }),
                "case result (encoded) is too long",
            ),
        ];
        for (kind, want) in bad {
            let msgs = h.update(&mut a, &r, 2, kind);
            let (why, abandon) = reject(&msgs).expect("refused");
            assert!(!abandon, "the attempt goes on: {why}");
            assert!(why.contains(want), "{why} !~ {want}");
            assert!(why.len() < 200, "{why}");
        }
        let view = h.job(&job.id);
        assert_eq!(view.tests.unwrap().total, 0, "nothing was counted");
        assert!(view.cases.is_empty());
        // Sequence number 2 is still free for the next good result.
        let msgs = h.update(&mut a, &r, 2, Kind::Test(ok));
        assert!(msgs.iter().any(|m| is_ack(m, 2)));
        assert_eq!(h.job(&job.id).tests.unwrap().failed, 1);
    }

    fn task_log(n: usize) -> msfleet_proto::task_update::Kind {
        msfleet_proto::task_update::Kind::Log(msfleet_proto::LogChunk {
            data: vec![b'x'; n],
            ..Default::default()
        })
    }

    #[test]
    fn dispatch_fills_free_slots_highest_priority_first() {
        let mut h = Harness::new();
        let low = h.submit(spec()).unwrap();
        let mut urgent = spec();
        urgent.priority = 10;
        let high = h.submit(urgent).unwrap();
        let third = h.submit(spec()).unwrap();
        let mut a = h.register("a1", "cpu", 2);
        let got: Vec<String> = h
            .assignments(&mut a)
            .into_iter()
            .map(|x| x.job_id)
            .collect();
        assert_eq!(got, vec![high.id.clone(), low.id.clone()]);
        assert_eq!(h.state(&third.id), Queued, "two slots, two attempts");
    }

    #[test]
    fn an_agent_that_restarts_without_its_attempt_loses_it() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        let job = h.submit(spec()).unwrap();
        assert_eq!(h.assignments(&mut a).len(), 1);
        h.disconnect(&a);
        let mut again = h
            .register_as("a1", "a1-2", caps("cpu", 1), Vec::new())
            .unwrap();
        let view = h.job(&job.id);
        assert_eq!(view.attempts, 2);
        assert!(h
            .state_log(&job.id)
            .windows(2)
            .any(|w| w == [Assigned, Queued]));
        let msgs = h.messages(&mut again);
        assert!(msgs.iter().any(|m| matches!(m, Msg::Registered(_))));
        assert!(msgs
            .iter()
            .any(|m| matches!(m, Msg::Assign(x) if x.attempt.as_ref().unwrap().attempt == 2)));
    }

    /// A regression found by `fuzz_core_agent_message_sequences`: a refusal
    /// quoted the agent's task id whole, so a 5 KB id made a 5 KB reject.
    #[test]
    fn rejects_quote_a_long_task_id_cut_short() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        h.submit(spec()).unwrap();
        h.assignments(&mut a);
        for task_id in ["x".repeat(5000), "9".repeat(5000)] {
            let junk = AttemptRef {
                task_id,
                attempt: 1,
                epoch: 1,
            };
            let mut msgs = h.update(&mut a, &junk, 1, started());
            h.send(crate::core::Command::Heartbeat {
                session: a.session,
                hb: msfleet_proto::Heartbeat {
                    running: vec![junk.clone()],
                },
            });
            msgs.extend(h.messages(&mut a));
            let rejects: Vec<_> = msgs
                .iter()
                .filter_map(|m| match m {
                    Msg::Reject(r) => Some(r.message.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(rejects.len(), 2, "{rejects:.100?}");
            for r in rejects {
                assert!(r.len() < 200 && r.contains("..."), "{r:.300}");
            }
        }
    }
}
