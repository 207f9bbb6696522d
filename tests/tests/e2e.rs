//! End-to-end tests: real msched / msagent / msctl processes on ephemeral
//! ports, asserting what a user sees (msctl output, exit codes, `--json`).
//!
//! Run `cargo build --bins` first; pytest comes from `$MSFLEET_PYTHON` or
//! `<repo>/.venv` (`scripts/venv.sh`). Every test has its own temp dir and
//! scheduler, so they run in parallel.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The job id from msctl's "submitted job N" (printed on stderr by `submit --wait`).
fn submitted_id(out: &Out) -> String {
    out.stderr
        .lines()
        .find_map(|l| l.strip_prefix("submitted job "))
        .map(|id| id.trim().to_string())
        .unwrap_or_else(|| panic!("no 'submitted job N' line:\n{out}"))
}

/// The counts of msctl's final watch line "job N STATE: COUNTS in Xs (reason)".
fn final_line_counts(line: &str) -> BTreeMap<String, u64> {
    let after = line
        .split_once(": ")
        .unwrap_or_else(|| panic!("not a final watch line: {line}"))
        .1;
    let counts = after.split_once(" in ").map_or(after, |(c, _)| c);
    parse_counts(counts)
}

fn counts_of(j: &Value) -> BTreeMap<String, u64> {
    [
        "passed", "failed", "skipped", "xfailed", "xpassed", "errors",
    ]
    .iter()
    .map(|k| (k.to_string(), count(j, k)))
    .filter(|(_, n)| *n > 0)
    .collect()
}

const QUICK_TEST: &str = "def test_ok():\n    assert True\n";

// ====================================================================== 1

/// pytest's own summary counts for `args` run directly in `dir`, and its exit code.
fn pytest_directly(dir: &Path, args: &[&str]) -> (BTreeMap<String, u64>, i32, String) {
    let mut direct = Command::new(python());
    direct
        .args(["-m", "pytest", "-p", "no:cacheprovider"])
        .args(args)
        .current_dir(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let direct = run_cmd(direct, Duration::from_secs(120));
    let summary = direct
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('=') && l.contains(" in "))
        .unwrap_or_else(|| panic!("no pytest summary line:\n{direct}"))
        .to_string();
    let body = summary.trim_matches(|c| c == '=' || c == ' ');
    let counts = parse_counts(body.rsplit_once(" in ").map_or(body, |(c, _)| c));
    (counts, direct.code, summary)
}

/// Runs `dir` with `args` through the fleet (`submit --wait`) and checks that
/// the exit code, the watch summary and `show --json` agree with pytest run
/// directly. Returns the job as `show --json` has it.
fn assert_fleet_matches_pytest(f: &Fleet, dir: &Path, args: &[&str], want_state: &str) -> Value {
    let (pytest, pytest_code, summary) = pytest_directly(dir, args);
    let total: u64 = pytest.values().sum();
    let mut submit = vec!["submit", "pytest", "--dir"];
    let d = s(dir);
    submit.push(&d);
    submit.push("--wait");
    if !args.is_empty() {
        submit.push("--");
        submit.extend_from_slice(args);
    }
    let out = f.ctl(&submit);
    let id = submitted_id(&out);
    let want_code = match want_state {
        "passed" => 0,
        "failed" => 1,
        _ => 3,
    };
    assert_eq!(
        out.code, want_code,
        "{submit:?} (pytest itself exited {pytest_code}):\n{out}"
    );
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("job {id} {want_state}: ")),
        "final line: {last}\n{out}"
    );
    assert_eq!(
        final_line_counts(last),
        pytest,
        "watch summary vs pytest's '{summary}'\n{out}"
    );
    let outcome_lines = out
        .stdout
        .lines()
        .filter(|l| {
            [
                "PASSED ", "FAILED ", "SKIPPED ", "XFAILED ", "XPASSED ", "ERROR ",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .count() as u64;
    assert_eq!(
        outcome_lines, total,
        "one line per result ('{summary}'):\n{}",
        out.stdout
    );

    let j = f.show(&id);
    assert_eq!(j["state"], want_state, "{j:#}");
    assert_eq!(j["attempts"], 1, "{j:#}");
    assert_eq!(
        counts_of(&j),
        pytest,
        "show --json counts vs pytest's '{summary}': {j:#}"
    );
    assert_eq!(count(&j, "total"), total, "{j:#}");
    j
}

/// The fleet reports exactly what pytest itself reports for the example suite.
#[test]
fn fleet_counts_equal_pytests_own_summary() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let suite = f.copy_example("suite");
    let (pytest, code, summary) = pytest_directly(&suite, &[]);
    assert_eq!(code, 1, "pytest on examples/suite should exit 1: {summary}");
    assert_eq!(
        pytest.values().sum::<u64>(),
        14,
        "examples/suite has 14 tests: {summary}"
    );
    assert_eq!(pytest.get("failed"), Some(&1), "{summary}");
    assert_eq!(pytest.get("errors"), Some(&1), "{summary}");

    let j = assert_fleet_matches_pytest(&f, &suite, &[], "failed");
    assert_eq!(j["agent"], "a1", "{j:#}");
    assert_eq!(j["reason"], "tests failed", "{j:#}");

    // pytest's own terminal output is in the job's log.
    let id = j["id"].as_str().unwrap();
    let logs = f.ctl(&["logs", id]);
    assert_eq!(logs.code, 0, "{logs}");
    let counts_text = summary
        .trim_matches(|c| c == '=' || c == ' ')
        .rsplit_once(" in ")
        .unwrap()
        .0
        .to_string();
    assert!(
        logs.stdout.contains(&format!("= {counts_text} in ")),
        "msctl logs has pytest's summary '{counts_text}':\n{logs}"
    );
    assert!(
        logs.stdout.contains("operator fusion produced 41"),
        "{logs}"
    );
}

/// Other shapes of results agree with pytest too: a selection with deselected
/// tests, a plain pass/fail suite, a suite whose collection breaks.
#[test]
fn fleet_counts_equal_pytest_for_selections_and_collection_errors() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let suite = f.copy_example("suite");
    let j = assert_fleet_matches_pytest(
        &f,
        &suite,
        &["-m", "not nightly", "tests/smoke", "tests/regression"],
        "failed",
    );
    assert_eq!(
        count(&j, "total"),
        13,
        "the nightly test is deselected: {j:#}"
    );
    assert_fleet_matches_pytest(&f, &suite, &["tests/smoke"], "passed");
    let fail = f.copy_example("fail");
    assert_fleet_matches_pytest(&f, &fail, &[], "failed");
    let broken = f.write_suite(
        "broken",
        &[
            ("test_ok.py", QUICK_TEST),
            ("test_broken.py", "def test_x(:\n    pass\n"),
        ],
    );
    let j = assert_fleet_matches_pytest(&f, &broken, &[], "failed");
    assert_eq!(count(&j, "errors"), 1, "{j:#}");
    assert!(
        j["reason"].as_str().unwrap().contains("collection"),
        "{j:#}"
    );
}

/// A job's `--env PYTHONPATH=...` reaches the tests (it is common to need
/// `PYTHONPATH=src`), next to the agent's own plugin path.
#[test]

fn job_env_pythonpath_reaches_the_tests() {
    let mut f = Fleet::new();
    // PYTHONPATH is refused by the default policy; this agent's owner allows it.
    f.add_agent("a1", &[], &["--allow-env", "PYTHONPATH"]);
    let suite = f.write_suite(
        "srclayout",
        &[
            ("src/mylib.py", "def answer():\n    return 42\n"),
            (
                "tests/test_lib.py",
                "import mylib\n\ndef test_answer():\n    assert mylib.answer() == 42\n",
            ),
        ],
    );
    let out = f.ctl(&[
        "submit",
        "pytest",
        "--dir",
        &s(&suite),
        "--env",
        "PYTHONPATH=src",
        "--wait",
    ]);
    let j = f.show(&submitted_id(&out));
    assert_eq!(
        out.code, 0,
        "the job's PYTHONPATH was dropped: {j:#}\n{out}"
    );
    assert_eq!(j["state"], "passed", "{j:#}");
    assert_eq!(count(&j, "passed"), 1, "{j:#}");
}

/// A test's output reaches `msctl logs` complete and in order.
#[test]
fn logs_are_complete_and_in_order() {
    const LINES: usize = 40_000;
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let src = format!(
        "import sys\n\ndef test_chatty():\n    for i in range({LINES}):\n        print('line-%06d' % i)\n    print('to-stderr', file=sys.stderr)\n"
    );
    let suite = f.write_suite("chatty", &[("test_chatty.py", &src)]);
    let out = f.ctl(&[
        "submit",
        "pytest",
        "--dir",
        &s(&suite),
        "--wait",
        "--",
        "-s",
    ]);
    assert_eq!(out.code, 0, "{out}");
    let id = submitted_id(&out);
    let logs = f.ctl(&["logs", &id]);
    assert_eq!(logs.code, 0, "{logs}");
    let got: Vec<&str> = logs
        .stdout
        .lines()
        .filter_map(|l| l.find("line-").map(|i| &l[i..]))
        .collect();
    assert_eq!(got.len(), LINES, "lines lost or doubled in msctl logs");
    for (i, l) in got.iter().enumerate() {
        assert_eq!(
            *l,
            format!("line-{i:06}"),
            "line {i} out of order or garbled"
        );
    }
    assert!(
        logs.stderr.contains("to-stderr"),
        "stderr of the test goes to msctl's stderr:\n{}",
        logs.stderr
    );
}

// ====================================================================== 2

/// `msctl watch` prints each result as it happens, not when the job ends.
#[test]
fn watch_streams_results_while_the_job_is_still_running() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let suite = f.sleepy_suite("live", 5, 1.0);
    let id = f.submit(&["pytest", "--dir", &s(&suite)]);
    let mut watch = Bg::spawn(ctl_cmd(&f.addr(), &["watch", &id]));

    let mut seen = Vec::new();
    let first_passed = loop {
        let (at, line) = watch
            .lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!("no PASSED line from msctl watch; got:\n{}", seen.join("\n"))
            });
        seen.push(line.clone());
        if line.starts_with("PASSED") {
            // The suite takes ~5 s; right after its first result it still runs.
            let j = f.show(&id);
            assert_eq!(
                j["state"], "running",
                "the first PASSED line must arrive while the job runs: {j:#}"
            );
            assert!(count(&j, "total") < 5, "{j:#}");
            break at;
        }
    };
    let (code, rest) = watch.finish(Duration::from_secs(60));
    let all: Vec<String> = seen
        .iter()
        .cloned()
        .chain(rest.iter().map(|(_, l)| l.clone()))
        .collect();
    assert_eq!(
        code,
        0,
        "watch of a passing job exits 0:\n{}",
        all.join("\n")
    );
    let passed: Vec<&(Instant, String)> = rest
        .iter()
        .filter(|(_, l)| l.starts_with("PASSED"))
        .collect();
    assert_eq!(
        passed.len() + 1,
        5,
        "five PASSED lines:\n{}",
        all.join("\n")
    );
    let last_passed = passed.last().unwrap().0;
    assert!(
        last_passed.duration_since(first_passed) >= Duration::from_millis(2500),
        "results arrived in one burst ({:?} apart) instead of live:\n{}",
        last_passed.duration_since(first_passed),
        all.join("\n")
    );
    let last = all.last().unwrap();
    assert!(
        last.starts_with(&format!("job {id} passed: 5 passed in ")),
        "{last}"
    );
}

// ====================================================================== 3

/// Requirements route jobs by label; an unmatchable job is refused with the
/// closest agents, and with --allow-unmatched stays queued and says why.
#[test]
fn requirements_route_jobs_to_matching_agents_only() {
    let mut f = Fleet::new();
    f.add_agent("agent-a", &["pool=a"], &[]);
    f.add_agent("agent-b", &["pool=b"], &[]);
    let suite = s(&f.write_suite("quick", &[("test_quick.py", QUICK_TEST)]));

    let mut jobs = Vec::new();
    for pool in ["a", "b", "a", "b", "b", "a"] {
        let req = format!("label.pool==\"{pool}\"");
        jobs.push((
            f.submit(&["pytest", "--dir", &suite, "--require", &req]),
            pool,
        ));
    }
    let out = f.ctl(&[
        "submit",
        "pytest",
        "--dir",
        &suite,
        "--require",
        "label.pool==\"c\"",
    ]);
    assert_eq!(out.code, 2, "an unmatchable job is refused:\n{out}");
    for agent in ["agent-a", "agent-b"] {
        let pool = &agent[agent.len() - 1..];
        let clause = format!("{agent}: label.pool == \"c\" (has {pool})");
        assert!(
            out.stderr.contains(&clause),
            "the clause each fails:\n{out}"
        );
    }
    assert!(out.stderr.contains("--allow-unmatched"), "{out}");
    let out = f.ctl(&[
        "submit",
        "pytest",
        "--dir",
        &suite,
        "--require",
        "label.pool==\"c\"",
        "--allow-unmatched",
    ]);
    assert_eq!(
        out.code, 0,
        "with --allow-unmatched it is accepted (queued) with a warning:\n{out}"
    );
    let stuck = out.stdout.trim().to_string();
    assert!(
        out.stderr.contains("warning:") && out.stderr.contains("label.pool==\"c\""),
        "submit warns that nothing matches the requirement:\n{out}"
    );

    for (id, pool) in &jobs {
        let j = f.wait_terminal(id);
        assert_eq!(j["state"], "passed", "{j:#}");
        assert_eq!(
            j["agent"],
            format!("agent-{pool}"),
            "job requiring pool=={pool}: {j:#}"
        );
        assert_eq!(j["attempts"], 1, "{j:#}");
    }

    let j = f.show(&stuck);
    assert_eq!(j["state"], "queued", "{j:#}");
    assert_eq!(j["attempts"], 0, "{j:#}");
    assert!(j["agent"].is_null(), "{j:#}");
    let warnings: Vec<String> = j["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        warnings.iter().any(|w| w.contains("label.pool==\"c\"")),
        "show --json warns about the requirement: {j:#}"
    );
    let queued = f.ctl(&["list", "--state", "queued", "--json"]).json();
    let ids: Vec<&str> = queued["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(ids, vec![stuck.as_str()], "list --state queued");

    // A queued job cancels at once.
    let out = f.ctl(&["cancel", &stuck]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(f.show(&stuck)["state"], "cancelled");
}

// ====================================================================== 4, 5

/// Reads the pid the slow suite's child wrote, and checks that it and its
/// parent (pytest) are alive.
fn slow_pids(f: &Fleet, pidfile: &Path) -> (i32, i32) {
    let child = wait_for(
        Duration::from_secs(30),
        "the slow suite to write its child's pid",
        || {
            std::fs::read_to_string(pidfile)
                .ok()?
                .trim()
                .parse::<i32>()
                .ok()
        },
        || f.logs(),
    );
    let pytest = ppid_of(child).expect("the sleep child has a parent");
    let cmdline = std::fs::read(format!("/proc/{pytest}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains("pytest"),
        "parent of the child is not pytest: {cmdline}"
    );
    assert!(pid_alive(child) && pid_alive(pytest));
    (child, pytest)
}

fn assert_gone_within(pids: &[i32], within: Duration, what: &str) {
    wait_for(
        within,
        what,
        || pids.iter().all(|&p| !pid_alive(p)).then_some(()),
        || {
            pids.iter()
                .map(|&p| format!("pid {p} alive: {}", pid_alive(p)))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
}

/// Cancelling a running job stops pytest and everything it started.
#[test]
fn cancel_kills_the_running_process_group() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let slow = f.copy_example("slow");
    let pidfile = f.path().join("child.pid");
    let env = format!("MSFLEET_SLOW_CHILD_PIDFILE={}", s(&pidfile));
    let id = f.submit(&["pytest", "--dir", &s(&slow), "--env", &env]);
    f.wait_state(&id, "running");
    let (child, pytest) = slow_pids(&f, &pidfile);

    let t0 = Instant::now();
    let out = f.ctl(&["cancel", &id, "--wait"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains(&format!("job {id}: cancelled")),
        "{out}"
    );
    let j = f.show(&id);
    assert_eq!(j["state"], "cancelled", "{j:#}");
    assert!(j["reason"].as_str().unwrap().contains("cancel"), "{j:#}");
    // --kill-grace is 2 s; python dies on SIGTERM at once.
    assert_gone_within(
        &[pytest, child],
        Duration::from_secs(7).saturating_sub(t0.elapsed()),
        "pytest and its child to be killed after cancel",
    );

    // Cancelling again is refused: the job already finished.
    let again = f.ctl(&["cancel", &id]);
    assert_eq!(again.code, 2, "{again}");
}

/// A job over its --timeout ends timed_out and its processes are killed.
#[test]
fn timeout_stops_the_job_and_kills_its_processes() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let slow = f.copy_example("slow");
    let pidfile = f.path().join("child.pid");
    let env = format!("MSFLEET_SLOW_CHILD_PIDFILE={}", s(&pidfile));
    let id = f.submit(&[
        "pytest",
        "--dir",
        &s(&slow),
        "--timeout",
        "3s",
        "--env",
        &env,
    ]);
    f.wait_state(&id, "running");
    let (child, pytest) = slow_pids(&f, &pidfile);

    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "timed_out", "{j:#}");
    assert!(j["reason"].as_str().unwrap().contains("timed out"), "{j:#}");
    assert_eq!(
        count(&j, "passed"),
        1,
        "test_quick passed before the hang: {j:#}"
    );
    let ran = j["finished_at_ms"].as_i64().unwrap() - j["started_at_ms"].as_i64().unwrap();
    assert!(
        (2900..10_000).contains(&ran),
        "a 3 s timeout (2 s kill grace) ended the job after {ran} ms"
    );
    assert_gone_within(
        &[pytest, child],
        Duration::from_secs(5),
        "pytest and its child to be killed after the timeout",
    );

    let watch = f.ctl(&["watch", &id]);
    assert_eq!(watch.code, 3, "watch of a timed-out job exits 3:\n{watch}");
    assert!(
        watch
            .stdout
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with(&format!("job {id} timed_out: ")),
        "{watch}"
    );
}

// ====================================================================== 6

/// An agent killed mid-run: its attempt is requeued and the job completes on
/// another agent, each test counted exactly once.
#[test]
fn killed_agent_attempt_is_retried_elsewhere_and_counted_once() {
    let mut f = Fleet::new();
    f.add_agent("x1", &["pool=k"], &[]);
    f.add_agent("x2", &["pool=k"], &[]);
    let suite = f.sleepy_suite("six", 6, 1.0);
    let id = f.submit(&["pytest", "--dir", &s(&suite)]);
    let j = f.wait_job(&id, "running with a result in", |j| {
        j["state"] == "running" && count(j, "total") >= 1
    });
    let victim = j["agent"].as_str().unwrap().to_string();
    let other = if victim == "x1" { "x2" } else { "x1" };
    f.agent(&victim).kill9();

    let j = f.wait_job(&id, "a second attempt", |j| {
        j["attempts"].as_u64() >= Some(2)
    });
    assert_ne!(j["agent"], victim.as_str(), "{j:#}");
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "passed", "{j:#}");
    assert_eq!(j["attempts"], 2, "{j:#}");
    assert_eq!(j["agent"], other, "{j:#}");
    assert_eq!(count(&j, "passed"), 6, "{j:#}");
    assert_eq!(count(&j, "total"), 6, "{j:#}");

    let agents = f.agents_json();
    let dead = agents
        .iter()
        .find(|a| a["name"] == victim.as_str())
        .unwrap();
    assert_eq!(dead["connected"], false, "{dead:#}");
    // It went away holding work: lost (not merely offline) until it returns.
    assert_eq!(dead["state"], "lost", "{dead:#}");
    assert!(
        dead["state_reason"]
            .as_str()
            .unwrap()
            .contains("disconnected past its 3 s lease"),
        "{dead:#}"
    );

    let watch = f.ctl(&["watch", &id]);
    assert_eq!(watch.code, 0, "{watch}");
    let last = watch.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("job {id} passed: 6 passed in ")),
        "{watch}"
    );
}

// ====================================================================== 7

/// kill -9 of the scheduler while jobs run and submits are in flight: nothing
/// acknowledged is lost, every job finishes, no result is lost or doubled.
#[test]
fn scheduler_kill9_loses_no_acknowledged_job_or_result() {
    const TESTS: u64 = 4;
    let mut f = Fleet::new();
    f.add_agent("r1", &[], &["--slots", "3"]);
    let suite = s(&f.sleepy_suite("four", TESTS as usize, 1.0));
    let addr = f.addr();

    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    for i in 0..3 {
        let label = format!("pre{i}");
        let id = f.submit(&[
            "pytest",
            "--dir",
            &suite,
            "--label",
            &format!("seq={label}"),
        ]);
        acked.lock().unwrap().push((id, label));
    }
    let watched = acked.lock().unwrap()[0].0.clone();
    f.wait_state(&watched, "running");
    let mut watch = Bg::spawn(ctl_cmd(&addr, &["watch", &watched]));

    // Submitters that keep going through the crash.
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicUsize::new(0));
    let refused: Arc<Mutex<Vec<Out>>> = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for _ in 0..2 {
        let (stop, counter, acked, refused, addr, suite) = (
            stop.clone(),
            counter.clone(),
            acked.clone(),
            refused.clone(),
            addr.clone(),
            suite.clone(),
        );
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let label = format!("s{}", counter.fetch_add(1, Ordering::SeqCst));
                let seq = format!("seq={label}");
                let out = run_cmd(
                    ctl_cmd(
                        &addr,
                        &["submit", "pytest", "--dir", &suite, "--label", &seq],
                    ),
                    Duration::from_secs(30),
                );
                if out.code == 0 {
                    acked
                        .lock()
                        .unwrap()
                        .push((out.stdout.trim().to_string(), label));
                } else {
                    refused.lock().unwrap().push(out);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }
    let acked_len = || acked.lock().unwrap().len();
    wait_for(
        Duration::from_secs(30),
        "a few acknowledged submits",
        || (acked_len() >= 5).then_some(()),
        || format!("{:?}", refused.lock().unwrap().last()),
    );
    let running: Vec<String> = f.ctl(&["list", "--state", "running", "--json"]).json()["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        running.contains(&watched),
        "the watched job {watched} must still run when the scheduler is killed (running: {running:?})"
    );
    f.sched.kill9();
    let at_crash = acked_len();
    std::thread::sleep(Duration::from_millis(1000));
    f.sched.restart();
    wait_for(
        Duration::from_secs(30),
        "2 acknowledged submits after the restart",
        || (acked_len() >= at_crash + 2).then_some(()),
        || format!("{:?}", refused.lock().unwrap().last()),
    );
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }

    // Submits refused while the scheduler was down say so with exit code 3
    // (retryable), never 2 (bad input).
    for out in refused.lock().unwrap().iter() {
        assert_eq!(out.code, 3, "a submit during the outage:\n{out}");
    }

    // Every acknowledged job exists, is the job that was submitted, and ids are unique.
    let acked = acked.lock().unwrap().clone();
    let ids: BTreeSet<&str> = acked.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids.len(),
        acked.len(),
        "two acknowledged submits got the same id: {acked:?}"
    );
    for (id, label) in &acked {
        let j = f
            .try_show(id)
            .unwrap_or_else(|| panic!("acknowledged job {id} ({label}) is gone after the restart"));
        assert_eq!(
            j["labels"]["seq"],
            label.as_str(),
            "job {id} is not the one acknowledged: {j:#}"
        );
    }

    eprintln!(
        "acknowledged {} submits ({at_crash} before the crash), {} refused; running at the crash: {running:?}",
        acked.len(),
        refused.lock().unwrap().len()
    );

    // Every job (acknowledged or not) finishes, with each test counted once;
    // nothing had to run twice (running attempts were resumed, not redone).
    let all = f.list();
    assert!(all.len() >= acked.len());
    let mut labels = BTreeSet::new();
    for j in &all {
        let label = j["labels"]["seq"].as_str().unwrap_or_default().to_string();
        assert!(
            labels.insert(label.clone()),
            "two jobs for one submit ({label})"
        );
        let id = j["id"].as_str().unwrap();
        let j = f.wait_terminal(id);
        assert_eq!(j["state"], "passed", "{j:#}");
        assert_eq!(count(&j, "passed"), TESTS, "{j:#}");
        assert_eq!(count(&j, "total"), TESTS, "{j:#}");
        assert_eq!(
            j["attempts"], 1,
            "job {id} was re-run after the restart: {j:#}"
        );
    }

    // A watch that was following a running job across the restart ends right.
    let (code, lines) = watch.finish(Duration::from_secs(60));
    let text: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
    assert_eq!(
        code,
        0,
        "watch across the restart:\n{}\n{}",
        text.join("\n"),
        watch.stderr()
    );
    let last = text.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with(&format!("job {watched} passed: {TESTS} passed in ")),
        "watch across the restart ends with the summary:\n{}",
        text.join("\n")
    );
    let passed_lines = text.iter().filter(|l| l.starts_with("PASSED")).count();
    assert_eq!(
        passed_lines as u64,
        TESTS,
        "each result shown once:\n{}",
        text.join("\n")
    );
}

/// The node ids of a watch's outcome lines ("PASSED t.py::x", ...), in order.
fn shown_results(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| {
            let (word, rest) = l.split_once(' ')?;
            ["PASSED", "FAILED", "SKIPPED", "XFAILED", "XPASSED", "ERROR"]
                .contains(&word)
                .then(|| {
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
        })
        .collect()
}

/// kill -9 of the scheduler while an agent streams test results in batches:
/// every result shown before the kill (shown only once durable, as its
/// batch's Ack is sent) is there after the restart, the agent resends what
/// was not acknowledged, and the job ends with pytest's own counts, each
/// result once, in one attempt.
#[test]
fn scheduler_kill9_during_a_result_batch_loses_no_acknowledged_result() {
    let mut f = Fleet::new();
    f.add_agent("b1", &[], &["--result-batch-max", "50"]);
    let mut files = Vec::new();
    for m in 0..4 {
        let mut src = String::from("import time, pytest\n");
        src += "\n@pytest.mark.parametrize('i', range(400))\n";
        src += "def test_step(i):\n    time.sleep(0.002)\n";
        src += "    if i % 97 == 0:\n        assert i < 0\n";
        src += "    if i % 89 == 0:\n        pytest.skip('not here')\n";
        src += "\n@pytest.mark.xfail\ndef test_known():\n    assert False\n";
        files.push((format!("test_many_{m}.py"), src));
    }
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_str()))
        .collect();
    let suite = f.write_suite("batches", &files);
    let (pytest, _, summary) = pytest_directly(&suite, &[]);
    let total: u64 = pytest.values().sum();
    let id = f.submit(&["pytest", "--dir", &s(&suite)]);
    let mut watch = Bg::spawn(ctl_cmd(&f.addr(), &["watch", &id]));
    let mut before = Vec::new();
    while shown_results(&before).len() < 300 {
        let (_, line) = watch
            .lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("too few results shown:\n{}", before.join("\n")));
        before.push(line);
    }
    f.sched.kill9();
    let shown = shown_results(&before);
    assert!(
        (shown.len() as u64) < total,
        "the job must still stream when msched is killed ({} of {total} shown)",
        shown.len()
    );
    std::thread::sleep(Duration::from_millis(500));
    f.sched.restart();
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "failed", "{j:#}");
    assert_eq!(counts_of(&j), pytest, "vs pytest's '{summary}': {j:#}");
    assert_eq!(count(&j, "total"), total, "{j:#}");
    assert_eq!(j["attempts"], 1, "resumed, not re-run: {j:#}");
    // Every result, each once; the ones shown before the kill among them.
    let replay = f.ctl(&["watch", &id]);
    let lines: Vec<String> = replay.stdout.lines().map(str::to_string).collect();
    let all = shown_results(&lines);
    assert_eq!(all.len() as u64, total, "one line per result:\n{replay}");
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "a result twice:\n{replay}");
    for r in &shown {
        assert!(
            unique.contains(r),
            "{r} was shown before the kill and is gone"
        );
    }
    assert_eq!(
        &all[..shown.len()],
        &shown[..],
        "the same results in the same order"
    );
    let (code, _) = watch.finish(Duration::from_secs(60));
    assert_eq!(
        code, 1,
        "the watch across the restart ends with the job (failed)"
    );
}

// ====================================================================== 8

/// Bad input: exit code 2, a reason naming the problem, nothing changed.
#[test]
fn bad_input_is_refused_with_exit_2_and_changes_nothing() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let suite = s(&f.write_suite("quick", &[("test_quick.py", QUICK_TEST)]));
    let outside = f.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("test_x.py"), QUICK_TEST).unwrap();
    let outside = s(&std::fs::canonicalize(&outside).unwrap());
    let missing = s(&f.root.join("does-not-exist"));
    let bad_file = f.path().join("job.toml");
    std::fs::write(
        &bad_file,
        format!("kind = \"pytest\"\nbogus = 1\n[source]\ndir = \"{suite}\"\n"),
    )
    .unwrap();
    let bad_file = s(&bad_file);
    let done = f.submit(&["pytest", "--dir", &suite]);
    f.wait_terminal(&done);
    let before = f.list();

    let bad_req = r#"gpu.count >= 1 && gpu.modle == "x""#;
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "unknown queue",
            vec!["submit", "pytest", "--dir", &suite, "--queue", "nope"],
            vec!["unknown queue", "nope"],
        ),
        (
            "malformed requirement",
            vec!["submit", "pytest", "--dir", &suite, "--require", bad_req],
            vec!["requirement", "gpu.modle", "column 19"],
        ),
        (
            "dir outside the roots",
            vec!["submit", "pytest", "--dir", &outside],
            vec![outside.as_str(), "root"],
        ),
        (
            "negative timeout",
            vec!["submit", "pytest", "--dir", &suite, "--timeout", "-5m"],
            vec!["timeout", "-5m"],
        ),
        (
            "zero timeout",
            vec!["submit", "pytest", "--dir", &suite, "--timeout", "0s"],
            vec!["timeout", "0s"],
        ),
        (
            "show of an unknown job",
            vec!["show", "99999"],
            vec!["99999"],
        ),
        (
            "cancel of an unknown job",
            vec!["cancel", "99999"],
            vec!["99999"],
        ),
        (
            "cancel of a finished job",
            vec!["cancel", &done],
            vec![done.as_str(), "finished"],
        ),
        (
            "watch of an unknown job",
            vec!["watch", "99999"],
            vec!["99999"],
        ),
        (
            "logs of an unknown job",
            vec!["logs", "99999"],
            vec!["99999"],
        ),
        (
            "malformed --env",
            vec!["submit", "pytest", "--dir", &suite, "--env", "NOEQUALS"],
            vec!["--env", "NOEQUALS"],
        ),
        (
            "job file with an unknown key",
            vec!["submit", "-f", &bad_file],
            vec!["job.toml", "line 2"],
        ),
        (
            "list of an unknown state",
            vec!["list", "--state", "bogus"],
            vec!["unknown state", "bogus"],
        ),
        (
            "list of an unknown queue",
            vec!["list", "--queue", "nope"],
            vec!["unknown queue", "nope"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, args, needles) in &cases {
        let out = f.ctl(args);
        let lines = out.stderr_lines();
        let first = lines.first().copied().unwrap_or_default();
        let mut problems = Vec::new();
        if out.code != 2 {
            problems.push(format!("exit code {} (want 2)", out.code));
        }
        if !out.stdout.trim().is_empty() {
            problems.push("printed something on stdout".to_string());
        }
        for n in needles {
            if !first.contains(n) {
                problems.push(format!("first stderr line does not mention '{n}'"));
            }
        }
        if *what == "job file with an unknown key" {
            // A TOML error: the file and position, then the offending line.
            if !out.stderr.contains("unknown field `bogus`") {
                problems.push("does not name the unknown field".into());
            }
        } else if *what == "malformed requirement" {
            // The reason, then the expression with carets under the bad token.
            let caret = lines.iter().find(|l| l.trim_start().starts_with('^'));
            match caret {
                Some(c) if c.find('^') == Some(18) => {}
                _ => problems.push("no caret line under column 19".into()),
            }
        } else if lines.len() != 1 {
            problems.push(format!("{} stderr lines (want one)", lines.len()));
        }
        if !problems.is_empty() {
            failures.push(format!("{what} ({args:?}): {}\n{out}", problems.join("; ")));
        }
    }
    let after = f.list();
    assert!(
        failures.is_empty(),
        "bad input handled badly:\n\n{}",
        failures.join("\n\n")
    );
    assert_eq!(after, before, "refused commands changed the job list");

    // --dir is a path on the agent: msctl does not look for it here. A
    // directory the agent does not have is the agent's infrastructure error.
    let id = f.submit(&["pytest", "--dir", &missing]);
    let job = f.wait_terminal(&id);
    assert_eq!(job["state"], "error", "{job:#}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("does-not-exist"),
        "{job:#}"
    );
}

/// A git ref that does not exist is an infrastructure error naming the ref;
/// an existing one checks out and runs.
#[test]
fn git_sources_run_and_a_missing_ref_is_an_error_not_a_failure() {
    let mut f = Fleet::new();
    // The default policy fetches only https and ssh URLs; this repo is local.
    f.add_agent("a1", &[], ALLOW_FILE_GIT);
    let repo = f.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("test_from_git.py"), QUICK_TEST).unwrap();
    let url = git_repo(&repo, "a test");

    let bad = f.ctl(&["submit", "pytest", "--git", &url, "--ref", "nope", "--wait"]);
    assert_eq!(
        bad.code, 3,
        "a missing ref is an infrastructure error (exit 3):\n{bad}"
    );
    let j = f.show(&submitted_id(&bad));
    assert_eq!(j["state"], "error", "not 'failed': {j:#}");
    let reason = j["reason"].as_str().unwrap();
    assert!(
        reason.contains("'nope'") && reason.contains("git"),
        "reason names git and the ref: {j:#}"
    );
    assert_eq!(count(&j, "total"), 0, "{j:#}");

    let good = f.ctl(&["submit", "pytest", "--git", &url, "--ref", "main", "--wait"]);
    assert_eq!(good.code, 0, "{good}");
    let j = f.show(&submitted_id(&good));
    assert_eq!(j["state"], "passed", "{j:#}");
    assert_eq!(count(&j, "passed"), 1, "{j:#}");
    assert_eq!(j["source"]["ref"], "main", "{j:#}");
}

/// A selection that collects nothing fails (it does not pass).
#[test]
fn an_empty_selection_fails_with_no_tests_collected() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let empty = s(&f.copy_example("empty"));
    let quick = s(&f.write_suite("quick", &[("test_quick.py", QUICK_TEST)]));
    for args in [
        vec!["submit", "pytest", "--dir", &empty, "--wait"],
        vec![
            "submit",
            "pytest",
            "--dir",
            &quick,
            "--wait",
            "--",
            "-k",
            "no_such_test",
        ],
    ] {
        let out = f.ctl(&args);
        assert_eq!(out.code, 1, "{args:?}:\n{out}");
        let j = f.show(&submitted_id(&out));
        assert_eq!(j["state"], "failed", "{j:#}");
        assert!(
            j["reason"].as_str().unwrap().contains("no tests collected"),
            "{j:#}"
        );
        assert_eq!(count(&j, "total"), 0, "{j:#}");
    }
}

// ====================================================================== 8 (protocol)

mod raw {
    //! A hand-driven AgentLink session.

    use msfleet_proto as pb;
    use msfleet_proto::agent_link_client::AgentLinkClient;
    use msfleet_proto::{agent_message, scheduler_message, task_update};
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::Status;

    pub struct RawAgent {
        pub tx: mpsc::Sender<pb::AgentMessage>,
        pub rx: tonic::Streaming<pb::SchedulerMessage>,
        pub registered: pb::Registered,
    }

    pub fn caps(labels: &[(&str, &str)], roots: &[String]) -> pb::Capabilities {
        pb::Capabilities {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            roots: roots.to_vec(),
            slots: 1,
            ..Default::default()
        }
    }

    pub async fn register(
        addr: &str,
        name: &str,
        instance: &str,
        caps: pb::Capabilities,
    ) -> Result<RawAgent, Status> {
        // An agent's join token, made by the scheduler's admin (once per name).
        let (a, n) = (addr.to_string(), name.to_string());
        let token_file =
            tokio::task::spawn_blocking(move || super::common::agent_token(&a, &n, &[]))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        let secret =
            std::fs::read_to_string(token_file).map_err(|e| Status::internal(e.to_string()))?;
        let bearer =
            pb::client::Bearer::new(Some(&secret)).map_err(|e| Status::internal(e.to_string()))?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::unavailable(e.to_string()))?
            .connect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut client = AgentLinkClient::with_interceptor(channel, bearer)
            .max_encoding_message_size(pb::MAX_MESSAGE);
        let (tx, rx) = mpsc::channel(64);
        tx.send(pb::AgentMessage {
            msg: Some(agent_message::Msg::Register(pb::Register {
                name: name.into(),
                capabilities: Some(caps),
                instance_id: instance.into(),
                resume: vec![],
            })),
        })
        .await
        .unwrap();
        let mut rx_stream = client.session(ReceiverStream::new(rx)).await?.into_inner();
        let registered = match rx_stream.message().await? {
            Some(pb::SchedulerMessage {
                msg: Some(scheduler_message::Msg::Registered(r)),
            }) => r,
            other => panic!("expected Registered, got {other:?}"),
        };
        // Keep the lease alive.
        let hb = tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let m = pb::AgentMessage {
                    msg: Some(agent_message::Msg::Heartbeat(pb::Heartbeat {
                        running: vec![],
                    })),
                };
                if hb.send(m).await.is_err() {
                    return;
                }
            }
        });
        Ok(RawAgent {
            tx,
            rx: rx_stream,
            registered,
        })
    }

    impl RawAgent {
        pub async fn send(&self, r: &pb::AttemptRef, seq: u64, kind: task_update::Kind) {
            self.tx
                .send(pb::AgentMessage {
                    msg: Some(agent_message::Msg::Update(pb::TaskUpdate {
                        attempt: Some(r.clone()),
                        seq,
                        kind: Some(kind),
                    })),
                })
                .await
                .expect("session open");
        }

        /// The next scheduler message, if one comes within `d`.
        pub async fn next(&mut self, d: Duration) -> Option<scheduler_message::Msg> {
            match tokio::time::timeout(d, self.rx.message()).await {
                Ok(Ok(Some(m))) => m.msg,
                Ok(Ok(None)) => panic!("the scheduler closed the session"),
                Ok(Err(s)) => panic!("session error: {s}"),
                Err(_) => None,
            }
        }

        /// Every message that arrives until the session is quiet for `quiet`.
        pub async fn drain(&mut self, quiet: Duration) -> Vec<scheduler_message::Msg> {
            let mut v = Vec::new();
            while let Some(m) = self.next(quiet).await {
                v.push(m);
            }
            v
        }

        pub async fn assignment(&mut self) -> pb::Assignment {
            loop {
                match self.next(Duration::from_secs(30)).await {
                    Some(scheduler_message::Msg::Assign(a)) => return a,
                    Some(_) => continue,
                    None => panic!("no assignment within 30 s"),
                }
            }
        }
    }

    pub fn started() -> task_update::Kind {
        task_update::Kind::Started(pb::Started {})
    }

    pub fn log(bytes: usize) -> task_update::Kind {
        task_update::Kind::Log(pb::LogChunk {
            stream: "stdout".into(),
            data: vec![b'x'; bytes],
        })
    }
}

use msfleet_proto::scheduler_message::Msg as SMsg;

/// Runs blocking msctl calls off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

async fn show_at(addr: &str, id: &str) -> Value {
    let (addr, id) = (addr.to_string(), id.to_string());
    blocking(move || {
        let out = ctl_at(&addr, &["show", &id, "--json"]);
        assert_eq!(out.code, 0, "{out}");
        out.json()
    })
    .await
}

fn only_reject(msgs: &[SMsg], what: &str) -> msfleet_proto::Reject {
    match msgs {
        [SMsg::Reject(r)] => r.clone(),
        other => panic!("{what}: expected exactly one Reject, got {other:?}"),
    }
}

/// TaskUpdates for an unknown task or a stale attempt are refused with
/// abandon=true and change nothing; an oversized log chunk is refused with a
/// message about its size and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_link_refuses_unknown_stale_and_oversized_updates() {
    let f = Fleet::new();
    let addr = f.addr();
    let suite = s(&f.write_suite("quick", &[("test_quick.py", QUICK_TEST)]));
    let mut agent = raw::register(
        &addr,
        "raw-1",
        "raw-1-i1",
        raw::caps(&[("pool", "raw")], &[s(&f.root)]),
    )
    .await
    .expect("register");
    assert_eq!(agent.registered.lease_timeout_ms, 3000);

    let (a2, s2) = (addr.clone(), suite.clone());
    let id = blocking(move || {
        let out = ctl_at(
            &a2,
            &[
                "submit",
                "pytest",
                "--dir",
                &s2,
                "--require",
                "label.pool==\"raw\"",
            ],
        );
        assert_eq!(out.code, 0, "{out}");
        out.stdout.trim().to_string()
    })
    .await;
    let asg = agent.assignment().await;
    assert_eq!(asg.job_id, id);
    let live = asg.attempt.clone().unwrap();
    let before = show_at(&addr, &id).await;
    assert_eq!(before["state"], "assigned", "{before:#}");

    // Unknown tasks.
    for task in ["987654", "not-a-task"] {
        let r = msfleet_proto::AttemptRef {
            task_id: task.into(),
            ..live.clone()
        };
        agent.send(&r, 1, raw::started()).await;
        let rej = only_reject(
            &agent.drain(Duration::from_millis(700)).await,
            "unknown task",
        );
        assert!(rej.abandon, "{rej:?}");
        assert!(
            rej.message.contains("unknown") && rej.message.contains(task),
            "the message names the unknown task: {rej:?}"
        );
    }
    // Stale attempts: an older/newer epoch, another attempt number.
    let stale = [
        msfleet_proto::AttemptRef {
            epoch: live.epoch + 5,
            ..live.clone()
        },
        msfleet_proto::AttemptRef {
            epoch: live.epoch.saturating_sub(1),
            ..live.clone()
        },
        msfleet_proto::AttemptRef {
            attempt: live.attempt + 1,
            ..live.clone()
        },
    ];
    for r in &stale {
        agent.send(r, 1, raw::started()).await;
        let rej = only_reject(
            &agent.drain(Duration::from_millis(700)).await,
            "stale attempt",
        );
        assert!(rej.abandon, "{rej:?}");
        assert!(
            rej.message.contains("stale"),
            "the message says stale: {rej:?}"
        );
    }
    let after = show_at(&addr, &id).await;
    assert_eq!(after, before, "refused updates changed the job");

    // The live attempt still works.
    agent.send(&live, 1, raw::started()).await;
    let msgs = agent.drain(Duration::from_millis(700)).await;
    assert!(
        matches!(msgs.as_slice(), [SMsg::Ack(a)] if a.seq == 1),
        "the live attempt's update is acknowledged: {msgs:?}"
    );
    let running = show_at(&addr, &id).await;
    assert_eq!(running["state"], "running", "{running:#}");

    // An oversized log chunk.
    agent
        .send(&live, 2, raw::log(msfleet_proto::MAX_LOG_CHUNK + 1))
        .await;
    let msgs = agent.drain(Duration::from_millis(700)).await;
    let rej = msgs
        .iter()
        .find_map(|m| match m {
            SMsg::Reject(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Reject for an oversized chunk: {msgs:?}"));
    assert!(!rej.abandon, "the attempt itself is fine: {rej:?}");
    assert_eq!(rej.seq, 2, "{rej:?}");
    assert!(
        rej.message
            .contains(&(msfleet_proto::MAX_LOG_CHUNK + 1).to_string())
            && rej
                .message
                .contains(&msfleet_proto::MAX_LOG_CHUNK.to_string()),
        "the message gives the size and the limit: {rej:?}"
    );
    let after = show_at(&addr, &id).await;
    assert_eq!(
        after["last_event_seq"], running["last_event_seq"],
        "the oversized chunk was stored: {after:#}"
    );
    let (a2, id2) = (addr.clone(), id.clone());
    let logs = blocking(move || ctl_at(&a2, &["logs", &id2])).await;
    assert!(
        !logs.stdout.contains("xxxx"),
        "the oversized chunk shows in msctl logs"
    );
}

/// A refused (oversized) update must not also be acknowledged as durable, and
/// its sequence number stays free for the agent's corrected update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_rejected_log_chunk_is_not_acknowledged() {
    let f = Fleet::new();
    let addr = f.addr();
    let suite = s(&f.write_suite("quick", &[("test_quick.py", QUICK_TEST)]));
    let mut agent = raw::register(
        &addr,
        "raw-2",
        "raw-2-i1",
        raw::caps(&[("pool", "raw")], &[s(&f.root)]),
    )
    .await
    .expect("register");
    let (a2, s2) = (addr.clone(), suite.clone());
    let id = blocking(move || {
        let out = ctl_at(
            &a2,
            &[
                "submit",
                "pytest",
                "--dir",
                &s2,
                "--require",
                "label.pool==\"raw\"",
            ],
        );
        assert_eq!(out.code, 0, "{out}");
        out.stdout.trim().to_string()
    })
    .await;
    let live = agent.assignment().await.attempt.unwrap();
    agent.send(&live, 1, raw::started()).await;
    agent.drain(Duration::from_millis(500)).await;

    agent
        .send(&live, 2, raw::log(msfleet_proto::MAX_LOG_CHUNK + 1))
        .await;
    let msgs = agent.drain(Duration::from_millis(700)).await;
    assert!(
        msgs.iter()
            .all(|m| !matches!(m, SMsg::Ack(a) if a.seq >= 2)),
        "seq 2 was rejected, yet acknowledged as durable: {msgs:?}"
    );
    // The corrected chunk under the same seq is applied.
    let before = show_at(&addr, &id).await;
    agent.send(&live, 2, raw::log(10)).await;
    let msgs = agent.drain(Duration::from_millis(700)).await;
    assert!(
        matches!(msgs.as_slice(), [SMsg::Ack(a)] if a.seq == 2),
        "the corrected seq 2 is applied and acknowledged: {msgs:?}"
    );
    let after = show_at(&addr, &id).await;
    assert_eq!(
        after["last_event_seq"].as_u64().unwrap(),
        before["last_event_seq"].as_u64().unwrap() + 1,
        "the corrected chunk was not stored: {after:#}"
    );
}

/// A second msagent process under a connected name (a restarted agent whose
/// old connection lingers) takes the name over: the first process is fenced
/// (it exits saying why) and the second runs the work. On the raw protocol the
/// replaced session's stream ends, its late updates change nothing and it may
/// not register again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_process_under_a_connected_name_takes_it_over() {
    use msfleet_proto as pb;
    let mut f = Fleet::new();
    f.add_agent("dup", &[], &[]);
    let addr = f.addr();

    // A second msagent process under the same name (same token).
    let second = Agent::start(
        &f.sched.url(),
        &f.path().join("second"),
        "dup",
        &[],
        &[f.root.clone()],
        &[],
    );
    f.extra_logs.push(second.log.clone());
    let first_log = f.agent("dup").log.clone();
    let status = wait_for(
        Duration::from_secs(30),
        "the first msagent 'dup' to exit",
        || f.agent("dup").try_wait(),
        || std::fs::read_to_string(&first_log).unwrap_or_default(),
    );
    assert!(
        !status.success(),
        "the fenced agent exits non-zero: {status}"
    );
    let log = std::fs::read_to_string(&first_log).unwrap();
    assert!(
        log.contains("'dup'") && log.contains("took the name over"),
        "the first agent says why it stopped:\n{log}"
    );
    f.agents.push(second);

    // The second process takes the work.
    let suite = s(&f.write_suite("quick", &[("test_quick.py", QUICK_TEST)]));
    let (a2, s2) = (addr.clone(), suite.clone());
    let out = blocking(move || ctl_at(&a2, &["submit", "pytest", "--dir", &s2, "--wait"])).await;
    assert_eq!(out.code, 0, "{out}");
    let a2 = addr.clone();
    let agents = blocking(move || ctl_at(&a2, &["agents", "--json"]).json()).await;
    let dup: Vec<&Value> = agents
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["name"] == "dup")
        .collect();
    assert_eq!(dup.len(), 1, "{agents:#}");
    assert_eq!(dup[0]["connected"], true, "{agents:#}");

    // The raw protocol: an old session with an attempt, then a new one.
    let roots = vec![s(&f.root)];
    let mut old = raw::register(&addr, "dup", "raw-old", raw::caps(&[], &roots))
        .await
        .expect("a new instance takes the name over");
    let (a2, s2) = (addr.clone(), suite.clone());
    let id = blocking(move || {
        let out = ctl_at(&a2, &["submit", "pytest", "--dir", &s2]);
        assert_eq!(out.code, 0, "{out}");
        out.stdout.trim().to_string()
    })
    .await;
    let asg = old.assignment().await;
    let live = asg.attempt.clone().unwrap();
    old.send(&live, 1, raw::started()).await;
    let mut new = raw::register(&addr, "dup", "raw-new", raw::caps(&[], &roots))
        .await
        .expect("another instance takes it over again");
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), old.rx.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the old stream ended without a status"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("the old stream did not end"),
        }
    };
    assert_eq!(end.code(), tonic::Code::AlreadyExists, "{end:?}");
    assert!(end.message().contains("took the name over"), "{end:?}");
    // The old session's late finish changes nothing: the attempt was lost
    // with its agent and goes to the new session.
    let _ = old
        .tx
        .send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Update(pb::TaskUpdate {
                attempt: Some(live.clone()),
                seq: 2,
                kind: Some(pb::task_update::Kind::Finished(pb::Finished {
                    outcome: pb::Outcome::Failed as i32,
                    ..Default::default()
                })),
            })),
        })
        .await;
    let again = new.assignment().await;
    assert_eq!(again.job_id, id);
    assert_eq!(again.attempt.as_ref().unwrap().attempt, 2);
    let j = show_at(&addr, &id).await;
    assert_eq!(j["state"], "assigned", "{j:#}");
    assert_eq!(j["agent_lost"], 1, "{j:#}");
    let err = raw::register(&addr, "dup", "raw-old", raw::caps(&[], &roots))
        .await
        .err()
        .expect("a replaced instance may not come back");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
}

// ====================================================================== 9

/// `submit --dry-run` prints a job file that `submit -f` turns into the same job.
#[test]
fn dry_run_output_submits_an_equivalent_job() {
    let mut f = Fleet::new();
    f.add_agent("a1", &["pool=a"], &[]);
    let out_dir = f.path().join("env-out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let test_src = r#"import json, os

def test_env():
    out = os.path.join(os.environ["ENV_OUT_DIR"], os.environ["MSFLEET_JOB_ID"] + ".json")
    keep = ("MSFLEET_JOB_ID", "MSFLEET_TASK_ID", "MSFLEET_ATTEMPT", "MSFLEET_EXPECT")
    with open(out, "w") as f:
        json.dump({k: os.environ.get(k) for k in keep}, f)
    assert os.environ["MSFLEET_EXPECT"] == "yes"
"#;
    let suite = s(&f.write_suite(
        "envcheck",
        &[("test_env.py", test_src), ("test_other.py", QUICK_TEST)],
    ));
    let out_env = format!("ENV_OUT_DIR={}", s(&out_dir));
    let flags: Vec<&str> = vec![
        "pytest",
        "--dir",
        &suite,
        "--queue",
        "nightly",
        "--priority",
        "3",
        "--require",
        "label.pool==\"a\"",
        "--timeout",
        "30m",
        "--retries",
        "1",
        "--env",
        "MSFLEET_EXPECT=yes",
        "--env",
        &out_env,
        "--label",
        "team=x",
        "--name",
        "env check",
        "--",
        "-q",
        "test_env.py",
    ];
    let count_before = f.list().len();

    let mut dry = vec!["submit", "--dry-run"];
    dry.extend(&flags);
    let toml = f.ctl(&dry);
    assert_eq!(toml.code, 0, "{toml}");
    assert!(toml.stdout.contains("queue = \"nightly\""), "{toml}");
    assert_eq!(
        f.list().len(),
        count_before,
        "--dry-run submitted something"
    );
    let file = f.path().join("job.toml");
    std::fs::write(&file, &toml.stdout).unwrap();

    let from_file = f.ctl(&["submit", "-f", &s(&file), "--json"]);
    assert_eq!(from_file.code, 0, "{from_file}");
    let mut direct = vec!["submit", "--json"];
    direct.extend(&flags);
    let direct = f.ctl(&direct);
    assert_eq!(direct.code, 0, "{direct}");
    let (a, b) = (from_file.json(), direct.json());
    for k in [
        "name",
        "queue",
        "priority",
        "requirements",
        "source",
        "args",
        "timeout_ms",
        "retries",
        "labels",
    ] {
        assert_eq!(a[k], b[k], "field {k}: from -f {a:#}\ndirect {b:#}");
    }
    assert_eq!(a["queue"], "nightly");
    assert_eq!(a["priority"], 3);
    assert_eq!(a["timeout_ms"], 1_800_000);
    assert_eq!(a["args"], serde_json::json!(["-q", "test_env.py"]));

    // Both run with the same environment (plus msfleet's own variables).
    for j in [&a, &b] {
        let id = j["id"].as_str().unwrap();
        let done = f.wait_terminal(id);
        assert_eq!(done["state"], "passed", "{done:#}");
        assert_eq!(
            count(&done, "total"),
            1,
            "only test_env.py was selected: {done:#}"
        );
        let env: Value = serde_json::from_str(
            &std::fs::read_to_string(out_dir.join(format!("{id}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(env["MSFLEET_JOB_ID"], id, "{env}");
        assert_eq!(env["MSFLEET_ATTEMPT"], "1", "{env}");
        assert_eq!(env["MSFLEET_EXPECT"], "yes", "{env}");
        assert!(
            env["MSFLEET_TASK_ID"]
                .as_str()
                .is_some_and(|t| !t.is_empty()),
            "{env}"
        );
    }
}

// ====================================================================== 10

/// A drained agent finishes what it runs and takes nothing new; undrain
/// lets it work again. Quarantine behaves the same for new work.
#[test]
fn drained_and_quarantined_agents_take_no_new_work() {
    let mut f = Fleet::new();
    f.add_agent("d1", &[], &[]);
    let quick = s(&f.write_suite("quick", &[("test_quick.py", QUICK_TEST)]));
    let slow = s(&f.sleepy_suite("three", 3, 0.7));

    let running = f.submit(&["pytest", "--dir", &slow]);
    f.wait_state(&running, "running");
    let out = f.ctl(&["agent", "drain", "d1"]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout.trim(), "agent d1: drained");
    assert_eq!(f.agent_json("d1").unwrap()["admin"], "drained");
    assert_eq!(f.agent_json("d1").unwrap()["state"], "drained");
    let waiting = f.submit(&["pytest", "--dir", &quick]);

    let j = f.wait_terminal(&running);
    assert_eq!(
        j["state"], "passed",
        "a drained agent finishes its running job: {j:#}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let j = f.show(&waiting);
    assert_eq!(
        j["state"], "queued",
        "a drained agent took a new job: {j:#}"
    );
    assert!(
        j["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("drained")),
        "the queued job says why it waits: {j:#}"
    );

    let out = f.ctl(&["agent", "undrain", "d1"]);
    assert_eq!(out.code, 0, "{out}");
    let j = f.wait_terminal(&waiting);
    assert_eq!(j["state"], "passed", "{j:#}");
    assert_eq!(j["agent"], "d1");

    let out = f.ctl(&["agent", "quarantine", "d1"]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(f.agent_json("d1").unwrap()["admin"], "quarantined");
    let held = f.submit(&["pytest", "--dir", &quick]);
    std::thread::sleep(Duration::from_millis(1500));
    let j = f.show(&held);
    assert_eq!(
        j["state"], "queued",
        "a quarantined agent took a new job: {j:#}"
    );
    assert!(!j["warnings"].as_array().unwrap().is_empty(), "{j:#}");
    assert_eq!(f.ctl(&["agent", "undrain", "d1"]).code, 0);
    assert_eq!(f.wait_terminal(&held)["state"], "passed");

    let out = f.ctl(&["agent", "drain", "no-such-agent"]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("no-such-agent"), "{out}");
}

// ====================================================================== 11

/// Standard gRPC health checking and server reflection work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let f = Fleet::new();
    let channel = tonic::transport::Endpoint::from_shared(f.sched.url())
        .unwrap()
        .connect()
        .await
        .expect("connect");

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "msfleet.v1.Fleet", "msfleet.v1.AgentLink"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health check of '{service}': {e}"))
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "health of '{service}'");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("an unknown service is not healthy");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // Health needs no token (load balancers, systemd); reflection needs a
    // viewer's, as `grpcurl -H 'authorization: Bearer ...'` sends it.
    let mut anonymous = ServerReflectionClient::new(channel.clone());
    let list = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let refused = anonymous
        .server_reflection_info(tokio_stream::iter(vec![list()]))
        .await
        .expect_err("reflection without a token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let admin = std::fs::read_to_string(admin_token_file(&f.addr()).unwrap()).unwrap();
    let bearer = msfleet_proto::client::Bearer::new(Some(&admin)).unwrap();
    let mut reflection = ServerReflectionClient::with_interceptor(channel, bearer);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let resp = stream
        .message()
        .await
        .expect("reflection answer")
        .expect("one answer");
    let names: Vec<String> = match resp.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    };
    for want in [
        "msfleet.v1.Fleet",
        "msfleet.v1.AgentLink",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "reflection lists {want}: {names:?}"
        );
    }
}

// ====================================================================== more faults

/// An agent that is stopped gracefully (SIGTERM, e.g. `systemctl stop`) while
/// it runs a job: the interrupted attempt is an infrastructure problem, so the
/// job is retried on another agent (not ended as `error`).
#[test]

fn a_gracefully_stopped_agents_job_is_retried_elsewhere() {
    let mut f = Fleet::new();
    f.add_agent("g1", &[], &[]);
    let suite = s(&f.sleepy_suite("four", 4, 1.0));
    let id = f.submit(&["pytest", "--dir", &suite]);
    f.wait_job(&id, "running with a result in", |j| {
        j["state"] == "running" && count(j, "total") >= 1
    });
    f.add_agent("g2", &[], &[]);
    f.agent("g1").terminate();
    let status = wait_for(
        Duration::from_secs(20),
        "msagent g1 to stop after SIGTERM",
        || f.agent("g1").try_wait(),
        String::new,
    );
    assert!(status.success(), "a graceful stop exits 0: {status}");
    let j = f.wait_terminal(&id);
    assert_eq!(
        j["state"], "passed",
        "the interrupted job should run again elsewhere: {j:#}"
    );
    assert_eq!(j["attempts"], 2, "{j:#}");
    assert_eq!(j["agent"], "g2", "{j:#}");
    assert_eq!(count(&j, "total"), 4, "{j:#}");
}

/// With no agent-lost retries left, an attempt lost with its agent ends the
/// job as `error` (not `failed`).
#[test]
fn a_lost_attempt_without_retries_is_an_error() {
    let mut f = Fleet::new();
    f.add_agent("l1", &[], &[]);
    let suite = s(&f.sleepy_suite("four", 4, 1.0));
    let id = f.submit(&["pytest", "--dir", &suite, "--agent-lost-retries", "0"]);
    f.wait_state(&id, "running");
    f.agent("l1").kill9();
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "error", "{j:#}");
    assert!(
        j["reason"]
            .as_str()
            .unwrap()
            .contains("no retries left (agent lost 1 of 0 allowed)"),
        "{j:#}"
    );
    assert_eq!(j["agent_lost"], 1, "{j:#}");
    assert_eq!(j["attempts"], 1, "{j:#}");
    let watch = f.ctl(&["watch", &id]);
    assert_eq!(watch.code, 3, "{watch}");
}

/// An agent that crashes and comes back under the same name gives up its old
/// attempt at once (no lease wait) and the job runs again.
#[test]
fn a_restarted_agent_releases_its_old_attempt_at_once() {
    let mut f = Fleet::with_opts(SchedOpts {
        // Long enough that only the re-registration can explain a quick requeue.
        lease_timeout: "30s".into(),
        ..SchedOpts::default()
    });
    f.add_agent("c1", &[], &[]);
    let suite = s(&f.sleepy_suite("four", 4, 1.0));
    let id = f.submit(&["pytest", "--dir", &suite]);
    f.wait_job(&id, "running with a result in", |j| {
        j["state"] == "running" && count(j, "total") >= 1
    });
    let t0 = Instant::now();
    f.agent("c1").kill9();
    f.agents.retain(|a| a.name != "c1");
    f.add_agent("c1", &[], &[]);
    let j = f.wait_terminal(&id);
    assert!(
        t0.elapsed() < Duration::from_secs(25),
        "the job waited for the lease to expire"
    );
    assert_eq!(j["state"], "passed", "{j:#}");
    assert_eq!(j["attempts"], 2, "{j:#}");
    assert_eq!(count(&j, "total"), 4, "{j:#}");
}

/// Higher priority runs first, FIFO within a priority.
#[test]
fn pending_jobs_run_by_priority_then_fifo() {
    let mut f = Fleet::new();
    f.add_agent("p1", &[], &[]);
    let quick = s(&f.write_suite("quick", &[("test_quick.py", QUICK_TEST)]));
    assert_eq!(f.ctl(&["agent", "drain", "p1"]).code, 0);
    let mut ids = BTreeMap::new();
    for (name, prio) in [
        ("low-1", "0"),
        ("high-1", "5"),
        ("low-2", "0"),
        ("high-2", "5"),
        ("neg", "-1"),
    ] {
        ids.insert(
            name,
            f.submit(&[
                "pytest",
                "--dir",
                &quick,
                "--priority",
                prio,
                "--name",
                name,
            ]),
        );
    }
    let queues = f.ctl(&["queues", "--json"]).json();
    let default = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "default")
        .unwrap()
        .clone();
    assert_eq!(default["pending"], 5, "{queues:#}");
    assert_eq!(f.ctl(&["agent", "undrain", "p1"]).code, 0);
    let mut started: Vec<(i64, &str)> = ids
        .iter()
        .map(|(name, id)| {
            let j = f.wait_terminal(id);
            assert_eq!(j["state"], "passed", "{j:#}");
            (j["started_at_ms"].as_i64().unwrap(), *name)
        })
        .collect();
    started.sort();
    let order: Vec<&str> = started.into_iter().map(|(_, n)| n).collect();
    assert_eq!(order, vec!["high-1", "high-2", "low-1", "low-2", "neg"]);
}

/// After a scheduler restart, an agent that never comes back gets the grace
/// period, then its attempt is requeued and runs elsewhere.
#[test]
fn after_a_restart_an_agent_that_never_returns_loses_its_job_after_the_grace() {
    let mut f = Fleet::with_opts(SchedOpts {
        extra: vec!["--restart-grace".into(), "4s".into()],
        ..SchedOpts::default()
    });
    f.add_agent("z1", &[], &[]);
    let suite = s(&f.sleepy_suite("four", 4, 1.0));
    let id = f.submit(&["pytest", "--dir", &suite]);
    f.wait_job(&id, "running with a result in", |j| {
        j["state"] == "running" && count(j, "total") >= 1
    });
    f.agent("z1").kill9();
    f.sched.kill9();
    f.sched.restart();
    let t0 = Instant::now();
    let j = f.show(&id);
    assert_eq!(
        j["state"], "running",
        "declared lost at once after the restart: {j:#}"
    );
    f.add_agent("z2", &[], &[]);
    let j = f.wait_job(&id, "a second attempt", |j| {
        j["attempts"].as_u64() >= Some(2)
    });
    assert!(
        t0.elapsed() >= Duration::from_millis(3500),
        "requeued {:?} after the restart, before the 4 s grace: {j:#}",
        t0.elapsed()
    );
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "passed", "{j:#}");
    assert_eq!(j["agent"], "z2", "{j:#}");
    assert_eq!(j["attempts"], 2, "{j:#}");
    assert_eq!(count(&j, "total"), 4, "{j:#}");
}

/// Cancelling a job whose agent died ends it `cancelled` once the lease
/// expires; it is not run again.
#[test]
fn cancel_of_a_job_on_a_dead_agent_ends_cancelled_without_a_rerun() {
    let mut f = Fleet::new();
    f.add_agent("k1", &[], &[]);
    let suite = s(&f.sleepy_suite("four", 4, 1.0));
    let id = f.submit(&["pytest", "--dir", &suite]);
    f.wait_state(&id, "running");
    f.agent("k1").kill9();
    f.add_agent("k2", &[], &[]);
    let out = f.ctl(&["cancel", &id, "--wait"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains(&format!("job {id}: cancelled")),
        "{out}"
    );
    std::thread::sleep(Duration::from_millis(1000));
    let j = f.show(&id);
    assert_eq!(j["state"], "cancelled", "{j:#}");
    assert_eq!(j["attempts"], 1, "a cancelled job ran again: {j:#}");
    assert_eq!(j["agent"], "k1", "{j:#}");
}

/// A test process that ignores SIGTERM gets the kill grace (2 s here), then SIGKILL.
#[test]
fn cancel_escalates_to_sigkill_after_the_grace() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let pidfile = f.path().join("pytest.pid");
    let src = format!(
        "import os, signal, time\n\ndef test_stubborn():\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    with open({:?}, 'w') as f:\n        f.write(str(os.getpid()))\n    time.sleep(60)\n",
        s(&pidfile)
    );
    let suite = f.write_suite("stubborn", &[("test_stubborn.py", &src)]);
    let id = f.submit(&["pytest", "--dir", &s(&suite)]);
    let pid = wait_for(
        Duration::from_secs(30),
        "the stubborn test to write its pid",
        || {
            std::fs::read_to_string(&pidfile)
                .ok()?
                .trim()
                .parse::<i32>()
                .ok()
        },
        || f.logs(),
    );
    let t0 = Instant::now();
    let out = f.ctl(&["cancel", &id, "--wait"]);
    assert_eq!(out.code, 0, "{out}");
    let took = t0.elapsed();
    assert!(!pid_alive(pid), "pytest (pid {pid}) survived the cancel");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(15),
        "a SIGTERM-ignoring test should die by SIGKILL after the 2 s grace; cancel --wait took {took:?}"
    );
    assert_eq!(f.show(&id)["state"], "cancelled");
}

/// The shard race: an agent that sends the last collected ids and its Finished
/// in one burst (as after a reconnect, with resends of what was already
/// applied) gets shards that hold every collected test exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_burst_with_its_finish_splits_every_test_exactly_once() {
    use msfleet_proto as pb;
    let f = Fleet::new();
    let addr = f.addr();
    let suite = s(&f.write_suite("quick", &[("test_quick.py", QUICK_TEST)]));
    let mut caps = raw::caps(&[("pool", "burst")], &[s(&f.root)]);
    caps.slots = 4;
    let mut agent = raw::register(&addr, "burst-1", "burst-1-i1", caps)
        .await
        .expect("register");
    let (a2, s2) = (addr.clone(), suite.clone());
    let parent = blocking(move || {
        let out = ctl_at(
            &a2,
            &[
                "submit",
                "pytest",
                "--dir",
                &s2,
                "--shards",
                "3",
                "--require",
                "label.pool==\"burst\"",
            ],
        );
        assert_eq!(out.code, 0, "{out}");
        out.stdout.trim().to_string()
    })
    .await;
    let collect = agent.assignment().await;
    assert!(collect.spec.as_ref().unwrap().collect_only);
    let r = collect.attempt.unwrap();
    let ids: Vec<String> = (0..12).map(|i| format!("test_quick.py::t{i:02}")).collect();
    let test = |id: &str, outcome: &str| {
        pb::task_update::Kind::Test(pb::TestResult {
            nodeid: id.into(),
            when: "call".into(),
            outcome: outcome.into(),
            ..Default::default()
        })
    };
    agent.send(&r, 1, raw::started()).await;
    for (i, id) in ids[..4].iter().enumerate() {
        agent.send(&r, 2 + i as u64, test(id, "collected")).await;
    }
    agent.drain(Duration::from_millis(300)).await;
    // The burst: resends of seq 2..=5, the remaining ids, the Finished, unawaited.
    for (i, id) in ids.iter().enumerate() {
        agent.send(&r, 2 + i as u64, test(id, "collected")).await;
    }
    let finished = pb::task_update::Kind::Finished(pb::Finished {
        outcome: pb::Outcome::Passed as i32,
        reason: "collected".into(),
        exit_code: 0,
        ..Default::default()
    });
    agent.send(&r, 2 + ids.len() as u64, finished).await;
    let mut shards = Vec::new();
    while shards.len() < 3 {
        shards.push(agent.assignment().await);
    }
    let mut selected: Vec<String> = shards
        .iter()
        .flat_map(|a| a.spec.clone().unwrap().select)
        .collect();
    selected.sort();
    assert_eq!(selected, ids, "every collected test in exactly one shard");
    for a in &shards {
        let r = a.attempt.clone().unwrap();
        agent.send(&r, 1, raw::started()).await;
        let select = a.spec.clone().unwrap().select;
        for (i, id) in select.iter().enumerate() {
            agent.send(&r, 2 + i as u64, test(id, "passed")).await;
        }
        let done = pb::task_update::Kind::Finished(pb::Finished {
            outcome: pb::Outcome::Passed as i32,
            reason: "passed".into(),
            exit_code: 0,
            ..Default::default()
        });
        agent.send(&r, 2 + select.len() as u64, done).await;
    }
    let (a3, p3) = (addr.clone(), parent.clone());
    let j = blocking(move || {
        wait_for(
            Duration::from_secs(20),
            "the sharded parent to finish",
            || {
                let out = ctl_at(&a3, &["show", &p3, "--json"]);
                let j = out.json();
                is_terminal(&j).then_some(j)
            },
            String::new,
        )
    })
    .await;
    assert_eq!(j["state"], "passed", "{j:#}");
    assert_eq!(count(&j, "passed"), 12, "each test counted once: {j:#}");
    assert_eq!(count(&j, "total"), 12, "{j:#}");
}

/// SIGTERM (systemd's stop) ends msched promptly even while agents hold
/// their sessions open and a client watches a job: the streams are closed
/// for it, the agents reconnect to the restarted scheduler, nothing is lost.
#[test]
fn sigterm_stops_msched_with_agents_connected_and_they_come_back() {
    let mut f = Fleet::new();
    f.add_agent("t1", &[], &[]);
    f.add_agent("t2", &[], &[]);
    let suite = f.copy_example("suite");
    let quick = s(&suite);
    let done = f.submit(&["pytest", "--dir", &quick, "--", "tests/smoke"]);
    assert_eq!(f.wait_terminal(&done)["state"], "passed");
    let waiting = f.submit(&[
        "pytest",
        "--dir",
        &quick,
        "--require",
        "agent.name == \"nobody\"",
        "--allow-unmatched",
    ]);
    let mut watcher = ctl_cmd(&f.sched.addr, &["watch", &waiting])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("msctl watch");
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let status = f.sched.terminate(Duration::from_secs(15));
    let took = started.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "msched still ran 15 s after SIGTERM:\n{}",
            tail(&f.sched.log, 30)
        )
    });
    assert!(status.success(), "msched exited {status:?}");
    println!("msched stopped {took:?} after SIGTERM with 2 agents and a watcher");
    f.sched.restart();
    for a in ["t1", "t2"] {
        f.wait_agent_connected(a);
    }
    let j = f.show(&done);
    assert_eq!(j["state"], "passed", "{j:#}");
    assert_eq!(f.show(&waiting)["state"], "queued");
    // The watch went on with the restarted scheduler: it sees the cancel.
    let out = f.ctl(&["cancel", &waiting]);
    assert_eq!(out.code, 0, "{out}");
    let until = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = watcher.try_wait().expect("msctl watch") {
            break status.code();
        }
        if Instant::now() > until {
            let _ = watcher.kill();
            panic!("msctl watch did not follow the job across the restart");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, Some(3), "watch of a cancelled job exits 3");
    let again = f.submit(&["pytest", "--dir", &quick, "--", "tests/smoke"]);
    assert_eq!(f.wait_terminal(&again)["state"], "passed");
}
