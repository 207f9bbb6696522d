//! Jobs: submit (validation, dedup, root coverage), cancel, the state
//! machine's one transition function [`Core::set_state`], and the views users
//! see (`show`, `list`, `queues`).

use super::*;

pub(super) struct JobEntry {
    pub(super) job: Job,
    pub(super) req: Requirement,
    pub(super) attempt: Option<AttemptRecord>,
    /// Present until the job's final event has been queued for publication.
    pub(super) progress: Option<Arc<watch::Sender<Progress>>>,
}

impl Core {
    /// Makes a job. `origin` names the schedule and slot that fired it.
    pub(super) fn submit(
        &mut self,
        mut spec: JobSpec,
        origin: Option<(String, i64)>,
        by: &str,
        caller: Option<&SpanContext>,
        step: &mut Step,
    ) -> Result<Job, Status> {
        let req = jobspec::validate(&mut spec, &self.cfg)?;
        if spec.dedup_key.len() > 256 {
            return Err(Status::invalid_argument("dedup key longer than 256 bytes"));
        }
        if let Some(&(id, at)) = self.dedup.get(&spec.dedup_key) {
            let window = self.cfg.dedup_window.as_millis() as i64;
            if !spec.dedup_key.is_empty() && self.now - at < window && self.ensure_loaded(id) {
                let mut existing = self.view(id);
                existing.deduplicated = true;
                return Ok(existing);
            }
        }
        if let Some(dir) = source_dir(&spec) {
            let has_roots = self.agents.values().any(|a| !a.caps().roots.is_empty());
            let covered = self
                .agents
                .values()
                .any(|a| a.caps().roots.iter().any(|r| under_root(dir, r)));
            if has_roots && !covered {
                let roots: BTreeSet<&str> = self
                    .agents
                    .values()
                    .flat_map(|a| a.caps().roots.iter().map(String::as_str))
                    .collect();
                return Err(Status::invalid_argument(format!(
                    "source dir '{}' is outside the allowed roots of every registered agent \
                     ({}); move it under a root or start an agent with --root",
                    crate::clip(dir),
                    roots.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let fleet = self.agents.iter().map(|(n, a)| (n.as_str(), a.caps()));
        if let Some(why) = matching::refused_by_every_policy(&spec, fleet) {
            return Err(Status::invalid_argument(why));
        }
        // Known agents count whether online or not (a restarting fleet must
        // not refuse work); with none registered yet the job waits (a warning).
        if spec.fanout.is_empty()
            && !spec.allow_unmatched
            && !self.agents.is_empty()
            && !self
                .agents
                .values()
                .any(|a| fits(&req, &spec, &a.attrs, a.caps()))
        {
            return Err(Status::invalid_argument(self.unmatched(&req, &spec)));
        }
        if spec.shards > 1 {
            if spec.kind != "pytest"
                || !spec.fanout.is_empty()
                || !spec.select.is_empty()
                || spec.collect_only
            {
                return Err(Status::invalid_argument(
                    "shards splits one pytest selection; it does not combine with fanout, select or collect_only",
                ));
            }
            if spec.shards > 64 {
                return Err(Status::invalid_argument(format!(
                    "shards {} is more than 64",
                    spec.shards
                )));
            }
        }
        let sharded = spec.shards > 1;
        let fanout = if spec.fanout.is_empty() {
            None
        } else {
            Some(self.fanout_targets(&spec, &req)?)
        };
        let id = self.new_job(spec, req, origin, by, caller, step);
        match fanout {
            // A fan-out parent runs nothing itself: its children do.
            Some(targets) => self.spawn_children(id, targets, step),
            None if sharded => self.spawn_collect(id, step),
            None => self.enqueue(id, step),
        }
        Ok(self.view(id))
    }

    /// Stores a new job from a valid `spec`, `queued`; not yet pending. With traces
    /// exported its span's ids are chosen here, under the span `caller` if given.
    pub(super) fn new_job(
        &mut self,
        spec: JobSpec,
        req: Requirement,
        origin: Option<(String, i64)>,
        by: &str,
        caller: Option<&SpanContext>,
        step: &mut Step,
    ) -> u64 {
        let id = self.next_job;
        self.next_job += 1;
        let now = self.now;
        if !spec.dedup_key.is_empty() {
            self.dedup.insert(spec.dedup_key.clone(), (id, now));
            self.dedup_order.push_back((now, spec.dedup_key.clone()));
            step.writes.put_dedup(&spec.dedup_key, id, now);
        }
        let (schedule, slot_ms) = origin.unwrap_or_default();
        let mut job = Job {
            id: id.to_string(),
            spec: Some(spec),
            state: JobState::Queued as i32,
            tests: Some(TestCounts::default()),
            submitted_at_ms: now,
            schedule,
            slot_ms,
            submitted_by: by.to_string(),
            ..Default::default()
        };
        telemetry::link_job(&mut job, caller);
        let progress = Arc::new(watch::channel(Progress::default()).0);
        self.hold_job(
            id,
            JobEntry {
                job,
                req,
                attempt: None,
                progress: Some(progress),
            },
        );
        self.set_state(id, JobState::Queued, "submitted", step);
        id
    }

    /// Puts job `id` (new, or requeued after an attempt) in its queue's
    /// pending order, by the rank fixed at submit.
    pub(super) fn enqueue(&mut self, id: u64, step: &mut Step) {
        self.push_pending(id);
        step.dispatch = true;
    }

    /// Puts job `id` in the pending order and its indexes (its class, its
    /// queue, its deadline while it never started). Also used by the load.
    pub(super) fn push_pending(&mut self, id: u64) {
        let Some(job) = self.jobs.get(&id).map(|e| &e.job) else {
            return;
        };
        let Some(spec) = job.spec.as_ref() else {
            return;
        };
        let entry = crate::queue::Entry {
            queue: &spec.queue,
            priority: spec.priority,
            submitted_ms: job.submitted_at_ms,
            aging_ms: self.aging_ms(&spec.queue),
            class: matching::class_key(spec),
            deadline_ms: (job.attempts == 0).then(|| self.deadline(job)),
        };
        self.pending.push(id, entry);
    }

    /// Why no registered agent can run `spec`: the closest agents (fewest
    /// reasons) and what each fails. Short whatever the input.
    fn unmatched(&self, req: &Requirement, spec: &JobSpec) -> String {
        let mut by: Vec<(usize, &str, Vec<String>)> = self
            .agents
            .iter()
            .map(|(name, a)| {
                let mut why: Vec<String> = req
                    .failing_clauses(&a.attrs)
                    .into_iter()
                    .map(|c| crate::clip(&c).into_owned())
                    .collect();
                if let Some(dir) = source_dir(spec) {
                    if !a.caps().roots.iter().any(|r| under_root(dir, r)) {
                        why.push("source dir outside its roots".into());
                    }
                }
                if let Some(p) = matching::policy_refusal(spec, a.caps()) {
                    why.push(format!("policy: {}", crate::clip(&p)));
                }
                if let Some(p) = matching::pytest_missing(spec, a.caps()) {
                    why.push(p);
                }
                if let Some(m) = matching::memory_unenforced(spec, a.caps()) {
                    why.push(m);
                }
                if let Some(d) = crate::devices::shortfall(spec, a.caps()) {
                    why.push(d);
                }
                (why.len(), name.as_str(), why)
            })
            .collect();
        by.sort();
        let closest: Vec<String> = by
            .iter()
            .take(3)
            .map(|(_, name, why)| format!("{}: {}", crate::clip(name), why.join(", ")))
            .collect();
        let mut msg = format!(
            "no registered agent can run this job ({} known, online or not); closest: {}; \
             change the requirements, or submit with --allow-unmatched to wait for one",
            self.agents.len(),
            closest.join("; ")
        );
        if msg.len() > 900 {
            let mut end = 900;
            while !msg.is_char_boundary(end) {
                end -= 1;
            }
            msg.truncate(end);
            msg.push_str("...");
        }
        msg
    }

    /// When a job that has not started by then ends: its submit plus its
    /// `expire_after` (the queue's default for jobs stored without one).
    pub(super) fn deadline(&self, job: &Job) -> i64 {
        let spec = job.spec.as_ref();
        let after = spec.and_then(|s| s.expire_after_ms).unwrap_or_else(|| {
            let queue = spec.map_or("default", |s| s.queue.as_str());
            self.cfg.expire_after_for(queue).as_millis() as i64
        });
        job.submitted_at_ms.saturating_add(after)
    }

    /// On the tick: a job never started by its deadline ends `expired`, or
    /// `no_resource` when no registered agent could run it at all.
    pub(super) fn expire_queued(&mut self, step: &mut Step) {
        let now = self.now;
        for id in self.pending.due(now) {
            let Some(e) = self.jobs.get(&id) else {
                self.pending.remove(id);
                continue;
            };
            let spec = e.job.spec.clone().unwrap_or_default();
            let waited = humantime::format_duration(Duration::from_millis(
                (now - e.job.submitted_at_ms).max(0) as u64 / 1000 * 1000,
            ));
            let anyone = self
                .agents
                .values()
                .any(|a| fits(&e.req, &spec, &a.attrs, a.caps()));
            let (state, why) = if anyone {
                (
                    JobState::Expired,
                    format!("not started within {waited} (expire_after)"),
                )
            } else {
                (
                    JobState::NoResource,
                    format!("no registered agent could run it within {waited} (expire_after)"),
                )
            };
            self.pending.remove(id);
            self.set_state(id, state, &why, step);
        }
    }

    /// The job named `id`, brought into memory if it is a finished one that
    /// is only in the store.
    pub(super) fn job_id(&mut self, id: &str) -> Result<u64, Status> {
        let n = id.trim().parse::<u64>().ok();
        if let Some(n) = n.filter(|&n| self.ensure_loaded(n)) {
            return Ok(n);
        }
        Err(Status::not_found(match (n, self.cfg.retain) {
            // Ids are handed out in order: a lower one existed, and only
            // retention takes a job away.
            (Some(n), Some(retain)) if n < self.retired_below => format!(
                "no job with id '{n}': it finished more than {} ago and was deleted \
                 (msched --retain)",
                humantime::format_duration(retain)
            ),
            _ => format!("no job with id '{}'", crate::clip(id)),
        }))
    }

    /// Cancels a job (and a parent's children). Submitters may cancel only
    /// the jobs their own token submitted; admins any.
    pub(super) fn cancel(
        &mut self,
        id: &str,
        who: &Principal,
        step: &mut Step,
    ) -> Result<Job, Status> {
        let id = self.job_id(id)?;
        let owner = &self.jobs[&id].job.submitted_by;
        if !who.is_admin() && owner != who.name() {
            return Err(Status::permission_denied(format!(
                "job {id} was submitted by '{}'; only that token or an admin may cancel it",
                if owner.is_empty() {
                    "nobody known"
                } else {
                    owner
                }
            )));
        }
        let state = self.jobs[&id].job.state();
        if state.is_terminal() {
            return Err(Status::failed_precondition(format!(
                "job {id} already finished ({})",
                state.label()
            )));
        }
        let children: Vec<String> = self.jobs[&id].job.children.clone();
        if !children.is_empty() {
            for child in children {
                let running = child
                    .parse::<u64>()
                    .ok()
                    .and_then(|c| self.jobs.get(&c))
                    .is_some_and(|e| !e.job.state().is_terminal());
                if running {
                    self.cancel(&child, who, step)?;
                }
            }
            return Ok(self.view(id));
        }
        if state == JobState::Queued {
            self.pending.remove(id);
            self.set_state(id, JobState::Cancelled, "cancelled by user", step);
            step.dispatch = true;
            return Ok(self.view(id));
        }
        let Some(e) = self.jobs.get_mut(&id) else {
            return Err(Status::not_found(format!("no job with id '{id}'")));
        };
        if let Some(att) = e.attempt.as_mut() {
            att.cancel_requested = true;
            e.job.reason = "cancel requested".into();
            let r = attempt_ref(id, att);
            let agent = att.agent.clone();
            step.touched.insert(id);
            if let Some(s) = self.agents.get(&agent).and_then(|a| a.session.as_ref()) {
                step.send(
                    &s.tx,
                    scheduler_message::Msg::Cancel(pb::CancelAttempt {
                        attempt: Some(r),
                        reason: "cancelled by user".into(),
                    }),
                );
            }
        }
        Ok(self.view(id))
    }

    /// The job as users see it (secret values redacted), with warnings derived
    /// from the current fleet.
    pub(super) fn view(&self, id: u64) -> Job {
        let e = &self.jobs[&id];
        let mut job = e.job.clone();
        job.spec = job.spec.as_ref().map(msfleet_proto::secrets::redacted);
        if job.state() == JobState::Queued {
            if let Some(spec) = &job.spec {
                let anyone = self
                    .agents
                    .values()
                    .any(|a| fits(&e.req, spec, &a.attrs, a.caps()));
                if !anyone {
                    let no_pytest: Vec<String> = self
                        .agents
                        .iter()
                        .filter(|(_, a)| e.req.matches(&a.attrs))
                        .filter_map(|(name, a)| {
                            let why = matching::pytest_missing(spec, a.caps())?;
                            Some(format!("{why} on agent {}", crate::clip(name)))
                        })
                        .take(3)
                        .collect();
                    job.warnings.push(if self.agents.is_empty() {
                        "no agent has registered yet".to_string()
                    } else if !no_pytest.is_empty() {
                        format!(
                            "no registered agent can run this job: {}",
                            no_pytest.join("; ")
                        )
                    } else if spec.requirements.is_empty() {
                        "no registered agent can run this job (source dir outside their roots, \
                         or their policy refuses it)"
                            .to_string()
                    } else {
                        format!(
                            "no registered agent matches the requirements `{}`",
                            spec.requirements
                        )
                    });
                } else if !self
                    .agents
                    .values()
                    .any(|a| a.accepts(spec) && fits(&e.req, spec, &a.attrs, a.caps()))
                {
                    job.warnings.push(
                        "every matching agent is offline, drained or quarantined".to_string(),
                    );
                } else if let Some(w) = self.waiting_for_devices(&e.req, spec) {
                    job.warnings.push(w);
                }
            }
        }
        job
    }

    /// Why a job that asks for devices waits although agents match it: none
    /// of them has enough free, healthy devices now (what each has free).
    fn waiting_for_devices(&self, req: &Requirement, spec: &JobSpec) -> Option<String> {
        let asks = crate::devices::requests(spec);
        if asks.is_empty() {
            return None;
        }
        let mut free = Vec::new();
        for (name, a) in &self.agents {
            if !(a.accepts(spec) && fits(req, spec, &a.attrs, a.caps())) {
                continue;
            }
            let busy = self.busy_devices(name);
            if crate::devices::allocate(spec, a.caps(), &busy).is_some() {
                return None;
            }
            let have: Vec<String> = asks
                .iter()
                .map(|r| crate::devices::free_line(r, a.caps(), &busy))
                .collect();
            free.push(format!("{}: {}", crate::clip(name), have.join(", ")));
        }
        free.truncate(3);
        let asked: Vec<String> = asks.iter().map(|r| r.describe()).collect();
        Some(format!(
            "waiting for free devices: it asks for {}; {}",
            asked.join(" and "),
            free.join("; ")
        ))
    }

    pub(super) fn queues(&self) -> Vec<pb::Queue> {
        self.cfg
            .queues
            .iter()
            .map(|(name, aging)| {
                let waits = self.waits.stats(name, self.now);
                pb::Queue {
                    name: name.clone(),
                    pending: self.pending.pending_in(name),
                    running: self.index.count(name, JobState::Assigned)
                        + self.index.count(name, JobState::Running),
                    aging_s: aging.as_secs(),
                    oldest_pending_s: self
                        .pending
                        .oldest_in(name)
                        .map_or(0.0, |at| (self.now - at).max(0) as f64 / 1000.0),
                    waits_last_hour: waits.count,
                    wait_p50_s: waits.p50_s,
                    wait_p95_s: waits.p95_s,
                }
            })
            .collect()
    }

    pub(super) fn aging_ms(&self, queue: &str) -> u64 {
        self.cfg
            .queues
            .get(queue)
            .map_or(300_000, |d| d.as_millis() as u64)
    }

    pub(super) fn set_state(&mut self, id: u64, state: JobState, reason: &str, step: &mut Step) {
        let Some(e) = self.jobs.get_mut(&id) else {
            return;
        };
        let was = e.job.state();
        self.index.remove(id, &e.job);
        e.job.state = state as i32;
        e.job.reason = reason.to_string();
        if state.is_terminal() {
            e.job.finished_at_ms = self.now;
            step.telemetry(telemetry::job_span(&e.job));
            step.telemetry(telemetry::job_end(&e.job));
            self.finished_cache.push_back(id);
        }
        self.index.add(id, &e.job);
        if let Some(what) = state_observation(&e.job, was, e.attempt.as_ref().map(|a| a.attempt)) {
            step.observe(what);
        }
        let parent = e.job.parent.parse::<u64>().ok();
        let attempt = e.attempt.as_ref().map_or(e.job.attempts, |a| a.attempt);
        let agent = if e.attempt.is_some() || state.is_terminal() {
            e.job.agent.clone()
        } else {
            String::new()
        };
        self.push_event(
            id,
            attempt,
            job_event::Kind::State(StateChange {
                state: state as i32,
                reason: reason.to_string(),
                agent,
            }),
            step,
        );
        if let Some(p) = parent {
            self.refresh_parent(p, step);
        }
    }
}

/// A fan-out or sharded job's parent: it runs nothing itself, its children do.
pub(super) fn is_fanout_parent(job: &Job) -> bool {
    job.spec
        .as_ref()
        .is_some_and(|s| !s.fanout.is_empty() || s.shards > 1)
}

/// What a job's change from `was` to its state now means for the metrics:
/// its first start (wait since submit) or its end (result, run time).
fn state_observation(job: &Job, was: JobState, attempt: Option<u32>) -> Option<Observation> {
    let state = job.state();
    if is_fanout_parent(job) {
        return None;
    }
    let queue = || {
        job.spec
            .as_ref()
            .map_or("default", |s| s.queue.as_str())
            .to_string()
    };
    let seconds = |from: i64, to: i64| (to - from).max(0) as f64 / 1000.0;
    if state == JobState::Running && was != JobState::Running && attempt == Some(1) {
        return Some(Observation::Started {
            queue: queue(),
            wait_s: seconds(job.submitted_at_ms, job.started_at_ms),
        });
    }
    if !state.is_terminal() || was.is_terminal() {
        return None;
    }
    Some(Observation::Finished {
        queue: queue(),
        result: state.label(),
        ran_s: (job.started_at_ms > 0).then(|| seconds(job.started_at_ms, job.finished_at_ms)),
    })
}

#[cfg(test)]
mod tests {
    use super::super::harness::*;
    use msfleet_proto::{JobState, Outcome};
    use JobState::*;

    /// The gauges a scrape reads: jobs per configured queue and state (a
    /// queue without jobs reads 0), the oldest queued job, agents per state.
    #[test]
    fn the_metrics_snapshot_counts_what_is_queued_running_and_connected() {
        use crate::metrics::AGENT_STATES;
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        let first = h.submit(spec()).unwrap();
        h.advance(5_000);
        h.submit(spec()).unwrap();
        h.submit(spec()).unwrap();
        let got = h.assignments(&mut a);
        assert_eq!(got.len(), 1);
        let r = got[0].attempt.clone().unwrap();
        assert_eq!(r.task_id, first.id);
        h.update(&mut a, &r, 1, started());
        h.advance(2_000);
        let snap = h
            .call(|reply| super::super::Command::MetricsSnapshot { reply })
            .unwrap();
        assert_eq!(
            snap.queue_jobs["default"],
            [2, 0, 1],
            "queued, assigned, running"
        );
        assert_eq!(snap.queue_jobs["nightly"], [0, 0, 0]);
        assert_eq!(snap.oldest_pending_s["default"], 2.0);
        assert_eq!(snap.oldest_pending_s["nightly"], 0.0);
        let state = |s: &str| snap.agents[AGENT_STATES.iter().position(|x| *x == s).unwrap()];
        assert_eq!(
            (state("busy"), state("online"), state("offline")),
            (1, 0, 0)
        );

        h.finish(&mut a, &r, Outcome::Passed);
        h.disconnect(&a);
        let snap = h
            .call(|reply| super::super::Command::MetricsSnapshot { reply })
            .unwrap();
        assert_eq!(
            snap.queue_jobs["default"],
            [1, 1, 0],
            "the next took the slot"
        );
        assert_eq!(
            (state_of(&snap, "busy"), state_of(&snap, "offline")),
            (0, 1)
        );
    }

    fn state_of(snap: &crate::metrics::Snapshot, s: &str) -> u64 {
        let i = crate::metrics::AGENT_STATES.iter().position(|x| *x == s);
        snap.agents[i.unwrap()]
    }

    /// A job's first start records its wait; its end, its result and run time.
    #[test]
    fn state_changes_make_the_observations_the_metrics_record() {
        use crate::metrics::Observation;
        let mut job = msfleet_proto::Job {
            submitted_at_ms: 1_000,
            started_at_ms: 4_000,
            spec: Some(msfleet_proto::JobSpec {
                queue: "default".into(),
                ..spec()
            }),
            state: Running as i32,
            ..Default::default()
        };
        assert_eq!(
            super::state_observation(&job, Assigned, Some(1)),
            Some(Observation::Started {
                queue: "default".into(),
                wait_s: 3.0
            })
        );
        assert_eq!(
            super::state_observation(&job, Assigned, Some(2)),
            None,
            "a retry"
        );
        job.state = TimedOut as i32;
        job.finished_at_ms = 10_000;
        assert_eq!(
            super::state_observation(&job, Running, Some(1)),
            Some(Observation::Finished {
                queue: "default".into(),
                result: "timed_out",
                ran_s: Some(6.0)
            })
        );
        assert_eq!(
            super::state_observation(&job, TimedOut, Some(1)),
            None,
            "ended once"
        );
        job.state = Expired as i32;
        job.started_at_ms = 0;
        assert_eq!(
            super::state_observation(&job, Queued, None),
            Some(Observation::Finished {
                queue: "default".into(),
                result: "expired",
                ran_s: None
            })
        );
    }

    #[test]
    fn a_job_ends_in_the_state_its_attempt_reports() {
        let cases = [
            (Outcome::Passed, Passed),
            (Outcome::Failed, Failed),
            (Outcome::Error, Error),
            (Outcome::Cancelled, Cancelled),
            (Outcome::TimedOut, TimedOut),
            (Outcome::Unspecified, Error),
        ];
        for (outcome, want) in cases {
            let mut h = Harness::new();
            let mut a = h.register("a1", "cpu", 1);
            let job = h.submit(spec()).unwrap();
            assert_eq!(job.state(), Queued);
            let got = h.assignments(&mut a);
            assert_eq!(got.len(), 1, "{outcome:?}: one assignment");
            let r = got[0].attempt.clone().unwrap();
            h.finish(&mut a, &r, outcome);
            let done = h.job(&job.id);
            assert_eq!(done.state(), want, "{outcome:?}");
            assert!(done.finished_at_ms > 0);
            assert_eq!(
                h.state_log(&job.id),
                vec![Queued, Assigned, Running, want],
                "{outcome:?}: the durable log walks the state machine"
            );
        }
    }

    #[test]
    fn cancelling_a_queued_job_ends_it_at_once_and_a_finished_one_is_refused() {
        let mut h = Harness::new();
        let job = h.submit(spec()).unwrap();
        let cancelled = h.cancel(&job.id).unwrap();
        assert_eq!(cancelled.state(), Cancelled);
        assert_eq!(h.state_log(&job.id), vec![Queued, Cancelled]);
        let again = h.cancel(&job.id).unwrap_err();
        assert_eq!(again.code(), tonic::Code::FailedPrecondition);
        assert!(again.message().contains("already finished (cancelled)"));
        // Nothing is left to dispatch: a new agent gets no work.
        let mut a = h.register("a1", "cpu", 1);
        assert!(h.assignments(&mut a).is_empty());
    }

    #[test]
    fn cancelling_a_running_job_asks_its_agent_and_the_agent_decides_the_end() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        let job = h.submit(spec()).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.update(&mut a, &r, 1, started());
        let view = h.cancel(&job.id).unwrap();
        assert_eq!(
            view.state(),
            Running,
            "still running until the agent stops it"
        );
        assert_eq!(view.reason, "cancel requested");
        let asked = h.messages(&mut a);
        assert!(asked.iter().any(|m| matches!(
            m,
            msfleet_proto::scheduler_message::Msg::Cancel(c) if c.attempt.as_ref() == Some(&r)
        )));
        h.update(&mut a, &r, 2, finished(Outcome::Cancelled));
        assert_eq!(h.state(&job.id), Cancelled);
    }

    #[test]
    fn a_refused_submit_changes_nothing() {
        let mut h = Harness::new();
        let mut bad = spec();
        bad.queue = "nope".into();
        let e = h.submit(bad).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("unknown queue 'nope'"));
        let mut outside = spec();
        outside.source = Some(msfleet_proto::Source {
            kind: Some(msfleet_proto::source::Kind::Dir("/home/x".into())),
        });
        h.register("a1", "cpu", 1);
        let e = h.submit(outside).unwrap_err();
        assert!(e.message().contains("outside the allowed roots"), "{e}");
        assert!(h.jobs().is_empty());
        // The next good job still gets id 1: no id was used up.
        assert_eq!(h.submit(spec()).unwrap().id, "1");
    }

    #[test]
    fn secret_values_reach_the_assignment_and_no_view() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        let mut s = spec();
        s.env.insert("PLAIN".into(), "visible".into());
        s.secret_env.insert("TOKEN".into(), "hunter2".into());
        let submitted = h.submit(s.clone()).unwrap();
        let shown = h.job(&submitted.id);
        let listed = h.jobs().remove(0);
        for view in [&submitted, &shown, &listed] {
            let spec = view.spec.as_ref().unwrap();
            assert_eq!(spec.secret_env["TOKEN"], "[redacted]", "{view:?}");
            assert_eq!(spec.env["PLAIN"], "visible");
        }
        let got = h.assignments(&mut a);
        assert_eq!(got[0].spec.as_ref().unwrap().secret_env["TOKEN"], "hunter2");
        // Schedules show their spec redacted too; the job they fire keeps the value.
        let schedule = Box::new(msfleet_proto::Schedule {
            name: "n".into(),
            cron: "@daily".into(),
            spec: Some(s),
            ..Default::default()
        });
        let added = h
            .call(|reply| super::super::Command::AddSchedule {
                schedule,
                by: "ops".into(),
                reply,
            })
            .unwrap();
        assert_eq!(added.spec.unwrap().secret_env["TOKEN"], "[redacted]");
        let listed = h
            .call(|reply| super::super::Command::ListSchedules { reply })
            .unwrap();
        assert_eq!(
            listed[0].spec.as_ref().unwrap().secret_env["TOKEN"],
            "[redacted]"
        );
        let name = "n".to_string();
        let fired = h
            .call(|reply| super::super::Command::RunScheduleNow {
                name,
                by: "ops".into(),
                reply,
            })
            .unwrap();
        assert_eq!(fired.spec.unwrap().secret_env["TOKEN"], "[redacted]");
        let r = got[0].attempt.clone().unwrap();
        h.update(&mut a, &r, 1, started());
        let next = h.update(&mut a, &r, 2, finished(Outcome::Passed));
        let assigned = next.iter().find_map(|m| match m {
            msfleet_proto::scheduler_message::Msg::Assign(x) => x.spec.as_ref(),
            _ => None,
        });
        assert_eq!(assigned.unwrap().secret_env["TOKEN"], "hunter2");
    }

    #[test]
    fn a_job_no_agents_policy_admits_is_refused_at_submit() {
        let mut h = Harness::new();
        let mut bench = spec();
        bench.kind = "benchmark".into();
        bench.benchmark = Some(msfleet_proto::BenchmarkSpec {
            command: vec!["python".into(), "run.py".into(), "{case}".into()],
            ..Default::default()
        });
        // No agent yet: nothing to judge by, the job waits.
        h.submit(bench.clone()).unwrap();
        let with_policy = |p: msfleet_proto::AgentPolicy| msfleet_proto::Capabilities {
            policy: Some(p),
            ..caps("cpu", 1)
        };
        let mut strict = h
            .register_as(
                "strict",
                "s-1",
                with_policy(msfleet_proto::policy::defaults()),
                vec![],
            )
            .unwrap();
        let e = h.submit(bench.clone()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("no registered agent's policy admits this job (strict: the agent's policy runs no benchmark commands"),
            "{e}"
        );
        assert_eq!(h.jobs().len(), 1, "nothing was written");
        // The waiting one is not offered to the strict agent.
        assert!(h.assignments(&mut strict).is_empty());
        let mut open = h
            .register_as(
                "open",
                "o-1",
                with_policy(msfleet_proto::AgentPolicy {
                    allow_bench_commands: vec!["python".into()],
                    ..msfleet_proto::policy::defaults()
                }),
                vec![],
            )
            .unwrap();
        let job = h.submit(bench).unwrap();
        let got = h.assignments(&mut open);
        assert_eq!(got.len(), 1, "the open agent takes one of the two");
        assert!(h.assignments(&mut strict).is_empty());
        assert!(h.job(&job.id).warnings.is_empty());
    }

    #[test]
    fn a_dedup_key_returns_the_existing_job_within_the_window_only() {
        let mut h = Harness::new();
        let mut s = spec();
        s.dedup_key = "nightly-2025-06-15".into();
        let first = h.submit(s.clone()).unwrap();
        let again = h.submit(s.clone()).unwrap();
        assert_eq!(again.id, first.id);
        assert!(again.deduplicated);
        h.advance(24 * 3600 * 1000 + 1);
        let later = h.submit(s).unwrap();
        assert_ne!(later.id, first.id);
        assert!(!later.deduplicated);
    }

    #[test]
    fn a_queued_job_explains_why_nothing_runs_it() {
        let mut h = Harness::new();
        let mut s = spec();
        s.requirements = "gpu.count>=1".into();
        let job = h.submit(s).unwrap();
        assert_eq!(job.warnings, vec!["no agent has registered yet"]);
        h.register("a1", "cpu", 1);
        let view = h.job(&job.id);
        assert_eq!(
            view.warnings,
            vec!["no registered agent matches the requirements `gpu.count>=1`"]
        );
    }

    #[test]
    fn a_job_no_known_agent_can_run_is_refused_with_the_closest_agents_unless_allowed() {
        let mut h = Harness::new();
        h.register("a1", "cpu", 1);
        let b = h.register("b1", "other", 1);
        h.disconnect(&b); // known agents count whether online or not
        let mut s = spec();
        s.requirements = r#"gpu.count>=1 && profile=="cpu""#.into();
        let e = h.submit(s.clone()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let m = e.message();
        assert!(m.contains("2 known, online or not"), "{m}");
        let a1 = m.find("a1: gpu.count >= 1 (has 0);").expect(m);
        let b1 = m
            .find(r#"b1: gpu.count >= 1 (has 0), profile == "cpu" (has other)"#)
            .expect(m);
        assert!(a1 < b1, "the closest agent first: {m}");
        assert!(m.contains("--allow-unmatched"), "{m}");
        assert!(h.jobs().is_empty(), "nothing was made");
        // Matched only by an offline agent: accepted.
        let mut offline = spec();
        offline.requirements = r#"profile=="other""#.into();
        assert_eq!(h.submit(offline).unwrap().state(), Queued);
        // With --allow-unmatched it waits, with the warning.
        s.allow_unmatched = true;
        let job = h.submit(s).unwrap();
        assert_eq!(job.state(), Queued);
        assert_eq!(job.warnings.len(), 1, "{:?}", job.warnings);
    }

    #[test]
    fn a_pytest_job_is_not_given_to_an_agent_whose_probe_found_no_pytest() {
        let mut h = Harness::new();
        let probed = |pytest: &str| msfleet_proto::Capabilities {
            host: Some(msfleet_proto::HostInfo {
                python: "/usr/bin/python3".into(),
                python_version: "3.12.1".into(),
                pytest_version: pytest.into(),
                ..Default::default()
            }),
            ..caps("cpu", 1)
        };
        let mut bare = h.register_as("bare", "b-1", probed(""), vec![]).unwrap();
        let e = h.submit(spec()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let m = e.message();
        assert!(
            m.contains("bare: pytest is not installed for /usr/bin/python3 (python 3.12.1)"),
            "{m}"
        );
        assert!(h.jobs().is_empty(), "nothing was made");
        // Allowed to wait: never assigned to it, and the warning says why.
        let mut s = spec();
        s.allow_unmatched = true;
        let job = h.submit(s).unwrap();
        assert!(h.assignments(&mut bare).is_empty());
        assert_eq!(
            h.job(&job.id).warnings,
            vec![
                "no registered agent can run this job: pytest is not installed for \
                 /usr/bin/python3 (python 3.12.1) on agent bare"
            ]
        );
        // An agent with pytest takes it.
        let mut good = h
            .register_as("good", "g-1", probed("9.0.1"), vec![])
            .unwrap();
        assert_eq!(h.assignments(&mut good).len(), 1);
        assert!(h.assignments(&mut bare).is_empty());
        // An agent that reported no host facts (simulated) is not excluded.
        let mut sim = h.register("sim", "cpu", 1);
        h.submit(spec()).unwrap();
        assert_eq!(h.assignments(&mut sim).len(), 1);
    }

    #[test]
    fn a_job_still_queued_at_its_expiry_ends_expired() {
        let mut h = Harness::new();
        let a = h.register("a1", "cpu", 1);
        h.disconnect(&a); // it matches, but nothing takes the job
        let mut s = spec();
        s.expire_after_ms = Some(60_000);
        let job = h.submit(s).unwrap();
        let default = h.submit(spec()).unwrap();
        assert_eq!(
            default.spec.unwrap().expire_after_ms,
            Some(24 * 3600 * 1000),
            "the queue's default"
        );
        h.advance(59_999);
        h.tick();
        assert_eq!(h.state(&job.id), Queued);
        h.advance(1);
        h.tick();
        let done = h.job(&job.id);
        assert_eq!(done.state(), Expired);
        assert_eq!(done.reason, "not started within 1m (expire_after)");
        assert!(done.finished_at_ms > 0);
        assert_eq!(h.state(&default.id), Queued, "its own expiry is later");
        // Expired for good: the agent coming back does not run it.
        h.reload();
        let mut back = h.register("a1", "cpu", 1);
        let got = h.assignments(&mut back);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].job_id, default.id);
        assert_eq!(h.state(&job.id), Expired);
        let bad = h.submit({
            let mut s = spec();
            s.expire_after_ms = Some(0);
            s
        });
        assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn an_allowed_unmatched_job_ends_no_resource_at_its_expiry() {
        let mut h = Harness::new();
        h.register("a1", "cpu", 1);
        let mut s = spec();
        s.requirements = "gpu.count>=1".into();
        s.allow_unmatched = true;
        let job = h.submit(s).unwrap();
        h.advance(24 * 3600 * 1000);
        h.tick();
        let done = h.job(&job.id);
        assert_eq!(done.state(), NoResource);
        assert!(done.state().is_terminal());
        assert_eq!(done.state().label(), "no_resource");
        assert_eq!(
            done.reason,
            "no registered agent could run it within 1day (expire_after)"
        );
        assert_eq!(h.state_log(&job.id), vec![Queued, NoResource]);
    }

    #[test]
    fn jobs_survive_a_reload_in_their_state_and_queued_ones_run_after_it() {
        let mut h = Harness::new();
        let queued = h.submit(spec()).unwrap();
        let cancelled = h.submit(spec()).unwrap();
        h.cancel(&cancelled.id).unwrap();
        h.reload();
        assert_eq!(h.state(&queued.id), Queued);
        assert_eq!(h.state(&cancelled.id), Cancelled);
        let mut a = h.register("a1", "cpu", 4);
        let got = h.assignments(&mut a);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].job_id, queued.id);
        assert_eq!(h.submit(spec()).unwrap().id, "3", "ids are not reused");
    }

    #[test]
    fn submitters_cancel_only_their_own_jobs_and_admins_any() {
        use crate::auth::Role;
        let mut h = Harness::new();
        let job = h.submit(spec()).unwrap();
        assert_eq!(job.submitted_by, SUBMITTER);
        let e = h
            .cancel_as(&job.id, person("mallory", Role::Submitter))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message().contains("submitted by 'tester'"),
            "{}",
            e.message()
        );
        assert_eq!(h.state(&job.id), Queued, "a refused cancel changes nothing");
        let done = h.cancel_as(&job.id, person("root", Role::Admin)).unwrap();
        assert_eq!(done.state(), Cancelled);
    }
}
