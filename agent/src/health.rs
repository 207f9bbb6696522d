//! The agent's judgement of its own host, in one place: [`assess`] turns probe
//! facts into a `HealthSummary` (ok, or degraded with one reason per problem).
//! The periodic probe ([`probe`], every `--probe-interval`) sends it with the
//! capabilities, and a health-check job ([`run_check`], `msctl agent check`)
//! passes or fails on it, with pytest's presence as one more rule.

use crate::attempt::{halted, AttemptSpec, Halt, StopReason, Updates};
use crate::config::AgentConfig;
use crate::probe::HardwareFacts;
use msfleet_proto::devices::{gpu_healthy, npu_healthy};
use msfleet_proto::{task_update, Capabilities, Finished, HealthSummary, Outcome, Started};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The job kind of a health check (the scheduler makes them: `CheckAgent`).
pub const CHECK_KIND: &str = "check";

/// The host's health from `facts`: disk free on the work dir at least
/// `min_disk_free_mb`; with `need_pytest` (a health check), also pytest
/// importable by the agent's python. **A device is judged on its own**, not
/// here: an unhealthy GPU or NPU ([`withheld`]) is withheld from assignment
/// by the scheduler while the rest of the host keeps working, so it never
/// degrades (and quarantines) the host — except a device a leftover process
/// holds and the agent could not kill ([`crate::leftover`], `facts.held`):
/// that degrades the host, one reason per device.
pub fn assess(facts: &HardwareFacts, min_disk_free_mb: u64, need_pytest: bool) -> HealthSummary {
    let mut reasons = facts.held.clone();
    let h = &facts.host;
    if h.disk_free_mb < min_disk_free_mb {
        reasons.push(format!(
            "disk free {} < {}",
            gigabytes(h.disk_free_mb),
            gigabytes(min_disk_free_mb)
        ));
    }
    if need_pytest {
        if h.python_version.is_empty() {
            reasons.push(format!("python {} could not be run", h.python));
        } else if h.pytest_version.is_empty() {
            reasons.push(format!("pytest is not importable by {}", h.python));
        }
    }
    HealthSummary {
        status: if reasons.is_empty() { "ok" } else { "degraded" }.into(),
        reasons,
        probed_at_ms: crate::now_ms(),
    }
}

/// The devices the probe found unhealthy, one line each ("gpu 3: uncorrected
/// ECC errors (12)", "npu 5: Alarm"): the scheduler assigns none of them (the
/// same rule, `msfleet_proto::devices`).
pub fn withheld(facts: &HardwareFacts) -> Vec<String> {
    let mut out = Vec::new();
    for g in &facts.gpus {
        if !gpu_healthy(&g.health) {
            out.push(format!("gpu {}: {}", g.index, g.health));
        }
    }
    for c in &facts.npus.cards {
        if !npu_healthy(&c.health) {
            let health = if c.health.is_empty() {
                "no health reported"
            } else {
                c.health.as_str()
            };
            let chip = if c.chip == 0 {
                String::new()
            } else {
                format!(" chip {}", c.chip)
            };
            out.push(format!("npu {}{chip}: {health}", c.id));
        }
    }
    out
}

/// `2.0 GB` from MiB, one decimal (`64 MB` under 100 MiB).
fn gigabytes(mb: u64) -> String {
    if mb < 100 {
        format!("{mb} MB")
    } else {
        format!("{:.1} GB", mb as f64 / 1024.0)
    }
}

/// Probes the host off the async threads (npu-smi, python and NVML block) and
/// builds the capability report, health included.
pub async fn probe(cfg: &Arc<AgentConfig>) -> (HardwareFacts, Capabilities) {
    let c = cfg.clone();
    let facts = tokio::task::spawn_blocking(move || {
        let mut facts = crate::probe::probe_all(&c.work_dir, &c.python, &c.npu_smi);
        crate::leftover::apply(&mut facts);
        facts
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "the probe panicked");
        HardwareFacts {
            notes: vec![format!("the probe panicked: {e}")],
            ..Default::default()
        }
    });
    let mut caps = crate::capabilities::report(cfg, &facts);
    let (work_dir, budget) = (cfg.work_dir.clone(), cfg.cache_budget);
    caps.environment_usage =
        tokio::task::spawn_blocking(move || crate::environment::usage(&work_dir, budget))
            .await
            .ok();
    (facts, caps)
}

/// Asks [`probe_every`] for a probe now (a device was just withheld: the
/// scheduler must hear it before `--probe-interval` is up).
pub fn probe_now() {
    PROBE_NOW.notify_one();
}

static PROBE_NOW: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Probes again every `--probe-interval` (and at once on [`probe_now`]) and publishes the fresh
/// capabilities on `to` (the session sends them); ends when nobody listens.
pub async fn probe_every(cfg: Arc<AgentConfig>, to: watch::Sender<Option<Capabilities>>) {
    let mut every = tokio::time::interval(cfg.probe_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await; // the first tick is now: the start-up probe covered it
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = PROBE_NOW.notified() => {}
            _ = to.closed() => return,
        }
        let (_, caps) = probe(&cfg).await;
        if let Some(h) = &caps.health {
            if h.status != "ok" {
                tracing::warn!(reasons = ?h.reasons, "probe: host degraded");
            }
        }
        if to.send(Some(caps)).is_err() {
            return;
        }
    }
}

/// A health-check job: probe now, publish the fresh capabilities on
/// `publish`, and pass or fail on [`assess`] (pytest included), the findings
/// in the log and the reason.
pub async fn run_check(
    cfg: Arc<AgentConfig>,
    a: AttemptSpec,
    tx: Updates,
    publish: watch::Sender<Option<Capabilities>>,
    stop: watch::Receiver<Option<StopReason>>,
) {
    tx.send(task_update::Kind::Started(Started {}));
    let (facts, caps) = probe(&cfg).await;
    let verdict = assess(&facts, cfg.min_disk_free_mb, true);
    tx.log("stdout", findings(&cfg, &facts, &verdict));
    let _ = publish.send(Some(caps));
    let stopped = stop.borrow().clone();
    let f = match stopped {
        Some(why) => halted(Halt::Stop(why), Duration::ZERO, -1),
        None if verdict.reasons.is_empty() => Some(Finished {
            outcome: Outcome::Passed as i32,
            reason: format!("healthy: {}", summary_line(&facts, cfg.min_disk_free_mb)),
            exit_code: 0,
            ..Default::default()
        }),
        None => Some(Finished {
            outcome: Outcome::Failed as i32,
            reason: format!("unhealthy: {}", verdict.reasons.join("; ")),
            exit_code: 1,
            ..Default::default()
        }),
    };
    if let Some(f) = f {
        tracing::info!(task = %a.task_id, outcome = ?f.outcome(), reason = %f.reason, "health check finished");
        tx.send(task_update::Kind::Finished(f));
    }
}

/// What the check looked at, one line per rule.
fn findings(cfg: &AgentConfig, facts: &HardwareFacts, verdict: &HealthSummary) -> String {
    let h = &facts.host;
    let mut out = format!("msfleet health check of agent {}\n", cfg.name);
    out += &format!(
        "disk free {} on {} (threshold {})\n",
        gigabytes(h.disk_free_mb),
        cfg.work_dir.display(),
        gigabytes(cfg.min_disk_free_mb)
    );
    out += &format!(
        "python {}: {} pytest {}\n",
        h.python,
        or_missing(&h.python_version),
        or_missing(&h.pytest_version)
    );
    for g in &facts.gpus {
        out += &format!("gpu {} {}: {}\n", g.index, g.name, g.health);
    }
    for c in &facts.npus.cards {
        out += &format!("npu {} chip {} {}: {}\n", c.id, c.chip, c.name, c.health);
    }
    for n in &facts.notes {
        out += &format!("note: {n}\n");
    }
    let withheld = withheld(facts);
    if !withheld.is_empty() {
        out += &format!("withheld from jobs: {}\n", withheld.join("; "));
    }
    out += &match verdict.reasons.as_slice() {
        [] => "healthy\n".to_string(),
        r => format!("unhealthy: {}\n", r.join("; ")),
    };
    out
}

fn or_missing(v: &str) -> &str {
    if v.is_empty() {
        "missing"
    } else {
        v
    }
}

/// The reason of a passing check: what was found fine.
fn summary_line(facts: &HardwareFacts, min_disk_free_mb: u64) -> String {
    let sick_gpus = facts
        .gpus
        .iter()
        .filter(|g| !gpu_healthy(&g.health))
        .count();
    let sick_npus = facts
        .npus
        .cards
        .iter()
        .filter(|c| !npu_healthy(&c.health))
        .count();
    let mut line = format!(
        "disk free {} >= {}, pytest {}, {} gpus and {} npus healthy",
        gigabytes(facts.host.disk_free_mb),
        gigabytes(min_disk_free_mb),
        facts.host.pytest_version,
        facts.gpus.len() - sick_gpus,
        facts.npus.cards.len() - sick_npus
    );
    let withheld = withheld(facts);
    if !withheld.is_empty() {
        line += &format!(" (withheld: {})", withheld.join("; "));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{npu, GpuFacts, HostFacts};

    fn facts(disk_free_mb: u64) -> HardwareFacts {
        HardwareFacts {
            host: HostFacts {
                disk_free_mb,
                python: "/usr/bin/python3".into(),
                python_version: "3.12.1".into(),
                pytest_version: "8.3.2".into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_healthy_host_is_ok() {
        let h = assess(&facts(30 * 1024), 2048, true);
        assert_eq!(h.status, "ok");
        assert!(h.reasons.is_empty());
    }

    #[test]
    fn each_problem_is_one_reason() {
        let mut f = facts(410);
        f.host.pytest_version.clear();
        f.gpus = vec![
            GpuFacts {
                index: 0,
                health: "ok".into(),
                ..Default::default()
            },
            GpuFacts {
                index: 3,
                health: "uncorrected ECC errors (12)".into(),
                ..Default::default()
            },
        ];
        let table = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/npu-smi/info-910b-8card-24.1.0.txt"
        ))
        .expect("fixture");
        let sick = table.replacen(
            "| 5     910B                | OK            |",
            "| 5     910B                | Alarm         |",
            1,
        );
        assert_ne!(sick, table, "the fixture has card 5");
        f.npus = npu::parse_info(&sick).expect("parses");
        let h = assess(&f, 2048, false);
        assert_eq!(h.status, "degraded");
        assert_eq!(h.reasons, vec!["disk free 0.4 GB < 2.0 GB"]);
        assert_eq!(
            withheld(&f),
            vec!["gpu 3: uncorrected ECC errors (12)", "npu 5: Alarm"]
        );
        // A sick device alone leaves the host ok: it is withheld, the rest works.
        f.host.disk_free_mb = 30 * 1024;
        f.host.pytest_version = "8.3.2".into();
        assert_eq!(assess(&f, 2048, true).status, "ok");
        assert!(summary_line(&f, 2048).ends_with(
            "1 gpus and 7 npus healthy (withheld: gpu 3: uncorrected ECC errors (12); npu 5: Alarm)"
        ));
        f.host.disk_free_mb = 410;
        f.host.pytest_version.clear();
        assert_eq!(
            assess(&facts(20), 64, false).reasons,
            ["disk free 20 MB < 64 MB"]
        );
        let check = assess(&f, 2048, true);
        assert_eq!(
            check.reasons.last().map(String::as_str),
            Some("pytest is not importable by /usr/bin/python3")
        );
    }
}
