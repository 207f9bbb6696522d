//! The agent's side of device assignment: an attempt gets the accelerators
//! the scheduler assigned with its lease and sees no others.
//!
//! [`grant`] checks the assignment against this agent's latest probe (each
//! device present and healthy; a refusal goes back as `Finished{REQUEUE,
//! refused}`) and gives the environment every process of the attempt runs
//! with, applied after the job's own `env` so a job cannot widen it:
//!
//! - NVIDIA: `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES`, the
//!   assigned GPUs' UUIDs (stable whatever the enumeration order; MIG
//!   instances by their `MIG-...` UUID);
//! - Ascend: `ASCEND_RT_VISIBLE_DEVICES`, the logical ids as the runtime
//!   numbers the chips (their place in npu-smi's table).
//!
//! A job that asks for no devices of a kind sees none of that kind:
//! `CUDA_VISIBLE_DEVICES=""`, `NVIDIA_VISIBLE_DEVICES=void` (the NVIDIA
//! container runtime's "no GPU") and `ASCEND_RT_VISIBLE_DEVICES=""`. This is
//! what a Slurm job without `--gres` ends up with under `ConstrainDevices`
//! (no device visible); without device cgroups, the variables are how the
//! agent hides them.

use msfleet_proto::devices::{gpu_healthy, npu_healthy, npu_id};
use msfleet_proto::{Capabilities, DeviceRef};

/// The variables that select devices, with what the attempt gets.
pub type DeviceEnv = Vec<(String, String)>;

/// The environment that shows the attempt exactly `assigned`, or why this
/// agent refuses the assignment (a device it does not have, or unhealthy).
pub fn grant(caps: &Capabilities, assigned: &[DeviceRef]) -> Result<DeviceEnv, String> {
    let mut gpus = Vec::new();
    let mut npus = Vec::new();
    for d in assigned {
        match d.kind.as_str() {
            "gpu" => {
                let g = caps
                    .gpus
                    .iter()
                    .find(|g| !g.uuid.is_empty() && g.uuid == d.id)
                    .ok_or_else(|| {
                        format!("gpu {} ({}) is not on this agent", d.index, clip(&d.id))
                    })?;
                if !gpu_healthy(&g.health) {
                    return Err(format!(
                        "gpu {} ({}) is unhealthy: {}",
                        g.index, g.uuid, g.health
                    ));
                }
                gpus.push(g.uuid.clone());
            }
            "npu" => {
                let (logical, n) = caps
                    .npus
                    .iter()
                    .enumerate()
                    .find(|(_, n)| npu_id(n.id, n.chip) == d.id)
                    .ok_or_else(|| format!("{} is not on this agent", clip(&d.id)))?;
                if !npu_healthy(&n.health) {
                    return Err(format!("{} is unhealthy: {}", d.id, n.health));
                }
                npus.push(logical.to_string());
            }
            other => return Err(format!("unknown device kind '{}'", clip(other))),
        }
    }
    let nvidia_none = if gpus.is_empty() {
        "void".to_string()
    } else {
        gpus.join(",")
    };
    Ok(vec![
        ("CUDA_VISIBLE_DEVICES".into(), gpus.join(",")),
        ("NVIDIA_VISIBLE_DEVICES".into(), nvidia_none),
        ("ASCEND_RT_VISIBLE_DEVICES".into(), npus.join(",")),
    ])
}

/// A short start of outside text for a message.
fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use msfleet_proto::{Gpu, Npu};

    fn caps() -> Capabilities {
        Capabilities {
            gpus: vec![
                Gpu {
                    index: 0,
                    uuid: "GPU-aaa".into(),
                    health: "ok".into(),
                    ..Default::default()
                },
                Gpu {
                    index: 1,
                    uuid: "GPU-bbb".into(),
                    health: "uncorrected ECC errors (3)".into(),
                    ..Default::default()
                },
            ],
            npus: [(2, "OK"), (5, "OK"), (6, "Alarm")]
                .iter()
                .map(|(id, h)| Npu {
                    id: *id,
                    health: (*h).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn d(kind: &str, index: u32, id: &str) -> DeviceRef {
        DeviceRef {
            kind: kind.into(),
            index,
            id: id.into(),
        }
    }

    fn env(e: &DeviceEnv, k: &str) -> String {
        e.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    }

    #[test]
    fn the_attempt_sees_its_gpus_by_uuid_and_its_npus_by_logical_id() {
        let e = grant(
            &caps(),
            &[d("gpu", 0, "GPU-aaa"), d("npu", 1, "npu 5 chip 0")],
        )
        .unwrap();
        assert_eq!(env(&e, "CUDA_VISIBLE_DEVICES"), "GPU-aaa");
        assert_eq!(env(&e, "NVIDIA_VISIBLE_DEVICES"), "GPU-aaa");
        assert_eq!(
            env(&e, "ASCEND_RT_VISIBLE_DEVICES"),
            "1",
            "npu 5 is the second chip"
        );
    }

    #[test]
    fn without_devices_it_sees_none() {
        let e = grant(&caps(), &[]).unwrap();
        assert_eq!(env(&e, "CUDA_VISIBLE_DEVICES"), "");
        assert_eq!(env(&e, "NVIDIA_VISIBLE_DEVICES"), "void");
        assert_eq!(env(&e, "ASCEND_RT_VISIBLE_DEVICES"), "");
    }

    #[test]
    fn a_missing_or_unhealthy_device_is_refused() {
        let c = caps();
        assert_eq!(
            grant(&c, &[d("gpu", 1, "GPU-bbb")]).unwrap_err(),
            "gpu 1 (GPU-bbb) is unhealthy: uncorrected ECC errors (3)"
        );
        assert_eq!(
            grant(&c, &[d("npu", 2, "npu 6 chip 0")]).unwrap_err(),
            "npu 6 chip 0 is unhealthy: Alarm"
        );
        assert_eq!(
            grant(&c, &[d("npu", 7, "npu 7 chip 0")]).unwrap_err(),
            "npu 7 chip 0 is not on this agent"
        );
        assert!(grant(&c, &[d("tpu", 0, "x")]).is_err());
    }
}
