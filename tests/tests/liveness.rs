//! Fleet liveness end to end: real msched / msagent / msctl processes, real
//! signals. An agent frozen with SIGSTOP past its lease is `lost` and its job
//! finishes elsewhere; a restarted agent takes its name back from its frozen
//! old process; a drain deadline requeues what still runs; a gone agent can
//! be forgotten.
//!
//! Run `cargo build --bins` first; pytest comes from `$MSFLEET_PYTHON` or
//! `<repo>/.venv` (`scripts/venv.sh`).

mod common;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A suite of `n` passing tests after one that writes pytest's pid to
/// `$PID_DIR/attempt-N`. On the job's first attempt each test sleeps
/// `first_s`, on later ones 0.05 s: the first attempt is still running when a
/// test stops its agent, the retry is quick.
fn pid_suite(f: &Fleet, name: &str, n: usize, first_s: f64) -> PathBuf {
    let mut src = String::from(
        "import os, pathlib, time\n\n\
         ATTEMPT = int(os.environ.get('MSFLEET_ATTEMPT', '1'))\n\
         SLEEP = FIRST if ATTEMPT == 1 else 0.05\n\n\
         def test_00_pid():\n\
         \x20   d = pathlib.Path(os.environ['PID_DIR'])\n\
         \x20   d.mkdir(exist_ok=True)\n\
         \x20   (d / f'attempt-{ATTEMPT}').write_text(str(os.getpid()))\n",
    );
    src = src.replace("FIRST", &first_s.to_string());
    for i in 1..=n {
        src += &format!("\ndef test_step_{i:02}():\n    time.sleep(SLEEP)\n");
    }
    f.write_suite(name, &[("test_pid.py", &src)])
}

/// The pid pytest wrote for `attempt`, once it has.
fn pytest_pid(dir: &Path, attempt: u32) -> i32 {
    let file = dir.join(format!("attempt-{attempt}"));
    wait_for(
        Duration::from_secs(30),
        &format!("pytest of attempt {attempt} to write its pid"),
        || std::fs::read_to_string(&file).ok()?.trim().parse().ok(),
        || format!("{} missing", file.display()),
    )
}

fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap_or_else(|e| panic!("{sig} to {pid}: {e}"));
}

fn wait_gone(pid: i32, what: &str) {
    wait_for(
        Duration::from_secs(20),
        what,
        || (!pid_alive(pid)).then_some(()),
        || format!("pid {pid} still alive"),
    );
}

fn wait_agent(f: &Fleet, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(
        Duration::from_secs(30),
        &format!("agent {name}: {what}"),
        || f.agent_json(name).filter(|a| pred(a)),
        || format!("{:#?}", f.agent_json(name)),
    )
}

/// The case: an agent frozen mid-suite (connection open, nothing
/// said) past its 3 s lease. It is shown `lost`, its job completes on the
/// other agent with every test counted once, and after SIGCONT its late
/// results are refused, its pytest is stopped and the job's result stays.
#[test]
fn an_agent_frozen_past_its_lease_is_lost_and_its_job_completes_on_the_other_agent() {
    let mut f = Fleet::new();
    f.add_agent("f1", &[], &[]);
    let suite = s(&pid_suite(&f, "frozen", 20, 1.5));
    let pids = f.path().join("pids");
    let env = format!("PID_DIR={}", s(&pids));
    let id = f.submit(&["pytest", "--dir", &suite, "--env", &env]);
    f.wait_job(&id, "two tests reported", |j| count(j, "total") >= 2);
    f.add_agent("f2", &[], &[]);
    let frozen_pytest = pytest_pid(&pids, 1);
    let agent_pid = f.agent("f1").pid().unwrap();
    signal(agent_pid, Signal::SIGSTOP);

    let lost = wait_agent(&f, "f1", "lost while frozen", |a| a["state"] == "lost");
    assert!(
        lost["state_reason"]
            .as_str()
            .unwrap()
            .contains("silent since"),
        "{lost:#}"
    );
    let text = f.ctl(&["agents"]);
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("f1") && l.contains("lost (silent since")),
        "{text}"
    );
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "passed", "{j:#}");
    assert_eq!(j["agent"], "f2", "{j:#}");
    assert_eq!(j["attempts"], 2, "one loss, one retry elsewhere: {j:#}");
    assert_eq!(j["agent_lost"], 1, "{j:#}");
    assert_eq!(count(&j, "total"), 21, "every test once: {j:#}");
    assert_eq!(count(&j, "passed"), 21, "{j:#}");
    let show = f.ctl(&["show", &id]);
    assert!(
        show.stdout
            .contains("lost:      1 with their agent (of 5 allowed)"),
        "{show}"
    );
    let events = f.ctl(&["watch", &id, "--json"]);
    assert!(
        events
            .stdout
            .contains("attempt 1 lost (agent f1 lost: silent "),
        "{events}"
    );
    assert!(
        pid_alive(frozen_pytest),
        "the frozen agent's pytest still runs (its agent cannot stop it)"
    );
    assert_eq!(
        f.agent_json("f1").unwrap()["state"],
        "lost",
        "still frozen, still lost"
    );

    signal(agent_pid, Signal::SIGCONT);
    wait_gone(
        frozen_pytest,
        "the woken agent to stop its abandoned pytest",
    );
    wait_agent(&f, "f1", "back online", |a| {
        a["state"] == "online" && a["connected"] == true
    });
    let log = std::fs::read_to_string(&f.agent("f1").log).unwrap();
    assert!(log.contains("abandoning attempt"), "{log}");
    let after = f.show(&id);
    assert_eq!(after["state"], "passed", "{after:#}");
    assert_eq!(after["attempts"], 2, "{after:#}");
    assert_eq!(
        count(&after, "total"),
        21,
        "late results are refused: {after:#}"
    );
    // Back and reconciled, it takes work again.
    let quick = s(&f.write_suite("quick", &[("test_q.py", "def test_q():\n    pass\n")]));
    let pinned = f.submit(&["pytest", "--dir", &quick, "--require", "agent.name==\"f1\""]);
    assert_eq!(f.wait_terminal(&pinned)["state"], "passed");
}

/// A restarted agent (a new msagent process, same name and token) while its
/// old process is frozen: it takes the name over and runs the next job; the
/// old process, woken, is refused, stops its pytest and exits.
#[test]
fn a_restarted_agent_takes_its_name_over_from_its_frozen_process() {
    let mut f = Fleet::new();
    f.add_agent("h1", &[], &[]);
    let suite = s(&pid_suite(&f, "long", 20, 1.5));
    let pids = f.path().join("pids");
    let env = format!("PID_DIR={}", s(&pids));
    let id = f.submit(&[
        "pytest",
        "--dir",
        &suite,
        "--env",
        &env,
        "--agent-lost-retries",
        "0",
    ]);
    f.wait_state(&id, "running");
    let old_pytest = pytest_pid(&pids, 1);
    let old_pid = f.agent("h1").pid().unwrap();
    signal(old_pid, Signal::SIGSTOP);

    let new = Agent::start(
        &f.sched.url(),
        &f.path().join("restarted"),
        "h1",
        &[],
        std::slice::from_ref(&f.root),
        &[],
    );
    f.extra_logs.push(new.log.clone());
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "error", "agent-lost retries 0: {j:#}");
    assert!(
        j["reason"]
            .as_str()
            .unwrap()
            .contains("agent h1 lost: another msagent process took its name over"),
        "{j:#}"
    );
    let quick = s(&f.write_suite("quick", &[("test_q.py", "def test_q():\n    pass\n")]));
    let next = f.submit(&["pytest", "--dir", &quick]);
    let done = f.wait_terminal(&next);
    assert_eq!(done["state"], "passed", "{done:#}");
    assert_eq!(done["agent"], "h1", "{done:#}");
    let new_log = std::fs::read_to_string(&new.log).unwrap();
    assert!(
        new_log.contains("assigned"),
        "the new process ran it:\n{new_log}"
    );

    signal(old_pid, Signal::SIGCONT);
    let old_log = f.agent("h1").log.clone();
    let status = wait_for(
        Duration::from_secs(30),
        "the fenced msagent to exit",
        || f.agent("h1").try_wait(),
        || std::fs::read_to_string(&old_log).unwrap_or_default(),
    );
    assert!(!status.success(), "{status}");
    let log = std::fs::read_to_string(&old_log).unwrap();
    assert!(log.contains("took the name over"), "{log}");
    assert!(
        !pid_alive(old_pytest),
        "the fenced agent stopped its pytest before exiting"
    );
    let agents = f.agents_json();
    let h1: Vec<&Value> = agents.iter().filter(|a| a["name"] == "h1").collect();
    assert_eq!(h1.len(), 1, "{agents:#?}");
    assert_eq!(
        h1[0]["connected"], true,
        "the new process stays: {agents:#?}"
    );
    f.agents.push(new);
}

/// `agent drain NAME --deadline`: what still runs at the deadline is stopped
/// and requeued to another agent without using its retries; the deadline is
/// durable across a scheduler restart and shown in `msctl agents`.
#[test]
fn a_drain_deadline_requeues_the_running_attempt_to_another_agent() {
    let mut f = Fleet::new();
    f.add_agent("d1", &[], &[]);
    let suite = s(&pid_suite(&f, "drained", 20, 1.5));
    let pids = f.path().join("pids");
    let env = format!("PID_DIR={}", s(&pids));
    let id = f.submit(&[
        "pytest",
        "--dir",
        &suite,
        "--env",
        &env,
        "--retries",
        "0",
        "--agent-lost-retries",
        "0",
    ]);
    f.wait_job(&id, "a test reported", |j| count(j, "total") >= 1);
    let first_pytest = pytest_pid(&pids, 1);
    f.add_agent("d2", &[], &[]);

    let bad = f.ctl(&["agent", "drain", "d1", "--deadline", "soon"]);
    assert_ne!(bad.code, 0, "{bad}");
    assert_eq!(bad.stderr_lines().len(), 1, "{bad}");
    let out = f.ctl(&["agent", "drain", "d1", "--deadline", "6s"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("agent d1: drained (deadline "), "{out}");
    let before = f.agent_json("d1").unwrap();
    let deadline = before["drain_deadline_ms"].as_i64().expect("a deadline");
    assert!(
        before["state_reason"]
            .as_str()
            .unwrap()
            .contains("drain deadline"),
        "{before:#}"
    );
    // Durable: the scheduler restarts before the deadline; the agents resume.
    f.sched.restart();
    f.wait_agent_connected("d1");
    let after = f.agent_json("d1").unwrap();
    assert_eq!(after["drain_deadline_ms"], deadline, "{after:#}");
    assert_eq!(after["state"], "drained", "{after:#}");
    let text = f.ctl(&["agents"]);
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("d1") && l.contains("drained (drain deadline")),
        "{text}"
    );

    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "passed", "{j:#}");
    assert_eq!(j["agent"], "d2", "{j:#}");
    assert_eq!(j["attempts"], 2, "{j:#}");
    assert_eq!(
        (j["agent_lost"].as_u64(), j["lost_retried"].as_u64()),
        (Some(0), Some(0)),
        "the stop used no retries: {j:#}"
    );
    assert_eq!(count(&j, "total"), 21, "{j:#}");
    let events = f.ctl(&["watch", &id, "--json"]);
    assert!(
        events.stdout.contains("drain deadline")
            && events
                .stdout
                .contains("requeued (its retries are not used)"),
        "{events}"
    );
    wait_gone(first_pytest, "the drained agent to stop the attempt");
    let d1 = f.agent_json("d1").unwrap();
    assert_eq!(d1["running"], serde_json::json!([]), "{d1:#}");
}

/// `agent forget NAME`: refused while the agent is connected; once it is
/// gone, it is removed (also after a restart) and each-agent fan-out no
/// longer lists it as not run.
#[test]
fn forget_removes_a_gone_agent_and_fan_out_no_longer_lists_it() {
    let mut f = Fleet::new();
    f.add_agent("g1", &[], &[]);
    f.add_agent("g2", &[], &[]);
    let refused = f.ctl(&["agent", "forget", "g1"]);
    assert_ne!(refused.code, 0, "{refused}");
    let lines = refused.stderr_lines();
    assert_eq!(lines.len(), 1, "{refused}");
    assert!(lines[0].contains("'g1' is connected"), "{refused}");

    f.agent("g1").terminate();
    wait_agent(&f, "g1", "offline", |a| a["connected"] == false);
    let quick = s(&f.write_suite("quick", &[("test_q.py", "def test_q():\n    pass\n")]));
    let parent = f.submit(&["pytest", "--dir", &quick, "--fanout", "each-agent"]);
    let p = f.wait_terminal(&parent);
    let not_run = p["not_run"].as_array().unwrap();
    assert!(
        not_run
            .iter()
            .any(|c| c.as_str().unwrap().starts_with("g1")),
        "{p:#}"
    );

    let out = f.ctl(&["agent", "forget", "g1"]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout.trim(), "agent g1: forgotten");
    f.sched.restart();
    f.wait_agent_connected("g2");
    let names: Vec<Value> = f.agents_json().iter().map(|a| a["name"].clone()).collect();
    assert_eq!(names, vec![Value::from("g2")]);
    let parent = f.submit(&["pytest", "--dir", &quick, "--fanout", "each-agent"]);
    let p = f.wait_terminal(&parent);
    assert_eq!(p["state"], "passed", "{p:#}");
    assert_eq!(p["not_run"], serde_json::json!([]), "{p:#}");
    assert_eq!(p["children"].as_array().unwrap().len(), 1, "{p:#}");
    let again = f.ctl(&["agent", "forget", "g1"]);
    assert_ne!(again.code, 0, "{again}");
    assert!(again.stderr.contains("no agent named 'g1'"), "{again}");
}

/// kill -9 of the scheduler under several agents, each running an attempt,
/// and an outage long enough that the agents back off for seconds (their
/// jittered backoff bounds reach 8-10 s): when msched is back every agent
/// registers again and resumes its attempt; none is declared lost (the
/// restart grace covers the longest backoff, not only the 3 s lease), and
/// every job passes on its first attempt, on the agent it started on, with
/// each test counted once.
#[test]
fn after_a_scheduler_kill9_every_agent_resumes_its_attempt_and_none_is_lost() {
    const AGENTS: usize = 4;
    const TESTS: u64 = 10;
    let mut f = Fleet::new();
    for i in 1..=AGENTS {
        f.add_agent(&format!("w{i}"), &[], &[]);
    }
    let suite = s(&f.sleepy_suite("ten", TESTS as usize, 1.5));
    let ids: Vec<String> = (0..AGENTS)
        .map(|_| f.submit(&["pytest", "--dir", &suite]))
        .collect();
    let before: Vec<Value> = ids
        .iter()
        .map(|id| {
            f.wait_job(id, "running with a result in", |j| {
                j["state"] == "running" && count(j, "total") >= 1
            })
        })
        .collect();
    let on: std::collections::BTreeSet<&str> = before
        .iter()
        .map(|j| j["agent"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(on.len(), AGENTS, "one job per agent: {before:#?}");

    f.sched.kill9();
    std::thread::sleep(Duration::from_millis(5_000));
    f.sched.restart();
    wait_for(
        Duration::from_secs(30),
        "every agent back (an attempt may finish while its agent backs off)",
        || {
            let back = f
                .agents_json()
                .iter()
                .filter(|a| a["connected"] == true)
                .count();
            (back == AGENTS).then_some(())
        },
        || format!("{:#?}", f.agents_json()),
    );
    for (id, started) in ids.iter().zip(&before) {
        let j = f.wait_terminal(id);
        assert_eq!(j["state"], "passed", "{j:#}");
        assert_eq!(j["attempts"], 1, "job {id} was run again: {j:#}");
        assert_eq!(j["agent"], started["agent"], "job {id} moved: {j:#}");
        assert_eq!(j["agent_lost"], 0, "{j:#}");
        assert_eq!(count(&j, "total"), TESTS, "{j:#}");
        assert_eq!(count(&j, "passed"), TESTS, "{j:#}");
    }
}
