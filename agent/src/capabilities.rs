//! What the agent tells the scheduler about itself: probe facts, labels, roots,
//! its owner's policy, the hardware profile key and the host's health, as a
//! `msfleet.v1.Capabilities`.

use crate::config::AgentConfig;
use crate::probe::HardwareFacts;
use crate::profile::hardware_profile;
use msfleet_proto::{Capabilities, Gpu, HostInfo, Npu};

/// Builds the capability report from what the probes found.
pub fn report(cfg: &AgentConfig, facts: &HardwareFacts) -> Capabilities {
    let h = &facts.host;
    let host = HostInfo {
        hostname: h.hostname.clone(),
        os: h.os.clone(),
        arch: h.arch.clone(),
        cpu_model: h.cpu_model.clone(),
        cores: h.cores,
        memory_mb: h.memory_mb,
        disk_free_mb: h.disk_free_mb,
        python: h.python.clone(),
        python_version: h.python_version.clone(),
        pytest_version: h.pytest_version.clone(),
    };
    let gpus = facts
        .gpus
        .iter()
        .map(|g| Gpu {
            index: g.index,
            name: g.name.clone(),
            uuid: g.uuid.clone(),
            pci_bus_id: g.pci_bus_id.clone(),
            memory_mb: g.memory_mb,
            driver_version: g.driver_version.clone(),
            cuda_driver_version: g.cuda_driver_version.clone(),
            compute_capability: g.compute_capability.clone(),
            mig_mode: g.mig_mode.clone(),
            power_limit_w: g.power_limit_w,
            health: g.health.clone(),
        })
        .collect();
    let npus = facts
        .npus
        .cards
        .iter()
        .map(|c| Npu {
            id: c.id,
            chip: c.chip,
            name: c.name.clone(),
            hbm_mb: c.hbm_total_mb.unwrap_or(0),
            health: c.health.clone(),
            power_w: c.power_w,
            driver_version: facts.npus.driver_version.clone().unwrap_or_default(),
            firmware_version: facts.npus.firmware_version.clone().unwrap_or_default(),
            cann_version: facts.cann_version.clone().unwrap_or_default(),
        })
        .collect();
    Capabilities {
        host: Some(host),
        gpus,
        npus,
        labels: cfg.labels.clone().into_iter().collect(),
        roots: cfg.roots.iter().map(|r| r.display().to_string()).collect(),
        profile: hardware_profile(facts, &cfg.labels),
        slots: cfg.slots,
        policy: Some(cfg.policy.clone()),
        health: Some(crate::health::assess(facts, cfg.min_disk_free_mb, false)),
        enforces_memory: crate::contain::active().mode().memory(),
        // Measured apart, off the async threads ([`crate::health::probe`]).
        environment_usage: None,
        containment: crate::contain::active().mode().label().into(),
    }
}
