//! `msctl report --junit` names and classifies every testcase as pytest's own
//! `--junitxml` does, so a CI tool's per-test history is one whether a suite
//! ran under plain pytest or through the fleet. A real suite with classes
//! (nested too), parametrized tests and a nested directory runs both ways;
//! Python's ElementTree reads both files and the (classname, name, outcome)
//! sets must be equal.
//!
//! Run `cargo build --bins` first.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TOP: &str = r#"import pytest

def test_plain():
    pass

def test_fails():
    assert 1 == 2

@pytest.mark.parametrize("x", [1, "a.b", "x/y", "c::d"])
def test_param(x):
    assert x != "a.b"

@pytest.mark.skip(reason="not here")
def test_skipped():
    pass

@pytest.mark.xfail(reason="known")
def test_xfails():
    assert False

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_setup_error(broken):
    pass

class TestOuter:
    def test_in_class(self):
        pass

    @pytest.mark.parametrize("n", [0, 1])
    def test_param_in_class(self, n):
        assert n == 0

    class TestInner:
        def test_nested(self):
            pass
"#;

const DEEP: &str = r#"import unittest

class AdjacentTests(unittest.TestCase):
    def test_call_once(self):
        self.assertEqual(1, 1)

    def test_breaks(self):
        self.assertEqual(1, 2)

def test_deep_function():
    pass
"#;

/// (classname, name, outcome) of every testcase in a JUnit file, outcome
/// one of passed / failure / error / skipped.
fn cases(xml: &Path) -> BTreeSet<(String, String, String)> {
    let script = r#"
import json, sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
out = []
for s in suites:
    for c in s.findall("testcase"):
        kind = "passed"
        for k in ("failure", "error", "skipped"):
            if c.find(k) is not None:
                kind = k
                break
        out.append([c.get("classname"), c.get("name"), kind])
print(json.dumps(out))
"#;
    let mut py = Command::new(python());
    py.args(["-c", script]).arg(xml);
    let parsed = run_cmd(py, Duration::from_secs(60));
    assert_eq!(
        parsed.code,
        0,
        "{parsed}\n{}",
        std::fs::read_to_string(xml).unwrap_or_default()
    );
    let v = parsed.json();
    let rows = v.as_array().expect("cases");
    let set: BTreeSet<(String, String, String)> = rows
        .iter()
        .map(|r| {
            let s = |i: usize| r[i].as_str().unwrap_or("").to_string();
            (s(0), s(1), s(2))
        })
        .collect();
    assert_eq!(set.len(), rows.len(), "duplicate testcases in {v}");
    set
}

#[test]
fn junit_testcases_are_pytests_own() {
    let mut f = Fleet::new();
    f.add_agent("j1", &[], &[]);
    let suite = f.write_suite(
        "junitsuite",
        &[
            ("pytest.ini", "[pytest]\n"),
            ("tests/test_top.py", TOP),
            ("tests/sub/deeper/test_deep.py", DEEP),
        ],
    );
    let id = f.submit(&["pytest", "--dir", &suite.display().to_string()]);
    let job: Value = f.wait_terminal(&id);
    assert_eq!(job["state"], "failed", "{job}");
    let ours = f.path().join("fleet.xml");
    let out = f.ctl(&["report", &id, "--junit", &ours.display().to_string()]);
    assert_eq!(out.code, 0, "{out}");

    // The same suite under plain pytest, in a copy so that no cache or
    // report of one run is seen by the other.
    let plain = f.path().join("plain");
    copy_dir(&suite, &plain);
    let theirs = f.path().join("pytest.xml");
    let mut py = Command::new(python());
    py.current_dir(&plain)
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-q"])
        .arg(format!("--junitxml={}", theirs.display()));
    let ran = run_cmd(py, Duration::from_secs(120));
    assert_eq!(ran.code, 1, "pytest should report failures:\n{ran}");

    let ours = cases(&ours);
    let theirs = cases(&theirs);
    // The suite has what the naming rule is about.
    for (class, name) in [
        ("tests.test_top.TestOuter.TestInner", "test_nested"),
        ("tests.test_top.TestOuter", "test_param_in_class[1]"),
        ("tests.sub.deeper.test_deep.AdjacentTests", "test_call_once"),
        ("tests.test_top", "test_param[x/y]"),
    ] {
        assert!(
            theirs.iter().any(|(c, n, _)| c == class && n == name),
            "pytest has no {class} {name}: {theirs:#?}"
        );
    }
    assert_eq!(
        ours,
        theirs,
        "fleet JUnit differs from pytest's:\nonly fleet: {:#?}\nonly pytest: {:#?}",
        ours.difference(&theirs).collect::<Vec<_>>(),
        theirs.difference(&ours).collect::<Vec<_>>()
    );
}
