//! `msctl report`: a real fleet runs a suite with passing, failing, skipped
//! and erroring tests; the JUnit XML (read back by Python's ElementTree)
//! and `--json` must agree with the job's own counts.
//!
//! Run `cargo build --bins` first.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const SUITE: &str = r#"import pytest

def test_pass_one():
    assert True

def test_pass_two():
    assert 1 + 1 == 2

def test_fail():
    assert 1 == 2, "one is not <two> & never was"

@pytest.mark.skip(reason="not here")
def test_skip():
    pass

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_error(broken):
    pass
"#;

#[test]
fn report_junit_and_json_agree_with_the_job() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let suite = f.write_suite("mixed", &[("tests/test_mixed.py", SUITE)]);
    let id = f.submit(&["pytest", "--dir", &suite.display().to_string()]);
    let job = f.wait_terminal(&id);
    assert_eq!(job["state"], "failed", "{job}");

    // JUnit, checked by a real XML parser.
    let xml = f.path().join("report.xml");
    let out = f.ctl(&["report", &id, "--junit", &xml.display().to_string()]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stderr.contains(&format!("wrote {}", xml.display())),
        "{out}"
    );
    let script = r#"
import json, sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "testsuites", root.tag
suites = []
for s in root.findall("testsuite"):
    cases = {}
    for c in s.findall("testcase"):
        kind = "passed"
        for k in ("failure", "error", "skipped"):
            e = c.find(k)
            if e is not None:
                kind = k
                text = e.text or ""
        cases[c.get("classname") + "::" + c.get("name")] = {"kind": kind, "text": text if kind in ("failure", "error") else ""}
    suites.append({"name": s.get("name"), "tests": int(s.get("tests")), "failures": int(s.get("failures")),
                   "errors": int(s.get("errors")), "skipped": int(s.get("skipped")), "cases": cases})
print(json.dumps(suites))
"#;
    let mut py = Command::new(python());
    py.args(["-c", script]).arg(&xml);
    let parsed = run_cmd(py, Duration::from_secs(60));
    assert_eq!(
        parsed.code,
        0,
        "{parsed}\n{}",
        std::fs::read_to_string(&xml).unwrap_or_default()
    );
    let suites = parsed.json();
    let suites = suites.as_array().expect("suites");
    assert_eq!(suites.len(), 1, "{suites:?}");
    let s0 = &suites[0];
    let profile = f.agent_json("a1").expect("agent a1")["profile"]
        .as_str()
        .map(str::to_string)
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "a1".into());
    assert_eq!(s0["name"], profile.as_str(), "{s0}");
    assert_eq!(
        s0["tests"].as_u64(),
        Some(count(&job, "total")),
        "{s0} vs {job}"
    );
    assert_eq!(
        s0["failures"].as_u64(),
        Some(count(&job, "failed")),
        "{s0} vs {job}"
    );
    assert_eq!(
        s0["errors"].as_u64(),
        Some(count(&job, "errors")),
        "{s0} vs {job}"
    );
    assert_eq!(
        s0["skipped"].as_u64(),
        Some(count(&job, "skipped")),
        "{s0} vs {job}"
    );
    assert_eq!(
        (
            count(&job, "failed"),
            count(&job, "errors"),
            count(&job, "skipped")
        ),
        (1, 1, 1),
        "{job}"
    );
    let cases = &s0["cases"];
    assert_eq!(cases.as_object().map(|c| c.len()), Some(5), "{cases}");
    let fail = &cases["tests.test_mixed::test_fail"];
    assert_eq!(fail["kind"], "failure", "{cases}");
    assert!(
        fail["text"]
            .as_str()
            .unwrap_or("")
            .contains("one is not <two> & never was"),
        "{fail}"
    );
    assert_eq!(
        cases["tests.test_mixed::test_error"]["kind"], "error",
        "{cases}"
    );
    assert_eq!(
        cases["tests.test_mixed::test_skip"]["kind"], "skipped",
        "{cases}"
    );
    assert_eq!(
        cases["tests.test_mixed::test_pass_one"]["kind"], "passed",
        "{cases}"
    );

    // --json: the matrix rows are exactly the tests that did not pass.
    let out = f.ctl(&["report", &id, "--json"]);
    assert_eq!(out.code, 0, "{out}");
    let v = out.json();
    assert_eq!(v["job"], id.as_str());
    assert_eq!(v["profiles"], serde_json::json!([profile]));
    let rows: Vec<(String, String)> = v["matrix"]
        .as_array()
        .expect("matrix")
        .iter()
        .map(|r| {
            (
                r["test"].as_str().unwrap_or("").to_string(),
                r["cells"][&profile].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "tests/test_mixed.py::test_error".to_string(),
                "error".to_string()
            ),
            (
                "tests/test_mixed.py::test_fail".to_string(),
                "fail".to_string()
            ),
        ],
        "{v}"
    );
    assert_eq!(v["summary"][&profile]["pass"], 2, "{v}");
    assert_eq!(v["diff"]["previous_job"], Value::Null, "{v}");
    let all = f.ctl(&["report", &id, "--json", "--all"]).json();
    assert_eq!(all["matrix"].as_array().map(Vec::len), Some(5), "{all}");

    // The table and markdown forms.
    let out = f.ctl(&["report", &id]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains("tests/test_mixed.py::test_fail"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("no previous run to compare (not a scheduled job)"),
        "{out}"
    );
    let out = f.ctl(&["report", &id, "--markdown"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains(&format!("| test | {profile} |")),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("| `tests/test_mixed.py::test_fail` | **fail** |"),
        "{out}"
    );

    // Unknown job: bad input.
    let out = f.ctl(&["report", "99999"]);
    assert_eq!(out.code, 2, "{out}");
}

/// Two runs of one schedule: the report of the second names the test that
/// started failing, the one that got fixed, and the one still failing.
#[test]
fn the_report_diffs_a_run_against_the_previous_run_of_its_schedule() {
    let mut f = Fleet::new();
    f.add_agent("r1", &[], &[]);
    let suite = f.write_suite(
        "diffsuite",
        &[(
            "test_d.py",
            "import os\nHERE = os.path.dirname(__file__)\n\n\
             def test_breaks():\n    assert not os.path.exists(os.path.join(HERE, 'broken'))\n\n\
             def test_gets_fixed():\n    assert os.path.exists(os.path.join(HERE, 'broken'))\n\n\
             def test_always_fails():\n    assert False\n",
        )],
    );
    let job_file = f.path().join("diff.toml");
    std::fs::write(
        &job_file,
        format!(
            "kind = \"pytest\"\n[source]\ndir = {:?}\n",
            suite.display().to_string()
        ),
    )
    .unwrap();
    let out = f.ctl(&[
        "schedule",
        "add",
        "nightly-diff",
        "--cron",
        "@yearly",
        "-f",
        job_file.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{out}");
    let run = |f: &Fleet| {
        let out = f.ctl(&["schedule", "run-now", "nightly-diff"]);
        assert_eq!(out.code, 0, "{out}");
        let id = out.stdout.trim().to_string();
        f.wait_terminal(&id);
        id
    };
    let first = run(&f);
    std::fs::write(suite.join("broken"), "").unwrap();
    let second = run(&f);
    let out = f.ctl(&["report", &second, "--json"]);
    assert_eq!(out.code, 0, "{out}");
    let r = out.json();
    let d = &r["diff"];
    assert_eq!(d["previous_job"], first.as_str(), "{r:#}");
    let names = |k: &str| -> Vec<String> {
        d[k].as_array()
            .unwrap_or_else(|| panic!("no {k} in {d:#}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names("new_failures"),
        vec!["test_d.py::test_breaks".to_string()],
        "{d:#}"
    );
    assert_eq!(
        names("fixed"),
        vec!["test_d.py::test_gets_fixed".to_string()],
        "{d:#}"
    );
    assert_eq!(
        names("still_failing"),
        vec!["test_d.py::test_always_fails".to_string()],
        "{d:#}"
    );
    let md = f.ctl(&["report", &second, "--markdown"]);
    assert!(md.stdout.contains("test_breaks"), "{md}");
}
