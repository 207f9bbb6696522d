//! End-to-end: sharding one pytest selection across agents. The selection is
//! collected once, each test runs in exactly one shard, and the union of the
//! shards' counts equals an unsharded run of the same suite.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;

fn tests_of(f: &Fleet, job: &str) -> BTreeSet<String> {
    let out = f.ctl(&["report", job, "--json", "--all"]);
    assert_eq!(out.code, 0, "{out}");
    let r: Value = out.json();
    r["matrix"]
        .as_array()
        .unwrap_or_else(|| panic!("no matrix: {r:#}"))
        .iter()
        .map(|row| row["test"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn wall_s(j: &Value) -> f64 {
    (j["finished_at_ms"].as_i64().unwrap() - j["submitted_at_ms"].as_i64().unwrap()) as f64 / 1000.0
}

#[test]
fn shards_run_each_test_exactly_once_and_add_up_to_an_unsharded_run() {
    let mut f = Fleet::new();
    f.add_agent("s1", &["profile=p"], &[]);
    f.add_agent("s2", &["profile=p"], &[]);
    let suite = f.write_suite(
        "sharded",
        &[
            (
                "test_a.py",
                "import time, pytest\n\n\
                 @pytest.mark.parametrize('n', [1, 2, 3])\n\
                 def test_param(n):\n    time.sleep(0.5)\n\n\
                 def test_fails():\n    time.sleep(0.5)\n    assert False\n\n\
                 @pytest.mark.skip(reason='not here')\n\
                 def test_skipped():\n    pass\n",
            ),
            (
                "test_b.py",
                "import time\n\n\
                 def test_one():\n    time.sleep(0.5)\n\n\
                 def test_two():\n    time.sleep(0.5)\n\n\
                 def test_three():\n    time.sleep(0.5)\n",
            ),
        ],
    );
    let dir = suite.to_str().unwrap();

    let plain = f.submit(&["pytest", "--dir", dir]);
    let plain = f.wait_terminal(&plain);
    let sharded = f.submit(&["pytest", "--dir", dir, "--shards", "2"]);
    let parent = f.wait_terminal(&sharded);

    assert_eq!(parent["state"], plain["state"], "{parent:#}");
    assert_eq!(
        parent["tests"], plain["tests"],
        "the union equals an unsharded run: {parent:#}"
    );
    let children: Vec<String> = parent["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(children.len(), 3, "collect + 2 shards: {parent:#}");
    let shards: Vec<Value> = children
        .iter()
        .map(|c| f.show(c))
        .filter(|j| j["column"] != "collect")
        .collect();
    assert_eq!(shards.len(), 2, "{shards:#?}");
    let a = tests_of(&f, shards[0]["id"].as_str().unwrap());
    let b = tests_of(&f, shards[1]["id"].as_str().unwrap());
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both shards ran tests: {a:?} {b:?}"
    );
    assert!(a.is_disjoint(&b), "a test ran in two shards: {a:?} {b:?}");
    let all = tests_of(&f, plain["id"].as_str().unwrap());
    let union: BTreeSet<String> = a.union(&b).cloned().collect();
    assert_eq!(union, all, "every test ran in exactly one shard");
    let agents: BTreeSet<&str> = shards
        .iter()
        .map(|s| s["agent"].as_str().unwrap())
        .collect();
    println!(
        "unsharded {:.1}s, 2 shards on {} agent(s) {:.1}s (incl. the collection)",
        wall_s(&plain),
        agents.len(),
        wall_s(&parent)
    );
}

#[test]
fn sharding_is_refused_with_fanout() {
    let mut f = Fleet::new();
    f.add_agent("s1", &[], &[]);
    let suite = f.sleepy_suite("x", 1, 0.0);
    let out = f.ctl(&[
        "submit",
        "pytest",
        "--dir",
        suite.to_str().unwrap(),
        "--shards",
        "2",
        "--fanout",
        "each-agent",
    ]);
    assert_eq!(out.code, 2, "{out}");
}
