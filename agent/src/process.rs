//! The process-group runner: the one way the agent runs a test or benchmark command.
//!
//! [`ProcessGroup::spawn`] starts a command in its own process group (stdin from `/dev/null`,
//! stdout and stderr piped); [`ProcessGroup::record`] writes the group to a `.pgid` file so
//! that an agent restarted after a crash can kill what is left ([`reap_orphans`]);
//! [`ProcessGroup::start`] streams both pipes as sequenced log chunks of at most
//! [`msfleet_proto::MAX_LOG_CHUNK`] bytes (each chunk also handed to an optional
//! [`OutputHook`]) and reaps the process with `wait4` on a blocking thread, which gives its exit
//! status and resource usage ([`Reaped`]). [`Running::wait`] waits for the exit, or for the
//! attempt's [`Guard`] (deadline or stop): then SIGTERM to the group, the grace period, SIGKILL
//! of the group. Whatever the process left behind in its group is SIGKILLed in either case.
//!
//! Every run is also contained ([`crate::contain`]): it starts inside its own [`Cell`] (a
//! cgroup, or the marker that the subreaper path finds), and at its end, normal or halted,
//! everything in the cell is killed, `setsid` or not, before the cell is removed. A run with a
//! memory limit that the kernel OOM-killed in reports it in [`Exited::oom`]. This is the one
//! place where a run's processes end.
//!
//! The pytest runner ([`crate::runner`]) and the benchmark core ([`crate::bench`]) both run
//! their processes through it: pytest ignores the resource usage, the benchmark core measures
//! with it and captures the output through the hook for its extractors.

use crate::attempt::{Guard, Halt, Updates};
use crate::contain::{Cell, OomKill};
use msfleet_proto::LogChunk;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How long the output readers may lag behind the end of a run.
pub const READER_DRAIN: Duration = Duration::from_secs(5);

/// The environment variables whose value a runner also writes as the second line of its
/// `.pgid` file: a live group leader that carries one of them with that value is ours.
/// `MSFLEET_RESULT_SOCKET`: pytest's result socket; `MSFLEET_METRICS`: a benchmark run's
/// metrics file.
const MARKER_VARS: [&str; 2] = ["MSFLEET_RESULT_SOCKET", "MSFLEET_METRICS"];

/// How long a reader of a run's output (and of the pytest plugin's results) waits after a
/// read that emptied its pipe or socket before it reads again: what the run writes meanwhile
/// is read at once, one wake-up of the agent where there were many (pytest writes a
/// progress character and the plugin a line per test). A result or a log chunk is seen at
/// most this much later; the session batches them for longer anyway.
pub const READ_PACE: Duration = Duration::from_millis(5);

/// A blocking reader that, after a read that emptied its source (it returned less than
/// asked), sleeps [`READ_PACE`] (or the pace given) before the next read. A full read is
/// followed at once: a run that writes fast is never held back. While it sleeps, the
/// writer's writes wake nobody.
pub struct PacedReader<R> {
    inner: R,
    pace: Duration,
    drained: bool,
}

impl<R: Read> PacedReader<R> {
    pub fn new(inner: R, pace: Duration) -> Self {
        PacedReader {
            inner,
            pace,
            drained: false,
        }
    }
}

impl<R: Read> Read for PacedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if std::mem::take(&mut self.drained) {
            std::thread::sleep(self.pace);
        }
        let n = self.inner.read(buf)?;
        self.drained = n > 0 && n < buf.len();
        Ok(n)
    }
}

/// Sees every chunk of a run's output (`"stdout"` or `"stderr"`, bytes) before it is sent.
pub type OutputHook = Arc<dyn Fn(&str, &[u8]) + Send + Sync>;

/// The exit status and resource usage of a reaped child.
#[derive(Debug)]
pub struct Reaped {
    pub status: ExitStatus,
    /// User + system CPU time of the child and the descendants it waited for.
    pub cpu_s: f64,
    /// Peak resident set size of the largest of them.
    pub max_rss_bytes: u64,
    /// When it was reaped.
    pub ended: Instant,
}

/// A command started in its own process group whose output is not read yet.
pub struct ProcessGroup {
    child: std::process::Child,
    pid: libc::pid_t,
    pgid_file: Option<PathBuf>,
    cell: Cell,
}

impl ProcessGroup {
    /// Starts `cmd` as the leader of a new process group, stdin from `/dev/null`, stdout and
    /// stderr piped, inside a new cell of the agent's containment labelled `label` (the
    /// attempt's `<task>-<attempt>`) with `memory_limit` (refused where it cannot be enforced).
    pub fn spawn(
        cmd: &mut std::process::Command,
        label: &str,
        memory_limit: Option<u64>,
    ) -> std::io::Result<ProcessGroup> {
        let cell = crate::contain::active()
            .cell(label, memory_limit)
            .map_err(std::io::Error::other)?;
        cell.enter_on_spawn(cmd).map_err(std::io::Error::other)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                cell.remove();
                return Err(e);
            }
        };
        // The child is reaped by `wait_rusage`, never through `child`.
        let pid = libc::pid_t::try_from(child.id())
            .map_err(|_| std::io::Error::other("the run got an invalid process id"))?;
        Ok(ProcessGroup {
            child,
            pid,
            pgid_file: None,
            cell,
        })
    }

    /// The leader's pid, which is also the group's id.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Records the group in `file` (`<pgid>\n<marker>\n`, see [`reap_orphans`]); `marker` is
    /// the value the command got in one of the marker variables. The file is removed by
    /// [`Exited::drain`], also when writing it failed.
    pub async fn record(&mut self, file: PathBuf, marker: &Path) -> std::io::Result<()> {
        let written =
            tokio::fs::write(&file, format!("{}\n{}\n", self.pid, marker.display())).await;
        self.pgid_file = Some(file);
        written
    }

    /// Streams stdout and stderr into `tx` as log chunks (through `hook` first, if any) and
    /// starts reaping the process. Both pipes are read by one blocking thread, in the order
    /// they became readable, paced ([`READ_PACE`]).
    pub fn start(mut self, tx: &Updates, hook: Option<OutputHook>) -> Running {
        let mut pipes = Vec::new();
        if let Some(fd) = self.child.stdout.take() {
            pipes.push((std::fs::File::from(OwnedFd::from(fd)), "stdout"));
        }
        if let Some(fd) = self.child.stderr.take() {
            pipes.push((std::fs::File::from(OwnedFd::from(fd)), "stderr"));
        }
        let rt = tokio::runtime::Handle::current();
        let (tx, hook) = (tx.clone(), hook.clone());
        let readers = vec![tokio::task::spawn_blocking(move || {
            pump(pipes, tx, hook, rt)
        })];
        drop(self.child);
        let pid = self.pid;
        Running {
            pgid: Pid::from_raw(pid),
            pgid_file: self.pgid_file,
            readers,
            reaper: tokio::task::spawn_blocking(move || wait_rusage(pid)),
            cell: self.cell,
        }
    }
}

/// A started process group: its output is being read and its leader reaped.
pub struct Running {
    pgid: Pid,
    pgid_file: Option<PathBuf>,
    readers: Vec<JoinHandle<()>>,
    reaper: JoinHandle<std::io::Result<Reaped>>,
    cell: Cell,
}

/// How a process group's run ended.
pub struct Exited {
    /// The leader's status and usage (on a halt: after SIGTERM or SIGKILL).
    pub reaped: std::io::Result<Reaped>,
    /// Set when the guard stopped the run.
    pub halted: Option<Halt>,
    /// Set when the run breached its memory limit (the kernel OOM-killed in its cell).
    pub oom: Option<OomKill>,
    readers: Vec<JoinHandle<()>>,
    pgid_file: Option<PathBuf>,
}

impl Running {
    /// Waits until the leader exits, or until `guard` halts the attempt: then SIGTERM to the
    /// group and SIGKILL once `grace` is over. Either way the rest of the group, and everything
    /// else in the run's cell, is SIGKILLed and the cell removed.
    pub async fn wait(mut self, guard: &mut Guard<'_>, grace: Duration) -> Exited {
        let (waited, halted) = tokio::select! {
            r = &mut self.reaper => (r, None),
            h = guard.wait() => (terminate(self.pgid, grace, &mut self.reaper).await, Some(h)),
        };
        // Whatever the run left behind in its group goes too.
        let _ = killpg(self.pgid, Signal::SIGKILL);
        let cell = self.cell;
        let oom = tokio::task::spawn_blocking(move || {
            cell.kill_all();
            let oom = cell.oom_kill();
            cell.remove();
            oom
        })
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ending a run's cell failed");
            None
        });
        Exited {
            reaped: waited.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            halted,
            oom,
            readers: self.readers,
            pgid_file: self.pgid_file,
        }
    }
}

impl Exited {
    /// Lets the output readers catch up (up to [`READER_DRAIN`] each), then removes the
    /// group's `.pgid` file.
    pub async fn drain(&mut self) {
        for r in self.readers.drain(..) {
            let _ = tokio::time::timeout(READER_DRAIN, r).await;
        }
        if let Some(f) = self.pgid_file.take() {
            let _ = tokio::fs::remove_file(f).await;
        }
    }
}

/// Blocks until `pid` exits and reaps it with `wait4`, which gives the resource usage of the
/// child and of the descendants it waited for.
fn wait_rusage(pid: libc::pid_t) -> std::io::Result<Reaped> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero `rusage` is a valid value (plain integers and timevals).
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live, writable locals of the right types.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            return Ok(Reaped {
                status: ExitStatus::from_raw(status),
                cpu_s: secs(ru.ru_utime) + secs(ru.ru_stime),
                // Linux reports ru_maxrss in KiB.
                max_rss_bytes: u64::try_from(ru.ru_maxrss).unwrap_or(0) * 1024,
                ended: Instant::now(),
            });
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Waits for the reaper after SIGTERM to the group; SIGKILL once `grace` is over.
async fn terminate(
    pgid: Pid,
    grace: Duration,
    waiter: &mut JoinHandle<std::io::Result<Reaped>>,
) -> Result<std::io::Result<Reaped>, tokio::task::JoinError> {
    let _ = killpg(pgid, Signal::SIGTERM);
    match tokio::time::timeout(grace, &mut *waiter).await {
        Ok(r) => r,
        Err(_) => {
            let _ = killpg(pgid, Signal::SIGKILL);
            waiter.await
        }
    }
}

/// A pipe of a run being read: its stream's name and redactor.
type Pipe = (
    std::fs::File,
    &'static str,
    msfleet_proto::secrets::Redactor,
);

/// Sends what the pipes yield as log chunks of their stream, showing each to `hook` first. The
/// job's secret values are replaced by `[redacted]` on the way, also when a read ends inside
/// one: each stream's redactor keeps back a tail that could begin a secret until the next read
/// (or the end). Runs on a blocking thread; `rt` is the runtime the log budget's waits run on.
///
/// The pipes are read in the order they got data (epoll's ready list), as reading each write
/// at once would. The first pipe (stdout: pytest's progress, a character per test) is paced:
/// after a read that emptied it, it rests [`READ_PACE`] out of the epoll set (a full read is
/// followed at once); when another pipe gets data meanwhile, what the resting one holds came
/// first and is read first.
fn pump(
    pipes: Vec<(std::fs::File, &'static str)>,
    tx: Updates,
    hook: Option<OutputHook>,
    rt: tokio::runtime::Handle,
) {
    let mut open: Vec<Option<Pipe>> = pipes
        .into_iter()
        .map(|(f, stream)| Some((f, stream, tx.redactor())))
        .collect();
    let ep = match Epoll::new(&open) {
        Ok(ep) => ep,
        Err(e) => {
            // Out of descriptors, say: each pipe on a thread of its own, unpaced.
            tracing::warn!(error = %e, "cannot poll the run's output; reading it unpaced");
            let (tx, hook, rt) = (&tx, &hook, &rt);
            std::thread::scope(|threads| {
                for p in open.iter_mut().flatten() {
                    threads.spawn(move || {
                        let mut buf = vec![0u8; msfleet_proto::MAX_LOG_CHUNK];
                        while !read_once(p, tx, hook, rt, &mut buf).0 {}
                    });
                }
            });
            return;
        }
    };
    let mut buf = vec![0u8; msfleet_proto::MAX_LOG_CHUNK];
    // Until when the first pipe rests.
    let mut rest: Option<Instant> = None;
    while open.iter().any(Option::is_some) {
        let timeout = rest.map_or(-1, |t| {
            let left = t.saturating_duration_since(Instant::now()).as_millis() + 1;
            libc::c_int::try_from(left).unwrap_or(libc::c_int::MAX)
        });
        let mut order = match ep.wait(timeout) {
            Ok(order) => order,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => {
                std::thread::sleep(READ_PACE);
                continue;
            }
        };
        if rest.take().is_some() {
            // The rest is over, or another pipe got data: what the first holds came first.
            if let Some((f, _, _)) = &open[0] {
                let _ = ep.ctl(libc::EPOLL_CTL_MOD, f, 0, libc::EPOLLIN as u32);
                if !order.contains(&0) && has_data(f) {
                    order.insert(0, 0);
                }
            }
        }
        for i in order {
            let Some(p) = open[i].as_mut() else { continue };
            let (ended, full) = read_once(p, &tx, &hook, &rt, &mut buf);
            if ended {
                // Closing it takes it out of the epoll set.
                open[i] = None;
            } else if i == 0 && !full && rest.is_none() {
                rest = Some(Instant::now() + READ_PACE);
                // Only its end (EPOLLHUP) is reported while it rests.
                let _ = ep.ctl(libc::EPOLL_CTL_MOD, &p.0, 0, 0);
            }
        }
    }
}

/// Reads `p` once and sends what it gave. Returns whether the pipe ended and whether the
/// read filled `buf` (more may be waiting).
fn read_once(
    p: &mut Pipe,
    tx: &Updates,
    hook: &Option<OutputHook>,
    rt: &tokio::runtime::Handle,
    buf: &mut [u8],
) -> (bool, bool) {
    let (f, stream, redactor) = p;
    let (data, ended, full) = loop {
        match f.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(0) | Err(_) => break (redactor.finish(), true, false),
            Ok(n) => break (redactor.push(&buf[..n]), false, n == buf.len()),
        }
    };
    // Redaction can make a chunk longer than the limit. Each chunk waits
    // for room in the attempt's log budget (the test blocks on its pipe).
    for piece in data.chunks(msfleet_proto::MAX_LOG_CHUNK) {
        if let Some(h) = hook {
            h(stream, piece);
        }
        rt.block_on(tx.send_log(LogChunk {
            stream: (*stream).into(),
            data: piece.to_vec(),
        }));
    }
    (ended, full)
}

/// An epoll set of a run's pipes, level-triggered, each known by its index.
struct Epoll(OwnedFd);

impl Epoll {
    fn new(pipes: &[Option<Pipe>]) -> std::io::Result<Epoll> {
        use std::os::fd::FromRawFd;
        // SAFETY: a plain system call; it returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new, open descriptor that nothing else owns.
        let ep = Epoll(unsafe { OwnedFd::from_raw_fd(fd) });
        for (i, p) in pipes.iter().enumerate() {
            if let Some((f, _, _)) = p {
                ep.ctl(libc::EPOLL_CTL_ADD, f, i, libc::EPOLLIN as u32)?;
            }
        }
        Ok(ep)
    }

    fn ctl(
        &self,
        op: libc::c_int,
        f: &std::fs::File,
        i: usize,
        events: u32,
    ) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut ev = libc::epoll_event {
            events,
            u64: i as u64,
        };
        // SAFETY: both descriptors are open and `ev` is a live event struct.
        let r = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, f.as_raw_fd(), &mut ev) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The indices of the pipes with data (or at their end), in the order they got it.
    fn wait(&self, timeout_ms: libc::c_int) -> std::io::Result<Vec<usize>> {
        use std::os::fd::AsRawFd;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: `events` is live and writable for the length passed.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(events[..n as usize]
            .iter()
            .map(|e| e.u64 as usize)
            .collect())
    }
}

/// Whether a read of `f` would not block (data, or its end).
fn has_data(f: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live, writable pollfd.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
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
        if kill_recorded(&path) {
            tracing::warn!(
                file = %path.display(),
                "killed a test process group left by a previous agent"
            );
            killed += 1;
        }
    }
    killed
}

/// Kills the process group that the attempt of `slot` recorded (`run/<slot>.pgid`), if it is
/// still there and ours: what a runner that died without stopping its run left behind.
pub fn kill_attempt_group(work_dir: &Path, slot: &str) -> bool {
    kill_recorded(&work_dir.join("run").join(format!("{slot}.pgid")))
}

/// Kills the group a `.pgid` file names when it is certainly ours (see [`reap_orphans`]) and
/// removes the file and the marker path; true when a group was killed.
fn kill_recorded(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let mut lines = text.lines();
    let pgid = lines.next().and_then(|l| l.trim().parse::<i32>().ok());
    let sock = lines.next().unwrap_or("").to_string();
    let mut killed = false;
    if let Some(pg) = pgid.filter(|p| *p > 1) {
        let leader = Path::new("/proc").join(pg.to_string());
        let ours = if leader.exists() {
            let markers = MARKER_VARS.map(|var| format!("{var}={sock}"));
            std::fs::read(leader.join("environ"))
                .map(|env| {
                    env.split(|b| *b == 0)
                        .any(|kv| markers.iter().any(|m| kv == m.as_bytes()))
                })
                .unwrap_or(false)
        } else {
            true
        };
        killed = ours && killpg(Pid::from_raw(pg), Signal::SIGKILL).is_ok();
    }
    let _ = std::fs::remove_file(path);
    if !sock.is_empty() {
        let _ = std::fs::remove_file(sock);
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both streams' output comes in the order it was written, through stdout's pacing:
    /// what stderr writes while stdout rests goes after what stdout held then, and before
    /// what stdout writes later.
    #[tokio::test]
    async fn both_streams_keep_their_order_through_the_pacing() {
        use msfleet_proto::task_update;
        let (utx, mut urx) = tokio::sync::mpsc::unbounded_channel();
        let tx = Updates::new(("1".into(), 1), utx);
        let mut cmd = std::process::Command::new("sh");
        cmd.args([
            "-c",
            "printf a; sleep 0.001; printf b; printf c >&2; sleep 0.05; \
             printf d >&2; printf e; sleep 0.05; printf f; printf g >&2",
        ]);
        let group = ProcessGroup::spawn(&mut cmd, "pump-order", None).unwrap();
        let (_stop, mut stop) = tokio::sync::watch::channel(None);
        let mut guard = Guard::new(
            tokio::time::Instant::now() + Duration::from_secs(30),
            &mut stop,
        );
        let mut exited = group
            .start(&tx, None)
            .wait(&mut guard, Duration::from_secs(1))
            .await;
        exited.drain().await;
        drop(tx);
        let mut text = String::new();
        while let Some((_, kind)) = urx.recv().await {
            if let task_update::Kind::Log(c) = kind {
                text.push_str(&String::from_utf8_lossy(&c.data));
            }
        }
        assert_eq!(text, "abcdefg");
    }

    /// What is written while the reader waits after a short read comes in one
    /// read, no sooner than the pace; a full read is followed at once.
    #[test]
    fn a_paced_reader_reads_what_came_meanwhile_together() {
        use std::io::Write;
        let (mut w, r) = std::os::unix::net::UnixStream::pair().unwrap();
        let pace = Duration::from_millis(300);
        let mut r = PacedReader::new(r, pace);
        let mut buf = [0u8; 16];
        w.write_all(b"a").unwrap();
        let t = Instant::now();
        assert_eq!(r.read(&mut buf).unwrap(), 1, "the first read is not paced");
        assert!(t.elapsed() < pace);
        let writer = std::thread::spawn(move || {
            w.write_all(b"b").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            w.write_all(b"c").unwrap();
            w
        });
        let n = r.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"bc");
        assert!(t.elapsed() >= pace);
        let mut w = writer.join().unwrap();
        w.write_all(&[b'x'; 17]).unwrap();
        assert_eq!(r.read(&mut buf).unwrap(), 16, "after the pace");
        let t = Instant::now();
        assert_eq!(
            r.read(&mut buf).unwrap(),
            1,
            "a full read is followed at once"
        );
        assert!(t.elapsed() < pace);
        drop(w);
        assert_eq!(r.read(&mut buf).unwrap(), 0);
    }

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

    #[test]
    fn orphaned_benchmark_runs_are_reaped_by_their_metrics_marker() {
        let work = tempfile::tempdir().unwrap();
        let run = work.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        let metrics = run.join("9-1-bench").join("metrics-0.json");
        let mut child = std::process::Command::new("sleep")
            .arg("300")
            .env("MSFLEET_METRICS", &metrics)
            .process_group(0)
            .spawn()
            .unwrap();
        std::fs::write(
            run.join("9-1.pgid"),
            format!("{}\n{}\n", child.id(), metrics.display()),
        )
        .unwrap();
        // Right after spawn the new program's environment may not be readable yet.
        let environ = format!("/proc/{}/environ", child.id());
        for _ in 0..100 {
            let env = std::fs::read(&environ).unwrap_or_default();
            if env.windows(15).any(|w| w == b"MSFLEET_METRICS") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(reap_orphans(work.path()), 1);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}
