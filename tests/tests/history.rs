//! End-to-end: every test outcome is recorded per (test id, hardware profile)
//! and `msctl test history` shows it.

mod common;

use common::*;

#[test]
fn test_history_is_kept_per_hardware_profile() {
    let mut f = Fleet::new();
    f.add_agent("alpha", &["profile=alpha"], &[]);
    f.add_agent("beta", &["profile=beta"], &[]);
    let suite = f.write_suite(
        "hist",
        &[(
            "test_h.py",
            "import os\n\ndef test_where():\n    assert os.environ['MSFLEET_JOB_ID']\n\ndef test_fails():\n    assert False\n",
        )],
    );
    let dir = suite.to_str().unwrap();
    let mut jobs = Vec::new();
    for profile in ["alpha", "beta", "alpha"] {
        let req = format!("profile==\"{profile}\"");
        let id = f.submit(&["pytest", "--dir", dir, "--require", &req]);
        f.wait_terminal(&id);
        jobs.push(id);
    }
    let out = f.ctl(&["test", "history", "test_h.py::test_where", "--json"]);
    assert_eq!(out.code, 0, "{out}");
    let runs = out.json();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 3, "{runs:#?}");
    assert_eq!(runs[0]["job_id"], jobs[2], "newest first: {runs:#?}");
    assert!(runs.iter().all(|r| r["outcome"] == "passed"));
    let profiles: Vec<&str> = runs
        .iter()
        .map(|r| r["profile"].as_str().unwrap())
        .collect();
    assert_eq!(profiles, vec!["alpha", "beta", "alpha"]);

    let out = f.ctl(&[
        "test",
        "history",
        "test_h.py::test_fails",
        "--profile",
        "beta",
        "--json",
    ]);
    let runs = out.json();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["outcome"], "failed");
    assert_eq!(runs[0]["agent"], "beta");

    let out = f.ctl(&["test", "history", "test_h.py::test_fails"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains("profile alpha") && out.stdout.contains("profile beta"),
        "{out}"
    );
    let out = f.ctl(&["test", "history", ""]);
    assert_eq!(out.code, 2, "an empty test id is bad input: {out}");
}
