//! A job's compatibility matrix: each test's final result per column
//! (hardware profile, agent or shard), its phases combined as pytest
//! combines them. Shared by `msctl report` and msched's dashboard.

use crate::TestResult;
use std::collections::{BTreeMap, BTreeSet};

/// One test's final result on one profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cell {
    Pass,
    Fail,
    Error,
    Skip,
    XFail,
    XPass,
    Flaky,
    NotRun,
}

/// Display order of the per-profile summary.
pub const CELLS: [Cell; 8] = [
    Cell::Pass,
    Cell::Fail,
    Cell::Error,
    Cell::Flaky,
    Cell::Skip,
    Cell::XFail,
    Cell::XPass,
    Cell::NotRun,
];

impl Cell {
    pub fn label(self) -> &'static str {
        match self {
            Cell::Pass => "pass",
            Cell::Fail => "fail",
            Cell::Error => "error",
            Cell::Skip => "skip",
            Cell::XFail => "xfail",
            Cell::XPass => "xpass",
            Cell::Flaky => "flaky",
            Cell::NotRun => "not run",
        }
    }

    /// The cell as a pytest outcome word (`passed`, `failed`, ...), as a
    /// test's history shows a run's verdict.
    pub fn outcome(self) -> &'static str {
        match self {
            Cell::Pass => "passed",
            Cell::Fail => "failed",
            Cell::Error => "error",
            Cell::Skip => "skipped",
            Cell::XFail => "xfailed",
            Cell::XPass => "xpassed",
            Cell::Flaky => "flaky",
            Cell::NotRun => "not_run",
        }
    }

    /// fail or error.
    pub fn failing(self) -> bool {
        matches!(self, Cell::Fail | Cell::Error)
    }

    /// Passed, or an expected outcome that is not a problem.
    pub fn ok(self) -> bool {
        matches!(self, Cell::Pass | Cell::XFail | Cell::XPass)
    }
}

/// A test's final outcome in one job (the phases combined).
#[derive(Clone, Debug, PartialEq)]
pub struct TestOutcome {
    pub cell: Cell,
    /// Sum over the phases.
    pub duration_s: f64,
    /// Failure, error or skip text (of the phase that decided the cell).
    pub longrepr: String,
}

#[derive(Default)]
struct Phases {
    call: Option<(String, String)>,
    /// An error or failure in setup, teardown or collect.
    other_error: Option<String>,
    setup_skip: Option<String>,
    flaky: Option<String>,
    /// The first failed subtest's text (`SUBFAIL ...`).
    subtest_failure: Option<String>,
    duration_s: f64,
}

/// Combines TestResult events (of one attempt) per nodeid like pytest does:
/// the call outcome wins, an error in setup/teardown/collect makes `error`,
/// a skip in setup `skip`, a failed subtest makes its test `fail` (pytest 9
/// may report the test itself passed, as for unittest's `subTest`), and a
/// later `flaky` overrides an earlier failure.
pub fn combine<'a>(
    results: impl IntoIterator<Item = &'a TestResult>,
) -> BTreeMap<String, TestOutcome> {
    let mut by_id: BTreeMap<String, Phases> = BTreeMap::new();
    for r in results {
        let p = by_id.entry(r.nodeid.clone()).or_default();
        if r.when == crate::SUBTEST {
            // Its time is within its test's call.
            if matches!(r.outcome.as_str(), "failed" | "error") && p.subtest_failure.is_none() {
                p.subtest_failure = Some(r.longrepr.clone());
            }
            continue;
        }
        p.duration_s += r.duration_s;
        if r.outcome == "flaky" {
            p.flaky = Some(r.longrepr.clone());
            continue;
        }
        match r.when.as_str() {
            "call" => p.call = Some((r.outcome.clone(), r.longrepr.clone())),
            _ => match r.outcome.as_str() {
                "failed" | "error" => p.other_error = Some(r.longrepr.clone()),
                "skipped" => p.setup_skip = Some(r.longrepr.clone()),
                _ => {}
            },
        }
    }
    by_id
        .into_iter()
        .map(|(id, p)| {
            let (cell, longrepr) = if let Some(text) = p.flaky {
                (Cell::Flaky, text)
            } else if let Some(text) = p.subtest_failure {
                (Cell::Fail, text)
            } else if let Some((_, text)) = p.call.as_ref().filter(|(o, _)| o == "failed") {
                (Cell::Fail, text.clone())
            } else if let Some(text) = p.other_error {
                (Cell::Error, text)
            } else if let Some((o, text)) = p.call {
                let cell = match o.as_str() {
                    "passed" => Cell::Pass,
                    "skipped" => Cell::Skip,
                    "xfailed" => Cell::XFail,
                    "xpassed" => Cell::XPass,
                    "error" => Cell::Error,
                    _ => Cell::Fail,
                };
                (cell, text)
            } else if let Some(text) = p.setup_skip {
                (Cell::Skip, text)
            } else {
                // Only a passing setup/teardown was seen.
                (Cell::Pass, String::new())
            };
            (
                id,
                TestOutcome {
                    cell,
                    duration_s: p.duration_s,
                    longrepr,
                },
            )
        })
        .collect()
}

/// One column of the matrix: a hardware profile and its tests' outcomes.
pub type Column = (String, BTreeMap<String, TestOutcome>);

/// The compatibility matrix over columns (profiles).
#[derive(Clone, Debug, Default)]
pub struct Matrix {
    pub profiles: Vec<String>,
    /// Every test of any column, sorted, with one cell per profile.
    pub rows: Vec<(String, Vec<Cell>)>,
}

impl Matrix {
    /// Columns with the same profile are merged (the later one wins per test).
    pub fn new(columns: &[Column]) -> Matrix {
        let mut profiles: Vec<String> = Vec::new();
        let mut merged: Vec<BTreeMap<&str, Cell>> = Vec::new();
        for (profile, tests) in columns {
            let i = match profiles.iter().position(|p| p == profile) {
                Some(i) => i,
                None => {
                    profiles.push(profile.clone());
                    merged.push(BTreeMap::new());
                    profiles.len() - 1
                }
            };
            for (id, o) in tests {
                merged[i].insert(id.as_str(), o.cell);
            }
        }
        let tests: BTreeSet<&str> = merged.iter().flat_map(|m| m.keys().copied()).collect();
        let rows = tests
            .into_iter()
            .map(|t| {
                let cells = merged
                    .iter()
                    .map(|m| m.get(t).copied().unwrap_or(Cell::NotRun))
                    .collect();
                (t.to_string(), cells)
            })
            .collect();
        Matrix { profiles, rows }
    }

    /// Rows of tests that did not pass everywhere (fail, error, flaky, not run
    /// anywhere; a skip only where another profile did not skip), or all.
    pub fn selected(&self, all: bool) -> Vec<&(String, Vec<Cell>)> {
        self.rows
            .iter()
            .filter(|(_, cells)| all || row_is_notable(cells))
            .collect()
    }

    /// Per profile: how many tests ended in each cell.
    pub fn summary(&self) -> Vec<BTreeMap<Cell, usize>> {
        let mut out = vec![BTreeMap::new(); self.profiles.len()];
        for (_, cells) in &self.rows {
            for (i, c) in cells.iter().enumerate() {
                *out[i].entry(*c).or_insert(0) += 1;
            }
        }
        out
    }
}

fn row_is_notable(cells: &[Cell]) -> bool {
    if cells.iter().any(|c| !c.ok() && *c != Cell::Skip) {
        return true;
    }
    let skips = cells.iter().filter(|c| **c == Cell::Skip).count();
    skips > 0 && skips < cells.len()
}
