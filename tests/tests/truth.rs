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

/// A real Python that cannot import pytest: the test Python without its
/// site-packages (`-S`), behind a script the agent takes as its `--python`.
fn python_without_pytest(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("python-bare");
    std::fs::write(
        &p,
        format!("#!/bin/sh\nexec {} -S \"$@\"\n", python().display()),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn a_job_on_an_agent_whose_python_lacks_pytest_ends_error_naming_the_interpreter() {
    let mut f = Fleet::new();
    let bare = python_without_pytest(f.path());
    f.add_agent("bare", &[], &["--python", &s(&bare)]);
    let suite = f.write_suite("ok", &[("test_ok.py", "def test_ok():\n    pass\n")]);
    let id = f.submit(&["pytest", "--dir", &s(&suite)]);
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "error", "{j:#}");
    assert_eq!(
        j["reason"],
        format!(
            "pytest is not importable by {}: ModuleNotFoundError: No module named 'pytest'",
            bare.display()
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
