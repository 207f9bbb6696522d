//! msctl's benchmark commands against a fake Fleet server (no scheduler):
//! what `watch`, `show`, and `baseline list|show|accept|export` print, and
//! their exit codes.

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
        }],
        audit: vec![pb::BaselineAudit {
            action: "accept".into(),
            who: "alice".into(),
            time_ms: 1_763_800_000_000,
            job_id: "5".into(),
            value: anchor,
        }],
    }
}

#[derive(Default)]
struct Fake {
    accepted_by: Mutex<Vec<String>>,
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

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Fleet for Svc {
    async fn submit(&self, _: Request<pb::SubmitRequest>) -> Result<Response<pb::Job>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_job(&self, _: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(job()))
    }
    async fn list_jobs(
        &self,
        _: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        Err(Status::unimplemented("fake"))
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
        let after = req.into_inner().after_seq;
        let evs: Vec<_> = events()
            .into_iter()
            .filter(|e| e.seq > after)
            .map(Ok)
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(evs))))
    }
    async fn list_agents(
        &self,
        _: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn set_agent_admin(
        &self,
        _: Request<pb::SetAgentAdminRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
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
        if let Ok(mut who) = self.0.accepted_by.lock() {
            who.push(req.who.clone());
        }
        let mut b = baseline(DECODE, "a2-64g", 0.0201);
        b.audit.push(pb::BaselineAudit {
            action: "accept".into(),
            who: req.who,
            time_ms: 1_763_900_000_000,
            job_id: req.job_id,
            value: 0.0201,
        });
        Ok(Response::new(pb::AcceptBaselinesResponse {
            baselines: vec![b],
        }))
    }
}

/// Starts the fake on an ephemeral port; returns its address.
fn start() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
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
        ["CASE", "METRIC", "PROFILE", "ANCHOR", "RUNS", "LAST", "INPUT"]
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
