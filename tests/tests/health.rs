//! End-to-end tests of agent health: real msched, msagent and msctl
//! processes. Agents probe their host again every `--probe-interval` (disk
//! free, NPU health through a fake `npu-smi` printing a recorded table); an
//! unhealthy probe or three infra errors in a row quarantine an agent, a
//! quarantined agent's running attempt moves to another agent at once, and a
//! passing `msctl agent check` releases an automatic quarantine.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The recorded `npu-smi info` of an 8-card 910B host (every card `OK`).
fn healthy_table() -> String {
    let p = repo_root().join("agent/tests/fixtures/npu-smi/info-910b-8card-24.1.0.txt");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// The same table with card 5's Health turned to `Alarm`.
fn alarm_table() -> String {
    let ok = "| 5     910B                | OK            |";
    let table = healthy_table();
    assert!(table.contains(ok), "the fixture has card 5 OK");
    table.replace(ok, "| 5     910B                | Alarm         |")
}

/// A fake `npu-smi` that prints the table file next to it for `info` (and
/// fails for anything else, as a tool without that subcommand would). The
/// test rewrites the table to change what the next probe sees.
struct FakeNpuSmi {
    script: PathBuf,
    table: PathBuf,
}

impl FakeNpuSmi {
    fn new(dir: &Path, table: &str) -> FakeNpuSmi {
        use std::os::unix::fs::PermissionsExt;
        let dir = dir.join("npu-smi");
        std::fs::create_dir_all(&dir).unwrap();
        let table_path = dir.join("table.txt");
        std::fs::write(&table_path, table).unwrap();
        let script = dir.join("npu-smi");
        let body = format!(
            "#!/bin/sh\nif [ \"$1\" = info ] && [ $# -eq 1 ]; then exec cat '{}'; fi\n\
             echo \"npu-smi: unsupported: $*\" >&2\nexit 1\n",
            table_path.display()
        );
        std::fs::write(&script, body).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        FakeNpuSmi {
            script,
            table: table_path,
        }
    }

    /// Replaces the table atomically (a probe never reads half of it).
    fn show(&self, table: &str) {
        let tmp = self.table.with_extension("new");
        std::fs::write(&tmp, table).unwrap();
        std::fs::rename(&tmp, &self.table).unwrap();
    }
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
fn an_unhealthy_npu_probe_quarantines_the_agent_and_the_check_says_why() {
    let mut f = Fleet::new();
    let npu = FakeNpuSmi::new(f.path(), &healthy_table());
    f.add_agent(
        "n1",
        &[],
        &[
            "--npu-smi",
            &s(&npu.script),
            "--probe-interval",
            "1s",
            "--min-disk-free-mb",
            "1",
        ],
    );
    let a = f.agent_json("n1").unwrap();
    assert_eq!(a["state"], "online", "{a}");
    assert_eq!(a["npus"].as_array().map(Vec::len), Some(8), "{a}");
    assert_eq!(a["health"]["status"], "ok", "{a}");
    npu.show(&alarm_table());
    let a = wait_agent_state(&f, "n1", "quarantined");
    assert_eq!(a["state_reason"], "unhealthy probe: npu 5: Alarm", "{a}");
    assert_eq!(a["health"]["status"], "degraded", "{a}");
    assert_eq!(a["npus"][5]["health"], "Alarm", "{a}");
    assert_eq!(a["quarantine"]["auto"], true, "{a}");
    let row = agents_row(&f, "n1");
    assert!(
        row.contains("quarantined (unhealthy probe: npu 5: Alarm)"),
        "{row}"
    );
    // A check while the card still alarms fails (exit 1) and says so.
    let out = f.ctl(&["agent", "check", "n1"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stdout.contains("unhealthy: npu 5: Alarm"), "{out}");
    assert_eq!(agent_state(&f, "n1").0, "quarantined");
    // Repaired: the next check passes and releases it.
    npu.show(&healthy_table());
    let out = f.ctl(&["agent", "check", "n1", "--json"]);
    assert_eq!(out.code, 0, "{out}");
    let a = wait_agent_state(&f, "n1", "online");
    assert_eq!(a["health"]["status"], "ok", "{a}");
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
