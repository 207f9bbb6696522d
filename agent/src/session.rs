//! The agent's session with the scheduler: register, heartbeat, take
//! assignments, stream task updates, and survive scheduler restarts.
//!
//! Every update of an attempt gets the next sequence number of that attempt
//! and stays in the attempt's outbox until the scheduler acknowledges it
//! (acks are cumulative and sent only once the update is durable). After a
//! reconnect the agent re-registers, names the attempts it still runs, and
//! resends their outboxes in order; the scheduler applies each (attempt, seq)
//! once. Attempts the scheduler no longer recognises are stopped and dropped.

use crate::attempt::{AttemptKey, AttemptSpec, LogBudget, StopReason, Updates, LOG_BUDGET};
use crate::config::AgentConfig;
use crate::runner;
use msfleet_proto::agent_link_client::AgentLinkClient;
use msfleet_proto::client::ConnectError;
use msfleet_proto::{
    agent_message, scheduler_message, task_update, AgentMessage, AttemptRef, Capabilities,
    TaskUpdate,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Why the agent stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the scheduler refused this agent: {0}")]
    Refused(String),
    #[error("bad scheduler address '{addr}': {message}")]
    BadAddress { addr: String, message: String },
}

/// A failure of one connection (retried) or of the agent (returned).
enum Disconnect {
    Retry(String),
    Fatal(SessionError),
    ShutDown,
}

struct Attempt {
    r: AttemptRef,
    next_seq: u64,
    unacked: VecDeque<TaskUpdate>,
    stop: watch::Sender<Option<StopReason>>,
    /// Sequence number of the `Finished` update, once the runner produced it.
    finished_seq: Option<u64>,
    /// Room for the attempt's unacknowledged log chunks.
    logs: Arc<LogBudget>,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.logs.close();
    }
}

impl Attempt {
    fn new(r: AttemptRef, stop: watch::Sender<Option<StopReason>>) -> Attempt {
        Attempt {
            r,
            next_seq: 1,
            unacked: VecDeque::new(),
            stop,
            finished_seq: None,
            logs: LogBudget::new(LOG_BUDGET),
        }
    }

    /// The oldest unacknowledged update leaves the outbox (acknowledged or refused).
    fn pop_front(&mut self) {
        if let Some(u) = self.unacked.pop_front() {
            if matches!(u.kind, Some(task_update::Kind::Log(_))) {
                self.logs.give_back();
            }
        }
    }

    /// The scheduler refused update `seq` for its content and left the number
    /// free. If it is the oldest unacknowledged update, drop it and renumber
    /// the later ones (none of which can have been applied: the scheduler
    /// applies updates gap-free); they are returned to be sent again. Later
    /// out-of-order refusals of the old numbers no longer match and are ignored.
    fn drop_refused(&mut self, seq: u64) -> Vec<TaskUpdate> {
        if self.unacked.front().map(|u| u.seq) != Some(seq) {
            return Vec::new();
        }
        self.pop_front();
        let mut next = seq;
        for u in self.unacked.iter_mut() {
            if matches!(u.kind, Some(task_update::Kind::Finished(_))) {
                self.finished_seq = Some(next);
            }
            u.seq = next;
            next += 1;
        }
        self.next_seq = next;
        self.unacked.iter().cloned().collect()
    }
}

/// The agent process's state across connections.
pub struct Session {
    cfg: Arc<AgentConfig>,
    caps: Capabilities,
    instance: String,
    attempts: BTreeMap<AttemptKey, Attempt>,
    /// Unbounded, but bounded in what it can hold: log chunks wait for room
    /// in their attempt's [`LogBudget`] (given back on ack), and the other
    /// updates are one per test phase or case plus a start and a finish (see
    /// [`Updates`]). The session's outgoing stream is bounded (4096) and
    /// waits on h2 flow control.
    updates_tx: mpsc::UnboundedSender<(AttemptKey, task_update::Kind)>,
    updates_rx: mpsc::UnboundedReceiver<(AttemptKey, task_update::Kind)>,
    shutting_down: bool,
    /// Fresh capabilities from the periodic probe or a health check (the
    /// newest only): sent as a `HealthReport`, and registered with after a
    /// reconnect.
    probes: watch::Sender<Option<Capabilities>>,
    fresh: watch::Receiver<Option<Capabilities>>,
}

impl Session {
    pub fn new(cfg: Arc<AgentConfig>, caps: Capabilities) -> Session {
        let (updates_tx, updates_rx) = mpsc::unbounded_channel();
        let instance = format!("{}-{}-{}", cfg.name, std::process::id(), crate::now_ms());
        let (probes, fresh) = watch::channel(None);
        Session {
            probes,
            fresh,
            cfg,
            caps,
            instance,
            attempts: BTreeMap::new(),
            updates_tx,
            updates_rx,
            shutting_down: false,
        }
    }

    /// Runs until `shutdown` turns true (then stops running tests and reports
    /// them) or the scheduler refuses the agent.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), SessionError> {
        tokio::spawn(crate::health::probe_every(
            self.cfg.clone(),
            self.probes.clone(),
        ));
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.connect_once(&mut shutdown).await {
                Disconnect::Fatal(e) => {
                    self.stop_all(StopReason::Shutdown);
                    return Err(e);
                }
                Disconnect::ShutDown => return Ok(()),
                Disconnect::Retry(why) => {
                    tracing::warn!(%why, retry_in = ?backoff, "scheduler connection lost");
                }
            }
            if self.shutting_down && self.attempts.is_empty() {
                return Ok(());
            }
            // Keep buffering what running tests produce while disconnected.
            let wait = tokio::time::sleep(backoff);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    Some((key, kind)) = self.updates_rx.recv() => { self.record(key, kind); }
                    _ = shutdown.changed(), if !self.shutting_down => self.begin_shutdown(),
                }
            }
            if self.shutting_down && self.attempts.values().all(|a| a.finished_seq.is_some()) {
                // Nobody to report to; the tests are stopped.
                return Ok(());
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    fn begin_shutdown(&mut self) {
        tracing::info!(
            running = self.attempts.len(),
            "shutting down: stopping running tests"
        );
        self.shutting_down = true;
        self.stop_all(StopReason::Shutdown);
    }

    fn stop_all(&mut self, why: StopReason) {
        for a in self.attempts.values() {
            let _ = a.stop.send(Some(why.clone()));
        }
    }

    async fn connect_once(&mut self, shutdown: &mut watch::Receiver<bool>) -> Disconnect {
        let target = &self.cfg.target;
        let endpoint = match target.endpoint() {
            Ok(e) => e
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_while_idle(true),
            Err(e) => {
                return Disconnect::Fatal(SessionError::BadAddress {
                    addr: self.cfg.scheduler.clone(),
                    message: e.to_string(),
                })
            }
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                return match target.explain(&msfleet_proto::client::chain(&e)) {
                    ConnectError::Config(m) => Disconnect::Fatal(SessionError::Refused(m)),
                    ConnectError::Unreachable(m) => Disconnect::Retry(m),
                }
            }
        };
        let mut client = AgentLinkClient::with_interceptor(channel, self.cfg.bearer.clone())
            .max_decoding_message_size(msfleet_proto::MAX_MESSAGE)
            .max_encoding_message_size(msfleet_proto::MAX_MESSAGE);
        let (out, out_rx) = mpsc::channel::<AgentMessage>(4096);
        if let Some(caps) = self.fresh.borrow_and_update().clone() {
            self.caps = caps;
        }
        let register = msfleet_proto::Register {
            name: self.cfg.name.clone(),
            capabilities: Some(self.caps.clone()),
            instance_id: self.instance.clone(),
            resume: self.attempts.values().map(|a| a.r.clone()).collect(),
        };
        let _ = out
            .send(AgentMessage {
                msg: Some(agent_message::Msg::Register(register)),
            })
            .await;
        let mut inbound = match client.session(ReceiverStream::new(out_rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) if fatal(&s) => {
                return Disconnect::Fatal(SessionError::Refused(s.message().to_string()))
            }
            Err(s) => return self.failed("opening the session", &s).await,
        };
        let registered = match inbound.message().await {
            Ok(Some(msfleet_proto::SchedulerMessage {
                msg: Some(scheduler_message::Msg::Registered(r)),
            })) => r,
            Ok(_) => {
                return Disconnect::Retry("the scheduler did not confirm the registration".into())
            }
            Err(s) if fatal(&s) => {
                return Disconnect::Fatal(SessionError::Refused(s.message().to_string()))
            }
            Err(s) => return self.failed("registering", &s).await,
        };
        tracing::info!(
            scheduler = %self.cfg.scheduler,
            name = %self.cfg.name,
            resumed = registered.resumed.len(),
            "registered with the scheduler"
        );
        // Attempts the scheduler did not take back are over for us.
        let resumed: Vec<AttemptKey> = registered
            .resumed
            .iter()
            .map(|r| (r.task_id.clone(), r.attempt))
            .collect();
        let gone: Vec<AttemptKey> = self
            .attempts
            .keys()
            .filter(|k| !resumed.contains(k))
            .cloned()
            .collect();
        for k in gone {
            self.abandon(&k, "the scheduler no longer holds it");
        }
        for a in self.attempts.values() {
            for u in &a.unacked {
                if out.send(update_msg(u.clone())).await.is_err() {
                    return Disconnect::Retry("the session closed while resending".into());
                }
            }
        }
        let hb_every = Duration::from_millis(registered.heartbeat_interval_ms.max(100));
        let mut heartbeat = tokio::time::interval(hb_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.shutting_down && self.attempts.is_empty() {
                return Disconnect::ShutDown;
            }
            tokio::select! {
                // Read what the scheduler sent first: it ends a session that
                // falls too far behind, and acks make room for more output.
                biased;
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => {
                        if let Some(m) = m.msg {
                            for u in self.on_message(m) {
                                if out.send(update_msg(u)).await.is_err() {
                                    return Disconnect::Retry("the session closed".into());
                                }
                            }
                        }
                    }
                    Ok(None) => return Disconnect::Retry("the scheduler closed the session".into()),
                    Err(s) if fatal(&s) => {
                        self.stop_all(StopReason::Abandoned);
                        self.attempts.clear();
                        return Disconnect::Fatal(SessionError::Refused(s.message().to_string()));
                    }
                    Err(s) => return Disconnect::Retry(format!("session error: {s}")),
                },
                Some((key, kind)) = self.updates_rx.recv() => {
                    if let Some(u) = self.record(key, kind) {
                        if out.send(update_msg(u)).await.is_err() {
                            return Disconnect::Retry("the session closed".into());
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    let running = self
                        .attempts
                        .values()
                        .filter(|a| a.finished_seq.is_none())
                        .map(|a| a.r.clone())
                        .collect();
                    let hb = AgentMessage { msg: Some(agent_message::Msg::Heartbeat(msfleet_proto::Heartbeat { running })) };
                    if out.send(hb).await.is_err() {
                        return Disconnect::Retry("the session closed".into());
                    }
                }
                Ok(()) = self.fresh.changed() => {
                    let Some(caps) = self.fresh.borrow_and_update().clone() else { continue };
                    self.caps = caps.clone();
                    let report = AgentMessage {
                        msg: Some(agent_message::Msg::HealthReport(msfleet_proto::HealthReport {
                            capabilities: Some(caps),
                        })),
                    };
                    if out.send(report).await.is_err() {
                        return Disconnect::Retry("the session closed".into());
                    }
                }
                _ = shutdown.changed(), if !self.shutting_down => self.begin_shutdown(),
            }
        }
    }

    /// Numbers an update from a runner and keeps it until acknowledged.
    fn record(&mut self, key: AttemptKey, kind: task_update::Kind) -> Option<TaskUpdate> {
        let a = self.attempts.get_mut(&key)?; // abandoned: drop
        let seq = a.next_seq;
        a.next_seq += 1;
        if matches!(kind, task_update::Kind::Finished(_)) {
            a.finished_seq = Some(seq);
        }
        let u = TaskUpdate {
            attempt: Some(a.r.clone()),
            seq,
            kind: Some(kind),
        };
        a.unacked.push_back(u.clone());
        Some(u)
    }

    /// Handles one scheduler message; returns updates to (re)send.
    fn on_message(&mut self, m: scheduler_message::Msg) -> Vec<TaskUpdate> {
        match m {
            scheduler_message::Msg::Assign(asg) => self.start(asg),
            scheduler_message::Msg::Ack(ack) => {
                let Some(r) = ack.attempt else {
                    return Vec::new();
                };
                let key = (r.task_id, r.attempt);
                let Some(a) = self.attempts.get_mut(&key) else {
                    return Vec::new();
                };
                while a.unacked.front().is_some_and(|u| u.seq <= ack.seq) {
                    a.pop_front();
                }
                if a.finished_seq.is_some_and(|f| f <= ack.seq) {
                    self.attempts.remove(&key);
                }
            }
            scheduler_message::Msg::Cancel(c) => {
                let Some(r) = c.attempt else {
                    return Vec::new();
                };
                if let Some(a) = self.attempts.get(&(r.task_id.clone(), r.attempt)) {
                    tracing::info!(task = %r.task_id, reason = %c.reason, "cancelling");
                    let _ = a.stop.send(Some(StopReason::Cancelled(c.reason)));
                }
            }
            scheduler_message::Msg::Reject(rej) => {
                let Some(r) = rej.attempt else {
                    return Vec::new();
                };
                let key = (r.task_id.clone(), r.attempt);
                if rej.abandon {
                    self.abandon(&key, &rej.message);
                    return Vec::new();
                }
                tracing::warn!(task = %r.task_id, seq = rej.seq, message = %rej.message, "the scheduler refused an update");
                if let Some(a) = self.attempts.get_mut(&key) {
                    return a.drop_refused(rej.seq);
                }
            }
            scheduler_message::Msg::Registered(_) => {}
        }
        Vec::new()
    }

    fn abandon(&mut self, key: &AttemptKey, why: &str) {
        if let Some(a) = self.attempts.remove(key) {
            tracing::warn!(task = %key.0, attempt = key.1, why, "abandoning attempt");
            let _ = a.stop.send(Some(StopReason::Abandoned));
        }
    }

    fn start(&mut self, asg: msfleet_proto::Assignment) {
        let Some(r) = asg.attempt else { return };
        let key = (r.task_id.clone(), r.attempt);
        if self.attempts.contains_key(&key) {
            return;
        }
        if self.shutting_down {
            // Give it straight back so that it runs elsewhere.
            let (stop, _) = watch::channel(None);
            self.attempts.insert(key.clone(), Attempt::new(r, stop));
            let _ = self.updates_tx.send((
                key,
                task_update::Kind::Finished(msfleet_proto::Finished {
                    outcome: msfleet_proto::Outcome::Requeue as i32,
                    reason: "the agent is shutting down".into(),
                    exit_code: -1,
                }),
            ));
            return;
        }
        tracing::info!(job = %asg.job_id, task = %r.task_id, attempt = r.attempt, epoch = r.epoch, "assigned");
        let (stop, stop_rx) = watch::channel(None);
        let spec = AttemptSpec {
            job_id: asg.job_id,
            task_id: r.task_id.clone(),
            attempt: r.attempt,
            epoch: r.epoch,
            spec: asg.spec.unwrap_or_default(),
        };
        let attempt = Attempt::new(r, stop);
        let updates =
            Updates::with_budget(key.clone(), self.updates_tx.clone(), attempt.logs.clone());
        self.attempts.insert(key, attempt);
        if spec.spec.kind == crate::health::CHECK_KIND {
            // A health check runs no source: it probes this host.
            let probes = self.probes.clone();
            tokio::spawn(crate::health::run_check(
                self.cfg.clone(),
                spec,
                updates,
                probes,
                stop_rx,
            ));
            return;
        }
        tokio::spawn(runner::run(self.cfg.clone(), spec, updates, stop_rx));
    }
}

/// Refusals no retry can fix: a wrong or revoked credential, a name taken.
fn fatal(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        Code::AlreadyExists
            | Code::InvalidArgument
            | Code::Unauthenticated
            | Code::PermissionDenied
    )
}

impl Session {
    /// A failed call: retried, unless it shows a mistake only the user can
    /// fix (plain text against a TLS scheduler, ...), which ends the agent.
    async fn failed(&self, what: &str, s: &tonic::Status) -> Disconnect {
        let detail = format!("{}: {}", s.code(), s.message());
        let target = &self.cfg.target;
        match target.explain(&detail) {
            ConnectError::Config(m) => Disconnect::Fatal(SessionError::Refused(m)),
            ConnectError::Unreachable(_) if target.serves_tls_instead().await => Disconnect::Fatal(
                SessionError::Refused(target.plain_text_to_tls().to_string()),
            ),
            ConnectError::Unreachable(_) => Disconnect::Retry(format!("{what}: {detail}")),
        }
    }
}

fn update_msg(u: TaskUpdate) -> AgentMessage {
    AgentMessage {
        msg: Some(agent_message::Msg::Update(u)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msfleet_proto::LogChunk;

    fn attempt_with(n: u64) -> Attempt {
        let (stop, _) = watch::channel(None);
        let r = AttemptRef {
            task_id: "1".into(),
            attempt: 1,
            epoch: 1,
        };
        let mut a = Attempt {
            r: r.clone(),
            next_seq: 1,
            unacked: VecDeque::new(),
            stop,
            finished_seq: None,
            logs: LogBudget::new(LOG_BUDGET),
        };
        for i in 1..=n {
            let kind = if i == n {
                task_update::Kind::Finished(msfleet_proto::Finished::default())
            } else {
                task_update::Kind::Log(LogChunk {
                    stream: "stdout".into(),
                    data: vec![b'x'; i as usize],
                })
            };
            a.unacked.push_back(TaskUpdate {
                attempt: Some(r.clone()),
                seq: i,
                kind: Some(kind),
            });
            a.next_seq = i + 1;
        }
        a.finished_seq = Some(n);
        a
    }

    /// A test that prints faster than the scheduler acknowledges waits once
    /// its attempt holds LOG_BUDGET unacknowledged chunks, and goes on as acks
    /// come; a pump still waiting when the attempt is dropped stops.
    #[tokio::test]
    async fn output_waits_for_acks_once_the_log_budget_is_spent() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (stop, _) = watch::channel(None);
        let r = AttemptRef {
            task_id: "1".into(),
            attempt: 1,
            epoch: 1,
        };
        let mut a = Attempt::new(r.clone(), stop);
        let up = Updates::with_budget(("1".into(), 1), tx, a.logs.clone());
        let chunk = || LogChunk {
            stream: "stdout".into(),
            data: b"x".to_vec(),
        };
        for _ in 0..LOG_BUDGET {
            up.send_log(chunk()).await;
        }
        for seq in 1..=LOG_BUDGET as u64 {
            let (_, kind) = rx.recv().await.unwrap();
            a.unacked.push_back(TaskUpdate {
                attempt: Some(r.clone()),
                seq,
                kind: Some(kind),
            });
        }
        let more = tokio::spawn({
            let up = up.clone();
            async move { up.send_log(chunk()).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!more.is_finished(), "the budget is spent");
        a.pop_front(); // acknowledged
        tokio::time::timeout(Duration::from_secs(5), more)
            .await
            .expect("room after an ack")
            .unwrap();
        let stuck = tokio::spawn({
            let up = up.clone();
            async move { up.send_log(chunk()).await }
        });
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), stuck)
            .await
            .expect("a dropped attempt releases its pump")
            .unwrap();
    }

    #[test]
    fn a_refused_oldest_update_is_dropped_and_the_rest_renumbered() {
        let mut a = attempt_with(4);
        let resend = a.drop_refused(1);
        assert_eq!(
            resend.iter().map(|u| u.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(a.next_seq, 4);
        assert_eq!(a.finished_seq, Some(3));
        // The refusals of the old numbers 2..4 (out of order) that follow change nothing.
        assert!(a.drop_refused(2).is_empty());
        assert!(a.drop_refused(3).is_empty());
        assert_eq!(a.unacked.len(), 3);
    }
}
