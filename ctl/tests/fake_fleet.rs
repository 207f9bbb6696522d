//! msctl against a fake Fleet server (no scheduler): what the benchmark
//! commands (`watch`, `show`, `baseline list|show|accept|export`), the
//! schedule commands (`schedule add|list|show|pause|resume|delete|run-now`)
//! and `submit --dedup-key` print, and their exit codes.

use msfleet_proto::case::{load_dir, Case};
use msfleet_proto::fleet_server::{Fleet, FleetServer};
use msfleet_proto::{self as pb, job_event, JobState};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

const DECODE: &str = "qwen3-8B-decode";
const VIDEO: &str = "wan2.2-ulysses4-cfg2";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/tests/fixtures/bench-cases")
}

fn fixture(name: &str) -> Case {
    let (cases, errors) = load_dir(&fixture_dir());
    assert!(errors.is_empty(), "{errors:?}");
    cases
        .into_iter()
        .map(|(_, c)| c)
        .find(|c| c.name == name)
        .expect("fixture")
}

fn op(name: &str, t: f64, calls: u64) -> pb::OperatorTime {
    pb::OperatorTime {
        name: name.into(),
        total_time_s: t,
        num_calls: calls,
    }
}

fn case_result(name: &str, verdict: &str, value: f64, baseline: Option<f64>) -> pb::CaseResult {
    pb::CaseResult {
        name: name.into(),
        file: format!("cases/{name}.json"),
        input_hash: fixture(name).input_hash(),
        metric: "total_time_s".into(),
        verdict: verdict.into(),
        explanation: Some(pb::Explanation {
            value,
            baseline,
            delta_pct: baseline.map(|b| (value - b) / b * 100.0),
            limit: "baseline_tolerance 20%".into(),
            k: 2,
            rule: "tolerance".into(),
            ..Default::default()
        }),
        metrics: vec![pb::MetricSummary {
            name: "total_time_s".into(),
            unit: "s".into(),
            source: "reported".into(),
            n: 5,
            median: value,
            mad: 0.0,
            robust_cv: 0.0,
            samples: vec![value; 5],
        }],
        rerun: verdict == "regression",
        confirmed: verdict == "regression",
        profile: "a2-64g".into(),
        ..Default::default()
    }
}

fn baseline(case: &str, profile: &str, anchor: f64) -> pb::Baseline {
    pb::Baseline {
        key: Some(pb::BaselineKey {
            case: case.into(),
            input_hash: fixture(case).input_hash(),
            metric: "total_time_s".into(),
            profile: profile.into(),
        }),
        anchor: Some(anchor),
        anchor_operators: vec![op("aten.mm.default", anchor / 2.0, 73)],
        history: vec![pb::BaselineRun {
            job_id: "5".into(),
            time_ms: 1_763_800_000_000,
            median: anchor,
            operators: vec![],
            ..Default::default()
        }],
        audit: vec![pb::BaselineAudit {
            action: "accept".into(),
            who: "alice".into(),
            time_ms: 1_763_800_000_000,
            job_id: "5".into(),
            value: anchor,
        }],
        ..Default::default()
    }
}

#[derive(Default)]
struct Fake {
    accepted_by: Mutex<Vec<String>>,
    schedules: Mutex<Vec<pb::Schedule>>,
    submitted: Mutex<Vec<pb::JobSpec>>,
}

/// 2026-11-23 02:00 CST (Asia/Shanghai) = 2026-11-22 18:00 UTC.
const NEXT: i64 = 1_795_370_400_000;
/// The slot a day before.
const LAST: i64 = 1_795_284_000_000;
/// 2026-11-23T02:00:03Z: when the deduplicated job was submitted.
const SUBMITTED: i64 = 1_795_399_203_000;
/// The dedup key the fake has seen.
const SEEN_KEY: &str = "nightly-2026-11-23";

/// The schedule the fake starts with: it fired once (job 41, passed).
fn nightly() -> pb::Schedule {
    pb::Schedule {
        name: "nightly".into(),
        cron: "0 2 * * *".into(),
        tz: "Asia/Shanghai".into(),
        spec: Some(pb::JobSpec {
            kind: "pytest".into(),
            queue: "nightly".into(),
            args: vec!["-m".into(), "nightly".into(), "tests".into()],
            source: Some(pb::Source {
                kind: Some(pb::source::Kind::Dir("/srv/checkouts/msmodeling".into())),
            }),
            ..Default::default()
        }),
        misfire: "fire_once".into(),
        overlap: "skip".into(),
        paused: false,
        created_ms: 1_793_525_400_000,
        last_slot_ms: Some(LAST),
        last_job_id: "41".into(),
        next_ms: NEXT,
        next_local: "2026-11-23 02:00 CST".into(),
        last_state: "passed".into(),
        created_by: "ops".into(),
        paused_by: String::new(),
        paused_ms: 0,
    }
}

impl Fake {
    fn schedules(&self) -> std::sync::MutexGuard<'_, Vec<pb::Schedule>> {
        self.schedules.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn schedule(&self, name: &str) -> Result<pb::Schedule, Status> {
        self.schedules()
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no schedule '{name}'")))
    }
}

/// The served side of a [`Fake`] the test keeps a handle on.
struct Svc(Arc<Fake>);

fn job() -> pb::Job {
    pb::Job {
        id: "7".into(),
        spec: Some(pb::JobSpec {
            kind: "benchmark".into(),
            name: "benchmark .".into(),
            source: Some(pb::Source {
                kind: Some(pb::source::Kind::Dir("/srv/cases".into())),
            }),
            benchmark: Some(pb::BenchmarkSpec {
                command: vec!["python".into(), "run.py".into(), "{case}".into()],
                cases: vec![".".into()],
                warmup: Some(1),
                repetitions: Some(5),
                ..Default::default()
            }),
            ..Default::default()
        }),
        state: JobState::Failed as i32,
        reason: "1 case regressed".into(),
        attempts: 1,
        agent: "b1".into(),
        cases: vec![
            case_result(DECODE, "regression", 0.0201, Some(0.0154)),
            case_result(VIDEO, "pass", 7.5, Some(7.698)),
        ],
        last_event_seq: 5,
        ..Default::default()
    }
}

fn events() -> Vec<pb::JobEvent> {
    let state = |seq, s: JobState| pb::JobEvent {
        seq,
        attempt: 1,
        kind: Some(job_event::Kind::State(pb::StateChange {
            state: s as i32,
            reason: String::new(),
            agent: "b1".into(),
        })),
        ..Default::default()
    };
    let j = job();
    let case = |seq, c: &pb::CaseResult| pb::JobEvent {
        seq,
        attempt: 1,
        kind: Some(job_event::Kind::Case(c.clone())),
        ..Default::default()
    };
    vec![
        state(1, JobState::Assigned),
        state(2, JobState::Running),
        case(3, &j.cases[0]),
        case(4, &j.cases[1]),
        state(5, JobState::Failed),
    ]
}

/// Pytest jobs of schedule "nightly" for `report`: 19 (the previous run),
/// 20 (the reported one, second attempt) and 21 (still running).
fn report_jobs() -> Vec<pb::Job> {
    let pytest = |id: &str, state: JobState, attempts: u32| pb::Job {
        id: id.into(),
        spec: Some(pb::JobSpec {
            kind: "pytest".into(),
            name: "nightly".into(),
            ..Default::default()
        }),
        state: state as i32,
        attempts,
        agent: "b1".into(),
        schedule: "nightly".into(),
        slot_ms: LAST,
        tests: Some(pb::TestCounts {
            passed: 2,
            failed: 1,
            total: 3,
            ..Default::default()
        }),
        ..Default::default()
    };
    vec![
        pytest("21", JobState::Running, 1),
        pytest("20", JobState::Failed, 2),
        pytest("19", JobState::Failed, 1),
    ]
}

/// A benchmark set fanned out to every profile: parent 30, children 31
/// (a2-64g) and 32 (h100, one case regressed), and a profile not run.
fn bench_parent_jobs() -> Vec<pb::Job> {
    let mut h100 = vec![
        case_result(DECODE, "regression", 0.0201, Some(0.0154)),
        case_result(VIDEO, "pass", 7.5, Some(7.698)),
    ];
    for c in &mut h100 {
        c.profile = "h100".into();
    }
    let child = |id: &str, column: &str, cases: Vec<pb::CaseResult>, state: JobState| pb::Job {
        id: id.into(),
        parent: "30".into(),
        column: column.into(),
        state: state as i32,
        attempts: 1,
        agent: "b1".into(),
        cases,
        ..job()
    };
    vec![
        pb::Job {
            id: "30".into(),
            state: JobState::Failed as i32,
            reason: "1 of 2 children failed".into(),
            attempts: 0,
            agent: String::new(),
            cases: Vec::new(),
            children: vec!["31".into(), "32".into()],
            not_run: vec!["npu-910b".into()],
            ..job()
        },
        child(
            "31",
            "a2-64g",
            vec![
                case_result(DECODE, "pass", 0.0150, Some(0.0154)),
                case_result(VIDEO, "pass", 7.6, Some(7.698)),
            ],
            JobState::Passed,
        ),
        child("32", "h100", h100, JobState::Failed),
    ]
}

fn report_events(id: &str) -> Vec<pb::JobEvent> {
    let test = |seq, attempt, nodeid: &str, outcome: &str| pb::JobEvent {
        seq,
        attempt,
        kind: Some(job_event::Kind::Test(pb::TestResult {
            nodeid: nodeid.into(),
            when: "call".into(),
            outcome: outcome.into(),
            duration_s: 0.1,
            longrepr: if outcome == "failed" {
                "E   assert 0".into()
            } else {
                String::new()
            },
            markers: vec![],
        })),
        ..Default::default()
    };
    if id == "19" {
        vec![
            test(1, 1, "t.py::test_a", "passed"),
            test(2, 1, "t.py::test_b", "failed"),
            test(3, 1, "t.py::test_c", "failed"),
        ]
    } else {
        vec![
            // The lost first attempt: ignored.
            test(1, 1, "t.py::test_b", "failed"),
            test(2, 1, "t.py::test_old", "failed"),
            test(3, 2, "t.py::test_a", "failed"),
            test(4, 2, "t.py::test_b", "passed"),
            test(5, 2, "t.py::test_c", "failed"),
            test(6, 2, "t.py::test_d", "failed"),
            test(7, 2, "t.py::test_d", "flaky"),
        ]
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Fleet for Svc {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreatedToken>, Status> {
        let req = req.into_inner();
        Ok(Response::new(pb::CreatedToken {
            token: Some(pb::Token {
                name: req.name,
                role: req.role,
                labels: req.labels,
                profile: req.profile,
                created_by: "root".into(),
                ..Default::default()
            }),
            secret: "msfleet_0123abcd".into(),
        }))
    }

    async fn list_tokens(
        &self,
        _req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        Ok(Response::new(pb::ListTokensResponse {
            tokens: vec![pb::Token {
                name: "ci".into(),
                role: "submitter".into(),
                created_by: "root".into(),
                created_ms: 1_763_900_000_000,
                ..Default::default()
            }],
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let req = req.into_inner();
        if req.name != "ci" {
            return Err(Status::not_found(format!("no token named '{}'", req.name)));
        }
        Ok(Response::new(pb::Token {
            name: req.name,
            role: "submitter".into(),
            ..Default::default()
        }))
    }

    async fn submit(&self, req: Request<pb::SubmitRequest>) -> Result<Response<pb::Job>, Status> {
        let spec = req.into_inner().spec.unwrap_or_default();
        if let Ok(mut seen) = self.0.submitted.lock() {
            seen.push(spec.clone());
        }
        if spec.dedup_key == SEEN_KEY {
            // The key was seen: the existing job 7, not a new one.
            let mut j = job();
            if let Some(s) = j.spec.as_mut() {
                s.dedup_key = SEEN_KEY.into();
            }
            j.submitted_at_ms = SUBMITTED;
            j.deduplicated = true;
            return Ok(Response::new(j));
        }
        Ok(Response::new(pb::Job {
            id: "8".into(),
            spec: Some(spec),
            state: JobState::Queued as i32,
            submitted_at_ms: SUBMITTED + 1000,
            ..Default::default()
        }))
    }
    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let id = req.into_inner().id;
        if id == "404" {
            return Err(Status::not_found("no job 404"));
        }
        Ok(Response::new(
            report_jobs()
                .into_iter()
                .chain(bench_parent_jobs())
                .find(|j| j.id == id)
                .unwrap_or_else(job),
        ))
    }
    async fn list_jobs(
        &self,
        _: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let mut jobs = report_jobs();
        jobs.push(job());
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_cursor: String::new(),
        }))
    }
    async fn cancel_job(
        &self,
        _: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        Err(Status::unimplemented("fake"))
    }
    type WatchJobStream = EventStream;
    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let req = req.into_inner();
        let after = req.after_seq;
        let all = match req.id.as_str() {
            "19" | "20" => report_events(&req.id),
            _ => events(),
        };
        let evs: Vec<_> = all.into_iter().filter(|e| e.seq > after).map(Ok).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(evs))))
    }
    async fn list_agents(
        &self,
        _: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        Ok(Response::new(pb::ListAgentsResponse {
            agents: vec![pb::Agent {
                name: "b1".into(),
                capabilities: Some(pb::Capabilities {
                    profile: "a2-64g".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }))
    }
    async fn set_agent_admin(
        &self,
        _: Request<pb::SetAgentAdminRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn forget_agent(
        &self,
        _: Request<pb::ForgetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn check_agent(
        &self,
        _: Request<pb::CheckAgentRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_queues(
        &self,
        _: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_baselines(
        &self,
        req: Request<pb::ListBaselinesRequest>,
    ) -> Result<Response<pb::ListBaselinesResponse>, Status> {
        let req = req.into_inner();
        let all = [
            baseline(DECODE, "a2-64g", 0.0154),
            baseline(DECODE, "h100-80g", 0.0101),
            baseline(VIDEO, "a2-64g", 7.0),
        ];
        let baselines = all
            .into_iter()
            .filter(|b| {
                let k = b.key.clone().unwrap_or_default();
                (req.case.is_empty() || k.case == req.case)
                    && (req.profile.is_empty() || k.profile == req.profile)
            })
            .collect();
        Ok(Response::new(pb::ListBaselinesResponse { baselines }))
    }
    async fn accept_baselines(
        &self,
        req: Request<pb::AcceptBaselinesRequest>,
    ) -> Result<Response<pb::AcceptBaselinesResponse>, Status> {
        let req = req.into_inner();
        if req.job_id != "7" {
            return Err(Status::not_found(format!("no job {}", req.job_id)));
        }
        // As the real scheduler: the caller's token name ("bob" here) unless
        // the client names someone (which the real one refuses, see e2e).
        let who_name = if req.who.is_empty() {
            "bob".to_string()
        } else {
            req.who.clone()
        };
        if let Ok(mut who) = self.0.accepted_by.lock() {
            who.push(who_name.clone());
        }
        let mut b = baseline(DECODE, "a2-64g", 0.0201);
        b.audit.push(pb::BaselineAudit {
            action: "accept".into(),
            who: who_name,
            time_ms: 1_763_900_000_000,
            job_id: req.job_id,
            value: 0.0201,
        });
        Ok(Response::new(pb::AcceptBaselinesResponse {
            baselines: vec![b],
        }))
    }
    async fn add_schedule(
        &self,
        req: Request<pb::Schedule>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let mut s = req.into_inner();
        // What the scheduler refuses, with its kind of message.
        if let Some(minute) = s.cron.split_whitespace().next().filter(|m| *m == "61") {
            return Err(Status::invalid_argument(format!(
                "bad cron expression '{}': field 'minute' = '{minute}': 61 is out of range 0-59",
                s.cron
            )));
        }
        if s.tz != "UTC" && !s.tz.contains('/') {
            return Err(Status::invalid_argument(format!(
                "unknown time zone '{}' (use an IANA name such as Europe/Berlin)",
                s.tz
            )));
        }
        let mut all = self.0.schedules();
        if all.iter().any(|k| k.name == s.name) {
            return Err(Status::already_exists(format!(
                "schedule '{}' already exists",
                s.name
            )));
        }
        s.created_ms = SUBMITTED;
        s.next_ms = NEXT;
        s.next_local = "2026-11-22 18:00 UTC".into();
        all.push(s.clone());
        Ok(Response::new(s))
    }
    async fn list_schedules(
        &self,
        _: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules: self.0.schedules().clone(),
        }))
    }
    async fn get_schedule(
        &self,
        req: Request<pb::ScheduleName>,
    ) -> Result<Response<pb::Schedule>, Status> {
        Ok(Response::new(self.0.schedule(&req.into_inner().name)?))
    }
    async fn set_schedule_paused(
        &self,
        req: Request<pb::SetSchedulePausedRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let req = req.into_inner();
        self.0.schedule(&req.name)?;
        let mut all = self.0.schedules();
        let s = all
            .iter_mut()
            .find(|s| s.name == req.name)
            .ok_or_else(|| Status::not_found("gone"))?;
        s.paused = req.paused;
        Ok(Response::new(s.clone()))
    }
    async fn delete_schedule(
        &self,
        req: Request<pb::ScheduleName>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let name = req.into_inner().name;
        let s = self.0.schedule(&name)?;
        self.0.schedules().retain(|k| k.name != name);
        Ok(Response::new(s))
    }
    async fn test_history(
        &self,
        req: Request<pb::TestHistoryRequest>,
    ) -> Result<Response<pb::TestHistoryResponse>, Status> {
        let req = req.into_inner();
        let run = |job: &str, profile: &str, outcome: &str| pb::TestRun {
            job_id: job.into(),
            time_ms: 1_795_392_000_000,
            profile: profile.into(),
            agent: format!("{profile}-1"),
            attempt: 1,
            outcome: outcome.into(),
            duration_s: 0.25,
            when: "call".into(),
        };
        let runs = if req.test_id == "t.py::x" {
            vec![
                run("9", "gpu-h100", "failed"),
                run("8", "npu-910b", "passed"),
            ]
            .into_iter()
            .filter(|r| req.profile.is_empty() || r.profile == req.profile)
            .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::TestHistoryResponse { runs }))
    }

    async fn run_schedule_now(
        &self,
        req: Request<pb::ScheduleName>,
    ) -> Result<Response<pb::Job>, Status> {
        let s = self.0.schedule(&req.into_inner().name)?;
        // Job 7 (the failed benchmark) stands in for the schedule's job.
        let mut j = job();
        j.schedule = s.name;
        Ok(Response::new(j))
    }
}

/// Starts the fake on an ephemeral port; returns its address.
fn start() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    fake.schedules().push(nightly());
    let served = fake.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            tonic::transport::Server::builder()
                .add_service(FleetServer::new(Svc(served)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("serve");
        });
    });
    let addr = rx.recv().expect("fake server address");
    (format!("http://{addr}"), fake)
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn msctl(addr: &str, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_msctl"))
        .arg("--addr")
        .arg(addr)
        .args(args)
        .env("USER", "bob")
        .env_remove("MSFLEET_TOKEN")
        .env_remove("MSFLEET_TOKEN_FILE")
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("run msctl");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("msctl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn watch_prints_a_line_per_case_a_table_and_fails_on_a_regression() {
    let (addr, _) = start();
    let out = msctl(&addr, &["watch", "7"]);
    assert_eq!(out.code, 1, "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines.contains(
            &"REGRESSION  qwen3-8B-decode  total_time_s 0.0201 vs 0.0154 \
              (+30.5%, limit baseline_tolerance 20%, confirmed by re-run)"
        ),
        "{out}"
    );
    assert!(
        lines.contains(&"PASS        wan2.2-ulysses4-cfg2  total_time_s 7.50 vs 7.70 (-2.6%)"),
        "{out}"
    );
    let header = lines
        .iter()
        .position(|l| l.starts_with("CASE "))
        .unwrap_or_else(|| panic!("no table: {out}"));
    assert_eq!(
        lines[header + 1].split_whitespace().collect::<Vec<_>>(),
        [
            DECODE,
            "REGRESSION",
            "total_time_s",
            "0.0201",
            "0.0154",
            "+30.5%",
            "5(2)"
        ],
        "{out}"
    );
    let last = lines.last().copied().unwrap_or_default();
    assert!(
        last.starts_with("job 7 failed: 1 regression, 1 pass in "),
        "{out}"
    );

    let out = msctl(&addr, &["watch", "7", "--json"]);
    assert_eq!(out.code, 1, "{out}");
    let cases: Vec<Value> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "case")
        .collect();
    assert_eq!(cases.len(), 2, "{out}");
    assert_eq!(cases[0]["case"]["name"], DECODE);
    assert_eq!(cases[0]["case"]["verdict"], "regression");
    assert_eq!(cases[0]["case"]["explanation"]["baseline"], 0.0154);
}

#[test]
fn show_gives_the_cases() {
    let (addr, _) = start();
    let out = msctl(&addr, &["show", "7", "--json"]);
    assert_eq!(out.code, 0, "{out}");
    let j: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(j["kind"], "benchmark");
    assert_eq!(j["benchmark"]["command"][2], "{case}");
    assert_eq!(j["benchmark"]["repetitions"], 5);
    let c = &j["cases"][0];
    assert_eq!(c["name"], DECODE);
    assert_eq!(c["verdict"], "regression");
    assert_eq!(c["metrics"]["total_time_s"]["median"], 0.0201);
    assert_eq!(
        c["metrics"]["total_time_s"]["samples"]
            .as_array()
            .map(Vec::len),
        Some(5)
    );
    assert_eq!(c["explanation"]["limit"], "baseline_tolerance 20%");
    assert_eq!(c["confirmed"], true);
    assert_eq!(c["profile"], "a2-64g");

    let out = msctl(&addr, &["show", "7"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains("results:   1 regression, 1 pass"),
        "{out}"
    );
    assert!(
        out.stdout.contains("command:   python run.py {case}"),
        "{out}"
    );
    assert!(out.stdout.contains("REGRESSION  qwen3-8B-decode"), "{out}");
}

#[test]
fn baseline_list_show_and_accept() {
    let (addr, fake) = start();
    let out = msctl(&addr, &["baseline", "list"]);
    assert_eq!(out.code, 0, "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["CASE", "METRIC", "PROFILE", "ANCHOR", "RUNS", "LAST", "MDE", "SHIFT", "INPUT"]
    );
    assert_eq!(lines.len(), 4, "{out}");
    let out = msctl(
        &addr,
        &["baseline", "list", "--profile", "h100-80g", "--json"],
    );
    let v: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(v[0]["profile"], "h100-80g");
    assert_eq!(v[0]["anchor"], 0.0101);

    let out = msctl(&addr, &["baseline", "show", DECODE]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("profile a2-64g"), "{out}");
    assert!(out.stdout.contains("profile h100-80g"), "{out}");
    assert!(out.stdout.contains("aten.mm.default"), "{out}");
    assert!(out.stdout.contains("alice"), "audit trail: {out}");
    let out = msctl(&addr, &["baseline", "show", "nope"]);
    assert_eq!(out.code, 2, "{out}");

    let out = msctl(&addr, &["baseline", "accept", "7"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("from job 7 as bob"), "{out}");
    assert!(
        out.stdout
            .contains("qwen3-8B-decode  total_time_s  a2-64g  0.0201"),
        "{out}"
    );
    let out = msctl(&addr, &["baseline", "accept", "7", "--by", "carol"]);
    assert_eq!(out.code, 0, "{out}");
    let out = msctl(&addr, &["baseline", "accept", "8"]);
    assert_eq!(out.code, 2, "{out}");
    let who = fake
        .accepted_by
        .lock()
        .map(|w| w.clone())
        .unwrap_or_default();
    assert_eq!(who, ["bob", "carol"]);
}

#[test]
fn baseline_export_writes_the_case_files() {
    let (addr, _) = start();
    let dir = temp_dir("export");
    for name in [DECODE, VIDEO] {
        let file = format!("{name}.json");
        std::fs::copy(fixture_dir().join(&file), dir.join(&file)).expect("copy");
    }
    std::fs::write(dir.join("broken.json"), "{\"name\": 3}").expect("write");
    let before = std::fs::read_to_string(dir.join(format!("{DECODE}.json"))).expect("read");

    // Two profiles match: nothing is written without --profile.
    let out = msctl(
        &addr,
        &["baseline", "export", dir.to_str().unwrap_or_default()],
    );
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("a2-64g, h100-80g"), "{out}");
    assert_eq!(
        std::fs::read_to_string(dir.join(format!("{DECODE}.json"))).expect("read"),
        before
    );

    let out = msctl(
        &addr,
        &[
            "baseline",
            "export",
            dir.to_str().unwrap_or_default(),
            "--profile",
            "h100-80g",
        ],
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stderr.contains("broken"),
        "malformed file reported: {out}"
    );
    assert!(out.stdout.contains("updated      qwen3-8B-decode"), "{out}");
    assert!(
        out.stdout.contains("no baseline  wan2.2-ulysses4-cfg2"),
        "{out}"
    );
    let text = std::fs::read_to_string(dir.join(format!("{DECODE}.json"))).expect("read");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["baseline_time_s"], 0.0101);
    assert_eq!(v["operators"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["initial_time_s"], 0.012733);
    let video = std::fs::read_to_string(dir.join(format!("{VIDEO}.json"))).expect("read");
    assert_eq!(
        video,
        std::fs::read_to_string(fixture_dir().join(format!("{VIDEO}.json"))).expect("read"),
        "a case without a baseline is left untouched"
    );

    let empty = temp_dir("export-empty");
    let out = msctl(
        &addr,
        &["baseline", "export", empty.to_str().unwrap_or_default()],
    );
    assert_eq!(out.code, 2, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&empty);
}

/// A pytest job file in a temp dir.
fn job_file(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    let path = dir.join("job.toml");
    std::fs::write(
        &path,
        "queue = \"default\"\nargs = [\"-m\", \"weekly\"]\n[source]\ndir = \"/srv/checkouts/msmodeling\"\n",
    )
    .expect("write");
    path
}

#[test]
fn schedule_add_refuses_what_the_scheduler_refuses() {
    let (addr, fake) = start();
    let file = job_file("sched-add");
    let f = file.to_str().unwrap_or_default();

    let out = msctl(
        &addr,
        &[
            "schedule", "add", "weekly", "--cron", "@weekly", "-f", f, "--queue", "weekly",
        ],
    );
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.stdout, "added schedule weekly: @weekly UTC, next 2026-11-22 18:00 UTC\n",
        "{out}"
    );
    let added = fake.schedule("weekly").expect("added");
    assert_eq!(
        (
            added.tz.as_str(),
            added.misfire.as_str(),
            added.overlap.as_str()
        ),
        ("UTC", "fire_once", "skip")
    );
    let spec = added.spec.unwrap_or_default();
    assert_eq!(spec.queue, "weekly", "--queue overrides the file");
    assert_eq!(spec.args, ["-m", "weekly"]);

    let out = msctl(
        &addr,
        &[
            "schedule",
            "add",
            "nightly2",
            "--cron",
            "30 1 * * mon-fri",
            "--tz",
            "Europe/Berlin",
            "--misfire",
            "skip",
            "--overlap",
            "queue",
            "-f",
            f,
            "--json",
        ],
    );
    assert_eq!(out.code, 0, "{out}");
    let v: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["name"], "nightly2");
    assert_eq!(v["cron"], "30 1 * * mon-fri");
    assert_eq!(v["tz"], "Europe/Berlin");
    assert_eq!(
        (v["misfire"].clone(), v["overlap"].clone()),
        ("skip".into(), "queue".into())
    );
    assert_eq!(v["next_ms"], NEXT);
    assert_eq!(v["spec"]["source"]["dir"], "/srv/checkouts/msmodeling");

    // The scheduler's refusals are bad input (2), its message on stderr.
    let out = msctl(
        &addr,
        &["schedule", "add", "weekly", "--cron", "@weekly", "-f", f],
    );
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("already exists"), "{out}");
    let out = msctl(
        &addr,
        &["schedule", "add", "x", "--cron", "61 2 * * *", "-f", f],
    );
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("field 'minute'"), "{out}");
    let out = msctl(
        &addr,
        &[
            "schedule", "add", "x", "--cron", "@daily", "--tz", "Moon", "-f", f,
        ],
    );
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("time zone"), "{out}");
    // clap refuses a bad policy (2) before anything is sent.
    let out = msctl(
        &addr,
        &[
            "schedule",
            "add",
            "x",
            "--cron",
            "@daily",
            "--misfire",
            "always",
            "-f",
            f,
        ],
    );
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("fire_once"), "{out}");
    assert!(fake.schedule("x").is_err());
    // A bad job file is bad input even with no scheduler to reach.
    let missing = temp_dir("sched-missing").join("nope.toml");
    let out = msctl(
        "http://127.0.0.1:1",
        &[
            "schedule",
            "add",
            "x",
            "--cron",
            "@daily",
            "-f",
            missing.to_str().unwrap_or_default(),
        ],
    );
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("cannot read"), "{out}");
    let _ = std::fs::remove_dir_all(file.parent().unwrap_or(&file));
}

#[test]
fn schedule_list_show_pause_resume_delete() {
    let (addr, fake) = start();
    let out = msctl(&addr, &["schedule", "list"]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.stdout,
        "NAME     CRON       TZ             NEXT                  PAUSED  LAST-JOB  LAST-STATE\n\
         nightly  0 2 * * *  Asia/Shanghai  2026-11-23 02:00 CST  no      41        passed\n",
        "{out}"
    );
    let out = msctl(&addr, &["schedule", "list", "--json"]);
    assert_eq!(out.code, 0, "{out}");
    let v: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v[0]["name"], "nightly");
    assert_eq!(v[0]["next_local"], "2026-11-23 02:00 CST");
    assert_eq!(v[0]["last_slot_local"], "2026-11-22 02:00 CST");
    assert_eq!(v[0]["last_state"], "passed");

    let out = msctl(&addr, &["schedule", "show", "nightly"]);
    assert_eq!(out.code, 0, "{out}");
    for want in [
        "schedule nightly\n",
        "  cron:      0 2 * * * (Asia/Shanghai)\n",
        "  next:      2026-11-23 02:00 CST\n",
        "  misfire:   fire_once\n",
        "  overlap:   skip\n",
        "  last slot: 2026-11-22 02:00 CST\n",
        "  last job:  41 (passed)\n",
        "  job:       pytest\n",
        "  source:    /srv/checkouts/msmodeling\n",
        "  pytest:    -m nightly tests\n",
    ] {
        assert!(out.stdout.contains(want), "{want:?}: {out}");
    }
    let out = msctl(&addr, &["schedule", "show", "nightly", "--json"]);
    let v: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["spec"]["queue"], "nightly");
    assert_eq!(v["last_job_id"], "41");
    let out = msctl(&addr, &["schedule", "show", "nope"]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("no schedule 'nope'"), "{out}");

    let out = msctl(&addr, &["schedule", "pause", "nightly"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "schedule nightly paused\n"),
        "{out}"
    );
    assert!(fake.schedule("nightly").map(|s| s.paused).unwrap_or(false));
    let out = msctl(&addr, &["schedule", "list"]);
    assert!(out.stdout.contains("  yes  "), "{out}");
    let out = msctl(&addr, &["schedule", "show", "nightly"]);
    assert!(out.stdout.contains("  paused:    yes\n"), "{out}");
    let out = msctl(&addr, &["schedule", "resume", "nightly"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "schedule nightly resumed, next 2026-11-23 02:00 CST\n"),
        "{out}"
    );
    assert!(!fake.schedule("nightly").map(|s| s.paused).unwrap_or(true));
    let out = msctl(&addr, &["schedule", "pause", "nope"]);
    assert_eq!(out.code, 2, "{out}");

    let out = msctl(&addr, &["schedule", "delete", "nightly"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "schedule nightly deleted\n"),
        "{out}"
    );
    let out = msctl(&addr, &["schedule", "delete", "nightly"]);
    assert_eq!(out.code, 2, "{out}");
    let out = msctl(&addr, &["schedule", "list"]);
    assert_eq!(out.stdout.lines().count(), 1, "header only: {out}");
    let out = msctl(&addr, &["schedule", "list", "--json"]);
    assert_eq!(out.stdout.trim(), "[]", "{out}");
}

#[test]
fn schedule_run_now_prints_the_job_and_waits_for_it() {
    let (addr, _) = start();
    let out = msctl(&addr, &["schedule", "run-now", "nightly"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "7\n"), "{out}");
    let out = msctl(&addr, &["schedule", "run-now", "nightly", "--json"]);
    let v: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["id"], "7");
    assert_eq!(v["schedule"], "nightly");
    // --wait watches it and exits with its result (job 7 failed: 1).
    let out = msctl(&addr, &["schedule", "run-now", "nightly", "--wait"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr.contains("submitted job 7 for schedule nightly"),
        "{out}"
    );
    assert!(
        out.stdout
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("job 7 failed: "),
        "{out}"
    );
    let out = msctl(&addr, &["schedule", "run-now", "nope"]);
    assert_eq!(out.code, 2, "{out}");
}

#[test]
fn submit_with_a_seen_dedup_key_returns_the_existing_job() {
    let (addr, fake) = start();
    let file = job_file("dedup");
    let f = file.to_str().unwrap_or_default();

    let out = msctl(&addr, &["submit", "-f", f, "--dedup-key", SEEN_KEY]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout, "7\n", "{out}");
    assert_eq!(
        out.stderr,
        format!(
            "msctl: job 7 already exists for dedup key {SEEN_KEY} (submitted 2026-11-23T02:00:03Z)\n"
        ),
        "{out}"
    );
    // --json: the job says so too.
    let out = msctl(
        &addr,
        &["submit", "-f", f, "--dedup-key", SEEN_KEY, "--json"],
    );
    assert_eq!(out.code, 0, "{out}");
    let v: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(
        (v["id"].clone(), v["deduplicated"].clone()),
        ("7".into(), true.into())
    );
    assert_eq!(v["dedup_key"], SEEN_KEY);
    assert!(out.stderr.contains("already exists"), "{out}");
    // --wait watches the existing job and exits with its result.
    let out = msctl(
        &addr,
        &["submit", "-f", f, "--dedup-key", SEEN_KEY, "--wait"],
    );
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("job 7 already exists"), "{out}");
    assert!(!out.stderr.contains("submitted job"), "{out}");
    assert!(
        out.stdout
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("job 7 failed: "),
        "{out}"
    );
    // A new key: a new job, nothing on stderr.
    let out = msctl(
        &addr,
        &["submit", "-f", f, "--dedup-key", "nightly-2026-11-24"],
    );
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (0, "8\n", ""),
        "{out}"
    );
    let keys: Vec<String> = fake
        .submitted
        .lock()
        .map(|s| s.iter().map(|j| j.dedup_key.clone()).collect())
        .unwrap_or_default();
    assert_eq!(keys, [SEEN_KEY, SEEN_KEY, SEEN_KEY, "nightly-2026-11-24"]);

    // The key is part of the job file --dry-run writes (no scheduler needed).
    let out = msctl(
        "http://127.0.0.1:1",
        &["submit", "-f", f, "--dedup-key", "k1", "--dry-run"],
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("dedup_key = \"k1\""), "{out}");
    let _ = std::fs::remove_dir_all(file.parent().unwrap_or(&file));
}

#[test]
fn test_history_groups_runs_by_profile() {
    let (addr, _) = start();
    let out = msctl(&addr, &["test", "history", "t.py::x"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains("profile gpu-h100") && out.stdout.contains("profile npu-910b"),
        "{out}"
    );
    assert!(
        out.stdout.contains("failed") && out.stdout.contains("0.250s"),
        "{out}"
    );
    let out = msctl(
        &addr,
        &[
            "test",
            "history",
            "t.py::x",
            "--profile",
            "npu-910b",
            "--json",
        ],
    );
    let v: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v:#}");
    assert_eq!(v[0]["outcome"], "passed");
    let out = msctl(&addr, &["test", "history", "t.py::never"]);
    assert!(out.stdout.contains("no recorded runs"), "{out}");
}

#[test]
fn report_shows_the_matrix_and_the_diff_against_the_previous_run() {
    let (addr, _) = start();
    let out = msctl(&addr, &["report", "20"]);
    assert_eq!(out.code, 0, "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("TEST "))
        .unwrap_or_else(|| panic!("no matrix: {out}"));
    let row = |i: usize| lines[header + i].split_whitespace().collect::<Vec<_>>();
    assert_eq!(row(0), ["TEST", "a2-64g"], "{out}");
    assert_eq!(row(1), ["t.py::test_a", "fail"], "{out}");
    assert_eq!(row(2), ["t.py::test_c", "fail"], "{out}");
    assert_eq!(row(3), ["t.py::test_d", "flaky"], "{out}");
    assert!(!out.stdout.contains("test_old"), "{out}");
    assert!(
        out.stdout.contains("a2-64g: 1 pass, 2 fail, 1 flaky\n"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("compared with job 19 (previous run of schedule nightly)"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("  new failures (1):\n    t.py::test_a\n"),
        "{out}"
    );
    assert!(
        out.stdout.contains("  fixed (1):\n    t.py::test_b\n"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("  still failing (1):\n    t.py::test_c\n"),
        "{out}"
    );
    assert!(
        out.stdout.contains("  new flaky (1):\n    t.py::test_d\n"),
        "{out}"
    );

    let v: Value =
        serde_json::from_str(&msctl(&addr, &["report", "20", "--json"]).stdout).expect("json");
    assert_eq!(v["profiles"], serde_json::json!(["a2-64g"]));
    assert_eq!(v["matrix"].as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(v["diff"]["previous_job"], "19");
    assert_eq!(v["diff"]["new_flaky"], serde_json::json!(["t.py::test_d"]));

    // The oldest run has nothing to compare with.
    let out = msctl(&addr, &["report", "19"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .contains("no previous run of schedule nightly to compare"),
        "{out}"
    );

    // A benchmark job: the verdicts, and no schedule.
    let out = msctl(&addr, &["report", "7", "--markdown"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .contains("| case | verdict | metric | value | baseline | delta |"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("| qwen3-8B-decode | REGRESSION | total_time_s | 0.0201 | 0.0154 | +30.5% |"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("no previous run to compare (not a scheduled job)"),
        "{out}"
    );

    let out = msctl(&addr, &["report", "21"]);
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stderr
            .contains("job 21 is still running; report it once it has finished"),
        "{out}"
    );
    let out = msctl(&addr, &["report", "404"]);
    assert_eq!(out.code, 2, "{out}");
}

#[test]
fn token_commands_print_the_secret_once_on_the_last_line_and_list_none() {
    let (addr, _) = start();
    let out = msctl(&addr, &["token", "create", "ci", "--role", "submitter"]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout.lines().last(), Some("msfleet_0123abcd"), "{out}");
    let out = msctl(
        &addr,
        &[
            "agent",
            "token",
            "create",
            "h1",
            "--label",
            "pool=nightly",
            "--profile",
            "gpu-a",
        ],
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("created agent token 'h1'"), "{out}");
    let out = msctl(
        &addr,
        &["agent", "token", "create", "h1", "--label", "novalue"],
    );
    assert_eq!(out.code, 2, "{out}");
    let out = msctl(&addr, &["token", "list"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains("ci") && out.stdout.contains("submitter"),
        "{out}"
    );
    assert!(
        !out.stdout.contains("msfleet_"),
        "no secret in a listing: {out}"
    );
    let out = msctl(&addr, &["token", "revoke", "nope"]);
    assert_eq!(out.code, 2, "{out}");
    let out = msctl(&addr, &["token", "create", "x", "--role", "root"]);
    assert_eq!(out.code, 2, "{out}");
}

#[test]
fn a_benchmark_parents_report_is_a_case_by_profile_matrix() {
    let (addr, _fake) = start();
    let out = msctl(&addr, &["report", "30"]);
    assert_eq!(out.code, 0, "{out}");
    let first = out.stdout.lines().next().unwrap_or("");
    assert!(first.contains("4 cases: 3 pass, 1 regression"), "{out}");
    assert!(!out.stdout.contains("no test"), "{out}");
    let line = |case: &str| {
        out.stdout
            .lines()
            .find(|l| l.contains(case) && l.contains("PASS"))
            .unwrap_or_else(|| panic!("no row for {case}:\n{out}"))
            .to_string()
    };
    let decode = line(DECODE);
    for cell in ["0.015", "REGRESSION", "not run"] {
        assert!(decode.contains(cell), "{cell} missing: {decode}\n{out}");
    }
    let header = out
        .stdout
        .lines()
        .find(|l| l.contains("CASE"))
        .unwrap_or("");
    for p in ["a2-64g", "h100", "npu-910b"] {
        assert!(header.contains(p), "{p} column missing:\n{out}");
    }

    let v: serde_json::Value =
        serde_json::from_str(&msctl(&addr, &["report", "30", "--json"]).stdout).expect("json");
    assert_eq!(
        v["bench"]["profiles"],
        serde_json::json!(["a2-64g", "h100", "npu-910b"]),
        "{v:#}"
    );
    let cases = v["bench"]["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 2, "{v:#}");
    let d = cases.iter().find(|c| c["case"] == DECODE).expect("decode");
    assert_eq!(d["cells"]["h100"]["verdict"], "regression", "{d}");
    assert_eq!(d["cells"]["a2-64g"]["verdict"], "pass", "{d}");
    assert!(
        d["cells"]["h100"]["delta"]
            .as_str()
            .unwrap_or("")
            .contains("30"),
        "{d}"
    );
    assert!(d["cells"]["npu-910b"].is_null(), "{d}");
    assert_eq!(v["summary_line"], "4 cases: 3 pass, 1 regression", "{v:#}");

    let md = msctl(&addr, &["report", "30", "--markdown"]);
    assert!(
        md.stdout.contains("| case | a2-64g | h100 | npu-910b |"),
        "{md}"
    );
    assert!(md.stdout.contains("REGRESSION"), "{md}");
    assert!(md.stdout.contains("4 cases: 3 pass, 1 regression"), "{md}");

    let dir = temp_dir("bench-junit");
    let xml = dir.join("r.xml");
    let out = msctl(&addr, &["report", "30", "--junit", xml.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out}");
    let xml = std::fs::read_to_string(&xml).unwrap();
    assert_eq!(
        xml.matches("<testsuite name=\"benchmark ").count(),
        3,
        "{xml}"
    );
    assert!(
        xml.contains("<testsuite name=\"benchmark h100\" tests=\"2\" failures=\"1\" errors=\"0\" skipped=\"0\">"),
        "{xml}"
    );
    assert!(
        xml.contains("<testsuite name=\"benchmark npu-910b\" tests=\"2\" failures=\"0\" errors=\"0\" skipped=\"2\">"),
        "{xml}"
    );
    assert!(
        xml.contains("<failure message=\"0.0201 (+30.5%) REGRESSION\">"),
        "{xml}"
    );
}
