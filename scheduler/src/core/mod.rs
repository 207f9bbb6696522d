//! The scheduler core: one thread owns every piece of scheduling state (jobs,
//! pending order, leases, agents) and applies commands to it one at a time.
//!
//! Each turn of the loop takes a batch of commands, applies them to memory,
//! writes everything they changed as one atomic sled batch, and queues what
//! must leave the core (replies to callers, messages to agents, watch
//! progress) behind the next flush. So nothing is acknowledged, assigned or
//! shown to a watcher before the writes it reflects are durable, and many
//! commands share one fsync (group commit).
//!
//! The async gRPC layer talks to the core only through [`CoreHandle`]; it
//! never blocks on sled itself.

use crate::auth::{Principal, TokenIndex};
use crate::baseline::BaselineBook;
use crate::config::Config;
use crate::devices;
use crate::jobspec;
use crate::lease::{Lease, LeaseTable};
use crate::limits;
use crate::matching::{self, fits, source_dir, under_root, warm_for};
use crate::metrics::{Observation, Snapshot};
use crate::queue::PendingQueue;
use crate::requirement::{Attributes, Requirement};
use crate::schedule::{self, CronSpec, Due, Misfire, Overlap, OverlapAction};
use crate::store::{AttemptRecord, Durable, Store, StoreError, WriteSet};
use crate::telemetry;
use futures::channel::mpsc as fmpsc;
use msfleet_proto as pb;
pub use msfleet_proto::telemetry::opentelemetry::trace::SpanContext;
use msfleet_proto::{
    job_event, scheduler_message, task_update, Agent, AgentAdmin, AttemptRef, Job, JobEvent,
    JobSpec, JobState, Outcome, SchedulerMessage, StateChange, TestCounts,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc as tmpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tonic::Status;

mod agents;
mod attempts;
mod baselines;
mod case_runs;
mod events;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod harness;
mod health;
mod index;
mod jobs;
mod parents;
mod retain;
mod schedules;
mod tokens;
mod waits;

use agents::{agent_profile, AgentEntry, Registry};
pub use attempts::log_limit_marker;
use attempts::{attempt_ref, Loss};
pub use case_runs::Trend;
pub use events::{Progress, WatchHandle};
use jobs::JobEntry;

/// Where a caller's answer goes.
pub type Reply<T> = oneshot::Sender<Result<T, Status>>;

/// Commands the API may have handed the core and the core not yet handled.
/// Past it callers wait ([`CoreHandle::call`] and [`CoreHandle::send`] are
/// async), so a fast agent is slowed down by h2 flow control on its stream
/// instead of growing the scheduler's memory.
pub const MAX_IN_FLIGHT: usize = 4096;

/// Messages the core may queue for one agent's session stream. The core never
/// waits for an agent: when the queue is full the session is ended as a slow
/// consumer ([`AgentTx::offer`]); the agent reconnects and resumes.
pub const AGENT_QUEUE: usize = 4096;

type Outbound = Result<SchedulerMessage, Status>;

/// What a session's queue holds: boxed, so an idle session's queue (its first
/// block of 32 slots, allocated with the channel) is 32 pointers, not 32
/// inline messages of most of a KiB each; 100,000 idle sessions hold ~2.6 GiB
/// of address space less.
type Queued = Result<Box<SchedulerMessage>, Box<Status>>;

fn unbox(q: Queued) -> Outbound {
    q.map(|m| *m).map_err(|s| *s)
}

/// How an agent's stream ends early: the status it ends with, and whether it
/// ended because the agent fell [`AGENT_QUEUE`] messages behind.
#[derive(Default)]
struct StreamEnd {
    status: Mutex<Option<Status>>,
    overflowed: AtomicBool,
    /// Messages the gRPC layer received on the session (see [`Heard`]).
    heard: AtomicU64,
    /// The core wants the agent's next heartbeat even if it lists nothing
    /// (the agent is lost and a heartbeat reconciles it).
    wants_heartbeat: AtomicBool,
    /// Messages in the queue ([`AgentTx::reserve`]).
    queued: AtomicUsize,
}

impl StreamEnd {
    fn set(&self, status: Status) {
        let mut slot = self.status.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(status);
    }

    fn take(&self) -> Option<Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Session streams that overflowed so far, in this process: the core looks
/// for slow sessions only when it grew ([`Core::end_slow_sessions`]).
static SLOW_SESSIONS: AtomicU64 = AtomicU64::new(0);

/// The outbound half of an agent's session stream: bounded, and never waited on.
///
/// A `futures` channel rather than tokio's: tokio's allocates its first
/// block of 32 slots and cache-padded counters with the channel (1 KiB), this
/// one a node per queued message; every connected agent holds one, nearly
/// always empty (90 MiB less at 100,000 agents). It is bounded here, by
/// `StreamEnd::queued`.
#[derive(Clone)]
pub struct AgentTx {
    tx: fmpsc::UnboundedSender<Queued>,
    end: Arc<StreamEnd>,
    capacity: usize,
}

/// The inbound half: what the gRPC layer streams to the agent (and the
/// harness reads).
pub struct AgentRx {
    rx: fmpsc::UnboundedReceiver<Queued>,
    end: Arc<StreamEnd>,
    done: bool,
}

/// A session stream of `capacity` messages.
pub fn agent_channel(capacity: usize) -> (AgentTx, AgentRx) {
    let (tx, rx) = fmpsc::unbounded();
    let end = Arc::new(StreamEnd::default());
    (
        AgentTx {
            tx,
            end: end.clone(),
            capacity,
        },
        AgentRx {
            rx,
            end,
            done: false,
        },
    )
}

/// The gRPC layer's side of a session's liveness. Every message the agent
/// sends counts as hearing from it; the core reads the count on its tick and
/// renews the agent's lease from it ([`Core::expire_leases`]). So a heartbeat
/// that lists no attempts need not reach the core at all (at 100,000 agents
/// every 10 s, 10,000 wake-ups of the core thread a second saved), unless
/// the core asked for it ([`Heard::core_wants_heartbeat`]).
#[derive(Clone)]
pub struct Heard(Arc<StreamEnd>);

impl Heard {
    /// The agent sent something.
    pub fn note(&self) {
        self.0.heard.fetch_add(1, AtomicOrdering::Release);
    }

    /// Whether a heartbeat that lists no attempts must still go to the core.
    pub fn core_wants_heartbeat(&self) -> bool {
        self.0.wants_heartbeat.load(AtomicOrdering::Acquire)
    }
}

impl AgentTx {
    /// How many messages the gRPC layer has heard on this session.
    fn heard(&self) -> u64 {
        self.end.heard.load(AtomicOrdering::Acquire)
    }

    /// Asks for (or stops asking for) every heartbeat of this session.
    fn want_heartbeats(&self, on: bool) {
        self.end.wants_heartbeat.store(on, AtomicOrdering::Release);
    }

    /// Queues `msg` without waiting. A full queue means the agent is not
    /// reading: the stream then ends with ResourceExhausted (ahead of what is
    /// queued), later messages are dropped, and the core ends the session on
    /// its next turn ([`Core::end_slow_sessions`]).
    fn offer(&self, msg: SchedulerMessage) {
        if self.overflowed() {
            return;
        }
        if !self.reserve() {
            self.end.overflowed.store(true, AtomicOrdering::Release);
            SLOW_SESSIONS.fetch_add(1, AtomicOrdering::Release);
            self.end.set(Status::resource_exhausted(format!(
                "this agent read its session too slowly (over {} messages behind); reconnect",
                self.capacity
            )));
            return;
        }
        self.send(Ok(Box::new(msg)));
    }

    /// Ends the stream with `status`, ahead of what is still queued if full.
    fn end(&self, status: Status) {
        if self.reserve() {
            self.send(Err(Box::new(status)));
        } else {
            self.end.set(status);
        }
    }

    /// Queues `q` in a place taken by [`Self::reserve`]. A stream already
    /// gone (the session ended) takes nothing: the place is given back.
    fn send(&self, q: Queued) {
        if self.tx.unbounded_send(q).is_err() {
            self.end.queued.fetch_sub(1, AtomicOrdering::AcqRel);
        }
    }

    /// Takes one of the `capacity` places of the queue, if one is free (the
    /// receiver gives it back with each message it takes).
    fn reserve(&self) -> bool {
        self.end
            .queued
            .fetch_update(AtomicOrdering::AcqRel, AtomicOrdering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok()
    }

    fn overflowed(&self) -> bool {
        self.end.overflowed.load(AtomicOrdering::Acquire)
    }
}

impl AgentRx {
    /// The liveness handle of this session, for the gRPC layer.
    pub fn heard(&self) -> Heard {
        Heard(self.end.clone())
    }

    fn ended(&mut self, item: Option<Outbound>) -> Option<Outbound> {
        if self.done {
            return None;
        }
        if let Some(status) = self.end.take() {
            self.done = true;
            return Some(Err(status));
        }
        if matches!(item, None | Some(Err(_))) {
            self.done = true;
        }
        item
    }

    /// The next message without waiting (`Empty` when there is none yet).
    pub fn try_recv(&mut self) -> Result<Outbound, tmpsc::error::TryRecvError> {
        if self.done || self.end.status.lock().is_ok_and(|s| s.is_some()) {
            return self
                .ended(None)
                .ok_or(tmpsc::error::TryRecvError::Disconnected);
        }
        let item = match self.rx.try_recv() {
            Ok(q) => self.taken(q),
            Err(fmpsc::TryRecvError::Closed) => {
                return Err(tmpsc::error::TryRecvError::Disconnected)
            }
            Err(fmpsc::TryRecvError::Empty) => return Err(tmpsc::error::TryRecvError::Empty),
        };
        self.ended(Some(item))
            .ok_or(tmpsc::error::TryRecvError::Disconnected)
    }

    /// A message taken off the queue, its place given back.
    fn taken(&self, q: Queued) -> Outbound {
        self.end.queued.fetch_sub(1, AtomicOrdering::AcqRel);
        unbox(q)
    }

    /// The next message, waiting for it (outside async code).
    pub fn blocking_recv(&mut self) -> Option<Outbound> {
        if self.done || self.end.status.lock().is_ok_and(|s| s.is_some()) {
            return self.ended(None);
        }
        let item = futures::executor::block_on(futures::StreamExt::next(&mut self.rx))
            .map(|q| self.taken(q));
        self.ended(item)
    }
}

impl futures::Stream for AgentRx {
    type Item = Outbound;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        if self.done || self.end.status.lock().is_ok_and(|s| s.is_some()) {
            return Poll::Ready(self.ended(None));
        }
        match futures::StreamExt::poll_next_unpin(&mut self.rx, cx) {
            Poll::Ready(item) => {
                let item = item.map(|q| self.taken(q));
                Poll::Ready(self.ended(item))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Everything the core can be asked to do.
pub enum Command {
    Submit {
        spec: Box<JobSpec>,
        /// The caller's token name, recorded as the job's `submitted_by`.
        by: String,
        /// The caller's span (W3C traceparent in the request's metadata), the
        /// parent of the job's span when traces are exported.
        caller: Option<SpanContext>,
        reply: Reply<Job>,
    },
    GetJob {
        id: String,
        reply: Reply<Job>,
    },
    ListJobs {
        req: pb::ListJobsRequest,
        reply: Reply<pb::ListJobsResponse>,
    },
    Cancel {
        id: String,
        who: Principal,
        reply: Reply<Job>,
    },
    Watch {
        id: String,
        reply: Reply<WatchHandle>,
    },
    ListAgents {
        reply: Reply<Vec<Agent>>,
    },
    /// msched is stopping: every agent session's stream ends (Unavailable),
    /// so the graceful stop need not wait for agents; their attempts stay
    /// leased (the restart grace covers the gap). Replies how many ended.
    EndSessions {
        reply: Reply<usize>,
    },
    SetAgentAdmin {
        name: String,
        admin: AgentAdmin,
        /// With a drain: its deadline, this long from now (0: none).
        drain_deadline_in_ms: u64,
        /// The caller's token name and their reason (quarantine).
        by: String,
        reason: String,
        reply: Reply<Agent>,
    },
    ForgetAgent {
        name: String,
        reply: Reply<Agent>,
    },
    /// A health-check job pinned to agent `name`.
    CheckAgent {
        name: String,
        by: String,
        reply: Reply<Job>,
    },
    ListQueues {
        reply: Reply<Vec<pb::Queue>>,
    },
    ListBaselines {
        req: pb::ListBaselinesRequest,
        reply: Reply<Vec<pb::Baseline>>,
    },
    AcceptBaselines {
        req: pb::AcceptBaselinesRequest,
        by: String,
        reply: Reply<Vec<pb::Baseline>>,
    },
    AddSchedule {
        schedule: Box<pb::Schedule>,
        by: String,
        reply: Reply<pb::Schedule>,
    },
    ListSchedules {
        reply: Reply<Vec<pb::Schedule>>,
    },
    GetSchedule {
        name: String,
        reply: Reply<pb::Schedule>,
    },
    SetSchedulePaused {
        name: String,
        paused: bool,
        by: String,
        reply: Reply<pb::Schedule>,
    },
    DeleteSchedule {
        name: String,
        reply: Reply<pb::Schedule>,
    },
    RunScheduleNow {
        name: String,
        by: String,
        reply: Reply<Job>,
    },
    /// From an agent's unary call: baselines of the profile of the attempt's agent.
    GetBaselines {
        req: pb::GetBaselinesRequest,
        /// The calling agent: it may ask only about its own attempts.
        agent: String,
        reply: Reply<pb::GetBaselinesResponse>,
    },
    Register {
        session: u64,
        reg: pb::Register,
        /// The credential the session came with: the name it may register as,
        /// and the labels and profile the admin set on its token.
        who: Principal,
        tx: AgentTx,
        reply: Reply<()>,
    },
    Heartbeat {
        session: u64,
        hb: pb::Heartbeat,
    },
    Update {
        session: u64,
        update: pb::TaskUpdate,
    },
    /// An agent's periodic probe: fresh capabilities.
    HealthReport {
        session: u64,
        report: pb::HealthReport,
    },
    Disconnected {
        session: u64,
    },
    CreateToken {
        req: pb::CreateTokenRequest,
        /// SHA-256 of the new secret; the secret never enters the core.
        hash: String,
        by: String,
        reply: Reply<pb::Token>,
    },
    ListTokens {
        kind: String,
        reply: Reply<Vec<pb::Token>>,
    },
    RevokeToken {
        name: String,
        kind: String,
        by: String,
        reply: Reply<pb::Token>,
    },
    /// Start-up: is there an admin token yet?
    HasAdminToken {
        reply: Reply<bool>,
    },
    /// A scrape of `/metrics`: the gauges' values now.
    MetricsSnapshot {
        reply: Reply<Snapshot>,
    },
    /// The dashboard's benchmark trends: every kept run of the keys matching
    /// `case` / `profile` (empty: all), each with at most its `newest` runs,
    /// and their baselines.
    Trends {
        case: String,
        profile: String,
        newest: usize,
        reply: Reply<Vec<Trend>>,
    },
}

/// A command on its way to the core, with the permit it holds until the
/// core has handled it.
struct Envelope {
    cmd: Command,
    permit: OwnedSemaphorePermit,
}

/// A cheap, cloneable way into the core thread.
#[derive(Clone)]
pub struct CoreHandle {
    tx: mpsc::Sender<Envelope>,
    in_flight: Arc<Semaphore>,
}

impl CoreHandle {
    fn bounded(max_in_flight: usize) -> (CoreHandle, mpsc::Receiver<Envelope>) {
        let (tx, rx) = mpsc::channel();
        let in_flight = Arc::new(Semaphore::new(max_in_flight));
        (CoreHandle { tx, in_flight }, rx)
    }

    /// Waits for room among the [`MAX_IN_FLIGHT`] commands, then hands `cmd` over.
    async fn enqueue(&self, cmd: Command) -> Result<(), Status> {
        let stopped = || Status::unavailable("the scheduler is shutting down");
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| stopped())?;
        self.tx
            .send(Envelope { cmd, permit })
            .map_err(|_| stopped())
    }

    /// Sends a command and waits for its (durable) answer.
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(make(tx)).await?;
        rx.await
            .map_err(|_| Status::unavailable("the scheduler core stopped"))?
    }

    /// Sends a command that has no answer; waits while the core is behind.
    pub async fn send(&self, cmd: Command) {
        let _ = self.enqueue(cmd).await;
    }
}

/// Loads the durable state and starts the core thread.
pub fn start(
    cfg: Arc<Config>,
    store: Store,
    tokens: Arc<TokenIndex>,
) -> Result<CoreHandle, StoreError> {
    let core = Core::load(cfg, store, tokens)?;
    let (handle, rx) = CoreHandle::bounded(MAX_IN_FLIGHT);
    thread::Builder::new()
        .name("msched-core".into())
        .spawn(move || core.run(rx))
        .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
    Ok(handle)
}

/// What one turn of the loop writes and what it releases after the flush.
#[derive(Default)]
struct Step {
    writes: WriteSet,
    after: Vec<Durable>,
    touched: BTreeSet<u64>,
    dispatch: bool,
    /// Node ids collected this turn as (job, attempt, id): their events are
    /// in `writes`, not yet in the store, and a split in the same turn must
    /// see them ([`Core::split_shards`]).
    collected: Vec<(u64, u32, String)>,
    /// What this turn saw for the metrics, recorded once its writes are durable.
    observed: Vec<Observation>,
}

impl Step {
    fn reply<T: Send + 'static>(&mut self, reply: Reply<T>, result: Result<T, Status>) {
        self.after.push(Box::new(move |ok| {
            let _ = reply.send(if ok {
                result
            } else {
                Err(Status::unavailable(
                    "the scheduler could not make the change durable",
                ))
            });
        }));
    }

    /// Exports a span or a metric once this turn's writes are durable (on the flusher thread).
    fn telemetry(&mut self, item: Option<impl telemetry::Export>) {
        if let Some(item) = item {
            self.after.push(Box::new(move |ok| {
                if ok {
                    item.export();
                }
            }));
        }
    }

    /// Records a Prometheus observation once this turn's writes are durable ([`Core::commit`]).
    fn observe(&mut self, what: Observation) {
        self.observed.push(what);
    }

    fn send(&mut self, tx: &AgentTx, msg: scheduler_message::Msg) {
        let tx = tx.clone();
        self.after.push(Box::new(move |ok| {
            if ok {
                tx.offer(SchedulerMessage { msg: Some(msg) });
            }
        }));
    }
}

struct Core {
    cfg: Arc<Config>,
    store: Store,
    /// Deletes retired jobs' records in the background (after `store`: it
    /// finishes its work when the core is dropped).
    retirer: crate::retention::Retirer,
    /// Every job retention deleted has an id below this.
    retired_below: u64,
    /// The live jobs, the finished children of live parents, and a cache of
    /// other finished ones (`Config::finished_cache`); any other job is read
    /// from the store when asked for (`ensure_loaded`, `job_record`).
    jobs: BTreeMap<u64, JobEntry>,
    /// Finished jobs in memory, oldest first: what leaves it first.
    finished_cache: std::collections::VecDeque<u64>,
    /// Jobs by state, queue and submitter, and counts per queue and state.
    index: index::JobIndex,
    pending: PendingQueue,
    leases: LeaseTable,
    agents: Registry,
    sessions: HashMap<u64, String>,
    baselines: BaselineBook,
    schedules: BTreeMap<String, (pb::Schedule, CronSpec)>,
    /// dedup key -> (job, submitted at), for keys seen within the dedup window.
    dedup: HashMap<String, (u64, i64)>,
    /// (submitted at, key) of `dedup`, oldest first: what the tick forgets.
    dedup_order: std::collections::VecDeque<(i64, String)>,
    next_job: u64,
    next_epoch: u64,
    started_ms: i64,
    /// The clock's reading for the current loop turn.
    now: i64,
    tokens: tokens::TokenBook,
    /// What the auth layer reads; the core keeps it in step with `tokens`.
    token_index: Arc<TokenIndex>,
    /// Agents that refused an assignment for lack of a slot, and until when
    /// dispatch passes them over (see `Core::requeue_refused`).
    held_back: BTreeMap<String, i64>,
    /// Every recent run of each benchmark case key (the dashboard's trends).
    case_runs: case_runs::CaseRunBook,
    /// Queue waits of the last hour (the queue view's p50 / p95).
    waits: waits::WaitWindow,
    /// [`SLOW_SESSIONS`] when the core last looked for slow sessions.
    slow_sessions_seen: u64,
}

const NEXT_EPOCH: &str = "next_epoch";

impl Core {
    fn load(
        cfg: Arc<Config>,
        store: Store,
        token_index: Arc<TokenIndex>,
    ) -> Result<Core, StoreError> {
        let mut snap = store.load()?;
        let case_runs = case_runs::CaseRunBook::load(store.load_case_runs()?);
        let started_ms = cfg.clock.now_ms();
        let retirer = crate::retention::Retirer::start(store.clone(), cfg.clock.clone())
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        let mut core = Core {
            cfg,
            store,
            retirer,
            retired_below: 0,
            jobs: BTreeMap::new(),
            finished_cache: std::collections::VecDeque::new(),
            index: index::JobIndex::default(),
            pending: PendingQueue::default(),
            leases: LeaseTable::default(),
            agents: BTreeMap::new(),
            sessions: HashMap::new(),
            baselines: BaselineBook::load(std::mem::take(&mut snap.baselines)),
            schedules: BTreeMap::new(),
            tokens: tokens::load_tokens(std::mem::take(&mut snap.tokens), &token_index),
            token_index,
            dedup: HashMap::new(),
            dedup_order: std::collections::VecDeque::new(),
            next_job: 1,
            next_epoch: 1,
            started_ms,
            now: started_ms,
            held_back: BTreeMap::new(),
            case_runs,
            waits: waits::WaitWindow::default(),
            slow_sessions_seen: 0,
        };
        for (name, value) in snap.meta {
            if name == NEXT_EPOCH {
                core.next_epoch = core.next_epoch.max(value);
            }
            if name == retain::RETIRED_BELOW {
                // Ids are never reused, also when the newest jobs were retired.
                core.retired_below = value;
                core.next_job = core.next_job.max(value);
            }
        }
        // Only what is live is loaded (a store from before the live index
        // is read whole once, and the index written).
        core.next_job = core.next_job.max(snap.last_job + 1);
        let mut migration = WriteSet::default();
        for job in snap.jobs {
            let Ok(id) = job.id.parse::<u64>() else {
                tracing::warn!(id = %job.id, "skipping a stored job with a malformed id");
                continue;
            };
            let finished = job.state().is_terminal();
            if !snap.indexed {
                migration.set_live(id, !finished);
                if finished {
                    migration.put_finished(id, job.finished_at_ms);
                }
                if let Some(key) = job
                    .spec
                    .as_ref()
                    .map(|s| &s.dedup_key)
                    .filter(|k| !k.is_empty())
                {
                    migration.put_dedup(key, id, job.submitted_at_ms);
                }
            }
            core.next_job = core.next_job.max(id + 1);
            core.insert_loaded(id, job);
            if finished {
                core.finished_cache.push_back(id);
            }
        }
        if !snap.indexed {
            migration.put_meta(crate::store::LIVE_INDEX, 1);
            core.store.apply(migration)?;
            tracing::info!(
                jobs = core.jobs.len(),
                "wrote the live and finished job indexes"
            );
        }
        // A live parent's finished children: its counts read them.
        for parent in core.index.live_parents() {
            let children: Vec<u64> = core.jobs[&parent]
                .job
                .children
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect();
            for child in children {
                if !core.jobs.contains_key(&child) {
                    if let Some(job) = core.store.job(child)? {
                        core.insert_loaded(child, job);
                        core.finished_cache.push_back(child);
                    }
                }
            }
        }
        for (key, id, at) in std::mem::take(&mut snap.dedup) {
            core.dedup.insert(key, (id, at));
        }
        for (id, att) in snap.attempts {
            let Some(e) = core.jobs.get_mut(&id) else {
                continue;
            };
            if e.job.state().is_terminal() {
                continue;
            }
            core.next_epoch = core.next_epoch.max(att.epoch + 1);
            core.leases.grant(
                id,
                Lease {
                    agent: att.agent.clone(),
                    attempt: att.attempt,
                    epoch: att.epoch,
                },
            );
            e.attempt = Some(att);
        }
        let indexed: BTreeSet<u64> = snap.pending.into_iter().collect();
        let queued: Vec<u64> = core
            .jobs
            .iter()
            .filter(|(_, e)| e.job.state() == JobState::Queued && !jobs::is_fanout_parent(&e.job))
            .map(|(&id, _)| id)
            .collect();
        for id in queued {
            if !indexed.contains(&id) {
                tracing::warn!(
                    job = id,
                    "queued job missing from the pending index; re-adding"
                );
            }
            core.push_pending(id);
        }
        for record in snap.agents {
            let attrs = matching::attributes(
                &record.name,
                record.capabilities.as_ref().unwrap_or(&Default::default()),
            );
            core.agents.insert(
                record.name.clone(),
                AgentEntry::new(record, attrs, started_ms),
            );
        }
        for (&id, e) in &core.jobs {
            if let Some(key) = e
                .job
                .spec
                .as_ref()
                .map(|s| &s.dedup_key)
                .filter(|k| !k.is_empty())
            {
                let at = e.job.submitted_at_ms;
                core.dedup
                    .entry(key.clone())
                    .and_modify(|v| {
                        if at > v.1 {
                            *v = (id, at);
                        }
                    })
                    .or_insert((id, at));
            }
        }
        let mut forgotten = WriteSet::default();
        core.prune_dedup_at_load(&mut forgotten);
        core.store.apply(forgotten)?;
        for record in snap.schedules {
            match CronSpec::parse(&record.cron, &record.tz) {
                Ok(spec) => {
                    core.schedules.insert(record.name.clone(), (record, spec));
                }
                Err(e) => {
                    tracing::error!(schedule = %record.name, error = %e, "stored schedule no longer parses")
                }
            }
        }
        core.evict_finished();
        tracing::info!(
            schedules = core.schedules.len(),
            jobs = core.jobs.len(),
            pending = core.pending.len(),
            agents = core.agents.len(),
            "loaded durable state"
        );
        Ok(core)
    }

    fn run(mut self, rx: mpsc::Receiver<Envelope>) {
        let tick = Duration::from_millis(200);
        let mut last_tick = Instant::now();
        loop {
            let mut envelopes = Vec::new();
            match rx.recv_timeout(tick) {
                Ok(env) => {
                    envelopes.push(env);
                    envelopes.extend(rx.try_iter().take(1023));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            let ticked = last_tick.elapsed() >= tick;
            if ticked {
                last_tick = Instant::now();
            }
            let (batch, permits): (Vec<Command>, Vec<OwnedSemaphorePermit>) =
                envelopes.into_iter().map(|e| (e.cmd, e.permit)).unzip();
            self.turn(batch, ticked);
            // Handled: room for as many new commands.
            drop(permits);
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
    }

    /// One turn of the loop: apply a batch of commands (and, on a tick, lease
    /// expiry and due schedules), dispatch if anything freed or queued work,
    /// then write everything as one batch and release what leaves the core
    /// behind the flush ([`Core::commit`]).
    fn turn(&mut self, batch: Vec<Command>, tick: bool) {
        let mut step = Step::default();
        self.now = self.cfg.clock.now_ms();
        self.end_slow_sessions();
        for cmd in batch {
            self.handle(cmd, &mut step);
        }
        if tick {
            self.expire_leases(&mut step);
            self.end_drain_deadlines(&mut step);
            self.end_unrun_children(&mut step);
            self.expire_queued(&mut step);
            self.fire_schedules(&mut step);
            self.retire_finished(&mut step);
            self.prune_dedup(&mut step);
        }
        if step.dispatch {
            self.dispatch(&mut step);
        }
        self.commit(step);
    }

    fn commit(&mut self, mut step: Step) {
        for id in std::mem::take(&mut step.touched) {
            let Some(e) = self.jobs.get(&id) else {
                continue;
            };
            step.writes.put_job(id, &e.job);
            match &e.attempt {
                Some(a) => step.writes.put_attempt(id, a),
                None => step.writes.remove_attempt(id),
            }
            let queue = e.job.spec.as_ref().map_or("default", |s| s.queue.as_str());
            step.writes
                .set_pending(id, self.pending.contains(id).then_some(queue));
            let finished = e.job.state().is_terminal();
            step.writes.set_live(id, !finished);
            if finished {
                step.writes.put_finished(id, e.job.finished_at_ms);
            }
        }
        if let Err(e) = self.store.apply(step.writes) {
            // Memory is now ahead of disk; the only safe move is to stop and
            // let a restart reload what is durable. Nothing was acknowledged.
            tracing::error!(error = %e, "writing to the store failed; stopping");
            std::process::exit(70);
        }
        // What is written can leave memory.
        self.evict_finished();
        if !step.observed.is_empty() {
            let observed = std::mem::take(&mut step.observed);
            step.after.push(Box::new(move |ok| {
                if ok {
                    for what in &observed {
                        what.record();
                    }
                }
            }));
        }
        if !step.after.is_empty() {
            let after = step.after;
            self.store.after_durable(Box::new(move |ok| {
                for then in after {
                    then(ok);
                }
            }));
        }
    }

    fn handle(&mut self, cmd: Command, step: &mut Step) {
        match cmd {
            Command::Submit {
                spec,
                by,
                caller,
                reply,
            } => {
                let r = self.submit(*spec, None, &by, caller.as_ref(), step);
                step.reply(reply, r);
            }
            Command::GetJob { id, reply } => {
                let r = self.job_id(&id).map(|id| self.view(id));
                step.reply(reply, r);
            }
            Command::ListJobs { req, reply } => {
                let r = self.list_jobs(&req);
                step.reply(reply, r);
            }
            Command::Cancel { id, who, reply } => {
                let r = self.cancel(&id, &who, step);
                step.reply(reply, r);
            }
            Command::Watch { id, reply } => {
                let r = self.watch(&id);
                step.reply(reply, r);
            }
            Command::ListAgents { reply } => {
                let r = Ok(self.list_agents());
                step.reply(reply, r);
            }
            Command::EndSessions { reply } => {
                let r = Ok(self.end_all_sessions(step));
                step.reply(reply, r);
            }
            Command::SetAgentAdmin {
                name,
                admin,
                drain_deadline_in_ms,
                by,
                reason,
                reply,
            } => {
                let r = self.set_admin(&name, admin, drain_deadline_in_ms, &by, &reason, step);
                step.reply(reply, r);
            }
            Command::ForgetAgent { name, reply } => {
                let r = self.forget_agent(&name, step);
                step.reply(reply, r);
            }
            Command::CheckAgent { name, by, reply } => {
                let r = self.check_agent(&name, &by, step);
                step.reply(reply, r);
            }
            Command::ListQueues { reply } => {
                let r = Ok(self.queues());
                step.reply(reply, r);
            }
            Command::ListBaselines { req, reply } => {
                let r = Ok(self.baselines.list(&req.case, &req.profile));
                step.reply(reply, r);
            }
            Command::AcceptBaselines { req, by, reply } => {
                let r = self.accept_baselines(&req, &by, step);
                step.reply(reply, r);
            }
            Command::AddSchedule {
                schedule,
                by,
                reply,
            } => {
                let r = self.add_schedule(*schedule, &by, step);
                step.reply(reply, r);
            }
            Command::ListSchedules { reply } => {
                let r = Ok(self.list_schedules());
                step.reply(reply, r);
            }
            Command::GetSchedule { name, reply } => {
                let r = self.schedule_named(&name).map(|n| self.schedule_view(&n));
                step.reply(reply, r);
            }
            Command::SetSchedulePaused {
                name,
                paused,
                by,
                reply,
            } => {
                let r = self.set_schedule_paused(&name, paused, &by, step);
                step.reply(reply, r);
            }
            Command::DeleteSchedule { name, reply } => {
                let r = self.delete_schedule(&name, step);
                step.reply(reply, r);
            }
            Command::RunScheduleNow { name, by, reply } => {
                let r = self.run_schedule_now(&name, &by, step);
                step.reply(reply, r);
            }
            Command::GetBaselines { req, agent, reply } => {
                let r = self.get_baselines(&req, &agent);
                step.reply(reply, r);
            }
            Command::Register {
                session,
                reg,
                who,
                tx,
                reply,
            } => {
                let r = self.register(session, reg, &who, tx, step);
                step.reply(reply, r);
            }
            Command::Heartbeat { session, hb } => self.heartbeat(session, hb, step),
            Command::Update { session, update } => self.update(session, update, step),
            Command::HealthReport { session, report } => self.health_report(session, report, step),
            Command::Disconnected { session } => self.disconnected(session),
            Command::CreateToken {
                req,
                hash,
                by,
                reply,
            } => {
                let r = self.create_token(req, hash, &by, step);
                step.reply(reply, r);
            }
            Command::ListTokens { kind, reply } => {
                let r = self.list_tokens(&kind);
                step.reply(reply, r);
            }
            Command::RevokeToken {
                name,
                kind,
                by,
                reply,
            } => {
                let r = self.revoke_token(&name, &kind, &by, step);
                step.reply(reply, r);
            }
            Command::HasAdminToken { reply } => {
                let r = Ok(self.has_admin_token());
                step.reply(reply, r);
            }
            Command::MetricsSnapshot { reply } => {
                let r = Ok(self.metrics_snapshot());
                step.reply(reply, r);
            }
            Command::Trends {
                case,
                profile,
                newest,
                reply,
            } => {
                let r = Ok(self.trends(&case, &profile, newest));
                step.reply(reply, r);
            }
        }
    }
}

impl Core {
    /// The gauges of [`crate::metrics`]: jobs per configured queue and state,
    /// the oldest queued job per queue, agents per state (`agent_state`).
    fn metrics_snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        for queue in self.cfg.queues.keys() {
            snap.queue_jobs.insert(queue.clone(), [0; 3]);
            snap.oldest_pending_s.insert(queue.clone(), 0.0);
        }
        for (queue, counts) in snap.queue_jobs.iter_mut() {
            for (slot, state) in [JobState::Queued, JobState::Assigned, JobState::Running]
                .into_iter()
                .enumerate()
            {
                counts[slot] = self.index.count(queue, state);
            }
            if let Some(at) = self.pending.oldest_in(queue) {
                let age = (self.now - at).max(0) as f64 / 1000.0;
                snap.oldest_pending_s.insert(queue.clone(), age);
            }
        }
        for (name, a) in &self.agents {
            let (state, _) = agents::agent_state(a, self.leases.count_held_by(name));
            if let Some(i) = crate::metrics::AGENT_STATES
                .iter()
                .position(|s| *s == state)
            {
                snap.agents[i] += 1;
            }
        }
        snap
    }
}

/// Agent and schedule names: 1-128 of `A-Z a-z 0-9 . _ -`.
fn check_name(what: &str, name: &str) -> Result<(), Status> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "bad {what} name '{}': use 1-128 of A-Z a-z 0-9 . _ -",
            crate::clip(name)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop(session: u64) -> Command {
        Command::Disconnected { session }
    }

    /// Callers wait once [`MAX_IN_FLIGHT`]-many commands are unhandled, and
    /// go on as soon as the core has handled one (its permit is dropped).
    #[tokio::test]
    async fn callers_wait_while_the_core_is_behind() {
        let (core, rx) = CoreHandle::bounded(2);
        core.send(noop(1)).await;
        core.send(noop(2)).await;
        let third = tokio::time::timeout(Duration::from_millis(100), core.send(noop(3)));
        assert!(third.await.is_err(), "a third command waits for room");
        let handled = rx.recv().expect("the first command");
        let sending = tokio::spawn({
            let core = core.clone();
            async move { core.send(noop(3)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!sending.is_finished(), "received is not yet handled");
        drop(handled);
        tokio::time::timeout(Duration::from_secs(5), sending)
            .await
            .expect("room once the core handled one")
            .unwrap();
        assert_eq!(rx.try_iter().count(), 2);
    }

    #[test]
    fn a_full_agent_stream_ends_ahead_of_what_is_queued() {
        let (tx, mut rx) = agent_channel(2);
        let msg = || SchedulerMessage { msg: None };
        tx.offer(msg());
        tx.offer(msg());
        assert!(!tx.overflowed());
        tx.offer(msg());
        assert!(tx.overflowed());
        let end = rx.try_recv().expect("the end").unwrap_err();
        assert_eq!(end.code(), tonic::Code::ResourceExhausted);
        assert!(end.message().contains("too slowly"), "{}", end.message());
        assert!(rx.try_recv().is_err(), "nothing after the end");
    }

    #[test]
    fn an_agent_that_reads_its_stream_never_overflows_it() {
        let (tx, mut rx) = agent_channel(2);
        let msg = || SchedulerMessage { msg: None };
        for _ in 0..10 {
            tx.offer(msg());
            tx.offer(msg());
            assert!(rx.try_recv().expect("a message").is_ok());
            assert!(rx.try_recv().expect("a message").is_ok());
        }
        assert!(!tx.overflowed(), "each message taken gives its place back");
        assert!(matches!(
            rx.try_recv(),
            Err(tmpsc::error::TryRecvError::Empty)
        ));
    }

    #[test]
    fn offers_to_a_stream_that_is_gone_do_not_count_as_a_slow_agent() {
        let (tx, rx) = agent_channel(2);
        drop(rx);
        for _ in 0..10 {
            tx.offer(SchedulerMessage { msg: None });
        }
        assert!(!tx.overflowed());
    }
}
