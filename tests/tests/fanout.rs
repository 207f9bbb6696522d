//! End-to-end: fan-out of one job to every hardware profile (or agent) of the
//! fleet, a profile whose agents are offline showing as not run, and the
//! compatibility matrix over the children.

mod common;

use common::*;
use serde_json::Value;

const SUITE: &str = "def test_everywhere():\n    pass\n\ndef test_also():\n    pass\n";

#[test]
fn each_profile_makes_one_child_per_profile_and_offline_profiles_are_not_run() {
    let mut f = Fleet::new();
    f.add_agent("a1", &["profile=alpha"], &[]);
    f.add_agent("b1", &["profile=beta"], &[]);
    f.add_agent("g1", &["profile=gamma"], &[]);
    f.agent("g1").kill9(); // registered, but offline
    wait_for(
        std::time::Duration::from_secs(30),
        "g1 to be offline",
        || (f.agent_json("g1")?["connected"] == false).then_some(()),
        || format!("{:?}", f.agent_json("g1")),
    );
    let suite = f.write_suite("fan", &[("test_fan.py", SUITE)]);
    let dir = suite.to_str().unwrap();
    let id = f.submit(&["pytest", "--dir", dir, "--fanout", "each-profile"]);
    let parent = f.wait_terminal(&id);
    let children: Vec<String> = parent["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        children.len(),
        2,
        "one child per online profile: {parent:#}"
    );
    assert_eq!(
        parent["not_run"],
        serde_json::json!(["gamma"]),
        "{parent:#}"
    );
    let mut seen: Vec<(String, String)> = children
        .iter()
        .map(|c| {
            let j = f.show(c);
            assert_eq!(j["parent"], id.as_str(), "{j:#}");
            (
                j["column"].as_str().unwrap().to_string(),
                j["agent"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![("alpha".into(), "a1".into()), ("beta".into(), "b1".into())],
        "each child ran on an agent of its profile"
    );
    // Both children pass this suite; the parent sums their counts.
    assert_eq!(parent["state"], "passed", "{parent:#}");
    assert_eq!(parent["tests"]["passed"], 4, "{parent:#}");
    assert!(
        parent["reason"].as_str().unwrap().contains("gamma"),
        "{parent:#}"
    );

    // The matrix has a column per profile; gamma's cells are "not run".
    let out = f.ctl(&["report", &id, "--json", "--all"]);
    assert_eq!(out.code, 0, "{out}");
    let r: Value = out.json();
    let profiles: Vec<&str> = r["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(profiles, vec!["alpha", "beta", "gamma"], "{r:#}");
    let text = r.to_string();
    assert!(
        text.contains("not run") || text.contains("not_run"),
        "{r:#}"
    );
}

#[test]
fn each_agent_makes_one_child_per_agent_and_cancel_reaches_the_children() {
    let mut f = Fleet::new();
    f.add_agent("x1", &["profile=same"], &[]);
    f.add_agent("x2", &["profile=same"], &[]);
    let slow = f.copy_example("slow");
    let id = f.submit(&[
        "pytest",
        "--dir",
        slow.to_str().unwrap(),
        "--fanout",
        "each-agent",
    ]);
    let parent = f.wait_job(&id, "both children running", |j| {
        j["state"] == "running" && j["children"].as_array().is_some_and(|c| c.len() == 2)
    });
    for c in parent["children"].as_array().unwrap() {
        f.wait_state(c.as_str().unwrap(), "running");
    }
    let out = f.ctl(&["cancel", &id]);
    assert_eq!(out.code, 0, "{out}");
    let parent = f.wait_terminal(&id);
    assert_eq!(parent["state"], "cancelled", "{parent:#}");
    for c in parent["children"].as_array().unwrap() {
        assert_eq!(f.show(c.as_str().unwrap())["state"], "cancelled");
    }
}

#[test]
fn fan_out_with_no_matching_agent_is_refused() {
    let mut f = Fleet::new();
    f.add_agent("a1", &["profile=alpha"], &[]);
    let suite = f.write_suite("fan", &[("test_fan.py", SUITE)]);
    let out = f.ctl(&[
        "submit",
        "pytest",
        "--dir",
        suite.to_str().unwrap(),
        "--fanout",
        "each-profile",
        "--require",
        "label.pool==\"none\"",
    ]);
    assert_eq!(out.code, 2, "{out}");
    assert!(f.list().is_empty(), "nothing was submitted");
}

#[test]
fn a_fan_out_survives_a_scheduler_kill9_and_its_parent_never_runs_itself() {
    let mut f = Fleet::new();
    f.add_agent("a1", &["profile=alpha"], &[]);
    f.add_agent("b1", &["profile=beta"], &[]);
    let suite = f.sleepy_suite("fan", 3, 0.2);
    // Each agent's one slot is busy, so the children wait and the parent stays
    // queued. (A drained agent would not get a child at all.)
    let blocker = f.sleepy_suite("block", 4, 1.0);
    let mut blockers = Vec::new();
    for a in ["a1", "b1"] {
        let pin = format!("agent.name==\"{a}\"");
        blockers.push(f.submit(&[
            "pytest",
            "--dir",
            blocker.to_str().unwrap(),
            "--require",
            &pin,
        ]));
    }
    for b in &blockers {
        f.wait_state(b, "running");
    }
    let id = f.submit(&[
        "pytest",
        "--dir",
        suite.to_str().unwrap(),
        "--fanout",
        "each-profile",
    ]);
    assert_eq!(f.show(&id)["state"], "queued");
    f.sched.restart(); // kill -9, then start again on the same address and data
    for a in ["a1", "b1"] {
        f.wait_agent_connected(a);
    }
    let parent = f.wait_terminal(&id);
    assert_eq!(parent["state"], "passed", "{parent:#}");
    assert_eq!(parent["tests"]["passed"], 6, "{parent:#}");
    assert_eq!(
        parent["attempts"], 0,
        "the parent itself is never assigned: {parent:#}"
    );
    let jobs = f.list();
    assert_eq!(
        jobs.len(),
        5,
        "2 blockers + parent + 2 children, nothing more: {jobs:#?}"
    );
}
