//! End-to-end tests of agent health: real msched, msagent and msctl
//! processes. Agents probe their host again every `--probe-interval` (disk
//! free, NPU health through a fake `npu-smi` printing a recorded table; a
//! sick card alone is withheld, not a reason to quarantine: `devices.rs`);
//! an unhealthy probe or three infra errors in a row quarantine an agent, a
//! quarantined agent's running attempt moves to another agent at once, and a
//! passing `msctl agent check` releases an automatic quarantine.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn agent_state(f: &Fleet, name: &str) -> (String, String) {
    let a = f.agent_json(name).expect("the agent is listed");
    (
        a["state"].as_str().unwrap_or_default().to_string(),
        a["state_reason"].as_str().unwrap_or_default().to_string(),
    )
}

fn wait_agent_state(f: &Fleet, name: &str, state: &str) -> Value {
    wait_for(
        Duration::from_secs(30),
        &format!("agent {name} to be {state}"),
        || f.agent_json(name).filter(|a| a["state"] == state),
        || format!("{:?}", f.agent_json(name)),
    )
}

/// The `msctl agents` table row of `name`.
fn agents_row(f: &Fleet, name: &str) -> String {
    let out = f.ctl(&["agents"]);
    assert_eq!(out.code, 0, "{out}");
    out.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name}:\n{out}"))
        .to_string()
}

#[test]
fn three_infra_errors_quarantine_the_agent_and_a_passing_check_releases_it() {
    let mut f = Fleet::new();
    let npu = FakeNpuSmi::new(f.path(), &healthy_table());
    f.add_agent(
        "a1",
        &[],
        &[
            "--npu-smi",
            &s(&npu.script),
            "--min-disk-free-mb",
            "1",
            "--allow-git",
            "http://127.0.0.1:**",
        ],
    );
    assert_eq!(agent_state(&f, "a1").0, "online");
    // Errors that are the job's own doing (a source dir that does not exist)
    // are `error` but say nothing about the agent: never quarantined for them.
    let missing = f.root.join("no-such-checkout");
    for i in 1..=4 {
        let id = f.submit(&["pytest", "--dir", &s(&missing), "--retries", "0"]);
        let j = f.wait_terminal(&id);
        assert_eq!(j["state"], "error", "job {i}: {j}");
        assert_eq!(agent_state(&f, "a1").0, "online", "after {i} job faults");
    }
    // A fetch the agent cannot make (nothing listens on the port: the
    // agent's network, not the job's): each attempt ends `error`, and the
    // third in a row quarantines the agent.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/repo.git",
        dead.local_addr().unwrap().port()
    );
    drop(dead);
    for i in 1..=3 {
        let id = f.submit(&["pytest", "--git", &url, "--retries", "0"]);
        let j = f.wait_terminal(&id);
        assert_eq!(j["state"], "error", "job {i}: {j}");
        let (state, _) = agent_state(&f, "a1");
        let expect = if i < 3 { "online" } else { "quarantined" };
        assert_eq!(state, expect, "after {i} infra errors: {j}");
    }
    let (_, reason) = agent_state(&f, "a1");
    assert!(
        reason.starts_with("3 infra errors in a row (last: job 7: git clone failed"),
        "{reason}"
    );
    let row = agents_row(&f, "a1");
    assert!(
        row.contains("quarantined (3 infra errors in a row"),
        "msctl agents shows why: {row}"
    );
    // Work waits while it is quarantined.
    let suite = f.copy_example("suite");
    let waiting = f.submit(&["pytest", "--dir", &s(&suite), "--", "tests/smoke"]);
    std::thread::sleep(Duration::from_millis(1500));
    let j = f.show(&waiting);
    assert_eq!(j["state"], "queued", "{j}");
    assert_eq!(
        j["warnings"][0],
        "every matching agent is offline, drained or quarantined"
    );
    // The health check runs there anyway, passes and releases it.
    let out = f.ctl(&["agent", "check", "a1"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("passed"), "{out}");
    assert!(out.stdout.contains("healthy: disk free"), "{out}");
    assert!(
        out.stdout.contains("npu 5 chip 0 910B: OK"),
        "the findings: {out}"
    );
    let j = f.wait_terminal(&waiting);
    assert_eq!(j["state"], "passed", "the waiting job runs now: {j}");
    assert_eq!(j["agent"], "a1", "{j}");
    let a = wait_agent_state(&f, "a1", "online");
    assert_eq!(a["infra_errors"], 0, "{a}");
    assert_eq!(a["quarantine"], Value::Null, "{a}");
}

#[test]
fn a_quarantined_agents_running_attempt_moves_to_another_agent() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &["--min-disk-free-mb", "1"]);
    let suite = f.sleepy_suite("sleepy", 10, 0.5);
    let id = f.submit(&["pytest", "--dir", &s(&suite), "--retries", "0"]);
    f.wait_job(&id, "a test passed on a1", |j| {
        j["agent"] == "a1" && count(j, "passed") >= 1
    });
    f.add_agent("b1", &[], &["--min-disk-free-mb", "1"]);
    let a1_pid = f.agent("a1").pid().expect("a1 runs");
    assert!(!descendants(a1_pid).is_empty(), "a1 runs pytest");
    let out = f.ctl(&["agent", "quarantine", "a1", "--reason", "fan noise"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("quarantined"), "{out}");
    let (state, reason) = agent_state(&f, "a1");
    assert_eq!(state, "quarantined");
    assert!(reason.ends_with(": fan noise"), "{reason}");
    assert!(reason.starts_with("admin "), "{reason}");
    // a1 stops its pytest at once (SIGTERM to the group; the kill grace is 2s).
    wait_for(
        Duration::from_secs(5),
        "a1's pytest to be stopped",
        || descendants(a1_pid).is_empty().then_some(()),
        || format!("{:?}", descendants(a1_pid)),
    );
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "passed", "{j}");
    assert_eq!(j["agent"], "b1", "{j}");
    assert_eq!(j["attempts"], 2, "{j}");
    assert_eq!(
        j["quarantined_attempts"], 1,
        "not counted against --retries 0: {j}"
    );
    assert_eq!(count(&j, "passed"), 10, "every test once, on b1: {j}");
    let a1 = f.agent_json("a1").unwrap();
    assert_eq!(a1["running"].as_array().map(Vec::len), Some(0), "{a1}");
    // An admin's quarantine is not lifted by a passing check; undrain is.
    let out = f.ctl(&["agent", "check", "a1"]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(agent_state(&f, "a1").0, "quarantined");
    let out = f.ctl(&["agent", "undrain", "a1"]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(agent_state(&f, "a1"), ("online".to_string(), String::new()));
}

#[test]
fn refreshed_disk_free_is_visible_in_agents_json() {
    let mut f = Fleet::new();
    f.add_agent(
        "d1",
        &[],
        &["--probe-interval", "1s", "--min-disk-free-mb", "1"],
    );
    let first = f.agent_json("d1").unwrap();
    let before = first["host"]["disk_free_mb"].as_u64().expect("disk free");
    let probed = first["health"]["probed_at_ms"]
        .as_i64()
        .expect("probe time");
    // Take 1 GiB of the work dir's file system.
    let ballast = f.agent("d1").work_dir.join("ballast");
    let out = run_cmd(
        {
            let mut c = std::process::Command::new("fallocate");
            c.args(["-l", "1G", &s(&ballast)]);
            c
        },
        Duration::from_secs(30),
    );
    assert_eq!(out.code, 0, "fallocate: {out}");
    let a = wait_for(
        Duration::from_secs(30),
        "a probe that sees the disk fill",
        || {
            let a = f.agent_json("d1")?;
            let now = a["host"]["disk_free_mb"].as_u64()?;
            (now + 800 <= before).then_some(a)
        },
        || format!("{:?}", f.agent_json("d1")),
    );
    assert!(
        a["health"]["probed_at_ms"].as_i64().unwrap() > probed,
        "a newer probe: {a}"
    );
    std::fs::remove_file(&ballast).unwrap();
}
