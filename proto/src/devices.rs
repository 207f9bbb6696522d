//! How an attempt's accelerators are written for people, the one way every
//! side says it: the scheduler in the job's events ("attempt 1 on a1
//! (devices: npu 0,1,2,3)"), msctl in `show`, the agent in its log.

use crate::DeviceRef;

/// GPU health words that are no problem: `ok` from the agent's NVML probe,
/// or `unknown` when NVML could check nothing.
pub fn gpu_healthy(health: &str) -> bool {
    matches!(health, "ok" | "unknown" | "")
}

/// An NPU is fine when npu-smi says `OK`.
pub fn npu_healthy(health: &str) -> bool {
    health.eq_ignore_ascii_case("ok")
}

/// The identity of NPU `id` chip `chip` in a `DeviceRef` ("npu 3 chip 0").
pub fn npu_id(id: u32, chip: u32) -> String {
    format!("npu {id} chip {chip}")
}

/// "npu 0,1,2,3", "gpu 0; npu 2" for two kinds; empty for none.
pub fn describe(devices: &[DeviceRef]) -> String {
    let mut kinds: Vec<&str> = Vec::new();
    for d in devices {
        if !kinds.contains(&d.kind.as_str()) {
            kinds.push(&d.kind);
        }
    }
    kinds
        .iter()
        .map(|k| {
            let idx: Vec<String> = devices
                .iter()
                .filter(|d| d.kind == *k)
                .map(|d| d.index.to_string())
                .collect();
            format!("{k} {}", idx.join(","))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(kind: &str, index: u32) -> DeviceRef {
        DeviceRef {
            kind: kind.into(),
            index,
            id: String::new(),
        }
    }

    #[test]
    fn devices_are_named_by_kind_then_index() {
        assert_eq!(describe(&[]), "");
        assert_eq!(
            describe(&[d("npu", 0), d("npu", 1), d("npu", 3)]),
            "npu 0,1,3"
        );
        assert_eq!(describe(&[d("gpu", 2), d("npu", 0)]), "gpu 2; npu 0");
    }
}
