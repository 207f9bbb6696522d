//! End-to-end: flaky-test detection (`retry_failed`). A failed test is run
//! again in the same attempt; one that fails and then passes is counted as
//! flaky, apart from passed and failed.
//!
//! Run `cargo build --bins` first (see `common`).

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;

fn s(p: &Path) -> String {
    p.display().to_string()
}

const STABLE: &str = "def test_stable():\n    assert True\n";

/// Fails the first time it runs in a job, passes afterwards: a marker file in
/// `$FLAKY_DIR` (one directory per job) remembers the first run.
const FLAKY: &str = r#"
import os, pathlib

def test_flaky():
    marker = pathlib.Path(os.environ["FLAKY_DIR"]) / "test_flaky.ran"
    if not marker.exists():
        marker.write_text("failed once")
        assert False, "fails the first time"
"#;

const BROKEN: &str = "def test_broken():\n    assert 1 + 1 == 3, 'always'\n";

/// The tests' counts, without the zero ones, `total` included.
fn counts(j: &Value) -> Vec<(String, u64)> {
    [
        "passed", "failed", "skipped", "xfailed", "xpassed", "errors", "flaky", "total",
    ]
    .iter()
    .map(|k| (k.to_string(), count(j, k)))
    .filter(|(_, n)| *n > 0)
    .collect()
}

fn want(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

/// A fresh marker directory for one job.
fn marker_dir(f: &Fleet, job: &str) -> String {
    let d = f.path().join("markers").join(job);
    std::fs::create_dir_all(&d).unwrap();
    s(&d)
}

/// The job's log: pytest's stdout, then stderr (where msfleet's own lines go).
fn logs(f: &Fleet, id: &str) -> String {
    let out = f.ctl(&["logs", id]);
    assert_eq!(out.code, 0, "msctl logs {id}:\n{out}");
    out.stdout + &out.stderr
}

#[test]
fn a_test_that_fails_then_passes_on_retry_is_flaky() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let all = f.write_suite(
        "all",
        &[
            ("test_stable.py", STABLE),
            ("test_flaky.py", FLAKY),
            ("test_broken.py", BROKEN),
        ],
    );
    let no_broken = f.write_suite(
        "no_broken",
        &[("test_stable.py", STABLE), ("test_flaky.py", FLAKY)],
    );

    // 1. From a job file with retry_failed = 2: test_broken fails three times
    //    (the job fails), test_flaky fails once and is flaky.
    let job_file = f.path().join("job.toml");
    std::fs::write(
        &job_file,
        format!(
            "kind = \"pytest\"\nretry_failed = 2\n[source]\ndir = {:?}\n[env]\nFLAKY_DIR = {:?}\n",
            s(&all),
            marker_dir(&f, "file")
        ),
    )
    .unwrap();
    let id = f.submit(&["-f", &s(&job_file)]);
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "failed", "{j:#}");
    assert_eq!(j["reason"], "tests failed (1 flaky)", "{j:#}");
    assert_eq!(j["attempts"], 1, "{j:#}");
    assert_eq!(
        j["retry_failed"], 2,
        "show --json echoes the setting: {j:#}"
    );
    // `flaky` moves the earlier failure; `total` counts each test once.
    assert_eq!(
        counts(&j),
        want(&[("passed", 1), ("failed", 1), ("flaky", 1), ("total", 3)]),
        "{j:#}"
    );
    let log = logs(&f, &id);
    assert!(
        log.contains("msfleet: retry 1 of 2: 2 failed tests"),
        "{log}"
    );
    assert!(
        log.contains("msfleet: retry 2 of 2: 1 failed test\n"),
        "{log}"
    );

    // 2. Only the flaky failure: the job passes, the test is still counted flaky.
    let dir = marker_dir(&f, "flags");
    let env = format!("FLAKY_DIR={dir}");
    let id = f.submit(&[
        "pytest",
        "--dir",
        &s(&no_broken),
        "--env",
        &env,
        "--retry-failed",
        "2",
    ]);
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "passed", "{j:#}");
    assert_eq!(j["reason"], "all tests passed (1 flaky)", "{j:#}");
    assert_eq!(
        counts(&j),
        want(&[("passed", 1), ("flaky", 1), ("total", 2)]),
        "{j:#}"
    );
    let log = logs(&f, &id);
    assert!(
        log.contains("msfleet: retry 1 of 2: 1 failed test\n"),
        "{log}"
    );
    assert!(
        !log.contains("retry 2 of 2"),
        "nothing left to retry:\n{log}"
    );

    // 3. No retries: the first failure is final.
    let dir = marker_dir(&f, "none");
    let env = format!("FLAKY_DIR={dir}");
    let id = f.submit(&[
        "pytest",
        "--dir",
        &s(&no_broken),
        "--env",
        &env,
        "--retry-failed",
        "0",
    ]);
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "failed", "{j:#}");
    assert_eq!(j["reason"], "tests failed", "{j:#}");
    assert_eq!(
        counts(&j),
        want(&[("passed", 1), ("failed", 1), ("total", 2)]),
        "{j:#}"
    );
    assert!(!logs(&f, &id).contains("msfleet: retry"));
}

/// pytest-rerunfailures through the fleet (`-- --reruns 2` in the job's
/// pytest arguments; `scripts/venv.sh` installs the plugin): test_flaky fails
/// once and passes on pytest's rerun, so the job passes and counts it flaky,
/// as `--retry-failed` does; `msctl report` shows it flaky.
#[test]
fn a_pass_on_a_pytest_rerunfailures_rerun_through_the_fleet_is_flaky() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let suite = f.write_suite(
        "reruns",
        &[("test_stable.py", STABLE), ("test_flaky.py", FLAKY)],
    );
    let env = format!("FLAKY_DIR={}", marker_dir(&f, "reruns"));
    let id = f.submit(&[
        "pytest",
        "--dir",
        &s(&suite),
        "--env",
        &env,
        "--",
        "--reruns",
        "2",
    ]);
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "passed", "{j:#}");
    assert_eq!(j["reason"], "all tests passed (1 flaky)", "{j:#}");
    assert_eq!(
        counts(&j),
        want(&[("passed", 1), ("flaky", 1), ("total", 2)]),
        "{j:#}"
    );
    assert!(logs(&f, &id).contains("1 rerun"), "pytest's own summary");

    let out = f.ctl(&["report", &id, "--json"]);
    assert_eq!(out.code, 0, "{out}");
    let v = out.json();
    let rows: Vec<(String, String)> = report_rows(&v);
    assert_eq!(
        rows,
        [("test_flaky.py::test_flaky".to_string(), "flaky".to_string())],
        "{v:#}"
    );
}
