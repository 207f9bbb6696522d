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

use crate::baseline::BaselineBook;
use crate::config::Config;
use crate::jobspec;
use crate::lease::{Lease, LeaseTable};
use crate::matching::{self, fits, source_dir, under_root};
use crate::queue::PendingQueue;
use crate::requirement::{Attributes, Requirement};
use crate::schedule::{self, CronSpec, Due, Misfire, Overlap, OverlapAction};
use crate::store::{AttemptRecord, Durable, Store, StoreError, WriteSet};
use msfleet_proto as pb;
use msfleet_proto::{
    job_event, scheduler_message, task_update, Agent, AgentAdmin, AttemptRef, Job, JobEvent,
    JobSpec, JobState, Outcome, SchedulerMessage, StateChange, TestCounts,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc as tmpsc, oneshot, watch};
use tonic::Status;

/// Where a caller's answer goes.
pub type Reply<T> = oneshot::Sender<Result<T, Status>>;
/// The outbound half of an agent's session stream.
pub type AgentTx = tmpsc::UnboundedSender<Result<SchedulerMessage, Status>>;

/// How far a job's durable event log reaches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub durable_seq: u64,
    /// The job's final event is durable: nothing will follow `durable_seq`.
    pub done: bool,
}

/// What a watcher needs: the job and a channel that moves as events become durable.
pub struct WatchHandle {
    pub job: u64,
    pub progress: watch::Receiver<Progress>,
}

/// Everything the core can be asked to do.
pub enum Command {
    Submit {
        spec: Box<JobSpec>,
        reply: Reply<Job>,
    },
    GetJob {
        id: String,
        reply: Reply<Job>,
    },
    ListJobs {
        req: pb::ListJobsRequest,
        reply: Reply<Vec<Job>>,
    },
    Cancel {
        id: String,
        reply: Reply<Job>,
    },
    Watch {
        id: String,
        reply: Reply<WatchHandle>,
    },
    ListAgents {
        reply: Reply<Vec<Agent>>,
    },
    SetAgentAdmin {
        name: String,
        admin: AgentAdmin,
        reply: Reply<Agent>,
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
        reply: Reply<Vec<pb::Baseline>>,
    },
    AddSchedule {
        schedule: Box<pb::Schedule>,
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
        reply: Reply<pb::Schedule>,
    },
    DeleteSchedule {
        name: String,
        reply: Reply<pb::Schedule>,
    },
    RunScheduleNow {
        name: String,
        reply: Reply<Job>,
    },
    /// From an agent's unary call: baselines of the profile of the attempt's agent.
    GetBaselines {
        req: pb::GetBaselinesRequest,
        reply: Reply<pb::GetBaselinesResponse>,
    },
    Register {
        session: u64,
        reg: pb::Register,
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
    Disconnected {
        session: u64,
    },
}

/// A cheap, cloneable way into the core thread.
#[derive(Clone)]
pub struct CoreHandle {
    tx: mpsc::Sender<Command>,
}

impl CoreHandle {
    /// Sends a command and waits for its (durable) answer.
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .map_err(|_| Status::unavailable("the scheduler is shutting down"))?;
        rx.await
            .map_err(|_| Status::unavailable("the scheduler core stopped"))?
    }

    /// Sends a command that has no answer.
    pub fn send(&self, cmd: Command) {
        let _ = self.tx.send(cmd);
    }
}

/// Loads the durable state and starts the core thread.
pub fn start(cfg: Arc<Config>, store: Store) -> Result<CoreHandle, StoreError> {
    let core = Core::load(cfg, store)?;
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("msched-core".into())
        .spawn(move || core.run(rx))
        .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
    Ok(CoreHandle { tx })
}

struct JobEntry {
    job: Job,
    req: Requirement,
    attempt: Option<AttemptRecord>,
    /// Present until the job's final event has been queued for publication.
    progress: Option<Arc<watch::Sender<Progress>>>,
}

struct Session {
    id: u64,
    instance: String,
    tx: AgentTx,
    /// The agent gave work back because it is shutting down: send it no more.
    leaving: bool,
}

struct AgentEntry {
    record: Agent,
    attrs: Attributes,
    session: Option<Session>,
    last_seen_ms: i64,
}

impl AgentEntry {
    fn caps(&self) -> &pb::Capabilities {
        static EMPTY: std::sync::OnceLock<pb::Capabilities> = std::sync::OnceLock::new();
        self.record
            .capabilities
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(pb::Capabilities::default))
    }

    fn slots(&self) -> usize {
        self.caps().slots.max(1) as usize
    }

    fn takes_work(&self) -> bool {
        self.session.as_ref().is_some_and(|s| !s.leaving)
            && self.record.admin() == AgentAdmin::Active
    }
}

/// What one turn of the loop writes and what it releases after the flush.
#[derive(Default)]
struct Step {
    writes: WriteSet,
    after: Vec<Durable>,
    touched: BTreeSet<u64>,
    dispatch: bool,
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

    fn send(&mut self, tx: &AgentTx, msg: scheduler_message::Msg) {
        let tx = tx.clone();
        self.after.push(Box::new(move |ok| {
            if ok {
                let _ = tx.send(Ok(SchedulerMessage { msg: Some(msg) }));
            }
        }));
    }
}

struct Core {
    cfg: Arc<Config>,
    store: Store,
    jobs: BTreeMap<u64, JobEntry>,
    pending: PendingQueue,
    leases: LeaseTable,
    agents: BTreeMap<String, AgentEntry>,
    sessions: HashMap<u64, String>,
    baselines: BaselineBook,
    schedules: BTreeMap<String, (pb::Schedule, CronSpec)>,
    /// dedup key -> (job, submitted at)
    dedup: HashMap<String, (u64, i64)>,
    next_job: u64,
    next_epoch: u64,
    started_ms: i64,
    /// The clock's reading for the current loop turn.
    now: i64,
}

const NEXT_EPOCH: &str = "next_epoch";

impl Core {
    fn load(cfg: Arc<Config>, store: Store) -> Result<Core, StoreError> {
        let mut snap = store.load()?;
        let started_ms = cfg.clock.now_ms();
        let mut core = Core {
            cfg,
            store,
            jobs: BTreeMap::new(),
            pending: PendingQueue::default(),
            leases: LeaseTable::default(),
            agents: BTreeMap::new(),
            sessions: HashMap::new(),
            baselines: BaselineBook::load(std::mem::take(&mut snap.baselines)),
            schedules: BTreeMap::new(),
            dedup: HashMap::new(),
            next_job: 1,
            next_epoch: 1,
            started_ms,
            now: started_ms,
        };
        for (name, value) in snap.meta {
            if name == NEXT_EPOCH {
                core.next_epoch = core.next_epoch.max(value);
            }
        }
        for job in snap.jobs {
            let Ok(id) = job.id.parse::<u64>() else {
                tracing::warn!(id = %job.id, "skipping a stored job with a malformed id");
                continue;
            };
            let req = job
                .spec
                .as_ref()
                .and_then(|s| Requirement::parse(&s.requirements).ok())
                .unwrap_or_default();
            let progress = (!job.state().is_terminal()).then(|| {
                Arc::new(
                    watch::channel(Progress {
                        durable_seq: job.last_event_seq,
                        done: false,
                    })
                    .0,
                )
            });
            core.next_job = core.next_job.max(id + 1);
            core.jobs.insert(
                id,
                JobEntry {
                    job,
                    req,
                    attempt: None,
                    progress,
                },
            );
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
        for (&id, e) in &core.jobs {
            let fanout_parent = e
                .job
                .spec
                .as_ref()
                .is_some_and(|s| !s.fanout.is_empty() || s.shards > 1);
            if e.job.state() != JobState::Queued || fanout_parent {
                continue;
            }
            if !indexed.contains(&id) {
                tracing::warn!(
                    job = id,
                    "queued job missing from the pending index; re-adding"
                );
            }
            let spec = e.job.spec.clone().unwrap_or_default();
            core.pending.push(
                id,
                &spec.queue,
                spec.priority,
                e.job.submitted_at_ms,
                core.aging_ms(&spec.queue),
            );
        }
        for record in snap.agents {
            let attrs = matching::attributes(
                &record.name,
                record.capabilities.as_ref().unwrap_or(&Default::default()),
            );
            core.agents.insert(
                record.name.clone(),
                AgentEntry {
                    record,
                    attrs,
                    session: None,
                    last_seen_ms: started_ms,
                },
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
                core.dedup.insert(key.clone(), (id, e.job.submitted_at_ms));
            }
        }
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
        tracing::info!(
            schedules = core.schedules.len(),
            jobs = core.jobs.len(),
            pending = core.pending.len(),
            agents = core.agents.len(),
            "loaded durable state"
        );
        Ok(core)
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let tick = Duration::from_millis(200);
        let mut last_tick = Instant::now();
        loop {
            let mut step = Step::default();
            let first = rx.recv_timeout(tick);
            self.now = self.cfg.clock.now_ms();
            match first {
                Ok(cmd) => {
                    self.handle(cmd, &mut step);
                    for cmd in rx.try_iter().take(1023) {
                        self.handle(cmd, &mut step);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if last_tick.elapsed() >= tick {
                self.expire_leases(&mut step);
                self.fire_schedules(&mut step);
                last_tick = Instant::now();
            }
            if step.dispatch {
                self.dispatch(&mut step);
            }
            self.commit(step);
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
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
        }
        if let Err(e) = self.store.apply(step.writes) {
            // Memory is now ahead of disk; the only safe move is to stop and
            // let a restart reload what is durable. Nothing was acknowledged.
            tracing::error!(error = %e, "writing to the store failed; stopping");
            std::process::exit(70);
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
            Command::Submit { spec, reply } => {
                let r = self.submit(*spec, None, step);
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
            Command::Cancel { id, reply } => {
                let r = self.cancel(&id, step);
                step.reply(reply, r);
            }
            Command::Watch { id, reply } => {
                let r = self.watch(&id);
                step.reply(reply, r);
            }
            Command::ListAgents { reply } => {
                let r = Ok(self.agents.keys().map(|n| self.agent_view(n)).collect());
                step.reply(reply, r);
            }
            Command::SetAgentAdmin { name, admin, reply } => {
                let r = self.set_admin(&name, admin, step);
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
            Command::AcceptBaselines { req, reply } => {
                let r = self.accept_baselines(&req, step);
                step.reply(reply, r);
            }
            Command::AddSchedule { schedule, reply } => {
                let r = self.add_schedule(*schedule, step);
                step.reply(reply, r);
            }
            Command::ListSchedules { reply } => {
                let r = Ok(self
                    .schedules
                    .keys()
                    .map(|n| self.schedule_view(n))
                    .collect());
                step.reply(reply, r);
            }
            Command::GetSchedule { name, reply } => {
                let r = self.schedule_named(&name).map(|n| self.schedule_view(&n));
                step.reply(reply, r);
            }
            Command::SetSchedulePaused {
                name,
                paused,
                reply,
            } => {
                let r = self.schedule_named(&name).map(|n| {
                    if let Some((rec, _)) = self.schedules.get_mut(&n) {
                        rec.paused = paused;
                        step.writes.put_schedule(rec);
                    }
                    self.schedule_view(&n)
                });
                step.reply(reply, r);
            }
            Command::DeleteSchedule { name, reply } => {
                let r = self.schedule_named(&name).map(|n| {
                    let view = self.schedule_view(&n);
                    self.schedules.remove(&n);
                    step.writes.remove_schedule(&n);
                    view
                });
                step.reply(reply, r);
            }
            Command::RunScheduleNow { name, reply } => {
                let r = self.run_schedule_now(&name, step);
                step.reply(reply, r);
            }
            Command::GetBaselines { req, reply } => {
                let r = self.get_baselines(&req);
                step.reply(reply, r);
            }
            Command::Register {
                session,
                reg,
                tx,
                reply,
            } => {
                let r = self.register(session, reg, tx, step);
                step.reply(reply, r);
            }
            Command::Heartbeat { session, hb } => self.heartbeat(session, hb, step),
            Command::Update { session, update } => self.update(session, update, step),
            Command::Disconnected { session } => self.disconnected(session),
        }
    }

    // ------------------------------------------------------------ users

    /// Makes a job. `origin` names the schedule and slot that fired it.
    fn submit(
        &mut self,
        mut spec: JobSpec,
        origin: Option<(String, i64)>,
        step: &mut Step,
    ) -> Result<Job, Status> {
        let req = jobspec::validate(&mut spec, &self.cfg)?;
        if spec.dedup_key.len() > 256 {
            return Err(Status::invalid_argument("dedup key longer than 256 bytes"));
        }
        if let Some(&(id, at)) = self.dedup.get(&spec.dedup_key) {
            let window = self.cfg.dedup_window.as_millis() as i64;
            if !spec.dedup_key.is_empty() && self.now - at < window && self.jobs.contains_key(&id) {
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
                    "source dir '{dir}' is outside the allowed roots of every registered agent \
                     ({}); move it under a root or start an agent with --root",
                    roots.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
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
        let id = self.next_job;
        self.next_job += 1;
        let now = self.now;
        let queue = spec.queue.clone();
        let priority = spec.priority;
        if !spec.dedup_key.is_empty() {
            self.dedup.insert(spec.dedup_key.clone(), (id, now));
        }
        let (schedule, slot_ms) = origin.unwrap_or_default();
        let job = Job {
            id: id.to_string(),
            spec: Some(spec),
            state: JobState::Queued as i32,
            tests: Some(TestCounts::default()),
            submitted_at_ms: now,
            schedule,
            slot_ms,
            ..Default::default()
        };
        let progress = Arc::new(watch::channel(Progress::default()).0);
        self.jobs.insert(
            id,
            JobEntry {
                job,
                req,
                attempt: None,
                progress: Some(progress),
            },
        );
        self.set_state(id, JobState::Queued, "submitted", step);
        match fanout {
            // A fan-out parent runs nothing itself: its children do.
            Some(targets) => self.spawn_children(id, targets, step),
            None if sharded => self.spawn_collect(id, step),
            None => {
                self.pending
                    .push(id, &queue, priority, now, self.aging_ms(&queue));
                step.dispatch = true;
            }
        }
        Ok(self.view(id))
    }

    fn job_id(&self, id: &str) -> Result<u64, Status> {
        id.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| self.jobs.contains_key(n))
            .ok_or_else(|| Status::not_found(format!("no job with id '{id}'")))
    }

    fn list_jobs(&self, req: &pb::ListJobsRequest) -> Result<Vec<Job>, Status> {
        let state = match req.state.as_str() {
            "" => None,
            s => Some(JobState::from_label(s).ok_or_else(|| {
                let names: Vec<&str> = pb::ALL_STATES.iter().map(|s| s.label()).collect();
                Status::invalid_argument(format!(
                    "unknown state '{s}' (states: {})",
                    names.join(", ")
                ))
            })?),
        };
        if !req.queue.is_empty() && !self.cfg.queues.contains_key(&req.queue) {
            return Err(Status::invalid_argument(format!(
                "unknown queue '{}'",
                req.queue
            )));
        }
        let mut labels = Vec::new();
        for l in &req.labels {
            let (k, v) = l.split_once('=').ok_or_else(|| {
                Status::invalid_argument(format!("label filter '{l}' must look like key=value"))
            })?;
            labels.push((k, v));
        }
        let limit = match req.limit {
            0 => 100,
            n => n.min(10_000) as usize,
        };
        Ok(self
            .jobs
            .iter()
            .rev()
            .filter(|(_, e)| {
                let spec = e.job.spec.as_ref();
                state.is_none_or(|s| e.job.state() == s)
                    && (req.queue.is_empty() || spec.is_some_and(|s| s.queue == req.queue))
                    && labels.iter().all(|(k, v)| {
                        spec.and_then(|s| s.labels.get(*k))
                            .is_some_and(|have| have == v)
                    })
            })
            .take(limit)
            .map(|(&id, _)| self.view(id))
            .collect())
    }

    fn cancel(&mut self, id: &str, step: &mut Step) -> Result<Job, Status> {
        let id = self.job_id(id)?;
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
                    self.cancel(&child, step)?;
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

    fn watch(&self, id: &str) -> Result<WatchHandle, Status> {
        let id = self.job_id(id)?;
        let e = &self.jobs[&id];
        let progress = match &e.progress {
            Some(p) => p.subscribe(),
            None => {
                watch::channel(Progress {
                    durable_seq: e.job.last_event_seq,
                    done: true,
                })
                .1
            }
        };
        Ok(WatchHandle { job: id, progress })
    }

    /// The job as users see it, with warnings derived from the current fleet.
    fn view(&self, id: u64) -> Job {
        let e = &self.jobs[&id];
        let mut job = e.job.clone();
        if job.state() == JobState::Queued {
            if let Some(spec) = &job.spec {
                let anyone = self
                    .agents
                    .values()
                    .any(|a| fits(&e.req, spec, &a.attrs, a.caps()));
                if !anyone {
                    job.warnings.push(if self.agents.is_empty() {
                        "no agent has registered yet".to_string()
                    } else if spec.requirements.is_empty() {
                        "no registered agent can run this job (source dir outside their roots)"
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
                    .any(|a| a.takes_work() && fits(&e.req, spec, &a.attrs, a.caps()))
                {
                    job.warnings.push(
                        "every matching agent is offline, drained or quarantined".to_string(),
                    );
                }
            }
        }
        job
    }

    fn queues(&self) -> Vec<pb::Queue> {
        let mut running: BTreeMap<&str, u64> = BTreeMap::new();
        for e in self.jobs.values().filter(|e| e.attempt.is_some()) {
            if let Some(s) = &e.job.spec {
                *running.entry(s.queue.as_str()).or_default() += 1;
            }
        }
        self.cfg
            .queues
            .iter()
            .map(|(name, aging)| pb::Queue {
                name: name.clone(),
                pending: self.pending.pending_in(name),
                running: running.get(name.as_str()).copied().unwrap_or(0),
                aging_s: aging.as_secs(),
            })
            .collect()
    }

    fn accept_baselines(
        &mut self,
        req: &pb::AcceptBaselinesRequest,
        step: &mut Step,
    ) -> Result<Vec<pb::Baseline>, Status> {
        let id = self.job_id(&req.job_id)?;
        let job = &self.jobs[&id].job;
        if job.spec.as_ref().is_none_or(|s| s.kind != "benchmark") {
            return Err(Status::failed_precondition(format!(
                "job {id} is not a benchmark job"
            )));
        }
        if !job.state().is_terminal() {
            return Err(Status::failed_precondition(format!(
                "job {id} is still {}; accept it once it has finished",
                job.state().label()
            )));
        }
        if job.cases.is_empty() {
            return Err(Status::failed_precondition(format!(
                "job {id} has no case results to accept"
            )));
        }
        let who = match req.who.trim() {
            "" => "unknown",
            w => w,
        };
        let (cases, job_id) = (job.cases.clone(), job.id.clone());
        let changed = self.baselines.accept(&cases, &job_id, who, self.now);
        if changed.is_empty() {
            return Err(Status::failed_precondition(format!(
                "job {id} has no measured case to accept (all errored)"
            )));
        }
        for (key, b) in &changed {
            step.writes.put_baseline(key, b);
        }
        tracing::info!(job = id, who, cases = changed.len(), "baselines accepted");
        Ok(changed.into_iter().map(|(_, b)| b).collect())
    }

    // ------------------------------------------------------------ sharding

    /// A child of `parent` running `spec`, shown under `column`.
    fn spawn_child(
        &mut self,
        parent: u64,
        spec: JobSpec,
        column: &str,
        step: &mut Step,
    ) -> Result<String, Status> {
        let job = self.submit(spec, None, step)?;
        if let Some(e) = job
            .id
            .parse::<u64>()
            .ok()
            .and_then(|c| self.jobs.get_mut(&c))
        {
            e.job.parent = parent.to_string();
            e.job.column = column.to_string();
            step.touched.insert(job.id.parse().unwrap_or(0));
        }
        Ok(job.id)
    }

    /// A sharded job starts with one collect-only child; `split_shards` makes
    /// the shard children once it has collected.
    fn spawn_collect(&mut self, parent: u64, step: &mut Step) {
        let Some(spec) = self.jobs.get(&parent).and_then(|e| e.job.spec.clone()) else {
            return;
        };
        let mut collect = spec.clone();
        collect.shards = 0;
        collect.collect_only = true;
        collect.retry_failed = 0;
        collect.dedup_key.clear();
        collect.name = format!("{} [collect]", spec.name);
        match self.spawn_child(parent, collect, "collect", step) {
            Ok(id) => {
                if let Some(e) = self.jobs.get_mut(&parent) {
                    e.job.children = vec![id];
                    step.touched.insert(parent);
                }
            }
            Err(status) => {
                let why = format!("could not start the collection: {}", status.message());
                self.set_state(parent, JobState::Error, &why, step);
            }
        }
    }

    /// Partitions the collected node ids into shards of about equal time
    /// ([`crate::shard::partition`]) and makes one child per non-empty shard.
    fn split_shards(&mut self, parent: u64, collect: u64, step: &mut Step) {
        let Some(spec) = self.jobs.get(&parent).and_then(|e| e.job.spec.clone()) else {
            return;
        };
        let last = self.jobs.get(&collect).map_or(0, |e| e.job.last_event_seq);
        let attempt = self.jobs.get(&collect).map_or(0, |e| e.job.attempts);
        let events = match self.store.events(collect, 0, last) {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(error = %e, "reading the collected tests");
                return;
            }
        };
        let mut ids: Vec<String> = events
            .into_iter()
            .filter(|ev| ev.attempt == attempt)
            .filter_map(|ev| match ev.kind {
                Some(job_event::Kind::Test(t)) if t.outcome == "collected" => Some(t.nodeid),
                _ => None,
            })
            .collect();
        ids.sort();
        ids.dedup();
        // Durations recorded on the hardware profile the selection was collected
        // on (the shards' pool), else on any profile.
        let agent = self
            .jobs
            .get(&collect)
            .map(|c| c.job.agent.clone())
            .unwrap_or_default();
        let profile = agent_profile(&self.agents, &agent);
        let call_duration = |runs: Vec<pb::TestRun>| {
            runs.into_iter()
                .find(|r| r.when == "call")
                .map(|r| r.duration_s)
        };
        let known: Vec<(String, Option<f64>)> = ids
            .into_iter()
            .map(|id| {
                let d = self
                    .store
                    .test_history(&id, &profile, 20)
                    .ok()
                    .and_then(call_duration)
                    .or_else(|| {
                        self.store
                            .test_history(&id, "", 20)
                            .ok()
                            .and_then(call_duration)
                    });
                (id, d)
            })
            .collect();
        let n = spec.shards.max(1) as usize;
        let shards = crate::shard::partition(&known, n);
        let mut made = Vec::new();
        for (i, select) in shards.into_iter().enumerate() {
            if select.is_empty() {
                continue;
            }
            let mut child = spec.clone();
            child.shards = 0;
            child.dedup_key.clear();
            child.select = select;
            let column = format!("shard {}/{n}", i + 1);
            child.name = format!("{} [{column}]", spec.name);
            match self.spawn_child(parent, child, &column, step) {
                Ok(id) => made.push(id),
                Err(status) => tracing::error!(parent, %status, "could not start a shard"),
            }
        }
        if let Some(e) = self.jobs.get_mut(&parent) {
            e.job.children.extend(made);
            step.touched.insert(parent);
        }
    }

    // ------------------------------------------------------------ fan-out

    /// The columns a fan-out job covers: (profile or agent name, has an online
    /// agent, requirement that pins a child to it).
    fn fanout_targets(
        &self,
        spec: &JobSpec,
        req: &Requirement,
    ) -> Result<Vec<(String, bool, String)>, Status> {
        let by_profile = match spec.fanout.as_str() {
            "each-profile" => true,
            "each-agent" => false,
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown fanout '{other}': use each-profile or each-agent"
                )))
            }
        };
        let mut groups: BTreeMap<String, bool> = BTreeMap::new();
        for (name, a) in &self.agents {
            if fits(req, spec, &a.attrs, a.caps()) {
                let key = if by_profile {
                    a.caps().profile.clone()
                } else {
                    name.clone()
                };
                // Online = connected; a drained agent runs its child once undrained.
                *groups.entry(key).or_default() |= a.session.is_some();
            }
        }
        if groups.is_empty() {
            return Err(Status::failed_precondition(
                "no registered agent matches this job, so there is nothing to fan out to",
            ));
        }
        let attr = if by_profile { "profile" } else { "agent.name" };
        Ok(groups
            .into_iter()
            .map(|(column, online)| {
                let quoted = column.replace('\\', "\\\\").replace('"', "\\\"");
                let pin = format!("{attr} == \"{quoted}\"");
                (column, online, pin)
            })
            .collect())
    }

    /// Makes one child job per online target; the others are recorded as not run.
    fn spawn_children(
        &mut self,
        parent: u64,
        targets: Vec<(String, bool, String)>,
        step: &mut Step,
    ) {
        let Some(spec) = self.jobs.get(&parent).and_then(|e| e.job.spec.clone()) else {
            return;
        };
        let (mut children, mut not_run) = (Vec::new(), Vec::new());
        for (column, online, pin) in targets {
            if !online {
                not_run.push(column);
                continue;
            }
            let mut child = spec.clone();
            child.fanout.clear();
            child.dedup_key.clear();
            child.requirements = if spec.requirements.trim().is_empty() {
                pin
            } else {
                format!("({}) && {pin}", spec.requirements)
            };
            child.name = format!("{} [{column}]", spec.name);
            match self.submit(child, None, step) {
                Ok(job) => {
                    if let Some(e) = job
                        .id
                        .parse::<u64>()
                        .ok()
                        .and_then(|c| self.jobs.get_mut(&c))
                    {
                        e.job.parent = parent.to_string();
                        e.job.column = column;
                        step.touched.insert(job.id.parse().unwrap_or(0));
                    }
                    children.push(job.id);
                }
                Err(status) => not_run.push(format!("{column} ({})", status.message())),
            }
        }
        if let Some(e) = self.jobs.get_mut(&parent) {
            e.job.children = children;
            e.job.not_run = not_run;
            step.touched.insert(parent);
        }
        self.refresh_parent(parent, step);
    }

    /// Recomputes a fan-out parent's counts and state from its children.
    fn refresh_parent(&mut self, parent: u64, step: &mut Step) {
        let Some(p) = self.jobs.get(&parent) else {
            return;
        };
        if p.job.state().is_terminal() {
            return;
        }
        let sharded = p.job.spec.as_ref().is_some_and(|s| s.shards > 1);
        if sharded && p.job.children.len() == 1 {
            let collect = p.job.children[0].parse::<u64>().unwrap_or(0);
            if self
                .jobs
                .get(&collect)
                .is_some_and(|c| c.job.state() == JobState::Passed)
            {
                self.split_shards(parent, collect, step);
            }
        }
        let Some(p) = self.jobs.get(&parent) else {
            return;
        };
        let kids: Vec<u64> = p
            .job
            .children
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        let not_run = p.job.not_run.clone();
        let mut counts = TestCounts::default();
        let mut states = Vec::new();
        for k in &kids {
            if let Some(e) = self.jobs.get(k) {
                let c = e.job.tests.unwrap_or_default();
                counts.passed += c.passed;
                counts.failed += c.failed;
                counts.skipped += c.skipped;
                counts.xfailed += c.xfailed;
                counts.xpassed += c.xpassed;
                counts.errors += c.errors;
                counts.flaky += c.flaky;
                counts.total += c.total;
                states.push(e.job.state());
            }
        }
        let current = p.job.state();
        if let Some(e) = self.jobs.get_mut(&parent) {
            e.job.tests = Some(counts);
            step.touched.insert(parent);
        }
        let all_done = states.iter().all(|s| s.is_terminal());
        let next = if states.is_empty() {
            JobState::Error
        } else if all_done {
            if states.contains(&JobState::Failed) {
                JobState::Failed
            } else if states
                .iter()
                .any(|s| matches!(s, JobState::Error | JobState::TimedOut | JobState::Expired))
            {
                JobState::Error
            } else if states.contains(&JobState::Cancelled) {
                JobState::Cancelled
            } else {
                JobState::Passed
            }
        } else if states
            .iter()
            .any(|s| matches!(s, JobState::Assigned | JobState::Running) || s.is_terminal())
        {
            JobState::Running
        } else {
            JobState::Queued
        };
        if next == current && !(all_done || states.is_empty()) {
            return;
        }
        let done = states.iter().filter(|s| s.is_terminal()).count();
        let mut reason = format!("{done} of {} children finished", states.len());
        if all_done && !states.is_empty() {
            let mut by: BTreeMap<&str, usize> = BTreeMap::new();
            for s in &states {
                *by.entry(s.label()).or_default() += 1;
            }
            let parts: Vec<String> = by.iter().map(|(s, n)| format!("{n} {s}")).collect();
            reason = format!("children: {}", parts.join(", "));
        }
        if !not_run.is_empty() {
            reason += &format!("; not run on: {}", not_run.join(", "));
        }
        if states.is_empty() {
            reason = format!(
                "no online agent to run on; not run on: {}",
                not_run.join(", ")
            );
        }
        if next != current || next.is_terminal() {
            self.set_state(parent, next, &reason, step);
        }
    }

    // ------------------------------------------------------------ schedules

    fn schedule_named(&self, name: &str) -> Result<String, Status> {
        self.schedules
            .contains_key(name)
            .then(|| name.to_string())
            .ok_or_else(|| Status::not_found(format!("no schedule named '{name}'")))
    }

    fn add_schedule(
        &mut self,
        mut rec: pb::Schedule,
        step: &mut Step,
    ) -> Result<pb::Schedule, Status> {
        let name = rec.name.trim().to_string();
        check_name("schedule", &name)?;
        if self.schedules.contains_key(&name) {
            return Err(Status::already_exists(format!(
                "a schedule named '{name}' exists; delete it first or pick another name"
            )));
        }
        if rec.tz.trim().is_empty() {
            rec.tz = schedule::DEFAULT_TZ.to_string();
        }
        let cron = CronSpec::parse(&rec.cron, &rec.tz)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let misfire: Misfire = match rec.misfire.as_str() {
            "" => Misfire::FireOnce,
            m => m
                .parse()
                .map_err(|e: schedule::ScheduleError| Status::invalid_argument(e.to_string()))?,
        };
        let overlap: Overlap = match rec.overlap.as_str() {
            "" => Overlap::Skip,
            o => o
                .parse()
                .map_err(|e: schedule::ScheduleError| Status::invalid_argument(e.to_string()))?,
        };
        let mut spec = rec
            .spec
            .clone()
            .ok_or_else(|| Status::invalid_argument("a schedule needs a job spec (-f job.toml)"))?;
        jobspec::validate(&mut spec, &self.cfg)?;
        let stored = pb::Schedule {
            name: name.clone(),
            cron: rec.cron.trim().to_string(),
            tz: cron.tz().to_string(),
            spec: rec.spec,
            misfire: misfire.to_string(),
            overlap: overlap.to_string(),
            paused: rec.paused,
            created_ms: self.now,
            ..Default::default()
        };
        step.writes.put_schedule(&stored);
        tracing::info!(schedule = %name, cron = %stored.cron, tz = %stored.tz, "schedule added");
        self.schedules.insert(name.clone(), (stored, cron));
        Ok(self.schedule_view(&name))
    }

    fn schedule_view(&self, name: &str) -> pb::Schedule {
        let Some((rec, cron)) = self.schedules.get(name) else {
            return pb::Schedule::default();
        };
        let mut v = rec.clone();
        let from = rec.last_slot_ms.unwrap_or(i64::MIN).max(self.now);
        if let Some(next) = cron.next_after(from) {
            v.next_ms = next;
            v.next_local = cron.format_local(next);
        }
        if let Some(job) = rec
            .last_job_id
            .parse::<u64>()
            .ok()
            .and_then(|id| self.jobs.get(&id))
        {
            v.last_state = job.job.state().label().to_string();
        }
        v
    }

    fn run_schedule_now(&mut self, name: &str, step: &mut Step) -> Result<Job, Status> {
        let name = self.schedule_named(name)?;
        let spec = self.schedules[&name].0.spec.clone().unwrap_or_default();
        let job = self.submit(spec, Some((name.clone(), 0)), step)?;
        if let Some((rec, _)) = self.schedules.get_mut(&name) {
            rec.last_job_id = job.id.clone();
            rec.last_state.clear();
            step.writes.put_schedule(rec);
        }
        Ok(job)
    }

    /// Fires every schedule whose slot is due. The consumed slot is written in
    /// the same atomic batch as the job it made, so a slot fires at most once
    /// even across crashes.
    fn fire_schedules(&mut self, step: &mut Step) {
        let names: Vec<String> = self
            .schedules
            .iter()
            .filter(|(_, (rec, _))| !rec.paused)
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let Some((rec, cron)) = self.schedules.get(&name) else {
                continue;
            };
            let misfire = rec.misfire.parse().unwrap_or(Misfire::FireOnce);
            let decision = schedule::due(cron, rec.created_ms, rec.last_slot_ms, self.now, misfire);
            let (slot, fire) = match decision {
                Due::Nothing { .. } => continue,
                Due::Fire { slot, missed } => {
                    if missed > 0 {
                        tracing::warn!(schedule = %name, missed, "scheduler was down across slots; firing the latest once");
                    }
                    (slot, true)
                }
                Due::SkipTo { slot, missed } => {
                    tracing::warn!(schedule = %name, missed, "misfire policy skip: not firing missed slots");
                    (slot, false)
                }
            };
            let previous_running = rec
                .last_job_id
                .parse::<u64>()
                .ok()
                .and_then(|id| self.jobs.get(&id))
                .is_some_and(|e| !e.job.state().is_terminal());
            let overlap = rec.overlap.parse().unwrap_or(Overlap::Skip);
            let spec = rec.spec.clone().unwrap_or_default();
            let mut outcome = String::new();
            let mut job_id = None;
            if fire {
                match overlap.decide(previous_running) {
                    OverlapAction::Skip => {
                        outcome = "skipped: the previous run is still going".into();
                        tracing::info!(schedule = %name, slot, "{outcome}");
                    }
                    OverlapAction::Start | OverlapAction::Queue => {
                        match self.submit(spec, Some((name.clone(), slot)), step) {
                            Ok(job) => job_id = Some(job.id),
                            Err(status) => {
                                outcome = format!("refused: {}", status.message());
                                tracing::error!(schedule = %name, slot, "{outcome}");
                            }
                        }
                    }
                }
            }
            if let Some((rec, _)) = self.schedules.get_mut(&name) {
                rec.last_slot_ms = Some(slot);
                if let Some(id) = job_id {
                    rec.last_job_id = id;
                    rec.last_state.clear();
                } else if !outcome.is_empty() {
                    rec.last_state = outcome;
                }
                step.writes.put_schedule(rec);
            }
        }
    }

    fn get_baselines(
        &self,
        req: &pb::GetBaselinesRequest,
    ) -> Result<pb::GetBaselinesResponse, Status> {
        let r = req
            .attempt
            .clone()
            .ok_or_else(|| Status::invalid_argument("GetBaselines needs the caller's attempt"))?;
        let task = r.task_id.parse::<u64>().unwrap_or(0);
        let owner = self
            .leases
            .get(task)
            .map(|l| l.agent.clone())
            .ok_or_else(|| {
                Status::failed_precondition(format!("task {} has no live attempt", r.task_id))
            })?;
        self.leases
            .check(task, &r, &owner)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let profile = agent_profile(&self.agents, &owner);
        let wanted = req
            .keys
            .iter()
            .map(|k| (k.case.clone(), k.input_hash.clone()))
            .collect();
        Ok(pb::GetBaselinesResponse {
            baselines: self.baselines.for_profile(&profile, &wanted),
            profile,
        })
    }

    fn aging_ms(&self, queue: &str) -> u64 {
        self.cfg
            .queues
            .get(queue)
            .map_or(300_000, |d| d.as_millis() as u64)
    }

    // ------------------------------------------------------------ agents (admin)

    fn agent_view(&self, name: &str) -> Agent {
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
        v
    }

    fn set_admin(
        &mut self,
        name: &str,
        admin: AgentAdmin,
        step: &mut Step,
    ) -> Result<Agent, Status> {
        if admin == AgentAdmin::Unspecified {
            return Err(Status::invalid_argument(
                "say which state: active, drained or quarantined",
            ));
        }
        let a = self.agents.get_mut(name).ok_or_else(|| {
            Status::not_found(format!("no agent named '{name}' has ever registered"))
        })?;
        a.record.admin = admin as i32;
        step.writes.put_agent(&a.record);
        step.dispatch = true;
        Ok(self.agent_view(name))
    }

    // ------------------------------------------------------------ agents (session)

    fn register(
        &mut self,
        session: u64,
        reg: pb::Register,
        tx: AgentTx,
        step: &mut Step,
    ) -> Result<(), Status> {
        let name = reg.name.clone();
        check_name("agent", &name)?;
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
        let caps = reg.capabilities.clone().unwrap_or_default();
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
        step.dispatch = true;
        Ok(())
    }

    fn session_agent(&mut self, session: u64) -> Option<(String, AgentTx)> {
        let name = self.sessions.get(&session)?.clone();
        let a = self.agents.get_mut(&name)?;
        a.last_seen_ms = self.now;
        let tx = a.session.as_ref()?.tx.clone();
        Some((name, tx))
    }

    fn heartbeat(&mut self, session: u64, hb: pb::Heartbeat, step: &mut Step) {
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

    fn disconnected(&mut self, session: u64) {
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

    fn update(&mut self, session: u64, u: pb::TaskUpdate, step: &mut Step) {
        let Some((name, tx)) = self.session_agent(session) else {
            return;
        };
        let r = u.attempt.clone().unwrap_or_default();
        let reject = |step: &mut Step, message: String, abandon: bool| {
            step.send(
                &tx,
                scheduler_message::Msg::Reject(pb::Reject {
                    attempt: Some(r.clone()),
                    seq: u.seq,
                    message,
                    abandon,
                }),
            );
        };
        let Ok(task) = r.task_id.parse::<u64>() else {
            return reject(step, format!("unknown task '{}'", r.task_id), true);
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
        match &u.kind {
            None => return reject(step, "empty task update".into(), false),
            Some(task_update::Kind::Log(chunk)) if chunk.data.len() > pb::MAX_LOG_CHUNK => {
                let message = format!(
                    "log chunk of {} bytes is over the {} byte limit; split it",
                    chunk.data.len(),
                    pb::MAX_LOG_CHUNK
                );
                return reject(step, message, false);
            }
            Some(_) => {}
        }
        att.applied_seq = u.seq;
        let attempt = att.attempt;
        step.touched.insert(task);
        match u.kind {
            Some(task_update::Kind::Started(_)) if e.job.state() == JobState::Assigned => {
                e.job.started_at_ms = self.now;
                self.set_state(task, JobState::Running, "", step);
            }
            Some(task_update::Kind::Started(_)) => {}
            Some(task_update::Kind::Log(chunk)) => {
                self.push_event(task, attempt, job_event::Kind::Log(chunk), step);
            }
            Some(task_update::Kind::Case(mut c)) => {
                c.profile = agent_profile(&self.agents, &name);
                let trusted = e.job.spec.as_ref().is_some_and(|s| {
                    s.queue == "nightly" || s.benchmark.as_ref().is_some_and(|b| b.trusted)
                });
                e.job.cases.push(c.clone());
                if trusted {
                    if let Some((key, b)) = self.baselines.record_trusted(&c, &e.job.id, self.now) {
                        step.writes.put_baseline(&key, &b);
                    }
                }
                self.push_event(task, attempt, job_event::Kind::Case(c), step);
            }
            Some(task_update::Kind::Test(t)) => {
                e.job
                    .tests
                    .get_or_insert_with(Default::default)
                    .record(&t.outcome);
                let run = pb::TestRun {
                    job_id: e.job.id.clone(),
                    time_ms: self.now,
                    profile: agent_profile(&self.agents, &name),
                    agent: name.clone(),
                    attempt,
                    outcome: t.outcome.clone(),
                    duration_s: t.duration_s,
                    when: t.when.clone(),
                };
                let test_id = t.nodeid.clone();
                // A fan-out parent shows its children's results live, marked with the column.
                let collected = t.outcome == "collected";
                let forward = self.jobs.get(&task).and_then(|e| {
                    if collected {
                        return None;
                    }
                    let parent = e.job.parent.parse::<u64>().ok()?;
                    let mut ft = t.clone();
                    ft.nodeid = format!("{} [{}]", t.nodeid, e.job.column);
                    Some((parent, ft))
                });
                self.push_event(task, attempt, job_event::Kind::Test(t), step);
                let seq = self.jobs.get(&task).map_or(0, |e| e.job.last_event_seq);
                if !collected {
                    step.writes.put_test_run(&test_id, task, seq, &run);
                }
                if let Some((parent, ft)) = forward {
                    self.push_event(parent, 0, job_event::Kind::Test(ft), step);
                    self.refresh_parent(parent, step);
                }
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

    fn finish(&mut self, task: u64, f: pb::Finished, step: &mut Step) {
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
        self.leases.release(task);
        if let Some(e) = self.jobs.get_mut(&task) {
            e.attempt = None;
        }
        self.set_state(task, state, &f.reason, step);
        step.dispatch = true;
    }

    /// The attempt of `task` is gone (agent lost or restarted): retry or give up.
    fn lose(&mut self, task: u64, why: &str, step: &mut Step) {
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
        } else if e.job.attempts <= retries {
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

    fn expire_leases(&mut self, step: &mut Step) {
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

    /// Hands pending jobs to agents with free slots, highest rank first.
    fn dispatch(&mut self, step: &mut Step) {
        let mut free: Vec<(String, usize)> = self
            .agents
            .iter()
            .filter(|(_, a)| a.takes_work())
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
                fits(&e.req, spec, &a.attrs, a.caps())
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

    fn assign(&mut self, id: u64, agent: &str, step: &mut Step) {
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

    // ------------------------------------------------------------ events

    fn set_state(&mut self, id: u64, state: JobState, reason: &str, step: &mut Step) {
        let Some(e) = self.jobs.get_mut(&id) else {
            return;
        };
        e.job.state = state as i32;
        e.job.reason = reason.to_string();
        if state.is_terminal() {
            e.job.finished_at_ms = self.now;
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

    fn push_event(&mut self, id: u64, attempt: u32, kind: job_event::Kind, step: &mut Step) {
        let Some(e) = self.jobs.get_mut(&id) else {
            return;
        };
        let done = matches!(&kind, job_event::Kind::State(s) if s.state().is_terminal());
        e.job.last_event_seq += 1;
        let seq = e.job.last_event_seq;
        step.writes.put_event(
            id,
            &JobEvent {
                seq,
                time_ms: self.now,
                attempt,
                kind: Some(kind),
            },
        );
        step.touched.insert(id);
        let progress = if done {
            e.progress.take()
        } else {
            e.progress.clone()
        };
        if let Some(p) = progress {
            step.after.push(Box::new(move |ok| {
                if ok {
                    p.send_modify(|v| {
                        v.durable_seq = v.durable_seq.max(seq);
                        v.done |= done;
                    });
                }
            }));
        }
    }
}

/// The hardware profile an agent reported ("" for an unknown agent). Takes the
/// agent map alone so callers may hold other parts of the core mutably.
fn agent_profile(agents: &BTreeMap<String, AgentEntry>, name: &str) -> String {
    agents
        .get(name)
        .map(|a| a.caps().profile.clone())
        .unwrap_or_default()
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
            "bad {what} name '{name}': use 1-128 of A-Z a-z 0-9 . _ -"
        )))
    }
}

fn attempt_ref(id: u64, att: &AttemptRecord) -> AttemptRef {
    AttemptRef {
        task_id: id.to_string(),
        attempt: att.attempt,
        epoch: att.epoch,
    }
}
