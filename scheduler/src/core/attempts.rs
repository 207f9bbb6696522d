//! Attempts: task updates fenced by (task, attempt, epoch) and applied in
//! sequence, finishing, lost attempts and lease expiry, and dispatch (where a
//! pending job is matched to a free slot and leased).

use super::*;

/// The devices each free agent holds now, as dispatch plans.
type BusyDevices = HashMap<String, HashSet<devices::Held>>;

/// How an attempt was lost, which decides what its retry uses up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Loss {
    /// Its agent went away: silent past its lease, disconnected, restarted
    /// or replaced by another process under its name. Counted in
    /// `Job.agent_lost` against `agent_lost_retries`, never as a test failure.
    AgentGone,
    /// The agent gave it up (shutting down) or its credential was revoked:
    /// counted in `Job.lost_retried` against `retries`.
    Retried,
    /// Stopped by the scheduler (a drain's deadline): requeued, uses nothing.
    Stopped,
    /// Stopped because its agent was quarantined (its results are suspect):
    /// requeued, counted in `Job.quarantined_attempts`, uses no retry.
    Quarantined,
}

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
            Some(task_update::Kind::Tests(batch)) => {
                if let Err(s) = limits::test_results(batch) {
                    return reject(
                        step,
                        format!("test results refused: {}", s.message()),
                        false,
                    );
                }
            }
            Some(task_update::Kind::Case(c)) => {
                if let Err(s) = limits::case_result(c) {
                    return reject(step, format!("case result refused: {}", s.message()), false);
                }
            }
            Some(task_update::Kind::Finished(f))
                if f.refused && f.outcome() != Outcome::Requeue =>
            {
                let message = format!(
                    "Finished.refused goes with outcome REQUEUE only, not {:?}",
                    f.outcome()
                );
                return reject(step, message, false);
            }
            // A refused attempt never ran: its number is given again, so
            // nothing of it may have been recorded.
            Some(task_update::Kind::Finished(f)) if f.refused && att.applied_seq != 0 => {
                let message = "Finished.refused must be the attempt's first update \
                               (it says the attempt never started)"
                    .to_string();
                return reject(step, message, false);
            }
            Some(task_update::Kind::Finished(f)) => limits::cut(&mut f.reason, limits::MAX_REASON),
            Some(task_update::Kind::Environment(env)) => {
                limits::cut(&mut env.key, limits::MAX_NAME);
                if !env.seconds.is_finite() || env.seconds < 0.0 {
                    env.seconds = 0.0;
                }
            }
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
            // One update, one write, one Ack; each result its own event.
            Some(task_update::Kind::Tests(batch)) => {
                for t in batch.results {
                    self.record_test(task, attempt, &name, t, step);
                }
            }
            Some(task_update::Kind::Environment(env)) => {
                e.job.environment = Some(env.clone());
                self.push_event(task, attempt, job_event::Kind::Environment(env), step);
            }
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
            .record_result(&t);
        let test_id = t.nodeid.clone();
        let collected = t.outcome == "collected";
        // A passed subtest never changes its test's verdict: counted, shown
        // live, but not a run of the test's history.
        let history = !collected && t.outcome != "subpassed";
        if !collected {
            step.observe(Observation::test_result(&t.outcome));
        }
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
        } else if history {
            step.writes
                .put_test_run(&test_id, task, seq, &profile, agent);
        }
        if let Some((parent, ft)) = forward {
            self.push_event(parent, 0, job_event::Kind::Test(ft), step);
            self.refresh_parent(parent, step);
        }
    }

    pub(super) fn finish(&mut self, task: u64, f: pb::Finished, step: &mut Step) {
        let agent = self
            .leases
            .get(task)
            .map(|l| l.agent.clone())
            .unwrap_or_default();
        if f.outcome() == Outcome::Requeue && f.refused {
            self.requeue_refused(task, &agent, &f.reason, step);
            return;
        }
        // The agent freed a slot: whatever it counted, it can take work again.
        self.held_back.remove(&agent);
        if f.outcome() == Outcome::Requeue {
            if let Some(s) = self.agents.get_mut(&agent).and_then(|a| a.session.as_mut()) {
                s.leaving = true;
            }
            let why = format!("agent {agent} gave it up: {}", f.reason);
            self.lose(task, Loss::Retried, &why, step);
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
            if let Some(att) = e.attempt.take() {
                step.telemetry(telemetry::attempt_span(
                    &e.job,
                    att.attempt,
                    &att.agent,
                    att.assigned_at_ms,
                    self.now,
                    state,
                    &f.reason,
                ));
            }
        }
        self.set_state(task, state, &f.reason, step);
        if let Some(agent) = agent {
            // An error that is the job's own doing says nothing about the agent.
            if !(state == JobState::Error && f.job_fault) {
                self.judge_agent(&agent, task, state, &f.reason, step);
            }
        }
        step.dispatch = true;
    }

    /// `agent` refused the attempt of `task` without starting it: all its
    /// slots are taken, whatever the scheduler counted (attempts it still
    /// runs that the scheduler already let go). The attempt never ran, so it
    /// does not count against the job's retries (its number is given again),
    /// the job is queued again, and dispatch passes `agent` over until it
    /// finishes an attempt or the lease timeout has gone by.
    fn requeue_refused(&mut self, task: u64, agent: &str, why: &str, step: &mut Step) {
        self.leases.release(task);
        let hold_ms = self.cfg.lease_timeout.as_millis() as i64;
        self.held_back
            .insert(agent.to_string(), self.now.saturating_add(hold_ms));
        step.dispatch = true;
        let Some(e) = self.jobs.get_mut(&task) else {
            return;
        };
        let Some(att) = e.attempt.take() else { return };
        e.job.attempts = e.job.attempts.saturating_sub(1);
        tracing::warn!(
            task,
            attempt = att.attempt,
            agent,
            why,
            "assignment refused by the agent"
        );
        if att.cancel_requested {
            let reason = format!("cancelled (agent {agent} refused it before it started)");
            self.set_state(task, JobState::Cancelled, &reason, step);
            return;
        }
        self.enqueue(task, step);
        let reason = format!(
            "agent {agent} refused attempt {} ({why}); requeued",
            att.attempt
        );
        self.set_state(task, JobState::Queued, &reason, step);
    }

    /// Ends the holds of [`Core::requeue_refused`] whose time is up.
    fn release_holds(&mut self, step: &mut Step) {
        let now = self.now;
        let before = self.held_back.len();
        self.held_back.retain(|_, until| now < *until);
        if self.held_back.len() < before {
            step.dispatch = true;
        }
    }

    /// The attempt of `task` is gone: requeue it within the allowance its
    /// `loss` uses (see [`Loss`]), else end the job `error`.
    pub(super) fn lose(&mut self, task: u64, loss: Loss, why: &str, step: &mut Step) {
        self.leases.release(task);
        let Some(e) = self.jobs.get_mut(&task) else {
            return;
        };
        let Some(att) = e.attempt.take() else { return };
        tracing::warn!(task, attempt = att.attempt, agent = %att.agent, why, ?loss, "attempt lost");
        step.telemetry(telemetry::attempt_span(
            &e.job,
            att.attempt,
            &att.agent,
            att.assigned_at_ms,
            self.now,
            JobState::Error,
            &format!("attempt lost: {why}"),
        ));
        step.dispatch = true;
        if att.cancel_requested {
            self.set_state(
                task,
                JobState::Cancelled,
                &format!("cancelled ({why})"),
                step,
            );
            return;
        }
        let spec = e.job.spec.clone().unwrap_or_default();
        let (retry, budget) = match loss {
            Loss::AgentGone => {
                e.job.agent_lost += 1;
                let allowed = spec
                    .agent_lost_retries
                    .unwrap_or(self.cfg.default_agent_lost_retries);
                let n = e.job.agent_lost;
                (n <= allowed, format!("agent lost {n} of {allowed} allowed"))
            }
            Loss::Retried => {
                e.job.lost_retried += 1;
                let allowed = spec.retries.unwrap_or(0);
                let n = e.job.lost_retried;
                (n <= allowed, format!("retry {n} of {allowed}"))
            }
            Loss::Stopped => (true, "its retries are not used".to_string()),
            Loss::Quarantined => {
                e.job.quarantined_attempts += 1;
                (true, "its retries are not used".to_string())
            }
        };
        if retry {
            step.observe(Observation::Retried);
            self.enqueue(task, step);
            self.set_state(
                task,
                JobState::Queued,
                &format!("attempt {} lost ({why}); requeued ({budget})", att.attempt),
                step,
            );
        } else {
            self.set_state(
                task,
                JobState::Error,
                &format!(
                    "attempt {} lost ({why}); no retries left ({budget})",
                    att.attempt
                ),
                step,
            );
        }
    }

    /// Where a lease expires: an agent silent past `lease_timeout` (after the
    /// restart grace) that is connected or holds attempts is `lost`: its
    /// attempts are lost with it ([`Loss::AgentGone`]) and it gets no work
    /// until it speaks again with what it runs ([`Core::heartbeat`],
    /// [`Core::register`]).
    pub(super) fn expire_leases(&mut self, step: &mut Step) {
        self.release_holds(step);
        let now = self.now;
        let lease = self.cfg.lease_timeout.as_millis() as i64;
        let grace_end = self.started_ms + self.cfg.restart_grace.as_millis() as i64;
        for a in self.agents.values_mut() {
            a.refresh_heard(now);
        }
        let expired: Vec<(String, Vec<u64>)> = self
            .agents
            .iter()
            .filter(|(_, a)| a.lost.is_none())
            .filter(|(_, a)| now > (a.last_seen_ms + lease).max(grace_end))
            .map(|(n, a)| (n.clone(), a, self.leases.held_by(n)))
            .filter(|(_, a, held)| a.session.is_some() || !held.is_empty())
            .map(|(n, _, held)| (n, held))
            .collect();
        for (name, held) in expired {
            let Some(a) = self.agents.get_mut(&name) else {
                continue;
            };
            let silent_s = (now - a.last_seen_ms) as f64 / 1000.0;
            let how = if a.session.is_some() {
                "connected but silent"
            } else {
                "disconnected"
            };
            let lease_s = lease as f64 / 1000.0;
            a.lost = Some(agents::Lost {
                silent_since_ms: a.last_seen_ms,
                why: format!("{how} past its {lease_s} s lease"),
            });
            if let Some(s) = &a.session {
                // Its next heartbeat, whatever it lists, reconciles it.
                s.tx.want_heartbeats(true);
            }
            tracing::warn!(agent = %name, silent_s, attempts = held.len(), "agent lost");
            step.observe(Observation::LeaseExpired);
            let why = format!("agent {name} lost: silent {silent_s:.1} s");
            for task in held {
                self.lose(task, Loss::AgentGone, &why, step);
            }
            step.dispatch = true;
        }
    }

    /// The devices `agent`'s live attempts hold.
    pub(super) fn busy_devices(&self, agent: &str) -> HashSet<devices::Held> {
        self.leases
            .held_by(agent)
            .into_iter()
            .filter_map(|t| self.jobs.get(&t)?.attempt.as_ref())
            .flat_map(|att| att.devices.iter().cloned())
            .collect()
    }

    /// Hands pending jobs to agents with a free slot and enough free, healthy
    /// devices for them, highest rank first (a drained or quarantined agent
    /// takes only its health checks). **Where devices are allocated**: the
    /// attempt's devices are chosen here and recorded with its lease.
    pub(super) fn dispatch(&mut self, step: &mut Step) {
        // Nothing to hand out: no pass over the agents (every registration
        // asks for a dispatch; 100,000 of them after a restart).
        if self.pending.is_empty() {
            return;
        }
        #[cfg(test)]
        let plan = if tests::BY_SCAN.get() {
            self.plan_dispatch_by_scan()
        } else {
            self.plan_dispatch()
        };
        #[cfg(not(test))]
        let plan = self.plan_dispatch();
        for (id, agent, held) in plan {
            self.assign(id, &agent, held, step);
        }
    }

    /// Free agents with their free slots, least-loaded first (so work spreads
    /// over the fleet), and the devices each holds now.
    fn free_agents(&self) -> (Vec<(String, usize)>, BusyDevices) {
        let mut free: Vec<(String, usize)> = self
            .agents
            .iter()
            .filter(|(_, a)| a.connected_for_work())
            .filter(|(n, _)| !self.held_back.contains_key(*n))
            .filter_map(|(n, a)| {
                let held = self.leases.count_held_by(n);
                (a.slots() > held).then(|| (n.clone(), a.slots() - held))
            })
            .collect();
        free.sort_by_key(|(n, _)| self.leases.count_held_by(n));
        let busy = free
            .iter()
            .map(|(n, _)| (n.clone(), self.busy_devices(n)))
            .collect();
        (free, busy)
    }

    /// Which pending job goes to which free agent, with which devices: the
    /// pending order's jobs one by one, each to a free agent warm for it
    /// (environment, caches) that fits, else the first that fits. It does not
    /// walk the queue: jobs of one requirement class share one verdict per
    /// agent (`matching::class_key`), so it merges the classes' heads in the
    /// pending order, and a class whose head found no agent is passed over
    /// whole for the rest of the pass (free slots and devices only shrink
    /// within it, so none of its later jobs could be placed either). The cost
    /// is per assignment and class, not per pending job.
    fn plan_dispatch(&self) -> Vec<(u64, String, Vec<devices::Held>)> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let (mut free, mut busy) = self.free_agents();
        let mut chosen = Vec::new();
        if free.is_empty() || self.pending.is_empty() {
            return chosen;
        }
        let mut heads: BinaryHeap<Reverse<(crate::queue::Place, crate::queue::Class)>> = self
            .pending
            .class_heads()
            .into_iter()
            .map(|(class, place)| Reverse((place, class)))
            .collect();
        // (class, agent) -> accepts && fits: the class's one verdict per agent.
        let mut verdicts: HashMap<(crate::queue::Class, String), bool> = HashMap::new();
        while let Some(Reverse((place, class))) = heads.pop() {
            if free.is_empty() {
                break;
            }
            let id = place.job();
            let Some(e) = self.jobs.get(&id) else {
                continue;
            };
            let Some(spec) = &e.job.spec else { continue };
            let mut take = |n: &String| {
                let a = &self.agents[n];
                let fit = *verdicts
                    .entry((class, n.clone()))
                    .or_insert_with(|| a.accepts(spec) && fits(&e.req, spec, &a.attrs, a.caps()));
                if !fit {
                    return None;
                }
                let held = devices::allocate(spec, a.caps(), busy.get(n)?)?;
                Some((n.clone(), held))
            };
            // Affinity, never pinning: a free agent warm for the job's
            // environment and caches first, else the first that fits.
            let pick = free
                .iter()
                .filter(|(n, _)| warm_for(spec, self.agents[n].caps()))
                .find_map(|(n, _)| take(n))
                .or_else(|| free.iter().find_map(|(n, _)| take(n)));
            let Some((name, held)) = pick else {
                // The class is blocked for the rest of this pass.
                continue;
            };
            if let Some(b) = busy.get_mut(&name) {
                b.extend(held.iter().cloned());
            }
            chosen.push((id, name.clone(), held));
            if let Some(i) = free.iter().position(|(n, _)| *n == name) {
                free[i].1 -= 1;
                if free[i].1 == 0 {
                    free.remove(i);
                }
            }
            if let Some(next) = self.pending.next_in_class(class, place) {
                heads.push(Reverse((next, class)));
            }
        }
        chosen
    }

    /// The dispatch plan as a walk over every pending job: what
    /// [`Core::plan_dispatch`] must equal (the tests compare them).
    #[cfg(test)]
    fn plan_dispatch_by_scan(&self) -> Vec<(u64, String, Vec<devices::Held>)> {
        let (mut free, mut busy) = self.free_agents();
        let mut chosen = Vec::new();
        for id in self.pending.iter() {
            if free.is_empty() {
                break;
            }
            let e = &self.jobs[&id];
            let Some(spec) = &e.job.spec else { continue };
            let take = |n: &String| {
                let a = &self.agents[n];
                if !(a.accepts(spec) && fits(&e.req, spec, &a.attrs, a.caps())) {
                    return None;
                }
                let held = devices::allocate(spec, a.caps(), busy.get(n)?)?;
                Some((n.clone(), held))
            };
            let pick = free
                .iter()
                .filter(|(n, _)| warm_for(spec, self.agents[n].caps()))
                .find_map(|(n, _)| take(n))
                .or_else(|| free.iter().find_map(|(n, _)| take(n)));
            if let Some((name, held)) = pick {
                if let Some(b) = busy.get_mut(&name) {
                    b.extend(held.iter().cloned());
                }
                chosen.push((id, name.clone(), held));
                if let Some(i) = free.iter().position(|(n, _)| *n == name) {
                    free[i].1 -= 1;
                    if free[i].1 == 0 {
                        free.remove(i);
                    }
                }
            }
        }
        chosen
    }

    pub(super) fn assign(
        &mut self,
        id: u64,
        agent: &str,
        held: Vec<devices::Held>,
        step: &mut Step,
    ) {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        step.writes.put_meta(NEXT_EPOCH, self.next_epoch);
        self.pending.remove(id);
        let Some(e) = self.jobs.get_mut(&id) else {
            return;
        };
        if e.job.attempts == 0 {
            let queue = e.job.spec.as_ref().map_or("default", |s| s.queue.as_str());
            let waited = (self.now - e.job.submitted_at_ms).max(0) as u64;
            self.waits.record(queue, self.now, waited);
        }
        e.job.attempts += 1;
        e.job.agent = agent.to_string();
        e.job.tests = Some(TestCounts::default());
        e.job.cases.clear();
        e.job.environment = None;
        let att = AttemptRecord {
            attempt: e.job.attempts,
            epoch,
            agent: agent.to_string(),
            applied_seq: 0,
            cancel_requested: false,
            log_bytes: 0,
            assigned_at_ms: self.now,
            devices: held,
        };
        let r = attempt_ref(id, &att);
        let traceparent = telemetry::attempt_traceparent(&e.job, att.attempt);
        let spec = e.job.spec.clone();
        self.leases.grant(
            id,
            Lease {
                agent: agent.to_string(),
                attempt: att.attempt,
                epoch,
            },
        );
        let reason = if att.devices.is_empty() {
            format!("attempt {} on {agent}", att.attempt)
        } else {
            format!(
                "attempt {} on {agent} (devices: {})",
                att.attempt,
                devices::describe(&att.devices)
            )
        };
        e.job.devices = att.devices.iter().map(devices::Held::to_ref).collect();
        let device_refs = e.job.devices.clone();
        e.attempt = Some(att);
        self.set_state(id, JobState::Assigned, &reason, step);
        if let Some(s) = self.agents.get(agent).and_then(|a| a.session.as_ref()) {
            step.send(
                &s.tx,
                scheduler_message::Msg::Assign(pb::Assignment {
                    attempt: Some(r),
                    job_id: id.to_string(),
                    spec,
                    traceparent,
                    devices: device_refs,
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

    thread_local! {
        /// Dispatch walks every pending job (the reference the index must equal).
        pub(super) static BY_SCAN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// A small deterministic generator, so both runs see the same scenario.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    fn gpu(i: u32, memory_mb: u64) -> msfleet_proto::Gpu {
        msfleet_proto::Gpu {
            index: i,
            uuid: format!("GPU-{i}"),
            memory_mb,
            health: "ok".into(),
            ..Default::default()
        }
    }

    /// Every assignment of one seeded scenario (submits over priorities,
    /// queues, requirement classes and devices; clock moves that age jobs;
    /// attempts finishing and freeing slots), as (job, agent, devices) in
    /// the order the agents got them.
    fn assignment_log(seed: u64, by_scan: bool) -> Vec<(String, String, String)> {
        BY_SCAN.set(by_scan);
        let mut rng = Lcg(seed);
        let mut h = Harness::new();
        let mut conns = [
            h.register("a1", "cpu", 2),
            h.register("a2", "cpu", 1),
            {
                let mut c = caps("gpu", 3);
                c.gpus = vec![gpu(0, 24576), gpu(1, 81920)];
                h.register_as("g1", "g1-1", c, Vec::new()).unwrap()
            },
            {
                let mut c = caps("cpu", 2);
                c.labels.insert("pool".into(), "nightly".into());
                h.register_as("n1", "n1-1", c, Vec::new()).unwrap()
            },
        ];
        let names = ["a1", "a2", "g1", "n1"];
        let mut log = Vec::new();
        let mut running: Vec<(usize, AttemptRef)> = Vec::new();
        let mut seen = |i: usize, got: Vec<msfleet_proto::Assignment>, running: &mut Vec<_>| {
            for a in got {
                log.push((
                    a.job_id.clone(),
                    names[i].to_string(),
                    format!("{:?}", a.devices),
                ));
                running.push((i, a.attempt.unwrap()));
            }
        };
        for _ in 0..120 {
            match rng.below(10) {
                0..=4 => {
                    let mut s = spec();
                    s.allow_unmatched = true;
                    s.priority = [-2, 0, 0, 3, 10][rng.below(5) as usize];
                    s.queue = ["default", "nightly", "benchmark"][rng.below(3) as usize].into();
                    s.requirements = [
                        "",
                        "",
                        "profile == \"cpu\"",
                        "label.pool == \"nightly\"",
                        "profile == \"gpu\"",
                        "slots >= 3",
                        "profile == \"tpu\"",
                    ][rng.below(7) as usize]
                        .into();
                    s.gpus = [0, 0, 0, 1, 2][rng.below(5) as usize];
                    if s.gpus == 1 && rng.below(2) == 0 {
                        s.gpu_memory_bytes = Some(40 << 30);
                    }
                    s.labels.insert("n".into(), rng.below(1000).to_string());
                    h.submit(s).expect("submit");
                }
                5..=6 => {
                    h.advance(rng.below(200_000) as i64);
                    // Heartbeats keep the agents and their attempts alive.
                    for (i, c) in conns.iter().enumerate() {
                        let mine = running
                            .iter()
                            .filter(|(j, _)| *j == i)
                            .map(|(_, r)| r.clone())
                            .collect();
                        h.heartbeat(c, mine);
                    }
                }
                7 => h.tick(),
                _ => {
                    if !running.is_empty() {
                        let (i, r) = running.remove(rng.below(running.len() as u64) as usize);
                        let outcome = [Outcome::Passed, Outcome::Failed][rng.below(2) as usize];
                        h.update(&mut conns[i], &r, 1, started());
                        let got = assignments_in(h.update(&mut conns[i], &r, 2, finished(outcome)));
                        seen(i, got, &mut running);
                    }
                }
            }
            for (i, c) in conns.iter_mut().enumerate() {
                let got = h.assignments(c);
                seen(i, got, &mut running);
            }
        }
        BY_SCAN.set(false);
        log
    }

    /// The indexed dispatch hands out exactly what walking every pending job
    /// did: the same jobs, to the same agents, with the same devices, in the
    /// same order, across priorities, aging, queues, requirement classes and
    /// device requests.
    #[test]
    fn indexed_dispatch_assigns_exactly_what_a_walk_of_the_queue_does() {
        for seed in 1..=12u64 {
            let indexed = assignment_log(seed, false);
            let scanned = assignment_log(seed, true);
            assert!(
                indexed.len() > 10,
                "seed {seed}: the scenario assigns work: {indexed:?}"
            );
            assert_eq!(indexed, scanned, "seed {seed}");
        }
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

    fn agent(h: &mut Harness, name: &str) -> msfleet_proto::Agent {
        h.call(|reply| crate::core::Command::ListAgents { reply })
            .unwrap()
            .into_iter()
            .find(|a| a.name == name)
            .unwrap()
    }

    /// The gRPC layer keeps an idle agent's heartbeats from the core and only
    /// counts them: the count renews the lease on the tick. Once the agent is
    /// lost, the core asks for its next heartbeat, which reconciles it.
    #[test]
    fn heartbeats_kept_from_the_core_renew_the_lease_and_a_lost_agent_asks_for_the_next() {
        let mut h = Harness::with(lease_3s);
        let a = h.register("a1", "cpu", 1);
        let heard = a.heard();
        for _ in 0..5 {
            h.advance(2_000);
            heard.note();
            h.tick();
        }
        let seen = agent(&mut h, "a1");
        assert_eq!(
            seen.state, "online",
            "10 s of counted heartbeats, 3 s lease"
        );
        assert!(!heard.core_wants_heartbeat());
        h.advance(3_100);
        h.tick();
        assert_eq!(agent(&mut h, "a1").state, "lost");
        assert!(
            heard.core_wants_heartbeat(),
            "a lost agent's next heartbeat goes to the core"
        );
        heard.note();
        h.heartbeat(&a, vec![]);
        assert_eq!(agent(&mut h, "a1").state, "online");
        assert!(!heard.core_wants_heartbeat());
    }

    /// The case: a frozen agent (connection open, nothing said) lost
    /// its attempt, which went straight back to it and was lost again until
    /// the retries were gone. Now it is `lost` and gets nothing until it
    /// speaks again with what it runs.
    #[test]
    fn a_silent_agent_is_lost_and_gets_no_work_until_it_heartbeats() {
        let mut h = Harness::with(lease_3s);
        let mut a = h.register("a1", "cpu", 1);
        let job = h.submit(spec()).unwrap();
        let first = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.update(&mut a, &first, 1, started());
        h.advance(3_100);
        h.tick();
        let seen = agent(&mut h, "a1");
        assert_eq!(seen.state, "lost");
        assert!(seen.connected, "its connection is still open");
        assert!(
            seen.state_reason.contains(
                "silent since 2025-06-15T15:06:40Z: connected but silent past its 3 s lease"
            ),
            "{}",
            seen.state_reason
        );
        let view = h.job(&job.id);
        assert_eq!(view.state(), Queued);
        assert_eq!(view.agent_lost, 1);
        assert!(
            view.reason
                .contains("attempt 1 lost (agent a1 lost: silent 3.1 s); requeued"),
            "{}",
            view.reason
        );
        // However long it stays silent, nothing goes back to it.
        for _ in 0..5 {
            h.advance(3_100);
            h.tick();
        }
        assert!(h.assignments(&mut a).is_empty());
        let view = h.job(&job.id);
        assert_eq!((view.state(), view.attempts), (Queued, 1), "no retry burnt");
        assert_eq!(
            view.warnings,
            vec!["every matching agent is offline, drained or quarantined"]
        );
        // Late results of the lost attempt are refused.
        let msgs = h.update(&mut a, &first, 2, test_result("t.py::a", "passed"));
        assert!(
            reject(&msgs).is_some_and(|(_, abandon)| abandon),
            "{msgs:?}"
        );
        assert_eq!(
            agent(&mut h, "a1").state,
            "lost",
            "an update is not a reconciliation"
        );
        // Its heartbeat names the old attempt: told to abandon it, and back.
        h.heartbeat(&a, vec![first.clone()]);
        let msgs = h.messages(&mut a);
        let (why, abandon) = reject(&msgs).expect("the stale attempt is refused");
        assert!(abandon, "{why}");
        let second = msgs
            .iter()
            .find_map(|m| match m {
                Msg::Assign(x) => x.attempt.clone(),
                _ => None,
            })
            .expect("reconciled, it takes work again");
        assert_eq!(second.attempt, 2);
        assert_eq!(agent(&mut h, "a1").state, "busy");
        h.update(&mut a, &second, 1, started());
        h.update(&mut a, &second, 2, finished(Outcome::Passed));
        assert_eq!(h.state(&job.id), Passed);
    }

    /// An idle agent that falls silent is lost too, so nothing is sent to it.
    #[test]
    fn a_requeued_attempt_goes_to_an_agent_that_is_alive() {
        let mut h = Harness::with(lease_3s);
        let mut a = h.register("a1", "cpu", 1);
        let job = h.submit(spec()).unwrap();
        assert_eq!(h.assignments(&mut a).len(), 1);
        h.advance(2_000);
        let mut b = h.register("b1", "cpu", 1);
        h.advance(1_100);
        h.tick();
        let view = h.job(&job.id);
        assert_eq!((view.state(), view.agent.as_str()), (Assigned, "b1"));
        assert_eq!(h.assignments(&mut b).len(), 1);
        assert!(h.assignments(&mut a).is_empty());
        // b1 goes silent without work: lost, and a new job waits.
        h.advance(3_100);
        h.tick();
        assert_eq!(agent(&mut h, "b1").state, "lost");
    }

    #[test]
    fn an_attempt_lost_with_its_agent_has_its_own_allowance_apart_from_retries() {
        let mut h = Harness::with(lease_3s);
        let mut s = spec();
        s.retries = Some(0);
        s.agent_lost_retries = Some(1);
        let mut a = h.register("a1", "cpu", 1);
        let job = h.submit(s).unwrap();
        assert_eq!(h.assignments(&mut a).len(), 1);
        h.advance(3_001);
        h.tick();
        let view = h.job(&job.id);
        assert_eq!(
            view.state(),
            Queued,
            "retries 0 leaves the agent-lost retry"
        );
        assert_eq!((view.agent_lost, view.lost_retried), (1, 0));
        assert!(
            view.reason.contains("requeued (agent lost 1 of 1 allowed)"),
            "{}",
            view.reason
        );
        // The count and the allowance are durable.
        h.reload();
        let mut a = h.register("a1", "cpu", 1);
        assert_eq!(h.assignments(&mut a).len(), 1, "registered: reconciled");
        h.advance(3_001);
        h.tick();
        let view = h.job(&job.id);
        assert_eq!(
            view.state(),
            Error,
            "lost is infrastructure, not a test failure"
        );
        assert_eq!(view.agent_lost, 2);
        assert!(
            view.reason.contains(
                "attempt 2 lost (agent a1 lost: silent 3.0 s); no retries left (agent lost 2 of 1 allowed)"
            ),
            "{}",
            view.reason
        );
        // The job's own `retries` are for the other losses: an agent giving
        // an attempt up uses them, not the agent-lost allowance.
        h.heartbeat(&a, Vec::new());
        let mut s = spec();
        s.retries = Some(0);
        let other = h.submit(s).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.update(&mut a, &r, 1, finished(Outcome::Requeue));
        let view = h.job(&other.id);
        assert_eq!(view.state(), Error);
        assert_eq!((view.agent_lost, view.lost_retried), (0, 1));
        assert!(
            view.reason.contains("gave it up") && view.reason.contains("(retry 1 of 0)"),
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

    /// What an agent sends when it refuses an assignment for lack of a slot.
    fn refused(outcome: Outcome) -> msfleet_proto::task_update::Kind {
        msfleet_proto::task_update::Kind::Finished(msfleet_proto::Finished {
            outcome: outcome as i32,
            reason: "agent a1 has no free slot".into(),
            exit_code: -1,
            refused: true,
            ..Default::default()
        })
    }

    #[test]
    fn a_refused_assignment_is_requeued_uncounted_and_not_sent_straight_back() {
        let mut h = Harness::with(lease_3s);
        let mut a = h.register("a1", "cpu", 1);
        let mut s = spec();
        s.retries = Some(0);
        let job = h.submit(s).unwrap();
        let first = h.assignments(&mut a)[0].attempt.clone().unwrap();
        let msgs = h.update(&mut a, &first, 1, refused(Outcome::Requeue));
        assert!(msgs.iter().any(|m| is_ack(m, 1)), "{msgs:?}");
        assert!(
            !msgs.iter().any(|m| matches!(m, Msg::Assign(_))),
            "not sent straight back to the agent that refused it: {msgs:?}"
        );
        let view = h.job(&job.id);
        assert_eq!(view.state(), Queued, "{}", view.reason);
        assert_eq!(view.attempts, 0, "an attempt that never ran does not count");
        assert_eq!(
            view.reason,
            "agent a1 refused attempt 1 (agent a1 has no free slot); requeued"
        );
        h.tick();
        assert!(
            h.assignments(&mut a).is_empty(),
            "held back inside the hold"
        );
        // An agent with a free slot takes it at once; no retries were left
        // to burn (retries = 0) and it still runs.
        let mut b = h.register("b1", "cpu", 1);
        let second = h.assignments(&mut b)[0].attempt.clone().unwrap();
        assert_eq!(second.attempt, 1, "the number of an attempt that never ran");
        assert!(second.epoch > first.epoch, "a new lease fences the old one");
        h.finish(&mut b, &second, Outcome::Passed);
        assert_eq!(h.state(&job.id), Passed);
        assert_eq!(
            h.state_log(&job.id),
            vec![Queued, Assigned, Queued, Assigned, Running, Passed]
        );
    }

    #[test]
    fn a_refusing_agent_gets_work_again_once_it_finishes_an_attempt_or_the_hold_ends() {
        let mut h = Harness::with(lease_3s);
        let mut a = h.register("a1", "cpu", 2);
        let one = h.submit(spec()).unwrap();
        let two = h.submit(spec()).unwrap();
        let got = h.assignments(&mut a);
        assert_eq!(got.len(), 2);
        let (r1, r2) = (
            got[0].attempt.clone().unwrap(),
            got[1].attempt.clone().unwrap(),
        );
        h.update(&mut a, &r1, 1, started());
        // The agent runs one attempt on what it says is its only free slot.
        h.update(&mut a, &r2, 1, refused(Outcome::Requeue));
        h.tick();
        assert!(h.assignments(&mut a).is_empty(), "held back");
        assert_eq!(h.state(&two.id), Queued);
        // Finishing its attempt frees a slot: it gets work again at once.
        let again = assignments_in(h.update(&mut a, &r1, 2, finished(Outcome::Passed)));
        assert_eq!(h.state(&one.id), Passed);
        assert_eq!(again.len(), 1, "{again:?}");
        assert_eq!(again[0].job_id, two.id);
        // Refused once more; with nothing finishing, the hold ends with the lease timeout.
        let r = again[0].attempt.clone().unwrap();
        h.update(&mut a, &r, 1, refused(Outcome::Requeue));
        h.advance(2_999);
        h.tick();
        assert!(h.assignments(&mut a).is_empty(), "still held");
        h.advance(1);
        h.tick();
        let last = h.assignments(&mut a);
        assert_eq!(last.len(), 1, "the hold is over");
        h.finish(&mut a, &last[0].attempt.clone().unwrap(), Outcome::Passed);
        let view = h.job(&two.id);
        assert_eq!(
            (view.state(), view.attempts),
            (Passed, 1),
            "{}",
            view.reason
        );
    }

    #[test]
    fn refused_with_an_outcome_other_than_requeue_is_refused() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        let job = h.submit(spec()).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        let msgs = h.update(&mut a, &r, 1, refused(Outcome::Passed));
        let (why, abandon) = reject(&msgs).expect("refused");
        assert!(!abandon, "{why}");
        assert_eq!(
            why,
            "Finished.refused goes with outcome REQUEUE only, not Passed"
        );
        assert_eq!(h.state(&job.id), Assigned, "nothing changed");
        // Nor after the attempt has reported anything: then it ran.
        h.update(&mut a, &r, 1, started());
        let msgs = h.update(&mut a, &r, 2, refused(Outcome::Requeue));
        let (why, abandon) = reject(&msgs).expect("refused");
        assert!(!abandon, "{why}");
        assert_eq!(
            why,
            "Finished.refused must be the attempt's first update (it says the attempt never started)"
        );
        assert_eq!(h.state(&job.id), Running, "nothing changed");
        assert_eq!(h.job(&job.id).attempts, 1);
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

    /// Subtests as pytest 9 counts them: a passed one in `subtests_passed`
    /// (no test of `total`, no run in the test's history), a failed one one
    /// more `failed` and one of `subtests_failed`, kept in the history.
    #[test]
    fn subtests_are_counted_apart_and_only_failures_join_the_history() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        let job = h.submit(spec()).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.update(&mut a, &r, 1, started());
        let sub = |outcome: &str| {
            msfleet_proto::task_update::Kind::Test(msfleet_proto::TestResult {
                nodeid: "t.py::T::test_ut".into(),
                when: msfleet_proto::SUBTEST.into(),
                outcome: outcome.into(),
                ..Default::default()
            })
        };
        h.update(&mut a, &r, 2, test_result("t.py::T::test_ut", "passed"));
        h.update(&mut a, &r, 3, sub("subpassed"));
        h.update(&mut a, &r, 4, sub("subpassed"));
        h.update(&mut a, &r, 5, sub("failed"));
        h.update(&mut a, &r, 6, finished(Outcome::Failed));
        let c = h.job(&job.id).tests.unwrap();
        assert_eq!(
            (
                c.passed,
                c.failed,
                c.total,
                c.subtests_passed,
                c.subtests_failed
            ),
            (1, 1, 2, 2, 1)
        );
        let runs = h
            .core()
            .store
            .test_history("t.py::T::test_ut", "", 20)
            .unwrap();
        let outcomes: Vec<(&str, &str)> = runs
            .iter()
            .map(|r| (r.when.as_str(), r.outcome.as_str()))
            .collect();
        assert_eq!(outcomes, [("subtest", "failed"), ("call", "passed")]);
    }

    fn npu_caps(slots: u32, health: &[&str]) -> msfleet_proto::Capabilities {
        let mut c = caps("npu", slots);
        c.npus = health
            .iter()
            .enumerate()
            .map(|(i, h)| msfleet_proto::Npu {
                id: i as u32,
                name: "910B".into(),
                hbm_mb: 32768,
                health: (*h).into(),
                ..Default::default()
            })
            .collect();
        c
    }

    fn npu_job(n: u32) -> msfleet_proto::JobSpec {
        let mut s = spec();
        s.npus = n;
        s
    }

    fn indices(a: &msfleet_proto::Assignment) -> Vec<u32> {
        a.devices.iter().map(|d| d.index).collect()
    }

    #[test]
    fn jobs_share_an_agent_without_sharing_devices_and_a_finish_frees_them() {
        let mut h = Harness::new();
        let mut a = h
            .register_as("a1", "a1-1", npu_caps(8, &["OK"; 8]), vec![])
            .unwrap();
        let j1 = h.submit(npu_job(4)).unwrap();
        let j2 = h.submit(npu_job(4)).unwrap();
        let j3 = h.submit(npu_job(4)).unwrap();
        let got = h.assignments(&mut a);
        assert_eq!(got.len(), 2, "eight devices, two jobs of four");
        assert_eq!(indices(&got[0]), [0, 1, 2, 3]);
        assert_eq!(indices(&got[1]), [4, 5, 6, 7]);
        assert_eq!(got[0].devices[0].id, "npu 0 chip 0");
        assert_eq!(h.state(&j3.id), Queued, "a free slot is not enough");
        assert_eq!(
            h.job(&j3.id).warnings,
            ["waiting for free devices: it asks for 4 npus; a1: 0 of 8 npus free"]
        );
        let shown = h.job(&j1.id);
        assert_eq!(shown.devices.len(), 4);
        let events: Vec<String> = h
            .events(&j2.id)
            .into_iter()
            .filter_map(|e| match e.kind {
                Some(msfleet_proto::job_event::Kind::State(s)) => Some(s.reason),
                _ => None,
            })
            .collect();
        assert!(
            events
                .iter()
                .any(|r| r == "attempt 1 on a1 (devices: npu 4,5,6,7)"),
            "{events:?}"
        );
        let agent = agent(&mut h, "a1");
        let held: Vec<&str> = agent.devices.iter().map(|d| d.task.as_str()).collect();
        assert_eq!(
            held,
            [&j1.id[..]; 4]
                .iter()
                .chain([&j2.id[..]; 4].iter())
                .copied()
                .collect::<Vec<_>>()
        );
        // The first finishes: the third gets its devices.
        let r1 = got[0].attempt.clone().unwrap();
        h.update(&mut a, &r1, 1, started());
        let next = assignments_in(h.update(&mut a, &r1, 2, finished(Outcome::Passed)));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].job_id, j3.id);
        assert_eq!(indices(&next[0]), [0, 1, 2, 3]);
    }

    #[test]
    fn an_unhealthy_device_is_not_assigned_and_a_lost_attempt_frees_its_devices() {
        let mut h = Harness::with(lease_3s);
        let mut health = ["OK"; 8];
        health[1] = "Alarm";
        let mut a = h
            .register_as("a1", "a1-1", npu_caps(8, &health), vec![])
            .unwrap();
        let j1 = h.submit(npu_job(4)).unwrap();
        let j2 = h.submit(npu_job(4)).unwrap();
        let got = h.assignments(&mut a);
        assert_eq!(got.len(), 1, "seven healthy devices hold one job of four");
        assert_eq!(indices(&got[0]), [0, 2, 3, 4]);
        assert_eq!(h.state(&j2.id), Queued);
        // The agent goes silent: its attempt is lost and its devices with it.
        let r = got[0].attempt.clone().unwrap();
        h.update(&mut a, &r, 1, started());
        h.disconnect(&a);
        h.advance(3_001);
        h.tick();
        assert_eq!(h.state(&j1.id), Queued, "lost and requeued");
        let mut b = h
            .register_as("a1", "a1-2", npu_caps(8, &["OK"; 8]), vec![])
            .unwrap();
        let again = h.assignments(&mut b);
        assert_eq!(again.len(), 2, "healthy again, nothing held: both run");
        assert_eq!(indices(&again[0]), [0, 1, 2, 3]);
        assert_eq!(indices(&again[1]), [4, 5, 6, 7]);
    }

    #[test]
    fn a_reloaded_live_attempt_still_holds_its_devices() {
        let mut h = Harness::new();
        let mut a = h
            .register_as("a1", "a1-1", npu_caps(8, &["OK"; 8]), vec![])
            .unwrap();
        let j1 = h.submit(npu_job(4)).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.update(&mut a, &r, 1, started());
        h.reload();
        let mut a = h
            .register_as("a1", "a1-1", npu_caps(8, &["OK"; 8]), vec![r.clone()])
            .unwrap();
        assert_eq!(h.job(&j1.id).devices.len(), 4, "shown after the reload");
        let j2 = h.submit(npu_job(4)).unwrap();
        let got = h.assignments(&mut a);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].job_id, j2.id);
        assert_eq!(indices(&got[0]), [4, 5, 6, 7], "0-3 are still held");
        let j3 = h.submit(npu_job(1)).unwrap();
        assert!(h.assignments(&mut a).is_empty());
        assert_eq!(h.state(&j3.id), Queued);
    }

    #[test]
    fn more_devices_than_any_agent_has_is_refused_at_submit() {
        let mut h = Harness::new();
        let _a = h
            .register_as("a1", "a1-1", npu_caps(8, &["OK"; 8]), vec![])
            .unwrap();
        let err = h.submit(npu_job(9)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message()
                .contains("a1: has 8 npus that fit, the job asks for 9 npus"),
            "{}",
            err.message()
        );
        let err = h.submit(npu_job(65)).unwrap_err();
        assert!(
            err.message().contains("npus 65 is more than 64"),
            "{}",
            err.message()
        );
    }

    fn batch(results: Vec<msfleet_proto::TestResult>) -> msfleet_proto::task_update::Kind {
        msfleet_proto::task_update::Kind::Tests(msfleet_proto::TestResults { results })
    }

    fn result(nodeid: &str, outcome: &str) -> msfleet_proto::TestResult {
        msfleet_proto::TestResult {
            nodeid: nodeid.into(),
            when: "call".into(),
            outcome: outcome.into(),
            ..Default::default()
        }
    }

    /// A batch of results is one update: one Ack for its seq, and each
    /// result its own event (gap-free seqs), counted and in the test history;
    /// single-result updates still work beside it; a resend is re-acked and
    /// changes nothing; a batch with one bad result is refused whole.
    #[test]
    fn a_batch_of_test_results_is_one_update_and_each_result_its_own_event() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        let job = h.submit(spec()).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.update(&mut a, &r, 1, started());
        let results: Vec<_> = (0..100)
            .map(|i| {
                result(
                    &format!("t.py::test_{i}"),
                    if i % 10 == 0 { "failed" } else { "passed" },
                )
            })
            .collect();
        let msgs = h.update(&mut a, &r, 2, batch(results.clone()));
        let acks: Vec<u64> = msgs
            .iter()
            .filter_map(|m| match m {
                Msg::Ack(a) => Some(a.seq),
                _ => None,
            })
            .collect();
        assert_eq!(acks, vec![2], "one ack for the batch");
        let again = h.update(&mut a, &r, 2, batch(results));
        assert!(
            again.iter().any(|m| is_ack(m, 2)),
            "a resend is acked again"
        );
        let msgs = h.update(&mut a, &r, 3, test_result("t.py::single", "skipped"));
        assert!(msgs.iter().any(|m| is_ack(m, 3)));
        let mut bad = vec![result("t.py::ok", "passed")];
        bad.push(result(&"x".repeat(msfleet_proto::MAX_NODEID + 1), "passed"));
        let msgs = h.update(&mut a, &r, 4, batch(bad));
        let (why, abandon) = reject(&msgs).expect("refused");
        assert!(why.contains("result 1") && why.contains("nodeid"), "{why}");
        assert!(!abandon);
        let msgs = h.update(&mut a, &r, 4, batch(Vec::new()));
        assert!(reject(&msgs).is_some(), "an empty batch is refused");
        h.update(&mut a, &r, 4, finished(Outcome::Failed));
        let c = h.job(&job.id).tests.unwrap();
        assert_eq!((c.total, c.passed, c.failed, c.skipped), (101, 90, 10, 1));
        let events = h.events(&job.id);
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "gap-free"
        );
        let tests: Vec<String> = events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(msfleet_proto::job_event::Kind::Test(t)) => Some(t.nodeid.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(tests.len(), 101, "each result an event, none twice");
        assert_eq!(tests[0], "t.py::test_0");
        assert_eq!(tests[100], "t.py::single");
        let runs = h.core().store.test_history("t.py::test_10", "", 5).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].outcome, "failed");
        assert_eq!(runs[0].job_id, job.id);
    }

    fn dir_bytes(dir: &std::path::Path) -> u64 {
        let mut total = 0;
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let m = e.metadata().unwrap();
            total += if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            };
        }
        total
    }

    /// What a test result costs on disk (its event and its test history,
    /// sled's overhead included): 20,000 results of a real-looking suite in
    /// batches of 500, as the agent sends them. 1,075 bytes each with one key
    /// per event and per history run (the layout before event blocks);
    /// prints the figure. The history still answers per test, newest first.
    #[test]
    fn a_test_result_costs_tens_of_bytes_on_disk() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        let job = h.submit(spec()).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.update(&mut a, &r, 1, started());
        h.core().store.flush().unwrap();
        let before = dir_bytes(h.dir.path());
        let n = 20_000;
        let mut seq = 2;
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let results = chunk
                .iter()
                .map(|i| msfleet_proto::TestResult {
                    nodeid: format!(
                        "tests/unit/test_module_{:03}.py::TestClass{}::test_case_{i}[param-{}]",
                        i / 200,
                        i % 7,
                        i % 13
                    ),
                    when: "call".into(),
                    outcome: if i % 50 == 0 { "failed" } else { "passed" }.into(),
                    duration_s: 0.001 * (*i % 97) as f64,
                    ..Default::default()
                })
                .collect();
            let msgs = h.update(&mut a, &r, seq, batch(results));
            assert!(msgs.iter().any(|m| is_ack(m, seq)));
            seq += 1;
        }
        h.update(&mut a, &r, seq, finished(Outcome::Failed));
        h.core().store.flush().unwrap();
        let per_result = (dir_bytes(h.dir.path()).saturating_sub(before)) as f64 / n as f64;
        println!("store bytes per test result: {per_result:.1}");
        assert_eq!(h.job(&job.id).tests.unwrap().total, n as u64);
        let id = "tests/unit/test_module_050.py::TestClass4::test_case_10000[param-3]";
        let runs = h.core().store.test_history(id, "", 10).unwrap();
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(
            (runs[0].outcome.as_str(), runs[0].profile.as_str()),
            ("failed", "cpu")
        );
        assert!((runs[0].duration_s - 0.001 * (10000 % 97) as f64).abs() < 1e-9);
        assert!(per_result < 100.0, "{per_result:.1} bytes per result");
    }
}
