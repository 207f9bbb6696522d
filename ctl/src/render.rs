//! How msctl shows things: JSON objects for `--json`, and plain text for people.

use msfleet_proto::{job_event, source, Agent, Job, JobEvent, JobState, Queue, TestCounts};
use serde_json::{json, Value};

pub fn counts_json(c: &TestCounts) -> Value {
    json!({
        "passed": c.passed, "failed": c.failed, "skipped": c.skipped,
        "xfailed": c.xfailed, "xpassed": c.xpassed, "errors": c.errors, "total": c.total,
    })
}

pub fn job_json(j: &Job) -> Value {
    let spec = j.spec.clone().unwrap_or_default();
    let src = match spec.source.and_then(|s| s.kind) {
        Some(source::Kind::Dir(d)) => json!({ "dir": d }),
        Some(source::Kind::Git(g)) => json!({ "git": g.url, "ref": g.r#ref }),
        None => Value::Null,
    };
    json!({
        "id": j.id,
        "name": spec.name,
        "state": j.state().label(),
        "reason": j.reason,
        "queue": spec.queue,
        "priority": spec.priority,
        "requirements": spec.requirements,
        "source": src,
        "args": spec.args,
        "timeout_ms": spec.timeout_ms,
        "retries": spec.retries,
        "labels": spec.labels,
        "attempts": j.attempts,
        "agent": if j.agent.is_empty() { Value::Null } else { json!(j.agent) },
        "tests": counts_json(&j.tests.unwrap_or_default()),
        "warnings": j.warnings,
        "submitted_at_ms": j.submitted_at_ms,
        "started_at_ms": nonzero(j.started_at_ms),
        "finished_at_ms": nonzero(j.finished_at_ms),
        "last_event_seq": j.last_event_seq,
    })
}

fn nonzero(v: i64) -> Value {
    if v == 0 {
        Value::Null
    } else {
        json!(v)
    }
}

pub fn agent_json(a: &Agent) -> Value {
    let caps = a.capabilities.clone().unwrap_or_default();
    let host = caps.host.clone().unwrap_or_default();
    json!({
        "name": a.name,
        "admin": a.admin().label(),
        "connected": a.connected,
        "last_seen_ms": a.last_seen_ms,
        "running": a.running,
        "profile": caps.profile,
        "slots": caps.slots,
        "labels": caps.labels,
        "roots": caps.roots,
        "host": {
            "hostname": host.hostname, "os": host.os, "arch": host.arch,
            "cpu_model": host.cpu_model, "cores": host.cores, "memory_mb": host.memory_mb,
            "disk_free_mb": host.disk_free_mb, "python": host.python,
            "python_version": host.python_version, "pytest_version": host.pytest_version,
        },
        "gpus": caps.gpus.iter().map(|g| json!({
            "index": g.index, "name": g.name, "uuid": g.uuid, "pci_bus_id": g.pci_bus_id,
            "memory_mb": g.memory_mb, "driver_version": g.driver_version,
            "cuda_driver_version": g.cuda_driver_version,
            "compute_capability": g.compute_capability, "mig_mode": g.mig_mode,
            "power_limit_w": g.power_limit_w, "health": g.health,
        })).collect::<Vec<_>>(),
        "npus": caps.npus.iter().map(|n| json!({
            "id": n.id, "chip": n.chip, "name": n.name, "hbm_mb": n.hbm_mb, "health": n.health,
            "power_w": n.power_w, "driver_version": n.driver_version,
            "firmware_version": n.firmware_version, "cann_version": n.cann_version,
        })).collect::<Vec<_>>(),
    })
}

pub fn queue_json(q: &Queue) -> Value {
    json!({ "name": q.name, "pending": q.pending, "running": q.running, "aging_s": q.aging_s })
}

pub fn event_json(job: &str, e: &JobEvent) -> Value {
    let mut v = json!({ "job": job, "seq": e.seq, "time_ms": e.time_ms, "attempt": e.attempt });
    match &e.kind {
        Some(job_event::Kind::State(s)) => {
            v["type"] = json!("state");
            v["state"] = json!(s.state().label());
            v["reason"] = json!(s.reason);
            v["agent"] = json!(s.agent);
        }
        Some(job_event::Kind::Log(l)) => {
            v["type"] = json!("log");
            v["stream"] = json!(l.stream);
            v["data"] = json!(String::from_utf8_lossy(&l.data));
        }
        Some(job_event::Kind::Test(t)) => {
            v["type"] = json!("test");
            v["nodeid"] = json!(t.nodeid);
            v["when"] = json!(t.when);
            v["outcome"] = json!(t.outcome);
            v["duration_s"] = json!(t.duration_s);
            v["longrepr"] = json!(t.longrepr);
            v["markers"] = json!(t.markers);
        }
        None => v["type"] = json!("unknown"),
    }
    v
}

/// pytest-style summary: "1 failed, 8 passed, 2 skipped".
pub fn counts_line(c: &TestCounts) -> String {
    let parts: Vec<String> = [
        (c.failed, "failed"),
        (c.passed, "passed"),
        (c.skipped, "skipped"),
        (c.xfailed, "xfailed"),
        (c.xpassed, "xpassed"),
        (c.errors, if c.errors == 1 { "error" } else { "errors" }),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if parts.is_empty() {
        "no tests".into()
    } else {
        parts.join(", ")
    }
}

pub fn job_text(j: &Job) -> String {
    let spec = j.spec.clone().unwrap_or_default();
    let mut out = format!("job {}  {}\n", j.id, spec.name);
    out += &format!("  state:     {}", j.state().label());
    if !j.reason.is_empty() {
        out += &format!(" ({})", j.reason);
    }
    out += "\n";
    out += &format!("  queue:     {} (priority {})\n", spec.queue, spec.priority);
    match spec.source.and_then(|s| s.kind) {
        Some(source::Kind::Dir(d)) => out += &format!("  source:    {d}\n"),
        Some(source::Kind::Git(g)) => out += &format!("  source:    {} @ {}\n", g.url, g.r#ref),
        None => {}
    }
    if !spec.args.is_empty() {
        out += &format!("  pytest:    {}\n", spec.args.join(" "));
    }
    if !spec.requirements.is_empty() {
        out += &format!("  requires:  {}\n", spec.requirements);
    }
    out += &format!(
        "  attempts:  {}{}\n",
        j.attempts,
        if j.agent.is_empty() {
            String::new()
        } else {
            format!(" (agent {})", j.agent)
        }
    );
    out += &format!(
        "  tests:     {}\n",
        counts_line(&j.tests.unwrap_or_default())
    );
    for w in &j.warnings {
        out += &format!("  warning:   {w}\n");
    }
    out
}

pub fn state_is_success(s: JobState) -> bool {
    s == JobState::Passed
}

/// A fixed-width table with a header row.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s += c;
            } else {
                s += &format!("{c:<w$}  ", w = widths[i]);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out += &line(r.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reads_like_pytest() {
        let c = TestCounts {
            passed: 8,
            failed: 1,
            skipped: 2,
            xfailed: 1,
            xpassed: 1,
            errors: 1,
            total: 14,
        };
        assert_eq!(
            counts_line(&c),
            "1 failed, 8 passed, 2 skipped, 1 xfailed, 1 xpassed, 1 error"
        );
        assert_eq!(counts_line(&TestCounts::default()), "no tests");
    }
}
