//! End-to-end tests of processes left holding an attempt's devices: real
//! msched, msagent and msctl processes, and a real `sleep` started by the
//! test itself, outside the job, so that the attempt's containment does not
//! kill it. The agent's NPUs come from the fake `npu-smi` (the recorded
//! 8-card 910B table), whose process table lists what the test says.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// An agent with 8 slots on the recorded 8-card 910B host, probing every second.
fn npu_agent(f: &mut Fleet, npu: &FakeNpuSmi) {
    let script = s(&npu.script);
    f.add_agent(
        "n1",
        &[],
        &[
            "--npu-smi",
            &script,
            "--slots",
            "8",
            "--min-disk-free-mb",
            "1",
            "--probe-interval",
            "1s",
        ],
    );
}

/// Submits a `--npus 4` job of one passing test, waits for it to end and
/// checks that it passed holding card 2.
fn run_job_on_card_2(f: &Fleet) -> String {
    let suite = f.write_suite("quick", &[("test_quick.py", "def test_ok():\n    pass\n")]);
    let id = f.submit(&["pytest", "--dir", &s(&suite), "--npus", "4"]);
    let done = f.wait_terminal(&id);
    assert_eq!(done["state"], "passed", "{done}");
    let devices = done["devices"].as_array().cloned().unwrap_or_default();
    assert!(
        devices.iter().any(|d| d["id"] == "npu 2 chip 0"),
        "the job got card 2: {done}"
    );
    id
}

fn card(agent: &Value, i: usize) -> &Value {
    &agent["devices"][i]
}

/// Kills the test's own `sleep` if a failed assertion leaves it running.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &self.0.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn a_leftover_process_on_a_jobs_card_is_killed_and_the_agent_stays_online() {
    let mut f = Fleet::new();
    let npu = FakeNpuSmi::new(f.path(), &healthy_table());
    npu_agent(&mut f, &npu);
    f.wait_agent_connected("n1");

    // Started by the test, not the job: containment does not know it.
    let mut sleep = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("sleep starts");
    let pid = sleep.id();
    let _guard = KillOnDrop(pid);
    // Reaped as soon as it dies, so that /proc/<pid> (what the fake lists it
    // by) goes with it.
    let (died, death) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = died.send(sleep.wait());
    });
    npu.list_processes(&[FakeNpuProcess {
        npu: 2,
        pid,
        name: "sleep",
        while_alive: true,
    }]);

    run_job_on_card_2(&f);
    let status = death
        .recv_timeout(Duration::from_secs(10))
        .expect("the leftover sleep was killed after the job")
        .expect("waited");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "SIGKILLed: {status:?}");

    // Gone from the card: nothing withheld, the agent keeps working.
    std::thread::sleep(Duration::from_millis(2500));
    let agent = f.agent_json("n1").expect("listed");
    assert_eq!(agent["state"], "online", "{agent}");
    assert_eq!(card(&agent, 2)["health"], "OK", "{agent}");
    assert_eq!(card(&agent, 2)["healthy"], true, "{agent}");
}

#[test]
fn a_process_that_cannot_be_killed_withholds_the_card_and_quarantines_the_agent() {
    let mut f = Fleet::new();
    let npu = FakeNpuSmi::new(f.path(), &healthy_table());
    npu_agent(&mut f, &npu);
    f.wait_agent_connected("n1");

    // A pid above pid_max never exists: the kill fails, and the fake keeps
    // listing it on card 2, as a process the agent cannot end would stay.
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("pid_max")
        .trim()
        .parse()
        .expect("a number");
    let pid = pid_max + 1;
    npu.list_processes(&[FakeNpuProcess {
        npu: 2,
        pid,
        name: "python3",
        while_alive: false,
    }]);

    let id = run_job_on_card_2(&f);
    let held = format!("held by pid {pid} (python3) after job {id}");
    let agent = wait_for(
        Duration::from_secs(30),
        "the agent to be quarantined for card 2",
        || f.agent_json("n1").filter(|a| a["state"] == "quarantined"),
        || format!("{:?}", f.agent_json("n1")),
    );
    let reason = agent["state_reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&format!("npu 2: {held}")), "{agent}");
    assert_eq!(card(&agent, 2)["health"], held.as_str(), "{agent}");
    assert_eq!(card(&agent, 2)["healthy"], false, "{agent}");
    assert_eq!(card(&agent, 1)["healthy"], true, "only card 2: {agent}");
    // A check fails while the process holds the card.
    let check = f.ctl(&["agent", "check", "n1"]);
    assert_ne!(check.code, 0, "{check}");
    assert!(check.stdout.contains(&held), "{check}");

    // The process is gone at a later probe: the card is healthy again, and a
    // passing check releases the quarantine.
    npu.list_processes(&[]);
    wait_for(
        Duration::from_secs(30),
        "card 2 to be healthy again",
        || f.agent_json("n1").filter(|a| card(a, 2)["healthy"] == true),
        || format!("{:?}", f.agent_json("n1")),
    );
    let check = f.ctl(&["agent", "check", "n1"]);
    assert_eq!(check.code, 0, "{check}");
    let agent = f.agent_json("n1").expect("listed");
    assert_eq!(agent["state"], "online", "{agent}");
}
