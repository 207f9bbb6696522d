//! End-to-end: a job still queued at its expiry ends `expired` (msctl exits 3),
//! and one no agent could ever run ends `no_resource`.

mod common;

use common::*;

const SUITE: &str = "def test_one():\n    pass\n";

#[test]
fn a_job_nothing_takes_before_its_expiry_ends_expired_and_an_unmatched_one_no_resource() {
    let mut f = Fleet::new();
    f.add_agent("x1", &["pool=x"], &[]);
    // x1 matches but takes nothing new.
    assert_eq!(f.ctl(&["agent", "drain", "x1"]).code, 0);
    let suite = f.write_suite("exp", &[("test_exp.py", SUITE)]);
    let dir = suite.to_str().unwrap();
    let waited = f.ctl(&[
        "submit",
        "pytest",
        "--dir",
        dir,
        "--expire-after",
        "2s",
        "--wait",
    ]);
    assert_eq!(waited.code, 3, "expired is exit 3:\n{waited}");
    let id = f.list()[0]["id"].as_str().unwrap().to_string();
    let j = f.show(&id);
    assert_eq!(j["state"], "expired", "{j:#}");
    assert_eq!(j["attempts"], 0, "{j:#}");

    let out = f.ctl(&[
        "submit",
        "pytest",
        "--dir",
        dir,
        "--require",
        "label.pool==\"gpu\"",
        "--expire-after",
        "2s",
        "--allow-unmatched",
    ]);
    assert_eq!(out.code, 0, "{out}");
    let id = out.stdout.trim().to_string();
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "no_resource", "{j:#}");
    assert!(
        j["reason"]
            .as_str()
            .unwrap()
            .contains("no registered agent could run it"),
        "{j:#}"
    );
}
