//! The hardware profile: a short, stable key naming what kind of machine an agent is.
//!
//! Benchmark baselines are only comparable between machines of the same kind, so results are
//! grouped by this key. It is built only from facts that do not change from run to run or from
//! one identical machine to the next: accelerator kind, model, count and memory size, driver and
//! CUDA/CANN versions (major.minor), and the CPU model. Host names, clocks, temperatures, free
//! memory and free disk never take part.
//!
//! Examples: `gpu-8xH100-80GB_drv-550.54_cuda-12.4_intel-xeon-platinum-8480`,
//! `npu-8x910B-32GB_drv-24.1_cann-8.0_hisilicon-kunpeng-920`, `cpu_amd-epyc-7763-64-core`.

use std::collections::BTreeMap;

use crate::probe::HardwareFacts;

/// Agent label that replaces the computed profile entirely (`profile=NAME`).
pub const PROFILE_LABEL: &str = "profile";

/// Longest CPU part of the key, in characters.
const MAX_CPU_LEN: usize = 40;

/// Memory sizes, in GB, that accelerators are sold with; measured sizes are rounded to these.
const MARKETING_GB: &[u64] = &[
    1, 2, 3, 4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 64, 80, 94, 96, 128, 141, 144, 180, 192,
    256, 288,
];

/// Builds the profile key for `facts`. A non-empty `profile=NAME` label returns `NAME` as is
/// (used to pin a key, or to fake two hardware kinds in tests).
pub fn hardware_profile(facts: &HardwareFacts, labels: &BTreeMap<String, String>) -> String {
    if let Some(name) = labels
        .get(PROFILE_LABEL)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
    {
        return name.to_string();
    }

    let mut parts = Vec::new();
    if !facts.gpus.is_empty() {
        let devices = facts
            .gpus
            .iter()
            .map(|g| (gpu_model(&g.name), marketing_gb(g.memory_mb)));
        parts.push(format!("gpu-{}", count_devices(devices)));
        let driver = facts.gpus.iter().map(|g| g.driver_version.as_str());
        if let Some(v) = driver.filter(|v| !v.is_empty()).map(major_minor).next() {
            parts.push(format!("drv-{v}"));
        }
        let cuda = facts.gpus.iter().map(|g| g.cuda_driver_version.as_str());
        if let Some(v) = cuda.filter(|v| !v.is_empty()).map(major_minor).next() {
            parts.push(format!("cuda-{v}"));
        }
    }
    if !facts.npus.cards.is_empty() {
        let devices = facts
            .npus
            .cards
            .iter()
            .map(|c| (sanitize(&c.name), c.hbm_total_mb.and_then(marketing_gb)));
        parts.push(format!("npu-{}", count_devices(devices)));
        if let Some(v) = facts.npus.driver_version.as_deref() {
            parts.push(format!("drv-{}", major_minor(v)));
        }
        if let Some(v) = facts.cann_version.as_deref() {
            parts.push(format!("cann-{}", major_minor(v)));
        }
    }
    if parts.is_empty() {
        parts.push("cpu".to_string());
    }
    let cpu = normalise_cpu(&facts.host.cpu_model);
    if !cpu.is_empty() {
        parts.push(cpu);
    } else if !facts.host.arch.is_empty() {
        parts.push(sanitize(&facts.host.arch));
    }
    parts.retain(|p| !p.is_empty());
    parts.join("_")
}

/// `8xH100-80GB`, or `4xH100-80GB+4xA100-80GB` for mixed machines (sorted, so stable).
fn count_devices(devices: impl Iterator<Item = (String, Option<u64>)>) -> String {
    let mut counts: BTreeMap<(String, Option<u64>), usize> = BTreeMap::new();
    for device in devices {
        *counts.entry(device).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((model, gb), n)| {
            let model = if model.is_empty() { "unknown" } else { &model };
            match gb {
                Some(gb) => format!("{n}x{model}-{gb}GB"),
                None => format!("{n}x{model}"),
            }
        })
        .collect::<Vec<_>>()
        .join("+")
}

/// The model part of an NVIDIA product name: vendor prefix, memory size and memory type words
/// dropped (`NVIDIA H100 80GB HBM3` -> `H100`, `NVIDIA A100-SXM4-80GB` -> `A100-SXM4`).
fn gpu_model(name: &str) -> String {
    let words: Vec<&str> = name
        .split(|c: char| c.is_whitespace() || c == '-')
        .filter(|w| !w.is_empty())
        .filter(|w| !w.eq_ignore_ascii_case("nvidia"))
        .filter(|w| !is_memory_word(w))
        .collect();
    sanitize(&words.join("-"))
}

/// `80GB`, `HBM3`, `HBM2e`, `GDDR6`: memory descriptions, already covered by the size suffix.
fn is_memory_word(word: &str) -> bool {
    let lower = word.to_ascii_lowercase();
    let size = lower
        .strip_suffix("gb")
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    size || lower.starts_with("hbm") || lower.starts_with("gddr")
}

/// Rounds a measured size in MiB to the nearest size in [`MARKETING_GB`] (81559 MiB -> 80),
/// or to whole GiB when nothing in the table is within 8%. `None` for 0.
fn marketing_gb(mb: u64) -> Option<u64> {
    if mb == 0 {
        return None;
    }
    // Lossless for any realistic size; only used for rounding.
    let gib = mb as f64 / 1024.0;
    let nearest = MARKETING_GB.iter().copied().min_by(|a, b| {
        let da = (*a as f64 - gib).abs();
        let db = (*b as f64 - gib).abs();
        da.total_cmp(&db)
    });
    match nearest {
        Some(gb) if (gb as f64 - gib).abs() <= gib * 0.08 => Some(gb),
        _ => Some(gib.round().max(1.0) as u64),
    }
}

/// `550.54.15` -> `550.54`, `8.0.RC3` -> `8.0`, `24.1.rc2` -> `24.1`, `535` -> `535`.
fn major_minor(version: &str) -> String {
    let parts: Vec<&str> = version.trim().splitn(3, '.').take(2).collect();
    sanitize(&parts.join("."))
}

/// Lowercase CPU model with trademarks, clock speed, punctuation and filler words removed,
/// words joined by `-`, at most [`MAX_CPU_LEN`] characters (cut at a word boundary).
fn normalise_cpu(model: &str) -> String {
    // `... CPU @ 2.40GHz`: the nominal clock is not part of the model.
    let model = model.split('@').next().unwrap_or_default().to_lowercase();
    let model = ["(r)", "(tm)", "(c)", "®", "™"]
        .iter()
        .fold(model, |m, mark| m.replace(mark, " "));
    let cleaned: String = model
        .chars()
        .map(|c| match c {
            c if c.is_ascii_alphanumeric() => c,
            c if c.is_whitespace() || c == '-' || c == '_' => ' ',
            _ => '\0',
        })
        .filter(|&c| c != '\0')
        .collect();
    let mut out = String::new();
    for word in cleaned
        .split_whitespace()
        .filter(|w| !matches!(*w, "cpu" | "processor"))
    {
        let extra = if out.is_empty() { 0 } else { 1 } + word.len();
        if out.len() + extra > MAX_CPU_LEN {
            break;
        }
        if !out.is_empty() {
            out.push('-');
        }
        out.push_str(word);
    }
    out
}

/// Keeps letters, digits, `.` and `-`; other characters become `-` (collapsed).
fn sanitize(s: &str) -> String {
    let mapped: String = s
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    mapped
        .split('-')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{GpuFacts, HostFacts, NpuCard, NpuSmiInfo};

    fn host(hostname: &str, disk_free_mb: u64) -> HostFacts {
        HostFacts {
            hostname: hostname.to_string(),
            os: "linux".to_string(),
            arch: "x86_64".to_string(),
            cpu_model: "Intel(R) Xeon(R) Platinum 8480+".to_string(),
            cores: 224,
            memory_mb: 2_063_000,
            disk_free_mb,
            python: "python3".to_string(),
            python_version: "3.11.4".to_string(),
            pytest_version: "8.3.2".to_string(),
        }
    }

    fn gpu(index: u32, memory_mb: u64) -> GpuFacts {
        GpuFacts {
            index,
            name: "NVIDIA H100 80GB HBM3".to_string(),
            uuid: format!("GPU-{index:08x}"),
            pci_bus_id: format!("00000000:{index:02X}:00.0"),
            memory_mb,
            driver_version: "550.54.15".to_string(),
            cuda_driver_version: "12.4".to_string(),
            compute_capability: "9.0".to_string(),
            mig_mode: "disabled".to_string(),
            power_limit_w: 700,
            health: "ok".to_string(),
            processes: Vec::new(),
        }
    }

    fn gpu_facts(hostname: &str, disk: u64, count: u32, memory_mb: u64) -> HardwareFacts {
        HardwareFacts {
            host: host(hostname, disk),
            gpus: (0..count).map(|i| gpu(i, memory_mb)).collect(),
            ..HardwareFacts::default()
        }
    }

    fn no_labels() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn gpu_key_shape() {
        assert_eq!(
            hardware_profile(&gpu_facts("a", 1, 8, 81559), &no_labels()),
            "gpu-8xH100-80GB_drv-550.54_cuda-12.4_intel-xeon-platinum-8480"
        );
    }

    #[test]
    fn hostname_and_disk_do_not_matter() {
        let mut a = gpu_facts("node-a", 1_000, 8, 81559);
        let mut b = gpu_facts("node-b", 999_999, 8, 81559);
        a.host.memory_mb = 100;
        b.host.cores = 8;
        b.gpus[0].uuid = "GPU-other".to_string();
        b.gpus[0].health = "page retirement pending".to_string();
        b.notes.push("something".to_string());
        assert_eq!(
            hardware_profile(&a, &no_labels()),
            hardware_profile(&b, &no_labels())
        );
    }

    #[test]
    fn gpu_count_matters() {
        assert_ne!(
            hardware_profile(&gpu_facts("a", 1, 8, 81559), &no_labels()),
            hardware_profile(&gpu_facts("a", 1, 4, 81559), &no_labels())
        );
    }

    #[test]
    fn memory_rounds_to_marketing_size() {
        assert_eq!(
            hardware_profile(&gpu_facts("a", 1, 8, 81559), &no_labels()),
            hardware_profile(&gpu_facts("a", 1, 8, 81920), &no_labels())
        );
        assert_eq!(marketing_gb(81559), Some(80));
        assert_eq!(marketing_gb(40960), Some(40));
        assert_eq!(marketing_gb(95830), Some(94));
        assert_eq!(marketing_gb(143_771), Some(141));
        assert_eq!(marketing_gb(24564), Some(24));
        assert_eq!(marketing_gb(46068), Some(48));
        assert_eq!(marketing_gb(32768), Some(32));
        assert_eq!(marketing_gb(65536), Some(64));
        assert_eq!(marketing_gb(0), None);
        assert_eq!(marketing_gb(1_000_000), Some(977));
    }

    #[test]
    fn label_overrides_everything() {
        let labels = BTreeMap::from([("profile".to_string(), "fake-kind-b".to_string())]);
        assert_eq!(
            hardware_profile(&gpu_facts("a", 1, 8, 81559), &labels),
            "fake-kind-b"
        );
        assert_eq!(
            hardware_profile(&HardwareFacts::default(), &labels),
            "fake-kind-b"
        );
        let empty = BTreeMap::from([("profile".to_string(), " ".to_string())]);
        assert_ne!(hardware_profile(&gpu_facts("a", 1, 8, 81559), &empty), " ");
    }

    #[test]
    fn npu_key() {
        let card = |id| NpuCard {
            id,
            chip: 0,
            name: "910B".to_string(),
            health: "OK".to_string(),
            power_w: Some(70.0 + f64::from(id)),
            hbm_total_mb: Some(32768),
            hbm_used_mb: Some(u64::from(id) * 100),
        };
        let mut facts = HardwareFacts {
            npus: NpuSmiInfo {
                npu_smi_version: Some("24.1.0".to_string()),
                driver_version: Some("24.1.0".to_string()),
                firmware_version: None,
                cards: (0..8).map(card).collect(),
                processes: Vec::new(),
            },
            cann_version: Some("8.0.RC3".to_string()),
            ..HardwareFacts::default()
        };
        facts.host.cpu_model = "HiSilicon Kunpeng-920".to_string();
        assert_eq!(
            hardware_profile(&facts, &no_labels()),
            "npu-8x910B-32GB_drv-24.1_cann-8.0_hisilicon-kunpeng-920"
        );
    }

    #[test]
    fn cpu_only_and_mixed() {
        let mut facts = HardwareFacts::default();
        facts.host.cpu_model = "AMD EPYC 7763 64-Core Processor".to_string();
        assert_eq!(
            hardware_profile(&facts, &no_labels()),
            "cpu_amd-epyc-7763-64-core"
        );
        facts.host.cpu_model = String::new();
        facts.host.arch = "aarch64".to_string();
        assert_eq!(hardware_profile(&facts, &no_labels()), "cpu_aarch64");

        let mut mixed = gpu_facts("a", 1, 2, 81559);
        mixed.gpus[1].name = "NVIDIA A100-SXM4-40GB".to_string();
        mixed.gpus[1].memory_mb = 40960;
        assert!(
            hardware_profile(&mixed, &no_labels()).starts_with("gpu-1xA100-SXM4-40GB+1xH100-80GB_")
        );
    }

    #[test]
    fn normalisation_helpers() {
        assert_eq!(
            normalise_cpu("Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz"),
            "intel-xeon-e5-2680-v4"
        );
        assert_eq!(
            normalise_cpu("Intel Xeon Processor (Icelake)"),
            "intel-xeon-icelake"
        );
        assert!(normalise_cpu(&"word ".repeat(50)).len() <= MAX_CPU_LEN);
        assert_eq!(normalise_cpu(""), "");
        assert_eq!(gpu_model("NVIDIA H100 NVL"), "H100-NVL");
        assert_eq!(gpu_model("NVIDIA GeForce RTX 4090"), "GeForce-RTX-4090");
        assert_eq!(gpu_model("Tesla V100-SXM2-16GB"), "Tesla-V100-SXM2");
        assert_eq!(major_minor("550.54.15"), "550.54");
        assert_eq!(major_minor("25.3.rc1"), "25.3");
        assert_eq!(major_minor("535"), "535");
    }
}
