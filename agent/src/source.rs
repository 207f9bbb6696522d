//! Where a job's tests come from: a directory under one of the agent's roots,
//! or a git repository + ref checked out (with the `git` CLI) from a bare
//! cache into a per-attempt workspace.
//!
//! A checkout is part of its attempt: every git command runs in its own
//! process group under the attempt's [`Guard`] (its deadline and its stop) and
//! under the agent's `--git-timeout`; whichever comes first kills the group
//! (git and its `git-remote-http` helpers). git also aborts an HTTP transfer
//! slower than [`LOW_SPEED_LIMIT`] bytes/s for [`LOW_SPEED_TIME_S`] seconds.
//! The bare cache of a repository is locked ([`RepoLock`], an `flock` on
//! `git-cache/<name>.lock`) from the fetch to the end of the workspace
//! checkout: two attempts of one repository take turns, attempts of
//! different repositories do not wait on each other.

use crate::attempt::{Guard, Halt};
use msfleet_proto::{source, Source};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// git's `http.lowSpeedLimit`: bytes per second below which a transfer is slow.
pub const LOW_SPEED_LIMIT: u32 = 1000;
/// git's `http.lowSpeedTime`: how long a transfer may stay slow before git aborts it.
pub const LOW_SPEED_TIME_S: u32 = 60;
/// How much of a git command's stdout and of its stderr is kept.
const GIT_OUTPUT_CAP: usize = 64 * 1024;
/// How often a checkout waiting for another attempt's lock of the same cache looks again.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// Why a job's source could not be prepared (an infrastructure error, not a test failure).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the job has no source")]
    Missing,
    #[error("source dir '{0}' does not exist on this agent")]
    NoSuchDir(String),
    #[error("source dir '{dir}' is outside this agent's roots ({roots})")]
    OutsideRoots { dir: String, roots: String },
    #[error("git {what} failed for {url}: {message}")]
    Git {
        what: &'static str,
        url: String,
        message: String,
    },
    #[error("preparing the workspace: {0}")]
    Io(#[from] std::io::Error),
    /// ENOSPC while fetching or checking out: the agent's disk, not the tests.
    #[error("no space left on the agent's work dir {dir} ({during}: {message})")]
    DiskFull {
        dir: String,
        during: String,
        message: String,
    },
    /// The attempt's deadline or stop came during the checkout (git was killed).
    #[error("stopped ({halt:?}) during {during}")]
    Halted { halt: Halt, during: String },
}

/// What git (or the kernel, `strerror(ENOSPC)`) says when the disk is full.
const NO_SPACE: &str = "No space left on device";

/// What git says when the job named something that does not exist (a ref, a
/// commit, a repository): the job's fault, not the agent's.
const GIT_JOB_FAULTS: &[&str] = &[
    "couldn't find remote ref",
    "did not match any",
    "unknown revision",
    "not a valid object name",
    "invalid reference",
    "bad revision",
    "repository not found",
    "does not appear to be a git repository",
    "not found",
];

impl SourceError {
    /// Whether the job itself is to blame (see `Finished.job_fault`): its
    /// source names a dir or git ref/repository that is not there, or a dir
    /// outside the roots. A checkout cut by the network, a full disk or git's
    /// timeout is the agent's.
    pub fn is_job_fault(&self) -> bool {
        match self {
            SourceError::Missing | SourceError::NoSuchDir(_) | SourceError::OutsideRoots { .. } => {
                true
            }
            SourceError::Git { message, .. } => {
                let m = message.to_ascii_lowercase();
                !m.contains("did not finish within") && GIT_JOB_FAULTS.iter().any(|p| m.contains(p))
            }
            SourceError::Io(_) | SourceError::DiskFull { .. } | SourceError::Halted { .. } => false,
        }
    }

    /// The same error, as [`SourceError::DiskFull`] naming `work_dir` when
    /// it came from a full disk (ENOSPC from a file operation, or git saying
    /// so on stderr).
    fn or_disk_full(self, work_dir: &Path) -> SourceError {
        let dir = work_dir.display().to_string();
        match self {
            SourceError::Io(e)
                if e.raw_os_error() == Some(libc::ENOSPC)
                    || e.kind() == std::io::ErrorKind::StorageFull =>
            {
                SourceError::DiskFull {
                    dir,
                    during: "preparing the workspace".into(),
                    message: e.to_string(),
                }
            }
            SourceError::Git { what, url, message } if message.contains(NO_SPACE) => {
                let line = message
                    .lines()
                    .find(|l| l.contains(NO_SPACE))
                    .unwrap_or(NO_SPACE)
                    .trim()
                    .to_string();
                SourceError::DiskFull {
                    dir,
                    during: format!("git {what} of {url}"),
                    message: line,
                }
            }
            other => other,
        }
    }
}

/// A prepared workspace.
#[derive(Debug)]
pub struct Workspace {
    pub dir: PathBuf,
    /// Removed when the attempt ends (git checkouts), or kept (user directories).
    pub owned: bool,
    /// The commit checked out, for git sources.
    pub commit: Option<String>,
}

impl Workspace {
    /// Removes an owned checkout.
    pub async fn cleanup(self) {
        if self.owned {
            if let Err(e) = tokio::fs::remove_dir_all(&self.dir).await {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove workspace");
            }
        }
    }
}

/// How a git checkout runs: the agent's settings and the attempt's guard.
pub struct GitRun<'g, 'a> {
    /// Longest one git command may run (the agent's `--git-timeout`).
    pub timeout: Duration,
    /// The attempt's deadline and stop.
    pub guard: &'g mut Guard<'a>,
}

/// Prepares the source of an attempt. `slot` names the per-attempt checkout.
pub async fn prepare(
    src: Option<&Source>,
    roots: &[PathBuf],
    work_dir: &Path,
    slot: &str,
    git: GitRun<'_, '_>,
) -> Result<Workspace, SourceError> {
    match src.and_then(|s| s.kind.as_ref()) {
        None => Err(SourceError::Missing),
        Some(source::Kind::Dir(d)) => {
            let dir = tokio::fs::canonicalize(d)
                .await
                .map_err(|_| SourceError::NoSuchDir(d.clone()))?;
            if !dir.is_dir() {
                return Err(SourceError::NoSuchDir(d.clone()));
            }
            if !roots
                .iter()
                .any(|r| msfleet_proto::roots::is_under(&dir, r))
            {
                return Err(SourceError::OutsideRoots {
                    dir: d.clone(),
                    roots: roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            Ok(Workspace {
                dir,
                owned: false,
                commit: None,
            })
        }
        Some(source::Kind::Git(g)) => {
            let got = checkout(&g.url, &g.r#ref, work_dir, slot, git).await;
            match got.map_err(|e| e.or_disk_full(work_dir)) {
                Err(e) => {
                    // What a full disk or a killed git left half-written only takes room.
                    let _ = tokio::fs::remove_dir_all(work_dir.join("workspaces").join(slot)).await;
                    Err(e)
                }
                ok => ok,
            }
        }
    }
}

async fn checkout(
    url: &str,
    git_ref: &str,
    work_dir: &Path,
    slot: &str,
    mut git: GitRun<'_, '_>,
) -> Result<Workspace, SourceError> {
    let cache_root = work_dir.join("git-cache");
    tokio::fs::create_dir_all(&cache_root).await?;
    let name = cache_name(url);
    let cache = cache_root.join(&name);
    // Held until the workspace is checked out: its clone shares the cache's objects.
    let _lock = RepoLock::acquire(&cache_root.join(format!("{name}.lock")), url, git.guard).await?;
    if cache.join("HEAD").exists() {
        git.run(
            &[
                "fetch",
                "--quiet",
                "--prune",
                "--force",
                "origin",
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
            ],
            Some(&cache),
            "fetch",
            url,
        )
        .await?;
    } else {
        let tmp = cache.with_extension("partial");
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        git.run(
            &[
                "clone",
                "--quiet",
                "--bare",
                "--",
                url,
                &tmp.to_string_lossy(),
            ],
            None,
            "clone",
            url,
        )
        .await?;
        tokio::fs::rename(&tmp, &cache).await?;
    }
    let want = if git_ref.is_empty() { "HEAD" } else { git_ref };
    let missing = |first: String| SourceError::Git {
        what: "ref lookup",
        url: url.to_string(),
        message: format!("ref '{want}' does not exist: {first}"),
    };
    let commit = match git.rev_parse(&cache, want, url).await? {
        Ok(c) => c,
        Err(first) => {
            // Not a branch or tag: maybe a commit or a ref like refs/pull/1/head.
            match git
                .run(
                    &["fetch", "--quiet", "origin", want],
                    Some(&cache),
                    "fetch",
                    url,
                )
                .await
            {
                Ok(_) => git
                    .rev_parse(&cache, "FETCH_HEAD", url)
                    .await?
                    .map_err(|_| missing(first))?,
                // A deadline, a stop or git's own timeout is not a missing ref.
                Err(e @ SourceError::Halted { .. }) => return Err(e),
                Err(e @ SourceError::Git { .. }) if is_timeout(&e) => return Err(e),
                Err(_) => return Err(missing(first)),
            }
        }
    };
    let ws = work_dir.join("workspaces").join(slot);
    let _ = tokio::fs::remove_dir_all(&ws).await;
    tokio::fs::create_dir_all(ws.parent().unwrap_or(work_dir)).await?;
    git.run(
        &[
            "clone",
            "--quiet",
            "--shared",
            "--no-checkout",
            "--",
            &cache.to_string_lossy(),
            &ws.to_string_lossy(),
        ],
        None,
        "clone",
        url,
    )
    .await?;
    git.run(
        &["checkout", "--quiet", "--detach", &commit],
        Some(&ws),
        "checkout",
        url,
    )
    .await?;
    Ok(Workspace {
        dir: ws,
        owned: true,
        commit: Some(commit),
    })
}

/// The message of a git command cut by `--git-timeout` ([`GitRun::run`]).
const GIT_TIMEOUT_NOTE: &str = "the agent's --git-timeout";

fn is_timeout(e: &SourceError) -> bool {
    matches!(e, SourceError::Git { message, .. } if message.contains(GIT_TIMEOUT_NOTE))
}

/// What one git command printed (at most [`GIT_OUTPUT_CAP`] bytes of each stream).
#[derive(Debug)]
struct GitOutput {
    success: bool,
    stdout: String,
    stderr: String,
}

impl GitRun<'_, '_> {
    /// Runs `git ARGS` (in `cwd`), `what` naming it in errors about `url`;
    /// fails unless git exits 0.
    async fn run(
        &mut self,
        args: &[&str],
        cwd: Option<&Path>,
        what: &'static str,
        url: &str,
    ) -> Result<GitOutput, SourceError> {
        let out = self.output(args, cwd, what, url).await?;
        if out.success {
            Ok(out)
        } else {
            Err(SourceError::Git {
                what,
                url: url.to_string(),
                message: out.stderr.trim().to_string(),
            })
        }
    }

    /// `git rev-parse --verify REF^{commit}` in `repo`: the commit, or what git said.
    async fn rev_parse(
        &mut self,
        repo: &Path,
        r: &str,
        url: &str,
    ) -> Result<Result<String, String>, SourceError> {
        let spec = format!("{r}^{{commit}}");
        let out = self
            .output(
                &["rev-parse", "--verify", &spec],
                Some(repo),
                "rev-parse",
                url,
            )
            .await?;
        Ok(if out.success {
            Ok(out.stdout.trim().to_string())
        } else {
            Err(out.stderr.trim().to_string())
        })
    }

    /// Runs git as the leader of its own process group, in its own cell of
    /// the agent's containment, to its end, the attempt's halt, or
    /// `self.timeout`; on either of the last two the whole group is killed.
    /// Whatever git left in its group or cell is killed in any case.
    async fn output(
        &mut self,
        args: &[&str],
        cwd: Option<&Path>,
        what: &'static str,
        url: &str,
    ) -> Result<GitOutput, SourceError> {
        if let Some(halt) = self.guard.check() {
            return Err(SourceError::Halted {
                halt,
                during: format!("the git {what} of {url}"),
            });
        }
        let mut cmd = Command::new("git");
        cmd.arg("-c")
            .arg(format!("http.lowSpeedLimit={LOW_SPEED_LIMIT}"))
            .arg("-c")
            .arg(format!("http.lowSpeedTime={LOW_SPEED_TIME_S}"))
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        let cannot = |e: std::io::Error| SourceError::Git {
            what,
            url: url.to_string(),
            message: format!("cannot run git: {e}"),
        };
        // In a cell of the agent's containment, as every process of an
        // attempt: a git helper that left its group dies with the checkout,
        // and a restarted agent sweeps what a crashed one left.
        let cell = crate::contain::active()
            .cell("git", None)
            .map_err(|e| cannot(std::io::Error::other(e)))?;
        cell.enter_on_spawn(cmd.as_std_mut())
            .map_err(|e| cannot(std::io::Error::other(e)))?;
        let mut child = cmd.spawn().map_err(cannot)?;
        let pgid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(Pid::from_raw)
            .ok_or_else(|| cannot(std::io::Error::other("git has no process id")))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let ran = async {
            let (out, err, status) =
                tokio::join!(read_capped(stdout), read_capped(stderr), child.wait());
            (out, err, status)
        };
        let ended = tokio::select! {
            r = ran => Ok(r),
            _ = tokio::time::sleep(self.timeout) => Err(None),
            h = self.guard.wait() => Err(Some(h)),
        };
        // git's helpers (git-remote-http, index-pack) are in its group, and
        // whatever left the group is in its cell.
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = tokio::task::spawn_blocking(move || {
            cell.kill_all();
            cell.remove();
        })
        .await;
        match ended {
            Ok((stdout, stderr, status)) => Ok(GitOutput {
                success: status.map_err(cannot)?.success(),
                stdout,
                stderr,
            }),
            Err(None) => Err(SourceError::Git {
                what,
                url: url.to_string(),
                message: format!(
                    "git did not finish within {} ({GIT_TIMEOUT_NOTE}); killed",
                    humantime::format_duration(self.timeout)
                ),
            }),
            Err(Some(halt)) => Err(SourceError::Halted {
                halt,
                during: format!("the git {what} of {url}"),
            }),
        }
    }
}

/// Reads a pipe to its end, keeping the first [`GIT_OUTPUT_CAP`] bytes.
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = GIT_OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// An exclusive lock of one repository's git cache, released when dropped
/// (or when the agent dies: the kernel drops an `flock` with its file).
pub struct RepoLock {
    _file: Flock<std::fs::File>,
}

impl RepoLock {
    /// Waits for the lock at `path` (created if missing), giving up when the
    /// attempt halts. The wait polls without blocking a thread.
    pub async fn acquire(
        path: &Path,
        url: &str,
        guard: &mut Guard<'_>,
    ) -> Result<RepoLock, SourceError> {
        let waiting = || {
            tracing::info!(
                url,
                "waiting for another attempt's checkout of the same repository"
            )
        };
        match lock_exclusive(path, guard, waiting).await {
            Ok(file) => Ok(RepoLock { _file: file }),
            Err(LockWait::Io(e)) => Err(SourceError::Io(std::io::Error::other(format!(
                "locking the git cache {}: {e}",
                path.display()
            )))),
            Err(LockWait::Halted(halt)) => Err(SourceError::Halted {
                halt,
                during: format!("the wait for the git cache of {url}"),
            }),
        }
    }
}

/// Why [`lock_exclusive`] gave up.
#[derive(Debug)]
pub enum LockWait {
    Io(std::io::Error),
    Halted(Halt),
}

/// Waits for an exclusive `flock` of `path` (created if missing), giving up when the attempt
/// halts; `waiting` is called once, when the lock is held by someone else. The wait polls
/// without blocking a thread. The lock goes with the returned file (or the agent's death).
/// The one lock of the agent's shared caches (git caches, job environments).
pub async fn lock_exclusive(
    path: &Path,
    guard: &mut Guard<'_>,
    waiting: impl FnOnce(),
) -> Result<Flock<std::fs::File>, LockWait> {
    lock(path, FlockArg::LockExclusiveNonblock, guard, waiting).await
}

/// [`lock_exclusive`], shared: many holders at once, none while one holds it exclusively.
pub async fn lock_shared(
    path: &Path,
    guard: &mut Guard<'_>,
    waiting: impl FnOnce(),
) -> Result<Flock<std::fs::File>, LockWait> {
    lock(path, FlockArg::LockSharedNonblock, guard, waiting).await
}

async fn lock(
    path: &Path,
    how: FlockArg,
    guard: &mut Guard<'_>,
    waiting: impl FnOnce(),
) -> Result<Flock<std::fs::File>, LockWait> {
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .await
        .map_err(LockWait::Io)?
        .into_std()
        .await;
    let mut waiting = Some(waiting);
    loop {
        match Flock::lock(file, how) {
            Ok(locked) => return Ok(locked),
            Err((f, nix::errno::Errno::EWOULDBLOCK | nix::errno::Errno::EINTR)) => file = f,
            Err((_, e)) => return Err(LockWait::Io(std::io::Error::from(e))),
        }
        if let Some(w) = waiting.take() {
            w();
        }
        tokio::select! {
            _ = tokio::time::sleep(LOCK_POLL) => {}
            halt = guard.wait() => return Err(LockWait::Halted(halt)),
        }
    }
}

/// A file-system-safe, stable cache directory name for a repository URL.
fn cache_name(url: &str) -> String {
    // FNV-1a: stable across versions, unlike std's DefaultHasher.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in url.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    let tail: String = url
        .rsplit('/')
        .next()
        .unwrap_or("repo")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(40)
        .collect();
    format!("{tail}-{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::StopReason;
    use tokio::sync::watch;

    /// What the job named wrong is its fault; what the agent's network, disk
    /// or git's timeout did is the agent's (auto-quarantine counts only those).
    #[test]
    fn job_faults_are_told_from_the_agents() {
        let git = |message: &str| SourceError::Git {
            what: "fetch",
            url: "https://example.com/r.git".into(),
            message: message.into(),
        };
        assert!(SourceError::NoSuchDir("/srv/typo".into()).is_job_fault());
        assert!(SourceError::OutsideRoots {
            dir: "/etc".into(),
            roots: "/srv".into()
        }
        .is_job_fault());
        assert!(git("fatal: couldn't find remote ref refs/heads/nope").is_job_fault());
        assert!(git("error: pathspec 'v9' did not match any file(s) known to git").is_job_fault());
        assert!(
            git("remote: Repository not found.\nfatal: repository 'x' not found").is_job_fault()
        );
        assert!(!git("fatal: unable to access 'http://127.0.0.1:1/r.git/': Failed to connect to 127.0.0.1 port 1: Couldn't connect to server").is_job_fault());
        assert!(!git("Could not resolve host: example.com").is_job_fault());
        assert!(
            !git("git did not finish within 1s (the agent's --git-timeout); killed").is_job_fault()
        );
        assert!(!SourceError::DiskFull {
            dir: "/w".into(),
            during: "clone".into(),
            message: "No space left on device".into()
        }
        .is_job_fault());
    }

    /// A process git starts that leaves git's process group (here through
    /// the `ext::` transport, as a credential helper or ssh could) dies with
    /// the git command: git runs in a cell of the agent's containment.
    #[tokio::test]
    async fn what_git_starts_outside_its_group_dies_with_it() {
        let tmp = tempfile::tempdir().unwrap();
        let pid_file = tmp.path().join("pid");
        let (_stop, mut rx) = watch::channel(None::<StopReason>);
        let mut guard = Guard::new(
            tokio::time::Instant::now() + Duration::from_secs(60),
            &mut rx,
        );
        let mut git = GitRun {
            timeout: Duration::from_secs(2),
            guard: &mut guard,
        };
        let helper = tmp.path().join("helper.sh");
        std::fs::write(
            &helper,
            format!(
                "#!/bin/sh\nsetsid sleep 300 </dev/null >/dev/null 2>&1 &\necho $! > {}\nexec sleep 30\n",
                pid_file.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let url = format!("ext::{}", helper.display());
        let got = git
            .output(
                &["-c", "protocol.ext.allow=always", "ls-remote", &url],
                None,
                "ls-remote",
                "ext",
            )
            .await;
        assert!(got.is_err(), "cut by the git timeout: {got:?}");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .expect("the ext helper ran")
            .trim()
            .parse()
            .unwrap();
        let gone = (0..50).any(|_| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for its reaper.
            let dead =
                stat.is_empty() || stat.split(") ").nth(1).is_some_and(|r| r.starts_with('Z'));
            if !dead {
                std::thread::sleep(Duration::from_millis(100));
            }
            dead
        });
        assert!(gone, "the setsid child of git's helper ({pid}) still runs");
    }

    /// [`prepare`] with a minute's deadline and git timeout, never stopped.
    async fn prep(
        src: Option<&Source>,
        roots: &[PathBuf],
        work: &Path,
        slot: &str,
    ) -> Result<Workspace, SourceError> {
        let (_stop, mut rx) = watch::channel(None::<StopReason>);
        let mut guard = Guard::new(
            tokio::time::Instant::now() + Duration::from_secs(60),
            &mut rx,
        );
        let git = GitRun {
            timeout: Duration::from_secs(60),
            guard: &mut guard,
        };
        prepare(src, roots, work, slot, git).await
    }

    fn sh(dir: &Path, args: &[&str]) {
        let ok = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }

    /// An `http://` git URL whose server accepts connections and never answers.
    fn hung_server() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for c in l.incoming() {
                match c {
                    Ok(s) => held.push(s),
                    Err(_) => return,
                }
            }
        });
        format!("http://127.0.0.1:{port}/repo.git")
    }

    /// Live (not zombie) processes whose command line mentions `needle`.
    fn procs_naming(needle: &str) -> Vec<String> {
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(cmd);
            }
        }
        found
    }

    /// Waits (up to 5 s) until no process names `url`.
    async fn assert_no_git_left(url: &str) {
        for _ in 0..50 {
            if procs_naming(url).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("git left running: {:?}", procs_naming(url));
    }

    fn git_src(url: &str) -> Source {
        Source {
            kind: Some(source::Kind::Git(msfleet_proto::GitSource {
                url: url.into(),
                r#ref: "main".into(),
            })),
        }
    }

    /// A hung fetch is cut by git's own timeout (an error naming git and the
    /// setting), by the attempt's deadline and by its stop; git and its
    /// helpers are gone each time.
    #[tokio::test]
    async fn a_hung_fetch_is_cut_by_the_git_timeout_the_deadline_and_a_stop() {
        let url = hung_server();
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path();
        let run = |git_timeout: Duration, deadline: Duration| {
            let url = url.clone();
            async move {
                let (stop, mut rx) = watch::channel(None::<StopReason>);
                let mut guard = Guard::new(tokio::time::Instant::now() + deadline, &mut rx);
                let git = GitRun {
                    timeout: git_timeout,
                    guard: &mut guard,
                };
                let started = std::time::Instant::now();
                let canceller = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    let _ = stop.send(Some(StopReason::Cancelled("by alice".into())));
                    // Keep the sender: a dropped one reads as a shutdown.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                });
                let got = prepare(Some(&git_src(&url)), &[], work, "s", git).await;
                canceller.abort();
                (got.map(|w| w.dir), started.elapsed())
            }
        };
        let long = Duration::from_secs(60);
        let short = Duration::from_millis(300);
        // git's own timeout, before the deadline and the stop.
        let (got, took) = run(short, long).await;
        let err = got.unwrap_err();
        assert!(
            matches!(err, SourceError::Git { what: "clone", .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("git clone failed for {url}: git did not finish within 300ms (the agent's --git-timeout); killed")
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_no_git_left(&url).await;
        // The attempt's deadline.
        let (got, _) = run(long, short).await;
        match got.unwrap_err() {
            SourceError::Halted { halt, during } => {
                assert_eq!(halt, Halt::TimedOut);
                assert_eq!(during, format!("the git clone of {url}"));
            }
            other => panic!("{other:?}"),
        }
        assert_no_git_left(&url).await;
        // A cancel.
        let (got, took) = run(long, long).await;
        match got.unwrap_err() {
            SourceError::Halted { halt, .. } => {
                assert_eq!(halt, Halt::Stop(StopReason::Cancelled("by alice".into())))
            }
            other => panic!("{other:?}"),
        }
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_no_git_left(&url).await;
        assert!(
            !work.join("workspaces").join("s").exists(),
            "nothing half-made is kept"
        );
    }

    fn make_repo(dir: &Path, text: &str) -> String {
        std::fs::create_dir_all(dir).unwrap();
        sh(dir, &["init", "-q", "-b", "main"]);
        std::fs::write(dir.join("a.txt"), text).unwrap();
        sh(dir, &["add", "."]);
        sh(dir, &["commit", "-qm", "one"]);
        dir.to_string_lossy().to_string()
    }

    /// The cache of one repository is locked from the fetch to the end of the
    /// workspace checkout: a checkout of that repository waits (and gives up
    /// with its attempt's deadline), one of another repository does not.
    /// Two checkouts of one repository at once both get it.
    #[tokio::test]
    async fn the_git_cache_is_locked_per_repository() {
        let tmp = tempfile::tempdir().unwrap();
        let one = make_repo(&tmp.path().join("one"), "one");
        let two = make_repo(&tmp.path().join("two"), "two");
        let work = tmp.path().join("work");
        let cache_root = work.join("git-cache");
        std::fs::create_dir_all(&cache_root).unwrap();
        let (_stop, mut rx) = watch::channel(None::<StopReason>);
        let mut outer = Guard::new(
            tokio::time::Instant::now() + Duration::from_secs(60),
            &mut rx,
        );
        let lock_path = cache_root.join(format!("{}.lock", cache_name(&one)));
        let held = RepoLock::acquire(&lock_path, &one, &mut outer)
            .await
            .unwrap();
        // Another repository goes ahead.
        let ws = prep(Some(&git_src(&two)), &[], &work, "b").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(ws.dir.join("a.txt")).unwrap(),
            "two"
        );
        // The locked one waits until the attempt's deadline.
        let (_stop2, mut rx2) = watch::channel(None::<StopReason>);
        let mut guard = Guard::new(
            tokio::time::Instant::now() + Duration::from_millis(400),
            &mut rx2,
        );
        let git = GitRun {
            timeout: Duration::from_secs(60),
            guard: &mut guard,
        };
        match prepare(Some(&git_src(&one)), &[], &work, "a", git).await {
            Err(SourceError::Halted { halt, during }) => {
                assert_eq!(halt, Halt::TimedOut);
                assert_eq!(during, format!("the wait for the git cache of {one}"));
            }
            other => panic!("{other:?}"),
        }
        drop(held);
        // Free again: two checkouts of it at once (the first clones the cache).
        let src = git_src(&one);
        let (x, y) = tokio::join!(
            prep(Some(&src), &[], &work, "x"),
            prep(Some(&src), &[], &work, "y")
        );
        for ws in [x.unwrap(), y.unwrap()] {
            assert_eq!(
                std::fs::read_to_string(ws.dir.join("a.txt")).unwrap(),
                "one"
            );
        }
    }

    #[tokio::test]
    async fn checks_out_branches_tags_and_commits_and_names_missing_refs() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        sh(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("a.txt"), "one").unwrap();
        sh(&repo, &["add", "."]);
        sh(&repo, &["commit", "-qm", "one"]);
        sh(&repo, &["tag", "v1"]);
        std::fs::write(repo.join("a.txt"), "two").unwrap();
        sh(&repo, &["commit", "-qam", "two"]);
        let url = repo.to_string_lossy().to_string();
        let work = tmp.path().join("work");
        let src = |r: &str| Source {
            kind: Some(source::Kind::Git(msfleet_proto::GitSource {
                url: url.clone(),
                r#ref: r.into(),
            })),
        };
        let ws = prep(Some(&src("main")), &[], &work, "a").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(ws.dir.join("a.txt")).unwrap(),
            "two"
        );
        let ws = prep(Some(&src("v1")), &[], &work, "b").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(ws.dir.join("a.txt")).unwrap(),
            "one"
        );
        let commit = ws.commit.clone().unwrap();
        let ws = prep(Some(&src(&commit[..12])), &[], &work, "c")
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(ws.dir.join("a.txt")).unwrap(),
            "one"
        );
        ws.cleanup().await;
        let err = prep(Some(&src("no-such-branch")), &[], &work, "d")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-such-branch"), "{err}");
    }

    #[test]
    fn a_full_disk_is_named_with_the_work_dir() {
        use std::io::Write;
        // A real ENOSPC: /dev/full refuses every write with it.
        let Ok(mut full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
            eprintln!("no /dev/full here: skipped");
            return;
        };
        let e = full.write_all(b"x").and_then(|_| full.flush()).unwrap_err();
        let work = Path::new("/var/lib/msagent");
        let got = SourceError::from(e).or_disk_full(work);
        assert!(matches!(got, SourceError::DiskFull { .. }), "{got:?}");
        assert_eq!(
            got.to_string(),
            "no space left on the agent's work dir /var/lib/msagent (preparing the workspace: \
             No space left on device (os error 28))"
        );
        // Full as git says it on stderr (index-pack, checkout).
        let git = SourceError::Git {
            what: "clone",
            url: "https://example.com/r.git".into(),
            message: "error: unable to write file src/a.py\n\
                      fatal: write error: No space left on device\n\
                      fatal: index-pack failed"
                .into(),
        };
        assert_eq!(
            git.or_disk_full(work).to_string(),
            "no space left on the agent's work dir /var/lib/msagent (git clone of \
             https://example.com/r.git: fatal: write error: No space left on device)"
        );
        // Anything else is left as it was.
        let other = SourceError::Io(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(matches!(other.or_disk_full(work), SourceError::Io(_)));
    }

    #[tokio::test]
    async fn dirs_must_exist_and_lie_under_a_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let inside = root.join("proj");
        std::fs::create_dir(&inside).unwrap();
        let dir = |d: &Path| Source {
            kind: Some(source::Kind::Dir(d.to_string_lossy().into())),
        };
        let roots = vec![root.clone()];
        assert!(prep(Some(&dir(&inside)), &roots, &root, "x").await.is_ok());
        let missing = prep(Some(&dir(&root.join("nope"))), &roots, &root, "x").await;
        assert!(matches!(missing, Err(SourceError::NoSuchDir(_))));
        let outside = prep(Some(&dir(Path::new("/usr"))), &roots, &root, "x").await;
        assert!(matches!(outside, Err(SourceError::OutsideRoots { .. })));
    }

    #[tokio::test]
    async fn a_symlink_under_a_root_that_leads_out_of_it_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        // As text the path is under the root (the scheduler's view) ...
        let text = root.join("escape");
        assert!(msfleet_proto::roots::is_under(&text, &root));
        // ... but the agent resolves it first and refuses it.
        let src = Source {
            kind: Some(source::Kind::Dir(text.to_string_lossy().into())),
        };
        let got = prep(Some(&src), std::slice::from_ref(&root), &base, "x").await;
        assert!(
            matches!(got, Err(SourceError::OutsideRoots { .. })),
            "{:?}",
            got.err()
        );
    }
}
