//! Agent health: quarantine (an admin's or the scheduler's own), what a
//! quarantined agent may still run (health checks only), the run of infra
//! errors that quarantines an agent, probe reports, and health-check jobs.
//!
//! Quarantine is not drain: a quarantined agent's results are suspect, so its
//! running attempts are stopped at once and requeued elsewhere without
//! counting against their retry budget (`Job.quarantined_attempts`). It leaves
//! quarantine when an admin sets it active again, or (automatic quarantine
//! only) when a health check on it passes.

use super::*;

/// The job kind of a health check: made only by [`Core::check_agent`].
pub(super) const CHECK_KIND: &str = "check";

/// Longest quarantine reason kept (it is also said in refusals to the agent).
const MAX_QUARANTINE_REASON: usize = 900;

/// How long a health check may run, and wait for its agent.
const CHECK_TIMEOUT_MS: i64 = 5 * 60 * 1000;
const CHECK_EXPIRE_AFTER_MS: i64 = 10 * 60 * 1000;

pub(super) fn is_check(spec: &JobSpec) -> bool {
    spec.kind == CHECK_KIND
}

impl AgentEntry {
    /// Whether the agent has an open session that takes assignments: not
    /// shutting down, and not lost (silent past its lease, not yet back).
    pub(super) fn connected_for_work(&self) -> bool {
        self.session.as_ref().is_some_and(|s| !s.leaving) && self.lost.is_none()
    }

    /// Whether the agent may be given `spec` now: an active agent any job, a
    /// drained or quarantined one only a health check (pinned to it).
    pub(super) fn accepts(&self, spec: &JobSpec) -> bool {
        self.connected_for_work() && (self.record.admin() == AgentAdmin::Active || is_check(spec))
    }
}

impl Core {
    /// Quarantines agent `name` (a no-op for one already quarantined, unless
    /// an admin quarantines an automatically quarantined agent: then the
    /// admin's reason replaces the scheduler's). Its running attempts, health
    /// checks aside, are stopped and requeued at once.
    pub(super) fn quarantine(&mut self, name: &str, reason: String, auto: bool, step: &mut Step) {
        let now = self.now;
        let Some(a) = self.agents.get_mut(name) else {
            return;
        };
        if a.record.admin() == AgentAdmin::Quarantined && (auto || !a.record.quarantine_auto) {
            return;
        }
        let mut reason = reason;
        limits::cut(&mut reason, MAX_QUARANTINE_REASON);
        tracing::warn!(agent = %name, auto, %reason, "agent quarantined");
        a.record.admin = AgentAdmin::Quarantined as i32;
        a.record.quarantine_reason = reason.clone();
        a.record.quarantine_auto = auto;
        a.record.quarantined_at_ms = now;
        step.writes.put_agent(&a.record);
        let tx = a.session.as_ref().map(|s| s.tx.clone());
        for task in self.leases.held_by(name) {
            let check = self
                .jobs
                .get(&task)
                .and_then(|e| e.job.spec.as_ref())
                .is_some_and(is_check);
            if check {
                continue;
            }
            let r = self.jobs[&task]
                .attempt
                .as_ref()
                .map(|att| attempt_ref(task, att));
            self.requeue_suspect(task, &format!("agent {name} quarantined: {reason}"), step);
            if let (Some(tx), Some(r)) = (&tx, r) {
                step.send(
                    tx,
                    scheduler_message::Msg::Reject(pb::Reject {
                        attempt: Some(r),
                        seq: 0,
                        message: format!("this agent was quarantined: {reason}"),
                        abandon: true,
                    }),
                );
            }
        }
        step.dispatch = true;
    }

    /// Sets agent `name`'s admin state to `admin` (active or drained); out
    /// of a quarantine, its run of infra errors starts again.
    pub(super) fn clear_quarantine(&mut self, name: &str, admin: AgentAdmin, step: &mut Step) {
        let Some(a) = self.agents.get_mut(name) else {
            return;
        };
        if a.record.admin() == AgentAdmin::Quarantined {
            tracing::info!(agent = %name, "agent released from quarantine");
            a.record.infra_errors = 0;
        }
        a.record.admin = admin as i32;
        a.record.quarantine_reason.clear();
        a.record.quarantine_auto = false;
        a.record.quarantined_at_ms = 0;
        step.writes.put_agent(&a.record);
        step.dispatch = true;
    }

    /// Stops `task`'s attempt because its agent was quarantined: requeued at
    /// once, and the attempt does not count against the job's retries.
    fn requeue_suspect(&mut self, task: u64, why: &str, step: &mut Step) {
        step.touched.insert(task);
        self.lose(task, Loss::Quarantined, why, step);
    }

    /// What an attempt that ended in `state` on `agent` says about the agent:
    /// a health check's verdict releases or quarantines it; otherwise an
    /// `error` extends its run of infra errors (quarantined at
    /// [`Config::quarantine_after`]) and a pass or a test failure ends it.
    pub(super) fn judge_agent(
        &mut self,
        agent: &str,
        task: u64,
        state: JobState,
        reason: &str,
        step: &mut Step,
    ) {
        let check = self
            .jobs
            .get(&task)
            .and_then(|e| e.job.spec.as_ref())
            .is_some_and(is_check);
        let Some(a) = self.agents.get_mut(agent) else {
            return;
        };
        if check {
            match state {
                JobState::Passed => {
                    if a.record.admin() == AgentAdmin::Quarantined && a.record.quarantine_auto {
                        self.clear_quarantine(agent, AgentAdmin::Active, step);
                    } else if a.record.infra_errors != 0 {
                        a.record.infra_errors = 0;
                        step.writes.put_agent(&a.record);
                    }
                }
                JobState::Failed | JobState::Error | JobState::TimedOut => {
                    let why = format!("health check (job {task}) failed: {reason}");
                    self.quarantine(agent, why, true, step);
                }
                _ => {}
            }
            return;
        }
        match state {
            JobState::Passed | JobState::Failed if a.record.infra_errors != 0 => {
                a.record.infra_errors = 0;
                step.writes.put_agent(&a.record);
            }
            JobState::Error => {
                a.record.infra_errors = a.record.infra_errors.saturating_add(1);
                step.writes.put_agent(&a.record);
                let k = self.cfg.quarantine_after;
                if k > 0 && a.record.infra_errors >= k {
                    let why = format!(
                        "{} infra errors in a row (last: job {task}: {})",
                        a.record.infra_errors,
                        crate::clip(reason)
                    );
                    self.quarantine(agent, why, true, step);
                }
            }
            _ => {}
        }
    }

    /// An agent's periodic probe: its probed facts (host, devices, health,
    /// environment usage) replace the stored ones; what it registered with (labels and profile
    /// from its token, roots, policy, slots) stays.
    pub(super) fn health_report(
        &mut self,
        session: u64,
        report: pb::HealthReport,
        step: &mut Step,
    ) {
        let Some((name, _)) = self.session_agent(session) else {
            return;
        };
        let Some(fresh) = report.capabilities else {
            return;
        };
        let Some(a) = self.agents.get_mut(&name) else {
            return;
        };
        let caps = a.record.capabilities.get_or_insert_with(Default::default);
        caps.host = fresh.host;
        caps.gpus = fresh.gpus;
        caps.npus = fresh.npus;
        caps.health = fresh.health;
        caps.environment_usage = fresh.environment_usage;
        a.attrs = matching::attributes(&name, caps);
        step.writes.put_agent(&a.record);
        // Facts such as disk free may let a waiting job fit now.
        step.dispatch = true;
        self.apply_health(&name, step);
    }

    /// Quarantines agent `name` while its latest probe says it is degraded
    /// (at registration and at every report, so an admin's release of a host
    /// that is still unhealthy lasts until its next probe).
    pub(super) fn apply_health(&mut self, name: &str, step: &mut Step) {
        let Some(a) = self.agents.get(name) else {
            return;
        };
        let Some(h) = a.caps().health.as_ref() else {
            return;
        };
        if h.status != "degraded" || a.record.admin() == AgentAdmin::Quarantined {
            return;
        }
        let why = format!("unhealthy probe: {}", h.reasons.join("; "));
        self.quarantine(name, why, true, step);
    }

    /// `msctl agent check NAME`: a health-check job pinned to the agent. It
    /// runs there whatever the agent's admin state, ahead of other work.
    pub(super) fn check_agent(
        &mut self,
        name: &str,
        by: &str,
        step: &mut Step,
    ) -> Result<Job, Status> {
        let Some(a) = self.agents.get(name) else {
            return Err(Status::not_found(format!(
                "no agent named '{}' has ever registered",
                crate::clip(name)
            )));
        };
        if !a.connected_for_work() {
            return Err(Status::failed_precondition(format!(
                "agent '{name}' is not connected (or is shutting down): a health check runs on \
                 the agent itself; start its msagent and check again"
            )));
        }
        check_name("agent", name)?;
        let spec = JobSpec {
            kind: CHECK_KIND.into(),
            queue: "default".into(),
            priority: limits::MAX_PRIORITY,
            requirements: format!("agent.name == \"{name}\""),
            name: format!("check {name}"),
            timeout_ms: Some(CHECK_TIMEOUT_MS),
            expire_after_ms: Some(CHECK_EXPIRE_AFTER_MS),
            retries: Some(0),
            ..Default::default()
        };
        let req = Requirement::parse(&spec.requirements)
            .map_err(|e| Status::internal(format!("health check requirement: {e}")))?;
        let id = self.new_job(spec, req, None, by, None, step);
        self.enqueue(id, step);
        Ok(self.view(id))
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::*;
    use super::super::Command;
    use msfleet_proto::{
        self as pb, task_update, AgentAdmin, HealthReport, HealthSummary, JobState::*, Outcome,
    };

    fn agent(h: &mut Harness, name: &str) -> msfleet_proto::Agent {
        h.call(|reply| Command::ListAgents { reply })
            .unwrap()
            .into_iter()
            .find(|a| a.name == name)
            .expect("the agent is listed")
    }

    fn check(h: &mut Harness, name: &str) -> msfleet_proto::Job {
        let name = name.to_string();
        h.call(|reply| Command::CheckAgent {
            name,
            by: "ana".into(),
            reply,
        })
        .unwrap()
    }

    fn pinned(name: &str) -> msfleet_proto::JobSpec {
        let mut s = spec();
        s.requirements = format!("agent.name == \"{name}\"");
        s
    }

    /// Runs one job on `conn` that ends `outcome`.
    fn run_one(h: &mut Harness, conn: &mut Conn, name: &str, outcome: Outcome) -> String {
        let job = h.submit(pinned(name)).unwrap();
        let r = h.assignments(conn)[0].attempt.clone().unwrap();
        h.update(conn, &r, 1, started());
        h.finish_with(conn, &r, 2, outcome, "source dir /srv/x does not exist");
        job.id
    }

    /// Errors that are the job's own doing (a missing source dir, an unknown
    /// git ref, the policy refusing it: `Finished.job_fault`) are `error`
    /// but never quarantine the agent, however many come in a row.
    #[test]
    fn errors_that_are_the_jobs_own_doing_do_not_count_against_the_agent() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        run_one(&mut h, &mut a, "a1", Outcome::Error);
        assert_eq!(agent(&mut h, "a1").infra_errors, 1);
        for _ in 0..5 {
            let job = h.submit(pinned("a1")).unwrap();
            let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
            h.update(&mut a, &r, 1, started());
            let kind = task_update::Kind::Finished(pb::Finished {
                outcome: Outcome::Error as i32,
                reason: "source dir /srv/typo does not exist on this agent".into(),
                exit_code: -1,
                job_fault: true,
                ..Default::default()
            });
            h.update(&mut a, &r, 2, kind);
            assert_eq!(h.state(&job.id), Error, "still an error for the job");
        }
        let q = agent(&mut h, "a1");
        assert_eq!(q.state, "online", "{}", q.state_reason);
        assert_eq!(q.infra_errors, 1, "neither counted nor reset");
    }

    #[test]
    fn three_infra_errors_in_a_row_quarantine_and_a_passing_check_releases() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        let _b = h.register("b1", "cpu", 1);
        run_one(&mut h, &mut a, "a1", Outcome::Error);
        run_one(&mut h, &mut a, "a1", Outcome::Error);
        // A test failure is no infra error: the run starts again.
        run_one(&mut h, &mut a, "a1", Outcome::Failed);
        assert_eq!(agent(&mut h, "a1").infra_errors, 0);
        run_one(&mut h, &mut a, "a1", Outcome::Error);
        run_one(&mut h, &mut a, "a1", Outcome::Error);
        assert_eq!(agent(&mut h, "a1").state, "online");
        let last = run_one(&mut h, &mut a, "a1", Outcome::Error);
        let q = agent(&mut h, "a1");
        assert_eq!(q.state, "quarantined");
        assert!(q.quarantine_auto);
        assert!(
            q.state_reason.starts_with(&format!(
                "3 infra errors in a row (last: job {last}: source dir /srv/x"
            )),
            "{}",
            q.state_reason
        );
        // Nothing but a health check reaches it; the reason survives a restart.
        let other = h.submit(spec()).unwrap();
        assert!(h.assignments(&mut a).is_empty());
        h.cancel(&other.id).unwrap();
        h.reload();
        let q = agent(&mut h, "a1");
        assert_eq!(q.state, "quarantined");
        assert!(q.state_reason.contains("3 infra errors in a row"));
        let mut a = h.register("a1", "cpu", 1);
        let c = check(&mut h, "a1");
        let asg = h.assignments(&mut a);
        assert_eq!(asg.len(), 1, "the check goes to the quarantined agent");
        assert_eq!(asg[0].job_id, c.id);
        assert_eq!(asg[0].spec.as_ref().unwrap().kind, "check");
        let r = asg[0].attempt.clone().unwrap();
        h.finish(&mut a, &r, Outcome::Passed);
        assert_eq!(h.state(&c.id), Passed);
        let back = agent(&mut h, "a1");
        assert_eq!(back.state, "online");
        assert_eq!(back.infra_errors, 0);
        assert!(back.state_reason.is_empty());
        let job = h.submit(spec()).unwrap();
        assert_eq!(h.assignments(&mut a)[0].job_id, job.id, "work again");
    }

    #[test]
    fn a_quarantined_agents_running_attempt_is_stopped_and_runs_elsewhere_without_using_a_retry() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        let mut s = spec();
        s.retries = Some(0);
        let job = h.submit(s).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.update(&mut a, &r, 1, started());
        let mut b = h.register("b1", "cpu", 1);
        let q = h
            .call(|reply| Command::SetAgentAdmin {
                name: "a1".into(),
                admin: AgentAdmin::Quarantined,
                drain_deadline_in_ms: 0,
                by: "ana".into(),
                reason: "fan noise".into(),
                reply,
            })
            .unwrap();
        assert_eq!(q.state, "quarantined");
        assert_eq!(q.state_reason, "admin ana: fan noise");
        assert!(!q.quarantine_auto);
        let (why, abandon) = reject(&h.messages(&mut a)).expect("the agent is told to stop");
        assert!(abandon && why.contains("quarantined"), "{why}");
        let view = h.job(&job.id);
        assert_eq!(view.agent, "b1", "requeued at once, on the other agent");
        assert_eq!(view.quarantined_attempts, 1);
        let second = h.assignments(&mut b)[0].attempt.clone().unwrap();
        // The quarantined agent's late result is refused.
        let late = h.update(&mut a, &r, 2, finished(Outcome::Passed));
        assert!(reject(&late).is_some_and(|(_, abandon)| abandon));
        h.finish(&mut b, &second, Outcome::Passed);
        let view = h.job(&job.id);
        assert_eq!(view.state(), Passed, "{}", view.reason);
        assert_eq!(view.attempts, 2);
        // An admin's quarantine is not released by a passing check.
        let c = check(&mut h, "a1");
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.finish(&mut a, &r, Outcome::Passed);
        assert_eq!(h.state(&c.id), Passed);
        assert_eq!(agent(&mut h, "a1").state, "quarantined");
        // Undrain does.
        h.call(|reply| Command::SetAgentAdmin {
            name: "a1".into(),
            admin: AgentAdmin::Active,
            drain_deadline_in_ms: 0,
            by: "ana".into(),
            reason: String::new(),
            reply,
        })
        .unwrap();
        let back = agent(&mut h, "a1");
        assert_eq!(back.state, "online");
        assert!(back.quarantine_reason.is_empty());
    }

    #[test]
    fn an_unhealthy_probe_quarantines_and_a_failed_check_keeps_it_there() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 2);
        let job = h.submit(spec()).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        let mut fresh = caps("cpu", 2);
        fresh.host = Some(msfleet_proto::HostInfo {
            disk_free_mb: 321,
            ..Default::default()
        });
        fresh.labels.insert("pool".into(), "sneaky".into());
        fresh.health = Some(HealthSummary {
            status: "degraded".into(),
            reasons: vec!["npu 5: Alarm".into()],
            probed_at_ms: T0,
        });
        h.send(Command::HealthReport {
            session: a.session,
            report: HealthReport {
                capabilities: Some(fresh),
            },
        });
        let q = agent(&mut h, "a1");
        assert_eq!(q.state, "quarantined");
        assert_eq!(q.state_reason, "unhealthy probe: npu 5: Alarm");
        let got = q.capabilities.unwrap();
        assert_eq!(got.host.unwrap().disk_free_mb, 321, "probed facts refresh");
        assert!(!got.labels.contains_key("pool"), "registered labels stay");
        assert_eq!(h.job(&job.id).state(), Queued, "its attempt was stopped");
        assert!(reject(&h.messages(&mut a)).is_some());
        let _ = r;
        // A failing check keeps it quarantined, with the check's reason.
        let c = check(&mut h, "a1");
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.finish_with(&mut a, &r, 1, Outcome::Failed, "npu 5: Alarm");
        assert_eq!(h.state(&c.id), Failed);
        h.reload();
        let q = agent(&mut h, "a1");
        assert_eq!(q.state, "quarantined");
        assert_eq!(q.state_reason, "unhealthy probe: npu 5: Alarm");
        assert!(q.quarantine_auto);
    }

    #[test]
    fn the_infra_error_run_survives_a_restart_and_zero_turns_it_off() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        run_one(&mut h, &mut a, "a1", Outcome::Error);
        run_one(&mut h, &mut a, "a1", Outcome::Error);
        h.reload();
        assert_eq!(agent(&mut h, "a1").infra_errors, 2, "durable");
        let mut a = h.register("a1", "cpu", 1);
        run_one(&mut h, &mut a, "a1", Outcome::Error);
        assert_eq!(agent(&mut h, "a1").state, "quarantined");

        let mut h = Harness::with(|c| c.quarantine_after = 0);
        let mut a = h.register("a1", "cpu", 1);
        for _ in 0..5 {
            run_one(&mut h, &mut a, "a1", Outcome::Error);
        }
        let a = agent(&mut h, "a1");
        assert_eq!((a.state.as_str(), a.infra_errors), ("online", 5));
    }

    #[test]
    fn an_agent_that_registers_degraded_is_quarantined_at_once() {
        let mut h = Harness::new();
        let mut sick = caps("cpu", 1);
        sick.health = Some(HealthSummary {
            status: "degraded".into(),
            reasons: vec!["disk free 0.4 GB < 2.0 GB".into()],
            probed_at_ms: T0,
        });
        let mut a = h.register_as("a1", "a1-1", sick, Vec::new()).unwrap();
        let q = agent(&mut h, "a1");
        assert_eq!(q.state, "quarantined");
        assert_eq!(q.state_reason, "unhealthy probe: disk free 0.4 GB < 2.0 GB");
        let job = h.submit(spec()).unwrap();
        assert!(h.assignments(&mut a).is_empty(), "no work");
        assert_eq!(
            h.job(&job.id).warnings,
            vec!["every matching agent is offline, drained or quarantined"]
        );
    }

    #[test]
    fn a_check_needs_a_known_agent_and_a_user_cannot_submit_one() {
        let mut h = Harness::new();
        let e = h
            .call(|reply| Command::CheckAgent {
                name: "nobody".into(),
                by: "ana".into(),
                reply,
            })
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let a = h.register("a1", "cpu", 1);
        h.disconnect(&a);
        let e = h
            .call(|reply| Command::CheckAgent {
                name: "a1".into(),
                by: "ana".into(),
                reply,
            })
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("not connected"), "{}", e.message());
        let _a = h.register("a1", "cpu", 1);
        let mut s = spec();
        s.kind = "check".into();
        let e = h.submit(s).unwrap_err();
        assert!(e.message().contains("msctl agent check"), "{}", e.message());
        assert_eq!(h.jobs().len(), 0);
    }
}
