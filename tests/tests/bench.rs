//! End-to-end tests of the native benchmark core: real msched, msagent and
//! msctl processes, and small real case commands (a Python script that sleeps
//! for a controlled time and writes MSFLEET_METRICS).

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The case command: sleeps `user_input.sleep_s` seconds (times the factor in
/// `speed.txt` next to it, if any; or a random 0.05-0.30 s when `noisy`) and
/// reports the measured time as `total_time_s` with two operators (with `fixed`,
/// the time it meant to sleep with a deterministic run-to-run noise instead).
const BENCH_PY: &str = r#"
import json, os, random, sys, time
case = json.load(open(sys.argv[1]))
p = case.get("user_input") or case
factor = 1.0
if os.path.exists("speed.txt"):
    factor = float(open("speed.txt").read().strip() or "1")
want = p["sleep_s"] * factor
if p.get("noisy"):
    want = random.uniform(0.05, 0.30)
t = time.perf_counter()
time.sleep(want)
took = time.perf_counter() - t
if p.get("fixed"):
    # Deterministic noise: a run-level shift from the job id (+-1.2%), a small one per repetition.
    job = int(os.environ["MSFLEET_JOB_ID"])
    rep = int(os.environ["MSFLEET_REPETITION"])
    took = want * (1 + 0.004 * ((job * 37) % 7 - 3)) * (1 + 0.001 * (rep % 3 - 1))
with open(os.environ["MSFLEET_METRICS"], "w") as f:
    json.dump({"total_time_s": took, "operators": [
        {"name": "aten.mm", "total_time_s": took * 0.7, "num_calls": 4},
        {"name": "aten.add", "total_time_s": took * 0.3, "num_calls": 8},
    ]}, f)
print("Total time for analytic: %.3f ms" % (took * 1000))
"#;

fn short_case(name: &str, sleep_s: f64, baseline: f64) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "name": name,
        "description": format!("sleeps {sleep_s} s"),
        "user_input": {"sleep_s": sleep_s},
        "baseline_time_s": baseline,
        "tolerance": 0.2,
        "owner": "perf-team",
    }))
    .unwrap()
}

/// Writes a benchmark suite: bench.py plus `cases` (file name, JSON).
fn bench_suite(f: &Fleet, name: &str, cases: &[(&str, String)]) -> PathBuf {
    let mut files: Vec<(String, String)> = vec![("bench.py".into(), BENCH_PY.into())];
    for (file, json) in cases {
        files.push((format!("cases/{file}"), json.clone()));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    f.write_suite(name, &refs)
}

fn command() -> String {
    format!("{} bench.py {{case}}", python().display())
}

/// Submits a benchmark job over `suite/cases` (1 warmup, 3 repetitions) and
/// waits for it to finish.
fn run_bench(f: &Fleet, suite: &Path, extra: &[&str]) -> (String, Value) {
    run_bench_reps(f, suite, "3", extra)
}

fn run_bench_reps(f: &Fleet, suite: &Path, reps: &str, extra: &[&str]) -> (String, Value) {
    let cmd = command();
    let mut args = vec![
        "bench",
        "--dir",
        suite.to_str().unwrap(),
        "--cases",
        "cases",
        "--command",
        cmd.as_str(),
        "--warmup",
        "1",
        "--repetitions",
        reps,
    ];
    args.extend_from_slice(extra);
    let id = f.submit(&args);
    let job = f.wait_terminal(&id);
    (id, job)
}

fn case<'a>(job: &'a Value, name: &str) -> &'a Value {
    job["cases"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no case {name} in {job:#}"))
}

#[test]
fn stable_passes_slower_is_a_confirmed_regression_faster_an_improvement() {
    let mut f = Fleet::new();
    f.add_agent("b1", &[], ALLOW_BENCH);
    let suite = bench_suite(
        &f,
        "perf",
        &[
            ("stable.json", short_case("stable", 0.10, 0.10)),
            ("slower.json", short_case("slower", 0.13, 0.10)),
            ("faster.json", short_case("faster", 0.06, 0.10)),
        ],
    );
    let (id, job) = run_bench(&f, &suite, &[]);
    assert_eq!(
        job["state"], "failed",
        "a regression fails the job: {job:#}"
    );
    let stable = case(&job, "stable");
    assert_eq!(stable["verdict"], "pass", "{stable:#}");
    assert_eq!(stable["metric"], "total_time_s");
    let slower = case(&job, "slower");
    assert_eq!(slower["verdict"], "regression", "{slower:#}");
    assert_eq!(
        slower["rerun"], true,
        "a regression is confirmed by a re-run: {slower:#}"
    );
    assert_eq!(slower["confirmed"], true);
    let delta = slower["explanation"]["delta_pct"].as_f64().unwrap();
    assert!(delta > 20.0 && delta < 45.0, "delta {delta}: {slower:#}");
    let faster = case(&job, "faster");
    assert_eq!(faster["verdict"], "improvement", "{faster:#}");
    // measured metrics come with every case
    for c in [stable, slower, faster] {
        for m in [
            "wall_time_s",
            "cpu_time_s",
            "peak_rss_bytes",
            "total_time_s",
        ] {
            assert!(
                c["metrics"][m]["median"].as_f64().is_some_and(|v| v > 0.0),
                "{m} missing in {c:#}"
            );
        }
    }
    // watch: one line per case with the verdict, exit 1 for the regression
    let out = f.ctl(&["watch", &id]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stdout.to_lowercase().contains("regression"), "{out}");
    assert!(out.stdout.contains("slower"), "{out}");
}

#[test]
fn random_sleeps_are_noisy_not_a_regression() {
    let mut f = Fleet::new();
    f.add_agent("b1", &[], ALLOW_BENCH);
    let mut noisy: Value = serde_json::from_str(&short_case("noisy", 0.1, 0.1)).unwrap();
    noisy["user_input"]["noisy"] = true.into();
    let suite = bench_suite(&f, "noise", &[("noisy.json", noisy.to_string())]);
    let (_, job) = run_bench_reps(&f, &suite, "6", &[]);
    let c = case(&job, "noisy");
    assert_eq!(c["verdict"], "noisy", "{c:#}");
}

#[test]
fn no_baseline_then_accept_then_judged_against_it_and_exported() {
    let mut f = Fleet::new();
    f.add_agent("b1", &[], ALLOW_BENCH);
    let suite = bench_suite(
        &f,
        "fresh",
        &[("fresh.json", short_case("fresh", 0.10, 0.0))],
    );
    let (first, job) = run_bench(&f, &suite, &[]);
    let c = case(&job, "fresh");
    assert_eq!(c["verdict"], "no_baseline", "{c:#}");
    assert_eq!(job["state"], "passed", "{job:#}");
    let measured = c["explanation"]["value"].as_f64().unwrap();

    // A client-supplied name is refused: the audit records the caller's token.
    let out = f.ctl(&["baseline", "accept", &first, "--by", "alice"]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("drop --by 'alice'"), "{out}");
    let out = f.ctl(&["baseline", "list", "--json"]);
    assert_eq!(
        out.json(),
        serde_json::json!([]),
        "nothing was accepted: {out}"
    );
    let out = f.ctl(&["baseline", "accept", &first]);
    assert_eq!(out.code, 0, "{out}");
    let out = f.ctl(&["baseline", "show", "fresh", "--json"]);
    assert_eq!(out.code, 0, "{out}");
    let text = out.stdout.clone();
    assert!(
        text.contains("\"admin\"") && text.contains(&first),
        "audit trail: {text}"
    );

    // The next run is judged against the accepted value.
    let (_, job) = run_bench(&f, &suite, &[]);
    let c = case(&job, "fresh");
    assert_eq!(c["verdict"], "pass", "{c:#}");
    let base = c["explanation"]["baseline"].as_f64().unwrap();
    assert!(
        (base - measured).abs() < 1e-9,
        "judged against {base}, accepted {measured}"
    );

    // 30% slower is now a regression.
    std::fs::write(suite.join("speed.txt"), "1.3").unwrap();
    let (_, job) = run_bench(&f, &suite, &[]);
    assert_eq!(case(&job, "fresh")["verdict"], "regression", "{job:#}");

    // export writes the accepted baseline back into the case file, which loads again.
    let cases = suite.join("cases");
    let out = f.ctl(&["baseline", "export", cases.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out}");
    let text = std::fs::read_to_string(cases.join("fresh.json")).unwrap();
    let v: Value = serde_json::from_str(&text).expect("exported case is JSON");
    let exported = v["baseline_time_s"].as_f64().unwrap();
    assert!((exported - measured).abs() < 1e-9, "{text}");
    assert_eq!(
        v["owner"], "perf-team",
        "unknown fields survive export: {text}"
    );
    assert_eq!(v["operators"].as_array().map(Vec::len), Some(2), "{text}");
}

#[test]
fn a_malformed_case_is_that_cases_error_the_others_run_and_the_job_is_an_error() {
    let mut f = Fleet::new();
    f.add_agent("b1", &[], ALLOW_BENCH);
    let suite = bench_suite(
        &f,
        "mixed",
        &[
            ("good.json", short_case("good", 0.05, 0.05)),
            ("broken.json", "{\"name\": 3}".to_string()),
        ],
    );
    let (_, job) = run_bench(&f, &suite, &[]);
    assert_eq!(case(&job, "good")["verdict"], "pass", "{job:#}");
    let broken = case(&job, "broken");
    assert_eq!(broken["verdict"], "error", "{broken:#}");
    assert!(
        broken["explanation"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("broken.json"),
        "the error names the file: {broken:#}"
    );
    // An unreadable case file is a setup failure, not a benchmark's verdict.
    assert_eq!(
        job["state"], "error",
        "a case that cannot run is an error: {job:#}"
    );
}

#[test]
fn baselines_of_two_hardware_profiles_stay_apart() {
    let mut f = Fleet::new();
    f.add_agent("alpha", &["profile=alpha"], ALLOW_BENCH);
    f.add_agent("beta", &["profile=beta"], ALLOW_BENCH);
    // Long enough that a loaded 2-core machine's jitter does not make the
    // run noisy: what this test is about is which baseline judges it.
    let suite = bench_suite(&f, "prof", &[("p.json", short_case("p", 0.3, 0.0))]);
    let (on_alpha, job) = run_bench(&f, &suite, &["--require", "profile==\"alpha\""]);
    assert_eq!(case(&job, "p")["verdict"], "no_baseline");
    assert_eq!(job["agent"], "alpha");
    let out = f.ctl(&["baseline", "accept", &on_alpha]);
    assert_eq!(out.code, 0, "{out}");
    // alpha is now judged, beta still has nothing to be judged against
    let (_, job) = run_bench(&f, &suite, &["--require", "profile==\"alpha\""]);
    let judged = case(&job, "p")["verdict"].clone();
    assert!(
        ["pass", "improvement", "noisy"].contains(&judged.as_str().unwrap_or("")),
        "judged against alpha's baseline (not no_baseline, not a regression): {job:#}"
    );
    let (_, job) = run_bench(&f, &suite, &["--require", "profile==\"beta\""]);
    assert_eq!(job["agent"], "beta");
    assert_eq!(case(&job, "p")["verdict"], "no_baseline", "{job:#}");
    let out = f.ctl(&["baseline", "list", "--json"]);
    assert_eq!(out.code, 0, "{out}");
    let text = out.stdout;
    assert!(
        text.contains("alpha") && !text.contains("\"beta\""),
        "{text}"
    );
}

#[test]
fn trusted_runs_build_history_automatically_but_regressions_never_join() {
    let mut f = Fleet::new();
    f.add_agent("b1", &[], ALLOW_BENCH);
    let suite = bench_suite(&f, "hist", &[("h.json", short_case("h", 0.05, 0.0))]);
    for _ in 0..2 {
        let (_, job) = run_bench(&f, &suite, &["--trusted"]);
        assert_ne!(case(&job, "h")["verdict"], "error", "{job:#}");
    }
    let out = f.ctl(&["baseline", "list", "--json"]);
    let list = out.json();
    let runs = list[0]["history"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(runs, 2, "two trusted runs joined the history: {list:#}");
    // an untrusted run does not join
    let (_, _) = run_bench(&f, &suite, &[]);
    let list = f.ctl(&["baseline", "list", "--json"]).json();
    assert_eq!(
        list[0]["history"].as_array().map(Vec::len),
        Some(2),
        "{list:#}"
    );
}

/// A case without anchors whose reported time has deterministic noise (see `BENCH_PY`), so
/// that a loaded machine does not move its history.
fn fixed_case(name: &str, sleep_s: f64) -> String {
    serde_json::json!({"name": name, "user_input": {"sleep_s": sleep_s, "fixed": true}}).to_string()
}

#[test]
fn trusted_history_gives_pooled_power_change_points_and_a_confirmed_regression() {
    let mut f = Fleet::new();
    f.add_agent("b1", &[], ALLOW_BENCH);
    let suite = bench_suite(
        &f,
        "power",
        &[
            ("a.json", fixed_case("a", 0.03)),
            ("b.json", fixed_case("b", 0.04)),
        ],
    );
    // Eight trusted nights, then eight 4% slower: below the 5% minimum effect, so every one
    // passes and joins the history, and no single night is a regression.
    let mut first_slow = String::new();
    for night in 0..16 {
        let speed = if night < 8 { "1.0" } else { "1.04" };
        std::fs::write(suite.join("speed.txt"), speed).unwrap();
        let (id, job) = run_bench(&f, &suite, &["--trusted"]);
        for name in ["a", "b"] {
            let v = &case(&job, name)["verdict"];
            assert!(v == "pass" || v == "no_baseline", "night {night}: {job:#}");
        }
        if night == 8 {
            first_slow = id;
        }
    }
    let show = f.ctl(&["baseline", "show", "a", "--json"]);
    assert_eq!(show.code, 0, "{show}");
    let b = &show.json()[0];
    let noise = &b["noise"];
    assert_eq!(noise["runs"], 16, "{b:#}");
    assert_eq!(noise["cases_pooled"], 2, "pooled with case b: {noise:#}");
    assert_eq!(noise["repetitions"], 3, "{noise:#}");
    assert!(
        noise["mde_pct"].as_f64().is_some_and(|m| m >= 5.0),
        "{noise:#}"
    );
    let cps = b["change_points"].as_array().cloned().unwrap_or_default();
    assert_eq!(cps.len(), 1, "one level shift: {b:#}");
    let at = cps[0]["index"].as_u64().unwrap();
    assert!(
        (7..=9).contains(&at),
        "the shift started near night 9: {b:#}"
    );
    let shift = cps[0]["shift_pct"].as_f64().unwrap();
    assert!((2.0..6.5).contains(&shift), "about +4%: {b:#}");
    if at == 8 {
        assert_eq!(cps[0]["job_id"], first_slow.as_str());
    }
    let text = f.ctl(&["baseline", "show", "a"]);
    for want in [
        "noise:",
        "detects changes of",
        "to detect 5%:",
        "change points:",
        "from job",
    ] {
        assert!(text.stdout.contains(want), "{want:?} missing: {text}");
    }
    let list = f.ctl(&["baseline", "list"]);
    assert!(
        list.stdout.contains("MDE") && list.stdout.contains("SHIFT"),
        "{list}"
    );

    // 50% slower: a candidate, confirmed by the runs together; the verdict says its power.
    std::fs::write(suite.join("speed.txt"), "1.5").unwrap();
    let (id, job) = run_bench(&f, &suite, &[]);
    let a = case(&job, "a");
    assert_eq!(a["verdict"], "regression", "{a:#}");
    assert_eq!(a["rerun"], true);
    assert_eq!(a["confirmed"], true);
    let ex = &a["explanation"];
    assert_eq!(ex["runs"], 3, "first run and two re-runs: {ex:#}");
    assert_eq!(ex["rule"], "history");
    assert!(ex["mde_pct"].as_f64().is_some_and(|m| m >= 5.0), "{ex:#}");
    let msg = ex["message"].as_str().unwrap();
    assert!(msg.contains("this case can detect changes of"), "{msg}");
    assert!(msg.contains("pooled with the profile's cases"), "{msg}");
    // The report names the change point and the run it started at.
    let report = f.ctl(&["report", &id]);
    assert!(
        report
            .stdout
            .contains("change points in the trusted history")
            && report.stdout.contains("a total_time_s"),
        "{report}"
    );
    let rj = f.ctl(&["report", &id, "--json"]).json();
    assert!(
        rj["change_points"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["case"] == "a")),
        "{rj:#}"
    );
    // The regression did not join the history.
    let b = &f.ctl(&["baseline", "show", "a", "--json"]).json()[0];
    assert_eq!(b["history"].as_array().map(Vec::len), Some(16));
}

#[test]
fn bad_benchmark_specs_are_refused_with_exit_2() {
    let mut f = Fleet::new();
    f.add_agent("b1", &[], ALLOW_BENCH);
    let suite = bench_suite(&f, "bad", &[("a.json", short_case("a", 0.05, 0.05))]);
    let dir = suite.to_str().unwrap();
    for args in [
        vec!["submit", "bench", "--dir", dir, "--cases", "cases"],
        vec![
            "submit",
            "bench",
            "--dir",
            dir,
            "--cases",
            "cases",
            "--command",
            "x {case}",
            "--repetitions",
            "0",
        ],
        vec![
            "submit",
            "bench",
            "--dir",
            dir,
            "--cases",
            "cases",
            "--command",
            "x {case}",
            "--extract",
            "t=([",
        ],
    ] {
        let out = f.ctl(&args);
        assert_eq!(out.code, 2, "{args:?}:\n{out}");
        assert!(!out.stderr.trim().is_empty(), "{out}");
    }
    assert!(f.list().is_empty(), "nothing was submitted");
}

/// The nightly use: one benchmark set fanned out to every hardware profile
/// (two agents, two profiles). The parent's `msctl report` shows every case on
/// every profile (value, delta, verdict per cell) in text, JSON and JUnit, and
/// its headline counts the cases.
#[test]
fn a_benchmark_fan_out_parent_reports_every_case_on_every_profile() {
    let mut f = Fleet::new();
    f.add_agent("a1", &["profile=alpha"], ALLOW_BENCH);
    f.add_agent("b1", &["profile=beta"], ALLOW_BENCH);
    let suite = bench_suite(
        &f,
        "nightly",
        &[
            ("decode.json", short_case("decode", 0.05, 0.05)),
            ("prefill.json", short_case("prefill", 0.05, 0.05)),
        ],
    );
    let (id, parent) = run_bench_reps(&f, &suite, "2", &["--fanout", "each-profile"]);
    assert_eq!(
        parent["children"].as_array().map(Vec::len),
        Some(2),
        "{parent:#}"
    );
    let cases = ["decode", "prefill"];
    let profiles = ["alpha", "beta"];

    let v = f.ctl(&["report", &id, "--json"]).json();
    assert_eq!(v["bench"]["profiles"], serde_json::json!(profiles), "{v:#}");
    let rows = v["bench"]["cases"].as_array().expect("bench cases");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["case"].as_str()).collect();
    assert_eq!(names, cases, "{v:#}");
    // The verdict of every cell, to compare with the text and the JUnit.
    let mut verdicts = Vec::new();
    for r in rows {
        for p in profiles {
            let cell = &r["cells"][p];
            let verdict = cell["verdict"].as_str().unwrap_or("");
            assert!(
                !verdict.is_empty() && cell["value"].as_str().is_some_and(|s| !s.is_empty()),
                "{p} has no verdict for {}: {v:#}",
                r["case"]
            );
            verdicts.push(verdict.to_string());
        }
    }
    assert_eq!(
        v["summary_line"].as_str().unwrap_or(""),
        format!("4 cases: {}", verdict_counts(&verdicts)),
        "{v:#}"
    );

    let out = f.ctl(&["report", &id]);
    let text = &out.stdout;
    assert!(
        text.contains("benchmark verdicts, value (delta) verdict per profile:\nCASE "),
        "{out}"
    );
    assert!(!text.contains("no test results"), "{out}");
    for (i, case) in cases.iter().enumerate() {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{case} ")))
            .unwrap_or_else(|| panic!("no row for {case}:\n{out}"));
        // One cell per profile, in the header's order: value (delta) VERDICT.
        let cells: Vec<&str> = line.split("  ").filter(|c| !c.trim().is_empty()).collect();
        assert_eq!(cells.len(), 3, "{line}\n{out}");
        for (p, cell) in cells[1..].iter().enumerate() {
            let verdict = verdicts[i * 2 + p].to_uppercase();
            assert!(
                cell.trim_end().ends_with(&verdict),
                "{cell} for {verdict}:\n{out}"
            );
        }
        assert!(!line.contains("not run"), "{line}");
    }

    let xml = f.path().join("bench.xml");
    let out = f.ctl(&["report", &id, "--junit", xml.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out}");
    let xml = std::fs::read_to_string(&xml).unwrap();
    for p in profiles {
        let suite = xml
            .split("<testsuite ")
            .find(|s| s.starts_with(&format!("name=\"benchmark {p}\"")))
            .unwrap_or_else(|| panic!("no benchmark suite for {p}: {xml}"));
        assert!(suite.contains(" tests=\"2\""), "{xml}");
        for case in cases {
            assert!(
                suite.contains(&format!(
                    "<testcase classname=\"benchmark\" name=\"{case}\">"
                )),
                "{case} on {p}: {xml}"
            );
        }
        assert!(!suite.contains("not run"), "{xml}");
    }
}

/// "2 pass, 1 regression": verdicts counted as the report's headline counts them.
fn verdict_counts(verdicts: &[String]) -> String {
    let mut by: std::collections::BTreeMap<&str, usize> = Default::default();
    for v in verdicts {
        *by.entry(v.as_str()).or_default() += 1;
    }
    by.iter()
        .map(|(v, n)| format!("{n} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
