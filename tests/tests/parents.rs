//! End-to-end: parents always finish. A fan-out counts only agents that take
//! work, so a drained agent's column is not run and the parent ends as soon as
//! the children that can run are done.

mod common;

use common::*;

const SUITE: &str = "def test_one():\n    pass\n\ndef test_two():\n    pass\n";

#[test]
fn fan_out_each_agent_with_one_matching_agent_drained_finishes() {
    let mut f = Fleet::new();
    f.add_agent("w1", &["pool=night"], &[]);
    f.add_agent("w2", &["pool=night"], &[]);
    f.wait_agent_connected("w1");
    f.wait_agent_connected("w2");
    assert_eq!(f.ctl(&["agent", "drain", "w2"]).code, 0);
    let suite = f.write_suite("fan", &[("test_fan.py", SUITE)]);
    let id = f.submit(&[
        "pytest",
        "--dir",
        suite.to_str().unwrap(),
        "--fanout",
        "each-agent",
        "--require",
        "label.pool==\"night\"",
    ]);
    let parent = f.wait_terminal(&id);
    assert_eq!(parent["state"], "passed", "{parent:#}");
    assert_eq!(parent["not_run"], serde_json::json!(["w2"]), "{parent:#}");
    assert_eq!(
        parent["children"].as_array().map(Vec::len),
        Some(1),
        "{parent:#}"
    );
    assert_eq!(parent["tests"]["passed"], 2, "{parent:#}");
    assert_eq!(
        parent["reason"], "children: 1 passed; not run on: w2",
        "{parent:#}"
    );
    let child = f.show(parent["children"][0].as_str().unwrap());
    assert_eq!(child["agent"], "w1", "{child:#}");
    // Nothing is left waiting for the drained agent.
    assert_eq!(f.list().len(), 2, "parent + one child: {:#?}", f.list());
}
