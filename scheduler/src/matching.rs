//! Which agent may run which job: an agent's reported capabilities become
//! requirement [`Attributes`], and a job fits an agent when its requirement
//! matches them and its source directory (if any) lies under one of the
//! agent's roots.

use crate::requirement::{Attributes, Requirement};
use msfleet_proto::{source, Capabilities, JobSpec};

/// The attributes a requirement expression can name, built from capabilities.
pub fn attributes(name: &str, caps: &Capabilities) -> Attributes {
    let mut a = Attributes::default();
    a.set_str("agent.name", name);
    a.set_str("profile", caps.profile.clone());
    a.set_num("slots", f64::from(caps.slots.max(1)));
    if let Some(h) = &caps.host {
        a.set_str("host.name", h.hostname.clone());
        a.set_str("host.os", h.os.clone());
        a.set_str("host.arch", h.arch.clone());
        a.set_str("cpu.model", h.cpu_model.clone());
        a.set_num("cpu.cores", f64::from(h.cores));
        a.set_num("memory_mb", h.memory_mb as f64);
        a.set_num("disk_free_mb", h.disk_free_mb as f64);
        if !h.python_version.is_empty() {
            a.set_str("python.version", h.python_version.clone());
        }
        if !h.pytest_version.is_empty() {
            a.set_str("pytest.version", h.pytest_version.clone());
        }
    }
    a.set_num("gpu.count", caps.gpus.len() as f64);
    if let Some(min_mem) = caps.gpus.iter().map(|g| g.memory_mb).min() {
        a.set_num("gpu.memory_mb", min_mem as f64);
    }
    for g in &caps.gpus {
        a.add_str("gpu.model", g.name.clone());
        a.add_str("gpu.driver", g.driver_version.clone());
        a.add_str("gpu.cuda", g.cuda_driver_version.clone());
        a.add_str("gpu.compute_capability", g.compute_capability.clone());
    }
    a.set_num("npu.count", caps.npus.len() as f64);
    if let Some(min_hbm) = caps.npus.iter().map(|n| n.hbm_mb).min() {
        a.set_num("npu.hbm_mb", min_hbm as f64);
    }
    for n in &caps.npus {
        a.add_str("npu.model", n.name.clone());
        a.add_str("npu.driver", n.driver_version.clone());
        a.add_str("npu.cann", n.cann_version.clone());
    }
    for (k, v) in &caps.labels {
        a.set_str(&format!("label.{k}"), v.clone());
    }
    a
}

/// The source directory of a job, if it runs from one.
pub fn source_dir(spec: &JobSpec) -> Option<&str> {
    match spec.source.as_ref()?.kind.as_ref()? {
        source::Kind::Dir(d) => Some(d),
        source::Kind::Git(_) => None,
    }
}

/// True when `dir` is `root` or inside it: the rule the agent applies too
/// ([`msfleet_proto::roots::is_under`]), here on the paths as text.
pub fn under_root(dir: &str, root: &str) -> bool {
    msfleet_proto::roots::is_under(dir, root)
}

/// True when an agent with these capabilities may run the job.
pub fn fits(req: &Requirement, spec: &JobSpec, attrs: &Attributes, caps: &Capabilities) -> bool {
    if !req.matches(attrs) {
        return false;
    }
    match source_dir(spec) {
        Some(dir) => caps.roots.iter().any(|root| under_root(dir, root)),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msfleet_proto::{Gpu, HostInfo, Source};

    fn caps() -> Capabilities {
        Capabilities {
            host: Some(HostInfo {
                cores: 16,
                cpu_model: "AMD EPYC".into(),
                ..Default::default()
            }),
            gpus: vec![
                Gpu {
                    name: "NVIDIA H100 80GB HBM3".into(),
                    memory_mb: 81559,
                    ..Default::default()
                };
                2
            ],
            labels: [("pool".to_string(), "nightly".to_string())].into(),
            roots: vec!["/srv/work".into()],
            ..Default::default()
        }
    }

    fn spec(dir: &str) -> JobSpec {
        JobSpec {
            source: Some(Source {
                kind: Some(source::Kind::Dir(dir.into())),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn requirement_and_roots_both_decide() {
        let c = caps();
        let attrs = attributes("a1", &c);
        let req: Requirement =
            "gpu.count>=2 && gpu.model=~\"H100\" && gpu.memory_mb>=40000 && label.pool==\"nightly\""
                .parse()
                .unwrap();
        assert!(fits(&req, &spec("/srv/work/proj"), &attrs, &c));
        assert!(!fits(&req, &spec("/srv/workshop"), &attrs, &c));
        assert!(!fits(&req, &spec("/home/x"), &attrs, &c));
        let npu: Requirement = "npu.count>=1".parse().unwrap();
        assert!(!fits(&npu, &spec("/srv/work"), &attrs, &c));
    }

    #[test]
    fn under_root_compares_whole_components() {
        assert!(under_root("/srv/work", "/srv/work"));
        assert!(under_root("/srv/work/a/b", "/srv/work/"));
        assert!(!under_root("/srv/workshop", "/srv/work"));
        assert!(!under_root("/srv/work", "relative"));
    }
}
