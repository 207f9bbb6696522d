//! Hardware and software discovery for the agent.
//!
//! The agent reports these facts to the scheduler when it registers, and derives its hardware
//! profile key from them (see [`crate::profile`]). Every probe degrades instead of failing: a
//! machine without GPUs, NPUs, Python or pytest is still a valid agent, and what could not be
//! learned is explained in [`HardwareFacts::notes`].

pub mod gpu;
pub mod host;
pub mod npu;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use gpu::{GpuFacts, GpuProbe, GpuProcess};
pub use host::HostFacts;
pub use npu::{NpuCard, NpuProcess, NpuSmiInfo};

/// Everything the agent learned about its machine at start-up.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HardwareFacts {
    /// CPU, memory, disk, OS and Python facts.
    pub host: HostFacts,
    /// NVIDIA GPUs found through NVML (empty without a driver).
    pub gpus: Vec<GpuFacts>,
    /// Ascend NPUs found through `npu-smi` (no cards without the tool).
    pub npus: NpuSmiInfo,
    /// Installed CANN toolkit version, e.g. `8.0.RC3`.
    pub cann_version: Option<String>,
    /// Human-readable remarks about probes that found nothing or failed.
    pub notes: Vec<String>,
    /// Devices withheld because a process outlived the attempt that held
    /// them and could not be killed, one line each (`npu 2: held by pid 4242
    /// (python3) after job 17`); filled by [`crate::leftover::apply`]. Each
    /// degrades the host.
    #[serde(default)]
    pub held: Vec<String>,
}

/// Runs every probe: host facts (disk space of `work_dir`, versions of `python` and its pytest),
/// NVIDIA GPUs, Ascend NPUs through `npu_smi`, and the CANN version. Never fails.
pub fn probe_all(work_dir: &Path, python: &Path, npu_smi: &Path) -> HardwareFacts {
    let host = host::probe_host(work_dir, python);
    let mut notes = Vec::new();
    if host.python_version.is_empty() {
        notes.push(format!("{} could not be run: no Python", python.display()));
    } else if host.pytest_version.is_empty() {
        notes.push(format!("pytest is not importable by {}", python.display()));
    }

    let gpu = gpu::probe_gpus();
    notes.extend(gpu.note);

    let npus = match npu::probe_npus(npu_smi) {
        Ok(npus) => npus,
        Err(e) => {
            warn!(error = %e, "NPU probe failed");
            notes.push(format!("NPU probe failed: {e}"));
            NpuSmiInfo::default()
        }
    };
    let cann_version = npu::cann_version();

    info!(
        cpu = %host.cpu_model,
        cores = host.cores,
        memory_mb = host.memory_mb,
        gpus = gpu.gpus.len(),
        npus = npus.cards.len(),
        cann = cann_version.as_deref().unwrap_or("-"),
        "hardware probed"
    );
    HardwareFacts {
        host,
        gpus: gpu.gpus,
        npus,
        cann_version,
        notes,
        held: Vec::new(),
    }
}

/// What a finished child process printed.
#[derive(Debug)]
pub(crate) struct CommandOutput {
    /// How it exited.
    pub status: ExitStatus,
    /// Standard output, lossily decoded as UTF-8.
    pub stdout: String,
    /// Standard error, lossily decoded as UTF-8.
    pub stderr: String,
}

/// Why [`run_with_timeout`] produced no output.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    /// The process could not be started (`NotFound` when the binary does not exist).
    #[error("could not start: {0}")]
    Spawn(#[source] std::io::Error),
    /// Waiting for the process failed.
    #[error("could not wait for it: {0}")]
    Wait(#[source] std::io::Error),
    /// It ran past the limit; it and its process group were killed.
    #[error("did not finish within {0:?} and was killed")]
    Timeout(Duration),
}

/// Runs `cmd` with stdin closed and output captured, killing it (and anything it started, via
/// its own process group) if it runs longer than `timeout`.
pub(crate) fn run_with_timeout(
    cmd: &mut Command,
    timeout: Duration,
) -> Result<CommandOutput, RunError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill_group(&mut child);
                return Err(RunError::Timeout(timeout));
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                kill_group(&mut child);
                return Err(RunError::Wait(e));
            }
        }
    };
    let collect = |reader: Option<thread::JoinHandle<Vec<u8>>>| {
        reader
            .and_then(|r| r.join().ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    };
    Ok(CommandOutput {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

/// Reads a pipe to its end on a helper thread, so a chatty child cannot block on a full pipe.
fn drain<R: Read + Send + 'static>(mut pipe: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Kills the child's whole process group and reaps the child. The reader threads are left to
/// finish on their own once the pipes close.
fn kill_group(child: &mut std::process::Child) {
    match i32::try_from(child.id()) {
        Ok(pid) => {
            let group = nix::unistd::Pid::from_raw(pid);
            if let Err(e) = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL) {
                warn!(pid, error = %e, "could not kill process group");
                let _ = child.kill();
            }
        }
        Err(_) => {
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_captures_output_and_status() {
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .expect("runs");
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn run_kills_on_timeout_including_grandchildren() {
        let started = Instant::now();
        let err = run_with_timeout(
            Command::new("sh").args(["-c", "sleep 30 & sleep 30; echo never"]),
            Duration::from_millis(300),
        )
        .expect_err("times out");
        assert!(matches!(err, RunError::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn run_missing_binary_is_not_found() {
        let err = run_with_timeout(
            &mut Command::new("/nonexistent/binary"),
            Duration::from_secs(1),
        )
        .expect_err("missing");
        assert!(
            matches!(&err, RunError::Spawn(e) if e.kind() == std::io::ErrorKind::NotFound),
            "{err}"
        );
    }

    #[test]
    fn probe_all_never_fails() {
        let facts = probe_all(
            Path::new("/tmp"),
            Path::new("/nonexistent/python3"),
            Path::new("/nonexistent/npu-smi"),
        );
        assert!(facts.host.cores >= 1);
        assert!(facts.npus.cards.is_empty());
        assert!(facts
            .notes
            .iter()
            .any(|n| n.contains("/nonexistent/python3")));
    }
}
