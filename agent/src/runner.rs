//! Runs one attempt of a job: prepares the source, then for a pytest job starts
//! `python -m pytest` in its own process group with the msfleet plugin, and
//! turns what happens into task updates (started, log chunks, one result per
//! test as it finishes, finished); a benchmark job goes to the benchmark core
//! ([`crate::bench::run`]). This is the one place that dispatches between the
//! two. pytest runs through [`crate::process::ProcessGroup`]: cancel and timeout
//! send SIGTERM to the whole group, then SIGKILL after the grace period.
//!
//! With `retry_failed = N`, the tests that failed in their call phase are run
//! again by node id (up to N more pytest runs, in the same workspace and under
//! the same deadline); one that passes is reported a second time, with outcome
//! `flaky` (the scheduler then counts it as flaky instead of failed). The
//! re-runs' own results are not forwarded. See `runner/flaky.rs`.
//!
//! With `select` (a shard), the node ids are written to a file in the run
//! directory named by `MSFLEET_SELECT_FILE`; the plugin keeps only those items
//! (the rest show as deselected). With `collect_only`, pytest runs with
//! `--collect-only -q` and `MSFLEET_COLLECT=1`, and the plugin reports every
//! item it kept with outcome `collected` (no retries apply).
//!
//! pytest that ends unsuccessfully before the plugin connected never ran a
//! test: the attempt is `error`, with one line naming the interpreter. pytest
//! that dies of a signal the agent did not send (SIGKILL excepted: the OOM
//! killer's) while a test runs has that test reported `failed` ("crashed:
//! signal 11 (SIGSEGV)" and the fault handler's output) and is restarted on
//! the tests not yet reported (`MSFLEET_DESELECT_FILE`), up to
//! `max_crash_restarts` times.

use crate::attempt::{
    attempt_timeout, finished, halted, job_fault, AttemptSpec, Guard, Halt, StopReason, Updates,
};
use crate::config::AgentConfig;
use crate::environment::{self, EnvError, Prepared};
use crate::process::ProcessGroup;
use crate::{policy, source};
use msfleet_proto::{task_update, Finished, Outcome, Started, TestResult};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::Instrument;

mod flaky;
use flaky::Tally;

/// The agent's pytest plugin, written next to each run and put on PYTHONPATH.
pub const PLUGIN_SOURCE: &str = include_str!("../python/msfleet_pytest_plugin.py");
const PLUGIN_MODULE: &str = "msfleet_pytest_plugin";

/// Runs the attempt to the end and reports `Finished` last (unless abandoned).
pub async fn run(
    cfg: Arc<AgentConfig>,
    a: AttemptSpec,
    tx: Updates,
    stop: watch::Receiver<Option<StopReason>>,
) {
    // From here on nothing about the attempt carries a secret value.
    let tx = tx.with_secrets(&a.spec);
    tx.send(task_update::Kind::Started(Started {}));
    #[cfg(debug_assertions)]
    injected_fault();
    let finished = run_inner(&cfg, &a, &tx, stop).await;
    // The cell is gone: nothing may still hold the attempt's devices.
    let withheld = crate::leftover::sweep(&cfg, &a).await;
    if !withheld.is_empty() {
        tx.log(
            "stderr",
            format!(
                "msfleet: withheld after this attempt: {}\n",
                withheld.join("; ")
            ),
        );
    }
    if let Some(mut f) = finished {
        // Also the agent's own log never carries a secret value.
        f.reason = tx.redact(&f.reason);
        tracing::info!(task = %a.task_id, attempt = a.attempt, outcome = ?f.outcome(), reason = %f.reason, "attempt finished");
        tx.send(task_update::Kind::Finished(f));
    }
}

/// Names the attempt's files under the work dir (workspace, `.pgid`, socket).
pub fn slot_name(a: &AttemptSpec) -> String {
    format!("{}-{}", a.task_id, a.attempt)
}

/// The agent's environment variable of the test-only fault injection.
pub const FAULT_VAR: &str = "MSAGENT_FAULT";

/// Test-only fault injection, compiled into debug builds alone (release
/// builds never read [`FAULT_VAR`]): with `MSAGENT_FAULT=panic-in-runner` in
/// the agent's environment, the runner of the first attempt the agent process
/// starts panics right after `Started`, which proves that the session's
/// supervisor ends such an attempt `error` and the agent keeps taking work.
#[cfg(debug_assertions)]
fn injected_fault() {
    static FIRED: AtomicBool = AtomicBool::new(false);
    if std::env::var(FAULT_VAR).as_deref() == Ok("panic-in-runner")
        && !FIRED.swap(true, Ordering::SeqCst)
    {
        panic!("injected fault ({FAULT_VAR}=panic-in-runner)");
    }
}

async fn run_inner(
    cfg: &AgentConfig,
    a: &AttemptSpec,
    tx: &Updates,
    mut stop: watch::Receiver<Option<StopReason>>,
) -> Option<Finished> {
    let slot = slot_name(a);
    // One deadline for the whole attempt, from the checkout to the last re-run.
    let timeout = attempt_timeout(&a.spec);
    let mut guard = Guard::new(tokio::time::Instant::now() + timeout, &mut stop);
    // The owner's policy, whatever the scheduler decided: before anything is
    // fetched, and for the paths once the checkout is there.
    if let Err(why) = policy::admit(&cfg.policy, &a.spec) {
        return job_fault(why);
    }
    // A memory limit this agent cannot enforce is refused, never ignored.
    if let Some(why) = crate::contain::active().refuses(a.spec.memory_limit_bytes) {
        return job_fault(why.to_string());
    }
    let git = source::GitRun {
        timeout: cfg.git_timeout,
        guard: &mut guard,
    };
    let ws = match source::prepare(
        a.spec.source.as_ref(),
        &cfg.roots,
        &cfg.work_dir,
        &slot,
        git,
    )
    .instrument(a.span(tracing::info_span!("checkout", task = %a.task_id, attempt = a.attempt)))
    .await
    {
        Ok(ws) => ws,
        Err(source::SourceError::Halted { halt, during }) => {
            let timed_out = halt == Halt::TimedOut;
            let mut f = halted(halt, timeout, -1)?;
            if timed_out {
                f.reason = format!("{} (in {during})", f.reason);
            }
            return Some(f);
        }
        Err(e) if e.is_job_fault() => return job_fault(e.to_string()),
        Err(e) => return finished(Outcome::Error, e.to_string(), -1),
    };
    if let Err(why) = policy::admit_paths(&ws.dir, &a.spec) {
        ws.cleanup().await;
        return job_fault(why);
    }
    if let Some(c) = &ws.commit {
        tx.log("stderr", format!("msfleet: checked out {c}\n"));
    }
    if a.spec.kind == "benchmark" {
        let f = crate::bench::run::run(cfg, a, &slot, &ws.dir, tx, &mut guard)
            .instrument(
                a.span(tracing::info_span!("benchmark", task = %a.task_id, attempt = a.attempt)),
            )
            .await;
        ws.cleanup().await;
        return f;
    }
    let env = match environment::prepare(cfg, a, &slot, &ws.dir, tx, &mut guard).await {
        Ok(env) => env,
        Err(e) => {
            ws.cleanup().await;
            return match e {
                EnvError::Halted(halt) => {
                    let timed_out = halt == Halt::TimedOut;
                    let mut f = halted(halt, timeout, -1)?;
                    if timed_out {
                        f.reason = format!("{} (in the environment's setup)", f.reason);
                    }
                    Some(f)
                }
                e => finished(Outcome::Error, e.to_string(), -1),
            };
        }
    };
    let result = run_pytest(cfg, a, &slot, &ws.dir, &env, tx, &mut guard)
        .instrument(a.span(tracing::info_span!("pytest", task = %a.task_id, attempt = a.attempt)))
        .await;
    ws.cleanup().await;
    drop(env);
    match result {
        Ok(f) => f,
        Err(e) => finished(Outcome::Error, format!("could not run pytest: {e}"), -1),
    }
}

/// One line the plugin sends.
#[derive(Debug, Deserialize)]
pub(crate) struct PluginMessage {
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
    /// A subtest's report: its description (`[msg] (i=1)`).
    #[serde(default)]
    subtest: Option<String>,
    /// Session message: `session.testscollected`.
    #[serde(default)]
    collected: Option<u64>,
}

/// How one pytest run ended.
struct RunEnd {
    status: ExitStatus,
    /// Set when the attempt was stopped or timed out during the run.
    stopped: Option<Halt>,
    tally: Tally,
    /// The newest part of the run's output (stdout and stderr as read).
    tail: String,
}

/// Lines of output quoted under a crashed test.
const TAIL_LINES: usize = 20;

/// Removes a file when dropped (the attempt's select and deselect files).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Output of a pytest run kept for the reasons of an infrastructure failure
/// and of a crash: the newest [`TAIL_CAP`] bytes.
const TAIL_CAP: usize = 16 * 1024;

/// The newest `TAIL_CAP` bytes of a run's output.
#[derive(Default)]
struct OutputTail(Vec<u8>);

impl OutputTail {
    fn push(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
        if self.0.len() > 2 * TAIL_CAP {
            self.0.drain(..self.0.len() - TAIL_CAP);
        }
    }

    fn text(&self) -> String {
        let b = &self.0[self.0.len().saturating_sub(TAIL_CAP)..];
        String::from_utf8_lossy(b).into_owned()
    }
}

/// The last `n` non-empty lines of `text`.
fn last_lines(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// What to quote under a crashed test: the Python fault handler's report
/// (pytest enables it: "Fatal Python error: Segmentation fault", the stack
/// with the test's frame) when the output has one, else its last lines.
fn crash_output(tail: &str) -> String {
    const FAULT: &str = "Fatal Python error";
    match tail.rfind(FAULT) {
        // The report starts with the fault and the innermost frames.
        Some(i) => tail[i..]
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(60)
            .collect::<Vec<_>>()
            .join("\n"),
        None => last_lines(tail, TAIL_LINES).join("\n"),
    }
}

/// The signal pytest died of, when it counts as a crash of the test that was
/// running: any but SIGKILL (the OOM killer's; the agent's own stops are
/// told apart before).
fn crash_signal(status: ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal().filter(|&s| s != libc::SIGKILL)
}

/// `signal 11 (SIGSEGV)`.
pub(crate) fn describe_signal(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => format!("signal {sig} ({s})"),
        Err(_) => format!("signal {sig}"),
    }
}

/// Everything the runs of one attempt share.
struct PytestRun<'a> {
    cfg: &'a AgentConfig,
    a: &'a AttemptSpec,
    slot: &'a str,
    dir: &'a Path,
    /// The interpreter and variables of the job's environment.
    env: &'a Prepared,
    run_dir: PathBuf,
    pythonpath: std::ffi::OsString,
    tx: &'a Updates,
    timeout: Duration,
}

async fn run_pytest(
    cfg: &AgentConfig,
    a: &AttemptSpec,
    slot: &str,
    dir: &Path,
    env: &Prepared,
    tx: &Updates,
    guard: &mut Guard<'_>,
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
    tokio::fs::create_dir_all(&run_dir).await?;

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
    let timeout = attempt_timeout(&a.spec);
    let run = PytestRun {
        cfg,
        a,
        slot,
        dir,
        env,
        run_dir,
        pythonpath,
        tx,
        timeout,
    };

    // No --junitxml of the agent's own: pytest's JUnit writer costs ~90 us
    // per test, as much as the whole fleet may add (issue 14); `msctl report
    // --junit` writes JUnit XML from the stored results, and a job that wants
    // pytest's own asks for it in its arguments (a path in its checkout).
    let mut args: Vec<String> = Vec::new();
    let collect_only = a.spec.collect_only;
    let mut extra_env: Vec<(&str, std::ffi::OsString)> = Vec::new();
    if collect_only {
        args.push("--collect-only".into());
        args.push("-q".into());
        extra_env.push(("MSFLEET_COLLECT", "1".into()));
    }
    args.extend(a.spec.args.iter().cloned());
    let select_file = if a.spec.select.is_empty() {
        None
    } else {
        let path = run.run_dir.join(format!("{slot}.select"));
        let mut text = a.spec.select.join("\n");
        text.push('\n');
        tokio::fs::write(&path, text).await?;
        extra_env.push(("MSFLEET_SELECT_FILE", path.clone().into_os_string()));
        Some(RemoveOnDrop(path))
    };
    let main = run
        .once(&format!("{slot}.sock"), &args, &extra_env, false, guard)
        .await;
    let mut main = match main? {
        Ok(end) => end,
        Err(f) => return Ok(Some(f)),
    };
    let code = main.status.code().unwrap_or(-1);
    if let Some(h) = main.stopped {
        return Ok(halted(h, run.timeout, code));
    }
    if collect_only {
        let (outcome, reason) = classify_collect(main.status, &main.tally);
        return Ok(finished(outcome, reason, code));
    }

    // pytest died of a signal the agent did not send, in a test: that test
    // is failed (a product crash, not the fleet's), and pytest is restarted
    // on the rest, as pytest-xdist restarts a crashed worker. SIGKILL (the
    // OOM killer) is not a crash of a test: it stays an error.
    let max_restarts = cfg.max_crash_restarts;
    let mut crashes: Vec<String> = Vec::new();
    let mut exhausted = false;
    while let Some(sig) = crash_signal(main.status) {
        let Some((nodeid, called)) = main.tally.running.take() else {
            break;
        };
        let what = describe_signal(sig);
        let (when, outcome) = if called {
            ("teardown", "error")
        } else {
            ("call", "failed")
        };
        let tail = crash_output(&main.tail);
        main.tally.add_test(&nodeid, when, outcome, 0.0, &[], false);
        tx.send(task_update::Kind::Test(bounded_result(TestResult {
            nodeid: nodeid.clone(),
            when: when.into(),
            outcome: outcome.into(),
            duration_s: 0.0,
            // The reason first and, as pytest ends a failure with its
            // error line (what JUnit's message shows), last as well.
            longrepr: if tail.is_empty() {
                format!("crashed: {what}")
            } else {
                format!("crashed: {what}\n{tail}\ncrashed: {what}")
            },
            markers: Vec::new(),
        })));
        crashes.push(format!("{nodeid} ({what})"));
        let n = crashes.len() as u32;
        if n > max_restarts {
            exhausted = true;
            break;
        }
        if let Some(h) = guard.check() {
            return Ok(halted(h, run.timeout, -1));
        }
        let done = run.run_dir.join(format!("{slot}-c{n}.deselect"));
        let mut ids: Vec<&str> = main.tally.reported.iter().map(String::as_str).collect();
        ids.sort_unstable();
        tokio::fs::write(&done, ids.join("\n") + "\n").await?;
        let done = RemoveOnDrop(done);
        tx.log(
            "stderr",
            format!(
                "msfleet: pytest crashed ({what}) in {nodeid}; restart {n} of {max_restarts} without the {} test{} already reported\n",
                ids.len(),
                if ids.len() == 1 { "" } else { "s" }
            ),
        );
        let mut env = extra_env.clone();
        env.push(("MSFLEET_DESELECT_FILE", done.0.clone().into_os_string()));
        let next = match run
            .once(&format!("{slot}-c{n}.sock"), &args, &env, false, guard)
            .await?
        {
            Ok(end) => end,
            Err(f) => return Ok(Some(f)),
        };
        if let Some(h) = next.stopped {
            return Ok(halted(h, run.timeout, next.status.code().unwrap_or(-1)));
        }
        main.status = next.status;
        main.tail = next.tail;
        main.tally.absorb(next.tally);
    }
    drop(select_file);
    let (base, code) = if crashes.is_empty() {
        (classify(main.status, main.tally.errors), code)
    } else {
        let note = match crashes.as_slice() {
            [one] => format!("pytest crashed in {one}"),
            [first, ..] => format!("pytest crashed in {} tests, first {first}", crashes.len()),
            [] => unreachable!(),
        };
        if exhausted {
            let why = format!(
                "tests failed ({note}; not restarted after {max_restarts} restart{}: the rest did not run)",
                if max_restarts == 1 { "" } else { "s" }
            );
            ((Outcome::Failed, why), 1)
        } else if matches!(main.status.code(), Some(0 | 1)) {
            ((Outcome::Failed, format!("tests failed ({note})")), 1)
        } else {
            let (o, r) = classify(main.status, main.tally.errors);
            (
                (o, format!("{r} ({note})")),
                main.status.code().unwrap_or(-1),
            )
        }
    };
    let retries = a.spec.retry_failed;
    if retries == 0 || code != 1 || main.tally.failed_calls.is_empty() {
        let (o, r) = flaky::with_reruns(base, main.tally.rerun_flaky);
        let mut f = finished(o, r, code);
        // pytest's usage error (exit 4): the job's arguments, not the agent.
        if crashes.is_empty() && main.status.code() == Some(4) {
            if let Some(f) = f.as_mut() {
                f.job_fault = true;
            }
        }
        return Ok(f);
    }

    // Re-run what failed, by node id, up to `retries` times; a test whose
    // re-run passes is reported once more, as flaky (the scheduler moves it
    // from failed to flaky). The re-runs' own results are not forwarded.
    let mut pending = main.tally.failed_calls.clone();
    let keep = flaky::forwarded_args(&a.spec.args);
    let mut flaky_count = 0u64;
    for r in 1..=retries {
        if pending.is_empty() {
            break;
        }
        // A stop or the deadline that came between two runs.
        if let Some(h) = guard.check() {
            return Ok(halted(h, run.timeout, code));
        }
        let k = pending.len();
        tx.log(
            "stderr",
            format!(
                "msfleet: retry {r} of {retries}: {k} failed test{}\n",
                if k == 1 { "" } else { "s" }
            ),
        );
        let mut rargs = keep.clone();
        rargs.extend(pending.iter().map(|id| flaky::retry_arg(dir, id)));
        let end = match run
            .once(&format!("{slot}-r{r}.sock"), &rargs, &[], true, guard)
            .await?
        {
            Ok(end) => end,
            Err(f) => {
                tx.log("stderr", format!("msfleet: retry {r}: {}\n", f.reason));
                break;
            }
        };
        if let Some(h) = end.stopped {
            return Ok(halted(h, run.timeout, end.status.code().unwrap_or(-1)));
        }
        pending.retain(|nodeid| {
            let Some((duration_s, markers)) = end.tally.passed_on_retry(nodeid) else {
                return true;
            };
            tx.send(task_update::Kind::Test(TestResult {
                nodeid: nodeid.clone(),
                when: "call".into(),
                outcome: "flaky".into(),
                duration_s: *duration_s,
                longrepr: format!("failed, then passed on retry {r}"),
                markers: markers.clone(),
            }));
            flaky_count += 1;
            false
        });
    }
    let crashed = !crashes.is_empty();
    let (outcome, mut reason) = flaky::verdict(base, code, &main.tally, flaky_count);
    if crashed && flaky_count > 0 {
        reason = format!(
            "tests failed ({flaky_count} flaky; pytest crashed in {})",
            crashes[0]
        );
    }
    Ok(finished(outcome, reason, code))
}

impl PytestRun<'_> {
    /// Runs `python -m pytest -p <plugin> -p no:cacheprovider ARGS` once, in
    /// its own process group, to its end, a stop, or the attempt's deadline.
    /// Logs are streamed; the plugin's results are forwarded unless `rerun`
    /// (a re-run of failed tests: its results are only tallied).
    /// `extra_env` is set on top of the job's environment.
    /// `Ok(Err(finished))`: pytest could not be started.
    async fn once(
        &self,
        sock_name: &str,
        args: &[String],
        extra_env: &[(&str, std::ffi::OsString)],
        rerun: bool,
        guard: &mut Guard<'_>,
    ) -> std::io::Result<Result<RunEnd, Finished>> {
        let (cfg, a, tx) = (self.cfg, self.a, self.tx);
        let sock_path = self.run_dir.join(sock_name);
        let _ = tokio::fs::remove_file(&sock_path).await;
        let listener = UnixListener::bind(&sock_path)?;
        let mut cmd = Command::new(&self.env.python);
        cmd.arg("-m")
            .arg("pytest")
            .arg("-p")
            .arg(PLUGIN_MODULE)
            .arg("-p")
            .arg("no:cacheprovider")
            .args(args)
            .current_dir(self.dir)
            .envs(&a.spec.env)
            .envs(&a.spec.secret_env)
            .envs(self.env.vars.iter().map(|(k, v)| (k, v)))
            .envs(a.device_env.iter().map(|(k, v)| (k, v)))
            .env("PYTHONPATH", &self.pythonpath)
            .env("PYTHONUNBUFFERED", "1")
            .env("MSFLEET_RESULT_SOCKET", &sock_path)
            .env("MSFLEET_JOB_ID", &a.job_id)
            .env("MSFLEET_TASK_ID", &a.task_id)
            .env("MSFLEET_ATTEMPT", a.attempt.to_string())
            .envs(extra_env.iter().map(|(k, v)| (*k, v)));
        let mut group = match ProcessGroup::spawn(&mut cmd, self.slot, a.spec.memory_limit_bytes) {
            Ok(g) => g,
            Err(e) => {
                let _ = tokio::fs::remove_file(&sock_path).await;
                return Ok(Err(Finished {
                    outcome: Outcome::Error as i32,
                    reason: format!(
                        "cannot start the python interpreter {}: {e}",
                        self.env.python.display()
                    ),
                    exit_code: -1,
                    ..Default::default()
                }));
            }
        };
        // Recorded so that an agent restarted after a crash can kill what is left.
        group
            .record(self.run_dir.join(format!("{}.pgid", self.slot)), &sock_path)
            .await?;
        let tally = Arc::new(Mutex::new(Tally::default()));
        let tail = Arc::new(Mutex::new(OutputTail::default()));
        let hook: crate::process::OutputHook = {
            let tail = tail.clone();
            Arc::new(move |_stream: &str, data: &[u8]| {
                tail.lock().unwrap_or_else(|e| e.into_inner()).push(data);
            })
        };
        let running = group.start(tx, Some(hook));
        let connected = Arc::new(AtomicBool::new(false));
        let conn = ResultConn::default();
        // In the pytest span: a failing test is an event of it.
        let results = tokio::spawn(
            pump_results(
                listener,
                (!rerun).then(|| tx.clone()),
                tally.clone(),
                connected.clone(),
                conn.clone(),
            )
            .in_current_span(),
        );

        let mut exited = running.wait(guard, cfg.kill_grace).await;
        exited.drain().await;
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
            // Something still holds the plugin's end: stop reading.
            conn.close();
            results.abort();
        }
        let _ = tokio::fs::remove_file(&sock_path).await;
        let status = exited.reaped?.status;
        if let (None, Some(oom)) = (&exited.halted, &exited.oom) {
            return Ok(Err(Finished {
                outcome: Outcome::Error as i32,
                reason: oom.to_string(),
                exit_code: status.code().unwrap_or(-1),
                ..Default::default()
            }));
        }
        let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
        let tail = tail.lock().unwrap_or_else(|e| e.into_inner()).text();
        // pytest ended on its own, unsuccessfully, and the plugin never
        // connected: pytest did not get as far as running tests. That is the
        // fleet's problem (interpreter, environment), never the tests'.
        if exited.halted.is_none() && !status.success() && !connected.load(Ordering::Acquire) {
            let reason = self.not_started(status, &tail).await;
            return Ok(Err(Finished {
                outcome: Outcome::Error as i32,
                reason,
                exit_code: status.code().unwrap_or(-1),
                ..Default::default()
            }));
        }
        Ok(Ok(RunEnd {
            status,
            stopped: exited.halted,
            tally,
            tail,
        }))
    }

    /// Why pytest ended before its plugin connected, in one line naming the
    /// interpreter: pytest is not importable by it (asked with the run's own
    /// environment), or else what pytest last printed.
    async fn not_started(&self, status: ExitStatus, tail: &str) -> String {
        use std::os::unix::process::ExitStatusExt;
        let python = self.env.python.display();
        let mut probe = tokio::process::Command::new(&self.env.python);
        probe
            .args(["-c", "import pytest"])
            .current_dir(self.dir)
            .envs(&self.a.spec.env)
            .envs(self.env.vars.iter().map(|(k, v)| (k, v)))
            .envs(self.a.device_env.iter().map(|(k, v)| (k, v)))
            .env("PYTHONPATH", &self.pythonpath)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let probed = tokio::time::timeout(Duration::from_secs(30), probe.output()).await;
        if let Ok(Ok(out)) = probed {
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                let why = last_lines(&err, 1)
                    .first()
                    .map_or("", |l| l.trim())
                    .to_string();
                return format!("pytest is not importable by {python}: {why}");
            }
        }
        let how = match (status.code(), status.signal()) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(sig)) => format!("was killed by {}", describe_signal(sig)),
            _ => format!("ended with {status}"),
        };
        let last = last_lines(tail, 1)
            .first()
            .map_or("", |l| l.trim())
            .to_string();
        let mut reason = format!("pytest ({python}) {how} before the msfleet plugin connected");
        if !last.is_empty() {
            let cut: String = last.chars().take(300).collect();
            reason.push_str(&format!(": {cut}"));
        }
        reason
    }
}

/// Maps pytest's exit status to an outcome. `failed` = the tests said no;
/// `error` = pytest itself could not do its job.
fn classify(status: ExitStatus, errors: u64) -> (Outcome, String) {
    use std::os::unix::process::ExitStatusExt;
    let (outcome, reason): (Outcome, &str) = match status.code() {
        Some(0) => (Outcome::Passed, "all tests passed"),
        Some(1) => (Outcome::Failed, "tests failed"),
        Some(2) if errors > 0 => (Outcome::Failed, "interrupted: errors during collection"),
        Some(2) => (Outcome::Error, "pytest was interrupted (exit 2)"),
        Some(3) => (Outcome::Error, "pytest internal error (exit 3)"),
        Some(4) => (Outcome::Error, "pytest usage error (exit 4): see the log"),
        Some(5) => (Outcome::Failed, "no tests collected (pytest exit 5)"),
        Some(c) => return (Outcome::Error, format!("pytest exited with code {c}")),
        None => {
            return (
                Outcome::Error,
                format!(
                    "pytest was killed by signal {}",
                    status.signal().unwrap_or(0)
                ),
            )
        }
    };
    (outcome, reason.to_string())
}

/// [`classify`] for a collect-only run: exit 0 means the collection worked.
fn classify_collect(status: ExitStatus, tally: &Tally) -> (Outcome, String) {
    if status.code() == Some(0) {
        let n = tally.collected_items;
        return (
            Outcome::Passed,
            format!("collected {n} test{}", if n == 1 { "" } else { "s" }),
        );
    }
    classify(status, tally.errors)
}

/// The plugin's connection, once accepted, so that the run can end the
/// reading when something still holds the plugin's end after pytest exited.
#[derive(Clone, Default)]
struct ResultConn(Arc<Mutex<Option<std::os::unix::net::UnixStream>>>);

impl ResultConn {
    fn set(&self, conn: std::os::unix::net::UnixStream) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
    }

    /// A blocked read of the connection returns its end at once.
    fn close(&self) {
        if let Some(c) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The longest plugin line read (the plugin cuts a failure text at 64 KiB;
/// a line as long as this is a broken plugin's): a longer one is skipped.
const MAX_PLUGIN_LINE: usize = 16 << 20;

/// One line of a plugin connection, read by [`read_line`].
#[derive(Debug, PartialEq)]
enum Line {
    /// In the buffer, without its `\n` (the last may lack one).
    Text,
    /// Longer than the limit: skipped, up to its `\n`.
    TooLong,
    /// The connection ended.
    End,
}

/// Reads the next `\n`-terminated line of `r` into `buf` (without the `\n`),
/// holding at most `max` bytes of it.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let (found, used) = {
            let avail = match r.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if avail.is_empty() {
                return Ok(match (too_long, buf.is_empty()) {
                    (true, _) => Line::TooLong,
                    (false, true) => Line::End,
                    (false, false) => Line::Text,
                });
            }
            let end = avail.iter().position(|&b| b == b'\n');
            let part = &avail[..end.unwrap_or(avail.len())];
            if !too_long {
                buf.extend_from_slice(part);
            }
            (end.is_some(), part.len() + usize::from(end.is_some()))
        };
        r.consume(used);
        if buf.len() > max {
            too_long = true;
            buf.clear();
        }
        if found {
            return Ok(if too_long { Line::TooLong } else { Line::Text });
        }
    }
}

/// Reads the plugin's lines: every test result is tallied and, with `tx`,
/// forwarded as it comes. pytest connects once, at configure time; the
/// connection is read on a blocking thread, paced
/// ([`crate::process::PacedReader`]: the plugin writes once per test, and a
/// wake-up of the agent per test would cost the test run).
async fn pump_results(
    listener: UnixListener,
    tx: Option<Updates>,
    tally: Arc<Mutex<Tally>>,
    connected: Arc<AtomicBool>,
    conn: ResultConn,
) {
    // If pytest exits before connecting, this task is aborted.
    let Ok((stream, _)) = listener.accept().await else {
        return;
    };
    connected.store(true, Ordering::Release);
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the pytest plugin's connection");
            return;
        }
    };
    let reader = match stream
        .set_nonblocking(false)
        .and_then(|()| stream.try_clone())
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the pytest plugin's connection");
            return;
        }
    };
    conn.set(stream);
    let span = tracing::Span::current();
    let read = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let paced = crate::process::PacedReader::new(reader, crate::process::READ_PACE);
        read_results(
            std::io::BufReader::with_capacity(64 * 1024, paced),
            tx,
            &tally,
        )
    });
    let _ = read.await;
}

/// [`pump_results`]' reading, to the connection's end.
fn read_results(mut r: impl BufRead, tx: Option<Updates>, tally: &Mutex<Tally>) {
    let rerun = tx.is_none();
    // The results of the running test, sent when it finishes (see `flush`).
    let mut held: Vec<(TestResult, bool)> = Vec::new();
    // pytest-rerunfailures: the last `rerun` report's text per test, for the
    // failure a later pass turns flaky.
    let mut reruns: HashMap<String, String> = HashMap::new();
    let mut line = Vec::new();
    loop {
        match read_line(&mut r, &mut line, MAX_PLUGIN_LINE) {
            Ok(Line::Text) => {}
            Ok(Line::TooLong) => {
                tracing::warn!(
                    limit = MAX_PLUGIN_LINE,
                    "a line from the pytest plugin is too long: skipped"
                );
                continue;
            }
            Ok(Line::End) | Err(_) => break,
        }
        let msg: PluginMessage = match serde_json::from_slice(&line) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable line from the pytest plugin");
                continue;
            }
        };
        match msg.kind.as_str() {
            "test" => {}
            "start" | "finish" => {
                let running = (msg.kind == "start").then_some(msg.nodeid.as_str());
                tally
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .set_running(running);
                flush(tx.as_ref(), &mut held);
                continue;
            }
            "session" => {
                tally.lock().unwrap_or_else(|e| e.into_inner()).collected = msg.collected;
                continue;
            }
            _ => continue,
        }
        let (running, flaky_by_rerun) = {
            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
            let flaky = t.add_test(
                &msg.nodeid,
                &msg.when,
                &msg.outcome,
                msg.duration_s,
                &msg.markers,
                rerun,
            );
            (
                t.running.as_ref().is_some_and(|(id, _)| *id == msg.nodeid),
                flaky,
            )
        };
        let Some(tx) = &tx else { continue };
        if msg.outcome == "rerun" {
            reruns.insert(msg.nodeid.clone(), msg.longrepr.clone());
        }
        let longrepr = match &msg.subtest {
            Some(desc) => subtest_longrepr(desc, &msg.outcome, &msg.longrepr),
            None => msg.longrepr,
        };
        let when = match msg.subtest {
            Some(_) => msfleet_proto::SUBTEST.to_string(),
            None => msg.when,
        };
        let result = bounded_result(TestResult {
            nodeid: msg.nodeid,
            when,
            outcome: msg.outcome,
            duration_s: msg.duration_s,
            longrepr,
            markers: msg.markers,
        });
        // A pass after pytest-rerunfailures' reruns is sent as
        // `--retry-failed` sends a flaky test: the failure, then `flaky` (the
        // scheduler counts it once, as flaky; the report shows it flaky).
        let results = if flaky_by_rerun {
            let failure = reruns.remove(&result.nodeid).unwrap_or_default();
            let n = result.nodeid.clone();
            vec![
                TestResult {
                    outcome: "failed".into(),
                    longrepr: failure,
                    duration_s: 0.0,
                    ..result.clone()
                },
                TestResult {
                    outcome: "flaky".into(),
                    longrepr: format!("failed, then passed on a pytest-rerunfailures rerun ({n})"),
                    ..result
                },
            ]
        } else {
            vec![result]
        };
        for result in results {
            if msfleet_proto::telemetry::enabled()
                && matches!(result.outcome.as_str(), "failed" | "error")
            {
                tracing::info!(
                    test.case.name = %result.nodeid,
                    test.case.result.status = "fail",
                    outcome = %result.outcome,
                    "test failed"
                );
            }
            if running {
                held.push((result, msg.subtest.is_some()));
                if held.len() >= MAX_HELD {
                    flush(Some(tx), &mut held);
                }
            } else {
                tx.send(task_update::Kind::Test(result));
            }
        }
    }
    flush(tx.as_ref(), &mut held);
}

/// Results of one test held back at most (a test with more subtests sends
/// them as they come).
const MAX_HELD: usize = 1024;

/// Sends the held results of a test. With subtests among them, the test's
/// own results go first and its subtests' after them, in pytest's order, so
/// that every view shows the SUBPASS/SUBFAIL lines under their test (pytest
/// reports a test after its subtests); a `flaky` result stays after the
/// failure it turns flaky. The counts are the same in any order, and a
/// failed subtest fails its test wherever it comes (`when` "subtest").
fn flush(tx: Option<&Updates>, held: &mut Vec<(TestResult, bool)>) {
    let mut results = std::mem::take(held);
    let Some(tx) = tx else { return };
    if results.iter().any(|(_, sub)| *sub) {
        // Stable: the order within each group is pytest's.
        results.sort_by_key(|(r, sub)| match (r.outcome.as_str(), sub) {
            ("flaky", _) => 2,
            (_, true) => 1,
            _ => 0,
        });
    }
    for (r, _) in results {
        tx.send(task_update::Kind::Test(r));
    }
}

/// A subtest's result text, headed as pytest shows it: `SUBFAIL [msg] (i=1)`
/// (or `SUBPASS`, `SUBSKIP`), then its failure.
fn subtest_longrepr(desc: &str, outcome: &str, longrepr: &str) -> String {
    let word = match outcome {
        "passed" | "subpassed" => "SUBPASS",
        "skipped" => "SUBSKIP",
        "xfailed" => "SUBXFAIL",
        "xpassed" => "SUBXPASS",
        _ => "SUBFAIL",
    };
    if longrepr.is_empty() {
        format!("{word} {desc}")
    } else {
        format!("{word} {desc}\n{longrepr}")
    }
}

/// `t` within the scheduler's size limits (it refuses a result over them):
/// a long failure text is cut with a visible marker, markers past the limit
/// are dropped. An over-long node id is sent as it is and refused: cutting it
/// would record the result under another test's name.
fn bounded_result(mut t: TestResult) -> TestResult {
    t.longrepr = msfleet_proto::cut_longrepr(std::mem::take(&mut t.longrepr));
    t.markers.truncate(msfleet_proto::MAX_MARKERS);
    t
}

#[cfg(test)]
mod bounded_tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A plugin line with a 3 MiB failure text and 300 markers reaches the
    /// scheduler within its limits (it would refuse it otherwise).
    #[tokio::test]
    async fn a_huge_failure_text_is_cut_before_it_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (utx, mut urx) = tokio::sync::mpsc::unbounded_channel();
        let tally = Arc::new(Mutex::new(Default::default()));
        let pump = tokio::spawn(pump_results(
            listener,
            Some(Updates::new(("1".into(), 1), utx)),
            tally,
            Arc::new(AtomicBool::new(false)),
            ResultConn::default(),
        ));
        let line = serde_json::json!({
            "type": "test",
            "nodeid": "t.py::big",
            "when": "call",
            "outcome": "failed",
            "longrepr": format!("Traceback{}AssertionError: the end", "x".repeat(3 << 20)),
            "markers": vec!["m"; 300],
        });
        let mut conn = tokio::net::UnixStream::connect(&path).await.unwrap();
        conn.write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        drop(conn);
        pump.await.unwrap();
        let Some((_, task_update::Kind::Test(t))) = urx.recv().await else {
            panic!("a test result");
        };
        assert!(t.longrepr.len() <= msfleet_proto::MAX_LONGREPR);
        assert!(t.longrepr.starts_with("Traceback"));
        assert!(t.longrepr.ends_with("AssertionError: the end"));
        assert!(t.longrepr.contains("... [truncated by msfleet] ..."));
        assert_eq!(t.markers.len(), msfleet_proto::MAX_MARKERS);
    }

    /// Lines as the plugin writes them, one write holding several; a line
    /// over the limit is skipped up to its end and the next is read.
    #[test]
    fn lines_are_read_whole_and_bounded() {
        let data = b"{\"a\":1}\n0123456789abc\n{\"b\":2}\nlast";
        let mut r = std::io::BufReader::with_capacity(4, &data[..]);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            let line = read_line(&mut r, &mut buf, 10).unwrap();
            if line == Line::End {
                break;
            }
            got.push((line, String::from_utf8(buf.clone()).unwrap()));
        }
        assert_eq!(
            got,
            [
                (Line::Text, r#"{"a":1}"#.to_string()),
                (Line::TooLong, String::new()),
                (Line::Text, r#"{"b":2}"#.to_string()),
                (Line::Text, "last".to_string()),
            ]
        );
    }

    /// The plugin's one write per test: a test's result and finish come with
    /// the next test's start. The result is forwarded, and the test running
    /// (the one a crash is blamed on) is the next one, not yet called.
    #[tokio::test]
    async fn a_result_written_with_the_next_start_is_sent_and_the_next_test_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (utx, mut urx) = tokio::sync::mpsc::unbounded_channel();
        let tally: Arc<Mutex<Tally>> = Arc::new(Mutex::new(Default::default()));
        let pump = tokio::spawn(pump_results(
            listener,
            Some(Updates::new(("1".into(), 1), utx)),
            tally.clone(),
            Arc::new(AtomicBool::new(false)),
            ResultConn::default(),
        ));
        let mut conn = tokio::net::UnixStream::connect(&path).await.unwrap();
        conn.write_all(b"{\"type\":\"start\",\"nodeid\":\"t.py::a\"}\n")
            .await
            .unwrap();
        conn.write_all(concat!(
            r#"{"type":"test","nodeid":"t.py::a","when":"call","outcome":"passed","category":"passed","duration_s":0.5,"longrepr":"","markers":["m"]}"#,
            "\n",
            r#"{"type":"finish","nodeid":"t.py::a"}"#,
            "\n",
            r#"{"type":"start","nodeid":"t.py::b"}"#,
            "\n",
        ).as_bytes())
        .await
        .unwrap();
        let Some((_, task_update::Kind::Test(t))) = urx.recv().await else {
            panic!("a test result");
        };
        assert_eq!(
            (t.nodeid.as_str(), t.outcome.as_str()),
            ("t.py::a", "passed")
        );
        assert_eq!(t.markers, ["m"]);
        // pytest dies now, in b.
        drop(conn);
        pump.await.unwrap();
        let t = tally.lock().unwrap();
        assert_eq!(t.running, Some(("t.py::b".to_string(), false)));
        assert_eq!(t.reported.len(), 1);
    }

    /// A stuck plugin connection (something still holds pytest's end) ends
    /// when the run closes it.
    #[tokio::test]
    async fn a_held_connection_ends_when_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let conn = ResultConn::default();
        let pump = tokio::spawn(pump_results(
            listener,
            None,
            Arc::new(Mutex::new(Default::default())),
            Arc::new(AtomicBool::new(false)),
            conn.clone(),
        ));
        let _held = tokio::net::UnixStream::connect(&path).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!pump.is_finished());
        conn.close();
        tokio::time::timeout(Duration::from_secs(5), pump)
            .await
            .expect("the reading ends")
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::baselines::tests::stub_scheduler;
    use crate::bench::run::tests::{message, spec, Fixture};
    use msfleet_proto::{self as pb, JobSpec};
    use std::collections::BTreeMap;
    use std::process::Stdio;
    use tokio::sync::mpsc;

    /// `$MSFLEET_PYTHON`, else the repository's `.venv` (`scripts/venv.sh`).
    fn python_with_pytest() -> std::path::PathBuf {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let candidates = std::env::var_os("MSFLEET_PYTHON")
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from)
            .into_iter()
            .chain([repo.join(".venv/bin/python")]);
        for c in candidates {
            let ok = std::process::Command::new(&c)
                .args(["-c", "import pytest"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return c;
            }
        }
        panic!("no Python with pytest: run scripts/venv.sh or set MSFLEET_PYTHON");
    }

    /// A test that fails the first time it runs and passes afterwards (a
    /// marker file under `$FLAKY_DIR` remembers), a stable one, and
    /// parametrized flaky ones whose ids need quoting in a shell.
    const FLAKY_SUITE: &str = r#"
import os, pathlib, pytest

def first_time(name):
    m = pathlib.Path(os.environ["FLAKY_DIR"]) / name
    if m.exists():
        return False
    m.write_text("ran")
    return True

def test_stable():
    pass

def test_flaky():
    assert not first_time("flaky"), "fails the first time"

@pytest.mark.nightly
@pytest.mark.parametrize("p", ["a b", "c[d]"])
def test_param(p):
    assert not first_time("param-" + p.replace("/", "_")), "fails the first time"
"#;

    const BROKEN: &str = "def test_broken():\n    assert False, 'always'\n";

    struct Ran {
        results: Vec<TestResult>,
        logs: String,
        finished: Option<Finished>,
    }

    /// Runs one attempt of `suite` (files) with `retry_failed` and `args`.
    async fn run_suite(files: &[(&str, &str)], retry_failed: u32, args: &[&str]) -> Ran {
        run_suite_with(files, "", retry_failed, args, 60_000, false).await
    }

    /// [`run_suite`] from the suite's subdirectory `sub`, with an attempt
    /// timeout, and optionally a cancel as soon as the first re-run is announced.
    async fn run_suite_with(
        files: &[(&str, &str)],
        sub: &str,
        retry_failed: u32,
        args: &[&str],
        timeout_ms: i64,
        cancel_on_retry: bool,
    ) -> Ran {
        run_suite_spec(
            files,
            sub,
            retry_failed,
            args,
            timeout_ms,
            cancel_on_retry,
            |_| {},
        )
        .await
    }

    /// [`run_suite_with`], with `tweak` applied to the job spec.
    async fn run_suite_spec(
        files: &[(&str, &str)],
        sub: &str,
        retry_failed: u32,
        args: &[&str],
        timeout_ms: i64,
        cancel_on_retry: bool,
        tweak: impl FnOnce(&mut JobSpec),
    ) -> Ran {
        let python = python_with_pytest();
        run_suite_python(
            files,
            sub,
            retry_failed,
            args,
            timeout_ms,
            cancel_on_retry,
            tweak,
            python,
        )
        .await
    }

    /// [`run_suite_spec`] with the agent's `--python`.
    #[allow(clippy::too_many_arguments)]
    async fn run_suite_python(
        files: &[(&str, &str)],
        sub: &str,
        retry_failed: u32,
        args: &[&str],
        timeout_ms: i64,
        cancel_on_retry: bool,
        tweak: impl FnOnce(&mut JobSpec),
        python: std::path::PathBuf,
    ) -> Ran {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let suite = root.join("suite");
        let flaky_dir = root.join("markers");
        std::fs::create_dir_all(&suite).unwrap();
        std::fs::create_dir_all(&flaky_dir).unwrap();
        for (name, text) in files {
            let p = suite.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let cfg = Arc::new(AgentConfig {
            scheduler: String::new(),
            name: "t".into(),
            work_dir: root.join("work"),
            labels: Default::default(),
            roots: vec![root.clone()],
            python,
            uv: None,
            cache_budget: None,
            slots: 1,
            kill_grace: Duration::from_secs(2),
            git_timeout: crate::config::DEFAULT_GIT_TIMEOUT,
            max_crash_restarts: 3,
            npu_smi: "npu-smi".into(),
            probe_interval: crate::config::DEFAULT_PROBE_INTERVAL,
            min_disk_free_mb: crate::config::DEFAULT_MIN_DISK_FREE_MB,
            result_batch: Default::default(),
            target: Default::default(),
            bearer: msfleet_proto::client::Bearer::new(None).unwrap(),
            policy: msfleet_proto::policy::defaults(),
        });
        let mut spec = JobSpec {
            kind: "pytest".into(),
            source: Some(msfleet_proto::Source {
                kind: Some(msfleet_proto::source::Kind::Dir(
                    suite.join(sub).display().to_string(),
                )),
            }),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: [("FLAKY_DIR".to_string(), flaky_dir.display().to_string())].into(),
            retry_failed,
            timeout_ms: Some(timeout_ms),
            ..Default::default()
        };
        tweak(&mut spec);
        let a = AttemptSpec {
            job_id: "1".into(),
            task_id: "1".into(),
            attempt: 1,
            epoch: 1,
            spec,
            devices: Vec::new(),
            device_env: Vec::new(),
            traceparent: String::new(),
        };
        let (utx, mut urx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(None);
        let attempt = tokio::spawn(run(cfg, a, Updates::new(("1".into(), 1), utx), stop_rx));
        let mut ran = Ran {
            results: Vec::new(),
            logs: String::new(),
            finished: None,
        };
        // The channel closes when the attempt is over.
        while let Some((_, kind)) = urx.recv().await {
            match kind {
                task_update::Kind::Test(t) => ran.results.push(t),
                task_update::Kind::Log(l) => {
                    ran.logs += &String::from_utf8_lossy(&l.data);
                    if cancel_on_retry && ran.logs.contains("msfleet: retry 1 of") {
                        let _ = stop_tx.send(Some(StopReason::Cancelled("enough".into())));
                    }
                }
                task_update::Kind::Finished(f) => ran.finished = Some(f),
                _ => {}
            }
        }
        attempt.await.unwrap();
        ran
    }

    /// Asserts how the attempt finished (with the attempt's log as the message).
    #[track_caller]
    fn assert_finished(ran: &Ran, outcome: Outcome, reason: &str) {
        let f = ran.finished.as_ref().expect("finished");
        assert_eq!(
            (f.outcome(), f.reason.as_str()),
            (outcome, reason),
            "{}",
            ran.logs
        );
    }

    fn ids(ran: &Ran, outcome: &str) -> Vec<String> {
        let mut v: Vec<String> = ran
            .results
            .iter()
            .filter(|t| t.outcome == outcome)
            .map(|t| t.nodeid.clone())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn failed_tests_are_retried_and_those_that_pass_reported_flaky() {
        let ran = run_suite(
            &[("test_flaky.py", FLAKY_SUITE), ("test_broken.py", BROKEN)],
            2,
            &["-q"],
        )
        .await;
        assert_finished(&ran, Outcome::Failed, "tests failed (3 flaky)");
        // The main run's results, as pytest counted them; the re-runs add
        // only the flaky results (never a second passed or failed).
        assert_eq!(ids(&ran, "passed"), ["test_flaky.py::test_stable"]);
        assert_eq!(
            ids(&ran, "failed"),
            [
                "test_broken.py::test_broken",
                "test_flaky.py::test_flaky",
                "test_flaky.py::test_param[a b]",
                "test_flaky.py::test_param[c[d]]",
            ]
        );
        assert_eq!(
            ids(&ran, "flaky"),
            [
                "test_flaky.py::test_flaky",
                "test_flaky.py::test_param[a b]",
                "test_flaky.py::test_param[c[d]]",
            ]
        );
        let p = ran
            .results
            .iter()
            .find(|t| t.outcome == "flaky" && t.nodeid.contains("[a b]"))
            .unwrap();
        assert_eq!(p.when, "call");
        assert_eq!(p.longrepr, "failed, then passed on retry 1");
        assert_eq!(p.markers, ["parametrize", "nightly"]);
        assert_eq!(ran.results.len(), 1 + 4 + 3, "{:#?}", ran.results);
        assert!(
            ran.logs.contains("msfleet: retry 1 of 2: 4 failed tests\n"),
            "{}",
            ran.logs
        );
        assert!(
            ran.logs.contains("msfleet: retry 2 of 2: 1 failed test\n"),
            "{}",
            ran.logs
        );
    }

    /// pytest-rerunfailures (`--reruns 1`, installed by `scripts/venv.sh`):
    /// pytest says "3 passed, 1 failed, 4 rerun"; the agent counts the three
    /// that passed on a rerun flaky, as `--retry-failed` would.
    #[tokio::test]
    async fn a_pass_on_a_pytest_rerunfailures_rerun_is_flaky() {
        let ran = run_suite(
            &[("test_flaky.py", FLAKY_SUITE), ("test_broken.py", BROKEN)],
            0,
            &["--reruns", "1"],
        )
        .await;
        assert_finished(&ran, Outcome::Failed, "tests failed (3 flaky)");
        let mut counts = msfleet_proto::TestCounts::default();
        for r in &ran.results {
            counts.record(&r.outcome);
        }
        assert_eq!(
            (counts.passed, counts.failed, counts.flaky, counts.total),
            (1, 1, 3, 5),
            "{:?}\n{}",
            ran.results,
            ran.logs
        );
        let report = msctl_like_flaky(&ran.results);
        assert_eq!(
            report,
            [
                "test_flaky.py::test_flaky",
                "test_flaky.py::test_param[a b]",
                "test_flaky.py::test_param[c[d]]",
            ]
        );
        assert!(ran.logs.contains("rerun"), "{}", ran.logs);
        // All flaky: the attempt passed, and says why.
        let ran = run_suite(&[("test_flaky.py", FLAKY_SUITE)], 0, &["--reruns", "2"]).await;
        assert_finished(&ran, Outcome::Passed, "all tests passed (3 flaky)");
    }

    /// Node ids with a `flaky` result, each after a `failed` one (the order
    /// the scheduler's counts need).
    fn msctl_like_flaky(results: &[TestResult]) -> Vec<String> {
        let mut out = Vec::new();
        for (i, r) in results.iter().enumerate() {
            if r.outcome == "flaky" {
                assert!(
                    results[..i]
                        .iter()
                        .any(|p| p.nodeid == r.nodeid && p.outcome == "failed"),
                    "{results:?}"
                );
                out.push(r.nodeid.clone());
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn all_flaky_failures_make_a_passed_attempt_unless_pytest_stopped_early() {
        let ran = run_suite(&[("test_flaky.py", FLAKY_SUITE)], 1, &[]).await;
        assert_finished(&ran, Outcome::Passed, "all tests passed (3 flaky)");
        assert!(!ran.logs.contains("retry 2"), "{}", ran.logs);

        // -x: pytest stopped at the first failure, the rest never ran.
        let ran = run_suite(&[("test_flaky.py", FLAKY_SUITE)], 1, &["-x"]).await;
        assert_finished(&ran, Outcome::Failed, "tests failed (1 flaky)");
        assert_eq!(ids(&ran, "flaky"), ["test_flaky.py::test_flaky"]);

        // No retries: a failure stays a failure.
        let ran = run_suite(&[("test_flaky.py", FLAKY_SUITE)], 0, &[]).await;
        assert_finished(&ran, Outcome::Failed, "tests failed");
        assert!(ids(&ran, "flaky").is_empty());
        assert!(!ran.logs.contains("msfleet: retry"), "{}", ran.logs);
    }

    #[tokio::test]
    async fn retries_find_node_ids_relative_to_a_rootdir_above_the_job_dir() {
        // The ini file is above the job's directory: node ids start with
        // `pkg/`, which does not exist relative to where pytest runs.
        let ran = run_suite_with(
            &[
                ("pytest.ini", "[pytest]\n"),
                ("pkg/tests/test_flaky.py", FLAKY_SUITE),
            ],
            "pkg",
            1,
            &["-p", "no:randomly"],
            60_000,
            false,
        )
        .await;
        assert_finished(&ran, Outcome::Passed, "all tests passed (3 flaky)");
        assert_eq!(
            ids(&ran, "flaky"),
            [
                "pkg/tests/test_flaky.py::test_flaky",
                "pkg/tests/test_flaky.py::test_param[a b]",
                "pkg/tests/test_flaky.py::test_param[c[d]]",
            ]
        );
    }

    /// Fails the first time; the re-run would pass, after a long sleep.
    const SLOW_RETRY: &str = r#"
import os, pathlib, time

def test_slow_second_time():
    m = pathlib.Path(os.environ["FLAKY_DIR"]) / "slow"
    if m.exists():
        time.sleep(60)
        return
    m.write_text("ran")
    assert False
"#;

    #[tokio::test]
    async fn a_retry_runs_under_the_attempts_deadline_and_can_be_cancelled() {
        let start = std::time::Instant::now();
        let ran = run_suite_with(&[("test_slow.py", SLOW_RETRY)], "", 2, &[], 3_000, false).await;
        assert_finished(&ran, Outcome::TimedOut, "timed out after 3s");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
        assert!(
            ran.logs.contains("msfleet: retry 1 of 2: 1 failed test\n"),
            "{}",
            ran.logs
        );
        assert!(ids(&ran, "flaky").is_empty());

        let start = std::time::Instant::now();
        let ran = run_suite_with(&[("test_slow.py", SLOW_RETRY)], "", 2, &[], 60_000, true).await;
        assert_finished(&ran, Outcome::Cancelled, "enough");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
        assert!(ids(&ran, "flaky").is_empty());
        assert!(!ran.logs.contains("retry 2"), "{}", ran.logs);
    }

    #[tokio::test]
    async fn collect_only_reports_every_item_as_collected_and_passes() {
        let files = [("test_flaky.py", FLAKY_SUITE), ("test_broken.py", BROKEN)];
        let ran = run_suite_spec(&files, "", 2, &[], 60_000, false, |s| {
            s.collect_only = true;
        })
        .await;
        assert_finished(&ran, Outcome::Passed, "collected 5 tests");
        assert_eq!(
            ids(&ran, "collected"),
            [
                "test_broken.py::test_broken",
                "test_flaky.py::test_flaky",
                "test_flaky.py::test_param[a b]",
                "test_flaky.py::test_param[c[d]]",
                "test_flaky.py::test_stable",
            ]
        );
        assert_eq!(ran.results.len(), 5, "{:#?}", ran.results);
        assert!(ran.results.iter().all(|t| t.when == "collect"));
        let p = ran
            .results
            .iter()
            .find(|t| t.nodeid.contains("[a b]"))
            .unwrap();
        assert_eq!(p.markers, ["parametrize", "nightly"]);
        // Nothing ran, so nothing was retried.
        assert!(!ran.logs.contains("msfleet: retry"), "{}", ran.logs);

        // A collection error still fails the run; no tests: exit 5.
        let ran = run_suite_spec(
            &[("test_bad.py", "raise RuntimeError('boom')\n")],
            "",
            0,
            &[],
            60_000,
            false,
            |s| s.collect_only = true,
        )
        .await;
        assert_finished(
            &ran,
            Outcome::Failed,
            "interrupted: errors during collection",
        );
        assert_eq!(ids(&ran, "error"), ["test_bad.py"]);
        let ran = run_suite_spec(&[("conftest.py", "")], "", 0, &[], 60_000, false, |s| {
            s.collect_only = true;
        })
        .await;
        assert_finished(&ran, Outcome::Failed, "no tests collected (pytest exit 5)");
    }

    #[tokio::test]
    async fn select_runs_only_the_shards_node_ids() {
        let files = [("test_flaky.py", FLAKY_SUITE), ("test_broken.py", BROKEN)];
        let ran = run_suite_spec(&files, "", 0, &["-p", "no:randomly"], 60_000, false, |s| {
            s.select = vec![
                "test_flaky.py::test_stable".into(),
                "test_flaky.py::test_param[c[d]]".into(),
            ];
        })
        .await;
        assert_finished(&ran, Outcome::Failed, "tests failed");
        assert_eq!(ids(&ran, "passed"), ["test_flaky.py::test_stable"]);
        assert_eq!(ids(&ran, "failed"), ["test_flaky.py::test_param[c[d]]"]);
        assert_eq!(ran.results.len(), 2, "{:#?}", ran.results);
        assert!(ran.logs.contains("3 deselected"), "{}", ran.logs);
    }

    /// An executable shell script `name` in `dir` with `body`.
    fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    const OK_SUITE: &[(&str, &str)] = &[("test_ok.py", "def test_ok():\n    pass\n")];

    /// An interpreter that cannot import pytest (a real Python, without its
    /// site-packages), one that is missing, and one whose pytest exits before
    /// the plugin connects: the attempt ends `error` naming the interpreter,
    /// never `failed` with no tests.
    #[tokio::test]
    async fn an_interpreter_that_cannot_run_pytest_ends_the_attempt_in_error() {
        let bin = tempfile::tempdir().unwrap();
        let real = python_with_pytest();
        let bare = script(
            bin.path(),
            "python-bare",
            &format!("exec {} -S \"$@\"", real.display()),
        );
        let ran = run_suite_python(OK_SUITE, "", 0, &[], 60_000, false, |_| {}, bare.clone()).await;
        assert_finished(
            &ran,
            Outcome::Error,
            &format!(
                "pytest is not importable by {}: ModuleNotFoundError: No module named 'pytest'",
                bare.display()
            ),
        );
        assert!(ran.results.is_empty(), "{:?}", ran.results);

        let missing = bin.path().join("no-such-python");
        let ran =
            run_suite_python(OK_SUITE, "", 0, &[], 60_000, false, |_| {}, missing.clone()).await;
        assert_finished(
            &ran,
            Outcome::Error,
            &format!(
                "cannot start the python interpreter {}: No such file or directory (os error 2)",
                missing.display()
            ),
        );

        // pytest is importable, but the run dies before the plugin connects.
        let broken = script(
            bin.path(),
            "python-broken",
            &format!(
                "case \"$1\" in -c) exec {} \"$@\";; esac\necho 'libcuda.so.1: cannot open shared object file' >&2\nexit 1",
                real.display()
            ),
        );
        let ran =
            run_suite_python(OK_SUITE, "", 0, &[], 60_000, false, |_| {}, broken.clone()).await;
        assert_finished(
            &ran,
            Outcome::Error,
            &format!(
                "pytest ({}) exited with code 1 before the msfleet plugin connected: libcuda.so.1: cannot open shared object file",
                broken.display()
            ),
        );
        assert!(ran.results.is_empty(), "{:?}", ran.results);
    }

    /// One test kills its own pytest with SIGSEGV (as a native kernel would).
    const CRASH_SUITE: &str = r#"
import os, signal

def test_a():
    pass

def test_b_crash():
    print("about to crash")
    os.kill(os.getpid(), signal.SIGSEGV)

def test_c():
    pass

def test_d_fails():
    assert False
"#;

    /// A segfaulting test is failed and named, with its output, and pytest
    /// is restarted on the tests not yet reported: the tests after it run,
    /// and the attempt ends by the tests' results.
    #[tokio::test]
    async fn a_crashing_test_is_failed_by_name_and_the_tests_after_it_still_run() {
        let ran = run_suite(&[("test_crash.py", CRASH_SUITE)], 0, &["-p", "no:randomly"]).await;
        assert_finished(
            &ran,
            Outcome::Failed,
            "tests failed (pytest crashed in test_crash.py::test_b_crash (signal 11 (SIGSEGV)))",
        );
        assert_eq!(
            ids(&ran, "passed"),
            ["test_crash.py::test_a", "test_crash.py::test_c"]
        );
        assert_eq!(
            ids(&ran, "failed"),
            ["test_crash.py::test_b_crash", "test_crash.py::test_d_fails"]
        );
        assert_eq!(ran.results.len(), 4, "{:#?}", ran.results);
        let crash = ran
            .results
            .iter()
            .find(|t| t.nodeid.ends_with("test_b_crash"))
            .unwrap();
        assert_eq!(crash.when, "call");
        assert!(
            crash.longrepr.starts_with("crashed: signal 11 (SIGSEGV)\n"),
            "{}",
            crash.longrepr
        );
        // Its output (pytest's faulthandler names the test's frame).
        assert!(
            crash.longrepr.contains("Segmentation fault"),
            "{}",
            crash.longrepr
        );
        assert!(
            crash.longrepr.contains("test_b_crash"),
            "{}",
            crash.longrepr
        );
        assert!(
            crash.longrepr.ends_with("\ncrashed: signal 11 (SIGSEGV)"),
            "{}",
            crash.longrepr
        );
        assert!(
            ran.logs.contains(
                "msfleet: pytest crashed (signal 11 (SIGSEGV)) in test_crash.py::test_b_crash; restart 1 of 3 without the 2 tests already reported\n"
            ),
            "{}",
            ran.logs
        );
        assert!(ran.logs.contains("2 deselected"), "{}", ran.logs);
    }

    /// Past `max_crash_restarts` the rest does not run, and the attempt says so.
    #[tokio::test]
    async fn crash_restarts_are_bounded() {
        let mut suite = String::from("import os, signal\n");
        for i in 1..=4 {
            suite +=
                &format!("\ndef test_crash_{i}():\n    os.kill(os.getpid(), signal.SIGSEGV)\n");
        }
        suite += "\ndef test_z():\n    pass\n";
        let ran = run_suite(&[("test_crashes.py", &suite)], 0, &["-p", "no:randomly"]).await;
        assert_finished(
            &ran,
            Outcome::Failed,
            "tests failed (pytest crashed in 4 tests, first test_crashes.py::test_crash_1 (signal 11 (SIGSEGV)); not restarted after 3 restarts: the rest did not run)",
        );
        assert_eq!(ids(&ran, "failed").len(), 4, "{:#?}", ran.results);
        assert!(ids(&ran, "passed").is_empty(), "{:#?}", ran.results);
    }

    /// unittest's `subTest` (and, on pytest 9, the `subtests` fixture): the
    /// results add up as pytest's summary, and the failed subtest's result is
    /// failed, headed with its description as pytest shows it.
    #[tokio::test]
    async fn a_failed_subtest_is_a_failed_result_naming_it() {
        const SUITE: &str = r#"
import unittest

class T(unittest.TestCase):
    def test_ut(self):
        for i in range(3):
            with self.subTest(i=i):
                self.assertNotEqual(i, 2)
"#;
        let ran = run_suite(&[("test_ut.py", SUITE)], 0, &[]).await;
        assert_finished(&ran, Outcome::Failed, "tests failed");
        let failed: Vec<&TestResult> = ran
            .results
            .iter()
            .filter(|t| t.outcome == "failed")
            .collect();
        assert_eq!(failed.len(), 1, "{:#?}", ran.results);
        assert_eq!(failed[0].nodeid, "test_ut.py::T::test_ut");
        assert!(
            failed[0].longrepr.contains("AssertionError: 2 == 2"),
            "{}",
            failed[0].longrepr
        );
        let major = std::process::Command::new(python_with_pytest())
            .args([
                "-c",
                "import pytest; print(pytest.__version__.split('.')[0])",
            ])
            .output()
            .unwrap();
        let major: u32 = String::from_utf8_lossy(&major.stdout)
            .trim()
            .parse()
            .unwrap();
        if major >= 9 {
            assert!(
                failed[0].longrepr.starts_with("SUBFAIL (i=2)\n"),
                "{}",
                failed[0].longrepr
            );
            // pytest 9 counts the test itself as passed, beside its failed
            // subtest and its two passed ones ("1 failed, 1 passed, 2
            // subtests passed"); the test's own result comes first, its
            // subtests' under it, marked as subtests.
            assert_eq!(ids(&ran, "passed"), ["test_ut.py::T::test_ut"]);
            let shown: Vec<(&str, &str, &str)> = ran
                .results
                .iter()
                .map(|t| {
                    let head = t.longrepr.lines().next().unwrap_or("");
                    (t.when.as_str(), t.outcome.as_str(), head)
                })
                .collect();
            assert_eq!(
                shown,
                [
                    ("call", "passed", ""),
                    ("subtest", "subpassed", "SUBPASS (i=0)"),
                    ("subtest", "subpassed", "SUBPASS (i=1)"),
                    ("subtest", "failed", "SUBFAIL (i=2)"),
                ],
                "{:#?}",
                ran.results
            );
        } else {
            assert_eq!(failed[0].when, "call");
        }
    }

    #[test]
    fn subtest_results_are_headed_as_pytest_shows_them() {
        assert_eq!(
            subtest_longrepr("[i] (i=1)", "failed", "E  boom"),
            "SUBFAIL [i] (i=1)\nE  boom"
        );
        assert_eq!(subtest_longrepr("(i=0)", "passed", ""), "SUBPASS (i=0)");
        assert_eq!(subtest_longrepr("(i=0)", "subpassed", ""), "SUBPASS (i=0)");
        assert_eq!(
            subtest_longrepr("(i=0)", "skipped", "why"),
            "SUBSKIP (i=0)\nwhy"
        );
    }

    /// A source that cannot be prepared is the fleet's problem: error, and
    /// pytest never runs.
    #[tokio::test]
    async fn a_source_that_cannot_be_prepared_ends_the_attempt_in_error() {
        let mut gone = String::new();
        let ran = run_suite_spec(OK_SUITE, "", 0, &[], 60_000, false, |s| {
            let Some(pb::source::Kind::Dir(d)) = s.source.as_ref().and_then(|s| s.kind.clone())
            else {
                panic!("a dir job");
            };
            gone = format!("{d}/no-such-checkout");
            s.source = Some(pb::Source {
                kind: Some(pb::source::Kind::Dir(gone.clone())),
            });
        })
        .await;
        assert_finished(
            &ran,
            Outcome::Error,
            &format!("source dir '{gone}' does not exist on this agent"),
        );
        assert!(ran.results.is_empty(), "{:?}", ran.results);
    }

    /// Each way out of the source tree is refused by the agent itself (its
    /// policy is the default one), before pytest runs: the attempt ends
    /// `error` with the reason.
    #[tokio::test]
    async fn root_escapes_are_refused_by_the_agent_and_end_in_error() {
        const SUITE: &[(&str, &str)] = &[("test_ok.py", "def test_ok():\n    pass\n")];
        let link_out = |spec: &mut JobSpec| {
            let Some(pb::source::Kind::Dir(d)) = spec.source.as_ref().and_then(|s| s.kind.clone())
            else {
                panic!("a dir job");
            };
            std::os::unix::fs::symlink("/usr", Path::new(&d).join("escape")).unwrap();
        };
        type Tweak = Box<dyn FnOnce(&mut JobSpec)>;
        let cases: Vec<(&[&str], Tweak, &str)> = vec![
            (
                &["escape/lib"],
                Box::new(link_out),
                "refused by this agent's policy: path argument 'escape/lib' leaves the source tree (it resolves to /usr/lib)",
            ),
            (
                &["--rootdir", "/"],
                Box::new(|_| {}),
                "refused by this agent's policy: pytest option --rootdir / leaves the source tree (paths must stay inside the checkout)",
            ),
            (
                &["-c", "/etc/x.ini"],
                Box::new(|_| {}),
                "refused by this agent's policy: pytest option -c /etc/x.ini leaves the source tree (paths must stay inside the checkout)",
            ),
            (
                &["-p", "evilplugin"],
                Box::new(|_| {}),
                "refused by this agent's policy: the agent's policy does not load pytest plugin '-p evilplugin' (allow_plugins: none)",
            ),
            (
                &[],
                Box::new(|s: &mut JobSpec| {
                    s.env.insert("LD_PRELOAD".into(), "/tmp/evil.so".into());
                }),
                "refused by this agent's policy: the agent's policy refuses environment variable LD_PRELOAD (deny_env; the agent's allow_env lets it through)",
            ),
        ];
        for (args, tweak, reason) in cases {
            let ran = run_suite_spec(SUITE, "", 0, args, 60_000, false, tweak).await;
            assert_finished(&ran, Outcome::Error, reason);
            assert!(
                ran.results.is_empty(),
                "pytest must not run: {:?}",
                ran.results
            );
        }
    }

    /// A secret value reaches the test's environment but never leaves the
    /// agent: printed in two writes (two reads of the pipe), and quoted in a
    /// failure, it comes back as `[redacted]`.
    #[tokio::test]
    async fn secret_values_reach_the_test_and_are_redacted_from_what_it_prints() {
        const SECRET: &str = "tok-3141592653-xyzzy";
        let suite = r#"
import os, sys, time

def test_sees_the_secret():
    value = os.environ["API_TOKEN"]
    assert value == "tok-3141592653-xyzzy"
    sys.stdout.write("token is " + value[:7]); sys.stdout.flush()
    time.sleep(0.3)
    sys.stdout.write(value[7:] + " (end)\n"); sys.stdout.flush()
    print("whole:", value, file=sys.stderr)

def test_quotes_it():
    assert os.environ["API_TOKEN"] == "no", os.environ["API_TOKEN"]
"#;
        let ran = run_suite_spec(
            &[("test_secret.py", suite)],
            "",
            0,
            &["-s"],
            60_000,
            false,
            |s| {
                s.secret_env.insert("API_TOKEN".into(), SECRET.into());
            },
        )
        .await;
        assert_finished(&ran, Outcome::Failed, "tests failed");
        assert_eq!(
            ids(&ran, "passed"),
            ["test_secret.py::test_sees_the_secret"]
        );
        assert!(!ran.logs.contains(SECRET), "{}", ran.logs);
        assert!(!ran.logs.contains("3141592653"), "{}", ran.logs);
        assert!(
            ran.logs.contains("token is [redacted] (end)"),
            "{}",
            ran.logs
        );
        assert!(ran.logs.contains("whole: [redacted]"), "{}", ran.logs);
        for t in &ran.results {
            assert!(!t.longrepr.contains(SECRET), "{}", t.longrepr);
        }
        let failed = ran.results.iter().find(|t| t.outcome == "failed").unwrap();
        assert!(
            failed.longrepr.contains("[redacted]"),
            "{}",
            failed.longrepr
        );
    }

    #[tokio::test]
    async fn a_benchmark_attempt_runs_through_the_runner() {
        let (addr, server) = stub_scheduler().await;
        let mut f = Fixture::new();
        f.case(
            "fast",
            r#"{"name": "fast", "user_input": {"time_s": 0.1}, "baseline_time_s": 0.1, "tolerance": 0.2}"#,
        );
        f.case("broken", "not json");
        let work = tempfile::tempdir().unwrap();
        let cfg = Arc::new(AgentConfig {
            target: msfleet_proto::client::Target {
                addr: addr.clone(),
                ..Default::default()
            },
            bearer: msfleet_proto::client::Bearer::new(None).unwrap(),
            scheduler: addr,
            name: "a".into(),
            work_dir: work.path().to_path_buf(),
            labels: BTreeMap::new(),
            roots: vec![std::fs::canonicalize(f.ws()).unwrap()],
            python: "python3".into(),
            uv: None,
            cache_budget: None,
            slots: 1,
            kill_grace: Duration::from_secs(1),
            git_timeout: crate::config::DEFAULT_GIT_TIMEOUT,
            max_crash_restarts: 3,
            npu_smi: "npu-smi".into(),
            probe_interval: crate::config::DEFAULT_PROBE_INTERVAL,
            min_disk_free_mb: crate::config::DEFAULT_MIN_DISK_FREE_MB,
            result_batch: Default::default(),
            policy: pb::AgentPolicy {
                allow_bench_commands: vec!["python3".into()],
                ..msfleet_proto::policy::defaults()
            },
        });
        let a = AttemptSpec {
            job_id: "j1".into(),
            task_id: "t".into(),
            attempt: 1,
            epoch: 7,
            traceparent: String::new(),
            spec: pb::JobSpec {
                kind: "benchmark".into(),
                source: Some(pb::Source {
                    kind: Some(pb::source::Kind::Dir(f.ws().display().to_string())),
                }),
                benchmark: Some(spec(2)),
                ..Default::default()
            },
            devices: Vec::new(),
            device_env: Vec::new(),
        };
        let (_stop_tx, stop) = watch::channel(None);
        run(cfg, a, f.tx.clone(), stop).await;
        server.abort();
        let mut kinds = Vec::new();
        while let Ok((_, kind)) = f.rx.try_recv() {
            kinds.push(kind);
        }
        assert!(matches!(kinds.first(), Some(task_update::Kind::Started(_))));
        let Some(task_update::Kind::Finished(fin)) = kinds.last() else {
            panic!("no Finished last: {kinds:?}");
        };
        // A case file that cannot be read is the fleet's problem: error.
        assert_eq!(fin.outcome(), Outcome::Error);
        assert!(
            fin.reason.starts_with(
                "1 of 2 cases could not run: case broken (cases/broken.json): not valid JSON"
            ),
            "{}",
            fin.reason
        );
        assert_eq!(fin.exit_code, 1);
        let cases: Vec<&pb::CaseResult> = kinds
            .iter()
            .filter_map(|k| match k {
                task_update::Kind::Case(c) => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[0].name, "broken");
        assert!(
            message(cases[0]).starts_with("case broken (cases/broken.json): not valid JSON"),
            "{}",
            message(cases[0])
        );
        // The stored anchor (0.5) replaced the case file's (0.1).
        assert_eq!(cases[1].verdict, "improvement", "{}", message(cases[1]));
        assert_eq!(cases[1].explanation.clone().unwrap().baseline, Some(0.5));
        let log: String = kinds
            .iter()
            .filter_map(|k| match k {
                task_update::Kind::Log(l) => Some(String::from_utf8_lossy(&l.data).into_owned()),
                _ => None,
            })
            .collect();
        assert!(
            log.contains("msfleet: benchmark: 1 case(s) and 1 malformed from cases;"),
            "{log}"
        );
        assert!(
            log.contains("1 stored baseline(s) for hardware profile 'h100'"),
            "{log}"
        );
        // Nothing is left behind in the work dir's run directory.
        let left: Vec<_> = std::fs::read_dir(work.path().join("run"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
