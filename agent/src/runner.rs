//! Runs one attempt of a job: prepares the source, then for a pytest job starts
//! `python -m pytest` in its own process group with the msfleet plugin, and
//! turns what happens into task updates (started, log chunks, one result per
//! test as it finishes, finished); a benchmark job goes to the benchmark core
//! ([`crate::bench::run`]). Cancel and timeout send SIGTERM to the whole
//! group, then SIGKILL after the grace period.

use crate::config::AgentConfig;
use crate::source;
use msfleet_proto::{task_update, Finished, JobSpec, LogChunk, Outcome, Started, TestResult};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::net::UnixListener;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

/// The agent's pytest plugin, written next to each run and put on PYTHONPATH.
pub const PLUGIN_SOURCE: &str = include_str!("../python/msfleet_pytest_plugin.py");
const PLUGIN_MODULE: &str = "msfleet_pytest_plugin";

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
}

/// Identifies an attempt on this agent: (task id, attempt number).
pub type AttemptKey = (String, u32);

/// Sink for one attempt's updates; the session numbers and sends them.
#[derive(Clone)]
pub struct Updates {
    key: AttemptKey,
    tx: mpsc::UnboundedSender<(AttemptKey, task_update::Kind)>,
}

impl Updates {
    pub fn new(
        key: AttemptKey,
        tx: mpsc::UnboundedSender<(AttemptKey, task_update::Kind)>,
    ) -> Self {
        Updates { key, tx }
    }

    pub fn send(&self, kind: task_update::Kind) {
        let _ = self.tx.send((self.key.clone(), kind));
    }
}

/// Runs the attempt to the end and reports `Finished` last (unless abandoned).
pub async fn run(
    cfg: Arc<AgentConfig>,
    a: AttemptSpec,
    tx: Updates,
    stop: watch::Receiver<Option<StopReason>>,
) {
    tx.send(task_update::Kind::Started(Started {}));
    let finished = run_inner(&cfg, &a, &tx, stop).await;
    if let Some(f) = finished {
        tracing::info!(task = %a.task_id, attempt = a.attempt, outcome = ?f.outcome(), reason = %f.reason, "attempt finished");
        tx.send(task_update::Kind::Finished(f));
    }
}

/// Wall-clock limit of one attempt (the scheduler fills in its default).
pub(crate) fn attempt_timeout(spec: &JobSpec) -> Duration {
    Duration::from_millis(spec.timeout_ms.unwrap_or(3_600_000).max(1) as u64)
}

fn finished(outcome: Outcome, reason: impl Into<String>, exit_code: i32) -> Option<Finished> {
    Some(Finished {
        outcome: outcome as i32,
        reason: reason.into(),
        exit_code,
    })
}

async fn run_inner(
    cfg: &AgentConfig,
    a: &AttemptSpec,
    tx: &Updates,
    mut stop: watch::Receiver<Option<StopReason>>,
) -> Option<Finished> {
    let slot = format!("{}-{}", a.task_id, a.attempt);
    let ws = match source::prepare(a.spec.source.as_ref(), &cfg.roots, &cfg.work_dir, &slot).await {
        Ok(ws) => ws,
        Err(e) => return finished(Outcome::Error, e.to_string(), -1),
    };
    if let Some(c) = &ws.commit {
        log(tx, "stderr", format!("msfleet: checked out {c}\n"));
    }
    if a.spec.kind == "benchmark" {
        let f = crate::bench::run::run(cfg, a, &slot, &ws.dir, tx, &mut stop).await;
        ws.cleanup().await;
        return f;
    }
    let result = run_pytest(cfg, a, &slot, &ws.dir, tx, &mut stop).await;
    ws.cleanup().await;
    match result {
        Ok(f) => f,
        Err(e) => finished(Outcome::Error, format!("could not run pytest: {e}"), -1),
    }
}

fn log(tx: &Updates, stream: &str, text: String) {
    tx.send(task_update::Kind::Log(LogChunk {
        stream: stream.into(),
        data: text.into_bytes(),
    }));
}

/// One line the plugin sends.
#[derive(Debug, Deserialize)]
struct PluginMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    nodeid: String,
    #[serde(default)]
    when: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    duration_s: f64,
    #[serde(default)]
    longrepr: String,
    #[serde(default)]
    markers: Vec<String>,
}

async fn run_pytest(
    cfg: &AgentConfig,
    a: &AttemptSpec,
    slot: &str,
    dir: &Path,
    tx: &Updates,
    stop: &mut watch::Receiver<Option<StopReason>>,
) -> std::io::Result<Option<Finished>> {
    let plugin_dir = cfg.work_dir.join("plugin");
    tokio::fs::create_dir_all(&plugin_dir).await?;
    let plugin_path = plugin_dir.join(format!("{PLUGIN_MODULE}.py"));
    if tokio::fs::read_to_string(&plugin_path)
        .await
        .ok()
        .as_deref()
        != Some(PLUGIN_SOURCE)
    {
        let tmp = plugin_dir.join(format!("{PLUGIN_MODULE}.py.{slot}.tmp"));
        tokio::fs::write(&tmp, PLUGIN_SOURCE).await?;
        tokio::fs::rename(&tmp, &plugin_path).await?;
    }
    let run_dir = cfg.work_dir.join("run");
    let artifacts = cfg.work_dir.join("artifacts").join(slot);
    tokio::fs::create_dir_all(&run_dir).await?;
    tokio::fs::create_dir_all(&artifacts).await?;
    let sock_path = run_dir.join(format!("{slot}.sock"));
    let _ = tokio::fs::remove_file(&sock_path).await;
    let listener = UnixListener::bind(&sock_path)?;

    // The plugin first, then the job's own PYTHONPATH (or else the agent's).
    let mut pythonpath = std::ffi::OsString::from(plugin_dir.as_os_str());
    let inherited = match a.spec.env.get("PYTHONPATH") {
        Some(p) => Some(std::ffi::OsString::from(p)),
        None => std::env::var_os("PYTHONPATH"),
    };
    if let Some(rest) = inherited.filter(|p| !p.is_empty()) {
        pythonpath.push(":");
        pythonpath.push(rest);
    }
    let mut cmd = Command::new(&cfg.python);
    cmd.arg("-m")
        .arg("pytest")
        .arg("-p")
        .arg(PLUGIN_MODULE)
        .arg("-p")
        .arg("no:cacheprovider")
        .arg(format!(
            "--junitxml={}",
            artifacts.join("junit.xml").display()
        ))
        .args(&a.spec.args)
        .current_dir(dir)
        .envs(&a.spec.env)
        .env("PYTHONPATH", pythonpath)
        .env("PYTHONUNBUFFERED", "1")
        .env("MSFLEET_RESULT_SOCKET", &sock_path)
        .env("MSFLEET_JOB_ID", &a.job_id)
        .env("MSFLEET_TASK_ID", &a.task_id)
        .env("MSFLEET_ATTEMPT", a.attempt.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = tokio::fs::remove_file(&sock_path).await;
            return Ok(finished(
                Outcome::Error,
                format!("cannot start {}: {e}", cfg.python.display()),
                -1,
            ));
        }
    };
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    // Recorded so that an agent restarted after a crash can kill what is left.
    let pgid_file = run_dir.join(format!("{slot}.pgid"));
    if let Some(pg) = pgid {
        tokio::fs::write(
            &pgid_file,
            format!("{}\n{}\n", pg.as_raw(), sock_path.display()),
        )
        .await?;
    }
    let errors = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(pump_log(out, "stdout", tx.clone())));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(pump_log(err, "stderr", tx.clone())));
    }
    let connected = Arc::new(AtomicBool::new(false));
    let results = tokio::spawn(pump_results(
        listener,
        tx.clone(),
        errors.clone(),
        connected.clone(),
    ));

    let timeout = attempt_timeout(&a.spec);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut stopped: Option<Result<StopReason, ()>> = None; // Err(()) = timed out
    let status = loop {
        tokio::select! {
            st = child.wait() => break st?,
            _ = &mut deadline, if stopped.is_none() => {
                stopped = Some(Err(()));
                break terminate(&mut child, pgid, cfg.kill_grace).await?;
            }
            changed = stop.changed(), if stopped.is_none() => {
                let reason = if changed.is_err() { Some(StopReason::Shutdown) } else { stop.borrow().clone() };
                if let Some(r) = reason {
                    stopped = Some(Ok(r));
                    break terminate(&mut child, pgid, cfg.kill_grace).await?;
                }
            }
        }
    };
    // Whatever the test process left behind in its group goes too.
    if let Some(pg) = pgid {
        let _ = killpg(pg, Signal::SIGKILL);
    }
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
    }
    // A connection may still sit in the backlog; if none comes, pytest exited
    // before loading the plugin.
    let wait = if connected.load(Ordering::Acquire) {
        5000
    } else {
        500
    };
    let mut results = results;
    if tokio::time::timeout(Duration::from_millis(wait), &mut results)
        .await
        .is_err()
    {
        results.abort();
    }
    let _ = tokio::fs::remove_file(&sock_path).await;
    let _ = tokio::fs::remove_file(&pgid_file).await;

    let code = status.code().unwrap_or(-1);
    Ok(match stopped {
        Some(Err(())) => finished(
            Outcome::TimedOut,
            format!("timed out after {}", humantime::format_duration(timeout)),
            code,
        ),
        Some(Ok(StopReason::Cancelled(why))) => finished(Outcome::Cancelled, why, code),
        Some(Ok(StopReason::Abandoned)) => None,
        Some(Ok(StopReason::Shutdown)) => {
            finished(Outcome::Requeue, "the agent is shutting down", code)
        }
        None => classify(status, errors.load(Ordering::Relaxed)),
    })
}

/// Maps pytest's exit status to an outcome. `failed` = the tests said no;
/// `error` = pytest itself could not do its job.
fn classify(status: ExitStatus, errors: u64) -> Option<Finished> {
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().unwrap_or(-1);
    match status.code() {
        Some(0) => finished(Outcome::Passed, "all tests passed", 0),
        Some(1) => finished(Outcome::Failed, "tests failed", 1),
        Some(2) if errors > 0 => {
            finished(Outcome::Failed, "interrupted: errors during collection", 2)
        }
        Some(2) => finished(Outcome::Error, "pytest was interrupted (exit 2)", 2),
        Some(3) => finished(Outcome::Error, "pytest internal error (exit 3)", 3),
        Some(4) => finished(
            Outcome::Error,
            "pytest usage error (exit 4): see the log",
            4,
        ),
        Some(5) => finished(Outcome::Failed, "no tests collected (pytest exit 5)", 5),
        Some(c) => finished(Outcome::Error, format!("pytest exited with code {c}"), c),
        None => finished(
            Outcome::Error,
            format!(
                "pytest was killed by signal {}",
                status.signal().unwrap_or(0)
            ),
            code,
        ),
    }
}

/// SIGTERM to the group, SIGKILL after `grace` if the main process is still there.
async fn terminate(
    child: &mut tokio::process::Child,
    pgid: Option<Pid>,
    grace: Duration,
) -> std::io::Result<ExitStatus> {
    if let Some(pg) = pgid {
        let _ = killpg(pg, Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(st) => st,
        Err(_) => {
            if let Some(pg) = pgid {
                let _ = killpg(pg, Signal::SIGKILL);
            }
            child.wait().await
        }
    }
}

async fn pump_log(mut r: impl AsyncRead + Unpin, stream: &'static str, tx: Updates) {
    let mut buf = vec![0u8; msfleet_proto::MAX_LOG_CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                tx.send(task_update::Kind::Log(LogChunk {
                    stream: stream.into(),
                    data: buf[..n].to_vec(),
                }));
            }
        }
    }
}

async fn pump_results(
    listener: UnixListener,
    tx: Updates,
    errors: Arc<AtomicU64>,
    connected: Arc<AtomicBool>,
) {
    // pytest connects once, at configure time; if it exits before, this task is aborted.
    let Ok((conn, _)) = listener.accept().await else {
        return;
    };
    connected.store(true, Ordering::Release);
    let mut lines = BufReader::new(conn).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let msg: PluginMessage = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable line from the pytest plugin");
                continue;
            }
        };
        if msg.kind != "test" {
            continue;
        }
        if msg.outcome == "error" {
            errors.fetch_add(1, Ordering::Relaxed);
        }
        tx.send(task_update::Kind::Test(TestResult {
            nodeid: msg.nodeid,
            when: msg.when,
            outcome: msg.outcome,
            duration_s: msg.duration_s,
            longrepr: msg.longrepr,
            markers: msg.markers,
        }));
    }
}

/// Kills the process groups of test runs that a previous agent process left
/// behind (it was killed before it could stop them). A group is killed only
/// when it is certainly ours: its leader is gone (a live group keeps its id
/// from being reused) or the leader still carries our result-socket path
/// (pytest) or metrics-file path (benchmark runs), the file's second line.
pub fn reap_orphans(work_dir: &Path) -> usize {
    let run_dir = work_dir.join("run");
    let Ok(entries) = std::fs::read_dir(&run_dir) else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pgid") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut lines = text.lines();
        let pgid = lines.next().and_then(|l| l.trim().parse::<i32>().ok());
        let sock = lines.next().unwrap_or("").to_string();
        if let Some(pg) = pgid.filter(|p| *p > 1) {
            let leader = Path::new("/proc").join(pg.to_string());
            let ours = if leader.exists() {
                let markers = [
                    format!("MSFLEET_RESULT_SOCKET={sock}"),
                    format!("MSFLEET_METRICS={sock}"),
                ];
                std::fs::read(leader.join("environ"))
                    .map(|env| {
                        env.split(|b| *b == 0)
                            .any(|kv| markers.iter().any(|m| kv == m.as_bytes()))
                    })
                    .unwrap_or(false)
            } else {
                true
            };
            if ours && killpg(Pid::from_raw(pg), Signal::SIGKILL).is_ok() {
                tracing::warn!(
                    pgid = pg,
                    "killed a test process group left by a previous agent"
                );
                killed += 1;
            }
        }
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(sock);
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn spawn_group(marker: Option<&str>) -> std::process::Child {
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("300").process_group(0);
        if let Some(m) = marker {
            cmd.env("MSFLEET_RESULT_SOCKET", m);
        }
        cmd.spawn().unwrap()
    }

    fn alive(child: &mut std::process::Child) -> bool {
        std::thread::sleep(Duration::from_millis(100));
        child.try_wait().unwrap().is_none()
    }

    #[test]
    fn reaps_only_groups_that_carry_our_marker() {
        let work = tempfile::tempdir().unwrap();
        let run = work.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        let sock = run.join("7-1.sock");
        let mut ours = spawn_group(Some(&sock.display().to_string()));
        let mut stranger = spawn_group(None);
        // Until the child has exec'd, /proc shows the parent's environment.
        for child in [&ours, &stranger] {
            let exe = format!("/proc/{}/cmdline", child.id());
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !std::fs::read(&exe)
                .unwrap_or_default()
                .starts_with(b"sleep")
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        std::fs::write(
            run.join("7-1.pgid"),
            format!("{}\n{}\n", ours.id(), sock.display()),
        )
        .unwrap();
        std::fs::write(
            run.join("8-1.pgid"),
            format!("{}\n{}\n", stranger.id(), run.join("8-1.sock").display()),
        )
        .unwrap();
        assert_eq!(reap_orphans(work.path()), 1);
        assert!(!alive(&mut ours), "our orphaned group must be killed");
        assert!(alive(&mut stranger), "a reused pid must not be killed");
        assert!(!run.join("7-1.pgid").exists());
        stranger.kill().unwrap();
        let _ = stranger.wait();
    }
}
