//! NVIDIA GPU discovery through NVML (`nvml-wrapper`, which loads `libnvidia-ml.so.1` at run
//! time).
//!
//! A host without the driver is normal: the probe then returns no GPUs and a note. Each
//! per-device query is independent; one that fails leaves its field empty or zero.

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, RetirementCause};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{cuda_driver_version_major, cuda_driver_version_minor, Device, Nvml};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

/// `MigMode::current` value meaning "enabled" (`NVML_DEVICE_MIG_ENABLE` in `nvml.h`).
const NVML_DEVICE_MIG_ENABLE: u32 = 1;

/// One NVIDIA GPU as NVML describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuFacts {
    /// NVML device index (the order `nvidia-smi` uses).
    pub index: u32,
    /// Product name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// `GPU-...` UUID.
    pub uuid: String,
    /// PCI bus id, e.g. `00000000:1B:00.0`.
    pub pci_bus_id: String,
    /// Total framebuffer memory in MiB.
    pub memory_mb: u64,
    /// Kernel driver version, e.g. `550.54.15`.
    pub driver_version: String,
    /// Highest CUDA version the driver supports, `major.minor` (e.g. `12.4`).
    pub cuda_driver_version: String,
    /// Compute capability, `major.minor` (e.g. `9.0`).
    pub compute_capability: String,
    /// MIG mode: `enabled`, `disabled` or `unsupported`; empty when the query failed;
    /// `instance` for a MIG instance (listed in place of its GPU, which shares its `index`).
    pub mig_mode: String,
    /// Enforced power limit in watts; 0 when unknown.
    pub power_limit_w: u32,
    /// `ok`, a comma-separated list of problems (`uncorrected ECC errors (3)`,
    /// `page retirement pending`, `60 retired pages (limit 60)`, `throttled:
    /// hw_thermal_slowdown`), or `unknown` when nothing could be checked.
    pub health: String,
    /// The processes on it: NVML's running compute and graphics processes (a
    /// recorded inventory lists them as `{"pid": 4242, "name": "python3"}`).
    pub processes: Vec<GpuProcess>,
}

/// A process holding a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuProcess {
    /// Its process id.
    pub pid: u32,
    /// Its name (NVML's `sys_process_name`), empty when unknown.
    pub name: String,
}

/// Result of [`probe_gpus`]: the GPUs found, and a remark when NVML was unavailable or some
/// devices could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GpuProbe {
    /// GPUs that could be opened, by index.
    pub gpus: Vec<GpuFacts>,
    /// Why there are fewer GPUs than one might expect, in words.
    pub note: Option<String>,
}

/// Where the agent's GPU inventory comes from: NVML on a real host; in debug
/// builds a test can put a recorded inventory in its place.
pub trait GpuInventory {
    /// The GPUs now (every periodic probe asks again, so health changes show).
    fn probe(&self) -> GpuProbe;
}

/// The real inventory: NVML.
pub struct NvmlInventory;

impl GpuInventory for NvmlInventory {
    fn probe(&self) -> GpuProbe {
        probe_nvml()
    }
}

/// The agent's environment variable naming a recorded GPU inventory. **Test
/// only**: read in debug builds alone (release builds always ask NVML), so
/// the scheduling of GPUs and the environment each attempt sees are tested
/// end to end on machines without a GPU.
pub const RECORDED_GPUS_VAR: &str = "MSAGENT_TEST_GPU_INVENTORY";

/// A recorded inventory: a JSON array of [`GpuFacts`] (missing fields are
/// empty; `processes` lists the pids holding each GPU), read again at every
/// probe. **Test only** (debug builds).
pub struct RecordedInventory(pub std::path::PathBuf);

impl GpuInventory for RecordedInventory {
    fn probe(&self) -> GpuProbe {
        let read = std::fs::read_to_string(&self.0)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Vec<GpuFacts>>(&t).map_err(|e| e.to_string()));
        match read {
            Ok(gpus) => GpuProbe {
                gpus,
                note: Some(format!(
                    "GPUs from the recorded inventory {} (test only)",
                    self.0.display()
                )),
            },
            Err(e) => GpuProbe {
                gpus: Vec::new(),
                note: Some(format!(
                    "recorded GPU inventory {} unreadable ({e}): 0 GPUs",
                    self.0.display()
                )),
            },
        }
    }
}

/// The inventory this agent probes: NVML, or in a debug build with
/// [`RECORDED_GPUS_VAR`] set, the recorded one.
pub fn inventory() -> Box<dyn GpuInventory> {
    #[cfg(debug_assertions)]
    if let Some(path) = std::env::var_os(RECORDED_GPUS_VAR) {
        return Box::new(RecordedInventory(path.into()));
    }
    Box::new(NvmlInventory)
}

/// Lists the GPUs of [`inventory`]. Never fails and never panics.
pub fn probe_gpus() -> GpuProbe {
    inventory().probe()
}

/// Lists the NVIDIA GPUs. Never fails and never panics: without a driver it returns no GPUs and
/// a note such as `NVML unavailable (libnvidia-ml.so.1 not found): 0 GPUs`.
fn probe_nvml() -> GpuProbe {
    let nvml = match Nvml::init() {
        Ok(nvml) => nvml,
        Err(e) => {
            let note = format!("NVML unavailable ({}): 0 GPUs", describe_init_error(&e));
            debug!(error = %e, "{note}");
            return GpuProbe {
                gpus: Vec::new(),
                note: Some(note),
            };
        }
    };
    let driver_version = nvml.sys_driver_version().unwrap_or_else(|e| {
        warn!(error = %e, "NVML: driver version unavailable");
        String::new()
    });
    let cuda_driver_version = nvml
        .sys_cuda_driver_version()
        .map(|v| {
            format!(
                "{}.{}",
                cuda_driver_version_major(v),
                cuda_driver_version_minor(v)
            )
        })
        .unwrap_or_else(|e| {
            warn!(error = %e, "NVML: CUDA driver version unavailable");
            String::new()
        });
    let count = match nvml.device_count() {
        Ok(count) => count,
        Err(e) => {
            return GpuProbe {
                gpus: Vec::new(),
                note: Some(format!("NVML could not count GPUs ({e}): 0 GPUs")),
            }
        }
    };

    let mut gpus = Vec::new();
    let mut problems = Vec::new();
    for index in 0..count {
        match nvml.device_by_index(index) {
            Ok(device) => {
                let mut facts = device_facts(index, &device, &driver_version, &cuda_driver_version);
                facts.processes = processes(&nvml, &device);
                if facts.mig_mode == "enabled" {
                    gpus.extend(mig_instances(&nvml, &device, facts));
                } else {
                    gpus.push(facts);
                }
            }
            Err(e) => {
                warn!(index, error = %e, "NVML: cannot open GPU");
                problems.push(format!("GPU {index} could not be opened ({e})"));
            }
        }
    }
    GpuProbe {
        gpus,
        note: (!problems.is_empty()).then(|| problems.join("; ")),
    }
}

/// The MIG instances of a GPU in MIG mode, each a device of its own (its
/// `MIG-...` UUID is what CUDA_VISIBLE_DEVICES names; its memory is its
/// slice; health and the rest are the parent's, `mig_mode` is `instance`).
/// A GPU in MIG mode without instances cannot run CUDA work: it is listed
/// once, unhealthy, so that it is withheld and says why.
fn mig_instances(nvml: &Nvml, parent: &Device, facts: GpuFacts) -> Vec<GpuFacts> {
    let count = parent.mig_device_count().unwrap_or_else(|e| {
        debug!(index = facts.index, error = %e, "NVML: MIG device count unavailable");
        0
    });
    let mut out = Vec::new();
    for i in 0..count {
        // Slots without an instance answer NotFound.
        let Ok(mig) = parent.mig_device_by_index(i) else {
            continue;
        };
        let Ok(uuid) = mig.uuid() else { continue };
        out.push(GpuFacts {
            name: mig.name().unwrap_or_else(|_| facts.name.clone()),
            uuid,
            memory_mb: mig.memory_info().map_or(0, |m| m.total / (1024 * 1024)),
            mig_mode: "instance".into(),
            power_limit_w: 0,
            processes: processes(nvml, &mig),
            ..facts.clone()
        });
    }
    if out.is_empty() {
        let mut whole = facts;
        whole.health = "MIG mode enabled but no MIG instance configured".into();
        out.push(whole);
    }
    out
}

/// The processes on `device`: its running compute and graphics processes
/// (a process doing both is listed once). A query that fails lists none.
fn processes(nvml: &Nvml, device: &Device) -> Vec<GpuProcess> {
    let mut pids: Vec<u32> = Vec::new();
    for listed in [
        device.running_compute_processes(),
        device.running_graphics_processes(),
    ] {
        match listed {
            Ok(list) => pids.extend(list.iter().map(|p| p.pid)),
            Err(NvmlError::NotSupported) => {}
            Err(e) => debug!(error = %e, "NVML: running processes unavailable"),
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter()
        .map(|pid| GpuProcess {
            pid,
            name: nvml.sys_process_name(pid, 64).unwrap_or_default(),
        })
        .collect()
}

/// Says in words why `Nvml::init` failed.
fn describe_init_error(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(_) => "libnvidia-ml.so.1 not found".to_string(),
        NvmlError::DriverNotLoaded => "NVIDIA driver not loaded".to_string(),
        NvmlError::NoPermission => "no permission to talk to the NVIDIA driver".to_string(),
        NvmlError::LibRmVersionMismatch => {
            "NVML library and kernel driver versions differ; reboot or reload the driver"
                .to_string()
        }
        other => other.to_string(),
    }
}

/// Reads one device; each query that fails leaves its field empty.
fn device_facts(index: u32, device: &Device, driver: &str, cuda: &str) -> GpuFacts {
    let field = |what: &str, e: NvmlError| {
        if !matches!(e, NvmlError::NotSupported) {
            debug!(index, error = %e, "NVML: {what} unavailable");
        }
    };
    let name = device.name().unwrap_or_else(|e| {
        field("name", e);
        String::new()
    });
    let uuid = device.uuid().unwrap_or_else(|e| {
        field("uuid", e);
        String::new()
    });
    let pci_bus_id = device.pci_info().map(|p| p.bus_id).unwrap_or_else(|e| {
        field("PCI info", e);
        String::new()
    });
    let memory_mb = device
        .memory_info()
        .map(|m| m.total / (1024 * 1024))
        .unwrap_or_else(|e| {
            field("memory info", e);
            0
        });
    let compute_capability = device
        .cuda_compute_capability()
        .map(|c| format!("{}.{}", c.major, c.minor))
        .unwrap_or_else(|e| {
            field("compute capability", e);
            String::new()
        });
    let mig_mode = match device.mig_mode() {
        Ok(mode) if mode.current == NVML_DEVICE_MIG_ENABLE => "enabled",
        Ok(_) => "disabled",
        Err(NvmlError::NotSupported) => "unsupported",
        Err(e) => {
            field("MIG mode", e);
            ""
        }
    }
    .to_string();
    let power_limit_w = device
        .enforced_power_limit()
        .or_else(|_| device.power_management_limit())
        .map(|mw| mw / 1000)
        .unwrap_or_else(|e| {
            field("power limit", e);
            0
        });
    GpuFacts {
        index,
        name,
        uuid,
        pci_bus_id,
        memory_mb,
        driver_version: driver.to_string(),
        cuda_driver_version: cuda.to_string(),
        compute_capability,
        mig_mode,
        power_limit_w,
        health: health(device),
        processes: Vec::new(),
    }
}

/// Retired pages at which NVIDIA advises replacing the board (its RMA threshold).
pub const RETIRED_PAGES_LIMIT: usize = 60;

/// Throttle reasons that mean the board is unwell rather than busy: hardware
/// slowdown (thermal, power brake) and software thermal slowdown. Power-cap,
/// idle and application-clock throttling are normal under load.
const UNHEALTHY_THROTTLE: ThrottleReasons = ThrottleReasons::HW_SLOWDOWN
    .union(ThrottleReasons::HW_THERMAL_SLOWDOWN)
    .union(ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN)
    .union(ThrottleReasons::SW_THERMAL_SLOWDOWN);

/// Names of the performance-relevant throttle reasons in `bits`.
pub fn throttle_names(bits: u64) -> Vec<&'static str> {
    let t = ThrottleReasons::from_bits_truncate(bits);
    [
        (ThrottleReasons::SW_POWER_CAP, "sw_power_cap"),
        (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
        (ThrottleReasons::SYNC_BOOST, "sync_boost"),
        (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
        (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
        (
            ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
            "hw_power_brake_slowdown",
        ),
    ]
    .into_iter()
    .filter(|(flag, _)| t.contains(*flag))
    .map(|(_, name)| name)
    .collect()
}

/// Summarises the health checks NVML can answer without an event loop: volatile uncorrected
/// ECC errors, pending and total retired pages, and throttling that means trouble.
fn health(device: &Device) -> String {
    let ecc = device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile);
    let retirement = device.are_pages_pending_retired();
    let retired = [
        RetirementCause::MultipleSingleBitEccErrors,
        RetirementCause::DoubleBitEccError,
    ]
    .into_iter()
    .map(|cause| device.retired_pages(cause).map(|p| p.len()))
    .try_fold(0usize, |sum, n| n.map(|n| sum + n));
    let throttle = device.current_throttle_reasons().map(|t| t.bits());
    health_summary(ecc, retirement, retired, throttle)
}

/// The pure part of [`health`], separated for testing.
fn health_summary(
    ecc: Result<u64, NvmlError>,
    pending_retirement: Result<bool, NvmlError>,
    retired_pages: Result<usize, NvmlError>,
    throttle: Result<u64, NvmlError>,
) -> String {
    let mut problems = Vec::new();
    // Whether some check gave an answer (NotSupported counts: there is nothing to worry about).
    let mut checked = false;
    match ecc {
        Ok(0) | Err(NvmlError::NotSupported) => checked = true,
        Ok(n) => problems.push(format!("uncorrected ECC errors ({n})")),
        Err(NvmlError::GpuLost) => return "GPU lost".to_string(),
        Err(_) => {}
    }
    match pending_retirement {
        Ok(false) | Err(NvmlError::NotSupported) => checked = true,
        Ok(true) => problems.push("page retirement pending".to_string()),
        Err(NvmlError::GpuLost) => return "GPU lost".to_string(),
        Err(_) => {}
    }
    match retired_pages {
        Ok(n) if n >= RETIRED_PAGES_LIMIT => {
            problems.push(format!("{n} retired pages (limit {RETIRED_PAGES_LIMIT})"))
        }
        Ok(_) | Err(NvmlError::NotSupported) => checked = true,
        Err(NvmlError::GpuLost) => return "GPU lost".to_string(),
        Err(_) => {}
    }
    match throttle {
        Ok(bits) => {
            checked = true;
            let bad = throttle_names(bits & UNHEALTHY_THROTTLE.bits());
            if !bad.is_empty() {
                problems.push(format!("throttled: {}", bad.join(", ")));
            }
        }
        Err(NvmlError::NotSupported) => checked = true,
        Err(NvmlError::GpuLost) => return "GPU lost".to_string(),
        Err(_) => {}
    }
    if !problems.is_empty() {
        problems.join(", ")
    } else if checked {
        "ok".to_string()
    } else {
        "unknown".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test expects a machine without the NVIDIA driver (set `MSFLEET_EXPECT_GPUS=1` on a
    /// GPU machine to check the opposite).
    #[test]
    fn probe_without_driver_is_zero_gpus_and_a_note() {
        let probe = probe_gpus();
        if std::env::var_os("MSFLEET_EXPECT_GPUS").is_some() {
            assert!(!probe.gpus.is_empty(), "{:?}", probe.note);
            for gpu in &probe.gpus {
                assert!(!gpu.name.is_empty());
                assert!(gpu.memory_mb > 0);
            }
            return;
        }
        if std::path::Path::new("/dev/nvidiactl").exists() {
            eprintln!("skipping: an NVIDIA driver is present");
            return;
        }
        assert!(probe.gpus.is_empty());
        let note = probe.note.expect("a note");
        assert!(note.starts_with("NVML unavailable ("), "{note}");
        assert!(note.ends_with("): 0 GPUs"), "{note}");
    }

    #[test]
    fn a_recorded_inventory_lists_the_processes_on_each_gpu() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gpus.json");
        std::fs::write(
            &path,
            r#"[{"index": 0, "uuid": "GPU-aaa", "health": "ok",
                 "processes": [{"pid": 4242, "name": "python3"}]},
                {"index": 1, "uuid": "GPU-bbb", "health": "ok"}]"#,
        )
        .expect("write");
        let probe = RecordedInventory(path).probe();
        assert_eq!(
            probe.gpus[0].processes,
            [GpuProcess {
                pid: 4242,
                name: "python3".into()
            }]
        );
        assert!(probe.gpus[1].processes.is_empty());
    }

    #[test]
    fn health_summaries() {
        use NvmlError::{GpuLost, NotSupported, Unknown};
        let fine = || (Ok(0), Ok(0));
        let summary =
            |ecc, pending, (retired, throttle)| health_summary(ecc, pending, retired, throttle);
        assert_eq!(summary(Ok(0), Ok(false), fine()), "ok");
        assert_eq!(
            summary(
                Err(NotSupported),
                Err(NotSupported),
                (Err(NotSupported), Err(NotSupported))
            ),
            "ok"
        );
        assert_eq!(summary(Err(Unknown), Ok(false), fine()), "ok");
        assert_eq!(
            summary(Err(Unknown), Err(Unknown), (Err(Unknown), Err(Unknown))),
            "unknown"
        );
        assert_eq!(summary(Ok(0), Err(GpuLost), fine()), "GPU lost");
        assert_eq!(
            summary(Ok(3), Ok(true), fine()),
            "uncorrected ECC errors (3), page retirement pending"
        );
        // Throttling under a power cap is load; a hardware slowdown is not.
        let cap = ThrottleReasons::SW_POWER_CAP.bits();
        assert_eq!(summary(Ok(0), Ok(false), (Ok(59), Ok(cap))), "ok");
        let hot = (ThrottleReasons::HW_THERMAL_SLOWDOWN | ThrottleReasons::SW_POWER_CAP).bits();
        assert_eq!(
            summary(Ok(0), Ok(false), (Ok(60), Ok(hot))),
            "60 retired pages (limit 60), throttled: hw_thermal_slowdown"
        );
    }

    #[test]
    fn init_errors_in_words() {
        assert_eq!(
            describe_init_error(&NvmlError::DriverNotLoaded),
            "NVIDIA driver not loaded"
        );
    }
}
