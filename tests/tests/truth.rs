//! End-to-end: verdicts that can be believed without reading logs. An
//! infrastructure failure (an interpreter without pytest) is `error`, never a
//! test failure.
//!
//! Run `cargo build --bins` first (see `common`).

mod common;

use common::*;
use std::path::Path;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A script the agent takes as its `--python`: the test Python, or (without
/// pytest) a real Python that cannot import pytest: the test Python without its
/// site-packages (`-S`). Written again, it changes what the agent runs.
fn python_wrapper(p: &Path, with_pytest: bool) {
    use std::os::unix::fs::PermissionsExt;
    let flag = if with_pytest { "" } else { " -S" };
    let tmp = p.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!("#!/bin/sh\nexec {}{flag} \"$@\"\n", python().display()),
    )
    .unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, p).unwrap();
}

#[test]
fn a_job_on_an_agent_whose_python_lacks_pytest_ends_error_naming_the_interpreter() {
    let mut f = Fleet::new();
    let suite = f.write_suite("ok", &[("test_ok.py", "def test_ok():\n    pass\n")]);
    // Probed without pytest: the scheduler does not give it pytest jobs, and
    // the submit is refused with the reason.
    let bare = f.path().join("python-bare");
    python_wrapper(&bare, false);
    f.add_agent("bare", &[], &["--python", &s(&bare)]);
    let out = f.ctl(&["submit", "pytest", "--dir", &s(&suite)]);
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stderr.contains(&format!(
            "bare: pytest is not installed for {}",
            bare.display()
        )),
        "{out}"
    );
    // pytest gone after the probe: the job runs there and ends `error`, not
    // `failed`, naming the interpreter.
    let lost = f.path().join("python-lost");
    python_wrapper(&lost, true);
    f.add_agent("lost", &[], &["--python", &s(&lost)]);
    python_wrapper(&lost, false);
    let id = f.submit(&["pytest", "--dir", &s(&suite)]);
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "error", "{j:#}");
    assert_eq!(j["agent"], "lost", "{j:#}");
    assert_eq!(
        j["reason"],
        format!(
            "pytest is not importable by {}: ModuleNotFoundError: No module named 'pytest'",
            lost.display()
        ),
        "{j:#}"
    );
    let out = f.ctl(&["show", &id]);
    assert!(!out.stdout.contains("tests failed"), "{out}");
}

/// The benchmark equivalents: a command that cannot start, and a case
/// directory without cases, end the job `error`, not `failed`.
#[test]
fn a_benchmark_that_cannot_start_or_has_no_cases_ends_error() {
    let mut f = Fleet::new();
    f.add_agent("b1", &[], ALLOW_BENCH);
    let case = r#"{"name": "c", "user_input": {}, "baseline_time_s": 0.1}"#;
    let suite = f.write_suite("nostart", &[("cases/c.json", case)]);
    let bench = |dir: &Path, cases: &str| {
        f.submit(&[
            "bench",
            "--dir",
            &s(dir),
            "--cases",
            cases,
            "--command",
            "./no-such-bench {case}",
            "--warmup",
            "0",
            "--repetitions",
            "1",
        ])
    };
    let id = bench(&suite, "cases");
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "error", "{j:#}");
    assert_eq!(
        j["reason"],
        "1 of 1 case could not run: cannot start './no-such-bench': No such file or directory (os error 2)",
        "{j:#}"
    );

    std::fs::create_dir_all(suite.join("empty")).unwrap();
    let id = bench(&suite, "empty");
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "error", "{j:#}");
    assert_eq!(j["reason"], "no benchmark cases found", "{j:#}");
}

/// One test kills its own pytest with SIGSEGV, as a native kernel would.
const CRASH_SUITE: &str = r#"
import os, signal

def test_a():
    pass

def test_b_crash():
    os.kill(os.getpid(), signal.SIGSEGV)

def test_c():
    pass
"#;

/// Through the fleet: the segfaulting test is failed and named in the report
/// with "crashed: signal 11 (SIGSEGV)", the test after it still ran, and the
/// job is `failed` (a product crash), not `error`.
#[test]
fn a_segfaulting_test_is_failed_by_name_and_the_tests_after_it_run() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let suite = f.write_suite("crash", &[("test_crash.py", CRASH_SUITE)]);
    let id = f.submit(&["pytest", "--dir", &s(&suite), "--", "-p", "no:randomly"]);
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "failed", "{j:#}");
    assert_eq!(
        j["reason"],
        "tests failed (pytest crashed in test_crash.py::test_b_crash (signal 11 (SIGSEGV)))",
        "{j:#}"
    );
    assert_eq!(count(&j, "passed"), 2, "{j:#}");
    assert_eq!(count(&j, "failed"), 1, "{j:#}");
    assert_eq!(count(&j, "total"), 3, "{j:#}");

    let out = f.ctl(&["report", &id, "--json"]);
    assert_eq!(out.code, 0, "{out}");
    let v = out.json();
    let rows: Vec<String> = v["matrix"]
        .as_array()
        .expect("matrix")
        .iter()
        .map(|r| r["test"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(rows, ["test_crash.py::test_b_crash"], "{v}");
    let xml = f.path().join("crash.xml");
    let out = f.ctl(&["report", &id, "--junit", &s(&xml)]);
    assert_eq!(out.code, 0, "{out}");
    let xml = std::fs::read_to_string(&xml).unwrap();
    assert!(
        xml.contains(
            "<failure message=\"crashed: signal 11 (SIGSEGV)\">crashed: signal 11 (SIGSEGV)\n"
        ),
        "{xml}"
    );
}

/// A fixture's finalizer kills pytest with SIGSEGV after the test passed.
const TEARDOWN_CRASH_SUITE: &str = r#"
import os, signal
import pytest

@pytest.fixture
def dies_after():
    yield
    os.kill(os.getpid(), signal.SIGSEGV)

def test_a():
    pass

def test_b(dies_after):
    pass

def test_c():
    pass
"#;

/// Through the fleet: a crash in a test's teardown keeps its passed call and
/// counts the crash as an error in its teardown (as pytest counts a failing
/// teardown), not as a failed call; the test after it still runs.
#[test]
fn a_crash_in_a_teardown_is_an_error_after_the_passed_call() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let suite = f.write_suite("tdcrash", &[("test_td.py", TEARDOWN_CRASH_SUITE)]);
    let id = f.submit(&["pytest", "--dir", &s(&suite), "--", "-p", "no:randomly"]);
    let j = f.wait_terminal(&id);
    assert_eq!(
        j["reason"], "tests failed (pytest crashed in test_td.py::test_b (signal 11 (SIGSEGV)))",
        "{j:#}"
    );
    assert_eq!(count(&j, "passed"), 3, "{j:#}");
    assert_eq!(count(&j, "errors"), 1, "{j:#}");
    assert_eq!(count(&j, "total"), 4, "{j:#}");
    assert_eq!(count(&j, "failed"), 0, "{j:#}");
}

/// unittest's `subTest` and (pytest 9) the `subtests` fixture.
const SUBTEST_SUITE: &str = r#"
import unittest

class T(unittest.TestCase):
    def test_ut(self):
        for i in range(3):
            with self.subTest(i=i):
                self.assertNotEqual(i, 2)

def test_plain():
    pass
"#;

const SUBTESTS_FIXTURE: &str = r#"
def test_sub(subtests):
    for i in range(3):
        with subtests.test(msg="i", i=i):
            assert i != 1
"#;

fn pytest_major() -> u32 {
    let out = std::process::Command::new(python())
        .args([
            "-c",
            "import pytest; print(pytest.__version__.split('.')[0])",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A test whose subtest failed reads `failed` in `msctl test history` (one
/// verdict per run, the phase that decided it), and its subtests are counted
/// as pytest 9 counts them ("N subtests passed") in `show` and `watch`, whose
/// SUBPASS/SUBFAIL lines stand under their test.
#[test]
fn a_failed_subtest_fails_its_test_in_history_and_subtests_are_counted() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let nine = pytest_major() >= 9;
    let suite = f.write_suite("subhist", &[("test_ut.py", SUBTEST_SUITE)]);
    let id = f.submit(&["pytest", "--dir", &s(&suite)]);
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "failed", "{j:#}");

    let out = f.ctl(&["test", "history", "test_ut.py::T::test_ut", "--json"]);
    assert_eq!(out.code, 0, "{out}");
    let runs = out.json();
    let runs = runs.as_array().expect("runs");
    assert_eq!(runs.len(), 1, "one run, one verdict: {runs:#?}");
    assert_eq!(runs[0]["job_id"], id.as_str());
    assert_eq!(runs[0]["outcome"], "failed", "{runs:#?}");
    assert_eq!(runs[0]["when"], if nine { "subtest" } else { "call" });
    let out = f.ctl(&["test", "history", "test_ut.py::T::test_ut"]);
    let row = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{id} ")))
        .unwrap_or_else(|| panic!("no row for job {id}:\n{out}"));
    assert!(row.contains(" failed ") && !row.contains("passed"), "{row}");

    if !nine {
        return; // pytest 8 has no subtest reports: the test itself failed.
    }
    // pytest 9 -v says "1 failed, 2 passed, 2 subtests passed".
    let counts: Vec<u64> = [
        "failed",
        "passed",
        "subtests_passed",
        "subtests_failed",
        "total",
    ]
    .iter()
    .map(|k| j["tests"][k].as_u64().unwrap_or(0))
    .collect();
    assert_eq!(counts, [1, 2, 2, 1, 3], "{j:#}");
    let show = f.ctl(&["show", &id]);
    assert!(
        show.stdout
            .contains("tests:     1 failed (1 subtest), 2 passed, 2 subtests passed\n"),
        "{show}"
    );
    let watch = f.ctl(&["watch", &id]);
    assert_eq!(watch.code, 1, "{watch}");
    let lines: Vec<&str> = watch.stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("PASSED   test_ut.py::T::test_ut "))
        .unwrap_or_else(|| panic!("no line for test_ut:\n{watch}"));
    assert_eq!(
        lines[at + 1..at + 4],
        [
            "         SUBPASS (i=0)",
            "         SUBPASS (i=1)",
            "         SUBFAIL (i=2)"
        ],
        "{watch}"
    );
    assert!(
        lines[at + 4..]
            .iter()
            .any(|l| l.contains("AssertionError: 2 == 2")),
        "{watch}"
    );
    assert!(!watch.stdout.contains("OTHER"), "{watch}");
    assert!(
        watch.stdout.contains(&format!(
            "job {id} failed: 1 failed (1 subtest), 2 passed, 2 subtests passed in "
        )),
        "{watch}"
    );
}

/// A test whose subtest failed is failed in the job's report and its JUnit
/// (also where pytest 9 reports the unittest test itself `passed` after the
/// failed subtest), and the counts are pytest's.
#[test]
fn a_test_with_a_failed_subtest_is_failed_in_the_report_and_junit() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let nine = pytest_major() >= 9;
    let mut files = vec![("test_ut.py", SUBTEST_SUITE)];
    if nine {
        files.push(("test_sub.py", SUBTESTS_FIXTURE));
    }
    let suite = f.write_suite("subtests", &files);
    let id = f.submit(&["pytest", "--dir", &s(&suite)]);
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "failed", "{j:#}");
    // pytest 9: "3 failed, 2 passed" (two SUBFAILs, test_sub itself; test_ut
    // and test_plain passed); pytest 8: "1 failed, 1 passed".
    let (failed, passed) = if nine { (3, 2) } else { (1, 1) };
    assert_eq!(count(&j, "failed"), failed, "{j:#}");
    assert_eq!(count(&j, "passed"), passed, "{j:#}");

    let v = f.ctl(&["report", &id, "--json"]).json();
    let rows: Vec<(String, String)> = report_rows(&v);
    let mut want = vec![("test_ut.py::T::test_ut".to_string(), "fail".to_string())];
    if nine {
        want.insert(0, ("test_sub.py::test_sub".to_string(), "fail".to_string()));
    }
    assert_eq!(rows, want, "{v:#}");

    let xml = f.path().join("sub.xml");
    let out = f.ctl(&["report", &id, "--junit", &s(&xml)]);
    assert_eq!(out.code, 0, "{out}");
    let xml = std::fs::read_to_string(&xml).unwrap();
    let ut = xml
        .split("<testcase ")
        .find(|t| t.contains("name=\"test_ut\""))
        .unwrap_or_else(|| panic!("no test_ut in {xml}"));
    assert!(ut.contains("<failure "), "{xml}");
    if nine {
        assert!(ut.contains("SUBFAIL (i=2)"), "{xml}");
    }
}
