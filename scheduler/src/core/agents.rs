//! Agents: registration (and resuming attempts, taking a name over from
//! another process), sessions, heartbeats (a lost agent comes back), disconnects,
//! the admin state (drain with a deadline / quarantine) and forgetting an agent.

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
    /// The session's [`super::Heard`] count when the core last read it.
    pub(super) heard: u64,
}

pub(super) struct AgentEntry {
    pub(super) record: Agent,
    pub(super) attrs: Attributes,
    pub(super) session: Option<Session>,
    pub(super) last_seen_ms: i64,
    /// Set when its lease expired ([`Core::expire_leases`]): it gets no work
    /// until it speaks again with what it runs (a heartbeat or a registration).
    pub(super) lost: Option<Lost>,
    /// Instances of msagent that another process under this name replaced:
    /// they may not register again (newest last, at most [`MAX_FENCED`]).
    pub(super) fenced: Vec<String>,
}

/// Why and since when an agent is lost.
pub(super) struct Lost {
    /// Last heard from.
    pub(super) silent_since_ms: i64,
    pub(super) why: String,
}

/// Replaced instances remembered per agent name.
const MAX_FENCED: usize = 16;

/// What a process replaced under `name` is told (its stream ends with it,
/// and so does its next registration); the agent stops on it.
fn taken_over(name: &str) -> Status {
    Status::already_exists(format!(
        "another msagent process registered as '{name}' and took the name over; \
         this one stops (start it again to take the name back)"
    ))
}

/// The registry of agents by name. Each entry is boxed: an entry is most of
/// a KiB (the record holds the capabilities), and a B-tree node keeps room
/// for 11 of them however few it holds (after splits, nodes are a quarter to
/// a half empty): boxed, an empty place costs a pointer.
pub(super) type Registry = BTreeMap<String, Box<AgentEntry>>;

impl AgentEntry {
    pub(super) fn new(record: Agent, attrs: Attributes, last_seen_ms: i64) -> Box<AgentEntry> {
        Box::new(AgentEntry {
            record,
            attrs,
            session: None,
            last_seen_ms,
            lost: None,
            fenced: Vec::new(),
        })
    }
}

impl AgentEntry {
    /// Renews `last_seen_ms` to `now` if the gRPC layer heard from the
    /// session since the last look (heartbeats it did not pass on).
    pub(super) fn refresh_heard(&mut self, now: i64) {
        if let Some(s) = &mut self.session {
            let heard = s.tx.heard();
            if heard != s.heard {
                s.heard = heard;
                self.last_seen_ms = self.last_seen_ms.max(now);
            }
        }
    }

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

/// `ms` (UTC) as `2026-12-01T11:20:01Z`.
pub(super) fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// The one place an agent's shown state is decided (`msctl agents`, metrics,
/// the dashboard all read `Agent.state`): the admin state wins, then whether
/// its lease expired (lost), then whether a session is open, then whether it
/// runs anything. A quarantined agent's reason says who or what quarantined
/// it and why (durable).
pub(super) fn agent_state(a: &AgentEntry, running: usize) -> (&'static str, String) {
    match a.record.admin() {
        AgentAdmin::Drained if a.record.drain_deadline_ms > 0 => {
            let reason = format!(
                "drain deadline {}: what still runs then is stopped and requeued",
                utc(a.record.drain_deadline_ms)
            );
            return ("drained", reason);
        }
        AgentAdmin::Drained => return ("drained", String::new()),
        AgentAdmin::Quarantined => return ("quarantined", a.record.quarantine_reason.clone()),
        AgentAdmin::Active | AgentAdmin::Unspecified => {}
    }
    if let Some(lost) = &a.lost {
        let reason = format!("silent since {}: {}", utc(lost.silent_since_ms), lost.why);
        return ("lost", reason);
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
        let holders: HashMap<devices::Held, String> = self
            .leases
            .held_by(name)
            .into_iter()
            .filter_map(|t| Some((t, self.jobs.get(&t)?.attempt.as_ref()?)))
            .flat_map(|(t, att)| att.devices.iter().map(move |d| (d.clone(), t.to_string())))
            .collect();
        v.devices = devices::inventory(a.caps())
            .into_iter()
            .map(|d| pb::DeviceUse {
                device: Some(d.held.to_ref()),
                memory_mb: d.memory_mb,
                health: d.health,
                healthy: d.healthy,
                task: holders.get(&d.held).cloned().unwrap_or_default(),
            })
            .collect();
        let (state, reason) = agent_state(a, v.running.len());
        v.state = state.to_string();
        v.state_reason = reason;
        v
    }

    /// An admin sets an agent's state: `by` (the caller's token name) and
    /// `reason` become a quarantine's reason; active or drained ends a
    /// quarantine. A drain may come with a deadline `deadline_in_ms` from now
    /// (0: none), any other state clears it.
    pub(super) fn set_admin(
        &mut self,
        name: &str,
        admin: AgentAdmin,
        deadline_in_ms: u64,
        by: &str,
        reason: &str,
        step: &mut Step,
    ) -> Result<Agent, Status> {
        if admin == AgentAdmin::Unspecified {
            return Err(Status::invalid_argument(
                "say which state: active, drained or quarantined",
            ));
        }
        if deadline_in_ms > 0 && admin != AgentAdmin::Drained {
            return Err(Status::invalid_argument(
                "a deadline goes only with a drain: msctl agent drain NAME --deadline 30m",
            ));
        }
        self.agent_mut(name)?;
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
        let now = self.now;
        let a = self.agent_mut(name)?;
        a.record.drain_deadline_ms = if deadline_in_ms > 0 {
            now.saturating_add(i64::try_from(deadline_in_ms).unwrap_or(i64::MAX))
        } else {
            0
        };
        step.writes.put_agent(&a.record);
        step.dispatch = true;
        Ok(self.agent_view(name))
    }

    fn agent_mut(&mut self, name: &str) -> Result<&mut AgentEntry, Status> {
        self.agents.get_mut(name).map(|a| &mut **a).ok_or_else(|| {
            Status::not_found(format!(
                "no agent named '{}' is registered (msctl agents lists them)",
                crate::clip(name)
            ))
        })
    }

    /// On the tick: the attempts still held by a drained agent whose drain
    /// deadline passed are stopped (CancelAttempt to the agent) and requeued
    /// without using their retries.
    pub(super) fn end_drain_deadlines(&mut self, step: &mut Step) {
        let now = self.now;
        let due: Vec<(String, Vec<u64>)> = self
            .agents
            .iter()
            .filter(|(_, a)| {
                a.record.admin() == AgentAdmin::Drained
                    && a.record.drain_deadline_ms > 0
                    && now >= a.record.drain_deadline_ms
            })
            .map(|(n, _)| (n.clone(), self.leases.held_by(n)))
            .filter(|(_, held)| !held.is_empty())
            .collect();
        for (name, held) in due {
            let tx = self.agents[&name].session.as_ref().map(|s| s.tx.clone());
            let why = format!(
                "agent {name}'s drain deadline {} passed",
                utc(self.agents[&name].record.drain_deadline_ms)
            );
            for task in held {
                let attempt = self.jobs.get(&task).and_then(|e| e.attempt.as_ref());
                if let (Some(tx), Some(att)) = (&tx, attempt) {
                    step.send(
                        tx,
                        scheduler_message::Msg::Cancel(pb::CancelAttempt {
                            attempt: Some(attempt_ref(task, att)),
                            reason: why.clone(),
                        }),
                    );
                }
                self.lose(task, Loss::Stopped, &why, step);
            }
        }
    }

    /// Removes an agent that is not connected and holds no attempts: it is no
    /// longer listed, nor a fan-out column. Its token stays valid (revoke it
    /// to keep the agent out); if it registers again it is a new agent.
    pub(super) fn forget_agent(&mut self, name: &str, step: &mut Step) -> Result<Agent, Status> {
        self.agent_mut(name)?; // NotFound for an unknown name
        let view = self.agent_view(name);
        if view.connected {
            return Err(Status::failed_precondition(format!(
                "agent '{name}' is connected: stop its msagent first (msctl agent drain {name} \
                 lets it finish its work)"
            )));
        }
        if !view.running.is_empty() {
            return Err(Status::failed_precondition(format!(
                "agent '{name}' still holds {} attempt(s) (tasks {}): wait until they are \
                 requeued (its lease expires) or finish",
                view.running.len(),
                view.running.join(", ")
            )));
        }
        self.agents.remove(name);
        step.writes.remove_agent(name);
        tracing::info!(agent = %name, "agent forgotten");
        Ok(view)
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
        if let Some(a) = self.agents.get(&name) {
            if a.fenced.contains(&reg.instance_id) {
                return Err(taken_over(&name));
            }
        }
        let mut replaced = false;
        if let Some(a) = self.agents.get_mut(&name) {
            if let Some(old) = a.session.take_if(|old| old.instance != reg.instance_id) {
                // Another process under the name (a restarted agent whose old
                // connection is half-open, a frozen one): it takes the name
                // over; the old session is fenced off for good.
                self.sessions.remove(&old.id);
                a.fenced.push(old.instance.clone());
                if a.fenced.len() > MAX_FENCED {
                    a.fenced.remove(0);
                }
                let status = taken_over(&name);
                step.after.push(Box::new(move |_| old.tx.end(status)));
                tracing::warn!(agent = %name, old = %old.instance, new = %reg.instance_id,
                    "another msagent process took the name over");
                replaced = true;
            } else if let Some(old) = &a.session {
                // The same process reconnecting: its old stream is dead or dying.
                self.sessions.remove(&old.id);
            }
        }
        let attrs = matching::attributes(&name, &caps);
        let now = self.now;
        // A known agent reconnecting as it was (after a scheduler restart,
        // every agent) needs no durable write.
        let changed = self
            .agents
            .get(&name)
            .is_none_or(|a| a.record.capabilities.as_ref() != Some(&caps));
        let entry = self.agents.entry(name.clone()).or_insert_with(|| {
            AgentEntry::new(
                Agent {
                    name: name.clone(),
                    admin: AgentAdmin::Active as i32,
                    ..Default::default()
                },
                Attributes::default(),
                now,
            )
        });
        entry.record.capabilities = Some(caps);
        entry.attrs = attrs;
        entry.last_seen_ms = now;
        // It said what it runs (`resume`): reconciled, it may take work again.
        entry.lost = None;
        entry.session = Some(Session {
            id: session,
            instance: reg.instance_id.clone(),
            tx: tx.clone(),
            leaving: false,
            proof: *proof,
            heard: tx.heard(),
        });
        if changed {
            step.writes.put_agent(&entry.record);
        }
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
        let why = if replaced {
            format!("agent {name} lost: another msagent process took its name over")
        } else {
            format!("agent {name} lost: it restarted without it")
        };
        for task in self.leases.held_by(&name) {
            if !claimed.contains(&task) {
                self.lose(task, Loss::AgentGone, &why, step);
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
            self.lose(task, Loss::Retried, &format!("agent {name}: {why}"), step);
        }
        tracing::warn!(agent = %name, "session ended: {why}");
    }

    /// msched is stopping: ends every agent session's stream with
    /// Unavailable (the agent reconnects with its backoff, to the restarted
    /// scheduler). Nothing is lost: the attempts stay leased to their agents.
    pub(super) fn end_all_sessions(&mut self, step: &mut Step) -> usize {
        let now = self.now;
        let mut ended = 0;
        for a in self.agents.values_mut() {
            let Some(session) = a.session.take() else {
                continue;
            };
            a.last_seen_ms = now;
            self.sessions.remove(&session.id);
            let status = Status::unavailable("msched is shutting down; reconnect to its restart");
            step.after.push(Box::new(move |_| session.tx.end(status)));
            ended += 1;
        }
        ended
    }

    pub(super) fn session_agent(&mut self, session: u64) -> Option<(String, AgentTx)> {
        let name = self.sessions.get(&session)?.clone();
        let a = self.agents.get_mut(&name)?;
        a.last_seen_ms = self.now;
        let tx = a.session.as_ref()?.tx.clone();
        Some((name, tx))
    }

    /// A heartbeat lists what the agent runs: attempts it no longer holds are
    /// refused with `abandon` (the agent stops them). A lost agent has now
    /// reconciled its attempts and takes work again.
    pub(super) fn heartbeat(&mut self, session: u64, hb: pb::Heartbeat, step: &mut Step) {
        let Some((name, tx)) = self.session_agent(session) else {
            return;
        };
        if let Some(lost) = self.agents.get_mut(&name).and_then(|a| a.lost.take()) {
            tx.want_heartbeats(false);
            let silent_ms = self.now - lost.silent_since_ms;
            tracing::info!(agent = %name, silent_ms, "a lost agent is back");
            step.dispatch = true;
        }
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
        // Every turn asks; only a new overflow (anywhere) is worth a pass
        // over the agents.
        let overflows = SLOW_SESSIONS.load(AtomicOrdering::Acquire);
        if overflows == self.slow_sessions_seen {
            return;
        }
        self.slow_sessions_seen = overflows;
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
pub(super) fn agent_profile(agents: &Registry, name: &str) -> String {
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

    fn set_drain(
        h: &mut Harness,
        name: &str,
        admin: AgentAdmin,
        drain_deadline_in_ms: u64,
    ) -> Result<msfleet_proto::Agent, tonic::Status> {
        let name = name.to_string();
        h.call(|reply| Command::SetAgentAdmin {
            name,
            admin,
            drain_deadline_in_ms,
            by: "ana".into(),
            reason: String::new(),
            reply,
        })
    }

    fn forget(h: &mut Harness, name: &str) -> Result<msfleet_proto::Agent, tonic::Status> {
        let name = name.to_string();
        h.call(|reply| Command::ForgetAgent { name, reply })
    }

    fn agents(h: &mut Harness) -> Vec<msfleet_proto::Agent> {
        h.call(|reply| Command::ListAgents { reply }).unwrap()
    }

    #[test]
    fn another_process_under_the_name_takes_it_over_and_the_old_one_is_fenced() {
        use msfleet_proto::{scheduler_message::Msg, Outcome};
        let mut h = Harness::new();
        let mut old = h.register("h1", "cpu", 1);
        let job = h.submit(spec()).unwrap();
        let r = h.assignments(&mut old)[0].attempt.clone().unwrap();
        h.update(&mut old, &r, 1, started());
        h.update(&mut old, &r, 2, test_result("t.py::a", "passed"));

        // A restarted msagent (new instance id, same credential) while the
        // old connection still looks alive: it takes the name over.
        let mut new = h
            .register_as("h1", "h1-2", caps("cpu", 1), Vec::new())
            .expect("a new process takes the name over");
        let second = h.assignments(&mut new);
        assert_eq!(second.len(), 1, "the lost attempt is retried at once");
        assert_eq!(second[0].attempt.as_ref().unwrap().attempt, 2);
        let end = old.next_status().expect("the old stream ends");
        assert_eq!(end.code(), tonic::Code::AlreadyExists, "{end:?}");
        assert!(end.message().contains("took the name over"), "{end:?}");
        let view = h.job(&job.id);
        assert_eq!((view.agent_lost, view.lost_retried), (1, 0));
        assert_eq!(view.tests.unwrap().total, 0, "the new attempt counts anew");
        let lost = h
            .events(&job.id)
            .into_iter()
            .rev()
            .find_map(|e| match e.kind {
                Some(msfleet_proto::job_event::Kind::State(s)) if s.state() == Queued => {
                    Some(s.reason)
                }
                _ => None,
            })
            .unwrap();
        assert!(
            lost.contains("agent h1 lost: another msagent process took its name over"),
            "{lost}"
        );

        // The old process's late updates change nothing ...
        h.update(&mut old, &r, 3, finished(Outcome::Failed));
        assert_eq!(h.state(&job.id), Assigned);
        // ... and it may not come back under the name.
        let e = h
            .register_as("h1", "h1-1", caps("cpu", 1), vec![r.clone()])
            .err()
            .expect("a fenced process is refused");
        assert_eq!(e.code(), tonic::Code::AlreadyExists);
        assert!(e.message().contains("took the name over"), "{e:?}");
        let listed = agents(&mut h);
        assert_eq!(listed.len(), 1);
        assert!(
            listed[0].connected,
            "the new process's session is untouched"
        );
        assert_eq!(listed[0].state, "busy");

        // The new process reconnecting as itself replaces its own session.
        let mut again = h
            .register_as(
                "h1",
                "h1-2",
                caps("cpu", 2),
                second.iter().map(|a| a.attempt.clone().unwrap()).collect(),
            )
            .unwrap();
        assert!(h
            .messages(&mut again)
            .iter()
            .any(|m| matches!(m, Msg::Registered(x) if x.resumed.len() == 1)));
        assert_eq!(agents(&mut h)[0].capabilities.as_ref().unwrap().slots, 2);
        let bad = h.register_as("bad name!", "x", caps("cpu", 1), Vec::new());
        assert_eq!(bad.err().unwrap().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn a_drain_deadline_stops_what_still_runs_and_requeues_it_without_using_retries() {
        use msfleet_proto::{scheduler_message::Msg, Outcome};
        let mut h = Harness::with(|c| c.lease_timeout = std::time::Duration::from_secs(600));
        let mut a = h.register("a1", "cpu", 1);
        let mut s = spec();
        s.retries = Some(0);
        s.agent_lost_retries = Some(0);
        let job = h.submit(s).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.update(&mut a, &r, 1, started());

        let e = set_drain(&mut h, "a1", AgentAdmin::Quarantined, 1_000).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("only with a drain"), "{e:?}");
        let v = set_drain(&mut h, "a1", AgentAdmin::Drained, 60_000).unwrap();
        assert_eq!(v.drain_deadline_ms, T0 + 60_000);
        assert_eq!(v.state, "drained");
        assert!(
            v.state_reason
                .contains("drain deadline 2025-06-15T15:07:40Z"),
            "{}",
            v.state_reason
        );

        // The deadline is durable: the scheduler restarts, the agent resumes.
        h.reload();
        let mut a = h
            .register_as("a1", "a1-1", caps("cpu", 1), vec![r.clone()])
            .unwrap();
        h.messages(&mut a);
        assert_eq!(agents(&mut h)[0].drain_deadline_ms, T0 + 60_000);
        h.advance(59_999);
        h.tick();
        assert_eq!(h.state(&job.id), Running, "before the deadline it runs on");
        h.advance(1);
        h.tick();
        let msgs = h.messages(&mut a);
        let cancel = msgs
            .iter()
            .find_map(|m| match m {
                Msg::Cancel(c) => Some(c.clone()),
                _ => None,
            })
            .expect("the agent is told to stop the attempt");
        assert_eq!(cancel.attempt.as_ref(), Some(&r));
        assert!(
            cancel.reason.contains("drain deadline"),
            "{}",
            cancel.reason
        );
        let view = h.job(&job.id);
        assert_eq!(view.state(), Queued, "requeued although retries are 0");
        assert_eq!((view.agent_lost, view.lost_retried), (0, 0));
        assert!(
            view.reason.contains("requeued (its retries are not used)"),
            "{}",
            view.reason
        );
        assert!(
            h.assignments(&mut a).is_empty(),
            "a drained agent gets no work"
        );
        // Another agent runs it; the drained agent's late finish is refused.
        let mut b = h.register("b1", "cpu", 1);
        let second = h.assignments(&mut b)[0].attempt.clone().unwrap();
        assert_eq!(second.attempt, 2);
        let msgs = h.update(&mut a, &r, 2, finished(Outcome::Cancelled));
        assert!(
            reject(&msgs).is_some_and(|(_, abandon)| abandon),
            "{msgs:?}"
        );
        h.finish(&mut b, &second, Outcome::Passed);
        assert_eq!(h.state(&job.id), Passed);
        // Undrained, the deadline is gone.
        let v = set_drain(&mut h, "a1", AgentAdmin::Active, 0).unwrap();
        assert_eq!(v.drain_deadline_ms, 0);
    }

    #[test]
    fn forget_removes_an_offline_agent_for_good_and_refuses_a_connected_or_busy_one() {
        let mut h = Harness::with(|c| c.lease_timeout = std::time::Duration::from_secs(3));
        let mut a = h.register("a1", "cpu", 1);
        let e = forget(&mut h, "a1").unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("'a1' is connected"), "{e:?}");
        let job = h.submit(spec()).unwrap();
        assert_eq!(h.assignments(&mut a).len(), 1);
        h.disconnect(&a);
        let e = forget(&mut h, "a1").unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("still holds 1 attempt"), "{e:?}");
        h.advance(3_001);
        h.tick();
        assert_eq!(h.state(&job.id), Queued);

        // An each-agent fan-out lists the offline agent as not run ...
        let _c = h.register("c1", "cpu", 2);
        let mut each = spec();
        each.fanout = "each-agent".into();
        let before = h.submit(each.clone()).unwrap();
        assert_eq!(h.job(&before.id).not_run.len(), 1, "a1 is a column");
        let gone = forget(&mut h, "a1").unwrap();
        assert_eq!(gone.name, "a1");
        // ... and no longer once it is forgotten, also after a restart.
        h.reload();
        let listed = agents(&mut h);
        assert_eq!(
            listed.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            vec!["c1"]
        );
        let mut c = h.register("c1", "cpu", 2);
        h.messages(&mut c);
        let after = h.submit(each).unwrap();
        let view = h.job(&after.id);
        assert!(view.not_run.is_empty(), "{:?}", view.not_run);
        assert_eq!(view.children.len(), 1);
        let e = forget(&mut h, "a1").unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
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
