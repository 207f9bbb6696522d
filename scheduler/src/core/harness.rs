//! Drives [`Core`] directly for the domain unit tests: a temporary sled store,
//! a clock the test moves, no gRPC and no processes. Every call is one loop
//! turn ([`Core::turn`]), so a test sees exactly what the loop would do,
//! including that replies and agent messages leave only after the flush.

use super::*;
use crate::auth::{AgentProof, Role};
use crate::clock::Clock;
use msfleet_proto::{source, Capabilities, Source};
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::mpsc::error::TryRecvError;

/// 2025-06-15T15:06:40Z: any fixed instant will do.
pub const T0: i64 = 1_750_000_000_000;

#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    cfg: Arc<Config>,
    core: Option<Core>,
    next_session: u64,
    pub tokens: Arc<TokenIndex>,
    /// Capacity of the session streams of agents registered from now on.
    pub agent_queue: usize,
}

/// The person every harness call submits and cancels as.
pub const SUBMITTER: &str = "tester";

pub fn person(name: &str, role: Role) -> Principal {
    Principal::Person {
        name: name.into(),
        role,
    }
}

/// An agent's token credential for `name`, with what the admin set on it.
pub fn agent_token(name: &str, labels: &[(&str, &str)], profile: &str) -> Principal {
    Principal::Agent {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        profile: profile.into(),
        proof: AgentProof::Token,
    }
}

/// One agent session as the core sees it: its id and what the core sent it.
pub struct Conn {
    pub session: u64,
    rx: AgentRx,
}

impl Conn {
    /// The session's liveness handle, as the gRPC layer holds it.
    pub fn heard(&self) -> super::Heard {
        self.rx.heard()
    }

    /// The status the core ended this session's stream with, skipping messages.
    pub fn next_status(&mut self) -> Option<Status> {
        loop {
            match self.rx.blocking_recv()? {
                Ok(_) => continue,
                Err(status) => return Some(status),
            }
        }
    }
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with(|_| {})
    }

    /// A harness whose config `tune` adjusts (lease timeout, retries, ...).
    /// The restart grace is zero unless `tune` sets one.
    pub fn with(tune: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
        let mut cfg = Config::new(dir.path());
        cfg.clock = clock.clone();
        cfg.restart_grace = Duration::ZERO;
        tune(&mut cfg);
        let mut h = Harness {
            dir,
            clock,
            cfg: Arc::new(cfg),
            core: None,
            next_session: 1,
            tokens: Arc::new(TokenIndex::default()),
            agent_queue: AGENT_QUEUE,
        };
        h.open();
        h
    }

    fn open(&mut self) {
        // sled releases its file lock from a background thread shortly after
        // the last handle drops, so a reopen right after a drop can find it
        // still held (seen once in ~2000 fuzz cases): retry for a while.
        let mut tries = 0;
        let store = loop {
            match Store::open(self.dir.path(), 8 << 20) {
                Ok(store) => break store,
                Err(e) if tries < 200 && e.to_string().contains("could not acquire lock") => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("open store: {e:?}"),
            }
        };
        self.core =
            Some(Core::load(self.cfg.clone(), store, self.tokens.clone()).expect("load core"));
    }

    pub fn core(&self) -> &Core {
        self.core.as_ref().expect("core loaded")
    }

    fn core_mut(&mut self) -> &mut Core {
        self.core.as_mut().expect("core loaded")
    }

    /// Stops the core (as a crash after the last flush would) and loads it
    /// again from what is durable. Agent sessions do not survive this.
    pub fn reload(&mut self) {
        self.core = None;
        self.open();
    }

    pub fn set_now(&self, ms: i64) {
        self.clock.0.store(ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: i64) {
        self.clock.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// One turn with one command; waits for its (durable) answer.
    pub fn call<T: Send + 'static>(
        &mut self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.core_mut().turn(vec![make(tx)], false);
        rx.blocking_recv().expect("the core answers every call")
    }

    /// One turn with a command that has no answer.
    pub fn send(&mut self, cmd: Command) {
        self.core_mut().turn(vec![cmd], false);
    }

    /// One turn on the loop's tick: lease expiry and due schedules.
    pub fn tick(&mut self) {
        self.core_mut().turn(Vec::new(), true);
    }

    pub fn submit(&mut self, spec: JobSpec) -> Result<Job, Status> {
        self.call(|reply| Command::Submit {
            spec: Box::new(spec),
            by: SUBMITTER.into(),
            caller: None,
            reply,
        })
    }

    pub fn job(&mut self, id: &str) -> Job {
        let id = id.to_string();
        self.call(|reply| Command::GetJob { id, reply })
            .expect("job exists")
    }

    pub fn state(&mut self, id: &str) -> JobState {
        self.job(id).state()
    }

    pub fn cancel(&mut self, id: &str) -> Result<Job, Status> {
        self.cancel_as(id, person(SUBMITTER, Role::Submitter))
    }

    pub fn cancel_as(&mut self, id: &str, who: Principal) -> Result<Job, Status> {
        let id = id.to_string();
        self.call(|reply| Command::Cancel { id, who, reply })
    }

    pub fn jobs(&mut self) -> Vec<Job> {
        let req = pb::ListJobsRequest {
            limit: 10_000,
            ..Default::default()
        };
        self.list(req).expect("list jobs").jobs
    }

    pub fn list(&mut self, req: pb::ListJobsRequest) -> Result<pb::ListJobsResponse, Status> {
        self.call(|reply| Command::ListJobs { req, reply })
    }

    /// The states a job's durable event log went through, in order.
    pub fn state_log(&self, id: &str) -> Vec<JobState> {
        self.events(id)
            .into_iter()
            .filter_map(|ev| match ev.kind {
                Some(job_event::Kind::State(s)) => Some(s.state()),
                _ => None,
            })
            .collect()
    }

    pub fn events(&self, id: &str) -> Vec<JobEvent> {
        let id: u64 = id.parse().expect("numeric job id");
        self.core()
            .store
            .events(id, 0, u64::MAX)
            .expect("read events")
    }

    /// Registers an agent (`slots` slots, roots `/srv`, the given profile and
    /// labels) as process `instance`.
    pub fn register_as(
        &mut self,
        name: &str,
        instance: &str,
        caps: Capabilities,
        resume: Vec<AttemptRef>,
    ) -> Result<Conn, Status> {
        self.register_with(name, instance, caps, resume, agent_token(name, &[], ""))
    }

    /// Registers with an explicit credential (another agent's, a person's, ...).
    pub fn register_with(
        &mut self,
        name: &str,
        instance: &str,
        caps: Capabilities,
        resume: Vec<AttemptRef>,
        who: Principal,
    ) -> Result<Conn, Status> {
        let session = self.next_session;
        self.next_session += 1;
        let (tx, rx) = agent_channel(self.agent_queue);
        let reg = pb::Register {
            name: name.to_string(),
            capabilities: Some(caps),
            instance_id: instance.to_string(),
            resume,
        };
        self.call(|reply| Command::Register {
            session,
            reg,
            who,
            tx,
            reply,
        })?;
        Ok(Conn { session, rx })
    }

    pub fn register(&mut self, name: &str, profile: &str, slots: u32) -> Conn {
        self.register_as(name, &format!("{name}-1"), caps(profile, slots), Vec::new())
            .expect("register")
    }

    /// Everything the core has sent `conn` so far. A barrier call first makes
    /// sure the callbacks of every earlier turn have run.
    pub fn messages(&mut self, conn: &mut Conn) -> Vec<scheduler_message::Msg> {
        self.call(|reply| Command::ListQueues { reply })
            .expect("barrier");
        let mut out = Vec::new();
        loop {
            match conn.rx.try_recv() {
                Ok(Ok(m)) => out.extend(m.msg),
                Ok(Err(_)) => return out,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }

    /// The attempts assigned to `conn` since the last look.
    pub fn assignments(&mut self, conn: &mut Conn) -> Vec<pb::Assignment> {
        assignments_in(self.messages(conn))
    }

    /// Keeps `conn`'s one slot busy with a job pinned to it by `requirements`,
    /// so the next job meant for that agent waits in the queue.
    pub fn fill_slot(&mut self, conn: &mut Conn, requirements: &str) {
        let mut busy = spec();
        busy.requirements = requirements.into();
        self.submit(busy).expect("the pinned job is accepted");
        assert_eq!(self.assignments(conn).len(), 1, "the slot is taken");
    }

    /// Sends one task update; returns what the core answered (ack, reject, ...).
    pub fn update(
        &mut self,
        conn: &mut Conn,
        attempt: &AttemptRef,
        seq: u64,
        kind: task_update::Kind,
    ) -> Vec<scheduler_message::Msg> {
        let update = pb::TaskUpdate {
            attempt: Some(attempt.clone()),
            seq,
            kind: Some(kind),
        };
        self.send(Command::Update {
            session: conn.session,
            update,
        });
        self.messages(conn)
    }

    /// Sends several task updates (seq, kind) in ONE turn, as a burst the
    /// loop drains at once (an agent resending its outbox after a reconnect);
    /// returns what the core answered.
    pub fn update_batch(
        &mut self,
        conn: &mut Conn,
        attempt: &AttemptRef,
        updates: Vec<(u64, task_update::Kind)>,
    ) -> Vec<scheduler_message::Msg> {
        let batch = updates
            .into_iter()
            .map(|(seq, kind)| Command::Update {
                session: conn.session,
                update: pb::TaskUpdate {
                    attempt: Some(attempt.clone()),
                    seq,
                    kind: Some(kind),
                },
            })
            .collect();
        self.core_mut().turn(batch, false);
        self.messages(conn)
    }

    /// Runs an assigned attempt to the end: started, then finished with `outcome`.
    pub fn finish(&mut self, conn: &mut Conn, a: &AttemptRef, outcome: Outcome) {
        self.update(conn, a, 1, started());
        self.update(conn, a, 2, finished(outcome));
    }

    /// Sends update `seq` of an attempt: finished with `outcome` and `reason`.
    pub fn finish_with(
        &mut self,
        conn: &mut Conn,
        a: &AttemptRef,
        seq: u64,
        outcome: Outcome,
        reason: &str,
    ) {
        let kind = task_update::Kind::Finished(pb::Finished {
            outcome: outcome as i32,
            reason: reason.into(),
            exit_code: 0,
            ..Default::default()
        });
        self.update(conn, a, seq, kind);
    }

    /// An admin ("ana") sets agent `name`'s state, without a reason.
    pub fn set_admin(&mut self, name: &str, admin: AgentAdmin) -> Result<Agent, Status> {
        let name = name.to_string();
        self.call(|reply| Command::SetAgentAdmin {
            name,
            admin,
            drain_deadline_in_ms: 0,
            by: "ana".into(),
            reason: String::new(),
            reply,
        })
    }

    /// A heartbeat from `conn` saying it runs `running`.
    pub fn heartbeat(&mut self, conn: &Conn, running: Vec<AttemptRef>) {
        self.send(Command::Heartbeat {
            session: conn.session,
            hb: pb::Heartbeat { running },
        });
    }

    pub fn disconnect(&mut self, conn: &Conn) {
        self.send(Command::Disconnected {
            session: conn.session,
        });
    }
}

/// A pytest job over a directory under `/srv`.
pub fn spec() -> JobSpec {
    JobSpec {
        kind: "pytest".into(),
        source: Some(Source {
            kind: Some(source::Kind::Dir("/srv/suite".into())),
        }),
        ..Default::default()
    }
}

/// An agent's capabilities: roots `/srv`, `slots`, a fixed profile.
pub fn caps(profile: &str, slots: u32) -> Capabilities {
    Capabilities {
        roots: vec!["/srv".into()],
        profile: profile.into(),
        slots,
        ..Default::default()
    }
}

pub fn started() -> task_update::Kind {
    task_update::Kind::Started(pb::Started {})
}

pub fn finished(outcome: Outcome) -> task_update::Kind {
    task_update::Kind::Finished(pb::Finished {
        outcome: outcome as i32,
        reason: format!("{outcome:?}"),
        exit_code: 0,
        ..Default::default()
    })
}

/// The assignments among messages sent to an agent.
pub fn assignments_in(msgs: Vec<scheduler_message::Msg>) -> Vec<pb::Assignment> {
    msgs.into_iter()
        .filter_map(|m| match m {
            scheduler_message::Msg::Assign(a) => Some(a),
            _ => None,
        })
        .collect()
}

pub fn test_result(nodeid: &str, outcome: &str) -> task_update::Kind {
    task_update::Kind::Test(pb::TestResult {
        nodeid: nodeid.into(),
        when: "call".into(),
        outcome: outcome.into(),
        duration_s: 0.5,
        ..Default::default()
    })
}

pub fn is_ack(m: &scheduler_message::Msg, seq: u64) -> bool {
    matches!(m, scheduler_message::Msg::Ack(a) if a.seq == seq)
}

/// The reject among `msgs`, if any: (message, abandon).
pub fn reject(msgs: &[scheduler_message::Msg]) -> Option<(String, bool)> {
    msgs.iter().find_map(|m| match m {
        scheduler_message::Msg::Reject(r) => Some((r.message.clone(), r.abandon)),
        _ => None,
    })
}
