//! Job environments: the venv a pytest job runs in, built from its checkout and cached on
//! the agent, and the job's named caches.
//!
//! A job with an [`EnvironmentSpec`] gets a venv made from the agent's base interpreter
//! (`--python`; `--system-site-packages` when the job asks), with, in this order, its
//! requirements files installed, its setup commands run (`sh -c`, in the checkout, the venv
//! active) and the checkout installed editable (`--install-project [EXTRAS]`). pytest then runs
//! with the venv's python. `uv` builds it when the agent has one (`--uv PATH`, or `uv` on PATH
//! when `uv --version` runs), the venv's pip otherwise.
//!
//! Environments are cached under `<work_dir>/envs/<key>`. The key ([`key`]) hashes the base
//! interpreter (its path and version), the tool, the spec's fields, and the content of the
//! files that define the dependencies: the requirements files and, in the checkout's root,
//! [`DEPENDENCY_FILES`]. The next job with the same key reuses the venv and only re-links its
//! own checkout (`install --no-deps -e .`); setup commands do not run again (their effect is
//! in the venv, their text in the key).
//!
//! One `flock` per key (`envs/<key>.lock`, [`crate::source::lock_exclusive`]) is held from
//! the check for a ready venv to the end of the attempt: two attempts never build one key at
//! once, and an editable link (which points at one checkout) is never changed under a running
//! attempt. Attempts of other keys do not wait. A venv is ready once its marker file
//! ([`READY`]) is written, after the last step succeeded; a directory without one (a build
//! that failed or whose agent died) is removed and built again. venvs are not relocatable (their
//! scripts name their path), so a venv is built in place, behind the lock, not renamed.
//!
//! Every step runs through [`ProcessGroup`] under the attempt's deadline and cancel, as pytest
//! does. A failing step is the fleet's problem, not the tests': the attempt ends `error`, the
//! reason one line (`setup failed: pip install -r requirements.txt exited 1`), the step's
//! output in the job's log. The time from the start to a ready venv is logged as
//! `msfleet: environment ready in 12.3 s (cached)`.
//!
//! Named caches (`--cache huggingface`, `--cache NAME=ENVVAR`) are directories under
//! `<work_dir>/caches/NAME`, kept across jobs, each pointed at by its variable
//! ([`msfleet_proto::environment::cache_var`]), for the setup steps and pytest alike.

use crate::attempt::{AttemptSpec, Guard, Halt, Updates};
use crate::config::AgentConfig;
use crate::process::ProcessGroup;
use crate::source::{lock_exclusive, lock_shared, LockWait};
use msfleet_proto::{EnvironmentEntry, EnvironmentSpec, EnvironmentUsage};
use nix::fcntl::Flock;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Files in the checkout's root whose content is part of an environment's key.
pub const DEPENDENCY_FILES: [&str; 8] = [
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "uv.lock",
    "poetry.lock",
    "pdm.lock",
    "Pipfile.lock",
    "requirements.lock",
];
/// The file a venv gets once it is completely built.
pub const READY: &str = ".msfleet-ready";
/// Largest dependency file that is hashed (a bigger one is refused, not cut).
const MAX_HASHED_FILE: u64 = 64 << 20;
/// Longest a probe of the base interpreter or of `uv` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest setup command shown in a reason.
const SHOWN_COMMAND: usize = 200;

/// What pytest runs with: the interpreter and the variables set on top of the job's.
pub struct Prepared {
    pub python: PathBuf,
    pub vars: Vec<(String, OsString)>,
    /// The key's lock (exclusive) and the caches' (shared), held until the attempt ends.
    _locks: Vec<Flock<std::fs::File>>,
}

/// Why an environment could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A step failed: one line, as the attempt's reason.
    #[error("{0}")]
    Failed(String),
    #[error("preparing the environment: {0}")]
    Io(#[from] std::io::Error),
    /// The attempt's deadline or stop came during a step (it was killed).
    #[error("stopped ({0:?}) during the environment's setup")]
    Halted(Halt),
}

/// Which installer builds the venvs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tool {
    Uv(PathBuf),
    Pip,
}

impl Tool {
    fn name(&self) -> &'static str {
        match self {
            Tool::Uv(_) => "uv",
            Tool::Pip => "pip",
        }
    }
}

/// The named caches' variables, and the venv of the job's environment made ready (built, or
/// reused and re-linked). Without an environment pytest runs with the agent's interpreter.
pub async fn prepare(
    cfg: &AgentConfig,
    a: &AttemptSpec,
    slot: &str,
    checkout: &Path,
    tx: &Updates,
    guard: &mut Guard<'_>,
) -> Result<Prepared, EnvError> {
    let work_dir = std::path::absolute(&cfg.work_dir)?;
    let mut vars = Vec::new();
    let mut locks = Vec::new();
    let caches = work_dir.join(CACHES);
    if !a.spec.caches.is_empty() {
        tokio::fs::create_dir_all(&caches).await?;
    }
    for c in &a.spec.caches {
        let (name, var) = msfleet_proto::environment::cache_var(c).map_err(EnvError::Failed)?;
        // Shared: jobs use one cache at once; eviction waits until none does.
        let lock = take(lock_shared(&caches.join(format!("{name}.lock")), guard, || {}).await)?;
        let dir = caches.join(&name);
        tokio::fs::create_dir_all(&dir).await?;
        vars.push((var, dir.into_os_string()));
        locks.push(lock);
    }
    let Some(spec) = a
        .spec
        .environment
        .as_ref()
        .filter(|e| msfleet_proto::environment::needs_venv(e))
    else {
        evict_over_budget(cfg, &work_dir, tx).await;
        return Ok(Prepared {
            python: cfg.python.clone(),
            vars,
            _locks: locks,
        });
    };
    let started = Instant::now();
    let (base, version) = base_interpreter(&cfg.python).await?;
    let tool = tool(cfg).await;
    let key = key(&tool, &base, &version, spec, checkout).await?;
    let envs = work_dir.join(ENVS);
    tokio::fs::create_dir_all(&envs).await?;
    let venv = envs.join(&key);
    let lock_path = envs.join(format!("{key}.lock"));
    let waiting = || {
        tx.log(
            "stderr",
            format!("msfleet: waiting for another attempt using environment {key}\n"),
        )
    };
    locks.push(take(lock_exclusive(&lock_path, guard, waiting).await)?);
    vars.push(("VIRTUAL_ENV".into(), venv.clone().into_os_string()));
    vars.push(("PATH".into(), path_with(&venv.join("bin"), a)));
    vars.push(("PIP_DISABLE_PIP_VERSION_CHECK".into(), "1".into()));
    let steps = Steps {
        cfg,
        a,
        slot,
        checkout,
        tx,
        vars: &vars,
        tool: &tool,
        venv: &venv,
    };
    let cached = tokio::fs::try_exists(venv.join(READY)).await?;
    if cached {
        if let Some(extras) = &spec.install_project {
            steps.install_project(extras, true, guard).await?;
        }
    } else {
        if tokio::fs::try_exists(&venv).await? {
            tx.log(
                "stderr",
                format!("msfleet: removing the half-built environment {key}\n"),
            );
            tokio::fs::remove_dir_all(&venv).await?;
        }
        tx.log(
            "stderr",
            format!(
                "msfleet: building environment {key} ({}, {} {})\n",
                tool.name(),
                base.display(),
                version.split_whitespace().next().unwrap_or("")
            ),
        );
        steps.build(&base, spec, guard).await?;
        let about = format!("base {}\nversion {version}\n", base.display());
        tokio::fs::write(venv.join(READY), about).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    tx.log(
        "stderr",
        format!(
            "msfleet: environment ready in {secs:.1} s ({}, key {key})\n",
            if cached { "cached" } else { "built" }
        ),
    );
    tracing::info!(task = %a.task_id, key = %key, cached, secs, "environment ready");
    tx.send(msfleet_proto::task_update::Kind::Environment(
        msfleet_proto::EnvironmentReady {
            seconds: secs,
            cached,
            key: key.to_string(),
        },
    ));
    if let Some(aff) = msfleet_proto::environment::affinity(&a.spec) {
        note_affinity(&envs.join(format!("{key}.affinity")), &aff).await;
    }
    evict_over_budget(cfg, &work_dir, tx).await;
    Ok(Prepared {
        python: venv.join("bin").join("python"),
        vars,
        _locks: locks,
    })
}

/// Files `aff` first in an environment's affinity file (at most
/// [`msfleet_proto::environment::MAX_AFFINITY`] keys, newest first). Called under the key's lock.
async fn note_affinity(path: &Path, aff: &str) {
    let old = tokio::fs::read_to_string(path).await.unwrap_or_default();
    let mut keys = vec![aff];
    keys.extend(old.lines().filter(|l| *l != aff && !l.is_empty()));
    keys.truncate(msfleet_proto::environment::MAX_AFFINITY);
    if let Err(e) = tokio::fs::write(path, keys.join("\n") + "\n").await {
        tracing::warn!(error = %e, "cannot note an environment's affinity");
    }
}

/// A lock taken, its file's time set to now: the entry's last use, which eviction orders by.
fn take(locked: Result<Flock<std::fs::File>, LockWait>) -> Result<Flock<std::fs::File>, EnvError> {
    match locked {
        Ok(l) => {
            if let Err(e) = l.set_modified(std::time::SystemTime::now()) {
                tracing::warn!(error = %e, "cannot note an environment's last use");
            }
            Ok(l)
        }
        Err(LockWait::Io(e)) => Err(EnvError::Io(std::io::Error::other(format!(
            "locking an environment or cache: {e}"
        )))),
        Err(LockWait::Halted(h)) => Err(EnvError::Halted(h)),
    }
}

/// With `--cache-budget`: evicts what is over it, saying so in the job's log.
async fn evict_over_budget(cfg: &AgentConfig, work_dir: &Path, tx: &Updates) {
    let Some(budget) = cfg.cache_budget else {
        return;
    };
    let dir = work_dir.to_path_buf();
    let evicted = tokio::task::spawn_blocking(move || evict(&dir, budget))
        .await
        .unwrap_or_default();
    for e in evicted {
        tracing::info!(kind = e.kind, name = %e.name, bytes = e.bytes, "evicted under the cache budget");
        tx.log(
            "stderr",
            format!(
                "msfleet: evicted {} {} ({} MiB, least recently used) under the cache budget\n",
                e.kind,
                e.name,
                e.bytes >> 20
            ),
        );
    }
}

/// Where environments and named caches live under the work dir.
const ENVS: &str = "envs";
const CACHES: &str = "caches";
/// Most environments and caches (each) one capability report lists.
const MAX_REPORTED: usize = 256;

/// One environment or cache on disk.
#[derive(Debug)]
struct Held {
    kind: &'static str,
    name: String,
    dir: PathBuf,
    lock: PathBuf,
    bytes: u64,
    last_used: std::time::SystemTime,
}

/// The environments (`envs/<key>`) and caches (`caches/<name>`) under `work_dir`. Blocking.
fn holdings(work_dir: &Path) -> Vec<Held> {
    let mut all = Vec::new();
    for (kind, sub) in [("environment", ENVS), ("cache", CACHES)] {
        let root = work_dir.join(sub);
        let Ok(list) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in list.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if !t.is_dir() {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let lock = root.join(format!("{name}.lock"));
            let last_used = std::fs::metadata(&lock)
                .or_else(|_| e.metadata())
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            all.push(Held {
                kind,
                bytes: disk_use(&e.path()),
                dir: e.path(),
                name,
                lock,
                last_used,
            });
        }
    }
    all
}

/// Bytes a directory takes on disk (allocated blocks), links not followed. Blocking.
fn disk_use(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(list) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in list.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            total = total.saturating_add(m.blocks().saturating_mul(512));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// The lock of an entry, when no attempt holds it (`None`: in use). Blocking, never waits.
fn try_lock(path: &Path) -> Option<Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ok()?;
    Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).ok()
}

/// What [`evict`] removed.
#[derive(Debug)]
pub struct Evicted {
    pub kind: &'static str,
    pub name: String,
    pub bytes: u64,
}

/// Removes the least recently used environments and caches that no attempt holds until
/// all of them together take at most `budget` bytes (or nothing else can go). An environment
/// loses its ready marker first, so one whose removal is cut short is built again. Blocking.
pub fn evict(work_dir: &Path, budget: u64) -> Vec<Evicted> {
    let mut all = holdings(work_dir);
    let mut total: u64 = all.iter().map(|h| h.bytes).sum();
    all.sort_by_key(|h| h.last_used);
    let mut evicted = Vec::new();
    for h in all {
        if total <= budget {
            break;
        }
        let Some(_lock) = try_lock(&h.lock) else {
            continue;
        };
        if h.kind == "environment" {
            let _ = std::fs::remove_file(h.dir.join(READY));
        }
        if let Err(e) = std::fs::remove_dir_all(&h.dir) {
            tracing::warn!(dir = %h.dir.display(), error = %e, "cannot evict");
            continue;
        }
        total = total.saturating_sub(h.bytes);
        evicted.push(Evicted {
            kind: h.kind,
            name: h.name,
            bytes: h.bytes,
        });
    }
    evicted
}

/// What the agent holds, for its capability report. Blocking (it measures the directories).
pub fn usage(work_dir: &Path, budget: Option<u64>) -> EnvironmentUsage {
    let mut all = holdings(work_dir);
    all.sort_by_key(|h| std::cmp::Reverse(h.last_used));
    let mut u = EnvironmentUsage {
        used_bytes: all.iter().map(|h| h.bytes).sum(),
        budget_bytes: budget.unwrap_or(0),
        ..Default::default()
    };
    for h in all {
        let list = if h.kind == "environment" {
            &mut u.environments
        } else {
            &mut u.caches
        };
        if list.len() >= MAX_REPORTED {
            continue;
        }
        let last_used_ms = h
            .last_used
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let affinity = if h.kind == "environment" {
            let path = h.lock.with_extension("affinity");
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.is_empty())
                .take(msfleet_proto::environment::MAX_AFFINITY)
                .map(String::from)
                .collect()
        } else {
            Vec::new()
        };
        list.push(EnvironmentEntry {
            affinity,
            in_use: try_lock(&h.lock).is_none(),
            name: h.name,
            bytes: h.bytes,
            last_used_ms,
        });
    }
    u
}

/// `<venv>/bin` before the job's `PATH` (or else the agent's).
fn path_with(bin: &Path, a: &AttemptSpec) -> OsString {
    let rest = match a.spec.env.get("PATH") {
        Some(p) => Some(OsString::from(p)),
        None => std::env::var_os("PATH"),
    };
    let mut path = OsString::from(bin.as_os_str());
    if let Some(rest) = rest.filter(|p| !p.is_empty()) {
        path.push(":");
        path.push(rest);
    }
    path
}

/// The base interpreter's own path (`sys.executable`) and version.
async fn base_interpreter(python: &Path) -> Result<(PathBuf, String), EnvError> {
    let failed = |why: String| {
        EnvError::Failed(format!(
            "setup failed: the base interpreter {} {why}",
            python.display()
        ))
    };
    let out = probe(tokio::process::Command::new(python).args([
        "-c",
        "import sys; print(sys.executable); print(sys.version)",
    ]))
    .await
    .map_err(failed)?;
    let text = String::from_utf8_lossy(&out);
    let mut lines = text.lines();
    match (lines.next(), lines.next()) {
        (Some(exe), Some(version)) if !exe.is_empty() => {
            Ok((PathBuf::from(exe), version.trim().to_string()))
        }
        _ => Err(failed("did not say its path and version".into())),
    }
}

/// Runs a probe to its end (at most [`PROBE_TIMEOUT`]); its stdout when it succeeded.
async fn probe(cmd: &mut tokio::process::Command) -> Result<Vec<u8>, String> {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    match tokio::time::timeout(PROBE_TIMEOUT, cmd.output()).await {
        Err(_) => Err(format!("did not answer within {PROBE_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("cannot be started: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(out.stdout),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().last().unwrap_or("").trim();
            Err(format!("ended with {}: {last}", out.status))
        }
    }
}

/// `--uv` when given; else `uv` on PATH when `uv --version` runs (asked once); else pip.
async fn tool(cfg: &AgentConfig) -> Tool {
    if let Some(uv) = &cfg.uv {
        return Tool::Uv(uv.clone());
    }
    static ON_PATH: tokio::sync::OnceCell<bool> = tokio::sync::OnceCell::const_new();
    let found = *ON_PATH
        .get_or_init(|| async {
            probe(tokio::process::Command::new("uv").arg("--version"))
                .await
                .is_ok()
        })
        .await;
    if found {
        Tool::Uv(PathBuf::from("uv"))
    } else {
        Tool::Pip
    }
}

/// The environment's key: a SHA-256 (hex, 32 digits) over everything that decides what the
/// venv holds. Each field is written with its length, so no two specs share a hash input.
async fn key(
    tool: &Tool,
    base: &Path,
    version: &str,
    spec: &EnvironmentSpec,
    checkout: &Path,
) -> Result<String, EnvError> {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let mut field = |name: &str, value: &[u8]| {
        for part in [name.as_bytes(), value] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
    };
    field("msfleet-env", b"1");
    field("tool", tool.name().as_bytes());
    field("base", base.as_os_str().as_encoded_bytes());
    field("version", version.as_bytes());
    field(
        "system-site-packages",
        if spec.system_site_packages {
            b"1"
        } else {
            b"0"
        },
    );
    match &spec.install_project {
        Some(x) => field("install-project", x.as_bytes()),
        None => field("no-install-project", b""),
    }
    for s in &spec.setup {
        field("setup", s.as_bytes());
    }
    for r in &spec.requirements {
        let Some(text) = dependency_file(checkout, r).await? else {
            return Err(EnvError::Failed(format!(
                "setup failed: requirements file {r} is not in the checkout"
            )));
        };
        field("requirements", r.as_bytes());
        field("content", &text);
    }
    for f in DEPENDENCY_FILES {
        if let Some(text) = dependency_file(checkout, f).await? {
            field("file", f.as_bytes());
            field("content", &text);
        }
    }
    let digest = h.finish();
    Ok(digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The content of `rel` in the checkout, `None` when it is not there. Refuses a file that
/// leaves the checkout through a link, and one too big to hash.
async fn dependency_file(checkout: &Path, rel: &str) -> Result<Option<Vec<u8>>, EnvError> {
    let path = checkout.join(rel);
    let real = match tokio::fs::canonicalize(&path).await {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let root = tokio::fs::canonicalize(checkout).await?;
    if !real.starts_with(&root) {
        return Err(EnvError::Failed(format!(
            "setup failed: {rel} leads out of the checkout"
        )));
    }
    let meta = tokio::fs::metadata(&real).await?;
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > MAX_HASHED_FILE {
        return Err(EnvError::Failed(format!(
            "setup failed: {rel} is larger than {} MiB",
            MAX_HASHED_FILE >> 20
        )));
    }
    Ok(Some(tokio::fs::read(&real).await?))
}

/// The steps of one environment, each a contained run.
struct Steps<'a> {
    cfg: &'a AgentConfig,
    a: &'a AttemptSpec,
    slot: &'a str,
    checkout: &'a Path,
    tx: &'a Updates,
    vars: &'a [(String, OsString)],
    tool: &'a Tool,
    venv: &'a Path,
}

impl Steps<'_> {
    /// Makes the venv and installs into it: requirements, setup commands, the project.
    async fn build(
        &self,
        base: &Path,
        spec: &EnvironmentSpec,
        guard: &mut Guard<'_>,
    ) -> Result<(), EnvError> {
        let (mut cmd, what) = match self.tool {
            Tool::Uv(uv) => {
                let mut c = Command::new(uv);
                // --seed: pip in the venv, so a setup command's `pip` is the venv's.
                c.arg("venv").arg("--seed").arg("--python").arg(base);
                (c, "uv venv --seed".to_string())
            }
            Tool::Pip => {
                let mut c = Command::new(base);
                c.args(["-m", "venv"]);
                (c, "python -m venv".to_string())
            }
        };
        if spec.system_site_packages {
            cmd.arg("--system-site-packages");
        }
        cmd.arg(self.venv);
        self.run(cmd, &what, guard).await?;
        for r in &spec.requirements {
            let (cmd, what) = self.install(&["-r", r]);
            self.run(cmd, &what, guard).await?;
        }
        for s in &spec.setup {
            let mut cmd = Command::new("sh");
            cmd.arg("-c").arg(s);
            let shown: String = s.chars().take(SHOWN_COMMAND).collect();
            self.run(cmd, &format!("`{shown}`"), guard).await?;
        }
        if let Some(extras) = &spec.install_project {
            self.install_project(extras, false, guard).await?;
        }
        Ok(())
    }

    /// The checkout installed editable; `relink`: into a reused venv, without dependencies.
    async fn install_project(
        &self,
        extras: &str,
        relink: bool,
        guard: &mut Guard<'_>,
    ) -> Result<(), EnvError> {
        let target = if extras.trim().is_empty() {
            ".".to_string()
        } else {
            format!(".[{}]", extras.trim())
        };
        let mut args = vec!["-e", target.as_str()];
        if relink {
            args.insert(0, "--no-deps");
        }
        let (cmd, what) = self.install(&args);
        self.run(cmd, &what, guard).await
    }

    /// `pip install ARGS` with the venv's pip, or `uv pip install --python VENV ARGS`.
    fn install(&self, args: &[&str]) -> (Command, String) {
        let python = self.venv.join("bin").join("python");
        let (cmd, tool) = match self.tool {
            Tool::Uv(uv) => {
                let mut c = Command::new(uv);
                c.args(["pip", "install", "--python"]).arg(&python);
                (c, "uv pip install")
            }
            Tool::Pip => {
                let mut c = Command::new(&python);
                c.args(["-m", "pip", "install"]);
                (c, "pip install")
            }
        };
        let mut cmd = cmd;
        cmd.args(args);
        (cmd, format!("{tool} {}", args.join(" ")))
    }

    /// Runs one step in the checkout with the job's environment and the venv's variables,
    /// its output in the job's log, to its end or the attempt's halt.
    async fn run(
        &self,
        mut cmd: Command,
        what: &str,
        guard: &mut Guard<'_>,
    ) -> Result<(), EnvError> {
        let a = self.a;
        self.tx.log("stderr", format!("msfleet: setup: {what}\n"));
        cmd.current_dir(self.checkout)
            .envs(&a.spec.env)
            .envs(&a.spec.secret_env)
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .env_remove("PYTHONHOME")
            .env("PYTHONUNBUFFERED", "1");
        let group = ProcessGroup::spawn(&mut cmd, self.slot, a.spec.memory_limit_bytes)
            .map_err(|e| EnvError::Failed(format!("setup failed: cannot start {what}: {e}")))?;
        let mut exited = group
            .start(self.tx, None)
            .wait(guard, self.cfg.kill_grace)
            .await;
        exited.drain().await;
        if let Some(h) = exited.halted.take() {
            return Err(EnvError::Halted(h));
        }
        if let Some(oom) = &exited.oom {
            return Err(EnvError::Failed(format!("setup failed: {what}: {oom}")));
        }
        let status = exited.reaped?.status;
        if status.success() {
            return Ok(());
        }
        use std::os::unix::process::ExitStatusExt;
        let how = match (status.code(), status.signal()) {
            (Some(c), _) => format!("exited {c}"),
            (None, Some(sig)) => format!("was killed by {}", crate::runner::describe_signal(sig)),
            _ => format!("ended with {status}"),
        };
        Err(EnvError::Failed(format!("setup failed: {what} {how}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> EnvironmentSpec {
        EnvironmentSpec {
            setup: vec!["echo hi".into()],
            requirements: vec!["req.txt".into()],
            install_project: Some("test".into()),
            system_site_packages: false,
        }
    }

    async fn key_of(dir: &Path, spec: &EnvironmentSpec) -> String {
        key(
            &Tool::Pip,
            Path::new("/usr/bin/python3"),
            "3.11.7",
            spec,
            dir,
        )
        .await
        .unwrap()
    }

    /// The key follows what decides a venv's content, and only that: the dependency files'
    /// content, the spec's fields, the interpreter and the tool; not the code.
    #[tokio::test]
    async fn the_key_changes_with_what_defines_the_dependencies_and_only_with_that() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        std::fs::write(dir.join("req.txt"), "pytest\n").unwrap();
        std::fs::write(dir.join("pyproject.toml"), "[project]\nname='x'\n").unwrap();
        let base = key_of(dir, &spec()).await;
        assert_eq!(base.len(), 32);
        assert_eq!(key_of(dir, &spec()).await, base, "stable");

        std::fs::write(dir.join("code.py"), "x = 1\n").unwrap();
        assert_eq!(
            key_of(dir, &spec()).await,
            base,
            "code is not part of the key"
        );

        std::fs::write(dir.join("req.txt"), "pytest==9.0\n").unwrap();
        let pinned = key_of(dir, &spec()).await;
        assert_ne!(pinned, base, "requirements content");
        std::fs::write(dir.join("uv.lock"), "lock\n").unwrap();
        let locked = key_of(dir, &spec()).await;
        assert_ne!(locked, pinned, "a lock file");
        std::fs::write(dir.join("pyproject.toml"), "[project]\nname='y'\n").unwrap();
        let project = key_of(dir, &spec()).await;
        assert_ne!(project, locked, "pyproject.toml");

        let mut variants = vec![project.clone()];
        let mut s = spec();
        s.setup.push("echo more".into());
        variants.push(key_of(dir, &s).await);
        let mut s = spec();
        s.install_project = Some(String::new());
        variants.push(key_of(dir, &s).await);
        let mut s = spec();
        s.install_project = None;
        variants.push(key_of(dir, &s).await);
        let mut s = spec();
        s.system_site_packages = true;
        variants.push(key_of(dir, &s).await);
        variants.push(
            key(
                &Tool::Uv("uv".into()),
                Path::new("/usr/bin/python3"),
                "3.11.7",
                &spec(),
                dir,
            )
            .await
            .unwrap(),
        );
        variants.push(
            key(
                &Tool::Pip,
                Path::new("/usr/bin/python3"),
                "3.12.1",
                &spec(),
                dir,
            )
            .await
            .unwrap(),
        );
        let distinct: std::collections::BTreeSet<_> = variants.iter().collect();
        assert_eq!(distinct.len(), variants.len(), "{variants:?}");
    }

    #[tokio::test]
    async fn a_missing_or_escaping_requirements_file_is_a_setup_failure() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("checkout");
        std::fs::create_dir_all(&dir).unwrap();
        let err = key(&Tool::Pip, Path::new("/p"), "3", &spec(), &dir)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "setup failed: requirements file req.txt is not in the checkout"
        );
        std::fs::write(t.path().join("outside.txt"), "x\n").unwrap();
        std::os::unix::fs::symlink(t.path().join("outside.txt"), dir.join("req.txt")).unwrap();
        let err = key(&Tool::Pip, Path::new("/p"), "3", &spec(), &dir)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "setup failed: req.txt leads out of the checkout"
        );
    }
}
