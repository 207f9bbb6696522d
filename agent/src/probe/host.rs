//! Host facts: CPU, memory, disk, OS and the Python/pytest the agent will run tests with.
//!
//! Everything is read from `/proc`, `statvfs` and one short Python run; each fact that cannot be
//! learned is left empty or zero rather than failing the probe.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::run_with_timeout;

/// How long the Python/pytest version check may take (a cold pytest import can be slow).
pub const PYTHON_TIMEOUT: Duration = Duration::from_secs(30);

/// The Python snippet that prints the interpreter version, then the pytest version.
const PYTHON_VERSION_SCRIPT: &str =
    "import sys; print(sys.version.split()[0]); import pytest; print(pytest.__version__)";

/// Facts about the machine itself, independent of accelerators.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostFacts {
    /// Host name (may change; never part of the hardware profile).
    pub hostname: String,
    /// Operating system, as `std::env::consts::OS` (`linux`).
    pub os: String,
    /// CPU architecture, as `std::env::consts::ARCH` (`x86_64`, `aarch64`).
    pub arch: String,
    /// CPU model, e.g. `Intel(R) Xeon(R) Platinum 8480+`, or `HiSilicon Kunpeng-920` on arm64.
    pub cpu_model: String,
    /// CPUs this process may use (respects affinity and cgroup limits).
    pub cores: u32,
    /// Installed memory in MiB (`MemTotal`).
    pub memory_mb: u64,
    /// Space available to unprivileged users on the work directory's file system, in MiB.
    pub disk_free_mb: u64,
    /// The Python interpreter tests run with, as configured.
    pub python: String,
    /// Its version (`3.11.4`); empty when it could not be run.
    pub python_version: String,
    /// The pytest version it imports (`8.3.2`); empty when pytest is missing.
    pub pytest_version: String,
}

/// Probes the host. `work_dir` is where tests will run (for free disk space) and `python` the
/// interpreter that will run them. Never fails.
pub fn probe_host(work_dir: &Path, python: &Path) -> HostFacts {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| parse_cpu_model(&t))
        .unwrap_or_default();
    let memory_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_mem_total_mb(&t))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .ok()
        .and_then(|n| u32::try_from(n.get()).ok())
        .unwrap_or(1);
    let (python_version, pytest_version) = python_versions(python);
    HostFacts {
        hostname: hostname(),
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        cpu_model,
        cores,
        memory_mb,
        disk_free_mb: disk_free_mb(work_dir),
        python: python.display().to_string(),
        python_version,
        pytest_version,
    }
}

/// The CPU model from `/proc/cpuinfo` text: `model name` on x86; on arm64, which prints no
/// model name, a name derived from `CPU implementer`/`CPU part` (e.g. Kunpeng 920); otherwise
/// `Model`, `Hardware` or `cpu` (POWER). `None` when nothing usable is present.
pub fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            let value = value.trim();
            (key.trim().eq_ignore_ascii_case(name) && !value.is_empty()).then_some(value)
        })
    };
    if let Some(model) = field("model name") {
        return Some(model.to_string());
    }
    if let (Some(implementer), Some(part)) = (field("CPU implementer"), field("CPU part")) {
        return Some(arm_cpu_name(implementer, part));
    }
    ["Model", "Hardware", "cpu"]
        .iter()
        .find_map(|name| field(name))
        .map(str::to_string)
}

/// Names an arm64 core from its implementer and part ids as printed in `/proc/cpuinfo`
/// (`0x48`, `0xd01`), for the parts seen on accelerator hosts; others are named by their ids.
fn arm_cpu_name(implementer: &str, part: &str) -> String {
    let implementer = implementer.to_ascii_lowercase();
    let part = part.to_ascii_lowercase();
    let known = match (implementer.as_str(), part.as_str()) {
        ("0x48", "0xd01") => Some("HiSilicon Kunpeng-920"),
        ("0x48", "0xd02") => Some("HiSilicon TaiShan-v120"),
        ("0x41", "0xd08") => Some("ARM Cortex-A72"),
        ("0x41", "0xd0c") => Some("ARM Neoverse-N1"),
        ("0x41", "0xd40") => Some("ARM Neoverse-V1"),
        ("0x41", "0xd49") => Some("ARM Neoverse-N2"),
        ("0x41", "0xd4f") => Some("ARM Neoverse-V2"),
        ("0xc0", "0xac3") => Some("Ampere-1"),
        _ => None,
    };
    match known {
        Some(name) => name.to_string(),
        None => format!("ARM implementer {implementer} part {part}"),
    }
}

/// `MemTotal` from `/proc/meminfo` text, converted from kB to MiB.
pub fn parse_mem_total_mb(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let mut words = rest.split_whitespace();
        let value: u64 = words.next()?.parse().ok()?;
        match words.next() {
            Some(unit) if unit.eq_ignore_ascii_case("kb") => Some(value / 1024),
            None => Some(value / (1024 * 1024)),
            Some(_) => None,
        }
    })
}

/// Reads the output of [`PYTHON_VERSION_SCRIPT`]: the Python version on the first line and the
/// pytest version on the second. Lines that do not look like versions give empty strings.
pub fn parse_python_versions(stdout: &str) -> (String, String) {
    let mut lines = stdout.lines().map(str::trim);
    let version = |line: Option<&str>| {
        line.filter(|l| l.starts_with(|c: char| c.is_ascii_digit()) && !l.contains(' '))
            .unwrap_or_default()
            .to_string()
    };
    let python = version(lines.next());
    let pytest = if python.is_empty() {
        String::new()
    } else {
        version(lines.next())
    };
    (python, pytest)
}

/// Runs `python` to learn its version and its pytest's; empty strings when it cannot.
fn python_versions(python: &Path) -> (String, String) {
    let mut cmd = Command::new(python);
    cmd.args(["-c", PYTHON_VERSION_SCRIPT]);
    match run_with_timeout(&mut cmd, PYTHON_TIMEOUT) {
        Ok(out) => {
            if !out.status.success() {
                debug!(python = %python.display(), status = %out.status,
                       stderr = %out.stderr.trim(), "python/pytest version check failed");
            }
            parse_python_versions(&out.stdout)
        }
        Err(e) => {
            warn!(python = %python.display(), error = %e, "could not run python");
            (String::new(), String::new())
        }
    }
}

/// The kernel's host name, or `$HOSTNAME`, or empty.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_default()
}

/// Free space for unprivileged users on the file system holding `path` (or its nearest existing
/// ancestor, so a work directory not created yet still gives an answer), in MiB; 0 on failure.
fn disk_free_mb(path: &Path) -> u64 {
    for dir in path.ancestors().filter(|d| !d.as_os_str().is_empty()) {
        match nix::sys::statvfs::statvfs(dir) {
            Ok(stat) => {
                let bytes = u128::from(stat.blocks_available()) * u128::from(stat.fragment_size());
                return u64::try_from(bytes / (1024 * 1024)).unwrap_or(u64::MAX);
            }
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => {
                warn!(path = %dir.display(), error = %e, "statvfs failed");
                return 0;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86_CPUINFO: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n\
        model\t\t: 143\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nstepping\t: 8\n\n\
        processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n";

    const KUNPENG_CPUINFO: &str = "processor\t: 0\nBogoMIPS\t: 200.00\n\
        Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid\n\
        CPU implementer\t: 0x48\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: 0xd01\n\
        CPU revision\t: 0\n";

    #[test]
    fn cpu_model_x86() {
        assert_eq!(
            parse_cpu_model(X86_CPUINFO).as_deref(),
            Some("Intel(R) Xeon(R) Platinum 8480+")
        );
    }

    #[test]
    fn cpu_model_arm64() {
        assert_eq!(
            parse_cpu_model(KUNPENG_CPUINFO).as_deref(),
            Some("HiSilicon Kunpeng-920")
        );
        let unknown = "CPU implementer\t: 0x61\nCPU part\t: 0x022\n";
        assert_eq!(
            parse_cpu_model(unknown).as_deref(),
            Some("ARM implementer 0x61 part 0x022")
        );
    }

    #[test]
    fn cpu_model_fallbacks_and_garbage() {
        assert_eq!(
            parse_cpu_model("processor : 0\ncpu : POWER9 (raw), altivec supported\n").as_deref(),
            Some("POWER9 (raw), altivec supported")
        );
        assert_eq!(parse_cpu_model(""), None);
        assert_eq!(parse_cpu_model("model name\t:   \n::::\n"), None);
    }

    #[test]
    fn mem_total() {
        let meminfo = "MemTotal:       131891264 kB\nMemFree:        1234 kB\n";
        assert_eq!(parse_mem_total_mb(meminfo), Some(128_800));
        assert_eq!(parse_mem_total_mb("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total_mb("MemTotal: lots kB\n"), None);
        assert_eq!(parse_mem_total_mb(""), None);
    }

    #[test]
    fn python_versions_output() {
        assert_eq!(
            parse_python_versions("3.11.4\n8.3.2\n"),
            ("3.11.4".to_string(), "8.3.2".to_string())
        );
        // pytest missing: the import fails after the first line was printed.
        assert_eq!(
            parse_python_versions("3.8.10\n"),
            ("3.8.10".to_string(), String::new())
        );
        assert_eq!(
            parse_python_versions("Traceback (most recent call last):\n"),
            (String::new(), String::new())
        );
        assert_eq!(parse_python_versions(""), (String::new(), String::new()));
    }

    #[test]
    fn probe_this_host() {
        let facts = probe_host(Path::new("/tmp/does/not/exist/yet"), Path::new("python3"));
        assert_eq!(facts.os, std::env::consts::OS);
        assert_eq!(facts.arch, std::env::consts::ARCH);
        assert!(facts.cores >= 1);
        assert!(facts.memory_mb > 0);
        assert!(facts.disk_free_mb > 0, "nearest existing ancestor is used");
        assert!(!facts.hostname.is_empty());
        assert_eq!(facts.python, "python3");
    }

    #[test]
    fn probe_with_missing_python() {
        let facts = probe_host(Path::new("/"), Path::new("/nonexistent/python"));
        assert_eq!(facts.python_version, "");
        assert_eq!(facts.pytest_version, "");
    }
}
