//! End-to-end tests of accelerators as resources: real msched, msagent and
//! msctl processes. The agent's NPUs come from a fake `npu-smi` printing the
//! recorded 8-card 910B table (`--npu-smi`), its GPUs from the test-only
//! recorded inventory (`MSAGENT_TEST_GPU_INVENTORY`, debug builds). Each
//! test's pytest writes the device variables it sees to a file and waits for
//! the test to release it, so the tests see which jobs hold which devices at
//! the same time.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A suite whose one test writes `ASCEND_RT_VISIBLE_DEVICES`,
/// `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES` (or `<unset>`) to
/// `$ENV_OUT/<job>.env`, then waits for `$ENV_OUT/release-<job>` (or
/// `release-all`).
fn env_suite(f: &Fleet) -> (PathBuf, PathBuf) {
    let out = f.root.join("env-out");
    std::fs::create_dir_all(&out).unwrap();
    let suite = f.write_suite(
        "devices-suite",
        &[(
            "test_env.py",
            r#"import os, pathlib, time

def test_sees_its_devices():
    out = pathlib.Path(os.environ["ENV_OUT"])
    job = os.environ["MSFLEET_JOB_ID"]
    seen = [os.environ.get(k, "<unset>") for k in
            ("ASCEND_RT_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")]
    tmp = out / (job + ".tmp")
    tmp.write_text("\n".join(seen) + "\n")
    tmp.rename(out / (job + ".env"))
    deadline = time.time() + 60
    while time.time() < deadline:
        if (out / ("release-" + job)).exists() or (out / "release-all").exists():
            return
        time.sleep(0.05)
    raise AssertionError("never released")
"#,
        )],
    );
    (suite, out)
}

/// What job `id`'s test saw: (ASCEND_RT_VISIBLE_DEVICES, CUDA_VISIBLE_DEVICES,
/// NVIDIA_VISIBLE_DEVICES), once it wrote them.
fn seen(f: &Fleet, out: &Path, id: &str) -> (String, String, String) {
    let path = out.join(format!("{id}.env"));
    let text = wait_for(
        JOB_DEADLINE,
        &format!("job {id}'s test to write its devices"),
        || std::fs::read_to_string(&path).ok(),
        || serde_json::to_string_pretty(&f.show(id)).unwrap_or_default(),
    );
    let mut lines = text.lines().map(str::to_string);
    let mut next = || lines.next().unwrap_or_default();
    (next(), next(), next())
}

fn ids(list: &str) -> BTreeSet<u32> {
    list.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().unwrap_or_else(|e| panic!("'{list}': {e}")))
        .collect()
}

fn release(out: &Path, id: &str) {
    std::fs::write(out.join(format!("release-{id}")), "").unwrap();
}

fn submit_npus(f: &Fleet, suite: &Path, out: &Path, n: &str) -> String {
    f.submit(&[
        "pytest",
        "--dir",
        &s(suite),
        "--npus",
        n,
        "--env",
        &format!("ENV_OUT={}", s(out)),
    ])
}

/// An agent with 8 slots on the recorded 8-card 910B host.
fn npu_agent(f: &mut Fleet, npu: &FakeNpuSmi, extra: &[&str]) {
    let mut args = vec![
        "--npu-smi".to_string(),
        s(&npu.script),
        "--slots".into(),
        "8".into(),
        "--min-disk-free-mb".into(),
        "1".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    f.add_agent("n1", &[], &args);
}

fn agents_row(f: &Fleet, name: &str) -> String {
    let out = f.ctl(&["agents"]);
    assert_eq!(out.code, 0, "{out}");
    out.stdout
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no row for {name}: {out}"))
        .to_string()
}

fn device_tasks(a: &Value) -> Vec<Value> {
    a["devices"]
        .as_array()
        .expect("devices listed")
        .iter()
        .map(|d| d["task"].clone())
        .collect()
}

#[test]
fn two_npu_jobs_run_at_once_on_disjoint_cards_and_a_third_waits_for_one() {
    let mut f = Fleet::new();
    let npu = FakeNpuSmi::new(f.path(), &healthy_table());
    npu_agent(&mut f, &npu, &[]);
    let (suite, out) = env_suite(&f);

    let a = submit_npus(&f, &suite, &out, "4");
    let b = submit_npus(&f, &suite, &out, "4");
    let (seen_a, cuda_a, nvidia_a) = seen(&f, &out, &a);
    let (seen_b, _, _) = seen(&f, &out, &b);
    let (da, db) = (ids(&seen_a), ids(&seen_b));
    assert_eq!(da.len(), 4, "{seen_a}");
    assert_eq!(db.len(), 4, "{seen_b}");
    assert!(da.is_disjoint(&db), "{seen_a} vs {seen_b}");
    assert_eq!(
        da.union(&db).copied().collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
    assert_eq!(cuda_a, "", "an NPU job sees no GPU");
    assert_eq!(nvidia_a, "void");
    assert_eq!(f.show(&a)["state"], "running");
    assert_eq!(f.show(&b)["state"], "running");

    // A third waits although five slots are free: every card is taken.
    let c = submit_npus(&f, &suite, &out, "4");
    // A job asking for no device runs at once and sees none.
    let plain = f.submit(&[
        "pytest",
        "--dir",
        &s(&suite),
        "--env",
        &format!("ENV_OUT={}", s(&out)),
    ]);
    let (plain_npus, plain_cuda, _) = seen(&f, &out, &plain);
    assert_eq!((plain_npus.as_str(), plain_cuda.as_str()), ("", ""));
    release(&out, &plain);
    assert_eq!(f.wait_terminal(&plain)["state"], "passed");
    let third = f.show(&c);
    assert_eq!(third["state"], "queued", "no free card for the third");
    assert_eq!(
        third["warnings"][0], "waiting for free devices: it asks for 4 npus; n1: 0 of 8 npus free",
        "{third}"
    );

    // What users see: the devices in show and the events, busy cards in agents.
    let text = f.ctl(&["show", &a]);
    let want = format!(
        "devices:   npu {}",
        da.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    );
    assert!(text.stdout.contains(&want), "{want} in:\n{text}");
    let row = agents_row(&f, "n1");
    assert!(row.contains("8/8 busy"), "{row}");
    let agent = f.agent_json("n1").unwrap();
    let holders: BTreeSet<String> = device_tasks(&agent)
        .iter()
        .map(|t| t.as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(holders, [a.clone(), b.clone()].into(), "{agent}");

    // One finishes: the third gets its cards.
    release(&out, &a);
    assert_eq!(f.wait_terminal(&a)["state"], "passed");
    let (seen_c, _, _) = seen(&f, &out, &c);
    assert_eq!(ids(&seen_c), da, "the freed cards");
    let shown = f.show(&c);
    assert_eq!(
        shown["devices"].as_array().map(Vec::len),
        Some(4),
        "{shown}"
    );
    std::fs::write(out.join("release-all"), "").unwrap();
    for id in [&b, &c] {
        assert_eq!(f.wait_terminal(id)["state"], "passed");
    }
    // The job's events name its devices.
    let events = f.ctl(&["watch", &c, "--json"]);
    let want = format!(
        "attempt 1 on n1 (devices: npu {})",
        da.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    );
    assert!(events.stdout.contains(&want), "{want} in:\n{events}");
    let agent = f.agent_json("n1").unwrap();
    assert!(
        device_tasks(&agent).iter().all(Value::is_null),
        "all free again: {agent}"
    );
}

#[test]
fn more_npus_than_any_agent_has_are_refused_at_submit() {
    let mut f = Fleet::new();
    let npu = FakeNpuSmi::new(f.path(), &healthy_table());
    npu_agent(&mut f, &npu, &[]);
    let (suite, _) = env_suite(&f);
    let out = f.ctl(&["submit", "pytest", "--dir", &s(&suite), "--npus", "9"]);
    assert_eq!(out.code, 2, "{out}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "one line: {out}");
    assert!(
        lines[0].contains("n1: has 8 npus that fit, the job asks for 9 npus"),
        "{out}"
    );
    let out = f.ctl(&[
        "submit",
        "pytest",
        "--dir",
        &s(&suite),
        "--npus",
        "1",
        "--npu-memory",
        "64G",
    ]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("at least 64 GiB each"), "{out}");
    let out = f.ctl(&[
        "submit",
        "pytest",
        "--dir",
        &s(&suite),
        "--npu-memory",
        "lots",
    ]);
    assert_ne!(out.code, 0, "{out}");
    assert!(f.list().is_empty(), "nothing was stored");
}

#[test]
fn an_unhealthy_npu_is_withheld_and_the_rest_of_the_host_keeps_working() {
    let mut f = Fleet::new();
    let npu = FakeNpuSmi::new(f.path(), &healthy_table());
    npu_agent(&mut f, &npu, &["--probe-interval", "1s"]);
    let (suite, out) = env_suite(&f);
    npu.show(&table_with_health(0, "Alarm"));
    let agent = wait_for(
        Duration::from_secs(30),
        "card 0 to be reported unhealthy",
        || {
            let a = f.agent_json("n1")?;
            (a["devices"][0]["healthy"] == false).then_some(a)
        },
        || format!("{:?}", f.agent_json("n1")),
    );
    assert_eq!(
        agent["state"], "online",
        "a sick card does not stop the host: {agent}"
    );
    assert_eq!(agent["devices"][0]["health"], "Alarm");
    let row = agents_row(&f, "n1");
    assert!(row.contains("0/8 busy, 1 unhealthy"), "{row}");

    let a = submit_npus(&f, &suite, &out, "4");
    assert_eq!(ids(&seen(&f, &out, &a).0), [1, 2, 3, 4].into());
    // Three healthy cards are left: a second job of four waits.
    let b = submit_npus(&f, &suite, &out, "4");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(f.show(&b)["state"], "queued");
    // The check passes and names what it withholds.
    let check = f.ctl(&["agent", "check", "n1"]);
    assert_eq!(check.code, 0, "{check}");
    assert!(check.stdout.contains("withheld: npu 0: Alarm"), "{check}");
    // Repaired: the next probe gives card 0 back, and the second job runs.
    npu.show(&healthy_table());
    assert_eq!(ids(&seen(&f, &out, &b).0), [0, 5, 6, 7].into());
    std::fs::write(out.join("release-all"), "").unwrap();
    for id in [&a, &b] {
        assert_eq!(f.wait_terminal(id)["state"], "passed");
    }
}

/// A recorded inventory of two H100s (UUIDs as NVML prints them).
const GPUS: &str = r#"[
  {"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-5d3a1c2e-0000-4000-8000-000000000000",
   "memory_mb": 81559, "driver_version": "550.54.15", "cuda_driver_version": "12.4",
   "compute_capability": "9.0", "mig_mode": "disabled", "health": "ok"},
  {"index": 1, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-5d3a1c2e-1111-4000-8000-000000000000",
   "memory_mb": 81559, "driver_version": "550.54.15", "cuda_driver_version": "12.4",
   "compute_capability": "9.0", "mig_mode": "disabled", "health": "ok"}
]"#;

#[test]
fn gpus_are_assigned_by_uuid_from_the_recorded_inventory() {
    let mut f = Fleet::new();
    let inventory = f.path().join("gpus.json");
    std::fs::write(&inventory, GPUS).unwrap();
    f.add_agent_with_env(
        "g1",
        &[],
        &["--slots", "4", "--min-disk-free-mb", "1"],
        &[("MSAGENT_TEST_GPU_INVENTORY", &s(&inventory))],
    );
    let (suite, out) = env_suite(&f);
    let submit = |extra: &[&str]| {
        let env = format!("ENV_OUT={}", s(&out));
        let dir = s(&suite);
        let mut args = vec!["pytest", "--dir", &dir, "--env", &env];
        args.extend_from_slice(extra);
        f.submit(&args)
    };
    let gpu_model = "gpu.model=~\"H100\"";
    let a = submit(&["--gpus", "1", "--gpu-memory", "40G", "--require", gpu_model]);
    let b = submit(&["--gpus", "1"]);
    let (npus_a, cuda_a, nvidia_a) = seen(&f, &out, &a);
    let (_, cuda_b, nvidia_b) = seen(&f, &out, &b);
    let uuids: BTreeSet<String> = [cuda_a.clone(), cuda_b.clone()].into();
    assert_eq!(
        uuids,
        [
            "GPU-5d3a1c2e-0000-4000-8000-000000000000".to_string(),
            "GPU-5d3a1c2e-1111-4000-8000-000000000000".to_string()
        ]
        .into(),
        "one GPU each, by UUID"
    );
    assert_eq!(cuda_a, nvidia_a);
    assert_eq!(cuda_b, nvidia_b);
    assert_eq!(npus_a, "", "a GPU job sees no NPU");
    let c = submit(&["--gpus", "1"]);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(f.show(&c)["state"], "queued", "both GPUs are held");
    let row = agents_row(&f, "g1");
    assert!(row.contains("2/2 busy"), "{row}");
    let big = f.ctl(&[
        "submit",
        "pytest",
        "--dir",
        &s(&suite),
        "--gpus",
        "1",
        "--gpu-memory",
        "100G",
    ]);
    assert_eq!(big.code, 2, "{big}");
    assert!(big.stderr.contains("g1: has 0 gpus that fit"), "{big}");
    std::fs::write(out.join("release-all"), "").unwrap();
    for id in [&a, &b, &c] {
        assert_eq!(f.wait_terminal(id)["state"], "passed");
    }
}

#[test]
fn devices_stay_held_across_a_scheduler_kill_and_restart() {
    let mut f = Fleet::new();
    let npu = FakeNpuSmi::new(f.path(), &healthy_table());
    npu_agent(&mut f, &npu, &[]);
    let (suite, out) = env_suite(&f);
    let a = submit_npus(&f, &suite, &out, "4");
    let held = ids(&seen(&f, &out, &a).0);
    assert_eq!(f.show(&a)["state"], "running");

    f.sched.kill9();
    f.sched.restart();
    f.wait_agent_connected("n1");
    assert_eq!(f.show(&a)["state"], "running", "the attempt was resumed");
    let agent = f.agent_json("n1").unwrap();
    let holders: Vec<Value> = device_tasks(&agent);
    assert_eq!(
        holders
            .iter()
            .filter(|t| t.as_str() == Some(a.as_str()))
            .count(),
        4,
        "{agent}"
    );
    let b = submit_npus(&f, &suite, &out, "4");
    let got = ids(&seen(&f, &out, &b).0);
    assert!(got.is_disjoint(&held), "{got:?} vs held {held:?}");
    let c = submit_npus(&f, &suite, &out, "1");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(f.show(&c)["state"], "queued", "all eight are held");
    std::fs::write(out.join("release-all"), "").unwrap();
    for id in [&a, &b, &c] {
        assert_eq!(f.wait_terminal(id)["state"], "passed");
    }
}
