//! Which agent may run which job: an agent's reported capabilities become
//! requirement [`Attributes`], and a job fits an agent when its requirement
//! matches them, its source directory (if any) lies under one of the agent's
//! roots, and the agent's policy admits it ([`msfleet_proto::policy::admits`],
//! the rule the agent applies too).

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
        a.set_str(format!("label.{k}"), v.clone());
    }
    a.shrink_to_fit();
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

/// The requirement class of a job: jobs with the same key get the same
/// answer from [`fits`], `AgentEntry::accepts`, [`warm_for`] and the device
/// allocation on every agent, so the pending queue groups them and dispatch
/// asks once per class and agent. The key is the spec without what is the
/// job's own and matches nothing (queue, priority, limits, names, labels, env
/// values: the policy reads env names only); a field not listed here stays in
/// the key, so a class is never too wide, at worst narrower than it could be.
pub fn class_key(spec: &JobSpec) -> Vec<u8> {
    use prost::Message;
    let mut k = spec.clone();
    k.queue.clear();
    k.priority = 0;
    k.timeout_ms = None;
    k.retries = None;
    k.agent_lost_retries = None;
    k.expire_after_ms = None;
    k.allow_unmatched = false;
    k.labels.clear();
    k.name.clear();
    k.dedup_key.clear();
    k.retry_failed = 0;
    // Maps encode in no fixed order: their names go after, sorted.
    let mut names: Vec<String> = std::mem::take(&mut k.env).into_keys().collect();
    names.sort();
    let mut secret: Vec<String> = std::mem::take(&mut k.secret_env).into_keys().collect();
    secret.sort();
    let mut key = k.encode_to_vec();
    for name in names.iter().chain([&String::new()]).chain(&secret) {
        key.push(0);
        key.extend_from_slice(name.as_bytes());
    }
    key
}

/// True when an agent with these capabilities may run the job.
pub fn fits(req: &Requirement, spec: &JobSpec, attrs: &Attributes, caps: &Capabilities) -> bool {
    if !req.matches(attrs)
        || policy_refusal(spec, caps).is_some()
        || pytest_missing(spec, caps).is_some()
        || memory_unenforced(spec, caps).is_some()
        || crate::devices::shortfall(spec, caps).is_some()
    {
        return false;
    }
    match source_dir(spec) {
        Some(dir) => caps.roots.iter().any(|root| under_root(dir, root)),
        None => true,
    }
}

/// Why a pytest job cannot run on this agent because its probe found no
/// pytest (or no runnable interpreter): "pytest is not installed for
/// /usr/bin/python3". `None` for other kinds, when the probe found pytest, and
/// when the agent reported no host facts at all (a simulated agent: nothing
/// was probed, so nothing is known to be missing). A host that was probed and
/// found no pytest is excluded: its pytest job could only end `error`.
/// The agent holds what the job's environment and caches need (`Capabilities.
/// environment_usage`): an environment filed under the job's affinity key, and every cache
/// the job names. False for a job with neither (no agent is preferred).
pub fn warm_for(spec: &JobSpec, caps: &Capabilities) -> bool {
    let Some(u) = &caps.environment_usage else {
        return false;
    };
    let affinity = msfleet_proto::environment::affinity(spec);
    if affinity.is_none() && spec.caches.is_empty() {
        return false;
    }
    let env_warm = affinity.is_none_or(|k| u.environments.iter().any(|e| e.affinity.contains(&k)));
    let caches_warm = spec.caches.iter().all(|c| {
        msfleet_proto::environment::cache_var(c)
            .is_ok_and(|(name, _)| u.caches.iter().any(|h| h.name == name))
    });
    env_warm && caches_warm
}

pub fn pytest_missing(spec: &JobSpec, caps: &Capabilities) -> Option<String> {
    if spec.kind != "pytest" {
        return None;
    }
    let h = caps.host.as_ref()?;
    if !h.pytest_version.is_empty() {
        return None;
    }
    let python = if h.python.is_empty() {
        "its python"
    } else {
        h.python.as_str()
    };
    let python = crate::clip(python);
    Some(if h.python_version.is_empty() {
        format!("pytest is not installed for {python} (the interpreter could not be run)")
    } else {
        format!(
            "pytest is not installed for {python} (python {})",
            crate::clip(&h.python_version)
        )
    })
}

/// Why the job's memory limit cannot go to this agent: it does not report
/// that it can enforce one (no cgroup memory controller), and a limit is
/// never silently dropped. `None` for a job without a limit.
pub fn memory_unenforced(spec: &JobSpec, caps: &Capabilities) -> Option<String> {
    let limit = spec.memory_limit_bytes?;
    (!caps.enforces_memory).then(|| {
        let how = if caps.containment.is_empty() {
            "unknown".into()
        } else {
            crate::clip(&caps.containment)
        };
        format!(
            "cannot enforce a memory limit of {} (containment: {how})",
            msfleet_proto::memory::format(limit)
        )
    })
}

/// Why the agent's published policy refuses the job; `None` when it admits it
/// (or the agent published none: then the agent alone decides).
pub fn policy_refusal(spec: &JobSpec, caps: &Capabilities) -> Option<String> {
    let p = caps.policy.as_ref()?;
    msfleet_proto::policy::admits(p, spec).err()
}

/// When there are registered agents and the policy of every one of them
/// refuses the job: the refusals, by agent (agents that give the same reason
/// are named together).
pub fn refused_by_every_policy<'a>(
    spec: &JobSpec,
    agents: impl IntoIterator<Item = (&'a str, &'a Capabilities)>,
) -> Option<String> {
    let mut reasons: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    let mut any = false;
    for (name, caps) in agents {
        any = true;
        reasons
            .entry(policy_refusal(spec, caps)?)
            .or_default()
            .push(name);
    }
    if !any {
        return None;
    }
    let list: Vec<String> = reasons
        .into_iter()
        .map(|(why, names)| format!("{}: {why}", names.join(", ")))
        .collect();
    Some(format!(
        "no registered agent's policy admits this job ({})",
        list.join("; ")
    ))
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
    fn a_memory_limit_goes_only_to_agents_that_enforce_one() {
        let mut c = caps();
        c.containment = "subreaper".into();
        let attrs = attributes("a1", &c);
        let any = Requirement::parse("").unwrap();
        let mut job = spec("/srv/work/proj");
        assert!(fits(&any, &job, &attrs, &c), "no limit: any agent");
        job.memory_limit_bytes = Some(512 << 20);
        assert!(!fits(&any, &job, &attrs, &c));
        assert_eq!(
            memory_unenforced(&job, &c).as_deref(),
            Some("cannot enforce a memory limit of 512 MiB (containment: subreaper)")
        );
        c.enforces_memory = true;
        c.containment = "cgroup-v1".into();
        assert!(fits(&any, &job, &attrs, &c));
        assert_eq!(memory_unenforced(&job, &c), None);
    }

    #[test]
    fn the_agents_policy_decides_too() {
        let mut c = caps();
        let attrs = attributes("a1", &c);
        let any = Requirement::parse("").unwrap();
        let mut job = spec("/srv/work/proj");
        job.env.insert("LD_PRELOAD".into(), "/tmp/evil.so".into());
        assert!(
            fits(&any, &job, &attrs, &c),
            "no published policy: the agent decides"
        );
        c.policy = Some(msfleet_proto::policy::defaults());
        assert!(!fits(&any, &job, &attrs, &c));
        assert!(fits(&any, &spec("/srv/work/proj"), &attrs, &c));
        let other = Capabilities {
            policy: Some(msfleet_proto::AgentPolicy {
                allow_env: vec!["LD_PRELOAD".into()],
                ..msfleet_proto::policy::defaults()
            }),
            ..caps()
        };
        assert_eq!(
            refused_by_every_policy(&job, [("a1", &c), ("a2", &c)]).as_deref(),
            Some(
                "no registered agent's policy admits this job (a1, a2: the agent's policy \
                 refuses environment variable LD_PRELOAD (deny_env; the agent's allow_env \
                 lets it through))"
            )
        );
        assert_eq!(
            refused_by_every_policy(&job, [("a1", &c), ("a2", &other)]),
            None
        );
        assert_eq!(refused_by_every_policy(&job, []), None);
    }

    #[test]
    fn a_pytest_job_does_not_fit_a_host_probed_without_pytest() {
        let any = Requirement::parse("").unwrap();
        let host = |python_version: &str, pytest_version: &str| Capabilities {
            host: Some(HostInfo {
                python: "/opt/py/bin/python3".into(),
                python_version: python_version.into(),
                pytest_version: pytest_version.into(),
                ..Default::default()
            }),
            ..caps()
        };
        let job = spec("/srv/work/proj");
        let with = |k: &str| JobSpec {
            kind: k.into(),
            ..job.clone()
        };
        let ok = host("3.12.1", "9.0.1");
        assert!(fits(&any, &with("pytest"), &attributes("a", &ok), &ok));
        let bare = host("3.12.1", "");
        assert!(!fits(&any, &with("pytest"), &attributes("a", &bare), &bare));
        assert_eq!(
            pytest_missing(&with("pytest"), &bare).as_deref(),
            Some("pytest is not installed for /opt/py/bin/python3 (python 3.12.1)")
        );
        let none = host("", "");
        assert_eq!(
            pytest_missing(&with("pytest"), &none).as_deref(),
            Some("pytest is not installed for /opt/py/bin/python3 (the interpreter could not be run)")
        );
        // Only pytest needs pytest: a benchmark runs its own command.
        assert!(fits(
            &any,
            &with("benchmark"),
            &attributes("a", &bare),
            &bare
        ));
        // An agent that reported no host facts (simulated) was not probed: it fits as before.
        let unprobed = Capabilities {
            host: None,
            ..caps()
        };
        assert!(fits(
            &any,
            &with("pytest"),
            &attributes("a", &unprobed),
            &unprobed
        ));
        assert_eq!(pytest_missing(&with("pytest"), &unprobed), None);
    }

    #[test]
    fn under_root_compares_whole_components() {
        assert!(under_root("/srv/work", "/srv/work"));
        assert!(under_root("/srv/work/a/b", "/srv/work/"));
        assert!(!under_root("/srv/workshop", "/srv/work"));
        assert!(!under_root("/srv/work", "relative"));
    }
}

#[cfg(test)]
mod warm_tests {
    use super::*;
    use msfleet_proto::{EnvironmentEntry, EnvironmentSpec, EnvironmentUsage};

    fn job(url: &str, caches: &[&str]) -> JobSpec {
        JobSpec {
            source: Some(msfleet_proto::Source {
                kind: Some(msfleet_proto::source::Kind::Git(msfleet_proto::GitSource {
                    url: url.into(),
                    r#ref: "main".into(),
                })),
            }),
            environment: Some(EnvironmentSpec {
                install_project: Some(String::new()),
                ..Default::default()
            }),
            caches: caches.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        }
    }

    fn holding(affinity: Option<String>, caches: &[&str]) -> Capabilities {
        Capabilities {
            environment_usage: Some(EnvironmentUsage {
                environments: vec![EnvironmentEntry {
                    name: "k".into(),
                    affinity: affinity.into_iter().collect(),
                    ..Default::default()
                }],
                caches: caches
                    .iter()
                    .map(|c| EnvironmentEntry {
                        name: c.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn warm_means_the_jobs_environment_and_every_cache_it_names() {
        let a = job("https://x/a.git", &["huggingface"]);
        let key = msfleet_proto::environment::affinity(&a);
        assert!(key.is_some());
        assert!(warm_for(&a, &holding(key.clone(), &["huggingface"])));
        assert!(!warm_for(&a, &holding(key.clone(), &[])), "a cache missing");
        let b = job("https://x/b.git", &["huggingface"]);
        assert!(
            !warm_for(&b, &holding(key.clone(), &["huggingface"])),
            "another project"
        );
        assert!(!warm_for(&a, &Capabilities::default()), "nothing reported");
        let mut plain = a.clone();
        plain.environment = None;
        plain.caches.clear();
        assert!(
            !warm_for(&plain, &holding(key, &["huggingface"])),
            "no preference at all"
        );
    }
}
