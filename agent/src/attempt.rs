//! What every kind of attempt shares: its identity ([`AttemptSpec`], [`AttemptKey`]), the sink
//! of its updates ([`Updates`]), why it is stopped from outside ([`StopReason`]), its deadline and
//! stop signal watched together ([`Guard`], [`Halt`]), and how a run that ended or halted becomes
//! a [`Finished`].
//!
//! A leaf: the pytest runner ([`crate::runner`]), the benchmark core ([`crate::bench`]) and the
//! process-group runner ([`crate::process`]) all use it, and it uses none of them.

use msfleet_proto::secrets::Redactor;
use msfleet_proto::{task_update, Finished, JobSpec, LogChunk, Outcome};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Why a running attempt is being stopped from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Cancelled(String),
    /// The scheduler no longer recognises the attempt: stop and report nothing.
    Abandoned,
    /// The agent is shutting down.
    Shutdown,
}

/// One attempt to run.
#[derive(Debug, Clone)]
pub struct AttemptSpec {
    pub job_id: String,
    pub task_id: String,
    pub attempt: u32,
    /// The lease's fencing epoch (calls about the attempt carry it).
    pub epoch: u64,
    pub spec: JobSpec,
    /// The accelerators the scheduler assigned with the lease.
    pub devices: Vec<msfleet_proto::DeviceRef>,
    /// What selects them for every process of the attempt
    /// (`crate::devices::grant`), applied after the job's own env.
    pub device_env: Vec<(String, String)>,
    /// The scheduler's span of this attempt (W3C traceparent; empty without traces):
    /// the parent of the agent's spans for it ([`AttemptSpec::span`]).
    pub traceparent: String,
}

impl AttemptSpec {
    /// The UUIDs of the attempt's GPUs (what the benchmark core samples).
    pub fn gpu_uuids(&self) -> Vec<String> {
        self.devices
            .iter()
            .filter(|d| d.kind == "gpu")
            .map(|d| d.id.clone())
            .collect()
    }

    /// `span`, made a child of the scheduler's span of this attempt when traces are exported.
    pub fn span(&self, span: tracing::Span) -> tracing::Span {
        child_of(&self.traceparent, span)
    }
}

/// `span`, made a child of the span `traceparent` (W3C) when traces are exported.
pub fn child_of(traceparent: &str, span: tracing::Span) -> tracing::Span {
    use msfleet_proto::telemetry::{self, OpenTelemetrySpanExt};
    if telemetry::enabled() {
        if let Some(sc) = telemetry::parse_traceparent(traceparent) {
            let _ = span.set_parent(telemetry::remote_context(sc));
        }
    }
    span
}

/// Identifies an attempt on this agent: (task id, attempt number).
pub type AttemptKey = (String, u32);

/// Log chunks of one attempt the agent may hold unacknowledged (in the
/// session's channel and outbox): 256 chunks, at most 16 MiB.
pub const LOG_BUDGET: usize = 256;

/// How many log chunks of an attempt may be on their way to the scheduler
/// and not yet acknowledged. The output pump waits for room
/// ([`Updates::send_log`]), so a test that prints faster than the scheduler
/// takes it blocks on its pipe instead of growing the agent's memory. The
/// session gives a chunk's room back once it is acknowledged or dropped.
#[derive(Debug)]
pub struct LogBudget {
    room: tokio::sync::Semaphore,
    /// Chunks sent without room (the agent's own few lines never wait):
    /// paid back before room is added again, so the count stays exact.
    debt: std::sync::atomic::AtomicUsize,
}

impl LogBudget {
    pub fn new(chunks: usize) -> std::sync::Arc<LogBudget> {
        std::sync::Arc::new(LogBudget {
            room: tokio::sync::Semaphore::new(chunks),
            debt: Default::default(),
        })
    }

    /// Waits for room for one chunk; false once the attempt is gone.
    async fn take(&self) -> bool {
        match self.room.acquire().await {
            Ok(p) => {
                p.forget();
                true
            }
            Err(_) => false,
        }
    }

    #[cfg(test)]
    pub(crate) fn room_left(&self) -> usize {
        self.room.available_permits()
    }

    pub(crate) fn take_now(&self) {
        match self.room.try_acquire() {
            Ok(p) => p.forget(),
            Err(_) => {
                self.debt.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
    }

    /// One chunk left the agent's hands (acknowledged or dropped).
    pub fn give_back(&self) {
        use std::sync::atomic::Ordering;
        let paid = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1));
        if paid.is_err() {
            self.room.add_permits(1);
        }
    }

    /// The attempt is over: a pump waiting for room stops.
    pub fn close(&self) {
        self.room.close();
    }
}

/// Sink for one attempt's updates; the session numbers and sends them.
///
/// With [`Updates::with_secrets`], no secret value leaves through it: the
/// texts of test results, case results and `Finished` are redacted here, the
/// agent's own lines in [`Updates::log`], and the test's output by the log
/// pump ([`crate::process`]), which uses [`Updates::redactor`] because a
/// value may be split across two reads of a pipe.
///
/// The channel is unbounded, but what can wait in it is bounded: log chunks
/// (the only updates whose number a test controls) by the attempt's
/// [`LogBudget`]; the others are one per test phase or case (each within the
/// scheduler's size limits) plus a start and a finish.
#[derive(Clone)]
pub struct Updates {
    key: AttemptKey,
    tx: mpsc::UnboundedSender<(AttemptKey, task_update::Kind)>,
    secrets: Arc<Redactor>,
    logs: Option<Arc<LogBudget>>,
}

impl Updates {
    /// Without a log budget (tests that read the channel themselves).
    pub fn new(
        key: AttemptKey,
        tx: mpsc::UnboundedSender<(AttemptKey, task_update::Kind)>,
    ) -> Self {
        Updates {
            key,
            tx,
            secrets: Arc::default(),
            logs: None,
        }
    }

    /// Log chunks count against `logs` until the session gives them back.
    pub fn with_budget(
        key: AttemptKey,
        tx: mpsc::UnboundedSender<(AttemptKey, task_update::Kind)>,
        logs: Arc<LogBudget>,
    ) -> Self {
        Updates {
            logs: Some(logs),
            ..Updates::new(key, tx)
        }
    }

    /// The same sink, redacting the job's `secret_env` values.
    pub fn with_secrets(mut self, spec: &JobSpec) -> Self {
        self.secrets = Arc::new(Redactor::new(spec.secret_env.values()));
        self
    }

    /// `text` with the job's secret values replaced.
    pub fn redact(&self, text: &str) -> String {
        self.secrets.text(text)
    }

    /// A fresh stream redactor for the job's secret values (empty without any).
    pub fn redactor(&self) -> Redactor {
        (*self.secrets).clone()
    }

    /// Sends one update. Log chunks go as they are (they were redacted where
    /// they were made) and count against the budget; every other text is
    /// redacted here.
    pub fn send(&self, mut kind: task_update::Kind) {
        if let (Some(b), task_update::Kind::Log(_)) = (&self.logs, &kind) {
            b.take_now();
        }
        if !self.secrets.is_empty() {
            let r = &self.secrets;
            match &mut kind {
                task_update::Kind::Test(t) => {
                    t.nodeid = r.text(&t.nodeid);
                    t.longrepr = r.text(&t.longrepr);
                }
                task_update::Kind::Tests(batch) => {
                    for t in &mut batch.results {
                        t.nodeid = r.text(&t.nodeid);
                        t.longrepr = r.text(&t.longrepr);
                    }
                }
                task_update::Kind::Finished(f) => f.reason = r.text(&f.reason),
                task_update::Kind::Case(c) => {
                    if let Some(e) = c.explanation.as_mut() {
                        e.message = r.text(&e.message);
                    }
                }
                // A hash and numbers: nothing a secret could be in.
                task_update::Kind::Started(_)
                | task_update::Kind::Log(_)
                | task_update::Kind::Environment(_) => {}
            }
        }
        let _ = self.tx.send((self.key.clone(), kind));
    }

    /// Sends a chunk of the test's output once the budget has room.
    pub async fn send_log(&self, chunk: LogChunk) {
        if let Some(b) = &self.logs {
            if !b.take().await {
                return;
            }
        }
        let _ = self
            .tx
            .send((self.key.clone(), task_update::Kind::Log(chunk)));
    }

    /// Sends `text` as one log chunk of `stream` (the agent's own lines go to `stderr`).
    pub fn log(&self, stream: &str, text: String) {
        self.send(task_update::Kind::Log(LogChunk {
            stream: stream.into(),
            data: self.secrets.text(&text).into_bytes(),
        }));
    }
}

/// Wall-clock limit of one attempt (the scheduler fills in its default).
pub fn attempt_timeout(spec: &JobSpec) -> Duration {
    Duration::from_millis(spec.timeout_ms.unwrap_or(3_600_000).max(1) as u64)
}

/// A `Finished` update, as every runner returns it.
pub fn finished(outcome: Outcome, reason: impl Into<String>, exit_code: i32) -> Option<Finished> {
    Some(Finished {
        outcome: outcome as i32,
        reason: reason.into(),
        exit_code,
        ..Default::default()
    })
}

/// An `error` that is the job's own doing (see `Finished.job_fault`): still
/// `error`, but it does not count against the agent's health.
pub fn job_fault(reason: impl Into<String>) -> Option<Finished> {
    Some(Finished {
        outcome: Outcome::Error as i32,
        reason: reason.into(),
        exit_code: -1,
        job_fault: true,
        ..Default::default()
    })
}

/// How an attempt that was halted ends (`None`: abandoned, nothing is reported). `timeout` is
/// the attempt's limit, said when it ran out.
pub fn halted(halt: Halt, timeout: Duration, exit_code: i32) -> Option<Finished> {
    match halt {
        Halt::TimedOut => finished(
            Outcome::TimedOut,
            format!("timed out after {}", humantime::format_duration(timeout)),
            exit_code,
        ),
        Halt::Stop(StopReason::Cancelled(why)) => finished(Outcome::Cancelled, why, exit_code),
        Halt::Stop(StopReason::Abandoned) => None,
        Halt::Stop(StopReason::Shutdown) => {
            finished(Outcome::Requeue, "the agent is shutting down", exit_code)
        }
    }
}

// ---------------------------------------------------------------- stop and timeout

/// Why the attempt stops before it is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Halt {
    TimedOut,
    Stop(StopReason),
}

/// The attempt's deadline and its stop signal, watched while anything runs.
pub struct Guard<'a> {
    deadline: tokio::time::Instant,
    stop: &'a mut watch::Receiver<Option<StopReason>>,
    halted: Option<Halt>,
}

impl<'a> Guard<'a> {
    pub fn new(
        deadline: tokio::time::Instant,
        stop: &'a mut watch::Receiver<Option<StopReason>>,
    ) -> Self {
        Guard {
            deadline,
            stop,
            halted: None,
        }
    }

    /// The halt already seen by [`Guard::wait`], if any.
    pub fn halted(&self) -> Option<&Halt> {
        self.halted.as_ref()
    }

    /// Without waiting: a stop that has come, else the deadline if it has passed.
    pub fn check(&mut self) -> Option<Halt> {
        if let Some(h) = &self.halted {
            return Some(h.clone());
        }
        let now = self.stop.borrow_and_update().clone();
        if let Some(r) = now {
            return Some(self.set(Halt::Stop(r)));
        }
        if tokio::time::Instant::now() >= self.deadline {
            return Some(self.set(Halt::TimedOut));
        }
        None
    }

    /// Resolves when the attempt must stop (at once, once it has). Cancel-safe.
    pub async fn wait(&mut self) -> Halt {
        if let Some(h) = &self.halted {
            return h.clone();
        }
        let now = self.stop.borrow_and_update().clone();
        if let Some(r) = now {
            return self.set(Halt::Stop(r));
        }
        let halt = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(self.deadline) => break Halt::TimedOut,
                changed = self.stop.changed() => {
                    if changed.is_err() {
                        break Halt::Stop(StopReason::Shutdown);
                    }
                    let now = self.stop.borrow_and_update().clone();
                    if let Some(r) = now {
                        break Halt::Stop(r);
                    }
                }
            }
        };
        self.set(halt)
    }

    fn set(&mut self, h: Halt) -> Halt {
        self.halted = Some(h.clone());
        h
    }
}
