//! Accelerators as resources: which devices an agent has (from its probed
//! capabilities: GPUs by NVML index and UUID, NPUs by their place in
//! npu-smi's table), what a job asks for (`JobSpec.gpus` / `npus` with an
//! optional per-device memory minimum), and the one allocation rule:
//! the lowest-numbered free, healthy devices that are big enough.
//!
//! The core keeps no table of its own: the devices an attempt holds live in
//! its durable `AttemptRecord` (written in the same batch as the lease), so
//! the busy devices of an agent are those of its live attempts, also after a
//! reload.

use msfleet_proto::{Capabilities, DeviceRef, JobSpec};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The two kinds of accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Gpu,
    Npu,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Gpu => "gpu",
            Kind::Npu => "npu",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "gpu" => Some(Kind::Gpu),
            "npu" => Some(Kind::Npu),
            _ => None,
        }
    }
}

/// A device held by an attempt (stored with the attempt, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Held {
    pub kind: Kind,
    pub index: u32,
    /// GPU UUID, or "npu <id> chip <chip>": what identifies it across probes.
    pub id: String,
}

impl Held {
    pub fn to_ref(&self) -> DeviceRef {
        DeviceRef {
            kind: self.kind.label().into(),
            index: self.index,
            id: self.id.clone(),
        }
    }

    pub fn from_ref(r: &DeviceRef) -> Option<Held> {
        Some(Held {
            kind: Kind::parse(&r.kind)?,
            index: r.index,
            id: r.id.clone(),
        })
    }
}

/// One device of an agent, as its probe reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub held: Held,
    pub memory_mb: u64,
    pub health: String,
    pub healthy: bool,
}

use msfleet_proto::devices::{gpu_healthy, npu_healthy, npu_id};

/// Every device `caps` reports, GPUs then NPUs, in the probe's order.
pub fn inventory(caps: &Capabilities) -> Vec<Device> {
    let gpus = caps.gpus.iter().enumerate().map(|(i, g)| Device {
        held: Held {
            kind: Kind::Gpu,
            index: i as u32,
            id: g.uuid.clone(),
        },
        memory_mb: g.memory_mb,
        health: g.health.clone(),
        healthy: gpu_healthy(&g.health),
    });
    let npus = caps.npus.iter().enumerate().map(|(i, n)| Device {
        held: Held {
            kind: Kind::Npu,
            index: i as u32,
            id: npu_id(n.id, n.chip),
        },
        memory_mb: n.hbm_mb,
        health: n.health.clone(),
        healthy: npu_healthy(&n.health),
    });
    gpus.chain(npus).collect()
}

/// The most devices of one kind a job may ask for.
pub const MAX_DEVICES: u32 = 64;

/// A device request is bounded, and a memory minimum comes with a count.
pub fn check_request(spec: &JobSpec) -> Result<(), String> {
    for (kind, n, mem) in [
        ("gpus", spec.gpus, spec.gpu_memory_bytes),
        ("npus", spec.npus, spec.npu_memory_bytes),
    ] {
        if n > MAX_DEVICES {
            return Err(format!("{kind} {n} is more than {MAX_DEVICES}"));
        }
        match mem {
            Some(_) if n == 0 => {
                return Err(format!(
                    "a per-device memory minimum needs a device count: set {kind}"
                ))
            }
            Some(0) => return Err(format!("the {kind} memory minimum must be positive")),
            Some(m) if m > msfleet_proto::memory::MAX_LIMIT => {
                return Err(format!(
                    "the {kind} memory minimum is more than {}",
                    msfleet_proto::memory::format(msfleet_proto::memory::MAX_LIMIT)
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// What a job asks for of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub kind: Kind,
    pub count: u32,
    /// Per-device minimum, MiB (0: any).
    pub min_mb: u64,
}

/// The device requests of `spec` (none, one or both kinds).
pub fn requests(spec: &JobSpec) -> Vec<Request> {
    let mb = |b: Option<u64>| b.map_or(0, |b| b.div_ceil(1 << 20));
    let mut out = Vec::new();
    if spec.gpus > 0 {
        out.push(Request {
            kind: Kind::Gpu,
            count: spec.gpus,
            min_mb: mb(spec.gpu_memory_bytes),
        });
    }
    if spec.npus > 0 {
        out.push(Request {
            kind: Kind::Npu,
            count: spec.npus,
            min_mb: mb(spec.npu_memory_bytes),
        });
    }
    out
}

impl Request {
    fn admits(&self, d: &Device) -> bool {
        d.held.kind == self.kind && d.memory_mb >= self.min_mb
    }

    /// "4 npus", "2 gpus with at least 40 GiB each".
    pub fn describe(&self) -> String {
        let what = format!(
            "{} {}{}",
            self.count,
            self.kind.label(),
            if self.count == 1 { "" } else { "s" }
        );
        if self.min_mb == 0 {
            what
        } else {
            format!(
                "{what} with at least {} each",
                msfleet_proto::memory::format(self.min_mb << 20)
            )
        }
    }
}

/// Why an agent with these capabilities can never run `spec`: it has too few
/// devices of a kind asked for (counting unhealthy ones: health comes back).
/// `None` when it has enough, or the job asks for none.
pub fn shortfall(spec: &JobSpec, caps: &Capabilities) -> Option<String> {
    let inv = inventory(caps);
    requests(spec).into_iter().find_map(|r| {
        let have = inv.iter().filter(|d| r.admits(d)).count();
        (have < r.count as usize).then(|| {
            format!(
                "has {have} {}{} that fit, the job asks for {}",
                r.kind.label(),
                if have == 1 { "" } else { "s" },
                r.describe()
            )
        })
    })
}

/// "3 of 8 npus free" for request `r` on an agent with these capabilities,
/// of which `busy` are held (free: healthy, not held, big enough).
pub fn free_line(r: &Request, caps: &Capabilities, busy: &HashSet<Held>) -> String {
    let inv = inventory(caps);
    let of_kind = inv.iter().filter(|d| d.held.kind == r.kind).count();
    let free = inv
        .iter()
        .filter(|d| r.admits(d) && d.healthy && !busy.contains(&d.held))
        .count();
    format!("{free} of {of_kind} {}s free", r.kind.label())
}

/// The devices to give an attempt of `spec` on an agent with these
/// capabilities, of which `busy` are held: the lowest-numbered free, healthy
/// devices that fit each request. `Some(vec![])` for a job that asks for
/// none; `None` when there are not enough free now.
pub fn allocate(spec: &JobSpec, caps: &Capabilities, busy: &HashSet<Held>) -> Option<Vec<Held>> {
    let inv = inventory(caps);
    let mut out = Vec::new();
    for r in requests(spec) {
        let mut free: Vec<&Device> = inv
            .iter()
            .filter(|d| r.admits(d) && d.healthy && !busy.contains(&d.held))
            .collect();
        if free.len() < r.count as usize {
            return None;
        }
        free.sort_by_key(|d| d.held.index);
        out.extend(
            free.into_iter()
                .take(r.count as usize)
                .map(|d| d.held.clone()),
        );
    }
    Some(out)
}

/// How users see an attempt's devices ("npu 0,1,2,3"): the one rule in
/// `msfleet_proto::devices`.
pub fn describe(held: &[Held]) -> String {
    let refs: Vec<DeviceRef> = held.iter().map(Held::to_ref).collect();
    msfleet_proto::devices::describe(&refs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use msfleet_proto::{Gpu, Npu};

    fn npus(health: &[&str]) -> Capabilities {
        Capabilities {
            npus: health
                .iter()
                .enumerate()
                .map(|(i, h)| Npu {
                    id: i as u32,
                    name: "910B".into(),
                    hbm_mb: 32768,
                    health: (*h).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn ask_npus(n: u32) -> JobSpec {
        JobSpec {
            npus: n,
            ..Default::default()
        }
    }

    #[test]
    fn allocation_takes_the_lowest_free_healthy_devices() {
        let caps = npus(&["OK", "Alarm", "OK", "OK", "OK"]);
        let got = allocate(&ask_npus(2), &caps, &HashSet::new()).unwrap();
        assert_eq!(describe(&got), "npu 0,2");
        let busy: HashSet<Held> = got.into_iter().collect();
        let next = allocate(&ask_npus(2), &caps, &busy).unwrap();
        assert_eq!(describe(&next), "npu 3,4");
        let all: HashSet<Held> = busy.into_iter().chain(next).collect();
        assert_eq!(allocate(&ask_npus(1), &caps, &all), None, "none left");
        assert_eq!(allocate(&JobSpec::default(), &caps, &all), Some(vec![]));
    }

    #[test]
    fn shortfall_counts_devices_big_enough_whatever_their_health() {
        let caps = npus(&["OK", "Alarm"]);
        assert_eq!(shortfall(&ask_npus(2), &caps), None);
        assert_eq!(
            shortfall(&ask_npus(3), &caps).as_deref(),
            Some("has 2 npus that fit, the job asks for 3 npus")
        );
        let mut big = ask_npus(1);
        big.npu_memory_bytes = Some(64 << 30);
        assert_eq!(
            shortfall(&big, &caps).as_deref(),
            Some("has 0 npus that fit, the job asks for 1 npu with at least 64 GiB each")
        );
    }

    #[test]
    fn gpus_are_known_by_uuid_and_memory_minimums_filter() {
        let caps = Capabilities {
            gpus: vec![
                Gpu {
                    index: 0,
                    uuid: "GPU-a".into(),
                    memory_mb: 24576,
                    health: "ok".into(),
                    ..Default::default()
                },
                Gpu {
                    index: 1,
                    uuid: "GPU-b".into(),
                    memory_mb: 81920,
                    health: "ok".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let spec = JobSpec {
            gpus: 1,
            gpu_memory_bytes: Some(40 << 30),
            ..Default::default()
        };
        let got = allocate(&spec, &caps, &HashSet::new()).unwrap();
        assert_eq!(got[0].id, "GPU-b");
        assert_eq!(got[0].to_ref().kind, "gpu");
    }
}
