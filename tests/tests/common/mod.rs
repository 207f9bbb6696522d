//! Harness for the end-to-end tests: real `msched`, `msagent` and `msctl`
//! processes on ephemeral ports, each test in its own temporary directory.
//!
//! * binaries come from the cargo target dir next to the test executable
//!   (`target/debug/`): run `cargo build --bins` first;
//! * pytest runs under `$MSFLEET_PYTHON`, else `<repo>/.venv/bin/python`
//!   (made by `scripts/venv.sh`);
//! * every daemon's stderr goes to `<tempdir>/logs/<name>.log`; when a test
//!   panics, the tails of those logs are printed (see `Drop for Fleet`);
//! * every process a test started (and whatever they started) is killed
//!   when the [`Fleet`] is dropped.

#![allow(dead_code)]

use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Agent flags of an owner who lets benchmark commands run (the default
/// policy refuses them).
pub const ALLOW_BENCH: &[&str] = &["--allow-bench-commands"];
/// Agent flags of an owner who lets the agent fetch local `file://` repositories
/// (the default policy fetches only https and ssh URLs).
pub const ALLOW_FILE_GIT: &[&str] = &["--allow-git", "file://**"];

/// How long a job may take to reach the state a test waits for.
pub const JOB_DEADLINE: Duration = Duration::from_secs(60);
/// How long one msctl invocation may run (watch/--wait included).
pub const CTL_TIMEOUT: Duration = Duration::from_secs(90);

// ------------------------------------------------------------------ paths

/// The repository root (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `target/debug` (the test executable lives in `target/debug/deps`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test executable lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// Path of one of the msfleet binaries; panics with what to do if it is missing.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    if !p.is_file() {
        panic!(
            "{} not found: the end-to-end tests start the real binaries; \
             run `cargo build --bins` first (same profile as the tests)",
            p.display()
        );
    }
    p
}

/// The example suites shipped in `examples/`.
pub fn example(name: &str) -> PathBuf {
    repo_root().join("examples").join(name)
}

/// The Python that runs pytest: `$MSFLEET_PYTHON`, else `<repo>/.venv/bin/python`.
/// Fails the test (never skips) when neither can import pytest.
pub fn python() -> PathBuf {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PY.get_or_init(|| {
        let mut tried = Vec::new();
        let mut candidates = Vec::new();
        if let Some(p) = std::env::var_os("MSFLEET_PYTHON").filter(|p| !p.is_empty()) {
            candidates.push(PathBuf::from(p));
        }
        candidates.push(repo_root().join(".venv/bin/python"));
        for c in candidates {
            let ok = Command::new(&c)
                .args(["-c", "import pytest"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(c);
            }
            tried.push(c.display().to_string());
        }
        Err(format!(
            "no Python with pytest found (tried: {}). Run `scripts/venv.sh` to create \
             <repo>/.venv, or set MSFLEET_PYTHON to a python that has pytest",
            tried.join(", ")
        ))
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

// ------------------------------------------------------------------ processes

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("msctl printed no JSON ({e}):\n{self}"))
    }

    /// The non-empty lines of stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to the end (killing it after `timeout`) and collects its output.
pub fn run_cmd(mut cmd: Command, timeout: Duration) -> Out {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {desc}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = so.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = t_out.join().unwrap_or_default();
            let stderr = t_err.join().unwrap_or_default();
            panic!("{desc} did not finish within {timeout:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Out {
        code: exit_code(status),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

fn exit_code(st: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// What a client needs to talk to a scheduler a test started.
#[derive(Debug, Clone)]
pub struct SchedCreds {
    /// The bootstrap admin token's file.
    pub admin_token: PathBuf,
    /// The CA of its TLS certificate, when it serves TLS.
    pub ca: Option<PathBuf>,
}

/// Every scheduler a test started, by port (all listen on loopback).
fn schedulers() -> &'static std::sync::Mutex<std::collections::HashMap<String, SchedCreds>> {
    static T: OnceLock<std::sync::Mutex<std::collections::HashMap<String, SchedCreds>>> =
        OnceLock::new();
    T.get_or_init(Default::default)
}

fn port_of(addr: &str) -> String {
    addr.rsplit(':')
        .next()
        .unwrap_or(addr)
        .trim_end_matches('/')
        .to_string()
}

/// How to reach the scheduler at `addr` (`HOST:PORT` or a URL).
pub fn sched_creds(addr: &str) -> Option<SchedCreds> {
    schedulers().lock().ok()?.get(&port_of(addr)).cloned()
}

/// The directory of the test that started the scheduler at `addr`.
pub fn fleet_dir(addr: &str) -> Option<PathBuf> {
    let data = admin_token_file(addr)?;
    Some(data.parent()?.parent()?.to_path_buf())
}

/// The admin token file of the scheduler at `addr`.
pub fn admin_token_file(addr: &str) -> Option<PathBuf> {
    sched_creds(addr).map(|c| c.admin_token)
}

/// An `msctl --addr ADDR` command, not yet run. It carries the scheduler's
/// admin token (`MSFLEET_TOKEN_FILE`) unless the test passes `--token-file`.
pub fn ctl_cmd(addr: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin("msctl"));
    c.arg("--addr")
        .arg(addr)
        .args(args)
        .env_remove("MSFLEET_ADDR")
        .env_remove("MSFLEET_TOKEN")
        .env_remove("MSFLEET_TOKEN_FILE")
        .env_remove("MSFLEET_CA")
        .env("HOME", std::env::temp_dir())
        .env("NO_COLOR", "1");
    if let Some(creds) = sched_creds(addr) {
        c.env("MSFLEET_TOKEN_FILE", creds.admin_token);
        if let Some(ca) = creds.ca {
            c.env("MSFLEET_CA", ca);
        }
    }
    c
}

/// An msctl command with no token at all.
pub fn ctl_cmd_anonymous(addr: &str, args: &[&str]) -> Command {
    let mut c = ctl_cmd(addr, args);
    c.env_remove("MSFLEET_TOKEN_FILE");
    c
}

/// Makes (once) the join token of agent `name` on the scheduler at `addr`
/// and returns its file under the test's `tokens/` ([`fleet_dir`]), so every
/// process of that agent name uses the same token. A `profile=P` label becomes the
/// token's profile, as an admin would set it.
pub fn agent_token(addr: &str, name: &str, labels: &[&str]) -> PathBuf {
    let dir = fleet_dir(addr).expect("a scheduler this test started");
    let file = dir.join("tokens").join(format!("{name}.token"));
    if file.is_file() {
        return file;
    }
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let mut args = vec!["agent", "token", "create", name];
    for l in labels {
        if let Some(p) = l.strip_prefix("profile=") {
            args.push("--profile");
            args.push(p);
        }
    }
    let out = ctl_at(addr, &args);
    assert_eq!(out.code, 0, "creating agent {name}'s token: {out}");
    let secret = out
        .stdout
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    file
}

/// Runs msctl against `addr`.
pub fn ctl_at(addr: &str, args: &[&str]) -> Out {
    run_cmd(ctl_cmd(addr, args), CTL_TIMEOUT)
}

/// `/proc/PID/stat` fields after the command name: [state, ppid, pgrp, ...].
fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// True while `pid` is a live (not zombie) process.
pub fn pid_alive(pid: i32) -> bool {
    match proc_stat(pid) {
        Some(f) => !matches!(f.first().map(String::as_str), Some("Z") | Some("X")),
        None => false,
    }
}

/// Parent pid of `pid`.
pub fn ppid_of(pid: i32) -> Option<i32> {
    proc_stat(pid)?.get(1)?.parse().ok()
}

/// A process identity that survives pid reuse: (pid, start time in ticks).
/// A process: its pid and start time (so a reused pid is not mistaken for it).
pub type ProcId = (i32, u64);

fn start_time(pid: i32) -> Option<u64> {
    proc_stat(pid)?.get(19)?.parse().ok()
}

/// Every live descendant of `root`.
pub fn descendants(root: i32) -> Vec<ProcId> {
    let mut parent_of = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(pp) = ppid_of(pid) {
                parent_of.push((pid, pp));
            }
        }
    }
    let mut out: Vec<ProcId> = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &parent_of {
            if pp == p && !out.iter().any(|(x, _)| *x == c) {
                if let Some(st) = start_time(c) {
                    out.push((c, st));
                }
                frontier.push(c);
            }
        }
    }
    out
}

fn kill_procs(procs: &[ProcId]) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for &(pid, st) in procs {
        if start_time(pid) == Some(st) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` and `last()` after `deadline`.
pub fn wait_for<T>(
    deadline: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    last: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > deadline {
            panic!(
                "timed out after {deadline:?} waiting for {what}\nlast seen: {}",
                last()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn log_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

// ------------------------------------------------------------------ scheduler

/// msched flags a test may change.
#[derive(Debug, Clone)]
pub struct SchedOpts {
    pub lease_timeout: String,
    pub heartbeat_interval: String,
    pub extra: Vec<String>,
    /// Serve TLS: (certificate, key, CA that signed it). Clients then use
    /// `https://localhost:PORT` and the CA.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl Default for SchedOpts {
    fn default() -> Self {
        SchedOpts {
            lease_timeout: "3s".into(),
            heartbeat_interval: "500ms".into(),
            extra: Vec::new(),
            tls: None,
        }
    }
}

/// One msched process (and its data dir, kept across restarts).
pub struct Scheduler {
    child: Option<Child>,
    /// `127.0.0.1:PORT`; the same across restarts.
    pub addr: String,
    /// The HTTP listener (`/metrics`, `/healthz`, `/readyz`), `127.0.0.1:PORT`
    /// (a new port at each start).
    pub http_addr: String,
    pub data_dir: PathBuf,
    ready_file: PathBuf,
    pub log: PathBuf,
    opts: SchedOpts,
}

impl Scheduler {
    /// Starts msched on an ephemeral port with its data under `dir`.
    pub fn start(dir: &Path, opts: SchedOpts) -> Scheduler {
        let mut s = Scheduler {
            child: None,
            addr: String::new(),
            http_addr: String::new(),
            data_dir: dir.join("sched-data"),
            ready_file: dir.join("sched.ready"),
            log: dir.join("logs/msched.log"),
            opts,
        };
        std::fs::create_dir_all(s.log.parent().unwrap()).unwrap();
        s.spawn("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("msched did not start: {e}\n{}", tail(&s.log, 40)));
        s
    }

    fn spawn(&mut self, listen: &str) -> Result<(), String> {
        let _ = std::fs::remove_file(&self.ready_file);
        let mut cmd = Command::new(bin("msched"));
        cmd.arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--ready-file")
            .arg(&self.ready_file)
            .arg("--lease-timeout")
            .arg(&self.opts.lease_timeout)
            .arg("--heartbeat-interval")
            .arg(&self.opts.heartbeat_interval)
            .args(["--http-listen", "127.0.0.1:0"])
            .args(&self.opts.extra)
            .args(self.opts.tls.iter().flat_map(|(cert, key, _)| {
                [
                    "--tls-cert".into(),
                    cert.clone().into_os_string(),
                    "--tls-key".into(),
                    key.clone().into_os_string(),
                ]
            }))
            .env("NO_COLOR", "1")
            .env_remove("MSCHED_LISTEN")
            .env_remove("MSCHED_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(log_file(&self.log))
            .stderr(log_file(&self.log));
        let mut child = cmd.spawn().map_err(|e| format!("spawning msched: {e}"))?;
        let start = Instant::now();
        loop {
            if let Ok(ready) = std::fs::read_to_string(&self.ready_file) {
                let mut lines = ready.lines();
                let addr = lines.next().unwrap_or_default();
                if !addr.trim().is_empty() {
                    self.addr = addr.trim().to_string();
                    self.http_addr = lines
                        .find_map(|l| l.strip_prefix("http "))
                        .unwrap_or_default()
                        .to_string();
                    schedulers().lock().unwrap().insert(
                        port_of(&self.addr),
                        SchedCreds {
                            admin_token: self.data_dir.join("admin.token"),
                            ca: self.opts.tls.as_ref().map(|(_, _, ca)| ca.clone()),
                        },
                    );
                    self.child = Some(child);
                    return Ok(());
                }
            }
            if let Some(st) = child.try_wait().unwrap() {
                return Err(format!("msched exited with {st} before it was ready"));
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                return Err("msched was not ready within 30s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn tls(&self) -> bool {
        self.opts.tls.is_some()
    }

    /// `http://ADDR` (or `https://localhost:PORT` with TLS), as agents want it.
    pub fn url(&self) -> String {
        match &self.opts.tls {
            None => format!("http://{}", self.addr),
            Some(_) => format!("https://localhost:{}", port_of(&self.addr)),
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as systemd stops it; then waits up to `within` for it to
    /// exit: its exit status, or None if it still runs (it is then killed).
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Starts msched again on the same address and data dir (agents and
    /// clients were given that address). Retries while the port is busy.
    pub fn restart(&mut self) {
        self.kill9();
        let addr = self.addr.clone();
        let mut last = String::new();
        for _ in 0..40 {
            match self.spawn(&addr) {
                Ok(()) => {
                    assert_eq!(self.addr, addr, "msched came back on another address");
                    return;
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "msched did not restart on {addr}: {last}\n{}",
            tail(&self.log, 40)
        );
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ------------------------------------------------------------------ agent

/// One msagent process.
pub struct Agent {
    child: Option<Child>,
    pub name: String,
    pub work_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    /// Environment variables set on top of the test's (e.g. a test-only fault).
    env: Vec<(String, String)>,
    /// Processes the agent had started when it was killed (they live on, as
    /// after a real crash, until the test ends).
    orphans: Vec<ProcId>,
}

impl Agent {
    /// Starts `msagent --scheduler URL --name NAME --work-dir <dir>/agents/NAME
    /// --root R... --label L... --python PY --kill-grace 2s EXTRA...`.
    /// Does not wait for the registration (see [`Fleet::add_agent`]).
    pub fn start(
        sched_url: &str,
        dir: &Path,
        name: &str,
        labels: &[&str],
        roots: &[PathBuf],
        extra: &[&str],
    ) -> Agent {
        Agent::start_with_env(sched_url, dir, name, labels, roots, extra, &[])
    }

    /// [`Agent::start`] with `env` set in the agent's environment.
    pub fn start_with_env(
        sched_url: &str,
        dir: &Path,
        name: &str,
        labels: &[&str],
        roots: &[PathBuf],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let work_dir = dir.join("agents").join(name);
        std::fs::create_dir_all(&work_dir).unwrap();
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let mut args: Vec<String> = Vec::new();
        if let Some(ca) = sched_creds(sched_url).and_then(|c| c.ca) {
            if !extra.contains(&"--ca") {
                args.push("--ca".into());
                args.push(ca.display().to_string());
            }
        }
        if !extra.contains(&"--token-file") && !extra.contains(&"--tls-cert") {
            args.push("--token-file".into());
            args.push(agent_token(sched_url, name, labels).display().to_string());
        }
        args.extend::<Vec<String>>(vec![
            "--scheduler".into(),
            sched_url.into(),
            "--name".into(),
            name.into(),
            "--work-dir".into(),
            work_dir.display().to_string(),
            "--kill-grace".into(),
            "2s".into(),
        ]);
        if !extra.contains(&"--python") {
            args.push("--python".into());
            args.push(python().display().to_string());
        }
        // The machine running the tests may have little disk free: an agent
        // that called its host degraded would quarantine itself and every
        // test would wait. Tests of the disk rule pass their own threshold.
        if !extra.contains(&"--min-disk-free-mb") {
            args.push("--min-disk-free-mb".into());
            args.push("1".into());
        }
        for r in roots {
            args.push("--root".into());
            args.push(r.display().to_string());
        }
        for l in labels {
            args.push("--label".into());
            args.push(l.to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut a = Agent {
            child: None,
            name: name.into(),
            work_dir,
            log: dir.join("logs").join(format!("msagent-{name}.log")),
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            orphans: Vec::new(),
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let child = Command::new(bin("msagent"))
            .args(&self.args)
            .env("NO_COLOR", "1")
            .env_remove("MSFLEET_SCHEDULER")
            .env_remove("MSFLEET_AGENT_TOKEN_FILE")
            .env_remove("MSFLEET_CA")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file(&self.log))
            .stderr(log_file(&self.log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning msagent: {e}"));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The exit status, if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// SIGKILL the agent alone: what it started keeps running, like after a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            self.orphans.extend(descendants(c.id() as i32));
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: the agent's own graceful shutdown.
    pub fn terminate(&mut self) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }

    /// Kills the agent and everything it started.
    fn kill_all(&mut self) {
        if let Some(c) = &self.child {
            self.orphans.extend(descendants(c.id() as i32));
        }
        self.kill9();
        kill_procs(&self.orphans);
        self.orphans.clear();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill_all();
    }
}

// ------------------------------------------------------------------ fleet

/// A scheduler, its agents, and a temp dir holding their data, logs and the
/// test suites (under `root`, the agents' `--root`).
pub struct Fleet {
    pub sched: Scheduler,
    pub agents: Vec<Agent>,
    /// The agents' root: suites a test runs live here.
    pub root: PathBuf,
    /// Extra log files to show on failure (e.g. a second agent process).
    pub extra_logs: Vec<PathBuf>,
    // Dropped last (fields drop in declaration order).
    pub dir: tempfile::TempDir,
}

impl Fleet {
    /// A scheduler with the default test options and no agents.
    pub fn new() -> Fleet {
        Fleet::with_opts(SchedOpts::default())
    }

    pub fn with_opts(opts: SchedOpts) -> Fleet {
        let dir = tempfile::Builder::new()
            .prefix("msfleet-e2e-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let root = std::fs::canonicalize(root).unwrap();
        let sched = Scheduler::start(dir.path(), opts);
        Fleet {
            sched,
            agents: Vec::new(),
            root,
            extra_logs: Vec::new(),
            dir,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn addr(&self) -> String {
        self.sched.addr.clone()
    }

    /// Starts an agent with `root` as its only root and waits until the
    /// scheduler lists it as connected.
    pub fn add_agent(&mut self, name: &str, labels: &[&str], extra: &[&str]) -> &mut Agent {
        let a = Agent::start(
            &self.sched.url(),
            self.dir.path(),
            name,
            labels,
            std::slice::from_ref(&self.root),
            extra,
        );
        self.agents.push(a);
        self.wait_agent_connected(name);
        self.agents.last_mut().unwrap()
    }

    /// [`Fleet::add_agent`] with `env` set in the agent's environment.
    pub fn add_agent_with_env(
        &mut self,
        name: &str,
        labels: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> &mut Agent {
        let a = Agent::start_with_env(
            &self.sched.url(),
            self.dir.path(),
            name,
            labels,
            std::slice::from_ref(&self.root),
            extra,
            env,
        );
        self.agents.push(a);
        self.wait_agent_connected(name);
        self.agents.last_mut().unwrap()
    }

    pub fn agent(&mut self, name: &str) -> &mut Agent {
        self.agents
            .iter_mut()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent {name} in this test"))
    }

    /// `msctl agents --json`.
    pub fn agents_json(&self) -> Vec<Value> {
        let out = self.ctl(&["agents", "--json"]);
        assert_eq!(out.code, 0, "msctl agents failed:\n{out}");
        out.json().as_array().cloned().unwrap_or_default()
    }

    pub fn agent_json(&self, name: &str) -> Option<Value> {
        self.agents_json().into_iter().find(|a| a["name"] == name)
    }

    pub fn wait_agent_connected(&self, name: &str) {
        wait_for(
            Duration::from_secs(30),
            &format!("agent {name} to be connected"),
            || {
                let a = self.agent_json(name)?;
                (a["connected"] == true).then_some(())
            },
            || format!("{:?}", self.agent_json(name)),
        );
    }

    // ---------------------------------------------------------- suites

    /// Copies `examples/<name>` into the root; returns its path there.
    pub fn copy_example(&self, name: &str) -> PathBuf {
        let dst = self.root.join(name);
        copy_dir(&example(name), &dst);
        dst
    }

    /// Writes a suite of `files` (relative path, content) into `root/<name>`.
    pub fn write_suite(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dst = self.root.join(name);
        for (rel, content) in files {
            let p = dst.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
        }
        dst
    }

    /// A suite of `n` passing tests that sleep `secs` each.
    pub fn sleepy_suite(&self, name: &str, n: usize, secs: f64) -> PathBuf {
        let mut src = String::from("import time\n\n");
        for i in 1..=n {
            src += &format!("\ndef test_step_{i}():\n    time.sleep({secs})\n");
        }
        self.write_suite(name, &[("test_sleepy.py", &src)])
    }

    // ---------------------------------------------------------- msctl

    pub fn ctl(&self, args: &[&str]) -> Out {
        if self.sched.tls() {
            ctl_at(&self.sched.url(), args)
        } else {
            ctl_at(&self.sched.addr, args)
        }
    }

    /// `msctl submit ARGS` that must succeed; returns the job id it printed.
    pub fn submit(&self, args: &[&str]) -> String {
        let mut full = vec!["submit"];
        full.extend_from_slice(args);
        let out = self.ctl(&full);
        assert_eq!(out.code, 0, "msctl {full:?} failed:\n{out}");
        let id = out.stdout.trim().to_string();
        assert!(
            !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()),
            "msctl submit printed no job id:\n{out}"
        );
        id
    }

    /// `msctl show ID --json`.
    pub fn show(&self, id: &str) -> Value {
        let out = self.ctl(&["show", id, "--json"]);
        assert_eq!(out.code, 0, "msctl show {id} failed:\n{out}");
        out.json()
    }

    /// `msctl show ID --json`, or None while the scheduler does not answer.
    pub fn try_show(&self, id: &str) -> Option<Value> {
        let out = self.ctl(&["show", id, "--json"]);
        (out.code == 0).then(|| out.json())
    }

    /// Polls `show ID --json` until `pred` holds.
    pub fn wait_job(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let last = std::cell::RefCell::new(Value::Null);
        wait_for(
            JOB_DEADLINE,
            &format!("job {id}: {what}"),
            || {
                let j = self.try_show(id)?;
                let ok = pred(&j);
                *last.borrow_mut() = j.clone();
                ok.then_some(j)
            },
            || serde_json::to_string_pretty(&*last.borrow()).unwrap_or_default(),
        )
    }

    pub fn wait_state(&self, id: &str, state: &str) -> Value {
        self.wait_job(id, &format!("state {state}"), |j| j["state"] == state)
    }

    pub fn wait_terminal(&self, id: &str) -> Value {
        self.wait_job(id, "a terminal state", is_terminal)
    }

    /// `msctl list --json` (up to 1000 jobs).
    pub fn list(&self) -> Vec<Value> {
        let out = self.ctl(&["list", "--json", "--limit", "1000"]);
        assert_eq!(out.code, 0, "msctl list failed:\n{out}");
        out.json()["jobs"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("msctl list --json has no jobs array:\n{out}"))
    }

    /// The tails of every daemon log of this test.
    pub fn logs(&self) -> String {
        let mut paths = vec![self.sched.log.clone()];
        paths.extend(self.agents.iter().map(|a| a.log.clone()));
        paths.extend(self.extra_logs.iter().cloned());
        let mut s = String::new();
        for p in paths {
            s += &format!("\n===== {} (tail) =====\n{}\n", p.display(), tail(&p, 40));
        }
        s
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- daemon logs of the failed test -----{}", self.logs());
        }
        for a in &mut self.agents {
            a.kill_all();
        }
        self.sched.kill9();
    }
}

pub fn is_terminal(j: &Value) -> bool {
    matches!(
        j["state"].as_str(),
        Some("passed" | "failed" | "error" | "cancelled" | "timed_out" | "expired" | "no_resource")
    )
}

/// `j["tests"][k]` as a number.
pub fn count(j: &Value, k: &str) -> u64 {
    j["tests"][k]
        .as_u64()
        .unwrap_or_else(|| panic!("no tests.{k} in {j}"))
}

pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display())) {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "__pycache__" || name == ".pytest_cache" {
            continue;
        }
        let to = dst.join(&name);
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Counts from a pytest-style summary ("1 failed, 8 passed, 2 skipped, 1 error
/// in 1.1s"), keyed like `show --json`'s `tests` (error/errors -> errors).
/// For msctl's "job 3 failed: 1 failed, 8 passed in 1.6s" pass the part after ": ".
pub fn parse_counts(summary: &str) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    let words: Vec<&str> = summary
        .split(|c: char| c.is_whitespace() || c == ',' || c == ':' || c == '=')
        .filter(|w| !w.is_empty())
        .collect();
    for w in words.windows(2) {
        let Ok(n) = w[0].parse::<u64>() else { continue };
        let key = match w[1] {
            "passed" | "failed" | "skipped" | "xfailed" | "xpassed" => w[1],
            "error" | "errors" => "errors",
            _ => continue,
        };
        *m.entry(key.to_string()).or_insert(0) += n;
    }
    m
}

/// A background child process (e.g. `msctl watch`) whose stdout lines are
/// delivered, with their arrival time, through a channel. Killed on drop.
pub struct Bg {
    child: Child,
    pub lines: std::sync::mpsc::Receiver<(Instant, String)>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Bg {
    pub fn spawn(mut cmd: Command) -> Bg {
        use std::io::BufRead;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let se = stderr.clone();
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            *se.lock().unwrap() = String::from_utf8_lossy(&s).into_owned();
        });
        Bg {
            child,
            lines: rx,
            stderr,
        }
    }

    /// Waits for the process to end; returns its exit code and every stdout
    /// line not yet taken from `lines`.
    pub fn finish(&mut self, timeout: Duration) -> (i32, Vec<(Instant, String)>) {
        let start = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let rest: Vec<String> = self.lines.try_iter().map(|(_, l)| l).collect();
                panic!(
                    "background command did not finish within {timeout:?}; its output:\n{}\nstderr:\n{}",
                    rest.join("\n"),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF; drain what it delivered.
        let mut rest = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            rest.push(l);
        }
        (exit_code(status), rest)
    }

    pub fn stderr(&self) -> String {
        // Give the stderr reader a moment to finish after the process ended.
        std::thread::sleep(Duration::from_millis(50));
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Commits the files under `repo` (a directory the caller filled) as one
/// commit on `main` of a new git repository; its `file://` URL.
pub fn git_repo(repo: &Path, message: &str) -> String {
    let git = |args: &[&str]| {
        let mut c = Command::new("git");
        c.args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(repo);
        let out = run_cmd(c, Duration::from_secs(30));
        assert_eq!(out.code, 0, "git {args:?}:\n{out}");
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "."]);
    git(&["commit", "-qm", message]);
    format!("file://{}", repo.display())
}

/// `(test, cell)` for each row of `msctl report --json`'s matrix, the
/// first column's cell (a job of one column).
pub fn report_rows(report: &Value) -> Vec<(String, String)> {
    report["matrix"]
        .as_array()
        .expect("a matrix")
        .iter()
        .map(|r| {
            let cell = r["cells"].as_object().and_then(|c| c.values().next());
            (
                r["test"].as_str().unwrap_or("").to_string(),
                cell.and_then(|c| c.as_str()).unwrap_or("").to_string(),
            )
        })
        .collect()
}

// ------------------------------------------------------------------ accelerators

/// The recorded `npu-smi info` of an 8-card 910B host (every card `OK`).
pub fn healthy_table() -> String {
    let p = repo_root().join("agent/tests/fixtures/npu-smi/info-910b-8card-24.1.0.txt");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// The same table with card 5's Health turned to `Alarm`.
pub fn alarm_table() -> String {
    table_with_health(5, "Alarm")
}

/// The recorded 8-card table with card `card`'s Health turned to `health`.
pub fn table_with_health(card: u32, health: &str) -> String {
    let ok = format!("| {card}     910B                | OK            |");
    let table = healthy_table();
    assert!(table.contains(&ok), "the fixture has card {card} OK");
    table.replace(
        &ok,
        &format!("| {card}     910B                | {health:<13} |"),
    )
}

/// A fake `npu-smi` that prints the table file next to it for `info` (and
/// fails for anything else, as a tool without that subcommand would). The
/// test rewrites the table to change what the next probe sees.
pub struct FakeNpuSmi {
    pub script: PathBuf,
    table: PathBuf,
    processes: PathBuf,
}

/// A row of the fake npu-smi's process table.
pub struct FakeNpuProcess<'a> {
    pub npu: u32,
    pub pid: u32,
    pub name: &'a str,
    /// Listed only while `/proc/<pid>` exists (a real process), or always
    /// (a process the agent cannot make go away).
    pub while_alive: bool,
}

impl FakeNpuSmi {
    /// A fake `npu-smi` whose `info` prints `table`, then the process table
    /// of [`FakeNpuSmi::list_processes`] when one was set.
    pub fn new(dir: &Path, table: &str) -> FakeNpuSmi {
        use std::os::unix::fs::PermissionsExt;
        let dir = dir.join("npu-smi");
        std::fs::create_dir_all(&dir).unwrap();
        let table_path = dir.join("table.txt");
        std::fs::write(&table_path, table).unwrap();
        let processes = dir.join("processes.txt");
        let script = dir.join("npu-smi");
        let border = format!("+{}+", "-".repeat(94));
        let body = format!(
            "#!/bin/sh\nif [ \"$1\" = info ] && [ $# -eq 1 ]; then\n\
             cat '{table}' || exit 1\n\
             [ -f '{procs}' ] || exit 0\n\
             echo '{border}'\n\
             echo '| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |'\n\
             echo '{border}'\n\
             while read -r npu pid name mode; do\n\
             if [ \"$mode\" = always ] || [ -d \"/proc/$pid\" ]; then\n\
             printf '| %-7s %-17s | %-13s | %-24s | %-23s |\\n' \"$npu\" 0 \"$pid\" \"$name\" 1024\n\
             fi\n\
             done < '{procs}'\n\
             echo '{border}'\n\
             exit 0\nfi\n\
             echo \"npu-smi: unsupported: $*\" >&2\nexit 1\n",
            table = table_path.display(),
            procs = processes.display(),
        );
        std::fs::write(&script, body).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        FakeNpuSmi {
            script,
            table: table_path,
            processes,
        }
    }

    /// Sets the process table `info` prints after the chip table (each
    /// process on chip 0 of its card); an empty list prints none.
    pub fn list_processes(&self, rows: &[FakeNpuProcess]) {
        if rows.is_empty() {
            let _ = std::fs::remove_file(&self.processes);
            return;
        }
        let text: String = rows
            .iter()
            .map(|r| {
                let mode = if r.while_alive { "alive" } else { "always" };
                format!("{} {} {} {mode}\n", r.npu, r.pid, r.name)
            })
            .collect();
        let tmp = self.processes.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.processes).unwrap();
    }

    /// Replaces the table atomically (a probe never reads half of it).
    pub fn show(&self, table: &str) {
        let tmp = self.table.with_extension("new");
        std::fs::write(&tmp, table).unwrap();
        std::fs::rename(&tmp, &self.table).unwrap();
    }
}
