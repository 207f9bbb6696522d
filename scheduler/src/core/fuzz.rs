//! Fuzz target for the core's handling of agent messages
//! (`cargo test fuzz_core`; cases from `MSFLEET_FUZZ_CASES`).
//!
//! Each case registers 1-3 agents, submits a few jobs, then applies a random
//! sequence of Register / Heartbeat / Update (any kind, real or made-up
//! attempt refs, right or wrong sequence numbers, oversized logs) /
//! Disconnected / Cancel / Submit / health reports (ok or degraded) / health
//! checks / admin states / clock advance + tick / reload / archive passes
//! (finished jobs into the store's chunks), one loop turn each,
//! and after every step checks:
//!
//! * each job's live attempt agrees with the lease table (so at most one live
//!   attempt per task), and every lease belongs to a live attempt;
//! * a live attempt holds as many devices as its job asks for, and no device
//!   of an agent is held by two live attempts (agent a2 has four NPUs and
//!   three slots; some jobs ask for two);
//! * a terminal job has no attempt and never changes state again;
//! * test counts never decrease within an attempt;
//! * every job's durable event seqs are exactly 1..=last_event_seq;
//! * a refusal sent to an agent has a short message;
//! * a reload of the store, or an archive pass, gives the same jobs.

use super::harness::*;
use super::*;
use msfleet_proto::fuzz::{fuzz_config, MAX_ERROR_BYTES};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const AGENTS: usize = 3;

/// Which attempt an update or heartbeat names.
#[derive(Debug, Clone)]
enum RefPick {
    /// One the core assigned (any agent's), by index among those seen.
    Known(usize),
    /// A known one with another epoch.
    WrongEpoch(usize, u64),
    /// A known one with another attempt number.
    WrongAttempt(usize, u32),
    /// A made-up task id.
    Junk(String),
    /// No attempt ref at all.
    Missing,
}

#[derive(Debug, Clone)]
enum SeqPick {
    /// The next one the core expects for that attempt.
    Next,
    Random(u64),
}

#[derive(Debug, Clone)]
enum KindPick {
    Empty,
    Started,
    Log(usize),
    Test(&'static str, &'static str, &'static str),
    /// A batch of test results (`TaskUpdate.tests`); empty is refused.
    Tests(Vec<(&'static str, &'static str, &'static str)>),
    /// Outcome, and whether the agent refused the assignment (no free slot).
    Finished(i32, bool),
    Case(&'static str),
}

#[derive(Debug, Clone)]
enum Op {
    Register {
        agent: usize,
        restart: bool,
        resume: Vec<RefPick>,
    },
    Heartbeat {
        agent: usize,
        running: Vec<RefPick>,
    },
    Update {
        agent: usize,
        r: RefPick,
        seq: SeqPick,
        kind: KindPick,
    },
    Disconnect {
        agent: usize,
    },
    Cancel {
        job: usize,
    },
    Submit {
        retries: u32,
    },
    /// A probe report from the agent, degraded or not.
    Health {
        agent: usize,
        degraded: bool,
    },
    /// `msctl agent check` on the agent.
    Check {
        agent: usize,
    },
    /// An admin sets the agent's state (0 active, 1 drained, 2 quarantined).
    Admin {
        agent: usize,
        state: u8,
    },
    Advance {
        ms: i64,
        tick: bool,
    },
    Reload,
    /// The retention thread's archive pass, over every finished job (also
    /// those still in the core's memory, which may write them again).
    Archive,
}

fn ref_pick() -> impl Strategy<Value = RefPick> {
    prop_oneof![
        8 => any::<usize>().prop_map(RefPick::Known),
        1 => (any::<usize>(), 1..5u64).prop_map(|(i, d)| RefPick::WrongEpoch(i, d)),
        1 => (any::<usize>(), 1..3u32).prop_map(|(i, d)| RefPick::WrongAttempt(i, d)),
        1 => prop_oneof![
            Just(String::new()),
            Just("abc".to_string()),
            Just("-1".to_string()),
            Just("99999".to_string()),
            Just(u64::MAX.to_string()),
            (1..6u64).prop_map(|n| n.to_string()),
            Just("x".repeat(5000)),
        ]
        .prop_map(RefPick::Junk),
        1 => Just(RefPick::Missing),
    ]
}

fn kind_pick() -> impl Strategy<Value = KindPick> {
    let when = prop::sample::select(&["call", "setup", "teardown", "collect", ""][..]);
    let outcome = prop::sample::select(
        &[
            "passed",
            "failed",
            "skipped",
            "xfailed",
            "xpassed",
            "error",
            "flaky",
            "rerun",
            "collected",
            "bogus",
            "",
        ][..],
    );
    let nodeid = prop::sample::select(&["t.py::a", "t.py::b", "t.py::c", ""][..]);
    prop_oneof![
        1 => Just(KindPick::Empty),
        3 => Just(KindPick::Started),
        2 => prop_oneof![
            Just(0usize),
            Just(10),
            Just(pb::MAX_LOG_CHUNK),
            Just(pb::MAX_LOG_CHUNK + 1),
            Just(200_000),
        ]
        .prop_map(KindPick::Log),
        4 => (nodeid.clone(), when.clone(), outcome.clone()).prop_map(|(n, w, o)| KindPick::Test(n, w, o)),
        2 => prop::collection::vec((nodeid, when, outcome), 0..6).prop_map(KindPick::Tests),
        2 => (0..8i32, prop::bool::weighted(0.25)).prop_map(|(o, r)| KindPick::Finished(o, r)),
        1 => prop::sample::select(&["case-a", "", "pass", "regression"][..]).prop_map(KindPick::Case),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let agent = 0..AGENTS;
    prop_oneof![
        2 => (agent.clone(), any::<bool>(), prop::collection::vec(ref_pick(), 0..3))
            .prop_map(|(agent, restart, resume)| Op::Register { agent, restart, resume }),
        1 => (agent.clone(), prop::collection::vec(ref_pick(), 0..3))
            .prop_map(|(agent, running)| Op::Heartbeat { agent, running }),
        10 => (
            agent.clone(),
            ref_pick(),
            prop_oneof![4 => Just(SeqPick::Next), 1 => (0..6u64).prop_map(SeqPick::Random)],
            kind_pick(),
        )
            .prop_map(|(agent, r, seq, kind)| Op::Update { agent, r, seq, kind }),
        1 => agent.clone().prop_map(|agent| Op::Disconnect { agent }),
        1 => any::<usize>().prop_map(|job| Op::Cancel { job }),
        1 => (0..3u32).prop_map(|retries| Op::Submit { retries }),
        1 => (agent.clone(), any::<bool>())
            .prop_map(|(agent, degraded)| Op::Health { agent, degraded }),
        1 => agent.clone().prop_map(|agent| Op::Check { agent }),
        1 => (agent, 0..3u8).prop_map(|(agent, state)| Op::Admin { agent, state }),
        2 => (prop_oneof![Just(0i64), 1..2_000i64, 2_000..5_000i64], any::<bool>())
            .prop_map(|(ms, tick)| Op::Advance { ms, tick }),
        1 => Just(Op::Reload),
        1 => Just(Op::Archive),
    ]
}

/// The fuzzer's side of the world: agent sessions and what it has seen.
struct World {
    h: Harness,
    conns: Vec<Option<Conn>>,
    instances: Vec<u32>,
    /// Every attempt ref the core assigned, in order.
    known: Vec<AttemptRef>,
    jobs: Vec<String>,
    /// Per job: its state, and (attempt number, counts) as last checked.
    last: BTreeMap<u64, (JobState, u32, TestCounts)>,
}

fn agent_name(i: usize) -> String {
    format!("a{i}")
}

fn agent_caps(i: usize) -> pb::Capabilities {
    match i {
        0 => caps("cpu", 2),
        1 => caps("cpu", 1),
        // Three slots and four NPUs: jobs asking for two contend for them.
        _ => {
            let mut c = caps("npu", 3);
            c.npus = (0..4)
                .map(|id| pb::Npu {
                    id,
                    hbm_mb: 32768,
                    health: "OK".into(),
                    ..Default::default()
                })
                .collect();
            c
        }
    }
}

impl World {
    fn new(agents: usize, jobs: &[u32]) -> Result<World, TestCaseError> {
        let mut w = World {
            h: Harness::with(|c| {
                c.lease_timeout = Duration::from_secs(3);
                // Finished jobs leave memory at once: every read of one
                // goes through the store.
                c.finished_cache = 0;
            }),
            conns: (0..AGENTS).map(|_| None).collect(),
            instances: vec![1; AGENTS],
            known: Vec::new(),
            jobs: Vec::new(),
            last: BTreeMap::new(),
        };
        for i in 0..agents {
            w.register(i, false, Vec::new());
        }
        for &retries in jobs {
            w.submit(retries);
        }
        w.after_step()?;
        Ok(w)
    }

    fn submit(&mut self, retries: u32) {
        let mut s = spec();
        s.retries = Some(retries);
        if retries == 2 {
            // Two NPUs: only agent a2 has them (it may not be registered yet).
            s.npus = 2;
            s.allow_unmatched = true;
        }
        let job = self.h.submit(s).expect("a plain job is accepted");
        self.jobs.push(job.id);
    }

    fn pick(&self, p: &RefPick) -> Option<AttemptRef> {
        let known = |i: usize| self.known.get(i % self.known.len().max(1)).cloned();
        match p {
            RefPick::Known(i) => known(*i),
            RefPick::WrongEpoch(i, d) => known(*i).map(|r| AttemptRef {
                epoch: r.epoch.wrapping_add(*d),
                ..r
            }),
            RefPick::WrongAttempt(i, d) => known(*i).map(|r| AttemptRef {
                attempt: r.attempt.wrapping_add(*d),
                ..r
            }),
            RefPick::Junk(task_id) => Some(AttemptRef {
                task_id: task_id.clone(),
                attempt: 1,
                epoch: 1,
            }),
            RefPick::Missing => None,
        }
    }

    fn register(&mut self, agent: usize, restart: bool, resume: Vec<RefPick>) {
        if restart {
            self.instances[agent] += 1;
        }
        let name = agent_name(agent);
        let instance = format!("{name}-{}", self.instances[agent]);
        let resume = resume.iter().filter_map(|p| self.pick(p)).collect();
        if let Ok(conn) = self
            .h
            .register_as(&name, &instance, agent_caps(agent), resume)
        {
            self.conns[agent] = Some(conn);
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Register {
                agent,
                restart,
                resume,
            } => self.register(*agent, *restart, resume.clone()),
            Op::Heartbeat { agent, running } => {
                let running = running.iter().filter_map(|p| self.pick(p)).collect();
                if let Some(c) = &self.conns[*agent] {
                    let session = c.session;
                    self.h.send(Command::Heartbeat {
                        session,
                        hb: pb::Heartbeat { running },
                    });
                }
            }
            Op::Update {
                agent,
                r,
                seq,
                kind,
            } => {
                let Some(c) = &self.conns[*agent] else {
                    return Ok(());
                };
                let session = c.session;
                let attempt = self.pick(r);
                let seq = match seq {
                    SeqPick::Random(n) => *n,
                    SeqPick::Next => attempt
                        .as_ref()
                        .and_then(|r| r.task_id.parse::<u64>().ok())
                        .and_then(|t| self.h.core().jobs.get(&t))
                        .and_then(|e| e.attempt.as_ref())
                        .map_or(1, |a| a.applied_seq + 1),
                };
                let kind = match kind {
                    KindPick::Empty => None,
                    KindPick::Started => Some(started()),
                    KindPick::Log(n) => Some(task_update::Kind::Log(pb::LogChunk {
                        stream: "stdout".into(),
                        data: vec![b'x'; *n],
                    })),
                    KindPick::Test(nodeid, when, outcome) => {
                        Some(task_update::Kind::Test(pb::TestResult {
                            nodeid: nodeid.to_string(),
                            when: when.to_string(),
                            outcome: outcome.to_string(),
                            duration_s: 0.25,
                            ..Default::default()
                        }))
                    }
                    KindPick::Tests(results) => Some(task_update::Kind::Tests(pb::TestResults {
                        results: results
                            .iter()
                            .map(|(nodeid, when, outcome)| pb::TestResult {
                                nodeid: nodeid.to_string(),
                                when: when.to_string(),
                                outcome: outcome.to_string(),
                                duration_s: 0.25,
                                ..Default::default()
                            })
                            .collect(),
                    })),
                    KindPick::Finished(o, refused) => {
                        Some(task_update::Kind::Finished(pb::Finished {
                            outcome: *o,
                            reason: "fuzz".into(),
                            exit_code: 0,
                            refused: *refused,
                            ..Default::default()
                        }))
                    }
                    KindPick::Case(name) => Some(task_update::Kind::Case(pb::CaseResult {
                        name: name.to_string(),
                        verdict: name.to_string(),
                        ..Default::default()
                    })),
                };
                self.h.send(Command::Update {
                    session,
                    update: pb::TaskUpdate { attempt, seq, kind },
                });
            }
            Op::Disconnect { agent } => {
                if let Some(c) = &self.conns[*agent] {
                    self.h.disconnect(c);
                }
            }
            Op::Cancel { job } => {
                let id = self.jobs[job % self.jobs.len()].clone();
                let before = self
                    .h
                    .core()
                    .job_record(id.parse::<u64>().unwrap())
                    .expect("a made job is in memory or stored")
                    .state();
                let result = self.h.cancel(&id);
                if before.is_terminal() {
                    prop_assert!(result.is_err(), "cancel of a {before:?} job accepted");
                }
            }
            Op::Submit { retries } => self.submit(*retries),
            Op::Health { agent, degraded } => {
                if let Some(c) = &self.conns[*agent] {
                    let session = c.session;
                    let mut caps = agent_caps(*agent);
                    caps.health = Some(pb::HealthSummary {
                        status: if *degraded { "degraded" } else { "ok" }.into(),
                        reasons: if *degraded {
                            vec!["x".repeat(200); 64]
                        } else {
                            Vec::new()
                        },
                        probed_at_ms: 0,
                    });
                    self.h.send(Command::HealthReport {
                        session,
                        report: pb::HealthReport {
                            capabilities: Some(caps),
                        },
                    });
                }
            }
            Op::Check { agent } => {
                let name = agent_name(*agent);
                if let Ok(job) = self.h.call(|reply| Command::CheckAgent {
                    name,
                    by: "fuzz".into(),
                    reply,
                }) {
                    self.jobs.push(job.id);
                }
            }
            Op::Admin { agent, state } => {
                let admin = match state {
                    0 => AgentAdmin::Active,
                    1 => AgentAdmin::Drained,
                    _ => AgentAdmin::Quarantined,
                };
                let _ = self.h.set_admin(&agent_name(*agent), admin);
            }
            Op::Advance { ms, tick } => {
                self.h.advance(*ms);
                if *tick {
                    self.h.tick();
                }
            }
            Op::Reload => self.reload()?,
            Op::Archive => {
                let before = self.durable_view();
                self.h
                    .core()
                    .store
                    .archive_finished(i64::MAX, usize::MAX)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(before, self.durable_view(), "archiving changed the jobs");
            }
        }
        self.after_step()
    }

    /// Reloads the store and checks that it gives the same jobs. Agent
    /// sessions do not survive it.
    fn reload(&mut self) -> Result<(), TestCaseError> {
        let before = self.durable_view();
        self.h.reload();
        self.conns = (0..AGENTS).map(|_| None).collect();
        let after = self.durable_view();
        prop_assert_eq!(before, after, "a reload changed the jobs");
        Ok(())
    }

    /// What a reload must preserve of each job: record, attempt, stored events.
    #[allow(clippy::type_complexity)]
    /// Every job (in memory, else as stored: finished jobs need not be in memory).
    fn durable_view(&self) -> Vec<(u64, Job, Option<(u32, u64, String, u64)>, Vec<JobEvent>)> {
        let core = self.h.core();
        let mut ids: BTreeSet<u64> = core.jobs.keys().copied().collect();
        ids.extend(core.store.job_ids_before(u64::MAX, usize::MAX).unwrap());
        ids.into_iter()
            .filter_map(|id| {
                let job = core.job_record(id)?.into_owned();
                let attempt = core.jobs.get(&id).and_then(|e| e.attempt.as_ref());
                let events = core.store.events(id, 0, u64::MAX).unwrap_or_default();
                Some((
                    id,
                    job,
                    attempt.map(|a| (a.attempt, a.epoch, a.agent.clone(), a.applied_seq)),
                    events,
                ))
            })
            .collect()
    }

    /// Drains what the core sent each agent, then checks the invariants.
    fn after_step(&mut self) -> Result<(), TestCaseError> {
        for i in 0..AGENTS {
            let Some(mut c) = self.conns[i].take() else {
                continue;
            };
            for m in self.h.messages(&mut c) {
                match m {
                    scheduler_message::Msg::Assign(a) => {
                        self.known.extend(a.attempt);
                    }
                    scheduler_message::Msg::Reject(r) => {
                        prop_assert!(!r.message.is_empty());
                        prop_assert!(
                            r.message.len() <= MAX_ERROR_BYTES,
                            "{} byte reject: {:.200}",
                            r.message.len(),
                            r.message
                        );
                    }
                    _ => {}
                }
            }
            self.conns[i] = Some(c);
        }
        self.check()
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        let core = self.h.core();
        for (&id, e) in &core.jobs {
            let state = e.job.state();
            let lease = core.leases.get(id);
            match (&e.attempt, lease) {
                (None, None) => {}
                (Some(a), Some(l)) => prop_assert!(
                    a.attempt == l.attempt && a.epoch == l.epoch && a.agent == l.agent,
                    "job {id}: attempt {a:?} but lease {l:?}"
                ),
                (a, l) => prop_assert!(false, "job {id} ({state:?}): attempt {a:?}, lease {l:?}"),
            }
            match state {
                JobState::Assigned | JobState::Running => {
                    prop_assert!(e.attempt.is_some(), "job {id} {state:?} without an attempt")
                }
                _ => prop_assert!(e.attempt.is_none(), "job {id} {state:?} with an attempt"),
            }
            let counts = e.job.tests.unwrap_or_default();
            if let Some((was, attempts, old)) = self.last.get(&id) {
                if was.is_terminal() {
                    prop_assert_eq!(state, *was, "job {} left terminal state {:?}", id, was);
                }
                if *attempts == e.job.attempts {
                    let grew = |new: u64, old: u64| new >= old;
                    prop_assert!(
                        grew(counts.total, old.total)
                            && grew(counts.passed, old.passed)
                            && grew(counts.skipped, old.skipped)
                            && grew(counts.xfailed, old.xfailed)
                            && grew(counts.xpassed, old.xpassed)
                            && grew(counts.errors, old.errors)
                            && grew(counts.flaky, old.flaky)
                            && grew(counts.failed + counts.flaky, old.failed + old.flaky),
                        "job {id} attempt {attempts}: counts went from {old:?} to {counts:?}"
                    );
                }
            }
            self.last.insert(id, (state, e.job.attempts, counts));
            let seqs: Vec<u64> = core
                .store
                .events(id, 0, u64::MAX)
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .iter()
                .map(|ev| ev.seq)
                .collect();
            let want: Vec<u64> = (1..=e.job.last_event_seq).collect();
            prop_assert_eq!(seqs, want, "job {} event seqs", id);
        }
        for i in 0..AGENTS {
            let mut held = std::collections::HashSet::new();
            for task in core.leases.held_by(&agent_name(i)) {
                let live = core.jobs.get(&task).and_then(|e| e.attempt.as_ref());
                prop_assert!(
                    live.is_some(),
                    "lease on task {task} without a live attempt"
                );
                let (Some(att), Some(e)) = (live, core.jobs.get(&task)) else {
                    continue;
                };
                let asked = e.job.spec.as_ref().map_or(0, |s| s.npus) as usize;
                prop_assert_eq!(att.devices.len(), asked, "task {} devices", task);
                for d in &att.devices {
                    prop_assert!(held.insert(d.clone()), "device {:?} held twice", d);
                }
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(fuzz_config())]

    #[test]
    fn fuzz_core_agent_message_sequences(
        agents in 1..=AGENTS,
        jobs in prop::collection::vec(0..3u32, 1..5),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let mut w = World::new(agents, &jobs)?;
        for op in &ops {
            w.apply(op)?;
        }
        w.reload()?;
        w.check()?;
    }
}
