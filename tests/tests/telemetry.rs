//! OpenTelemetry across the three processes: an in-process OTLP/gRPC receiver (the
//! `opentelemetry-proto` crate's tonic `TraceService`) on an ephemeral port gets, for one
//! `msctl submit --wait`, spans from msctl, msched and msagent that share one trace id, with
//! the CI/CD attributes and the right parent links; with no endpoint set nothing connects.
//!
//! Run `cargo build --bins` first.

mod common;

use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, Metric};
use opentelemetry_proto::tonic::trace::v1::Span;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::StreamExt;

/// One received span and the `service.name` of the process that sent it.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    span: Span,
}

#[derive(Default)]
struct Seen {
    spans: Mutex<Vec<Got>>,
    /// (service.name, metric) for every metric received.
    metrics: Mutex<Vec<(String, Metric)>>,
    connections: AtomicUsize,
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut metrics = self.seen.metrics.lock().unwrap();
        for rm in req.into_inner().resource_metrics {
            let service = rm
                .resource
                .as_ref()
                .and_then(|r| attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    metrics.push((service.clone(), m));
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

struct Receiver {
    seen: Arc<Seen>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.seen.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Got {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An attribute's value as text (strings as they are, numbers printed).
fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match v.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// The receiver on 127.0.0.1:PORT, counting every TCP connection it accepts.
fn start_receiver(rt: &tokio::runtime::Runtime) -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("binding the receiver");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let counter = seen.clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |c| {
        counter.connections.fetch_add(1, Ordering::SeqCst);
        c
    });
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver { seen: seen.clone() }))
            .add_service(MetricsServiceServer::new(Receiver { seen: seen.clone() }))
            .serve_with_incoming(incoming),
    );
    (url, seen)
}

const SUITE: &str = r#"
def test_passes():
    pass

def test_fails():
    assert 1 == 2
"#;

fn named<'a>(spans: &'a [Got], service: &str, name: &str) -> Option<&'a Got> {
    spans
        .iter()
        .find(|g| g.service == service && g.span.name == name)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A scheduler (the flag) and an agent (the standard variable) that export to `url`.
fn traced_fleet(url: &str) -> Fleet {
    traced_fleet_with(url, &[])
}

/// [`traced_fleet`] with more agent flags.
fn traced_fleet_with(url: &str, agent_flags: &[&str]) -> Fleet {
    let mut f = Fleet::with_opts(SchedOpts {
        extra: vec!["--otlp-endpoint".into(), url.to_string()],
        ..SchedOpts::default()
    });
    f.add_agent_with_env(
        "otel-a1",
        &[],
        agent_flags,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            // Quiet logs keep the spans.
            ("RUST_LOG", "warn"),
        ],
    );
    f
}

/// msctl with the standard variable set.
fn traced_ctl(f: &Fleet, url: &str, args: &[&str]) -> Out {
    let mut cmd = ctl_cmd(&f.addr(), args);
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", url);
    run_cmd(cmd, CTL_TIMEOUT)
}

/// The spans received once each (service, name) of `wanted` is among them.
fn wait_spans(seen: &Seen, f: &Fleet, wanted: &[(&str, &str)]) -> Vec<Got> {
    wait_for(
        Duration::from_secs(30),
        "spans from all three services",
        || {
            let spans = seen.spans.lock().unwrap().clone();
            wanted
                .iter()
                .all(|(s, n)| named(&spans, s, n).is_some())
                .then_some(spans)
        },
        || {
            let spans = seen.spans.lock().unwrap();
            let got: Vec<String> = spans
                .iter()
                .map(|g| format!("{}/{}", g.service, g.span.name))
                .collect();
            let log = std::fs::read_to_string(&f.sched.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let last = lines[lines.len().saturating_sub(30)..].join("\n");
            format!("received: {got:?}\nmsched log:\n{last}")
        },
    )
}

const WANTED: [(&str, &str); 6] = [
    ("msctl", "msctl submit"),
    ("msched", "cicd.pipeline.run"),
    ("msched", "cicd.pipeline.task.run"),
    ("msagent", "checkout"),
    ("msagent", "pytest"),
    ("msagent", "upload results"),
];

#[test]
fn one_job_is_one_trace_across_msctl_msched_and_msagent() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, seen) = start_receiver(&rt);
    // JSON logs and the span export share the agent's one subscriber.
    let f = traced_fleet_with(&url, &["--log-format", "json"]);
    let suite = f.write_suite("traced", &[("test_traced.py", SUITE)]);
    let out = traced_ctl(
        &f,
        &url,
        &[
            "submit",
            "pytest",
            "--dir",
            suite.to_str().unwrap(),
            "--name",
            "traced-suite",
            "--wait",
        ],
    );
    assert_eq!(out.code, 1, "one test fails: {out}");
    let job_id = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("submitted job "))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no job id in: {out}"));

    // msctl flushed before it exited; msched and msagent export in batches.
    let spans = wait_spans(&seen, &f, &WANTED);
    let by = |s: &str, n: &str| named(&spans, s, n).unwrap().span.clone();
    let submit = by("msctl", "msctl submit");
    let job = by("msched", "cicd.pipeline.run");
    let attempt = by("msched", "cicd.pipeline.task.run");
    let checkout = by("msagent", "checkout");
    let pytest = by("msagent", "pytest");
    let upload = by("msagent", "upload results");
    // The agent's log-only spans (its name, an attempt's job for the log lines) are no
    // trace spans.
    for name in ["msagent", "attempt"] {
        assert!(
            named(&spans, "msagent", name).is_none(),
            "msagent exported its log span '{name}'"
        );
    }

    // One trace.
    for s in [&job, &attempt, &checkout, &pytest, &upload] {
        assert_eq!(
            hex(&s.trace_id),
            hex(&submit.trace_id),
            "span {} is in msctl's trace",
            s.name
        );
    }
    // Parent links: msctl's span is the root, the job span its child, the attempt the
    // job's, the agent's work the attempt's.
    assert!(submit.parent_span_id.is_empty(), "msctl's span is the root");
    assert_eq!(hex(&job.parent_span_id), hex(&submit.span_id));
    assert_eq!(hex(&attempt.parent_span_id), hex(&job.span_id));
    assert_eq!(hex(&checkout.parent_span_id), hex(&attempt.span_id));
    assert_eq!(hex(&pytest.parent_span_id), hex(&attempt.span_id));
    assert_eq!(hex(&upload.parent_span_id), hex(&attempt.span_id));
    // The agent's work in order: checkout, pytest, then the results go up.
    assert!(checkout.end_time_unix_nano <= pytest.start_time_unix_nano);
    assert!(pytest.end_time_unix_nano <= upload.start_time_unix_nano);
    // A failed test is the job's result, not an error of the job.
    assert_ne!(
        job.status.as_ref().map(|st| st.code),
        Some(2),
        "{:?}",
        job.status
    );
    // Times: the job spans its attempt.
    assert!(job.start_time_unix_nano <= attempt.start_time_unix_nano);
    assert!(attempt.end_time_unix_nano <= job.end_time_unix_nano);

    // The CI/CD attributes.
    let a = |s: &Span, k: &str| attr(&s.attributes, k).unwrap_or_default();
    assert_eq!(a(&job, "cicd.pipeline.name"), "traced-suite");
    assert_eq!(a(&job, "cicd.pipeline.run.id"), job_id);
    assert_eq!(a(&job, "cicd.pipeline.result"), "failure");
    assert_eq!(
        a(&attempt, "cicd.pipeline.task.run.id"),
        format!("{job_id}.1")
    );
    assert_eq!(a(&attempt, "cicd.worker.name"), "otel-a1");
    assert_eq!(a(&attempt, "cicd.pipeline.task.run.result"), "failure");
    assert_eq!(a(&submit, "cicd.pipeline.run.id"), job_id);

    // The failing test is an event of the pytest span; the passing one is not.
    let failed: Vec<(String, String)> = pytest
        .events
        .iter()
        .filter_map(|e| {
            Some((
                attr(&e.attributes, "test.case.name")?,
                attr(&e.attributes, "test.case.result.status")?,
            ))
        })
        .collect();
    assert_eq!(
        failed,
        vec![("test_traced.py::test_fails".to_string(), "fail".to_string())],
        "events of the pytest span: {:?}",
        pytest.events
    );
}

#[test]
fn without_an_endpoint_nothing_connects() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_url, seen) = start_receiver(&rt);
    let mut f = Fleet::new();
    f.add_agent("quiet-a1", &[], &[]);
    let suite = f.write_suite("untraced", &[("test_untraced.py", SUITE)]);
    let mut cmd = ctl_cmd(
        &f.addr(),
        &[
            "submit",
            "pytest",
            "--dir",
            suite.to_str().unwrap(),
            "--wait",
        ],
    );
    cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let out = run_cmd(cmd, CTL_TIMEOUT);
    assert_eq!(out.code, 1, "one test fails: {out}");
    // Longer than the SDK's default batch delay (5 s), had anything been set up.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        0,
        "nothing connected"
    );
    assert!(seen.spans.lock().unwrap().is_empty());
}

#[test]
fn a_bad_endpoint_is_refused_with_one_line() {
    let out = run_cmd(
        {
            let mut c = std::process::Command::new(bin("msched"));
            c.args([
                "--otlp-endpoint",
                "collector:4317",
                "--listen",
                "127.0.0.1:0",
            ]);
            c
        },
        Duration::from_secs(20),
    );
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stderr
            .contains("--otlp-endpoint 'collector:4317': use a URL such as http://"),
        "{out}"
    );
}

#[test]
fn the_trace_survives_a_scheduler_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, seen) = start_receiver(&rt);
    let mut f = traced_fleet(&url);
    let suite = f.sleepy_suite("slow", 1, 4.0);
    let out = traced_ctl(
        &f,
        &url,
        &["submit", "pytest", "--dir", suite.to_str().unwrap()],
    );
    assert_eq!(out.code, 0, "{out}");
    let id = out.stdout.trim().to_string();
    f.wait_state(&id, "running");
    // Everything the first msched knew about the job's span is in its store.
    f.sched.restart();
    let done = f.wait_terminal(&id);
    assert_eq!(done["state"], "passed", "{done}");
    let spans = wait_spans(&seen, &f, &WANTED);
    let by = |s: &str, n: &str| named(&spans, s, n).unwrap().span.clone();
    let submit = by("msctl", "msctl submit");
    let job = by("msched", "cicd.pipeline.run");
    let attempt = by("msched", "cicd.pipeline.task.run");
    let pytest = by("msagent", "pytest");
    assert_eq!(
        hex(&job.trace_id),
        hex(&submit.trace_id),
        "the job stays in msctl's trace"
    );
    assert_eq!(hex(&job.parent_span_id), hex(&submit.span_id));
    assert_eq!(hex(&attempt.parent_span_id), hex(&job.span_id));
    assert_eq!(
        hex(&pytest.parent_span_id),
        hex(&attempt.span_id),
        "the agent's span (begun under the first msched) is the attempt's child"
    );
    assert_eq!(
        attr(&job.attributes, "cicd.pipeline.result").as_deref(),
        Some("success")
    );
}

#[test]
fn msched_exports_the_job_metrics_when_it_stops() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, seen) = start_receiver(&rt);
    let mut f = traced_fleet(&url);
    let suite = f.write_suite("measured", &[("test_measured.py", SUITE)]);
    let out = traced_ctl(
        &f,
        &url,
        &[
            "submit",
            "pytest",
            "--dir",
            suite.to_str().unwrap(),
            "--wait",
        ],
    );
    assert_eq!(out.code, 1, "one test fails: {out}");
    // The periodic reader exports every 60 s; a stopping msched exports what it has. (Its
    // graceful stop waits for open agent streams, so the agent goes first.)
    f.agent("otel-a1").terminate();
    let pid = f.sched.pid().expect("msched runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let find = |name: &str| {
        seen.metrics
            .lock()
            .unwrap()
            .iter()
            .find(|(s, m)| s == "msched" && m.name == name)
            .map(|(_, m)| m.clone())
    };
    let duration = wait_for(
        Duration::from_secs(20),
        "msched's job metrics",
        || find("cicd.pipeline.run.duration"),
        || {
            let log = std::fs::read_to_string(&f.sched.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            format!(
                "received {:?}\nmsched alive: {}\nmsched log:\n{}",
                seen.metrics.lock().unwrap(),
                pid_alive(pid),
                lines[lines.len().saturating_sub(15)..].join("\n")
            )
        },
    );
    let Some(Data::Histogram(h)) = duration.data else {
        panic!("a histogram: {duration:?}");
    };
    assert_eq!(duration.unit, "s");
    let points: Vec<(u64, Option<String>, Option<String>)> = h
        .data_points
        .iter()
        .map(|p| {
            (
                p.count,
                attr(&p.attributes, "cicd.pipeline.result"),
                attr(&p.attributes, "msfleet.queue"),
            )
        })
        .collect();
    assert_eq!(
        points,
        vec![(1, Some("failure".into()), Some("default".into()))],
        "one failed job in the default queue"
    );
    let wait = find("msfleet.job.wait").expect("the wait histogram came in the same export");
    let Some(Data::Histogram(w)) = wait.data else {
        panic!("a histogram: {wait:?}");
    };
    assert_eq!(w.data_points.iter().map(|p| p.count).sum::<u64>(), 1);
}

#[test]
fn benchmark_cases_are_spans_of_the_attempt() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, seen) = start_receiver(&rt);
    let f = traced_fleet_with(&url, ALLOW_BENCH);
    let case =
        r#"{"name": "quick", "user_input": {}, "baseline_time_s": 0.01, "tolerance": 100.0}"#;
    let bench = r#"
import json, os
with open(os.environ["MSFLEET_METRICS"], "w") as f:
    json.dump({"total_time_s": 0.01}, f)
"#;
    let suite = f.write_suite("perf", &[("bench.py", bench), ("cases/quick.json", case)]);
    let command = format!("{} bench.py {{case}}", python().display());
    let out = traced_ctl(
        &f,
        &url,
        &[
            "submit",
            "bench",
            "--dir",
            suite.to_str().unwrap(),
            "--cases",
            "cases",
            "--command",
            &command,
            "--warmup",
            "0",
            "--repetitions",
            "1",
            "--wait",
        ],
    );
    assert_eq!(out.code, 0, "the case passes: {out}");
    let spans = wait_spans(
        &seen,
        &f,
        &[
            ("msched", "cicd.pipeline.task.run"),
            ("msagent", "benchmark"),
            ("msagent", "benchmark case"),
        ],
    );
    let by = |s: &str, n: &str| named(&spans, s, n).unwrap().span.clone();
    let attempt = by("msched", "cicd.pipeline.task.run");
    let bench = by("msagent", "benchmark");
    let case = by("msagent", "benchmark case");
    assert_eq!(hex(&bench.parent_span_id), hex(&attempt.span_id));
    assert_eq!(hex(&case.parent_span_id), hex(&bench.span_id));
    assert_eq!(hex(&case.trace_id), hex(&attempt.trace_id));
    assert_eq!(attr(&case.attributes, "case").as_deref(), Some("quick"));
}
