//! Agents: registration (and resuming attempts), sessions, heartbeats,
//! disconnects, and the admin state (drain / quarantine).

use super::*;
use crate::auth::AgentProof;

pub(super) struct Session {
    pub(super) id: u64,
    pub(super) instance: String,
    pub(super) tx: AgentTx,
    /// The agent gave work back because it is shutting down: send it no more.
    pub(super) leaving: bool,
    /// How the session's agent proved its name (revoking a token ends only
    /// the sessions that came with one).
    pub(super) proof: AgentProof,
}

pub(super) struct AgentEntry {
    pub(super) record: Agent,
    pub(super) attrs: Attributes,
    pub(super) session: Option<Session>,
    pub(super) last_seen_ms: i64,
}

impl AgentEntry {
    pub(super) fn caps(&self) -> &pb::Capabilities {
        static EMPTY: std::sync::OnceLock<pb::Capabilities> = std::sync::OnceLock::new();
        self.record
            .capabilities
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(pb::Capabilities::default))
    }

    pub(super) fn slots(&self) -> usize {
        self.caps().slots.max(1) as usize
    }

    /// Connected and active: takes any job (fan-out counts it as a column
    /// that runs).
    pub(super) fn takes_work(&self) -> bool {
        self.connected_for_work() && self.record.admin() == AgentAdmin::Active
    }
}

/// The one place an agent's shown state is decided (`msctl agents`, metrics,
/// the dashboard all read `Agent.state`): the admin state wins, then whether
/// a session is open, then whether it runs anything. A quarantined agent's
/// reason says who or what quarantined it and why (durable).
pub(super) fn agent_state(a: &AgentEntry, running: usize) -> (&'static str, String) {
    match a.record.admin() {
        AgentAdmin::Drained => return ("drained", String::new()),
        AgentAdmin::Quarantined => return ("quarantined", a.record.quarantine_reason.clone()),
        AgentAdmin::Active | AgentAdmin::Unspecified => {}
    }
    match &a.session {
        None => ("offline", String::new()),
        Some(_) if running > 0 => ("busy", String::new()),
        Some(_) => ("online", String::new()),
    }
}

impl Core {
    pub(super) fn list_agents(&self) -> Vec<Agent> {
        self.agents.keys().map(|n| self.agent_view(n)).collect()
    }

    pub(super) fn agent_view(&self, name: &str) -> Agent {
        let a = &self.agents[name];
        let mut v = a.record.clone();
        v.connected = a.session.is_some();
        v.last_seen_ms = a.last_seen_ms;
        v.running = self
            .leases
            .held_by(name)
            .into_iter()
            .map(|t| t.to_string())
            .collect();
        let (state, reason) = agent_state(a, v.running.len());
        v.state = state.to_string();
        v.state_reason = reason;
        v
    }

    /// An admin sets an agent's state: `by` (the caller's token name) and
    /// `reason` become a quarantine's reason; active or drained ends a
    /// quarantine.
    pub(super) fn set_admin(
        &mut self,
        name: &str,
        admin: AgentAdmin,
        by: &str,
        reason: &str,
        step: &mut Step,
    ) -> Result<Agent, Status> {
        if admin == AgentAdmin::Unspecified {
            return Err(Status::invalid_argument(
                "say which state: active, drained or quarantined",
            ));
        }
        if !self.agents.contains_key(name) {
            return Err(Status::not_found(format!(
                "no agent named '{}' has ever registered",
                crate::clip(name)
            )));
        }
        match admin {
            AgentAdmin::Quarantined => {
                let why = match reason.trim() {
                    "" => format!("admin {by}"),
                    r => format!("admin {by}: {r}"),
                };
                self.quarantine(name, why, false, step);
            }
            _ => self.clear_quarantine(name, admin, step),
        }
        Ok(self.agent_view(name))
    }

    pub(super) fn register(
        &mut self,
        session: u64,
        reg: pb::Register,
        who: &Principal,
        tx: AgentTx,
        step: &mut Step,
    ) -> Result<(), Status> {
        let name = reg.name.clone();
        check_name("agent", &name)?;
        let Principal::Agent {
            name: bound,
            labels,
            profile,
            proof,
        } = who
        else {
            return Err(Status::permission_denied(
                "only an agent's credential may open an agent session",
            ));
        };
        if *bound != name {
            return Err(Status::permission_denied(format!(
                "this credential belongs to agent '{bound}'; start msagent with --name {bound} \
                 (or make a token for '{}')",
                crate::clip(&name)
            )));
        }
        let mut caps = reg.capabilities.clone().unwrap_or_default();
        trust_token(&mut caps, labels, profile)?;
        if let Some(old) = self.agents.get(&name).and_then(|a| a.session.as_ref()) {
            if old.instance != reg.instance_id {
                return Err(Status::already_exists(format!(
                    "an agent named '{name}' is already connected from another msagent process; \
                     stop that one or start this one with another --name"
                )));
            }
            // The same process reconnecting: its old stream is dead or dying.
            self.sessions.remove(&old.id);
        }
        let attrs = matching::attributes(&name, &caps);
        let now = self.now;
        let entry = self
            .agents
            .entry(name.clone())
            .or_insert_with(|| AgentEntry {
                record: Agent {
                    name: name.clone(),
                    admin: AgentAdmin::Active as i32,
                    ..Default::default()
                },
                attrs: Attributes::default(),
                session: None,
                last_seen_ms: now,
            });
        entry.record.capabilities = Some(caps);
        entry.attrs = attrs;
        entry.last_seen_ms = now;
        entry.session = Some(Session {
            id: session,
            instance: reg.instance_id.clone(),
            tx: tx.clone(),
            leaving: false,
            proof: *proof,
        });
        step.writes.put_agent(&entry.record);
        self.sessions.insert(session, name.clone());

        let mut resumed = Vec::new();
        let mut cancels = Vec::new();
        let mut abandon = Vec::new();
        for r in &reg.resume {
            let task = r.task_id.parse::<u64>().unwrap_or(0);
            match self.leases.check(task, r, &name) {
                Ok(_) => {
                    resumed.push(r.clone());
                    if self.jobs[&task]
                        .attempt
                        .as_ref()
                        .is_some_and(|a| a.cancel_requested)
                    {
                        cancels.push(r.clone());
                    }
                }
                Err(e) => abandon.push((r.clone(), e.to_string())),
            }
        }
        let claimed: BTreeSet<u64> = resumed
            .iter()
            .filter_map(|r| r.task_id.parse().ok())
            .collect();
        for task in self.leases.held_by(&name) {
            if !claimed.contains(&task) {
                self.lose(task, &format!("agent {name} restarted without it"), step);
            }
        }
        tracing::info!(agent = %name, resumed = resumed.len(), "agent registered");
        step.send(
            &tx,
            scheduler_message::Msg::Registered(pb::Registered {
                heartbeat_interval_ms: self.cfg.heartbeat_interval.as_millis() as u64,
                lease_timeout_ms: self.cfg.lease_timeout.as_millis() as u64,
                resumed,
            }),
        );
        for (r, why) in abandon {
            step.send(
                &tx,
                scheduler_message::Msg::Reject(pb::Reject {
                    attempt: Some(r),
                    seq: 0,
                    message: why,
                    abandon: true,
                }),
            );
        }
        for r in cancels {
            step.send(
                &tx,
                scheduler_message::Msg::Cancel(pb::CancelAttempt {
                    attempt: Some(r),
                    reason: "cancelled by user".into(),
                }),
            );
        }
        self.apply_health(&name, step);
        step.dispatch = true;
        Ok(())
    }

    /// Ends agent `name`'s live session if it came with `proof`: the stream
    /// gets `why` as an Unauthenticated status and closes, and its attempts
    /// are lost at once (requeued within their retry budget).
    pub(super) fn end_session(
        &mut self,
        name: &str,
        proof: AgentProof,
        why: &str,
        step: &mut Step,
    ) {
        let Some(a) = self.agents.get_mut(name) else {
            return;
        };
        if a.session.as_ref().is_none_or(|s| s.proof != proof) {
            return;
        }
        let Some(session) = a.session.take() else {
            return;
        };
        a.last_seen_ms = self.now;
        self.sessions.remove(&session.id);
        let status = Status::unauthenticated(why.to_string());
        step.after.push(Box::new(move |_| session.tx.end(status)));
        for task in self.leases.held_by(name) {
            self.lose(task, &format!("agent {name}: {why}"), step);
        }
        tracing::warn!(agent = %name, "session ended: {why}");
    }

    pub(super) fn session_agent(&mut self, session: u64) -> Option<(String, AgentTx)> {
        let name = self.sessions.get(&session)?.clone();
        let a = self.agents.get_mut(&name)?;
        a.last_seen_ms = self.now;
        let tx = a.session.as_ref()?.tx.clone();
        Some((name, tx))
    }

    pub(super) fn heartbeat(&mut self, session: u64, hb: pb::Heartbeat, step: &mut Step) {
        let Some((name, tx)) = self.session_agent(session) else {
            return;
        };
        for r in hb.running {
            let task = r.task_id.parse::<u64>().unwrap_or(0);
            if let Err(e) = self.leases.check(task, &r, &name) {
                step.send(
                    &tx,
                    scheduler_message::Msg::Reject(pb::Reject {
                        attempt: Some(r),
                        seq: 0,
                        message: e.to_string(),
                        abandon: true,
                    }),
                );
            }
        }
    }

    /// Ends the sessions whose agents fell [`AGENT_QUEUE`] messages behind
    /// (their streams already end with ResourceExhausted): like a
    /// disconnect, so their leases run on and expire normally unless the
    /// agent reconnects and resumes, which it does at once.
    pub(super) fn end_slow_sessions(&mut self) {
        let slow: Vec<(u64, String)> = self
            .agents
            .iter()
            .filter_map(|(n, a)| a.session.as_ref().map(|s| (n, s)))
            .filter(|(_, s)| s.tx.overflowed())
            .map(|(n, s)| (s.id, n.clone()))
            .collect();
        for (session, name) in slow {
            tracing::warn!(agent = %name, "ending the session of an agent that reads too slowly");
            self.disconnected(session);
        }
    }

    pub(super) fn disconnected(&mut self, session: u64) {
        let Some(name) = self.sessions.remove(&session) else {
            return;
        };
        if let Some(a) = self.agents.get_mut(&name) {
            if a.session.as_ref().is_some_and(|s| s.id == session) {
                a.session = None;
                a.last_seen_ms = self.now;
                tracing::info!(agent = %name, "agent disconnected");
            }
        }
    }
}

/// The hardware profile an agent reported ("" for an unknown agent). Takes the
/// agent map alone so callers may hold other parts of the core mutably.
pub(super) fn agent_profile(agents: &BTreeMap<String, AgentEntry>, name: &str) -> String {
    agents
        .get(name)
        .map(|a| a.caps().profile.clone())
        .unwrap_or_default()
}

/// Applies what the admin set on an agent's token: its labels win over the
/// agent's own, and only the token may override the hardware profile.
fn trust_token(
    caps: &mut pb::Capabilities,
    labels: &BTreeMap<String, String>,
    profile: &str,
) -> Result<(), Status> {
    for (k, v) in labels {
        caps.labels.insert(k.clone(), v.clone());
    }
    if !profile.is_empty() {
        caps.profile = profile.to_string();
        caps.labels.insert("profile".into(), profile.to_string());
    } else if caps.labels.contains_key("profile") {
        return Err(Status::permission_denied(
            "a profile= override comes from the agent's token, not from the agent: \
             msctl agent token create NAME --profile P",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::harness::*;
    use super::super::Command;
    use msfleet_proto::{AgentAdmin, JobState::*};

    fn set_admin(
        h: &mut Harness,
        name: &str,
        admin: AgentAdmin,
    ) -> Result<msfleet_proto::Agent, tonic::Status> {
        h.set_admin(name, admin)
    }

    #[test]
    fn a_name_taken_by_a_connected_process_is_refused_and_the_same_process_may_reconnect() {
        let mut h = Harness::new();
        let a = h.register("h1", "cpu", 1);
        let e = h
            .register_as("h1", "other-process", caps("cpu", 1), Vec::new())
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::AlreadyExists);
        assert!(e
            .message()
            .contains("already connected from another msagent process"));
        let again = h.register_as("h1", "h1-1", caps("cpu", 2), Vec::new());
        assert!(
            again.is_ok(),
            "the same instance reconnecting is its old stream dying"
        );
        let agents = h.call(|reply| Command::ListAgents { reply }).unwrap();
        assert_eq!(agents.len(), 1);
        assert!(agents[0].connected);
        assert_eq!(agents[0].capabilities.as_ref().unwrap().slots, 2);
        let bad = h.register_as("bad name!", "x", caps("cpu", 1), Vec::new());
        assert_eq!(bad.err().unwrap().code(), tonic::Code::InvalidArgument);
        drop(a);
    }

    #[test]
    fn an_agent_that_reads_too_slowly_loses_its_session_and_resumes_its_attempt() {
        use msfleet_proto::{scheduler_message::Msg, Outcome};
        let mut h = Harness::with(|c| c.lease_timeout = std::time::Duration::from_secs(3));
        h.agent_queue = 8;
        let mut a = h.register("a1", "cpu", 1);
        let job = h.submit(spec()).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        // The agent sends but does not read: ten acks for a queue of eight.
        for seq in 1..=10 {
            let kind = if seq == 1 {
                started()
            } else {
                test_result(&format!("t.py::t{seq}"), "passed")
            };
            h.send(Command::Update {
                session: a.session,
                update: msfleet_proto::TaskUpdate {
                    attempt: Some(r.clone()),
                    seq,
                    kind: Some(kind),
                },
            });
        }
        // The acks leave after the flush (a barrier waits for that); the
        // next turn ends the session.
        h.call(|reply| Command::ListQueues { reply }).unwrap();
        let agents = h.call(|reply| Command::ListAgents { reply }).unwrap();
        assert!(!agents[0].connected, "the slow consumer's session is over");
        let end = a.next_status().expect("the stream ends with a status");
        assert_eq!(end.code(), tonic::Code::ResourceExhausted, "{end:?}");
        assert_eq!(h.state(&job.id), Running, "its attempt is not lost at once");
        // Updates on the dead session change nothing.
        h.update(&mut a, &r, 11, finished(Outcome::Passed));
        assert_eq!(h.state(&job.id), Running);
        // It reconnects, resumes and resends what was not acknowledged.
        let mut b = h
            .register_as("a1", "a1-1", caps("cpu", 1), vec![r.clone()])
            .unwrap();
        let msgs = h.messages(&mut b);
        assert!(msgs
            .iter()
            .any(|m| matches!(m, Msg::Registered(x) if x.resumed == vec![r.clone()])));
        let msgs = h.update(&mut b, &r, 10, test_result("t.py::t10", "passed"));
        assert!(
            msgs.iter().any(|m| is_ack(m, 10)),
            "a resend is acked again"
        );
        h.update(&mut b, &r, 11, finished(Outcome::Passed));
        let view = h.job(&job.id);
        assert_eq!(view.state(), Passed);
        assert_eq!(view.tests.unwrap().passed, 9, "every test counted once");
    }

    #[test]
    fn drained_and_quarantined_agents_get_no_work_until_undrained() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        for admin in [AgentAdmin::Drained, AgentAdmin::Quarantined] {
            assert_eq!(set_admin(&mut h, "a1", admin).unwrap().admin(), admin);
            let job = h.submit(spec()).unwrap();
            assert!(h.assignments(&mut a).is_empty());
            let view = h.job(&job.id);
            assert_eq!(view.state(), Queued);
            assert_eq!(
                view.warnings,
                vec!["every matching agent is offline, drained or quarantined"]
            );
            h.cancel(&job.id).unwrap();
        }
        let job = h.submit(spec()).unwrap();
        set_admin(&mut h, "a1", AgentAdmin::Active).unwrap();
        assert_eq!(h.assignments(&mut a)[0].job_id, job.id);
        // The admin state is durable.
        set_admin(&mut h, "a1", AgentAdmin::Drained).unwrap();
        h.reload();
        let agents = h.call(|reply| Command::ListAgents { reply }).unwrap();
        assert_eq!(agents[0].admin(), AgentAdmin::Drained);
        assert!(!agents[0].connected);
        let e = set_admin(&mut h, "nobody", AgentAdmin::Drained).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    }

    #[test]
    fn an_agent_registers_only_under_its_own_credentials_name() {
        let mut h = Harness::new();
        let e = h
            .register_with(
                "h2",
                "x",
                caps("cpu", 1),
                Vec::new(),
                agent_token("h1", &[], ""),
            )
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message().contains("belongs to agent 'h1'"),
            "{}",
            e.message()
        );
        let person = person("ana", crate::auth::Role::Admin);
        let e = h
            .register_with("ana", "x", caps("cpu", 1), Vec::new(), person)
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let agents = h.call(|reply| Command::ListAgents { reply }).unwrap();
        assert!(agents.is_empty(), "a refused registration leaves no trace");
    }

    #[test]
    fn labels_and_profile_come_from_the_token_not_from_the_agent() {
        let mut h = Harness::new();
        let mut own = caps("hw-key", 1);
        own.labels.insert("pool".into(), "nightly".into());
        own.labels.insert("rack".into(), "a3".into());
        let token = agent_token("g1", &[("pool", "dev")], "gpu-a");
        h.register_with("g1", "g1-1", own.clone(), Vec::new(), token)
            .unwrap();
        let agents = h.call(|reply| Command::ListAgents { reply }).unwrap();
        let got = agents[0].capabilities.clone().unwrap();
        assert_eq!(got.profile, "gpu-a");
        assert_eq!(got.labels["pool"], "dev", "the token's label wins");
        assert_eq!(got.labels["rack"], "a3", "the agent's other labels stay");
        // An agent may not claim a profile override itself.
        let mut claims = caps("fake", 1);
        claims.labels.insert("profile".into(), "fake".into());
        let e = h
            .register_with("g2", "g2-1", claims, Vec::new(), agent_token("g2", &[], ""))
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("--profile"), "{}", e.message());
    }
}
