//! The agent's session with the scheduler: register, heartbeat, take
//! assignments, stream task updates, and survive scheduler restarts.
//!
//! Every update of an attempt gets the next sequence number of that attempt
//! and stays in the attempt's outbox until the scheduler acknowledges it
//! (acks are cumulative and sent only once the update is durable). After a
//! reconnect the agent re-registers, names the attempts it still runs, and
//! resends their outboxes in order; the scheduler applies each (attempt, seq)
//! once. Attempts the scheduler no longer recognises are stopped and dropped.
//!
//! Test results are sent in batches (`TaskUpdate.tests`, [`ResultBatch`]):
//! a result waits in its attempt's open batch until the batch is full (count
//! or bytes), its first result is `max_delay` old, or another update of the
//! attempt comes (which goes after it: order is kept). A batch is one update:
//! one sequence number, one write and one Ack at the scheduler.

use crate::attempt::{AttemptKey, AttemptSpec, LogBudget, StopReason, Updates, LOG_BUDGET};
use crate::config::{AgentConfig, ResultBatch};
use crate::runner;
use msfleet_proto::agent_link_client::AgentLinkClient;
use msfleet_proto::backoff::{reconnect_delay, Jitter};
use msfleet_proto::client::ConnectError;
use msfleet_proto::{
    agent_message, scheduler_message, task_update, AgentMessage, AttemptRef, Capabilities,
    LogChunk, TaskUpdate, TestResult, TestResults,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
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
    /// Why, and whether the connection had registered (the backoff starts over).
    Retry(String, bool),
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
    /// The scheduler's span of the attempt (W3C traceparent; empty without traces).
    traceparent: String,
    /// From the `Finished` update until the scheduler acknowledged it (durable): the
    /// attempt's "upload results" span, ended when the attempt is dropped.
    upload: Option<tracing::Span>,
    /// Test results not yet numbered: they leave together as one update.
    batch: OpenBatch,
}

/// An attempt's test results waiting to share one update, and its output
/// waiting to share one log chunk (pytest writes a few bytes per test).
#[derive(Default)]
struct OpenBatch {
    results: Vec<TestResult>,
    /// Encoded size of `results`.
    bytes: usize,
    /// Output of one stream, at most `MAX_LOG_CHUNK` bytes.
    log: Option<LogChunk>,
    /// When what is open must go: `max_delay` after the first of it.
    due: Option<tokio::time::Instant>,
}

impl OpenBatch {
    /// Adds `t`; returns a full batch to send first (`t` would not fit in
    /// it) and whether the batch holding `t` is now full too.
    fn add(&mut self, t: TestResult, limits: &ResultBatch) -> (Option<TestResults>, bool) {
        use prost::Message;
        let len = t.encoded_len() + 4;
        let before = if !self.results.is_empty() && self.bytes + len > limits.max_bytes {
            self.take()
        } else {
            None
        };
        if self.due.is_none() {
            self.due = Some(tokio::time::Instant::now() + limits.max_delay);
        }
        self.results.push(t);
        self.bytes += len;
        let full = self.results.len() >= limits.max_results || self.bytes >= limits.max_bytes;
        (before, full)
    }

    /// Adds a chunk of output: appended to the open chunk of the same
    /// stream while that stays within `MAX_LOG_CHUNK` (`true`: merged), else
    /// the open chunk is returned to send first and `chunk` opens the next.
    fn add_log(&mut self, chunk: LogChunk, limits: &ResultBatch) -> (Option<LogChunk>, bool) {
        if self.due.is_none() {
            self.due = Some(tokio::time::Instant::now() + limits.max_delay);
        }
        match &mut self.log {
            Some(open)
                if open.stream == chunk.stream
                    && open.data.len() + chunk.data.len() <= msfleet_proto::MAX_LOG_CHUNK =>
            {
                open.data.extend_from_slice(&chunk.data);
                (None, true)
            }
            _ => (self.log.replace(chunk), false),
        }
    }

    fn take(&mut self) -> Option<TestResults> {
        self.bytes = 0;
        let results = std::mem::take(&mut self.results);
        self.settle();
        (!results.is_empty()).then_some(TestResults { results })
    }

    fn take_log(&mut self) -> Option<LogChunk> {
        let log = self.log.take();
        self.settle();
        log
    }

    /// Nothing open, nothing due.
    fn settle(&mut self) {
        if self.results.is_empty() && self.log.is_none() {
            self.due = None;
        }
    }
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
            traceparent: String::new(),
            upload: None,
            batch: OpenBatch::default(),
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
    /// The runner tasks, so that the agent does not exit while a test it
    /// stopped is still being killed.
    runners: JoinSet<()>,
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
            runners: JoinSet::new(),
        }
    }

    /// Runs until `shutdown` turns true (then stops running tests and reports
    /// them) or the scheduler refuses the agent.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), SessionError> {
        tokio::spawn(crate::health::probe_every(
            self.cfg.clone(),
            self.probes.clone(),
        ));
        let mut jitter = Jitter::new();
        let mut failures = 0u32;
        loop {
            let backoff = match self.connect_once(&mut shutdown).await {
                Disconnect::Fatal(e) => {
                    // Nothing it runs may be reported any more: stop it all
                    // and wait until the test processes are gone.
                    self.stop_all(StopReason::Abandoned);
                    self.attempts.clear();
                    self.wait_for_runners().await;
                    return Err(e);
                }
                Disconnect::ShutDown => return Ok(()),
                Disconnect::Retry(why, registered) => {
                    crate::metrics::reconnected();
                    if registered {
                        failures = 0;
                    }
                    let backoff = reconnect_delay(failures, jitter.draw());
                    failures = failures.saturating_add(1);
                    tracing::warn!(%why, retry_in = ?backoff, "scheduler connection lost");
                    backoff
                }
            };
            if self.shutting_down && self.attempts.is_empty() {
                return Ok(());
            }
            // Keep buffering what running tests produce while disconnected.
            let wait = tokio::time::sleep(backoff);
            tokio::pin!(wait);
            loop {
                self.publish_metrics();
                tokio::select! {
                    _ = &mut wait => break,
                    Some((key, kind)) = self.updates_rx.recv() => { self.take(key, kind); }
                    _ = shutdown.changed(), if !self.shutting_down => self.begin_shutdown(),
                }
            }
            if self.shutting_down && self.attempts.values().all(|a| a.finished_seq.is_some()) {
                // Nobody to report to; the tests are stopped.
                return Ok(());
            }
        }
    }

    /// Waits (at most the kill grace and a little more) until every runner
    /// has ended, i.e. killed its test process group.
    async fn wait_for_runners(&mut self) {
        let limit = self.cfg.kill_grace + Duration::from_secs(5);
        let all = async { while self.runners.join_next().await.is_some() {} };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!(
                running = self.runners.len(),
                "test processes still stopping as the agent exits"
            );
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
            Ok(e) => msfleet_proto::client::agent_link(e),
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
                    ConnectError::Unreachable(m) => Disconnect::Retry(m, false),
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
                return Disconnect::Retry(
                    "the scheduler did not confirm the registration".into(),
                    false,
                )
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
                    return Disconnect::Retry("the session closed while resending".into(), true);
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
            self.publish_metrics();
            let due = self.next_batch_due();
            tokio::select! {
                // Read what the scheduler sent first: it ends a session that
                // falls too far behind, and acks make room for more output.
                biased;
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => {
                        if let Some(m) = m.msg {
                            for u in self.on_message(m) {
                                if out.send(update_msg(u)).await.is_err() {
                                    return Disconnect::Retry("the session closed".into(), true);
                                }
                            }
                        }
                    }
                    Ok(None) => return Disconnect::Retry("the scheduler closed the session".into(), true),
                    Err(s) if fatal(&s) => {
                        return Disconnect::Fatal(SessionError::Refused(s.message().to_string()));
                    }
                    Err(s) => return Disconnect::Retry(format!("session error: {s}"), true),
                },
                Some((key, kind)) = self.updates_rx.recv() => {
                    for u in self.take(key, kind) {
                        if out.send(update_msg(u)).await.is_err() {
                            return Disconnect::Retry("the session closed".into(), true);
                        }
                    }
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    for u in self.send_due_batches() {
                        if out.send(update_msg(u)).await.is_err() {
                            return Disconnect::Retry("the session closed".into(), true);
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
                        return Disconnect::Retry("the session closed".into(), true);
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
                        return Disconnect::Retry("the session closed".into(), true);
                    }
                }
                _ = shutdown.changed(), if !self.shutting_down => self.begin_shutdown(),
            }
        }
    }

    /// An update from a runner: a test result joins its attempt's open
    /// batch, output its open log chunk (a merged chunk gives its
    /// [`LogBudget`] room back at once: the open chunk holds one, within the
    /// same bytes); anything else goes after both. Returns what to send now.
    fn take(&mut self, key: AttemptKey, kind: task_update::Kind) -> Vec<TaskUpdate> {
        let limits = self.cfg.result_batch;
        let Some(a) = self.attempts.get_mut(&key) else {
            return Vec::new(); // abandoned: drop
        };
        let mut ready = Vec::new();
        match kind {
            task_update::Kind::Test(t) => {
                let (before, full) = a.batch.add(t, &limits);
                ready.extend(before.map(task_update::Kind::Tests));
                if full {
                    ready.extend(a.batch.take().map(task_update::Kind::Tests));
                }
            }
            task_update::Kind::Log(chunk) => {
                let (before, merged) = a.batch.add_log(chunk, &limits);
                if merged {
                    a.logs.give_back();
                }
                ready.extend(before.map(task_update::Kind::Log));
            }
            kind => {
                ready.extend(a.batch.take_log().map(task_update::Kind::Log));
                ready.extend(a.batch.take().map(task_update::Kind::Tests));
                ready.push(kind);
            }
        }
        ready
            .into_iter()
            .filter_map(|kind| self.record(key.clone(), kind))
            .collect()
    }

    /// When the earliest open batch must go.
    fn next_batch_due(&self) -> Option<tokio::time::Instant> {
        self.attempts.values().filter_map(|a| a.batch.due).min()
    }

    /// Numbers and returns every open batch whose time has come.
    fn send_due_batches(&mut self) -> Vec<TaskUpdate> {
        let now = tokio::time::Instant::now();
        let mut due: Vec<(AttemptKey, task_update::Kind)> = Vec::new();
        for (k, a) in self.attempts.iter_mut() {
            if a.batch.due.is_some_and(|d| d <= now) {
                due.extend(
                    a.batch
                        .take_log()
                        .map(|l| (k.clone(), task_update::Kind::Log(l))),
                );
                due.extend(
                    a.batch
                        .take()
                        .map(|b| (k.clone(), task_update::Kind::Tests(b))),
                );
            }
        }
        due.into_iter()
            .filter_map(|(k, kind)| self.record(k, kind))
            .collect()
    }

    /// Numbers an update and keeps it until acknowledged.
    fn record(&mut self, key: AttemptKey, kind: task_update::Kind) -> Option<TaskUpdate> {
        let a = self.attempts.get_mut(&key)?; // abandoned: drop
        if a.finished_seq.is_some() {
            // Nothing follows a Finished (a supervisor's after a late panic).
            return None;
        }
        let seq = a.next_seq;
        a.next_seq += 1;
        if matches!(kind, task_update::Kind::Finished(_)) {
            a.finished_seq = Some(seq);
            let span = tracing::info_span!(
                "upload results",
                task = %a.r.task_id,
                attempt = a.r.attempt,
                unacknowledged = a.unacked.len() + 1
            );
            a.upload = Some(crate::attempt::child_of(&a.traceparent, span));
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
            scheduler_message::Msg::Assign(asg) => return self.start(asg),
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

    /// Starts an assigned attempt under a supervisor, or gives it straight
    /// back (shutting down, or every slot taken); returns what to send.
    fn start(&mut self, asg: msfleet_proto::Assignment) -> Vec<TaskUpdate> {
        let Some(r) = asg.attempt else {
            return Vec::new();
        };
        let key = (r.task_id.clone(), r.attempt);
        if let Some(old) = self.attempts.get(&key) {
            // The same attempt under a newer lease: the scheduler gives the
            // number of an attempt this agent refused again, and that lease
            // fences the old one, whose Finished no longer matters.
            if old.r.epoch >= r.epoch || old.finished_seq.is_none() {
                return Vec::new();
            }
            self.attempts.remove(&key);
        }
        if self.shutting_down {
            // Give it straight back so that it runs elsewhere.
            return self.give_back(r, "the agent is shutting down".into(), false);
        }
        let running = self.running();
        if running >= self.cfg.slots as usize {
            let why = format!(
                "agent {} has no free slot: it runs {running} attempt{} on its {} slot{} (--slots)",
                self.cfg.name,
                if running == 1 { "" } else { "s" },
                self.cfg.slots,
                if self.cfg.slots == 1 { "" } else { "s" },
            );
            tracing::warn!(task = %r.task_id, attempt = r.attempt, %why, "refusing an assignment");
            return self.give_back(r, why, true);
        }
        // The devices must be ours and healthy by the latest probe.
        let leftover = asg
            .devices
            .iter()
            .find_map(|d| crate::leftover::withheld(&d.id).map(|why| format!("{} is {why}", d.id)));
        let granted = match leftover {
            Some(why) => Err(why),
            None => crate::devices::grant(&self.caps, &asg.devices),
        };
        let device_env = match granted {
            Ok(env) => env,
            Err(e) => {
                let why = format!("agent {} refuses its devices: {e}", self.cfg.name);
                tracing::warn!(task = %r.task_id, attempt = r.attempt, %why, "refusing an assignment");
                return self.give_back(r, why, true);
            }
        };
        let devices = msfleet_proto::devices::describe(&asg.devices);
        tracing::info!(job = %asg.job_id, task = %r.task_id, attempt = r.attempt, epoch = r.epoch, %devices, "assigned");
        let (stop, stop_rx) = watch::channel(None);
        let spec = AttemptSpec {
            job_id: asg.job_id,
            task_id: r.task_id.clone(),
            attempt: r.attempt,
            epoch: r.epoch,
            spec: asg.spec.unwrap_or_default(),
            devices: asg.devices,
            device_env,
            traceparent: asg.traceparent,
        };
        let mut attempt = Attempt::new(r, stop);
        attempt.traceparent = spec.traceparent.clone();
        let updates =
            Updates::with_budget(key.clone(), self.updates_tx.clone(), attempt.logs.clone())
                .with_secrets(&spec.spec);
        self.attempts.insert(key, attempt);
        if spec.spec.kind == crate::health::CHECK_KIND {
            // A health check runs no source: it probes this host.
            let probes = self.probes.clone();
            while self.runners.try_join_next().is_some() {}
            self.runners.spawn(crate::health::run_check(
                self.cfg.clone(),
                spec,
                updates,
                probes,
                stop_rx,
            ));
            return Vec::new();
        }
        let slot = runner::slot_name(&spec);
        // Every line the run logs names its job and attempt. A log-only span (target
        // `msagent::log`, never exported: the attempt's trace span is the scheduler's).
        let span = tracing::info_span!(
            target: "msagent::log",
            "attempt",
            job = %spec.task_id,
            attempt = spec.attempt
        );
        let runner = tokio::spawn(tracing::Instrument::instrument(
            runner::run(self.cfg.clone(), spec, updates.clone(), stop_rx),
            span,
        ));
        // The supervisor awaits the runner: waiting on `runners` (at exit)
        // waits for every test to be stopped, and a panic still ends the
        // attempt `error`.
        while self.runners.try_join_next().is_some() {}
        self.runners
            .spawn(supervise(runner, updates, self.cfg.clone(), slot));
        Vec::new()
    }

    /// The session's gauges: attempts running, updates not yet acknowledged.
    fn publish_metrics(&self) {
        let outbox = self.attempts.values().map(|a| a.unacked.len()).sum();
        crate::metrics::publish_session(self.running(), outbox);
    }

    /// Attempts this agent runs: those without a `Finished` yet.
    fn running(&self) -> usize {
        self.attempts
            .values()
            .filter(|a| a.finished_seq.is_none())
            .count()
    }

    /// Ends an attempt that never started with `Finished{REQUEUE}` (`refused`:
    /// for lack of a slot), numbered at once so that it no longer counts as running.
    fn give_back(&mut self, r: AttemptRef, reason: String, refused: bool) -> Vec<TaskUpdate> {
        let key = (r.task_id.clone(), r.attempt);
        let (stop, _) = watch::channel(None);
        self.attempts.insert(key.clone(), Attempt::new(r, stop));
        let finished = task_update::Kind::Finished(msfleet_proto::Finished {
            outcome: msfleet_proto::Outcome::Requeue as i32,
            reason,
            exit_code: -1,
            refused,
            ..Default::default()
        });
        self.record(key, finished).into_iter().collect()
    }
}

/// Waits for an attempt's runner task; one that panicked (or was aborted)
/// sent no `Finished`: its run is killed and the attempt ends `error`, so it
/// is not heartbeated as running forever.
async fn supervise(
    runner: tokio::task::JoinHandle<()>,
    tx: Updates,
    cfg: Arc<AgentConfig>,
    slot: String,
) {
    let Err(e) = runner.await else {
        return;
    };
    let what = if e.is_panic() {
        let payload = e.into_panic();
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        format!("agent runner panicked: {text}")
    } else {
        "agent runner was stopped before it finished".into()
    };
    let killed = crate::process::kill_attempt_group(&cfg.work_dir, &slot);
    tracing::error!(%slot, killed_run = killed, "{what}");
    tx.send(task_update::Kind::Finished(msfleet_proto::Finished {
        outcome: msfleet_proto::Outcome::Error as i32,
        reason: tx.redact(&what),
        exit_code: -1,
        ..Default::default()
    }));
}

/// Refusals no retry can fix: a wrong or revoked credential, the name taken
/// over by another msagent process.
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
            ConnectError::Unreachable(_) => Disconnect::Retry(format!("{what}: {detail}"), false),
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
            traceparent: String::new(),
            upload: None,
            batch: OpenBatch::default(),
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

    fn config(slots: u32, work_dir: &std::path::Path) -> AgentConfig {
        AgentConfig {
            scheduler: String::new(),
            name: "h1".into(),
            work_dir: work_dir.to_path_buf(),
            labels: Default::default(),
            roots: Vec::new(),
            python: "python3".into(),
            uv: None,
            cache_budget: None,
            slots,
            kill_grace: Duration::from_secs(1),
            git_timeout: crate::config::DEFAULT_GIT_TIMEOUT,
            probe_interval: crate::config::DEFAULT_PROBE_INTERVAL,
            min_disk_free_mb: crate::config::DEFAULT_MIN_DISK_FREE_MB,
            result_batch: Default::default(),
            max_crash_restarts: 0,
            npu_smi: "npu-smi".into(),
            target: Default::default(),
            bearer: msfleet_proto::client::Bearer::new(None).unwrap(),
            policy: msfleet_proto::policy::defaults(),
        }
    }

    fn assign(task: &str) -> scheduler_message::Msg {
        scheduler_message::Msg::Assign(msfleet_proto::Assignment {
            attempt: Some(AttemptRef {
                task_id: task.into(),
                attempt: 1,
                epoch: 1,
            }),
            job_id: task.into(),
            // No source: the runner ends it `error` at once.
            spec: Some(msfleet_proto::JobSpec::default()),
            devices: Vec::new(),
            traceparent: String::new(),
        })
    }

    /// The session's updates for attempt `task` until its `Finished`, recorded.
    async fn run_to_finished(s: &mut Session, task: &str) -> msfleet_proto::Finished {
        loop {
            let (key, kind) = tokio::time::timeout(Duration::from_secs(10), s.updates_rx.recv())
                .await
                .expect("the runner reports")
                .expect("open");
            let done = match (&kind, key.0 == task) {
                (task_update::Kind::Finished(f), true) => Some(f.clone()),
                _ => None,
            };
            s.record(key, kind);
            if let Some(f) = done {
                return f;
            }
        }
    }

    /// With every slot taken, an assignment is refused at once with
    /// `Finished{REQUEUE, refused}` naming the slots; once an attempt has
    /// finished, the next one is taken.
    #[tokio::test]
    async fn an_assignment_beyond_the_slots_is_refused_and_said_so() {
        let work = tempfile::tempdir().unwrap();
        let mut s = Session::new(Arc::new(config(1, work.path())), Capabilities::default());
        assert!(s.on_message(assign("1")).is_empty(), "the first is taken");
        let out = s.on_message(assign("2"));
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].seq, 1);
        let Some(task_update::Kind::Finished(f)) = &out[0].kind else {
            panic!("{out:?}");
        };
        assert_eq!(f.outcome(), msfleet_proto::Outcome::Requeue);
        assert!(f.refused);
        assert_eq!(
            f.reason,
            "agent h1 has no free slot: it runs 1 attempt on its 1 slot (--slots)"
        );
        assert_eq!(s.running(), 1, "the refused one is not running");
        let first = run_to_finished(&mut s, "1").await;
        assert_eq!(first.outcome(), msfleet_proto::Outcome::Error, "{first:?}");
        assert!(s.on_message(assign("3")).is_empty(), "a slot is free again");
        assert_eq!(s.running(), 1);
        let _ = run_to_finished(&mut s, "3").await;
        // The refused attempt's number again, under a newer lease: taken.
        let scheduler_message::Msg::Assign(mut again) = assign("2") else {
            unreachable!()
        };
        again.attempt.as_mut().unwrap().epoch = 2;
        let stale = again.clone();
        assert!(s
            .on_message(scheduler_message::Msg::Assign(again))
            .is_empty());
        assert_eq!(s.running(), 1, "it runs");
        // A repeat of that assignment changes nothing.
        assert!(s
            .on_message(scheduler_message::Msg::Assign(stale))
            .is_empty());
        assert_eq!(s.running(), 1);
    }

    /// An assignment naming a device this agent does not have, or one its
    /// latest probe found unhealthy, is refused like one beyond the slots.
    #[tokio::test]
    async fn an_assignment_of_devices_it_lacks_or_that_are_unhealthy_is_refused() {
        let work = tempfile::tempdir().unwrap();
        let caps = Capabilities {
            npus: ["OK", "Alarm"]
                .iter()
                .enumerate()
                .map(|(i, h)| msfleet_proto::Npu {
                    id: i as u32,
                    health: (*h).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let mut s = Session::new(Arc::new(config(4, work.path())), caps);
        for (task, id, why) in [
            ("1", "npu 1 chip 0", "npu 1 chip 0 is unhealthy: Alarm"),
            ("2", "npu 7 chip 0", "npu 7 chip 0 is not on this agent"),
        ] {
            let scheduler_message::Msg::Assign(mut a) = assign(task) else {
                unreachable!()
            };
            a.devices = vec![msfleet_proto::DeviceRef {
                kind: "npu".into(),
                index: 1,
                id: id.into(),
            }];
            let out = s.on_message(scheduler_message::Msg::Assign(a));
            let Some(task_update::Kind::Finished(f)) = &out[0].kind else {
                panic!("{out:?}");
            };
            assert!(f.refused);
            assert_eq!(f.reason, format!("agent h1 refuses its devices: {why}"));
        }
        assert_eq!(s.running(), 0);
    }

    /// A runner that panics sent no `Finished`: the supervisor ends the
    /// attempt `error`, naming the panic.
    #[tokio::test]
    async fn a_panicking_runner_ends_its_attempt_in_error() {
        let work = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let updates = Updates::new(("7".into(), 1), tx);
        let runner = tokio::spawn(async {
            let v: Vec<u8> = Vec::new();
            if v.is_empty() {
                panic!("index out of bounds: boom");
            }
        });
        supervise(
            runner,
            updates,
            Arc::new(config(1, work.path())),
            "7-1".into(),
        )
        .await;
        let (key, kind) = rx.recv().await.expect("a Finished");
        assert_eq!(key, ("7".to_string(), 1));
        let task_update::Kind::Finished(f) = kind else {
            panic!("{kind:?}");
        };
        assert_eq!(f.outcome(), msfleet_proto::Outcome::Error);
        assert_eq!(f.reason, "agent runner panicked: index out of bounds: boom");
        // A runner that ends normally gets nothing more.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ok = tokio::spawn(async {});
        supervise(
            ok,
            Updates::new(("8".into(), 1), tx),
            Arc::new(config(1, work.path())),
            "8-1".into(),
        )
        .await;
        assert!(rx.recv().await.is_none());
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

    fn result(i: usize) -> task_update::Kind {
        task_update::Kind::Test(TestResult {
            nodeid: format!("tests/test_x.py::test_{i}"),
            when: "call".into(),
            outcome: "passed".into(),
            ..Default::default()
        })
    }

    fn batch_sizes(out: &[TaskUpdate]) -> Vec<(u64, usize)> {
        out.iter()
            .map(|u| match &u.kind {
                Some(task_update::Kind::Tests(b)) => (u.seq, b.results.len()),
                _ => (u.seq, 0),
            })
            .collect()
    }

    /// Test results leave in batches of at most `max_results`, numbered
    /// one sequence number per batch, in order; the open batch goes ahead of
    /// the attempt's next other update, and a batch that waited `max_delay`
    /// goes on its own.
    #[tokio::test]
    async fn test_results_go_in_batches_by_count_time_and_before_other_updates() {
        let work = tempfile::tempdir().unwrap();
        let mut cfg = config(1, work.path());
        cfg.result_batch.max_results = 3;
        cfg.result_batch.max_delay = Duration::from_millis(50);
        let mut s = Session::new(Arc::new(cfg), Capabilities::default());
        let key: AttemptKey = ("1".into(), 1);
        let (stop, _) = watch::channel(None);
        let r = AttemptRef {
            task_id: "1".into(),
            attempt: 1,
            epoch: 1,
        };
        s.attempts.insert(key.clone(), Attempt::new(r, stop));
        let mut out = Vec::new();
        for i in 0..7 {
            out.extend(s.take(key.clone(), result(i)));
        }
        assert_eq!(batch_sizes(&out), vec![(1, 3), (2, 3)], "two full batches");
        assert!(s.next_batch_due().is_some(), "one result waits");
        assert!(s.send_due_batches().is_empty(), "not yet due");
        tokio::time::sleep(s.cfg.result_batch.max_delay).await;
        let late = s.send_due_batches();
        assert_eq!(batch_sizes(&late), vec![(3, 1)], "due after max_delay");
        assert_eq!(s.next_batch_due(), None);
        out.extend(late);
        out.extend(s.take(key.clone(), result(7)));
        out.extend(s.take(
            key.clone(),
            task_update::Kind::Finished(msfleet_proto::Finished::default()),
        ));
        assert_eq!(
            batch_sizes(&out),
            vec![(1, 3), (2, 3), (3, 1), (4, 1), (5, 0)],
            "the open batch goes before the Finished"
        );
        let ids: Vec<String> = out
            .iter()
            .filter_map(|u| match &u.kind {
                Some(task_update::Kind::Tests(b)) => Some(b.results.iter()),
                _ => None,
            })
            .flatten()
            .map(|t| t.nodeid.clone())
            .collect();
        let want: Vec<String> = (0..8)
            .map(|i| format!("tests/test_x.py::test_{i}"))
            .collect();
        assert_eq!(ids, want, "every result once, in order");
        assert_eq!(s.attempts[&key].unacked.len(), 5, "all kept until acked");
    }

    /// A batch also goes once its bytes reach `max_bytes`; a result that
    /// would not fit starts the next batch.
    #[tokio::test]
    async fn a_batch_goes_when_its_bytes_are_full() {
        let limits = ResultBatch {
            max_results: 100,
            max_bytes: 1024,
            max_delay: Duration::from_millis(5),
        };
        let mut b = OpenBatch::default();
        let big = |c: char| TestResult {
            nodeid: "t.py::big".into(),
            longrepr: c.to_string().repeat(600),
            ..Default::default()
        };
        assert_eq!(b.add(big('a'), &limits).0, None);
        let (before, full) = b.add(big('b'), &limits);
        assert_eq!(before.map(|b| b.results.len()), Some(1), "a went alone");
        assert!(!full);
        assert_eq!(b.results.len(), 1);
        assert_eq!(b.results[0].longrepr.chars().next(), Some('b'));
    }

    /// pytest's few bytes of output per test are merged into one chunk per
    /// stream (within MAX_LOG_CHUNK), which does not cut the result batch;
    /// a merged chunk's budget room comes back at once; everything arrives once.
    #[tokio::test]
    async fn output_is_merged_into_chunks_beside_the_result_batch() {
        let work = tempfile::tempdir().unwrap();
        let mut s = Session::new(Arc::new(config(1, work.path())), Capabilities::default());
        let key: AttemptKey = ("1".into(), 1);
        let (stop, _) = watch::channel(None);
        let r = AttemptRef {
            task_id: "1".into(),
            attempt: 1,
            epoch: 1,
        };
        s.attempts.insert(key.clone(), Attempt::new(r, stop));
        let budget = s.attempts[&key].logs.clone();
        let dot = |stream: &str| {
            task_update::Kind::Log(LogChunk {
                stream: stream.into(),
                data: b".".to_vec(),
            })
        };
        let mut out = Vec::new();
        for i in 0..100 {
            budget.take_now();
            out.extend(s.take(key.clone(), dot("stdout")));
            out.extend(s.take(key.clone(), result(i)));
        }
        assert!(out.is_empty(), "nothing full yet: {:?}", batch_sizes(&out));
        assert_eq!(
            budget.room_left(),
            LOG_BUDGET - 1,
            "one open chunk holds room"
        );
        budget.take_now();
        out.extend(s.take(key.clone(), dot("stderr")));
        out.extend(s.take(
            key.clone(),
            task_update::Kind::Finished(msfleet_proto::Finished::default()),
        ));
        let kinds: Vec<(u64, String)> = out
            .iter()
            .map(|u| match &u.kind {
                Some(task_update::Kind::Log(l)) => (
                    u.seq,
                    format!("{} {}", l.stream, String::from_utf8_lossy(&l.data).len()),
                ),
                Some(task_update::Kind::Tests(b)) => (u.seq, format!("tests {}", b.results.len())),
                Some(task_update::Kind::Finished(_)) => (u.seq, "finished".into()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                (1, "stdout 100".to_string()),
                (2, "stderr 1".to_string()),
                (3, "tests 100".to_string()),
                (4, "finished".to_string()),
            ]
        );
        let a = s.attempts.get_mut(&key).unwrap();
        while !a.unacked.is_empty() {
            a.pop_front();
        }
        assert_eq!(budget.room_left(), LOG_BUDGET, "all room back once acked");
    }
}
