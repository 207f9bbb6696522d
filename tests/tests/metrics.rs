//! End-to-end: msched's HTTP listener against the real tools. Debian's
//! Prometheus scrapes a running msched with a viewer token and its query API
//! shows the jobs really queued and finished; `promtool` accepts `/metrics`
//! and deploy's alert rules; `/readyz` says 503 until the store is loaded;
//! systemd's READY=1 and WATCHDOG=1 arrive on a `NOTIFY_SOCKET`; the units
//! in deploy/ pass `systemd-analyze verify`; reflection answers a v1alpha
//! client. `scripts/test` installs `prometheus` (and `promtool`) from Debian.

mod common;

use common::*;
use msfleet_tests::http_get;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released for the process under test).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The tool `name`, or a panic that says how to get it (scripts/test
/// installs it; CI runs scripts/test).
fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    assert!(
        found.status.success() && !path.is_empty(),
        "{name} is missing: apt-get install -y prometheus (scripts/test does)"
    );
    path
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `%`-encodes a PromQL expression for a query string.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of instant query `q` on Prometheus at `addr` (None: no series).
fn prom_query(addr: &str, q: &str) -> Option<f64> {
    let (code, body) = http_get(addr, &format!("/api/v1/query?query={}", encode(q)), None).ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
}

/// Waits until query `q` reads `want`; panics with the last reading.
fn wait_query(addr: &str, q: &str, want: f64, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        last = prom_query(addr, q);
        if last == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "Prometheus: {q} = {last:?}, want {want}\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Debian's Prometheus on a free port, scraping msched's `/metrics` at
/// `target` every second with `token` (over HTTPS trusting `ca` when given),
/// with deploy's alert rules loaded: the process, its web address, its log.
fn start_prometheus(
    base: &std::path::Path,
    target: &str,
    token: &str,
    ca: Option<&std::path::Path>,
) -> (KillOnDrop, String, std::path::PathBuf) {
    let prometheus = tool("prometheus");
    let dir = base.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).unwrap();
    let rules = repo_root().join("deploy/prometheus/msfleet-alerts.yml");
    let tls = match ca {
        Some(ca) => format!(
            "    scheme: https\n    tls_config:\n      ca_file: {}\n",
            ca.display()
        ),
        None => String::new(),
    };
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: msched\n    scrape_interval: 1s\n{tls}\
             \x20   authorization:\n      type: Bearer\n      credentials_file: {token}\n\
             \x20   static_configs:\n      - targets: ['{target}']\n",
            rules = rules.display(),
            token = token_file.display(),
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let log = dir.join("prometheus.log");
    let child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting prometheus");
    (KillOnDrop(child), web, log)
}

#[test]
fn prometheus_scrapes_msched_and_sees_the_jobs_queued_and_finished() {
    let mut f = Fleet::new();
    let out = f.ctl(&["token", "create", "prometheus", "--role", "viewer"]);
    assert_eq!(out.code, 0, "{out}");
    let secret = out.stdout.lines().last().unwrap_or_default().trim();
    let (_prom, web, log) = start_prometheus(f.path(), &f.sched.http_addr, secret, None);

    // No agent yet: three jobs wait in the default queue.
    let suite = f.write_suite(
        "quick",
        &[("test_q.py", "def test_one():\n    assert True\n")],
    );
    let suite = suite.to_str().unwrap();
    let ids: Vec<String> = (0..3)
        .map(|_| f.submit(&["pytest", "--dir", suite, "--allow-unmatched"]))
        .collect();
    wait_query(&web, "up{job=\"msched\"}", 1.0, &log);
    wait_query(
        &web,
        "msfleet_queue_jobs{queue=\"default\",state=\"queued\"}",
        3.0,
        &log,
    );
    assert_eq!(
        prom_query(&web, "sum(msfleet_jobs_finished_total)"),
        None,
        "nothing finished yet"
    );

    // An agent runs them: the queue empties and the finished counter moves.
    f.add_agent("m1", &[], &[]);
    for id in &ids {
        assert_eq!(f.wait_terminal(id)["state"], "passed");
    }
    wait_query(
        &web,
        "msfleet_jobs_finished_total{queue=\"default\",result=\"passed\"}",
        3.0,
        &log,
    );
    wait_query(
        &web,
        "msfleet_queue_jobs{queue=\"default\",state=\"queued\"}",
        0.0,
        &log,
    );
    wait_query(&web, "msfleet_agents{state=\"online\"}", 1.0, &log);
    wait_query(
        &web,
        "msfleet_test_results_total{outcome=\"passed\"}",
        3.0,
        &log,
    );
    wait_query(
        &web,
        "msfleet_job_wait_seconds_count{queue=\"default\"}",
        3.0,
        &log,
    );
    // The alert rules loaded and evaluate (none fires on a healthy fleet).
    let (code, body) = http_get(&web, "/api/v1/rules", None).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("MsfleetAgentLost") && body.contains("\"health\":\"ok\""),
        "{body}"
    );
}

/// With `--tls-cert` the HTTP listener speaks HTTPS with the gRPC
/// certificate: Prometheus scrapes it trusting that certificate.
#[test]
fn prometheus_scrapes_msched_over_https_with_its_grpc_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("c.pem"), certs.path().join("k.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl must be installed (scripts/test installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let f = Fleet::with_opts(SchedOpts {
        tls: Some((cert.clone(), key, cert.clone())),
        ..Default::default()
    });
    let out = f.ctl(&["token", "create", "prometheus", "--role", "viewer"]);
    assert_eq!(out.code, 0, "{out}");
    let secret = out.stdout.lines().last().unwrap_or_default().trim();
    // Plain HTTP gets no answer from an HTTPS listener.
    let plain = http_get(&f.sched.http_addr, "/healthz", None);
    assert!(
        plain.is_err(),
        "plain HTTP to the HTTPS listener: {plain:?}"
    );
    let port = f.sched.http_addr.rsplit(':').next().unwrap().to_string();
    let (_prom, web, log) =
        start_prometheus(f.path(), &format!("localhost:{port}"), secret, Some(&cert));
    wait_query(&web, "up{job=\"msched\"}", 1.0, &log);
    wait_query(&web, "msfleet_agents{state=\"online\"}", 0.0, &log);
}

#[test]
fn promtool_accepts_metrics_and_the_alert_rules() {
    let promtool = tool("promtool");
    let mut f = Fleet::new();
    f.add_agent("p1", &[], &[]);
    let suite = f.write_suite("one", &[("test_p.py", "def test_p():\n    pass\n")]);
    let id = f.submit(&["pytest", "--dir", suite.to_str().unwrap()]);
    f.wait_terminal(&id);
    let (code, text) = http_get(&f.sched.http_addr, "/metrics", None).unwrap();
    assert_eq!(code, 200, "{text}");
    for name in [
        "msfleet_queue_jobs",
        "msfleet_oldest_pending_seconds",
        "msfleet_job_wait_seconds_bucket",
        "msfleet_job_duration_seconds_bucket",
        "msfleet_jobs_finished_total",
        "msfleet_agents",
        "msfleet_test_results_total",
        "msfleet_store_commit_seconds_bucket",
        "msfleet_store_commit_batch_bucket",
        "msfleet_submit_seconds_bucket",
    ] {
        assert!(text.contains(name), "/metrics has {name}:\n{text}");
    }
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = repo_root().join("deploy/prometheus/msfleet-alerts.yml");
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "promtool check rules: {said}");
    assert!(said.contains("SUCCESS: 5 rules found"), "{said}");
    // The dashboard is JSON over these metrics.
    let dash =
        std::fs::read_to_string(repo_root().join("deploy/grafana/msfleet-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash).expect("the dashboard is JSON");
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    assert!(panels.iter().all(|p| p["targets"][0]["expr"]
        .as_str()
        .is_some_and(|e| e.contains("msfleet_") || e.contains("up{"))));
}

/// msched started on `data` with its clock file a FIFO: loading the core
/// reads the clock, so the load blocks until the test writes the time.
struct Held {
    child: KillOnDrop,
    http: String,
    clock: std::path::PathBuf,
    log: std::path::PathBuf,
}

fn start_held(dir: &std::path::Path, env: &[(&str, String)]) -> Held {
    let clock = dir.join("clock");
    let made = Command::new("mkfifo").arg(&clock).status().unwrap();
    assert!(made.success());
    let http = format!("127.0.0.1:{}", free_port());
    let log = dir.join("msched.log");
    // As systemd does, WATCHDOG_PID names the daemon itself: the shell's pid,
    // which `exec` hands to msched.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(bin("msched"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            &http,
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .arg("--ready-file")
        .arg(dir.join("ready"))
        .arg("--clock-file")
        .arg(&clock)
        .env_remove("MSCHED_LISTEN")
        .env_remove("MSCHED_HTTP_LISTEN")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Held {
        child: KillOnDrop(cmd.spawn().unwrap()),
        http,
        clock,
        log,
    }
}

impl Held {
    /// Lets the load go on: later reads find a regular file with the time.
    fn release(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            .to_string();
        let regular = self.clock.with_extension("tmp");
        std::fs::write(&regular, &now).unwrap();
        // Opening the FIFO for writing wakes the blocked reader; the rename
        // puts the regular file in place for every later read.
        let mut fifo = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.clock)
            .unwrap();
        std::fs::rename(&regular, &self.clock).unwrap();
        fifo.write_all(now.as_bytes()).unwrap();
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.http, path, None).ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[test]
fn readyz_says_not_ready_until_the_store_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let held = start_held(dir.path(), &[]);
    let healthz = wait_for(
        Duration::from_secs(30),
        "the HTTP listener to answer",
        || held.get("/healthz"),
        || held.log(),
    );
    assert_eq!(healthz.0, 200, "{healthz:?}");
    let (code, body) = held.get("/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("loading the store"), "{body}");
    let (code, _) = held.get("/metrics").unwrap();
    assert_eq!(code, 503, "no metrics before the core is loaded");
    assert!(!dir.path().join("ready").exists(), "not announced yet");

    held.release();
    wait_for(
        Duration::from_secs(30),
        "/readyz to say ready",
        || held.get("/readyz").filter(|(c, _)| *c == 200),
        || held.log(),
    );
    let ready = std::fs::read_to_string(dir.path().join("ready")).unwrap();
    assert_eq!(
        ready.lines().nth(1),
        Some(format!("http {}", held.http).as_str()),
        "{ready}"
    );
    let (code, text) = held.get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(text.contains("msfleet_queue_jobs{"), "{text}");
    drop(held.child);
}

#[test]
fn systemd_hears_ready_only_after_the_load_and_then_watchdog_pings() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let held = start_held(
        dir.path(),
        &[
            ("NOTIFY_SOCKET", socket_path.display().to_string()),
            ("WATCHDOG_USEC", "400000".to_string()),
        ],
    );
    wait_for(
        Duration::from_secs(30),
        "the HTTP listener to answer",
        || held.get("/healthz"),
        || held.log(),
    );
    let mut buf = [0u8; 256];
    assert!(
        socket.recv(&mut buf).is_err(),
        "nothing is announced while the store loads"
    );
    held.release();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut heard = Vec::new();
    while !heard.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("heard {heard:?}, then nothing: {e}\n{}", held.log()));
        heard.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert_eq!(heard[0].trim(), "READY=1", "{heard:?}");
    assert!(
        held.get("/readyz").is_some_and(|(c, _)| c == 200),
        "ready by the time systemd hears it"
    );
}

#[test]
fn the_units_in_deploy_pass_systemd_analyze_verify() {
    let Ok(found) = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
    else {
        return;
    };
    if !found.status.success() {
        println!("systemd-analyze is not installed here: skipping the unit check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for name in ["msched", "msagent"] {
        let text =
            std::fs::read_to_string(repo_root().join(format!("deploy/{name}.service"))).unwrap();
        assert!(
            text.contains("Type=notify") && text.contains("WatchdogSec="),
            "{name}"
        );
        // verify checks that ExecStart's binary exists: point it at the build.
        let text = text.replace(
            &format!("/usr/local/bin/{name}"),
            &bin(name).display().to_string(),
        );
        let unit = dir.path().join(format!("{name}.service"));
        std::fs::write(&unit, text).unwrap();
        units.push(unit);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Clients that speak only the v1alpha reflection protocol (grpcio-reflection,
/// older grpcurl) list the services too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_to_a_v1alpha_client() {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;

    let f = Fleet::new();
    let channel = tonic::transport::Endpoint::from_shared(f.sched.url())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let admin = std::fs::read_to_string(admin_token_file(&f.addr()).unwrap()).unwrap();
    let bearer = msfleet_proto::client::Bearer::new(Some(&admin)).unwrap();
    let mut reflection = ServerReflectionClient::with_interceptor(channel, bearer);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let resp = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("v1alpha reflection")
        .into_inner()
        .message()
        .await
        .expect("an answer")
        .expect("one answer");
    let names: Vec<String> = match resp.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    };
    for want in [
        "msfleet.v1.Fleet",
        "msfleet.v1.AgentLink",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
}

#[test]
fn msagent_serves_its_metrics_when_asked() {
    let mut f = Fleet::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    f.add_agent(
        "h1",
        &[],
        &["--http-listen", &listen, "--log-format", "json"],
    );
    let suite = f.write_suite("a", &[("test_a.py", "def test_a():\n    pass\n")]);
    let id = f.submit(&["pytest", "--dir", suite.to_str().unwrap()]);
    f.wait_terminal(&id);
    let (code, body) = http_get(&listen, "/healthz", None).unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    // The job is terminal once the scheduler applied the agent's last
    // update; the agent's outbox empties when that update's ack arrives.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (code, text) = http_get(&listen, "/metrics", None).unwrap();
        assert_eq!(code, 200);
        if text.contains("msfleet_agent_outbox_updates 0") || std::time::Instant::now() > until {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(text.contains("msfleet_agent_attempts_running 0"), "{text}");
    assert!(text.contains("msfleet_agent_outbox_updates 0"), "{text}");
    // JSON logs: one object a line, lines about the attempt name it.
    let log = std::fs::read_to_string(&f.agent("h1").log).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty(), "{log}");
    assert!(
        lines.iter().any(|l| l["span"]["job"] == id.as_str()),
        "a line names job {id}:\n{log}"
    );
    assert!(
        lines.iter().any(|l| l["spans"][0]["agent"] == "h1"),
        "lines name the agent:\n{log}"
    );
}

/// Bad or unsafe `--http-listen` values stop msched at start with one line
/// that says what to do.
#[test]
fn msched_refuses_an_http_listener_it_cannot_or_should_not_serve() {
    let dir = tempfile::tempdir().unwrap();
    for (listen, want) in [
        ("0.0.0.0:0", "refusing plain-text HTTP"),
        ("not-an-address", "binding --http-listen not-an-address"),
    ] {
        let out = Command::new(bin("msched"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                listen,
                "--data-dir",
            ])
            .arg(dir.path().join("d"))
            .env_remove("MSCHED_LISTEN")
            .env_remove("MSCHED_HTTP_LISTEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{listen}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("msched: ") && last.contains(want),
            "{listen}: {stderr}"
        );
    }
}
