//! Processes left holding an attempt's devices after it ends.
//!
//! The attempt's cell is killed when it ends ([`crate::contain`]), but a
//! process started outside it (or one that escaped it) can still hold one of
//! its GPUs or NPUs, and the next job on that device would run out of memory
//! or measure the wrong numbers. So after every attempt that held devices,
//! [`sweep`] lists the processes on them (NVML's running processes,
//! `npu-smi info`'s process table), SIGKILLs each (never the agent itself,
//! never pid 1), and looks again for up to [`SWEEP_GRACE`]. A device still
//! held is **withheld**: it is kept in a process-wide table, and every probe
//! ([`apply`]) marks its `health` `held by pid 4242 (python3) after job 17`
//! (so the scheduler assigns it to no one) and degrades the host with that
//! reason (so the scheduler quarantines the agent), until a probe no longer
//! sees the process on the device. The sweep asks for a probe at once
//! ([`crate::health::probe_now`]), so the report does not wait for
//! `--probe-interval`.

use crate::attempt::AttemptSpec;
use crate::config::AgentConfig;
use crate::probe::{gpu, npu, HardwareFacts};
use msfleet_proto::devices::npu_id;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a killed process has to leave its device before the device is
/// withheld.
pub const SWEEP_GRACE: Duration = Duration::from_secs(3);
/// How often the sweep looks again within [`SWEEP_GRACE`].
const SWEEP_POLL: Duration = Duration::from_millis(250);

/// A process on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The device's id as the scheduler names it (`DeviceRef.id`: a GPU's
    /// UUID, `npu 2 chip 0`).
    pub device: String,
    /// The device in words, as health lines name it (`gpu 0`, `npu 2`).
    pub label: String,
    /// Its process id.
    pub pid: u32,
    /// Its name as the device's tool printed it.
    pub name: String,
}

/// A device withheld because of a process that outlived its attempt.
#[derive(Debug, Clone)]
struct Held {
    pid: u32,
    name: String,
    job: String,
}

impl Held {
    fn health(&self) -> String {
        let name = if self.name.is_empty() {
            "unknown"
        } else {
            &self.name
        };
        format!("held by pid {} ({name}) after job {}", self.pid, self.job)
    }
}

/// The withheld devices, by device id.
static HELD: Mutex<BTreeMap<String, Held>> = Mutex::new(BTreeMap::new());

fn held() -> std::sync::MutexGuard<'static, BTreeMap<String, Held>> {
    HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether device `id` is withheld now, and why (the session refuses an
/// assignment of it even before the scheduler has the report).
pub fn withheld(id: &str) -> Option<String> {
    held().get(id).map(Held::health)
}

/// Every process the facts list on a device.
pub fn holders(facts: &HardwareFacts) -> Vec<Holder> {
    let mut out = Vec::new();
    for g in &facts.gpus {
        for p in &g.processes {
            out.push(Holder {
                device: g.uuid.clone(),
                label: format!("gpu {}", g.index),
                pid: p.pid,
                name: p.name.clone(),
            });
        }
    }
    for p in &facts.npus.processes {
        let chip = if p.chip == 0 {
            String::new()
        } else {
            format!(" chip {}", p.chip)
        };
        out.push(Holder {
            device: npu_id(p.id, p.chip),
            label: format!("npu {}{chip}", p.id),
            pid: p.pid,
            name: p.name.clone(),
        });
    }
    out
}

/// Marks each withheld device in `facts` (its `health` says who holds it, a
/// line in `held`) while the probe still lists its process on it, and
/// forgets those whose process is gone: they are healthy again.
pub fn apply(facts: &mut HardwareFacts) {
    let listed = holders(facts);
    let mut table = held();
    table.retain(|device, h| {
        let still = listed
            .iter()
            .any(|l| &l.device == device && l.pid == h.pid);
        if !still {
            tracing::info!(device = %device, pid = h.pid, job = %h.job, "the leftover process left the device: it is no longer withheld");
        }
        still
    });
    for (device, h) in table.iter() {
        let health = h.health();
        for g in facts.gpus.iter_mut().filter(|g| &g.uuid == device) {
            g.health = health.clone();
            facts.held.push(format!("gpu {}: {health}", g.index));
        }
        for c in facts
            .npus
            .cards
            .iter_mut()
            .filter(|c| &npu_id(c.id, c.chip) == device)
        {
            c.health = health.clone();
            let chip = if c.chip == 0 {
                String::new()
            } else {
                format!(" chip {}", c.chip)
            };
            facts.held.push(format!("npu {}{chip}: {health}", c.id));
        }
    }
}

/// Lists the processes on this host's devices now (blocking: npu-smi and
/// NVML).
fn list(npu_smi: &std::path::Path) -> Result<Vec<Holder>, String> {
    let npus = npu::probe_npus(npu_smi).map_err(|e| e.to_string())?;
    let facts = HardwareFacts {
        gpus: gpu::probe_gpus().gpus,
        npus,
        ..Default::default()
    };
    Ok(holders(&facts))
}

/// Whether the agent may signal `pid`: never itself, pid 1 or a value that
/// `kill(2)` would read as a group (0, negative).
fn killable(pid: u32) -> bool {
    pid > 1 && pid <= i32::MAX as u32 && pid != std::process::id()
}

/// After attempt `a` ended (its cell killed): kills what still holds its
/// devices and withholds each device still held after [`SWEEP_GRACE`].
/// Returns the devices withheld, in words.
pub async fn sweep(cfg: &Arc<AgentConfig>, a: &AttemptSpec) -> Vec<String> {
    if a.devices.is_empty() {
        return Vec::new();
    }
    let mine: Vec<String> = a.devices.iter().map(|d| d.id.clone()).collect();
    let on_mine = |all: Vec<Holder>| -> Vec<Holder> {
        all.into_iter()
            .filter(|h| mine.contains(&h.device))
            .collect()
    };
    let now = |npu_smi: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || list(&npu_smi))
            .await
            .unwrap_or_else(|e| Err(format!("the listing panicked: {e}")))
    };
    let found = match now(cfg.npu_smi.clone()).await {
        Ok(all) => on_mine(all),
        Err(e) => {
            tracing::warn!(job = %a.job_id, error = %e, "cannot list the processes on the attempt's devices");
            return Vec::new();
        }
    };
    if found.is_empty() {
        return Vec::new();
    }
    for h in &found {
        if !killable(h.pid) {
            tracing::warn!(pid = h.pid, name = %h.name, device = %h.label, job = %a.job_id, "a process the agent must not kill holds the device after the attempt");
            continue;
        }
        tracing::warn!(pid = h.pid, name = %h.name, device = %h.label, job = %a.job_id, "killing a leftover process that holds the device after the attempt");
        let pid = nix::unistd::Pid::from_raw(h.pid as i32);
        if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
            tracing::warn!(pid = h.pid, device = %h.label, job = %a.job_id, error = %e, "could not kill the leftover process");
        }
    }
    let deadline = tokio::time::Instant::now() + SWEEP_GRACE;
    let mut left = found;
    loop {
        tokio::time::sleep(SWEEP_POLL).await;
        match now(cfg.npu_smi.clone()).await {
            // Only what was there at the end of the attempt: a new process
            // on the device is the next attempt's.
            Ok(all) => {
                let again = on_mine(all);
                left.retain(|h| again.iter().any(|x| x.device == h.device && x.pid == h.pid));
            }
            Err(e) => {
                tracing::warn!(job = %a.job_id, error = %e, "cannot list the processes on the attempt's devices");
            }
        }
        if left.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    let mut withheld = Vec::new();
    {
        let mut table = held();
        for h in &left {
            let entry = Held {
                pid: h.pid,
                name: h.name.clone(),
                job: a.job_id.clone(),
            };
            let line = format!("{}: {}", h.label, entry.health());
            tracing::warn!(device = %h.label, pid = h.pid, name = %h.name, job = %a.job_id, "withholding the device: a leftover process still holds it");
            table.entry(h.device.clone()).or_insert(entry);
            withheld.push(line);
        }
    }
    if !withheld.is_empty() {
        crate::health::probe_now();
    }
    withheld
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{GpuFacts, GpuProcess};

    fn facts() -> HardwareFacts {
        let table = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/npu-smi/info-910b-8card-with-processes.txt"
        ))
        .expect("fixture");
        HardwareFacts {
            gpus: vec![GpuFacts {
                index: 1,
                uuid: "GPU-bbb".into(),
                health: "ok".into(),
                processes: vec![GpuProcess {
                    pid: 777,
                    name: "python3".into(),
                }],
                ..Default::default()
            }],
            npus: npu::parse_info(&table).expect("parses"),
            ..Default::default()
        }
    }

    #[test]
    fn holders_name_each_device_as_the_scheduler_does() {
        let h = holders(&facts());
        let got: Vec<(&str, &str, u32)> = h
            .iter()
            .map(|h| (h.device.as_str(), h.label.as_str(), h.pid))
            .collect();
        assert_eq!(
            got,
            vec![
                ("GPU-bbb", "gpu 1", 777),
                ("npu 2 chip 0", "npu 2", 12345),
                ("npu 2 chip 0", "npu 2", 12377),
                ("npu 5 chip 0", "npu 5", 23456),
            ]
        );
    }

    #[test]
    fn a_withheld_device_stays_withheld_while_listed_and_heals_when_gone() {
        held().insert(
            "npu 5 chip 0".into(),
            Held {
                pid: 23456,
                name: "ray::IDLE".into(),
                job: "17".into(),
            },
        );
        let mut f = facts();
        apply(&mut f);
        assert_eq!(
            f.npus.cards[5].health,
            "held by pid 23456 (ray::IDLE) after job 17"
        );
        assert_eq!(
            f.held,
            ["npu 5: held by pid 23456 (ray::IDLE) after job 17"]
        );
        let h = crate::health::assess(&f, 0, false);
        assert_eq!(h.status, "degraded");
        assert_eq!(h.reasons, f.held);
        assert!(withheld("npu 5 chip 0").is_some());
        // The process left: healthy again, forgotten.
        let mut f = facts();
        f.npus.processes.retain(|p| p.pid != 23456);
        apply(&mut f);
        assert_eq!(f.npus.cards[5].health, "OK");
        assert!(f.held.is_empty());
        assert!(withheld("npu 5 chip 0").is_none());
    }

    #[test]
    fn the_agent_never_signals_itself_init_or_a_group() {
        assert!(!killable(0));
        assert!(!killable(1));
        assert!(!killable(std::process::id()));
        assert!(!killable(u32::MAX));
        assert!(killable(4242));
    }
}
