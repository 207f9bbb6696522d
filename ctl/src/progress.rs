//! How `watch` and `submit --wait` show a job's progress: on a terminal a
//! live spinner line (indicatif) with the counts so far and the latest test
//! or case, redrawn under the result lines; anywhere else plain lines only,
//! the same bytes a script or a log file has always read.

use crate::render::counts_line;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use msfleet_proto::TestCounts;
use std::ffi::OsStr;
use std::time::Duration;

/// Plain lines print `[N done: ...]` after every this many tests.
const PLAIN_EVERY: u64 = 10;

/// Whether progress is drawn live: only on a terminal (stderr, where the line
/// is drawn), not for `--json` (a program reads it), not with `NO_COLOR` set
/// (non-empty, as no-color.org says) and not on `TERM=dumb`, which cannot
/// redraw a line.
pub fn is_live(
    stderr_is_terminal: bool,
    json: bool,
    no_color: Option<&OsStr>,
    term: Option<&OsStr>,
) -> bool {
    stderr_is_terminal
        && !json
        && no_color.is_none_or(|v| v.is_empty())
        && term.is_none_or(|t| t != "dumb")
}

/// [`is_live`] for this process: its stderr and environment.
pub fn is_live_here(json: bool) -> bool {
    use std::io::IsTerminal;
    is_live(
        std::io::stderr().is_terminal(),
        json,
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("TERM").as_deref(),
    )
}

/// The progress of one followed job.
pub struct Progress {
    /// The live line, drawn on stderr; `None` for plain lines.
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Live on stderr when `live`, else plain.
    pub fn new(live: bool) -> Progress {
        Progress::with_target(live.then(ProgressDrawTarget::stderr))
    }

    fn with_target(target: Option<ProgressDrawTarget>) -> Progress {
        let bar = target.map(|t| {
            let bar = ProgressBar::with_draw_target(None, t);
            let style = ProgressStyle::with_template("{spinner} {elapsed} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress { bar }
    }

    pub fn is_live(&self) -> bool {
        self.bar.is_some()
    }

    /// Prints result lines (`print` writes them to stdout): the live line is
    /// cleared first and drawn again below them.
    pub fn print<R>(&self, print: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    /// After a test's result (`counted`: one more test in `total`, not a
    /// subtest or a rerun): the live line shows the counts and that test;
    /// plain progress is a line to print every [`PLAIN_EVERY`] tests.
    pub fn tested(&self, counts: &TestCounts, nodeid: &str, counted: bool) -> Option<String> {
        let done = format!("[{} done: {}]", counts.total, counts_line(counts));
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!("{done} {nodeid}"));
                None
            }
            None => (counted && counts.total.is_multiple_of(PLAIN_EVERY)).then_some(done),
        }
    }

    /// After a benchmark case's verdict (live only: plain lines have the case line).
    pub fn case_done(&self, cases: usize, name: &str, verdict: &str) {
        if let Some(bar) = &self.bar {
            let s = if cases == 1 { "" } else { "s" };
            bar.set_message(format!("[{cases} case{s} done] {name} {verdict}"));
        }
    }

    /// A new state: the live line names it until the next result.
    pub fn state(&self, label: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(label.to_string());
        }
    }

    /// Clears the live line for good (the final summary follows).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    #[test]
    fn live_only_on_a_terminal_that_can_redraw_and_not_for_json() {
        assert!(is_live(true, false, None, os("xterm-256color")));
        assert!(is_live(true, false, None, None));
        // An empty NO_COLOR is unset (no-color.org).
        assert!(is_live(true, false, os(""), os("xterm")));
        assert!(!is_live(false, false, None, os("xterm")), "a pipe or file");
        assert!(!is_live(true, true, None, os("xterm")), "--json");
        assert!(!is_live(true, false, os("1"), os("xterm")), "NO_COLOR");
        assert!(!is_live(true, false, None, os("dumb")), "TERM=dumb");
    }

    fn counts(passed: u64, failed: u64) -> TestCounts {
        TestCounts {
            passed,
            failed,
            total: passed + failed,
            ..Default::default()
        }
    }

    #[test]
    fn plain_progress_is_a_line_every_ten_tests() {
        let p = Progress::new(false);
        assert!(!p.is_live());
        assert_eq!(p.tested(&counts(8, 1), "t.py::a", true), None);
        assert_eq!(
            p.tested(&counts(9, 1), "t.py::b", true).as_deref(),
            Some("[10 done: 1 failed, 9 passed]")
        );
        // A subtest after the tenth test: no second line for the same count.
        assert_eq!(p.tested(&counts(9, 1), "t.py::b", false), None);
        assert_eq!(p.print(|| 7), 7);
    }

    #[test]
    fn live_progress_shows_the_counts_and_the_latest_test() {
        let p = Progress::with_target(Some(ProgressDrawTarget::hidden()));
        assert!(p.is_live());
        // Nothing for stdout: the counts are on the live line.
        assert_eq!(p.tested(&counts(9, 1), "t.py::b", true), None);
        let bar = p.bar.as_ref().unwrap();
        assert_eq!(bar.message(), "[10 done: 1 failed, 9 passed] t.py::b");
        p.case_done(2, "decode", "PASS");
        assert_eq!(bar.message(), "[2 cases done] decode PASS");
        assert_eq!(p.print(|| 7), 7);
        p.finish();
        assert!(bar.is_finished());
    }
}
