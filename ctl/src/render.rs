//! How msctl shows things: JSON objects for `--json`, and plain text for people.

use msfleet_proto::{
    job_event, source, Agent, Baseline, BenchmarkSpec, CaseResult, ChangePoint, Explanation, Job,
    JobEvent, JobSpec, JobState, MetricSummary, NoiseEstimate, OperatorTime, Queue, Schedule,
    TestCounts,
};
use serde_json::{json, Map, Value};

pub fn counts_json(c: &TestCounts) -> Value {
    json!({
        "passed": c.passed, "failed": c.failed, "skipped": c.skipped,
        "xfailed": c.xfailed, "xpassed": c.xpassed, "errors": c.errors, "flaky": c.flaky,
        "total": c.total, "subtests_passed": c.subtests_passed,
        "subtests_failed": c.subtests_failed,
    })
}

pub fn test_run_json(r: &msfleet_proto::TestRun) -> Value {
    json!({
        "job_id": r.job_id, "time_ms": r.time_ms, "profile": r.profile, "agent": r.agent,
        "attempt": r.attempt, "when": r.when, "outcome": r.outcome, "duration_s": r.duration_s,
    })
}

/// A test's runs grouped by hardware profile, newest first within each.
pub fn test_history_text(test_id: &str, runs: &[msfleet_proto::TestRun]) -> String {
    let mut by_profile: std::collections::BTreeMap<&str, Vec<&msfleet_proto::TestRun>> =
        Default::default();
    for r in runs {
        by_profile.entry(r.profile.as_str()).or_default().push(r);
    }
    let mut out = format!("{test_id}\n");
    for (profile, runs) in by_profile {
        let profile = if profile.is_empty() { "-" } else { profile };
        out += &format!("  profile {profile}\n");
        let rows: Vec<Vec<String>> = runs
            .iter()
            .map(|r| {
                vec![
                    r.job_id.clone(),
                    format_ms_utc(r.time_ms),
                    r.outcome.clone(),
                    format!("{:.3}s", r.duration_s),
                    r.when.clone(),
                    r.agent.clone(),
                ]
            })
            .collect();
        for line in table(
            &["JOB", "TIME (UTC)", "OUTCOME", "DURATION", "PHASE", "AGENT"],
            &rows,
        )
        .lines()
        {
            out += &format!("    {line}\n");
        }
    }
    out
}

fn format_ms_utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn source_json(spec: &JobSpec) -> Value {
    match spec.source.as_ref().and_then(|s| s.kind.as_ref()) {
        Some(source::Kind::Dir(d)) => json!({ "dir": d }),
        Some(source::Kind::Git(g)) => json!({ "git": g.url, "ref": g.r#ref }),
        None => Value::Null,
    }
}

/// A string, or null when empty.
fn text_or_null(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        json!(s)
    }
}

pub fn job_json(j: &Job) -> Value {
    // The scheduler already redacts; msctl never prints a secret value either.
    let spec = msfleet_proto::secrets::redacted(&j.spec.clone().unwrap_or_default());
    let src = source_json(&spec);
    let benchmark = match &spec.benchmark {
        Some(b) => benchmark_json(b),
        None => Value::Null,
    };
    json!({
        "id": j.id,
        "kind": spec.kind,
        "name": spec.name,
        "state": j.state().label(),
        "reason": j.reason,
        "queue": spec.queue,
        "priority": spec.priority,
        "requirements": spec.requirements,
        "source": src,
        "args": spec.args,
        "timeout_ms": spec.timeout_ms,
        "memory_limit_bytes": spec.memory_limit_bytes,
        "gpus": spec.gpus,
        "npus": spec.npus,
        "gpu_memory_bytes": spec.gpu_memory_bytes,
        "npu_memory_bytes": spec.npu_memory_bytes,
        "devices": j.devices.iter().map(device_json).collect::<Vec<_>>(),
        "setup": j.environment.as_ref().map_or(Value::Null, environment_ready_json),
        "environment": environment_json(&spec),
        "caches": spec.caches,
        "retries": spec.retries,
        "agent_lost_retries": spec.agent_lost_retries,
        "retry_failed": spec.retry_failed,
        "env": spec.env,
        "secret_env": spec.secret_env,
        "labels": spec.labels,
        "attempts": j.attempts,
        "agent_lost": j.agent_lost,
        "lost_retried": j.lost_retried,
        "quarantined_attempts": j.quarantined_attempts,
        "agent": if j.agent.is_empty() { Value::Null } else { json!(j.agent) },
        "tests": counts_json(&j.tests.unwrap_or_default()),
        "warnings": j.warnings,
        "submitted_at_ms": j.submitted_at_ms,
        "submitted_by": j.submitted_by,
        "started_at_ms": nonzero(j.started_at_ms),
        "finished_at_ms": nonzero(j.finished_at_ms),
        "last_event_seq": j.last_event_seq,
        "benchmark": benchmark,
        "cases": j.cases.iter().map(case_json).collect::<Vec<_>>(),
        "schedule": text_or_null(&j.schedule),
        "slot_ms": nonzero(j.slot_ms),
        "dedup_key": text_or_null(&spec.dedup_key),
        "deduplicated": j.deduplicated,
        "fanout": text_or_null(&spec.fanout),
        "shards": spec.shards,
        "parent": text_or_null(&j.parent),
        "children": j.children,
        "not_run": j.not_run,
        "column": text_or_null(&j.column),
    })
}

/// The job's environment (`null` without one).
fn environment_json(spec: &JobSpec) -> Value {
    spec.environment.as_ref().map_or(Value::Null, |e| {
        json!({
            "setup": e.setup,
            "requirements": e.requirements,
            "install_project": e.install_project,
            "system_site_packages": e.system_site_packages,
        })
    })
}

/// The job spec on its own (a schedule's job): what runs, where, from what.
pub fn spec_json(spec: &JobSpec) -> Value {
    let spec = &msfleet_proto::secrets::redacted(spec);
    json!({
        "kind": spec.kind,
        "name": spec.name,
        "queue": spec.queue,
        "priority": spec.priority,
        "requirements": spec.requirements,
        "source": source_json(spec),
        "args": spec.args,
        "timeout_ms": spec.timeout_ms,
        "memory_limit_bytes": spec.memory_limit_bytes,
        "gpus": spec.gpus,
        "npus": spec.npus,
        "gpu_memory_bytes": spec.gpu_memory_bytes,
        "npu_memory_bytes": spec.npu_memory_bytes,
        "environment": environment_json(spec),
        "caches": spec.caches,
        "retries": spec.retries,
        "agent_lost_retries": spec.agent_lost_retries,
        "retry_failed": spec.retry_failed,
        "env": spec.env,
        "secret_env": spec.secret_env,
        "labels": spec.labels,
        "dedup_key": text_or_null(&spec.dedup_key),
        "benchmark": spec.benchmark.as_ref().map_or(Value::Null, benchmark_json),
    })
}

/// `ms` as a wall-clock time in the IANA zone `tz` (`2026-11-23 02:00 CST`,
/// the scheduler's `next_local` format); "-" for no time. An unknown zone
/// falls back to UTC.
pub fn local_time(ms: i64, tz: &str) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let Some(utc) = chrono::DateTime::from_timestamp_millis(ms) else {
        return format!("{ms} ms");
    };
    match tz.parse::<chrono_tz::Tz>() {
        Ok(zone) => utc
            .with_timezone(&zone)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string(),
        Err(_) => utc.format("%Y-%m-%d %H:%M UTC").to_string(),
    }
}

/// The schedule's next fire time in its zone, as the scheduler wrote it
/// (or computed here when only `next_ms` came); "-" for none.
pub fn schedule_next(s: &Schedule) -> String {
    if !s.next_local.is_empty() {
        s.next_local.clone()
    } else {
        local_time(s.next_ms, &s.tz)
    }
}

pub fn schedule_json(s: &Schedule) -> Value {
    let spec = s.spec.clone().unwrap_or_default();
    json!({
        "name": s.name,
        "cron": s.cron,
        "tz": s.tz,
        "misfire": s.misfire,
        "overlap": s.overlap,
        "paused": s.paused,
        "created_ms": nonzero(s.created_ms),
        "created_by": s.created_by,
        "paused_by": s.paused_by,
        "paused_ms": nonzero(s.paused_ms),
        "last_slot_ms": s.last_slot_ms,
        "last_slot_local": s.last_slot_ms.map(|ms| local_time(ms, &s.tz)),
        "last_job_id": text_or_null(&s.last_job_id),
        "last_state": text_or_null(&s.last_state),
        "next_ms": nonzero(s.next_ms),
        "next_local": text_or_null(&s.next_local),
        "spec": spec_json(&spec),
    })
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// One `schedule list` row: NAME CRON TZ NEXT PAUSED LAST-JOB LAST-STATE.
pub fn schedule_row(s: &Schedule) -> Vec<String> {
    vec![
        s.name.clone(),
        s.cron.clone(),
        dash(&s.tz),
        schedule_next(s),
        if s.paused { "yes" } else { "no" }.into(),
        dash(&s.last_job_id),
        dash(&s.last_state),
    ]
}

pub fn schedules_table(schedules: &[Schedule]) -> String {
    let rows: Vec<Vec<String>> = schedules.iter().map(schedule_row).collect();
    table(
        &[
            "NAME",
            "CRON",
            "TZ",
            "NEXT",
            "PAUSED",
            "LAST-JOB",
            "LAST-STATE",
        ],
        &rows,
    )
}

/// One line about a schedule: `nightly: 0 2 * * * Asia/Shanghai, next 2026-11-23 02:00 CST`.
pub fn schedule_line(s: &Schedule) -> String {
    let next = if s.paused {
        "paused".to_string()
    } else {
        format!("next {}", schedule_next(s))
    };
    format!("{}: {} {}, {next}", s.name, s.cron, dash(&s.tz))
}

/// `schedule show`: timing, policies, the job it submits, its last run.
pub fn schedule_text(s: &Schedule) -> String {
    let spec = s.spec.clone().unwrap_or_default();
    let mut out = format!("schedule {}\n", s.name);
    out += &format!("  cron:      {} ({})\n", s.cron, dash(&s.tz));
    out += &format!(
        "  next:      {}{}\n",
        schedule_next(s),
        if s.paused { " (paused)" } else { "" }
    );
    out += &format!("  paused:    {}", if s.paused { "yes" } else { "no" });
    if !s.paused_by.is_empty() {
        let what = if s.paused { "paused" } else { "resumed" };
        out += &format!(
            " ({what} by {}, {})",
            s.paused_by,
            local_time(s.paused_ms, &s.tz)
        );
    }
    out += "\n";
    out += &format!("  misfire:   {}\n", dash(&s.misfire));
    out += &format!("  overlap:   {}\n", dash(&s.overlap));
    out += &format!("  created:   {}", local_time(s.created_ms, &s.tz));
    if !s.created_by.is_empty() {
        out += &format!(" by {}", s.created_by);
    }
    out += "\n";
    out += &format!(
        "  last slot: {}\n",
        s.last_slot_ms
            .map_or("-".into(), |ms| local_time(ms, &s.tz))
    );
    out += &format!(
        "  last job:  {}\n",
        match (s.last_job_id.as_str(), s.last_state.as_str()) {
            ("", _) => "-".to_string(),
            (id, "") => id.to_string(),
            (id, state) => format!("{id} ({state})"),
        }
    );
    out += &format!(
        "  job:       {}{}\n",
        spec.kind,
        if spec.name.is_empty() {
            String::new()
        } else {
            format!("  {}", spec.name)
        }
    );
    out += &spec_lines(&spec);
    out
}

pub fn benchmark_json(b: &BenchmarkSpec) -> Value {
    json!({
        "command": b.command,
        "cases": b.cases,
        "warmup": b.warmup,
        "repetitions": b.repetitions,
        "metric": b.metric,
        "extractors": b.extractors.iter().map(|e| json!({
            "metric": e.metric, "pattern": e.pattern,
        })).collect::<Vec<_>>(),
        "trusted": b.trusted,
    })
}

fn operators_json(ops: &[OperatorTime]) -> Value {
    ops.iter()
        .map(
            |o| json!({ "name": o.name, "total_time_s": o.total_time_s, "num_calls": o.num_calls }),
        )
        .collect()
}

pub fn metric_json(m: &MetricSummary) -> Value {
    json!({
        "median": m.median, "mad": m.mad, "robust_cv": m.robust_cv, "n": m.n,
        "unit": m.unit, "source": m.source, "samples": m.samples,
    })
}

pub fn explanation_json(e: &Explanation) -> Value {
    json!({
        "value": e.value,
        "baseline": e.baseline,
        "delta_pct": e.delta_pct,
        "limit": e.limit,
        "z": e.z,
        "t_limit": e.t_limit,
        "k": e.k,
        "spread_cv": e.spread_cv,
        "baseline_run_ids": e.baseline_run_ids,
        "rule": e.rule,
        "message": e.message,
        "mde_pct": e.mde_pct,
        "runs": e.runs,
        "samples": e.samples,
        "pooled_value": e.pooled_value,
        "df": e.df,
    })
}

/// A case result as `show --json` and `watch --json` give it.
pub fn case_json(c: &CaseResult) -> Value {
    let metrics: Map<String, Value> = c
        .metrics
        .iter()
        .map(|m| (m.name.clone(), metric_json(m)))
        .collect();
    json!({
        "name": c.name,
        "file": c.file,
        "input_hash": c.input_hash,
        "verdict": c.verdict,
        "metric": c.metric,
        "metrics": metrics,
        "explanation": c.explanation.as_ref().map_or(Value::Null, explanation_json),
        "operators": operators_json(&c.operators),
        "operators_missing": c.operators_missing,
        "operators_new": c.operators_new,
        "operators_moved": c.operators_moved,
        "rerun": c.rerun,
        "confirmed": c.confirmed,
        "profile": c.profile,
    })
}

fn nonzero(v: i64) -> Value {
    if v == 0 {
        Value::Null
    } else {
        json!(v)
    }
}

fn device_json(d: &msfleet_proto::DeviceRef) -> Value {
    json!({ "kind": d.kind, "index": d.index, "id": d.id })
}

/// "4/8 busy" for the agent's devices of `kind`; "-" when it has none.
pub fn devices_busy(a: &Agent, kind: &str) -> String {
    let of_kind: Vec<_> = a
        .devices
        .iter()
        .filter(|u| u.device.as_ref().is_some_and(|d| d.kind == kind))
        .collect();
    if of_kind.is_empty() {
        return "-".into();
    }
    let busy = of_kind.iter().filter(|u| !u.task.is_empty()).count();
    let unhealthy = of_kind.iter().filter(|u| !u.healthy).count();
    let mut s = format!("{busy}/{} busy", of_kind.len());
    if unhealthy > 0 {
        s += &format!(", {unhealthy} unhealthy");
    }
    s
}

pub fn agent_json(a: &Agent) -> Value {
    let caps = a.capabilities.clone().unwrap_or_default();
    let host = caps.host.clone().unwrap_or_default();
    json!({
        "name": a.name,
        "state": a.state,
        "state_reason": a.state_reason,
        "admin": a.admin().label(),
        "drain_deadline_ms": nonzero(a.drain_deadline_ms),
        "connected": a.connected,
        "last_seen_ms": a.last_seen_ms,
        "running": a.running,
        "profile": caps.profile,
        "slots": caps.slots,
        "containment": caps.containment,
        "enforces_memory": caps.enforces_memory,
        "labels": caps.labels,
        "roots": caps.roots,
        "policy": caps.policy.as_ref().map_or(Value::Null, |p| json!({
            "allow_git": p.allow_git,
            "allow_bench_commands": p.allow_bench_commands,
            "deny_env": p.deny_env,
            "allow_env": p.allow_env,
            "allow_plugins": p.allow_plugins,
        })),
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
        "devices": a.devices.iter().map(|u| {
            let d = u.device.clone().unwrap_or_default();
            json!({
                "kind": d.kind, "index": d.index, "id": d.id, "memory_mb": u.memory_mb,
                "health": u.health, "healthy": u.healthy, "task": text_or_null(&u.task),
            })
        }).collect::<Vec<_>>(),
        "health": caps.health.as_ref().map_or(Value::Null, |h| json!({
            "status": h.status, "reasons": h.reasons, "probed_at_ms": h.probed_at_ms,
        })),
        "environment_usage": caps.environment_usage.as_ref().map_or(Value::Null, |u| {
            let entries = |list: &[msfleet_proto::EnvironmentEntry]| {
                list.iter()
                    .map(|e| json!({
                        "name": e.name, "bytes": e.bytes,
                        "last_used_ms": e.last_used_ms, "in_use": e.in_use,
                        "affinity": e.affinity,
                    }))
                    .collect::<Vec<_>>()
            };
            json!({
                "used_bytes": u.used_bytes,
                "budget_bytes": nonzero(u.budget_bytes as i64),
                "environments": entries(&u.environments),
                "caches": entries(&u.caches),
            })
        }),
        "infra_errors": a.infra_errors,
        "quarantine": if a.admin() == msfleet_proto::AgentAdmin::Quarantined {
            json!({
                "reason": a.quarantine_reason,
                "auto": a.quarantine_auto,
                "since_ms": a.quarantined_at_ms,
            })
        } else {
            Value::Null
        },
    })
}

pub fn queue_json(q: &Queue) -> Value {
    json!({ "name": q.name, "pending": q.pending, "running": q.running, "aging_s": q.aging_s })
}

/// "environment ready in 12.3 s (cached)": the setup of a job's venv, apart
/// from its tests.
pub fn environment_line(env: &msfleet_proto::EnvironmentReady) -> String {
    format!(
        "environment ready in {:.1} s ({})",
        env.seconds,
        if env.cached { "cached" } else { "built" }
    )
}

fn environment_ready_json(env: &msfleet_proto::EnvironmentReady) -> Value {
    json!({ "seconds": env.seconds, "cached": env.cached, "key": env.key })
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
        Some(job_event::Kind::Case(c)) => {
            v["type"] = json!("case");
            v["case"] = case_json(c);
        }
        Some(job_event::Kind::Environment(env)) => {
            v["type"] = json!("environment");
            v["environment"] = environment_ready_json(env);
        }
        None => v["type"] = json!("unknown"),
    }
    v
}

/// pytest-style summary: "1 failed, 8 passed, 2 skipped", and as pytest 9
/// (-v) counts subtests, "3 failed (2 subtests), 4 passed, 8 subtests passed".
pub fn counts_line(c: &TestCounts) -> String {
    let failed = match c.subtests_failed {
        0 => "failed".to_string(),
        1 => "failed (1 subtest)".to_string(),
        n => format!("failed ({n} subtests)"),
    };
    let parts: Vec<String> = [
        (c.failed, failed.as_str()),
        (c.passed, "passed"),
        (c.skipped, "skipped"),
        (c.xfailed, "xfailed"),
        (c.xpassed, "xpassed"),
        (c.errors, if c.errors == 1 { "error" } else { "errors" }),
        (c.flaky, "flaky"),
        (c.subtests_passed, "subtests passed"),
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
    out += &spec_lines(&spec);
    if !j.schedule.is_empty() {
        out += &format!("  schedule:  {}", j.schedule);
        if j.slot_ms > 0 {
            out += &format!(" (slot {})", time_ms(j.slot_ms));
        }
        out += "\n";
    }
    if !spec.dedup_key.is_empty() {
        out += &format!("  dedup key: {}\n", spec.dedup_key);
    }
    if !j.submitted_by.is_empty() {
        out += &format!("  submitted: by {}\n", j.submitted_by);
    }
    if !j.devices.is_empty() {
        out += &format!(
            "  devices:   {}\n",
            msfleet_proto::devices::describe(&j.devices)
        );
    }
    if let Some(env) = &j.environment {
        out += &format!(
            "  setup:     {:.1} s ({}, key {})\n",
            env.seconds,
            if env.cached {
                "cached environment"
            } else {
                "environment built"
            },
            env.key
        );
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
    if j.agent_lost > 0 || j.lost_retried > 0 {
        out += &format!(
            "  lost:      {} with their agent (of {} allowed), {} retried (of {})\n",
            j.agent_lost,
            spec.agent_lost_retries.unwrap_or_default(),
            j.lost_retried,
            spec.retries.unwrap_or_default()
        );
    }
    if spec.kind == "benchmark" || !j.cases.is_empty() {
        out += &format!("  results:   {}\n", cases_summary(&j.cases));
    } else {
        out += &format!(
            "  tests:     {}\n",
            counts_line(&j.tests.unwrap_or_default())
        );
    }
    for w in &j.warnings {
        out += &format!("  warning:   {w}\n");
    }
    for c in &j.cases {
        out += &format!("  {}\n", case_line(c));
        for d in case_details(c) {
            out += &format!("  {:12}{d}\n", "");
        }
    }
    out
}

/// What a spec runs, one `  key:  value` line each: queue, source, pytest
/// args or the benchmark command and cases, requirements.
pub fn spec_lines(spec: &JobSpec) -> String {
    let mut out = format!("  queue:     {} (priority {})\n", spec.queue, spec.priority);
    match spec.source.as_ref().and_then(|s| s.kind.as_ref()) {
        Some(source::Kind::Dir(d)) => out += &format!("  source:    {d}\n"),
        Some(source::Kind::Git(g)) => out += &format!("  source:    {} @ {}\n", g.url, g.r#ref),
        None => {}
    }
    if !spec.args.is_empty() {
        out += &format!("  pytest:    {}\n", spec.args.join(" "));
    }
    if let Some(b) = &spec.benchmark {
        out += &format!("  command:   {}\n", quote_argv(&b.command));
        out += &format!(
            "  cases:     {} (warmup {}, repetitions {}{}{})\n",
            b.cases.join(" "),
            b.warmup.unwrap_or(msfleet_proto::bench::DEFAULT_WARMUP),
            b.repetitions
                .unwrap_or(msfleet_proto::bench::DEFAULT_REPETITIONS),
            if b.metric.is_empty() {
                String::new()
            } else {
                format!(", metric {}", b.metric)
            },
            if b.trusted { ", trusted" } else { "" }
        );
        for e in &b.extractors {
            out += &format!("  extract:   {} = {}\n", e.metric, e.pattern);
        }
    }
    if !spec.requirements.is_empty() {
        out += &format!("  requires:  {}\n", spec.requirements);
    }
    if let Some(m) = spec.memory_limit_bytes {
        out += &format!("  memory:    {}\n", msfleet_proto::memory::format(m));
    }
    for (kind, n, min) in [
        ("gpu", spec.gpus, spec.gpu_memory_bytes),
        ("npu", spec.npus, spec.npu_memory_bytes),
    ] {
        if n > 0 {
            let each = min.map_or(String::new(), |m| {
                format!(", at least {} each", msfleet_proto::memory::format(m))
            });
            out += &format!(
                "  asks:      {n} {kind}{}{each}\n",
                if n == 1 { "" } else { "s" }
            );
        }
    }
    if let Some(e) = &spec.environment {
        let mut parts: Vec<String> = e.requirements.iter().map(|r| format!("-r {r}")).collect();
        if let Some(x) = &e.install_project {
            parts.push(if x.is_empty() {
                "-e .".into()
            } else {
                format!("-e .[{x}]")
            });
        }
        if e.system_site_packages {
            parts.push("system site-packages".into());
        }
        out += &format!("  venv:      {}\n", parts.join(", "));
        for c in &e.setup {
            out += &format!("  setup:     {c}\n");
        }
    }
    if !spec.caches.is_empty() {
        out += &format!("  caches:    {}\n", spec.caches.join(", "));
    }
    out
}

/// argv as one line a shell would split back the same way.
pub fn quote_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%{}".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A number with three significant digits ("0.0201", "7.70", "123"); larger
/// numbers keep their integer digits.
pub fn num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (2 - magnitude).clamp(0, 12) as usize;
    format!("{v:.decimals$}")
}

/// "+30.5%", "-2.6%".
fn pct(p: f64) -> String {
    format!("{p:+.1}%")
}

/// The median of the case's primary metric, when the case has it.
fn primary(c: &CaseResult) -> Option<&MetricSummary> {
    c.metrics.iter().find(|m| m.name == c.metric)
}

/// One line per case result, e.g.
/// `REGRESSION  qwen3-8B-decode  total_time_s 0.0201 vs 0.0154 (+30.5%, limit baseline_tolerance 20%, confirmed by re-run)`.
pub fn case_line(c: &CaseResult) -> String {
    let verdict = if c.verdict.is_empty() {
        "UNKNOWN".to_string()
    } else {
        c.verdict.to_uppercase()
    };
    let head = format!("{verdict:<11} {}", c.name);
    let default_expl = Explanation::default();
    let e = c.explanation.as_ref().unwrap_or(&default_expl);
    if c.verdict == "error" {
        let msg = if e.message.is_empty() {
            "the case failed"
        } else {
            e.message.as_str()
        };
        return format!("{head}: {msg}");
    }
    let value = match (&c.explanation, primary(c)) {
        (None, Some(m)) => m.median,
        _ => e.value,
    };
    let mut line = format!("{head}  {} {}", c.metric, num(value));
    let Some(baseline) = e.baseline else {
        if c.verdict != "no_baseline" && !e.message.is_empty() {
            line += &format!(" ({})", e.message);
        }
        return line;
    };
    // Judged without the stored history: said whatever the verdict.
    let history = msfleet_proto::bench::history_unavailable(&e.message);
    line += &format!(" vs {}", num(baseline));
    let mut notes = Vec::new();
    if let Some(d) = e.delta_pct {
        notes.push(pct(d));
    }
    if c.verdict != "pass" {
        if c.verdict == "noisy" && e.spread_cv > 0.0 {
            notes.push(format!("spread {:.1}% cv", e.spread_cv * 100.0));
        }
        if let (Some(z), Some(t)) = (e.z, e.t_limit) {
            notes.push(format!("z {z:.2} vs {t:.2}"));
        }
        if !e.limit.is_empty() {
            notes.push(format!("limit {}", e.limit));
        }
        if c.rerun {
            notes.push(
                if c.confirmed {
                    "confirmed by re-run"
                } else {
                    "not confirmed by re-run"
                }
                .to_string(),
            );
        }
    }
    if !notes.is_empty() {
        line += &format!(" ({})", notes.join(", "));
    }
    if let Some(h) = history {
        line += &format!("; {h}");
    }
    line
}

/// Extra lines under a case line: operator changes of a regression or improvement.
pub fn case_details(c: &CaseResult) -> Vec<String> {
    if !matches!(c.verdict.as_str(), "regression" | "improvement" | "noisy") {
        return Vec::new();
    }
    let mut out = Vec::new();
    if !c.operators_moved.is_empty() {
        out.push(format!("operators moved: {}", c.operators_moved.join(", ")));
    }
    if !c.operators_missing.is_empty() {
        out.push(format!(
            "operators missing: {}",
            c.operators_missing.join(", ")
        ));
    }
    if !c.operators_new.is_empty() {
        out.push(format!("operators new: {}", c.operators_new.join(", ")));
    }
    out
}

/// Verdicts worst first, for summaries.
const VERDICTS: [&str; 6] = [
    "regression",
    "error",
    "noisy",
    "improvement",
    "no_baseline",
    "pass",
];

/// "1 regression, 2 pass", in the order of [`VERDICTS`] (unknown verdicts last).
pub fn cases_summary(cases: &[CaseResult]) -> String {
    if cases.is_empty() {
        return "no cases".into();
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    for c in cases {
        match counts.iter_mut().find(|(v, _)| *v == c.verdict) {
            Some((_, n)) => *n += 1,
            None => counts.push((c.verdict.clone(), 1)),
        }
    }
    counts.sort_by_key(|(v, _)| {
        VERDICTS
            .iter()
            .position(|k| k == v)
            .unwrap_or(VERDICTS.len())
    });
    counts
        .iter()
        .map(|(v, n)| format!("{n} {}", if v.is_empty() { "unknown" } else { v }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The columns every table of benchmark verdicts has (`msctl bench`, `show`
/// and `report`).
pub const CASE_HEADER: [&str; 6] = ["CASE", "VERDICT", "METRIC", "VALUE", "BASELINE", "DELTA"];

/// One case result under [`CASE_HEADER`]. VALUE is the value the verdict
/// judged, or the primary metric's median when there is no explanation.
pub fn case_cells(c: &CaseResult) -> [String; 6] {
    let e = c.explanation.clone().unwrap_or_default();
    let value = match (&c.explanation, primary(c)) {
        (None, Some(m)) => Some(m.median),
        (None, None) => None,
        (Some(e), _) => Some(e.value),
    };
    [
        c.name.clone(),
        c.verdict.to_uppercase(),
        c.metric.clone(),
        value.map_or("-".into(), num),
        e.baseline.map_or("-".into(), num),
        e.delta_pct.map_or("-".into(), pct),
    ]
}

/// The final table of a benchmark job. RUNS(k): measured runs of the primary
/// metric (history runs behind the baseline).
pub fn cases_table(cases: &[CaseResult]) -> String {
    verdicts_table(cases, true)
}

/// A table of benchmark verdicts: [`CASE_HEADER`], and RUNS(k) when `runs`.
pub fn verdicts_table(cases: &[CaseResult], runs: bool) -> String {
    let rows: Vec<Vec<String>> = cases
        .iter()
        .map(|c| {
            let mut row = case_cells(c).to_vec();
            if runs {
                let k = c.explanation.as_ref().map_or(0, |e| e.k);
                let n = primary(c).map_or(0, |m| m.n);
                row.push(format!("{n}({k})"));
            }
            row
        })
        .collect();
    let mut header = CASE_HEADER.to_vec();
    if runs {
        header.push("RUNS(k)");
    }
    table(&header, &rows)
}

/// RFC 3339 (UTC, seconds) of a time in ms since the epoch.
pub fn time_ms(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) if ms > 0 => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string(),
        _ => "-".into(),
    }
}

pub fn baseline_json(b: &Baseline) -> Value {
    let key = b.key.clone().unwrap_or_default();
    json!({
        "case": key.case,
        "input_hash": key.input_hash,
        "metric": key.metric,
        "profile": key.profile,
        "anchor": b.anchor,
        "anchor_operators": operators_json(&b.anchor_operators),
        "history": b.history.iter().map(|r| json!({
            "job_id": r.job_id, "time_ms": r.time_ms, "median": r.median,
            "samples": r.samples, "spread_cv": r.spread_cv,
            "operators": operators_json(&r.operators),
        })).collect::<Vec<_>>(),
        "audit": b.audit.iter().map(|a| json!({
            "action": a.action, "who": a.who, "time_ms": a.time_ms,
            "job_id": a.job_id, "value": a.value,
        })).collect::<Vec<_>>(),
        "noise": b.noise.as_ref().map_or(Value::Null, noise_json),
        "change_points": b.change_points.iter().map(change_point_json).collect::<Vec<_>>(),
    })
}

fn noise_json(n: &NoiseEstimate) -> Value {
    json!({
        "runs": n.runs,
        "own_sd_log": n.own_sd_log,
        "pooled_sd_log": n.pooled_sd_log,
        "prior_df": n.prior_df,
        "cases_pooled": n.cases_pooled,
        "sd_log": n.sd_log,
        "df": n.df,
        "within_cv": n.within_cv,
        "repetitions": n.repetitions,
        "run_sd_log": n.run_sd_log,
        "mde_pct": n.mde_pct,
        "mde_confirmed_pct": n.mde_confirmed_pct,
        "target_pct": n.target_pct,
        "repetitions_for_target": n.repetitions_for_target,
        "runs_for_target": n.runs_for_target,
    })
}

pub fn change_point_json(c: &ChangePoint) -> Value {
    json!({
        "job_id": c.job_id, "time_ms": c.time_ms, "index": c.index,
        "before": c.before, "after": c.after, "shift_pct": c.shift_pct,
    })
}

/// "+6.0% from job 12 (2026-11-30T02:00:00Z, run 13 of the history): 0.100 -> 0.106".
pub fn change_point_line(c: &ChangePoint) -> String {
    format!(
        "{} from job {} ({}, run {} of the history): {} -> {}",
        pct(c.shift_pct),
        c.job_id,
        time_ms(c.time_ms),
        c.index + 1,
        num(c.before),
        num(c.after)
    )
}

/// What a baseline's noise allows, in words: the lines of `baseline show`'s "noise:" part.
pub fn noise_lines(n: &NoiseEstimate) -> Vec<String> {
    let sd = |x: f64| format!("{:.2}%", x * 100.0);
    let mut lines = Vec::new();
    let pooled = if n.cases_pooled >= 2 {
        format!(
            ", pooled with {} cases of the profile (prior sd {}, {:.0} df)",
            n.cases_pooled,
            sd(n.pooled_sd_log),
            n.prior_df
        )
    } else {
        String::new()
    };
    lines.push(format!(
        "run-to-run sd {} over {} runs{pooled}: judged with sd {} on {:.0} df",
        sd(n.own_sd_log),
        n.runs,
        sd(n.sd_log),
        n.df
    ));
    if n.repetitions > 0 {
        lines.push(format!(
            "within-run CV {} at {} repetitions; the run-level shift alone is sd {}",
            sd(n.within_cv),
            n.repetitions,
            sd(n.run_sd_log)
        ));
    }
    lines.push(format!(
        "detects changes of {:.1}% or more in one run, {:.1}% with its confirming re-runs \
         (80% power)",
        n.mde_pct, n.mde_confirmed_pct
    ));
    let target = format!("{:.0}%", n.target_pct);
    let reps = match (n.repetitions, n.repetitions_for_target) {
        (0, _) => "repetitions unknown".to_string(),
        (_, Some(r)) => format!("{r} repetitions per run"),
        (_, None) => "no number of repetitions (the run-level shift dominates)".to_string(),
    };
    let runs = match n.runs_for_target {
        Some(j) => format!("{j} runs pooled"),
        None => "no number of pooled runs (the history is too short or too noisy)".to_string(),
    };
    lines.push(format!("to detect {target}: {reps}, or {runs}"));
    lines
}

/// `baseline list`: CASE METRIC PROFILE ANCHOR RUNS LAST MDE SHIFT INPUT (MDE: the smallest
/// change one run detects; SHIFT: the newest change point in the history and its job).
pub fn baselines_table(baselines: &[Baseline]) -> String {
    let rows: Vec<Vec<String>> = baselines
        .iter()
        .map(|b| {
            let key = b.key.clone().unwrap_or_default();
            vec![
                key.case,
                key.metric,
                key.profile,
                b.anchor.map_or("-".into(), num),
                b.history.len().to_string(),
                b.history.last().map_or("-".into(), |r| num(r.median)),
                b.noise
                    .as_ref()
                    .map_or("-".into(), |n| format!("{:.1}%", n.mde_pct)),
                b.change_points.last().map_or("-".into(), |c| {
                    format!("{} @{}", pct(c.shift_pct), c.job_id)
                }),
                key.input_hash,
            ]
        })
        .collect();
    table(
        &[
            "CASE", "METRIC", "PROFILE", "ANCHOR", "RUNS", "LAST", "MDE", "SHIFT", "INPUT",
        ],
        &rows,
    )
}

/// `baseline show`: one baseline with its anchor, history and audit trail.
pub fn baseline_text(b: &Baseline) -> String {
    let key = b.key.clone().unwrap_or_default();
    let mut out = format!(
        "baseline {}  {}  profile {}  input {}\n",
        key.case, key.metric, key.profile, key.input_hash
    );
    out += &format!(
        "  anchor:    {}\n",
        b.anchor.map_or("none (judged by history)".into(), num)
    );
    if !b.anchor_operators.is_empty() {
        out += "  anchor operators:\n";
        let rows: Vec<Vec<String>> = b
            .anchor_operators
            .iter()
            .map(|o| vec![o.name.clone(), num(o.total_time_s), o.num_calls.to_string()])
            .collect();
        out += &indent(&table(&["OPERATOR", "TOTAL_S", "CALLS"], &rows), 4);
    }
    match &b.noise {
        Some(n) => {
            out += "  noise:\n";
            for line in noise_lines(n) {
                out += &format!("    {line}\n");
            }
        }
        None => out += "  noise:     unknown (fewer than 2 accepted runs)\n",
    }
    if b.change_points.is_empty() {
        out += "  change points: none\n";
    } else {
        out += "  change points:\n";
        for c in &b.change_points {
            out += &format!("    {}\n", change_point_line(c));
        }
    }
    out += &format!("  history:   {} run(s)\n", b.history.len());
    if !b.history.is_empty() {
        let rows: Vec<Vec<String>> = b
            .history
            .iter()
            .map(|r| vec![r.job_id.clone(), time_ms(r.time_ms), num(r.median)])
            .collect();
        out += &indent(&table(&["JOB", "TIME", "MEDIAN"], &rows), 4);
    }
    out += &format!(
        "  audit:     {} entr{}\n",
        b.audit.len(),
        if b.audit.len() == 1 { "y" } else { "ies" }
    );
    if !b.audit.is_empty() {
        let rows: Vec<Vec<String>> = b
            .audit
            .iter()
            .map(|a| {
                vec![
                    time_ms(a.time_ms),
                    a.action.clone(),
                    a.who.clone(),
                    a.job_id.clone(),
                    num(a.value),
                ]
            })
            .collect();
        out += &indent(&table(&["TIME", "ACTION", "WHO", "JOB", "VALUE"], &rows), 4);
    }
    out
}

/// `baseline accept`: "case metric profile value".
pub fn accepted_line(b: &Baseline) -> String {
    let key = b.key.clone().unwrap_or_default();
    let value = b
        .anchor
        .or_else(|| b.history.last().map(|r| r.median))
        .map_or("-".into(), num);
    format!("{}  {}  {}  {value}", key.case, key.metric, key.profile)
}

fn indent(text: &str, n: usize) -> String {
    text.lines().map(|l| format!("{:n$}{l}\n", "")).collect()
}

pub fn state_is_success(s: JobState) -> bool {
    s == JobState::Passed
}

/// A table with a header row, as `ps` prints one: no borders, columns two
/// spaces apart, each line trimmed, so `awk`, `cut` and `column` read it.
/// Widths are display widths (a wide character takes two columns). On a
/// terminal, long cells wrap to its width; anywhere else (a pipe, a file) a
/// row is never wrapped.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let width = comfy_table::Table::new().width();
    table_within(header, rows, width)
}

/// [`table`] for a given terminal width (`None`: not a terminal, no wrapping).
fn table_within(header: &[&str], rows: &[Vec<String>], width: Option<u16>) -> String {
    use comfy_table::{presets::NOTHING, ContentArrangement, Table};
    let mut t = Table::new();
    t.load_style(NOTHING)
        .force_no_tty()
        .set_header(header.to_vec());
    for r in rows {
        t.add_row(r.clone());
    }
    match width {
        Some(w) => t
            .set_width(w)
            .set_content_arrangement(ContentArrangement::Dynamic),
        None => t.set_content_arrangement(ContentArrangement::Disabled),
    };
    let columns = t.column_count();
    for (i, c) in t.column_iter_mut().enumerate() {
        c.set_padding((0, if i + 1 == columns { 0 } else { 2 }));
    }
    t.lines().map(|l| l.trim_end().to_string() + "\n").collect()
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
            ..Default::default()
        };
        assert_eq!(
            counts_line(&c),
            "1 failed, 8 passed, 2 skipped, 1 xfailed, 1 xpassed, 1 error"
        );
        let mut f = c;
        f.record("flaky");
        assert_eq!(
            counts_line(&f),
            "8 passed, 2 skipped, 1 xfailed, 1 xpassed, 1 error, 1 flaky"
        );
        assert_eq!(counts_line(&TestCounts::default()), "no tests");
        let sub = TestCounts {
            failed: 3,
            passed: 4,
            total: 7,
            subtests_passed: 8,
            subtests_failed: 2,
            ..Default::default()
        };
        assert_eq!(
            counts_line(&sub),
            "3 failed (2 subtests), 4 passed, 8 subtests passed"
        );
        assert_eq!(
            counts_json(&sub)["subtests_passed"],
            8,
            "{}",
            counts_json(&sub)
        );
    }

    fn result(verdict: &str, value: f64, baseline: Option<f64>) -> CaseResult {
        CaseResult {
            name: "qwen3-8B-decode".into(),
            file: "cases/qwen3-8B-decode.json".into(),
            input_hash: "0123456789abcdef".into(),
            metric: "total_time_s".into(),
            verdict: verdict.into(),
            explanation: Some(Explanation {
                value,
                baseline,
                delta_pct: baseline.map(|b| (value - b) / b * 100.0),
                k: 3,
                rule: "tolerance".into(),
                ..Default::default()
            }),
            metrics: vec![MetricSummary {
                name: "total_time_s".into(),
                unit: "s".into(),
                source: "reported".into(),
                n: 5,
                median: value,
                mad: 0.0001,
                robust_cv: 0.01,
                samples: vec![value; 5],
            }],
            profile: "a2-64g".into(),
            ..Default::default()
        }
    }

    #[test]
    fn case_lines_for_each_verdict() {
        let mut r = result("regression", 0.0201, Some(0.0154));
        if let Some(e) = r.explanation.as_mut() {
            e.limit = "baseline_tolerance 20%".into();
        }
        r.rerun = true;
        r.confirmed = true;
        assert_eq!(
            case_line(&r),
            "REGRESSION  qwen3-8B-decode  total_time_s 0.0201 vs 0.0154 \
             (+30.5%, limit baseline_tolerance 20%, confirmed by re-run)"
        );
        r.operators_moved = vec!["aten.mm.default +31.0%".into()];
        r.operators_missing = vec!["tensor_cast.swiglu.default".into()];
        assert_eq!(
            case_details(&r),
            [
                "operators moved: aten.mm.default +31.0%",
                "operators missing: tensor_cast.swiglu.default"
            ]
        );

        let p = result("pass", 0.0150, Some(0.0154));
        assert_eq!(
            case_line(&p),
            "PASS        qwen3-8B-decode  total_time_s 0.0150 vs 0.0154 (-2.6%)"
        );
        assert!(case_details(&p).is_empty());

        let mut i = result("improvement", 0.0100, Some(0.0154));
        if let Some(e) = i.explanation.as_mut() {
            e.limit = "baseline_tolerance 20%".into();
        }
        assert_eq!(
            case_line(&i),
            "IMPROVEMENT qwen3-8B-decode  total_time_s 0.0100 vs 0.0154 \
             (-35.1%, limit baseline_tolerance 20%)"
        );

        let n = result("no_baseline", 0.0150, None);
        assert_eq!(
            case_line(&n),
            "NO_BASELINE qwen3-8B-decode  total_time_s 0.0150"
        );

        let mut noisy = result("noisy", 0.0170, Some(0.0154));
        if let Some(e) = noisy.explanation.as_mut() {
            e.spread_cv = 0.142;
            e.z = Some(1.5);
            e.t_limit = Some(3.0);
        }
        assert_eq!(
            case_line(&noisy),
            "NOISY       qwen3-8B-decode  total_time_s 0.0170 vs 0.0154 \
             (+10.4%, spread 14.2% cv, z 1.50 vs 3.00)"
        );

        let mut judged = result("pass", 0.0150, Some(0.0154));
        if let Some(e) = judged.explanation.as_mut() {
            e.message = "within 20% of the baseline; history unavailable: refused \
                         (judged with the case file's anchors only)"
                .into();
        }
        assert_eq!(
            case_line(&judged),
            "PASS        qwen3-8B-decode  total_time_s 0.0150 vs 0.0154 (-2.6%); \
             history unavailable: refused (judged with the case file's anchors only)"
        );

        let mut err = result("error", 0.0, None);
        if let Some(e) = err.explanation.as_mut() {
            e.message = "command exited 1: ModuleNotFoundError".into();
        }
        assert_eq!(
            case_line(&err),
            "ERROR       qwen3-8B-decode: command exited 1: ModuleNotFoundError"
        );
        err.explanation = None;
        assert_eq!(
            case_line(&err),
            "ERROR       qwen3-8B-decode: the case failed"
        );

        // No explanation: the primary metric's median.
        let mut bare = result("no_baseline", 7.698, None);
        bare.explanation = None;
        assert_eq!(
            case_line(&bare),
            "NO_BASELINE qwen3-8B-decode  total_time_s 7.70"
        );
    }

    #[test]
    fn case_table_and_summary() {
        let mut other = result("pass", 0.0150, Some(0.0154));
        other.name = "b".into();
        let cases = [result("regression", 0.0201, Some(0.0154)), other];
        assert_eq!(cases_summary(&cases), "1 regression, 1 pass");
        assert_eq!(cases_summary(&[]), "no cases");
        let t = cases_table(&cases);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["CASE", "VERDICT", "METRIC", "VALUE", "BASELINE", "DELTA", "RUNS(k)"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "qwen3-8B-decode",
                "REGRESSION",
                "total_time_s",
                "0.0201",
                "0.0154",
                "+30.5%",
                "5(3)"
            ]
        );
    }

    #[test]
    fn case_json_has_metrics_by_name_and_the_explanation() {
        let v = case_json(&result("regression", 0.0201, Some(0.0154)));
        assert_eq!(v["name"], "qwen3-8B-decode");
        assert_eq!(v["verdict"], "regression");
        assert_eq!(v["metrics"]["total_time_s"]["n"], 5);
        assert_eq!(v["metrics"]["total_time_s"]["source"], "reported");
        assert_eq!(v["explanation"]["baseline"], 0.0154);
        assert_eq!(v["explanation"]["z"], Value::Null);
        assert_eq!(v["profile"], "a2-64g");
        let ev = JobEvent {
            seq: 4,
            kind: Some(job_event::Kind::Case(result("pass", 1.0, Some(1.0)))),
            ..Default::default()
        };
        let e = event_json("12", &ev);
        assert_eq!(e["type"], "case");
        assert_eq!(e["case"]["verdict"], "pass");
    }

    /// 2026-11-23 02:00 CST (Asia/Shanghai) = 2026-11-22 18:00 UTC.
    const NEXT: i64 = 1_795_370_400_000;
    /// The slot a day before.
    const LAST: i64 = 1_795_284_000_000;

    fn schedule() -> Schedule {
        Schedule {
            name: "nightly".into(),
            cron: "0 2 * * *".into(),
            tz: "Asia/Shanghai".into(),
            spec: Some(JobSpec {
                kind: "pytest".into(),
                queue: "nightly".into(),
                args: vec!["-m".into(), "nightly".into(), "tests".into()],
                source: Some(msfleet_proto::Source {
                    kind: Some(source::Kind::Git(msfleet_proto::GitSource {
                        url: "https://example.com/m.git".into(),
                        r#ref: "main".into(),
                    })),
                }),
                requirements: "gpu.count>=1".into(),
                ..Default::default()
            }),
            misfire: "fire_once".into(),
            overlap: "skip".into(),
            paused: false,
            created_ms: 1_793_525_400_000,
            last_slot_ms: Some(LAST),
            last_job_id: "41".into(),
            next_ms: NEXT,
            next_local: "2026-11-23 02:00 CST".into(),
            last_state: "passed".into(),
            created_by: String::new(),
            paused_by: String::new(),
            paused_ms: 0,
        }
    }

    #[test]
    fn local_times_are_in_the_schedule_zone() {
        assert_eq!(local_time(NEXT, "Asia/Shanghai"), "2026-11-23 02:00 CST");
        assert_eq!(local_time(NEXT, "UTC"), "2026-11-22 18:00 UTC");
        assert_eq!(local_time(NEXT, "Europe/Berlin"), "2026-11-22 19:00 CET");
        assert_eq!(local_time(NEXT, "Not/AZone"), "2026-11-22 18:00 UTC");
        assert_eq!(local_time(0, "UTC"), "-");
        // Without next_local the view is computed here.
        let mut s = schedule();
        s.next_local.clear();
        assert_eq!(schedule_next(&s), "2026-11-23 02:00 CST");
        s.next_ms = 0;
        assert_eq!(schedule_next(&s), "-");
    }

    #[test]
    fn schedule_table_rows() {
        let mut fresh = schedule();
        fresh.name = "weekly-bench".into();
        fresh.cron = "@weekly".into();
        fresh.tz = "UTC".into();
        fresh.paused = true;
        fresh.last_slot_ms = None;
        fresh.last_job_id.clear();
        fresh.last_state.clear();
        fresh.next_local = "2026-11-29 00:00 UTC".into();
        assert_eq!(
            schedule_row(&schedule()),
            [
                "nightly",
                "0 2 * * *",
                "Asia/Shanghai",
                "2026-11-23 02:00 CST",
                "no",
                "41",
                "passed"
            ]
        );
        let t = schedules_table(&[schedule(), fresh]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "NAME          CRON       TZ             NEXT                  PAUSED  LAST-JOB  LAST-STATE"
        );
        assert_eq!(
            lines[1],
            "nightly       0 2 * * *  Asia/Shanghai  2026-11-23 02:00 CST  no      41        passed"
        );
        assert_eq!(
            lines[2],
            "weekly-bench  @weekly    UTC            2026-11-29 00:00 UTC  yes     -         -"
        );
        assert_eq!(
            schedule_line(&schedule()),
            "nightly: 0 2 * * * Asia/Shanghai, next 2026-11-23 02:00 CST"
        );
    }

    #[test]
    fn schedule_json_has_every_field_and_the_spec() {
        let v = schedule_json(&schedule());
        assert_eq!(v["name"], "nightly");
        assert_eq!(v["cron"], "0 2 * * *");
        assert_eq!(v["tz"], "Asia/Shanghai");
        assert_eq!(v["misfire"], "fire_once");
        assert_eq!(v["overlap"], "skip");
        assert_eq!(v["paused"], false);
        assert_eq!(v["created_ms"], 1_793_525_400_000_i64);
        assert_eq!(v["last_slot_ms"], LAST);
        assert_eq!(v["last_slot_local"], "2026-11-22 02:00 CST");
        assert_eq!(v["last_job_id"], "41");
        assert_eq!(v["last_state"], "passed");
        assert_eq!(v["next_ms"], NEXT);
        assert_eq!(v["next_local"], "2026-11-23 02:00 CST");
        assert_eq!(v["spec"]["kind"], "pytest");
        assert_eq!(v["spec"]["queue"], "nightly");
        assert_eq!(v["spec"]["source"]["git"], "https://example.com/m.git");
        assert_eq!(v["spec"]["args"][1], "nightly");
        assert_eq!(v["spec"]["benchmark"], Value::Null);
        assert_eq!(v["spec"]["dedup_key"], Value::Null);
        // Never fired: nulls, not zeros.
        let mut s = schedule();
        s.last_slot_ms = None;
        s.last_job_id.clear();
        s.last_state.clear();
        let v = schedule_json(&s);
        assert_eq!(v["last_slot_ms"], Value::Null);
        assert_eq!(v["last_slot_local"], Value::Null);
        assert_eq!(v["last_job_id"], Value::Null);
        assert_eq!(v["last_state"], Value::Null);
    }

    #[test]
    fn schedule_text_shows_timing_policies_job_and_last_run() {
        let t = schedule_text(&schedule());
        for want in [
            "schedule nightly\n",
            "  cron:      0 2 * * * (Asia/Shanghai)\n",
            "  next:      2026-11-23 02:00 CST\n",
            "  paused:    no\n",
            "  misfire:   fire_once\n",
            "  overlap:   skip\n",
            "  created:   2026-11-01 17:30 CST\n",
            "  last slot: 2026-11-22 02:00 CST\n",
            "  last job:  41 (passed)\n",
            "  job:       pytest\n",
            "  queue:     nightly (priority 0)\n",
            "  source:    https://example.com/m.git @ main\n",
            "  pytest:    -m nightly tests\n",
            "  requires:  gpu.count>=1\n",
        ] {
            assert!(t.contains(want), "{want:?} missing in\n{t}");
        }
    }

    #[test]
    fn job_json_and_text_name_the_schedule_and_dedup() {
        let j = Job {
            id: "42".into(),
            spec: Some(JobSpec {
                kind: "pytest".into(),
                dedup_key: "nightly-2026-11-23".into(),
                ..Default::default()
            }),
            schedule: "nightly".into(),
            slot_ms: NEXT,
            deduplicated: true,
            ..Default::default()
        };
        let v = job_json(&j);
        assert_eq!(v["schedule"], "nightly");
        assert_eq!(v["slot_ms"], NEXT);
        assert_eq!(v["dedup_key"], "nightly-2026-11-23");
        assert_eq!(v["deduplicated"], true);
        let t = job_text(&j);
        assert!(
            t.contains("  schedule:  nightly (slot 2026-11-22T18:00:00Z)\n"),
            "{t}"
        );
        assert!(t.contains("  dedup key: nightly-2026-11-23\n"), "{t}");
        let plain = job_json(&Job::default());
        assert_eq!(plain["schedule"], Value::Null);
        assert_eq!(plain["slot_ms"], Value::Null);
        assert_eq!(plain["dedup_key"], Value::Null);
        assert_eq!(plain["deduplicated"], false);
    }

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(num(0.015406), "0.0154");
        assert_eq!(num(7.698), "7.70");
        assert_eq!(num(123.4), "123");
        assert_eq!(num(12345.6), "12346");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(-0.5), "-0.500");
    }

    #[test]
    fn argv_quoting_round_trips() {
        let argv: Vec<String> = ["python", "-c", "print('a b')", "{case}", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let line = quote_argv(&argv);
        assert_eq!(crate::argv::split(&line).unwrap(), argv);
    }

    #[test]
    fn schedule_text_names_who_made_and_paused_it() {
        let mut s = schedule();
        s.created_by = "ops".into();
        s.paused = true;
        s.paused_by = "ana".into();
        s.paused_ms = s.created_ms;
        let text = schedule_text(&s);
        assert!(
            text.contains("  created:   2026-11-01 17:30 CST by ops\n"),
            "{text}"
        );
        assert!(
            text.contains("  paused:    yes (paused by ana, 2026-11-01 17:30 CST)\n"),
            "{text}"
        );
    }

    fn rows(cells: &[&[&str]]) -> Vec<Vec<String>> {
        cells
            .iter()
            .map(|r| r.iter().map(|c| c.to_string()).collect())
            .collect()
    }

    #[test]
    fn table_reads_like_ps_columns_two_spaces_apart() {
        let r = rows(&[&["j-1", "passed", "nightly run"], &["j-22", "", "x"]]);
        let t = table_within(&["ID", "STATE", "NAME"], &r, None);
        assert_eq!(
            t,
            "ID    STATE   NAME\n\
             j-1   passed  nightly run\n\
             j-22          x\n"
        );
        // awk-style use: every row splits into its fields.
        let fields: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(fields[1], ["j-1", "passed", "nightly", "run"]);
    }

    #[test]
    fn table_aligns_wide_characters_by_display_width() {
        let r = rows(&[&["模型推理", "ok"], &["ab", "ok"]]);
        let t = table_within(&["CASE", "VERDICT"], &r, None);
        // Four CJK characters take eight columns: VERDICT starts at column 10 in every row.
        assert_eq!(t, "CASE      VERDICT\n模型推理  ok\nab        ok\n");
    }

    #[test]
    fn table_wraps_only_on_a_terminal() {
        let long = "a long reason that does not fit in a narrow terminal at all";
        let r = rows(&[&["j-1", long]]);
        let piped = table_within(&["ID", "REASON"], &r, None);
        assert_eq!(piped.lines().count(), 2, "{piped}");
        assert!(piped.contains(long));
        let narrow = table_within(&["ID", "REASON"], &r, Some(30));
        assert!(narrow.lines().count() > 2, "{narrow}");
        assert!(narrow.lines().all(|l| l.chars().count() <= 30), "{narrow}");
    }

    #[test]
    fn baseline_show_says_the_noise_the_power_and_the_change_points() {
        let b = Baseline {
            key: Some(msfleet_proto::BaselineKey {
                case: "decode".into(),
                input_hash: "abc".into(),
                metric: "total_time_s".into(),
                profile: "h100".into(),
            }),
            noise: Some(NoiseEstimate {
                runs: 8,
                own_sd_log: 0.031,
                pooled_sd_log: 0.029,
                prior_df: 77.0,
                cases_pooled: 12,
                sd_log: 0.0293,
                df: 84.0,
                within_cv: 0.02,
                repetitions: 5,
                run_sd_log: 0.0262,
                mde_pct: 11.2,
                mde_confirmed_pct: 7.4,
                target_pct: 5.0,
                repetitions_for_target: None,
                runs_for_target: Some(9),
            }),
            change_points: vec![ChangePoint {
                job_id: "31".into(),
                time_ms: 1_795_284_000_000,
                index: 12,
                before: 0.1,
                after: 0.106,
                shift_pct: 6.0,
            }],
            ..Default::default()
        };
        let t = baseline_text(&b);
        for want in [
            "run-to-run sd 3.10% over 8 runs, pooled with 12 cases of the profile (prior sd 2.90%, 77 df): judged with sd 2.93% on 84 df",
            "within-run CV 2.00% at 5 repetitions; the run-level shift alone is sd 2.62%",
            "detects changes of 11.2% or more in one run, 7.4% with its confirming re-runs (80% power)",
            "to detect 5%: no number of repetitions (the run-level shift dominates), or 9 runs pooled",
            "+6.0% from job 31 (2026-11-21T18:00:00Z, run 13 of the history): 0.100 -> 0.106",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        let v = baseline_json(&b);
        assert_eq!(v["noise"]["mde_pct"], 11.2);
        assert_eq!(v["noise"]["runs_for_target"], 9);
        assert_eq!(v["change_points"][0]["index"], 12);
        let list = baselines_table(&[b]);
        assert!(
            list.contains("MDE") && list.contains("11.2%") && list.contains("+6.0% @31"),
            "{list}"
        );
    }
}
