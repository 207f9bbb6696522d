//! GPU memory and throttling of a benchmark run, sampled through NVML while it lasts.

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often NVML is sampled during a run.
const GPU_SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// What NVML showed during one run.
#[derive(Debug, Clone, Default)]
pub(super) struct GpuPeak {
    /// Peak memory of the run's processes, when any showed up on a GPU.
    pub(super) ours: Option<u64>,
    /// Throttle bits of the GPUs the run's processes used.
    pub(super) ours_throttle: u64,
    /// NVML listed processes this agent cannot see (another pid namespace): the run's own
    /// processes cannot be told apart, so the device-wide numbers stand in.
    pub(super) foreign_pids: bool,
    /// Peak rise of the devices' used memory over the start of the run.
    pub(super) device_delta: u64,
    pub(super) all_throttle: u64,
}

impl GpuPeak {
    /// `(peak memory bytes, throttle bits)`, when the run used a GPU.
    pub(super) fn metrics(&self) -> Option<(u64, u64)> {
        match self.ours {
            Some(bytes) => Some((bytes, self.ours_throttle)),
            None if self.foreign_pids && self.device_delta > 0 => {
                Some((self.device_delta, self.all_throttle))
            }
            None => None,
        }
    }
}

/// Samples NVML on a blocking thread until finished.
pub(super) struct GpuWatch {
    pub(super) stop: std::sync::mpsc::Sender<()>,
    pub(super) task: JoinHandle<GpuPeak>,
}

impl GpuWatch {
    /// Samples the GPUs whose UUID is in `uuids` (the attempt's own).
    pub(super) fn start(
        nvml: Arc<Nvml>,
        uuids: Arc<Vec<String>>,
        pgid: libc::pid_t,
        marker: String,
    ) -> GpuWatch {
        let (stop, stop_rx) = std::sync::mpsc::channel();
        let task = tokio::task::spawn_blocking(move || {
            sample_gpus(&nvml, &uuids, pgid, &marker, &stop_rx)
        });
        GpuWatch { stop, task }
    }

    pub(super) async fn finish(self) -> GpuPeak {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

fn sample_gpus(
    nvml: &Nvml,
    uuids: &[String],
    pgid: libc::pid_t,
    marker: &str,
    stop: &std::sync::mpsc::Receiver<()>,
) -> GpuPeak {
    let devices: Vec<_> = uuids
        .iter()
        .filter_map(|u| nvml.device_by_uuid(u.as_str()).ok())
        .collect();
    let used = |d: &nvml_wrapper::Device<'_>| d.memory_info().map_or(0, |m| m.used);
    let start_used: u64 = devices.iter().map(used).sum();
    let mut peak = GpuPeak::default();
    let mut members: HashMap<u32, Option<bool>> = HashMap::new();
    loop {
        let mut ours_total = 0u64;
        let mut seen_ours = false;
        let mut used_total = 0u64;
        for d in &devices {
            used_total += used(d);
            let throttle = d
                .current_throttle_reasons()
                .map_or(0, |t| t.difference(ThrottleReasons::GPU_IDLE).bits());
            peak.all_throttle |= throttle;
            let mut on_device = false;
            for p in d.running_compute_processes().unwrap_or_default() {
                match *members
                    .entry(p.pid)
                    .or_insert_with(|| belongs(p.pid, pgid, marker))
                {
                    Some(true) => {
                        on_device = true;
                        if let UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
                            ours_total += bytes;
                        }
                    }
                    Some(false) => {}
                    None => peak.foreign_pids = true,
                }
            }
            if on_device {
                seen_ours = true;
                peak.ours_throttle |= throttle;
            }
        }
        if seen_ours {
            peak.ours = Some(peak.ours.unwrap_or(0).max(ours_total));
        }
        peak.device_delta = peak.device_delta.max(used_total.saturating_sub(start_used));
        match stop.recv_timeout(GPU_SAMPLE_EVERY) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return peak,
        }
    }
}

/// Whether `pid` belongs to the run: in its process group, or carrying its environment marker
/// (a process that left the group). `None` when the pid is not visible here.
fn belongs(pid: u32, pgid: libc::pid_t, marker: &str) -> Option<bool> {
    let p = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: getpgid only reads its integer argument.
    let group = unsafe { libc::getpgid(p) };
    if group < 0 {
        return None;
    }
    if group == pgid {
        return Some(true);
    }
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    Some(env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
}

pub(super) use crate::probe::gpu::throttle_names;

/// Loads NVML for GPU metrics; `Err(why)` without a driver or without GPUs.
pub async fn load_nvml() -> Result<Arc<Nvml>, String> {
    let loaded = tokio::task::spawn_blocking(|| {
        let nvml = Nvml::init().map_err(|e| e.to_string())?;
        match nvml.device_count() {
            Ok(n) if n > 0 => Ok(nvml),
            Ok(_) => Err("no NVIDIA GPU".to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    match loaded {
        Ok(r) => r.map(Arc::new),
        Err(e) => Err(e.to_string()),
    }
}
