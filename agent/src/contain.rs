//! Containment: every process a run starts dies with the run, `setsid` or not.
//!
//! The agent picks one [`Mode`] at start ([`detect`], logged once):
//! - **cgroup v2** (`/sys/fs/cgroup` is the unified hierarchy): each run gets
//!   `<base>/<cell>`; the child is moved there before it execs (a `pre_exec`
//!   hook writes `0` to `cgroup.procs`); the end is `cgroup.kill` (or freeze,
//!   SIGKILL every pid in `cgroup.procs`, thaw), then waiting until it is empty
//!   and removing it. A memory limit is `memory.max` (and `memory.swap.max` 0);
//!   a breach is `oom_kill` in `memory.events`, the peak `memory.peak`.
//! - **cgroup v1** (`pids`, `freezer` and `memory` hierarchies as mounted under
//!   `/sys/fs/cgroup/<controller>`): one directory per run in each; the end is
//!   freeze, SIGKILL every pid in `cgroup.procs`, thaw, wait until empty. A limit
//!   is `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes`); a breach
//!   is `oom_kill` in `memory.oom_control` (`memory.failcnt` on kernels without
//!   it), the peak `memory.max_usage_in_bytes`.
//! - **subreaper** (`--no-cgroups`, or no cgroup the agent can write): the
//!   agent is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so what a test
//!   detaches with `setsid` is re-parented to the agent instead of init. Every
//!   run's processes carry `MSFLEET_CELL=<cell>` in their environment; at the end
//!   the agent SIGKILLs every process whose environment carries it and every
//!   descendant of one, until none is left, and reaps the adopted zombies
//!   (then, and every few seconds for those that exit on their own).
//!   Its limit: a process that clears its environment *and* whose parent
//!   already exited (a daemon that double-forks with `env -i`) is not found.
//!   This mode cannot enforce a memory limit: a job with one is refused.
//!
//! `<base>` is `--cgroup-root` (a cgroup path as `/proc/self/cgroup` writes
//! it, e.g. `/msagent`, taken under each hierarchy's mount) or, by default, a
//! `msfleet` directory under the agent's own cgroup. A cell is named
//! `a<agent pid>-<task>-<attempt>-<n>`; directories a dead agent left behind
//! are emptied and removed at start ([`Containment::sweep_stale`]).
//!
//! [`crate::process::ProcessGroup`] is the one user: it makes a [`Cell`] per
//! run, and ends it after the run, whichever way the run ended.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The environment variable naming the run's cell in every process it starts.
pub const CELL_VAR: &str = "MSFLEET_CELL";

/// How often the subreaper path reaps the zombies it adopted (also at each run's end).
const REAP_EVERY: Duration = Duration::from_secs(5);

/// How long the end of a run waits for its cgroup to empty.
const EMPTY_WAIT: Duration = Duration::from_secs(10);

/// What the agent asked for on its command line.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `--cgroup-root`: the cgroup path under which run cgroups are made.
    pub cgroup_root: Option<PathBuf>,
    /// `--no-cgroups`: always the subreaper path.
    pub no_cgroups: bool,
}

/// Why containment could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum ContainError {
    #[error("{0}")]
    Io(String),
    #[error(
        "this agent cannot enforce the job's memory limit of {limit}: it has no writable cgroup \
         memory controller ({mode}); run the job without --memory or on another agent"
    )]
    NoMemoryController { limit: String, mode: &'static str },
}

/// How this agent contains runs.
#[derive(Debug, Clone)]
pub enum Mode {
    V2 {
        /// `<unified mount><base>`.
        base: PathBuf,
        memory: bool,
    },
    V1 {
        /// `<mount>/<controller><base>` of each usable hierarchy (freezer first when there).
        bases: Vec<(Controller, PathBuf)>,
    },
    Subreaper,
}

/// A cgroup v1 controller the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Freezer,
    Pids,
    Memory,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Freezer => "freezer",
            Controller::Pids => "pids",
            Controller::Memory => "memory",
        }
    }
}

/// The agent's containment: the mode and the counter that names cells.
#[derive(Debug)]
pub struct Containment {
    mode: Mode,
    seq: AtomicU64,
    /// Whether this process made itself a child subreaper.
    subreaper: bool,
}

static ACTIVE: OnceLock<Containment> = OnceLock::new();

/// Sets the agent's containment (once, at start; later calls change nothing).
pub fn install(c: Containment) -> &'static Containment {
    let _ = ACTIVE.set(c);
    active()
}

/// The agent's containment; without [`install`] (library users, unit tests):
/// what [`detect`] finds by default, without becoming a subreaper.
pub fn active() -> &'static Containment {
    ACTIVE.get_or_init(|| {
        let mode = detect_mode(&Settings::default()).unwrap_or(Mode::Subreaper);
        Containment {
            mode,
            seq: AtomicU64::new(0),
            subreaper: false,
        }
    })
}

/// Picks the mode for `settings`, logging what was chosen and why, and makes
/// the agent a child subreaper on the subreaper path.
pub fn detect(settings: &Settings) -> Containment {
    let mode = if settings.no_cgroups {
        tracing::info!("containment: cgroups off (--no-cgroups): the agent is a subreaper and kills every descendant of a run");
        Mode::Subreaper
    } else {
        match detect_mode(settings) {
            Ok(m) => {
                tracing::info!(
                    mode = m.label(),
                    memory = m.memory(),
                    "containment: each run gets its own cgroup"
                );
                m
            }
            Err(why) => {
                tracing::warn!("containment: no usable cgroup ({why}): the agent is a subreaper and kills every descendant of a run; jobs with a memory limit are refused");
                Mode::Subreaper
            }
        }
    };
    let subreaper = matches!(mode, Mode::Subreaper) && become_subreaper();
    if subreaper {
        // What a run detached and that exits on its own between runs' ends.
        let reaper = std::thread::Builder::new()
            .name("msfleet-reaper".into())
            .spawn(|| loop {
                std::thread::sleep(REAP_EVERY);
                reap_adopted();
            });
        if let Err(e) = reaper {
            tracing::warn!(error = %e, "containment: cannot start the zombie reaper: adopted processes are reaped at each run's end only");
        }
    }
    Containment {
        mode,
        seq: AtomicU64::new(0),
        subreaper,
    }
}

fn become_subreaper() -> bool {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument and touches no memory.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "containment: cannot become a child subreaper: processes a test detaches with setsid are found only by their marker");
    }
    r == 0
}

impl Mode {
    /// "cgroup-v2", "cgroup-v1" or "subreaper" (reported in the capabilities).
    pub fn label(&self) -> &'static str {
        match self {
            Mode::V2 { .. } => "cgroup-v2",
            Mode::V1 { .. } => "cgroup-v1",
            Mode::Subreaper => "subreaper",
        }
    }

    /// Whether a memory limit can be enforced.
    pub fn memory(&self) -> bool {
        match self {
            Mode::V2 { memory, .. } => *memory,
            Mode::V1 { bases } => bases.iter().any(|(c, _)| *c == Controller::Memory),
            Mode::Subreaper => false,
        }
    }
}

/// The cgroup paths of this process by hierarchy, from `/proc/self/cgroup`
/// text: `("", path)` for the unified one, `("memory", path)` etc.
pub fn parse_proc_cgroup(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        for c in ctrls.split(',') {
            out.push((c.to_string(), path.to_string()));
        }
    }
    out
}

/// `mount` + `cgroup_path` (which starts with '/') as one path.
fn under(mount: &Path, cgroup_path: &Path) -> PathBuf {
    let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
    mount.join(rel)
}

fn detect_mode(settings: &Settings) -> Result<Mode, String> {
    let mount = Path::new("/sys/fs/cgroup");
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map(|t| parse_proc_cgroup(&t))
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own_path = |ctrl: &str| -> PathBuf {
        let p = own
            .iter()
            .find(|(c, _)| c == ctrl)
            .map_or("/", |(_, p)| p.as_str());
        PathBuf::from(p)
    };
    let base_for = |ctrl: &str| -> PathBuf {
        match &settings.cgroup_root {
            Some(r) => r.clone(),
            None => own_path(ctrl).join("msfleet"),
        }
    };
    if mount.join("cgroup.controllers").exists() {
        let base = under(mount, &base_for(""));
        usable(&base)?;
        if settings.cgroup_root.is_none() {
            delegate_from_own(&under(mount, &own_path("")));
        }
        let memory = enable_memory(&base);
        return Ok(Mode::V2 { base, memory });
    }
    let mut bases = Vec::new();
    let mut why = Vec::new();
    for ctrl in [Controller::Freezer, Controller::Pids, Controller::Memory] {
        let hier = mount.join(ctrl.name());
        if !hier.join("cgroup.procs").exists() {
            why.push(format!(
                "no {} hierarchy at {}",
                ctrl.name(),
                hier.display()
            ));
            continue;
        }
        let base = under(&hier, &base_for(ctrl.name()));
        match usable(&base) {
            Ok(()) => bases.push((ctrl, base)),
            Err(e) => why.push(e),
        }
    }
    if bases
        .iter()
        .any(|(c, _)| matches!(c, Controller::Freezer | Controller::Pids))
    {
        Ok(Mode::V1 { bases })
    } else {
        Err(why.join("; "))
    }
}

/// Creates `base` and checks a run directory can be made and removed in it.
fn usable(base: &Path) -> Result<(), String> {
    std::fs::create_dir_all(base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    let probe = base.join(format!("probe-{}", std::process::id()));
    std::fs::create_dir(&probe)
        .map_err(|e| format!("cannot create a cgroup in {}: {e}", base.display()))?;
    std::fs::remove_dir(&probe).map_err(|e| format!("cannot remove {}: {e}", probe.display()))?;
    Ok(())
}

/// cgroup v2, default base (`msfleet` under the agent's own cgroup `own`): the
/// base gets a memory controller only if `own` passes it down, which the
/// kernel allows only while `own` holds no process. When the agent is alone
/// in `own` (a systemd unit with `Delegate=yes`), it moves itself into the leaf
/// `own/agent` first. Otherwise `own` stays as it is and runs get no limit.
fn delegate_from_own(own: &Path) {
    let has_memory = |f: &str| {
        std::fs::read_to_string(own.join(f))
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| c == "memory")
    };
    if has_memory("cgroup.subtree_control") || !has_memory("cgroup.controllers") {
        return;
    }
    if std::fs::write(own.join("cgroup.subtree_control"), "+memory +pids").is_ok() {
        return;
    }
    let me = std::process::id() as libc::pid_t;
    let procs = parse_pids(&std::fs::read_to_string(own.join("cgroup.procs")).unwrap_or_default());
    if procs != [me] {
        return;
    }
    let leaf = own.join("agent");
    let moved = std::fs::create_dir_all(&leaf)
        .and_then(|()| std::fs::write(leaf.join("cgroup.procs"), me.to_string()));
    match moved {
        Ok(()) => {
            let _ = std::fs::write(own.join("cgroup.subtree_control"), "+memory +pids");
            tracing::info!(cgroup = %leaf.display(), "containment: moved the agent into a leaf cgroup so that its runs can have a memory limit");
        }
        Err(e) => {
            tracing::debug!(error = %e, "containment: cannot move the agent into a leaf cgroup")
        }
    }
}

/// cgroup v2: lets the runs under `base` have a memory controller (it must be
/// offered by `base`'s parent; `base` itself holds no process).
fn enable_memory(base: &Path) -> bool {
    let controllers = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return false;
    }
    let _ = std::fs::write(base.join("cgroup.subtree_control"), "+memory +pids");
    std::fs::read_to_string(base.join("cgroup.subtree_control"))
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == "memory")
}

/// A cell's name: only what a directory name may hold.
fn cell_name(label: &str, n: u64) -> String {
    let clean: String = label
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("a{}-{clean}-{n}", std::process::id())
}

impl Containment {
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Why this agent refuses a job with `memory_limit` (none: it can enforce it).
    pub fn refuses(&self, memory_limit: Option<u64>) -> Option<ContainError> {
        let limit = memory_limit?;
        (!self.mode.memory()).then(|| ContainError::NoMemoryController {
            limit: msfleet_proto::memory::format(limit),
            mode: self.mode.label(),
        })
    }

    /// Makes the cell of one run labelled `label` (e.g. `<task>-<attempt>`),
    /// with `memory_limit` applied. Refused when a limit cannot be enforced.
    /// A cgroup that cannot be made (its base was removed meanwhile, say) falls
    /// back to the marker path with a log line, unless a limit was asked for.
    pub fn cell(&self, label: &str, memory_limit: Option<u64>) -> Result<Cell, ContainError> {
        if let Some(e) = self.refuses(memory_limit) {
            return Err(e);
        }
        let name = cell_name(label, self.seq.fetch_add(1, Ordering::Relaxed));
        match self.cgroup_cell(name.clone(), memory_limit) {
            Ok(c) => Ok(c),
            Err(e) if memory_limit.is_none() => {
                tracing::warn!(cell = %name, error = %e, "containment: no cgroup for this run: its processes are found by their marker");
                Ok(Cell {
                    name,
                    kind: CellKind::Marker {
                        subreaper: self.subreaper,
                    },
                    memory_limit: None,
                })
            }
            Err(e) => Err(e),
        }
    }

    fn cgroup_cell(&self, name: String, memory_limit: Option<u64>) -> Result<Cell, ContainError> {
        let io = |what: &str, p: &Path, e: std::io::Error| {
            ContainError::Io(format!("{what} {}: {e}", p.display()))
        };
        let mut cell = Cell {
            name: name.clone(),
            kind: CellKind::Marker {
                subreaper: self.subreaper,
            },
            memory_limit: None,
        };
        match &self.mode {
            Mode::Subreaper => {}
            Mode::V2 { base, .. } => {
                let dir = base.join(&name);
                std::fs::create_dir(&dir).map_err(|e| io("cannot create", &dir, e))?;
                cell.kind = CellKind::V2 { dir: dir.clone() };
                if let Some(limit) = memory_limit {
                    std::fs::write(dir.join("memory.max"), limit.to_string())
                        .map_err(|e| io("cannot set memory.max in", &dir, e))?;
                    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                    cell.memory_limit = Some(limit);
                }
            }
            Mode::V1 { bases } => {
                let mut dirs = Vec::new();
                for (ctrl, base) in bases {
                    let dir = base.join(&name);
                    if let Err(e) = std::fs::create_dir(&dir) {
                        cell.kind = CellKind::V1 { dirs };
                        cell.remove();
                        return Err(io("cannot create", &dir, e));
                    }
                    dirs.push((*ctrl, dir));
                }
                cell.kind = CellKind::V1 { dirs: dirs.clone() };
                if let Some(limit) = memory_limit {
                    if let Some((_, dir)) = dirs.iter().find(|(c, _)| *c == Controller::Memory) {
                        if let Err(e) =
                            std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string())
                        {
                            let err = io("cannot set memory.limit_in_bytes in", dir, e);
                            cell.remove();
                            return Err(err);
                        }
                        // Without swap in the limit a breach swaps instead of failing.
                        let _ = std::fs::write(
                            dir.join("memory.memsw.limit_in_bytes"),
                            limit.to_string(),
                        );
                        cell.memory_limit = Some(limit);
                    }
                }
            }
        }
        Ok(cell)
    }

    /// Empties and removes the cells that agents no longer alive left under
    /// the base (an agent killed before it could end its runs). Returns how
    /// many were removed.
    pub fn sweep_stale(&self) -> usize {
        let bases: Vec<PathBuf> = match &self.mode {
            Mode::V2 { base, .. } => vec![base.clone()],
            Mode::V1 { bases } => bases.iter().map(|(_, b)| b.clone()).collect(),
            Mode::Subreaper => return 0,
        };
        let mut removed = 0;
        for base in bases {
            let Ok(entries) = std::fs::read_dir(&base) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(pid) = name
                    .strip_prefix('a')
                    .and_then(|r| r.split('-').next())
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists() {
                    continue;
                }
                let dir = e.path();
                let kind = match &self.mode {
                    Mode::V2 { .. } => CellKind::V2 { dir: dir.clone() },
                    _ => CellKind::V1 {
                        dirs: vec![(Controller::Pids, dir.clone())],
                    },
                };
                let cell = Cell {
                    name,
                    kind,
                    memory_limit: None,
                };
                cell.kill_all();
                cell.remove();
                tracing::warn!(cgroup = %dir.display(), "removed a run's cgroup left by a previous agent");
                removed += 1;
            }
        }
        removed
    }
}

/// Where one run's processes are.
#[derive(Debug)]
enum CellKind {
    V2 {
        dir: PathBuf,
    },
    V1 {
        dirs: Vec<(Controller, PathBuf)>,
    },
    /// Found by [`CELL_VAR`] in their environment and by ancestry.
    Marker {
        subreaper: bool,
    },
}

/// One run's containment, from before its command starts to after its end.
#[derive(Debug)]
pub struct Cell {
    name: String,
    kind: CellKind,
    memory_limit: Option<u64>,
}

/// An OOM kill in a run's cell: the limit it had and the peak it reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomKill {
    pub limit: u64,
    /// `None` where the kernel does not report a peak.
    pub peak: Option<u64>,
}

impl std::fmt::Display for OomKill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use msfleet_proto::memory::format;
        write!(
            f,
            "out of memory: the job's limit is {}",
            format(self.limit)
        )?;
        match self.peak {
            Some(p) => write!(f, ", peak {}", format(p)),
            None => write!(f, " (this kernel does not report the peak)"),
        }
    }
}

/// The value of `key` in a flat-keyed cgroup file (`oom_kill 1\nunder_oom 0`).
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some(key)).then(|| w.next()?.parse().ok())?
    })
}

/// The pids listed in a `cgroup.procs` file's text.
pub fn parse_pids(text: &str) -> Vec<libc::pid_t> {
    text.lines()
        .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
        .filter(|p| *p > 0)
        .collect()
}

impl Cell {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `cgroup.procs` files the child joins before it execs.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        match &self.kind {
            CellKind::V2 { dir } => vec![dir.join("cgroup.procs")],
            CellKind::V1 { dirs } => dirs.iter().map(|(_, d)| d.join("cgroup.procs")).collect(),
            CellKind::Marker { .. } => Vec::new(),
        }
    }

    /// Prepares `cmd` so that the child is in the cell before it execs and
    /// carries the cell's marker.
    pub fn enter_on_spawn(&self, cmd: &mut std::process::Command) -> Result<(), ContainError> {
        use std::os::unix::process::CommandExt;
        cmd.env(CELL_VAR, &self.name);
        let files: Vec<CString> = self
            .procs_files()
            .iter()
            .map(|p| CString::new(p.as_os_str().as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| ContainError::Io(format!("cell {} has a path with a NUL", self.name)))?;
        if files.is_empty() {
            return Ok(());
        }
        // SAFETY: the hook runs in the forked child before exec and only calls
        // open, write and close (async-signal-safe) on buffers made before the
        // fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for f in &files {
                    let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let w = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if w < 0 {
                        return Err(err);
                    }
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// The processes in the cell now.
    fn members(&self) -> Vec<libc::pid_t> {
        let mut pids: Vec<libc::pid_t> = self
            .procs_files()
            .iter()
            .flat_map(|f| parse_pids(&std::fs::read_to_string(f).unwrap_or_default()))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs every process of the cell and waits (bounded) until none is
    /// left. Blocking. Called once the run's leader is reaped, so no pid of
    /// the run can have been reused by then.
    pub fn kill_all(&self) {
        match &self.kind {
            CellKind::V2 { dir } => {
                let killed = std::fs::write(dir.join("cgroup.kill"), "1").is_ok();
                if !killed {
                    self.freeze_kill_thaw(&dir.join("cgroup.freeze"), "1", "0");
                }
            }
            CellKind::V1 { dirs } => match dirs.iter().find(|(c, _)| *c == Controller::Freezer) {
                Some((_, d)) => self.freeze_kill_thaw(&d.join("freezer.state"), "FROZEN", "THAWED"),
                None => kill(&self.members()),
            },
            CellKind::Marker { subreaper } => {
                kill_marked(&self.name, *subreaper);
                return;
            }
        }
        let deadline = Instant::now() + EMPTY_WAIT;
        loop {
            let left = self.members();
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(cell = %self.name, left = left.len(), "processes of a run would not die");
                return;
            }
            // What forked between the read and the kill.
            kill(&left);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn freeze_kill_thaw(&self, state: &Path, frozen: &str, thawed: &str) {
        let froze = std::fs::write(state, frozen).is_ok();
        if froze {
            // v1 goes through FREEZING; a short wait is enough for what forks.
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline
                && std::fs::read_to_string(state)
                    .map(|s| s.trim() == "FREEZING")
                    .unwrap_or(false)
            {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        kill(&self.members());
        if froze {
            let _ = std::fs::write(state, thawed);
        }
    }

    /// The OOM kill in the cell, if the limit was breached. Read before [`Cell::remove`].
    pub fn oom_kill(&self) -> Option<OomKill> {
        let limit = self.memory_limit?;
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        let (killed, peak) = match &self.kind {
            CellKind::V2 { dir } => {
                let events = read(dir.join("memory.events")).unwrap_or_default();
                let killed = keyed_value(&events, "oom_kill").unwrap_or(0) > 0;
                let peak = read(dir.join("memory.peak")).and_then(|t| t.trim().parse().ok());
                (killed, peak)
            }
            CellKind::V1 { dirs } => {
                let (_, dir) = dirs.iter().find(|(c, _)| *c == Controller::Memory)?;
                let control = read(dir.join("memory.oom_control")).unwrap_or_default();
                let killed = match keyed_value(&control, "oom_kill") {
                    Some(n) => n > 0,
                    // Kernels before 4.13 count only hitting the limit.
                    None => {
                        read(dir.join("memory.failcnt"))
                            .and_then(|t| t.trim().parse::<u64>().ok())
                            .unwrap_or(0)
                            > 0
                    }
                };
                let peak =
                    read(dir.join("memory.max_usage_in_bytes")).and_then(|t| t.trim().parse().ok());
                (killed, peak)
            }
            CellKind::Marker { .. } => return None,
        };
        killed.then_some(OomKill { limit, peak })
    }

    /// Removes the cell's cgroup directories (after [`Cell::kill_all`]).
    pub fn remove(&self) {
        let dirs: Vec<&PathBuf> = match &self.kind {
            CellKind::V2 { dir } => vec![dir],
            CellKind::V1 { dirs } => dirs.iter().map(|(_, d)| d).collect(),
            CellKind::Marker { .. } => return,
        };
        for d in dirs {
            // A process that just died may keep the cgroup busy for a moment.
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= deadline => {
                        tracing::warn!(cgroup = %d.display(), error = %e, "cannot remove a run's cgroup");
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }
}

fn kill(pids: &[libc::pid_t]) {
    for &p in pids {
        if p > 1 && p as u32 != std::process::id() {
            // SAFETY: kill takes plain integers.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

/// One process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: libc::pid_t,
    pub state: char,
    pub ppid: libc::pid_t,
    pub pgrp: libc::pid_t,
    pub session: libc::pid_t,
}

/// Parses `/proc/<pid>/stat` text (the command name may hold spaces and parentheses).
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_whitespace().next()?.parse().ok()?;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    let session = f.next()?.parse().ok()?;
    Some(ProcStat {
        pid,
        state,
        ppid,
        pgrp,
        session,
    })
}

fn all_pids() -> Vec<libc::pid_t> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn stat_of(pid: libc::pid_t) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether `environ` (NUL-separated) holds `var=value`.
pub fn environ_has(environ: &[u8], var: &str, value: &str) -> bool {
    let want = format!("{var}={value}");
    environ.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
}

/// The live processes of cell `name`: those whose environment carries its
/// marker and every descendant of one of them.
fn marked(name: &str) -> Vec<libc::pid_t> {
    let me = std::process::id() as libc::pid_t;
    let stats: Vec<ProcStat> = all_pids()
        .into_iter()
        .filter(|p| *p != me)
        .filter_map(stat_of)
        .filter(|s| s.state != 'Z')
        .collect();
    let mut set: std::collections::HashSet<libc::pid_t> = stats
        .iter()
        .filter(|s| {
            std::fs::read(format!("/proc/{}/environ", s.pid))
                .map(|env| environ_has(&env, CELL_VAR, name))
                .unwrap_or(false)
        })
        .map(|s| s.pid)
        .collect();
    loop {
        let before = set.len();
        for s in &stats {
            if set.contains(&s.ppid) {
                set.insert(s.pid);
            }
        }
        if set.len() == before {
            break;
        }
    }
    set.into_iter().collect()
}

/// The subreaper path's end of a run: SIGKILL what [`marked`] finds until
/// nothing is left (bounded), then reap the zombies the agent adopted.
fn kill_marked(name: &str, subreaper: bool) {
    let deadline = Instant::now() + EMPTY_WAIT;
    loop {
        let left = marked(name);
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(cell = %name, left = left.len(), "processes of a run would not die");
            break;
        }
        kill(&left);
        std::thread::sleep(Duration::from_millis(10));
    }
    if subreaper {
        reap_adopted();
    }
}

/// Reaps the zombies that are the agent's children only because it is a
/// subreaper: in another session (they called `setsid`; the agent never
/// does), or in a process group that is neither their own nor the agent's.
/// The agent's own children (run leaders, `git`, probes) are never among
/// them, so no one else's `wait` is robbed.
pub fn reap_adopted() -> usize {
    let me = std::process::id() as libc::pid_t;
    // SAFETY: getpgrp and getsid(0) only read this process's ids.
    let (own_pgrp, own_sid) = unsafe { (libc::getpgrp(), libc::getsid(0)) };
    let mut reaped = 0;
    for s in all_pids().into_iter().filter_map(stat_of) {
        let adopted = s.session != own_sid || (s.pgrp != s.pid && s.pgrp != own_pgrp);
        if s.ppid == me && s.state == 'Z' && adopted {
            let mut status = 0;
            // SAFETY: waits for one specific child that is already a zombie.
            if unsafe { libc::waitpid(s.pid, &mut status, libc::WNOHANG) } == s.pid {
                reaped += 1;
            }
        }
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_lines_give_each_hierarchys_path() {
        let text = "9:name=systemd:/\n8:pids:/\n6:freezer:/\n4:memory:/process_api/ce3a\n2:cpu,cpuacct:/x\n0::/user.slice/a.service\n";
        let p = parse_proc_cgroup(text);
        let get = |c: &str| p.iter().find(|(k, _)| k == c).map(|(_, v)| v.as_str());
        assert_eq!(get("memory"), Some("/process_api/ce3a"));
        assert_eq!(get("pids"), Some("/"));
        assert_eq!(get("cpuacct"), Some("/x"));
        assert_eq!(get(""), Some("/user.slice/a.service"));
        assert_eq!(
            under(
                Path::new("/sys/fs/cgroup/memory"),
                Path::new("/process_api/ce3a/msfleet")
            ),
            Path::new("/sys/fs/cgroup/memory/process_api/ce3a/msfleet")
        );
    }

    #[test]
    fn oom_counters_parse_from_both_versions() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n";
        assert_eq!(keyed_value(v1, "oom_kill"), Some(1));
        assert_eq!(keyed_value(v1, "oom_kill_disable"), Some(0));
        let v2 = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(keyed_value(v2, "oom_kill"), Some(2));
        assert_eq!(keyed_value("under_oom 0\n", "oom_kill"), None);
        assert_eq!(parse_pids("12\n 13\nx\n0\n"), vec![12, 13]);
    }

    #[test]
    fn stat_lines_parse_with_odd_command_names() {
        let s = parse_stat("4242 (my (odd) cmd) Z 17 4242 4242 0 -1 4194560").unwrap();
        assert_eq!(
            s,
            ProcStat {
                pid: 4242,
                state: 'Z',
                ppid: 17,
                pgrp: 4242,
                session: 4242
            }
        );
        assert!(parse_stat("garbage").is_none());
        assert!(environ_has(b"A=1\0MSFLEET_CELL=x-1\0", CELL_VAR, "x-1"));
        assert!(!environ_has(b"MSFLEET_CELL=x-10\0", CELL_VAR, "x-1"));
    }

    #[test]
    fn cell_names_are_one_safe_directory_name() {
        let n = cell_name("7/../x y-1", 3);
        assert!(n.starts_with(&format!("a{}-", std::process::id())));
        assert!(n.ends_with("-7_.._x_y-1-3"), "{n}");
        assert!(!n.contains('/'));
    }

    #[test]
    fn the_oom_line_names_the_limit_and_the_peak() {
        let o = OomKill {
            limit: 512 << 20,
            peak: Some(512 << 20),
        };
        assert_eq!(
            o.to_string(),
            "out of memory: the job's limit is 512 MiB, peak 512 MiB"
        );
    }

    /// A cell laid out in a temporary directory: the files the kernel would
    /// have are written by hand, so the layout and the readings are checked
    /// without a cgroup.
    #[test]
    fn v1_cells_read_their_limit_and_breach_from_the_memory_hierarchy() {
        let tmp = tempfile::tempdir().unwrap();
        let mem = tmp.path().join("memory").join("a1-t-1-0");
        let frz = tmp.path().join("freezer").join("a1-t-1-0");
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::create_dir_all(&frz).unwrap();
        let cell = Cell {
            name: "a1-t-1-0".into(),
            kind: CellKind::V1 {
                dirs: vec![
                    (Controller::Freezer, frz.clone()),
                    (Controller::Memory, mem.clone()),
                ],
            },
            memory_limit: Some(64 << 20),
        };
        assert_eq!(
            cell.procs_files(),
            vec![frz.join("cgroup.procs"), mem.join("cgroup.procs")]
        );
        std::fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        )
        .unwrap();
        assert_eq!(cell.oom_kill(), None);
        std::fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(mem.join("memory.max_usage_in_bytes"), "67108864\n").unwrap();
        assert_eq!(
            cell.oom_kill(),
            Some(OomKill {
                limit: 64 << 20,
                peak: Some(64 << 20)
            })
        );
        // A kernel without the oom_kill line: failcnt says the limit was hit.
        std::fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\n",
        )
        .unwrap();
        std::fs::write(mem.join("memory.failcnt"), "3\n").unwrap();
        assert!(cell.oom_kill().is_some());
    }

    #[test]
    fn v2_cells_read_memory_events_and_peak() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a1-t-1-0");
        std::fs::create_dir_all(&dir).unwrap();
        let cell = Cell {
            name: "a1-t-1-0".into(),
            kind: CellKind::V2 { dir: dir.clone() },
            memory_limit: Some(1 << 30),
        };
        assert_eq!(cell.procs_files(), vec![dir.join("cgroup.procs")]);
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(
            cell.oom_kill(),
            Some(OomKill {
                limit: 1 << 30,
                peak: None
            })
        );
        std::fs::write(dir.join("memory.peak"), "1073741824\n").unwrap();
        assert_eq!(cell.oom_kill().unwrap().peak, Some(1 << 30));
        let unlimited = Cell {
            memory_limit: None,
            ..cell
        };
        assert_eq!(unlimited.oom_kill(), None, "no limit, no breach to report");
    }

    #[test]
    fn without_a_memory_controller_a_limit_is_refused() {
        let c = Containment {
            mode: Mode::Subreaper,
            seq: AtomicU64::new(0),
            subreaper: false,
        };
        assert!(c.refuses(None).is_none());
        let e = c.refuses(Some(64 << 20)).unwrap().to_string();
        assert!(e.contains("64 MiB") && e.contains("subreaper"), "{e}");
        assert!(c.cell("t-1", Some(64 << 20)).is_err());
        let cell = c.cell("t-1", None).unwrap();
        assert!(cell.procs_files().is_empty());
    }

    /// The marker path finds a `setsid` grandchild by its environment and kills it.
    #[test]
    fn the_marker_path_kills_a_setsid_grandchild() {
        let c = Containment {
            mode: Mode::Subreaper,
            seq: AtomicU64::new(0),
            subreaper: false,
        };
        let cell = c.cell("marker-test", None).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(format!(
            "setsid sleep 300 & echo $! > {}",
            pidfile.display()
        ));
        cell.enter_on_spawn(&mut cmd).unwrap();
        let status = cmd.status().unwrap();
        assert!(status.success());
        let pid: libc::pid_t = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let alive = |p: libc::pid_t| stat_of(p).is_some_and(|s| s.state != 'Z');
        assert!(alive(pid), "the detached sleep runs");
        cell.kill_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!alive(pid), "the detached sleep must be killed");
    }

    /// Against this machine's cgroups, where the test may write them: a
    /// `setsid` child is in the run's cgroup and dies with it; the directory
    /// is gone after.
    #[test]
    fn a_cgroup_cell_holds_and_kills_a_setsid_child() {
        let mode = match detect_mode(&Settings::default()) {
            Ok(m) => m,
            Err(why) => {
                eprintln!("skipped: no writable cgroup here ({why})");
                return;
            }
        };
        let c = Containment {
            mode,
            seq: AtomicU64::new(0),
            subreaper: false,
        };
        let cell = c.cell("cgroup-test", None).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(format!(
            "setsid sleep 300 & echo $! > {}",
            pidfile.display()
        ));
        cell.enter_on_spawn(&mut cmd).unwrap();
        assert!(cmd.status().unwrap().success());
        let pid: libc::pid_t = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            cell.members().contains(&pid),
            "the setsid child is in the cell"
        );
        cell.kill_all();
        assert!(cell.members().is_empty());
        cell.remove();
        for f in cell.procs_files() {
            assert!(!f.parent().unwrap().exists(), "{} is removed", f.display());
        }
    }
}
