//! Flaky-test detection (`JobSpec.retry_failed`): what one pytest run's plugin
//! reported, which of the job's pytest options a re-run of failed tests must
//! keep, and the attempt's outcome once the re-runs are done. Pure logic; the
//! runner does the running.

use msfleet_proto::Outcome;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The plugin's reports of one pytest run, as far as the outcome and the
/// re-runs need them.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Results counted as errors (collection, setup or teardown).
    pub errors: u64,
    /// Results counted as failed.
    pub failed: u64,
    /// Node ids that failed in the call phase, in the order reported, once each.
    pub failed_calls: Vec<String>,
    failed_set: HashSet<String>,
    /// Distinct node ids with at least one counted result.
    pub reported: HashSet<String>,
    /// Collect-only runs: items reported with outcome `collected`.
    pub collected_items: u64,
    /// `session.testscollected`, once the session message came.
    pub collected: Option<u64>,
    /// Re-runs only: node ids whose call phase passed -> (duration, markers).
    pub passed_calls: HashMap<String, (f64, Vec<String>)>,
    /// Re-runs only: node ids with a failed or error result in any phase.
    pub bad: HashSet<String>,
    /// The test that started and has not finished (the plugin's `start` and
    /// `finish`), with whether its call phase was reported: the test that was
    /// running if pytest dies.
    pub running: Option<(String, bool)>,
    /// Node ids with a `rerun` report (pytest-rerunfailures) and no final result yet.
    reran: HashSet<String>,
    /// Tests that pytest-rerunfailures re-ran and that then passed: flaky.
    pub rerun_flaky: u64,
}

impl Tally {
    /// Records one test result. `rerun`: also keep what [`Tally::passed_on_retry`] needs.
    /// True when this is the passing call of a test that pytest-rerunfailures
    /// re-ran after a failure (`rerun` reports first): the test is flaky.
    pub fn add_test(
        &mut self,
        nodeid: &str,
        when: &str,
        outcome: &str,
        duration_s: f64,
        markers: &[String],
        rerun: bool,
    ) -> bool {
        match outcome {
            "error" => self.errors += 1,
            "failed" => self.failed += 1,
            "collected" => self.collected_items += 1,
            _ => {}
        }
        if when == "call" {
            if let Some((id, called)) = &mut self.running {
                if id == nodeid {
                    *called = true;
                }
            }
        }
        if outcome == "subpassed" {
            // A passed subtest is no result of its test (pytest's "N
            // subtests passed"): it neither reports the test nor passes it.
            return false;
        }
        if outcome == "failed" && when == "call" && self.failed_set.insert(nodeid.to_string()) {
            self.failed_calls.push(nodeid.to_string());
        }
        // Tests only (a collect report names a module or class); `rerun`
        // (pytest-rerunfailures) and `other` are not in pytest's summary.
        if when != "collect"
            && !matches!(outcome, "rerun" | "other")
            && !self.reported.contains(nodeid)
        {
            self.reported.insert(nodeid.to_string());
        }
        if rerun {
            if matches!(outcome, "failed" | "error") {
                self.bad.insert(nodeid.to_string());
            }
            if outcome == "passed" && when == "call" {
                self.passed_calls
                    .insert(nodeid.to_string(), (duration_s, markers.to_vec()));
            }
        }
        if outcome == "rerun" {
            self.reran.insert(nodeid.to_string());
        } else if when == "call" && self.reran.remove(nodeid) && outcome == "passed" {
            self.rerun_flaky += 1;
            return true;
        }
        false
    }

    /// The plugin's `start` (`Some`) or `finish` (`None`) of a test.
    pub fn set_running(&mut self, nodeid: Option<&str>) {
        self.running = nodeid.map(|n| (n.to_string(), false));
    }

    /// Takes in the tally of a run restarted after a crash (on the tests not
    /// yet reported): counts add up, and `collected` becomes the whole
    /// selection's once the restarted run says how many it had left.
    pub fn absorb(&mut self, next: Tally) {
        let before = self.reported.len() as u64;
        self.errors += next.errors;
        self.failed += next.failed;
        for id in next.failed_calls {
            if self.failed_set.insert(id.clone()) {
                self.failed_calls.push(id);
            }
        }
        self.reported.extend(next.reported);
        self.collected_items += next.collected_items;
        self.rerun_flaky += next.rerun_flaky;
        self.collected = next.collected.map(|n| n + before);
        self.running = next.running;
    }

    /// A re-run's verdict on one node id: its call passed and nothing else of
    /// it failed (a teardown error makes it no pass). Returns (duration, markers).
    pub fn passed_on_retry(&self, nodeid: &str) -> Option<&(f64, Vec<String>)> {
        if self.bad.contains(nodeid) {
            return None;
        }
        self.passed_calls.get(nodeid)
    }

    /// False when pytest stopped before running everything it collected
    /// (`-x`, `--maxfail`): then "all tests passed" would not be true even if
    /// every failure turned out flaky.
    pub fn ran_everything(&self) -> bool {
        match self.collected {
            Some(n) => self.reported.len() as u64 >= n,
            None => false,
        }
    }
}

/// Options of the job's pytest arguments that a re-run by node id keeps, with
/// their values: those that decide how node ids resolve and which plugins and
/// configuration load (`-p`, `-c`/`--config-file`, `--rootdir`,
/// `-o`/`--override-ini`, `--confcutdir`, `--import-mode`, `--noconftest`).
/// Selection (paths, `-k`, `-m`), `-x` and output options are not kept.
pub(crate) fn forwarded_args(args: &[String]) -> Vec<String> {
    // Short options that take a value, attached (`-pfoo`) or next (`-p foo`).
    const SHORT: [&str; 3] = ["-p", "-c", "-o"];
    // Long options that take a value, `--opt=v` or `--opt v`.
    const LONG: [&str; 5] = [
        "--rootdir",
        "--confcutdir",
        "--config-file",
        "--override-ini",
        "--import-mode",
    ];
    // Long flags without a value.
    const FLAGS: [&str; 1] = ["--noconftest"];
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            break; // everything after is a positional argument
        }
        let takes_next = if SHORT.contains(&a) || LONG.contains(&a) {
            true
        } else if SHORT.iter().any(|s| a.starts_with(s) && a.len() > 2)
            || LONG
                .iter()
                .any(|l| a.strip_prefix(l).is_some_and(|r| r.starts_with('=')))
            || FLAGS.contains(&a)
        {
            false
        } else {
            i += 1;
            continue;
        };
        out.push(a.to_string());
        if takes_next {
            if let Some(v) = args.get(i + 1) {
                out.push(v.clone());
                i += 1;
            }
        }
        i += 1;
    }
    out
}

/// The command-line argument that re-runs `nodeid` from `cwd`. Node ids are
/// relative to pytest's rootdir, while arguments are read relative to the
/// working directory: the two differ when the configuration file lies above
/// the job's directory (a monorepo's `pyproject.toml`). The rootdir is then an
/// ancestor of `cwd`, so the file part is looked up in `cwd` and its ancestors
/// and made absolute where found elsewhere; the same file gives the same node
/// id. A node id whose file is found nowhere is passed as it is.
pub(crate) fn retry_arg(cwd: &Path, nodeid: &str) -> String {
    let (file, rest) = match nodeid.find("::") {
        Some(i) => nodeid.split_at(i),
        None => (nodeid, ""),
    };
    if file.is_empty() || Path::new(file).is_absolute() || cwd.join(file).is_file() {
        return nodeid.to_string();
    }
    for dir in cwd.ancestors().skip(1) {
        let p = dir.join(file);
        if p.is_file() {
            return format!("{}{rest}", p.display());
        }
    }
    nodeid.to_string()
}

/// The attempt's outcome after the re-runs: `base` is what the main run's exit
/// status alone says. With no flaky test it stands; when every failure of an
/// otherwise clean, complete run (exit 1, no errors) turned out flaky, the
/// attempt passed; otherwise it failed.
pub(crate) fn verdict(
    base: (Outcome, String),
    main_code: i32,
    main: &Tally,
    flaky: u64,
) -> (Outcome, String) {
    if flaky == 0 {
        return with_reruns(base, main.rerun_flaky);
    }
    let n = flaky + main.rerun_flaky;
    if main_code == 1 && main.errors == 0 && main.failed <= flaky && main.ran_everything() {
        (Outcome::Passed, format!("all tests passed ({n} flaky)"))
    } else {
        (Outcome::Failed, format!("tests failed ({n} flaky)"))
    }
}

/// The exit status's verdict with the tests pytest-rerunfailures turned flaky
/// named, as `--retry-failed` names its own: "all tests passed (1 flaky)".
pub(crate) fn with_reruns(base: (Outcome, String), flaky: u64) -> (Outcome, String) {
    match base.1.as_str() {
        "all tests passed" | "tests failed" if flaky > 0 => {
            (base.0, format!("{} ({flaky} flaky)", base.1))
        }
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn forwards_only_configuration_options_with_their_values() {
        let args = v(&[
            "-q",
            "tests/unit",
            "-p",
            "xdist",
            "-k",
            "not slow",
            "-pno:randomly",
            "-c",
            "ci/pytest.ini",
            "--rootdir=.",
            "-x",
            "--confcutdir",
            "tests",
            "-o",
            "addopts=",
            "--override-ini=xfail_strict=true",
            "--import-mode",
            "importlib",
            "--noconftest",
            "-m",
            "gpu",
            "--pdb",
            "--config-file=a.ini",
            "--",
            "-p",
            "after-dashdash",
        ]);
        assert_eq!(
            forwarded_args(&args),
            v(&[
                "-p",
                "xdist",
                "-pno:randomly",
                "-c",
                "ci/pytest.ini",
                "--rootdir=.",
                "--confcutdir",
                "tests",
                "-o",
                "addopts=",
                "--override-ini=xfail_strict=true",
                "--import-mode",
                "importlib",
                "--noconftest",
                "--config-file=a.ini",
            ])
        );
        // A value-taking option at the very end keeps what there is.
        assert_eq!(forwarded_args(&v(&["-v", "-p"])), v(&["-p"]));
        // Look-alikes are not forwarded.
        assert!(forwarded_args(&v(&["--rootdirx", "--pastebin=all", "-v"])).is_empty());
        assert!(forwarded_args(&[]).is_empty());
    }

    #[test]
    fn retry_args_resolve_node_ids_against_the_rootdir_above() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let cwd = root.join("pkg");
        std::fs::create_dir_all(cwd.join("tests")).unwrap();
        std::fs::write(cwd.join("tests/test_a.py"), "").unwrap();
        std::fs::write(root.join("test_top.py"), "").unwrap();
        // Relative to the working directory: unchanged.
        assert_eq!(
            retry_arg(&cwd, "tests/test_a.py::test_x[a b]"),
            "tests/test_a.py::test_x[a b]"
        );
        // Relative to an ancestor (the rootdir of an ini file above): absolute.
        assert_eq!(
            retry_arg(&cwd, "pkg/tests/test_a.py::T::test_y"),
            format!("{}/pkg/tests/test_a.py::T::test_y", root.display())
        );
        assert_eq!(
            retry_arg(&cwd, "test_top.py::t"),
            format!("{}/test_top.py::t", root.display())
        );
        // Nowhere: left to pytest (it reports it not found).
        assert_eq!(retry_arg(&cwd, "gone.py::t"), "gone.py::t");
    }

    fn tally(results: &[(&str, &str, &str)], collected: u64, rerun: bool) -> Tally {
        let mut t = Tally::default();
        for (id, when, outcome) in results {
            t.add_test(id, when, outcome, 0.5, &["m".to_string()], rerun);
        }
        t.collected = Some(collected);
        t
    }

    #[test]
    fn tally_lists_call_failures_once_and_in_order() {
        let t = tally(
            &[
                ("a.py::t[x y]", "call", "failed"),
                ("a.py::ok", "call", "passed"),
                ("a.py::setup_err", "setup", "error"),
                ("a.py::t[x y]", "teardown", "error"),
                ("b.py::f", "call", "failed"),
                ("b.py::r", "call", "rerun"),
            ],
            5,
            false,
        );
        assert_eq!(t.failed_calls, v(&["a.py::t[x y]", "b.py::f"]));
        assert_eq!((t.failed, t.errors), (2, 2));
        assert_eq!(t.reported.len(), 4);
        assert!(!t.ran_everything(), "b.py::r never got a counted result");
        assert!(t.passed_calls.is_empty(), "only re-runs keep passes");
    }

    #[test]
    fn a_pass_after_a_rerunfailures_rerun_is_flaky() {
        let mut t = Tally::default();
        let mut add =
            |id: &str, when: &str, outcome: &str| t.add_test(id, when, outcome, 0.1, &[], false);
        assert!(!add("a::f", "call", "rerun"));
        assert!(!add("a::f", "call", "rerun"));
        assert!(add("a::f", "call", "passed"));
        // Reruns used up: a failure, not flaky; a plain pass is a pass.
        assert!(!add("a::g", "call", "rerun"));
        assert!(!add("a::g", "call", "failed"));
        assert!(!add("a::ok", "call", "passed"));
        // A setup rerun counts as well.
        assert!(!add("a::s", "setup", "rerun"));
        assert!(!add("a::s", "setup", "passed"));
        assert!(add("a::s", "call", "passed"));
        assert_eq!((t.rerun_flaky, t.failed), (2, 1));
        assert_eq!(
            with_reruns((Outcome::Passed, "all tests passed".into()), 2),
            (Outcome::Passed, "all tests passed (2 flaky)".into())
        );
        assert_eq!(
            with_reruns((Outcome::Passed, "all tests passed".into()), 0).1,
            "all tests passed"
        );
    }

    #[test]
    fn a_retry_pass_needs_a_clean_call_and_no_error() {
        let t = tally(
            &[
                ("a.py::flaky", "call", "passed"),
                ("a.py::broken", "call", "failed"),
                ("a.py::td", "call", "passed"),
                ("a.py::td", "teardown", "error"),
                ("a.py::skips", "call", "skipped"),
            ],
            4,
            true,
        );
        assert_eq!(t.passed_on_retry("a.py::flaky"), Some(&(0.5, v(&["m"]))));
        assert_eq!(t.passed_on_retry("a.py::broken"), None);
        assert_eq!(t.passed_on_retry("a.py::td"), None);
        assert_eq!(t.passed_on_retry("a.py::skips"), None);
        assert_eq!(t.passed_on_retry("a.py::never-ran"), None);
    }

    #[test]
    fn verdict_passes_only_when_every_failure_of_a_complete_run_was_flaky() {
        let base = || (Outcome::Failed, "tests failed".to_string());
        let two_failed = tally(
            &[
                ("a", "call", "failed"),
                ("b", "call", "failed"),
                ("c", "call", "passed"),
            ],
            3,
            false,
        );
        assert_eq!(verdict(base(), 1, &two_failed, 0), base());
        assert_eq!(
            verdict(base(), 1, &two_failed, 1),
            (Outcome::Failed, "tests failed (1 flaky)".into())
        );
        assert_eq!(
            verdict(base(), 1, &two_failed, 2),
            (Outcome::Passed, "all tests passed (2 flaky)".into())
        );
        // An error elsewhere keeps it failed.
        let with_error = tally(
            &[("a", "call", "failed"), ("e", "setup", "error")],
            2,
            false,
        );
        assert_eq!(
            verdict(base(), 1, &with_error, 1),
            (Outcome::Failed, "tests failed (1 flaky)".into())
        );
        // `-x`: pytest stopped after the first failure; the rest never ran.
        let stopped = tally(&[("a", "call", "failed")], 3, false);
        assert_eq!(
            verdict(base(), 1, &stopped, 1),
            (Outcome::Failed, "tests failed (1 flaky)".into())
        );
        // No session message: not known to be complete.
        let mut unknown = tally(&[("a", "call", "failed")], 1, false);
        unknown.collected = None;
        assert_eq!(verdict(base(), 1, &unknown, 1).0, Outcome::Failed);
    }
}
