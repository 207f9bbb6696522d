//! `msctl report JOB`: a finished job's compatibility matrix (tests that did
//! not pass everywhere x hardware profiles), its benchmark verdicts, and the
//! diff against the previous run of the same schedule; as a table, `--json`,
//! `--junit FILE` or `--markdown`.
//!
//! The matrix code takes any number of columns (one per profile); today a job
//! runs on one agent, so a job's report has one column.

use crate::follow::follow;
use crate::render::{self, counts_line};
use crate::Client;
use crate::{exit, CtlError};
use msfleet_proto::{self as pb, job_event, Job, TestResult};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub use msfleet_proto::matrix::{combine, Cell, Column, Matrix, TestOutcome, CELLS};

/// "3 pass, 1 fail, 1 skip" in [`CELLS`] order.
pub fn summary_line(counts: &BTreeMap<Cell, usize>) -> String {
    let parts: Vec<String> = CELLS
        .iter()
        .filter_map(|c| {
            counts
                .get(c)
                .filter(|n| **n > 0)
                .map(|n| format!("{n} {}", c.label()))
        })
        .collect();
    if parts.is_empty() {
        "no tests".into()
    } else {
        parts.join(", ")
    }
}

/// What changed since the previous run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diff {
    pub previous_job: String,
    pub new_failures: Vec<String>,
    pub fixed: Vec<String>,
    pub still_failing: Vec<String>,
    pub new_flaky: Vec<String>,
}

/// Compares per-test cells of the previous and the current run.
pub fn diff(
    previous_job: &str,
    prev: &BTreeMap<String, Cell>,
    cur: &BTreeMap<String, Cell>,
) -> Diff {
    let mut d = Diff {
        previous_job: previous_job.into(),
        ..Default::default()
    };
    for (t, c) in cur {
        let before = prev.get(t).copied();
        let failed_before = before.is_some_and(Cell::failing);
        if c.failing() {
            if failed_before {
                d.still_failing.push(t.clone());
            } else {
                d.new_failures.push(t.clone());
            }
        } else if failed_before && c.ok() {
            d.fixed.push(t.clone());
        }
        if *c == Cell::Flaky && before != Some(Cell::Flaky) {
            d.new_flaky.push(t.clone());
        }
    }
    d
}

/// A test's cell over all profiles: the worst one (for the diff).
pub fn worst_cells(columns: &[Column]) -> BTreeMap<String, Cell> {
    let rank = |c: Cell| match c {
        Cell::Fail => 7,
        Cell::Error => 6,
        Cell::Flaky => 5,
        Cell::NotRun => 4,
        Cell::Skip => 3,
        Cell::XPass => 2,
        Cell::XFail => 1,
        Cell::Pass => 0,
    };
    let mut out: BTreeMap<String, Cell> = BTreeMap::new();
    for (_, tests) in columns {
        for (id, o) in tests {
            let e = out.entry(id.clone()).or_insert(o.cell);
            if rank(o.cell) > rank(*e) {
                *e = o.cell;
            }
        }
    }
    out
}

/// The diff part of a report.
#[derive(Clone, Debug, PartialEq)]
pub enum DiffState {
    NotScheduled,
    NoPrevious(String),
    Compared(String, Diff),
}

impl DiffState {
    pub fn note(&self) -> String {
        match self {
            DiffState::NotScheduled => "no previous run to compare (not a scheduled job)".into(),
            DiffState::NoPrevious(s) => {
                format!("no previous run of schedule {s} to compare")
            }
            DiffState::Compared(s, d) => {
                format!(
                    "compared with job {} (previous run of schedule {s})",
                    d.previous_job
                )
            }
        }
    }
}

/// Everything a report shows.
pub struct Report {
    pub job: Job,
    pub columns: Vec<Column>,
    /// A fan-out parent's benchmark verdicts: per child column, its cases.
    pub bench: Vec<(String, Vec<pb::CaseResult>)>,
    pub diff: DiffState,
    /// Level shifts in the trusted history of the job's cases: (case, profile, shift).
    pub shifts: Vec<Shift>,
}

/// A change point in the trusted history of one of the report's cases.
#[derive(Debug, Clone, PartialEq)]
pub struct Shift {
    pub case: String,
    pub metric: String,
    pub profile: String,
    pub at: pb::ChangePoint,
}

impl Shift {
    fn line(&self) -> String {
        format!(
            "{} {} ({}): {}",
            self.case,
            self.metric,
            self.profile,
            render::change_point_line(&self.at)
        )
    }

    fn json(&self) -> Value {
        json!({
            "case": self.case, "metric": self.metric, "profile": self.profile,
            "change_point": render::change_point_json(&self.at),
        })
    }
}

/// The case x profile matrix: profiles, and per case one cell per profile
/// (`None` where the case did not run there).
pub type BenchMatrix = (Vec<String>, Vec<(String, Vec<Option<BenchCell>>)>);

/// One cell of the case x profile matrix: value, delta, verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchCell {
    pub value: String,
    pub delta: String,
    pub verdict: String,
}

impl BenchCell {
    fn of(c: &pb::CaseResult) -> BenchCell {
        let [_, verdict, _, value, _, delta] = render::case_cells(c);
        BenchCell {
            value,
            delta,
            verdict: verdict.to_lowercase(),
        }
    }

    fn shown(&self) -> String {
        format!(
            "{} ({}) {}",
            self.value,
            self.delta,
            self.verdict.to_uppercase()
        )
    }
}

impl Report {
    pub fn matrix(&self) -> Matrix {
        Matrix::new(&self.columns)
    }

    /// The children's benchmark verdicts as (profiles, rows of case -> one
    /// cell per profile, `None` where the case did not run there).
    pub fn bench_matrix(&self) -> BenchMatrix {
        let profiles: Vec<String> = self.bench.iter().map(|(p, _)| p.clone()).collect();
        let mut rows: BTreeMap<String, Vec<Option<BenchCell>>> = BTreeMap::new();
        for (i, (_, cases)) in self.bench.iter().enumerate() {
            for c in cases {
                rows.entry(c.name.clone())
                    .or_insert_with(|| vec![None; profiles.len()])[i] = Some(BenchCell::of(c));
            }
        }
        (profiles, rows.into_iter().collect())
    }

    /// The summary after the title: the job's test counts, or for a
    /// benchmark parent its cases by verdict ("6 cases: 5 pass, 1 regression").
    pub fn headline(&self) -> String {
        let tests = self.job.tests.unwrap_or_default();
        let cells: Vec<BenchCell> = self
            .bench
            .iter()
            .flat_map(|(_, cases)| cases.iter().map(BenchCell::of))
            .collect();
        if tests.total > 0 || cells.is_empty() {
            return counts_line(&tests);
        }
        let mut by: BTreeMap<&str, usize> = BTreeMap::new();
        for c in &cells {
            *by.entry(c.verdict.as_str()).or_default() += 1;
        }
        let parts: Vec<String> = by.iter().map(|(v, n)| format!("{n} {v}")).collect();
        format!(
            "{} case{}: {}",
            cells.len(),
            if cells.len() == 1 { "" } else { "s" },
            parts.join(", ")
        )
    }
}

// ------------------------------------------------------------------ renderings

fn job_title(j: &Job) -> String {
    let name = j.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
    let name = if name.is_empty() {
        String::new()
    } else {
        format!(" ({name})")
    };
    format!("job {}{name} {}", j.id, j.state().label())
}

fn diff_lists(d: &Diff) -> [(&'static str, &Vec<String>); 4] {
    [
        ("new failures", &d.new_failures),
        ("fixed", &d.fixed),
        ("still failing", &d.still_failing),
        ("new flaky", &d.new_flaky),
    ]
}

pub fn text(r: &Report, all: bool) -> String {
    let m = r.matrix();
    let j = &r.job;
    let mut out = format!("{}: {}", job_title(j), r.headline());
    if !j.reason.is_empty() {
        out += &format!(" ({})", j.reason);
    }
    out += "\n";
    if !j.schedule.is_empty() {
        out += &format!(
            "schedule {} (slot {})\n",
            j.schedule,
            render::time_ms(j.slot_ms)
        );
    }
    out += "\n";
    let rows = m.selected(all);
    if m.rows.is_empty() && !r.bench.is_empty() {
        // A benchmark parent: the case matrix below is its result.
    } else if m.rows.is_empty() {
        out += "no test results\n";
    } else if rows.is_empty() {
        out += "every test passed on every profile\n";
    } else {
        let mut header = vec!["TEST"];
        header.extend(m.profiles.iter().map(String::as_str));
        let table_rows: Vec<Vec<String>> = rows
            .iter()
            .map(|(t, cells)| {
                let mut row = vec![t.clone()];
                row.extend(cells.iter().map(|c| c.label().to_string()));
                row
            })
            .collect();
        out += &render::table(&header, &table_rows);
    }
    if !m.rows.is_empty() {
        out += "\n";
        for (p, counts) in m.profiles.iter().zip(m.summary()) {
            out += &format!("{p}: {}\n", summary_line(&counts));
        }
    }
    if !j.cases.is_empty() {
        out += "\nbenchmark verdicts:\n";
        out += &render::verdicts_table(&j.cases, false);
    }
    let (profiles, rows) = r.bench_matrix();
    if !rows.is_empty() {
        out += "benchmark verdicts, value (delta) verdict per profile:\n";
        let mut header = vec!["CASE"];
        header.extend(profiles.iter().map(String::as_str));
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|(case, cells)| {
                let mut row = vec![case.clone()];
                row.extend(
                    cells
                        .iter()
                        .map(|c| c.as_ref().map_or("not run".into(), BenchCell::shown)),
                );
                row
            })
            .collect();
        out += &render::table(&header, &rows);
    }
    if !r.shifts.is_empty() {
        out += "\nchange points in the trusted history (a level shift no single night crossed):\n";
        for shift in &r.shifts {
            out += &format!("  {}\n", shift.line());
        }
    }
    out += &format!("\n{}\n", r.diff.note());
    if let DiffState::Compared(_, d) = &r.diff {
        for (label, list) in diff_lists(d) {
            if list.is_empty() {
                out += &format!("  {label}: none\n");
            } else {
                out += &format!("  {label} ({}):\n", list.len());
                for t in list {
                    out += &format!("    {t}\n");
                }
            }
        }
    }
    out
}

pub fn json(r: &Report, all: bool) -> Value {
    let m = r.matrix();
    let matrix: Vec<Value> = m
        .selected(all)
        .iter()
        .map(|(t, cells)| {
            let cells: Map<String, Value> = m
                .profiles
                .iter()
                .zip(cells)
                .map(|(p, c)| (p.clone(), json!(c.label())))
                .collect();
            json!({"test": t, "cells": cells})
        })
        .collect();
    let summary: Map<String, Value> = m
        .profiles
        .iter()
        .zip(m.summary())
        .map(|(p, counts)| {
            let c: Map<String, Value> = CELLS
                .iter()
                .map(|c| {
                    (
                        c.label().to_string(),
                        json!(counts.get(c).copied().unwrap_or(0)),
                    )
                })
                .collect();
            (p.clone(), Value::Object(c))
        })
        .collect();
    let diff = match &r.diff {
        DiffState::Compared(_, d) => json!({
            "previous_job": d.previous_job,
            "new_failures": d.new_failures,
            "fixed": d.fixed,
            "still_failing": d.still_failing,
            "new_flaky": d.new_flaky,
            "note": r.diff.note(),
        }),
        other => json!({"previous_job": null, "note": other.note()}),
    };
    json!({
        "job": r.job.id,
        "state": r.job.state().label(),
        "schedule": if r.job.schedule.is_empty() { Value::Null } else { json!(r.job.schedule) },
        "profiles": m.profiles,
        "matrix": matrix,
        "summary": summary,
        "cases": r.job.cases.iter().map(render::case_json).collect::<Vec<_>>(),
        "bench": bench_json(r),
        "change_points": r.shifts.iter().map(Shift::json).collect::<Vec<_>>(),
        "summary_line": r.headline(),
        "diff": diff,
    })
}

/// `{"profiles": [...], "cases": [{"case", "cells": {profile: {value, delta,
/// verdict} or null}}]}`, or null for a job without children's cases.
fn bench_json(r: &Report) -> Value {
    let (profiles, rows) = r.bench_matrix();
    if rows.is_empty() {
        return Value::Null;
    }
    let cases: Vec<Value> = rows
        .iter()
        .map(|(case, cells)| {
            let cells: Map<String, Value> = profiles
                .iter()
                .zip(cells)
                .map(|(p, c)| {
                    let v = c.as_ref().map_or(
                        Value::Null,
                        |c| json!({"value": c.value, "delta": c.delta, "verdict": c.verdict}),
                    );
                    (p.clone(), v)
                })
                .collect();
            json!({"case": case, "cells": cells})
        })
        .collect();
    json!({"profiles": profiles, "cases": cases})
}

/// Escapes text for XML content and attribute values; drops characters XML 1.0 forbids.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '"' => out += "&quot;",
            '\'' => out += "&apos;",
            '\n' | '\t' | '\r' => out.push(ch),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// (classname, name) of a nodeid as pytest's own `--junitxml` writes them
/// (`mangle_test_address` in `_pytest/junitxml.py`), so a CI tool's per-test
/// history is one whether a suite ran under plain pytest or the fleet: the
/// `[param]` part is set aside first (it may hold `::` or `/`), the file path
/// loses `.py` and takes `.` for `/`, the class chain joins it, and the name is
/// the last `::` part with its `[param]`.
/// `tests/test_more.py::AdjacentTests::test_x[1]` ->
/// (`tests.test_more.AdjacentTests`, `test_x[1]`); `broken.py` -> (``, `broken`).
pub fn junit_names(nodeid: &str) -> (String, String) {
    let (path, params) = match nodeid.find('[') {
        Some(i) => nodeid.split_at(i),
        None => (nodeid, ""),
    };
    let mut names: Vec<String> = path.split("::").map(str::to_string).collect();
    let file = names[0].replace('/', ".");
    names[0] = file.strip_suffix(".py").unwrap_or(&file).to_string();
    let mut name = names.pop().unwrap_or_default();
    name += params;
    (names.join("."), name)
}

/// A test's recorded results (newest first, as the scheduler returns them)
/// as one verdict per run of a job: the results of one job attempt (its
/// phases, subtests, a retry's `flaky`) combined as [`combine`] combines them
/// for the report, so a test whose subtest failed reads `failed` there too.
/// The phase shown is the one of the result that decided the verdict.
pub fn run_verdicts(runs: &[pb::TestRun]) -> Vec<pb::TestRun> {
    let mut out: Vec<pb::TestRun> = Vec::new();
    let mut rest = runs;
    while let Some(first) = rest.first() {
        let n = rest
            .iter()
            .take_while(|r| r.job_id == first.job_id && r.attempt == first.attempt)
            .count();
        let (group, tail) = rest.split_at(n);
        rest = tail;
        let results: Vec<TestResult> = group
            .iter()
            .rev()
            .map(|r| TestResult {
                when: r.when.clone(),
                outcome: r.outcome.clone(),
                duration_s: r.duration_s,
                ..Default::default()
            })
            .collect();
        let Some(verdict) = combine(&results).into_values().next() else {
            continue;
        };
        let outcome = verdict.cell.outcome();
        let decided = group.iter().find(|r| r.outcome == outcome).unwrap_or(first);
        out.push(pb::TestRun {
            outcome: outcome.to_string(),
            duration_s: verdict.duration_s,
            when: decided.when.clone(),
            ..first.clone()
        });
    }
    out
}

/// The last non-empty line of a longrepr (pytest puts the error there), for
/// a `message` attribute.
fn first_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}

pub fn junit(r: &Report) -> String {
    let m = r.matrix();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<testsuites>\n");
    for (i, profile) in m.profiles.iter().enumerate() {
        let results: BTreeMap<&str, &TestOutcome> = r
            .columns
            .iter()
            .filter(|(p, _)| p == profile)
            .flat_map(|(_, t)| t.iter().map(|(k, v)| (k.as_str(), v)))
            .collect();
        let counts = &m.summary()[i];
        let n = |c: Cell| counts.get(&c).copied().unwrap_or(0);
        let time: f64 = results.values().map(|o| o.duration_s).sum();
        out += &format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">\n",
            xml_escape(profile),
            m.rows.len(),
            n(Cell::Fail),
            n(Cell::Error),
            n(Cell::Skip) + n(Cell::XFail) + n(Cell::NotRun),
            time
        );
        for (test, cells) in &m.rows {
            let (class, name) = junit_names(test);
            let o = results.get(test.as_str());
            let time = o.map_or(0.0, |o| o.duration_s);
            let text = o.map_or("", |o| o.longrepr.as_str());
            out += &format!(
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{time:.3}\"",
                xml_escape(&class),
                xml_escape(&name)
            );
            let body = match cells[i] {
                Cell::Pass | Cell::XPass => String::new(),
                Cell::Fail => format!(
                    "      <failure message=\"{}\">{}</failure>\n",
                    xml_escape(first_line(text)),
                    xml_escape(text)
                ),
                Cell::Error => format!(
                    "      <error message=\"{}\">{}</error>\n",
                    xml_escape(first_line(text)),
                    xml_escape(text)
                ),
                Cell::Skip | Cell::XFail => format!(
                    "      <skipped message=\"{}\"/>\n",
                    xml_escape(if cells[i] == Cell::XFail {
                        "xfail"
                    } else {
                        first_line(text)
                    })
                ),
                Cell::NotRun => "      <skipped message=\"not run\"/>\n".into(),
                Cell::Flaky => {
                    "      <system-out>flaky: failed, then passed on retry</system-out>\n".into()
                }
            };
            if body.is_empty() {
                out += "/>\n";
            } else {
                out += &format!(">\n{body}    </testcase>\n");
            }
        }
        out += "  </testsuite>\n";
    }
    out += &bench_junit(r);
    out += "</testsuites>\n";
    out
}

/// A benchmark parent's cases in JUnit: a suite per profile
/// (`benchmark PROFILE`), a testcase per case (classname `benchmark`): a
/// regression or failure is a `failure`, `error` an `error`, a case that did
/// not run there `skipped`; the value, delta and verdict in `system-out`.
fn bench_junit(r: &Report) -> String {
    let (profiles, rows) = r.bench_matrix();
    let mut out = String::new();
    for (i, profile) in profiles.iter().enumerate() {
        let cells: Vec<(&String, Option<&BenchCell>)> = rows
            .iter()
            .map(|(c, cells)| (c, cells[i].as_ref()))
            .collect();
        let count =
            |f: &dyn Fn(Option<&BenchCell>) -> bool| cells.iter().filter(|(_, c)| f(*c)).count();
        let failing = |c: Option<&BenchCell>| {
            c.is_some_and(|c| matches!(c.verdict.as_str(), "regression" | "fail" | "failed"))
        };
        out += &format!(
            "  <testsuite name=\"benchmark {}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\">\n",
            xml_escape(profile),
            cells.len(),
            count(&failing),
            count(&|c| c.is_some_and(|c| c.verdict == "error")),
            count(&|c| c.is_none()),
        );
        for (case, cell) in cells {
            out += &format!(
                "    <testcase classname=\"benchmark\" name=\"{}\">\n",
                xml_escape(case)
            );
            match cell {
                None => out += "      <skipped message=\"not run\"/>\n",
                Some(c) => {
                    let shown = xml_escape(&c.shown());
                    if failing(Some(c)) {
                        out += &format!("      <failure message=\"{shown}\">{shown}</failure>\n");
                    } else if c.verdict == "error" {
                        out += &format!("      <error message=\"{shown}\">{shown}</error>\n");
                    }
                    out += &format!("      <system-out>{shown}</system-out>\n");
                }
            }
            out += "    </testcase>\n";
        }
        out += "  </testsuite>\n";
    }
    out
}

/// Escapes a markdown table cell.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn markdown(r: &Report, all: bool) -> String {
    let m = r.matrix();
    let j = &r.job;
    let mut out = format!("## msfleet report: {}\n\n", md_cell(&job_title(j)));
    out += &md_cell(&r.headline());
    if !j.reason.is_empty() {
        out += &format!(" ({})", md_cell(&j.reason));
    }
    out += "\n";
    if !j.schedule.is_empty() {
        out += &format!(
            "\nSchedule `{}`, slot {}\n",
            j.schedule,
            render::time_ms(j.slot_ms)
        );
    }
    if !m.rows.is_empty() {
        out += "\n";
        for (p, counts) in m.profiles.iter().zip(m.summary()) {
            out += &format!("- **{}**: {}\n", md_cell(p), summary_line(&counts));
        }
        out += &format!(
            "\n### {}\n\n",
            if all {
                "All tests"
            } else {
                "Tests that did not pass everywhere"
            }
        );
        let rows = m.selected(all);
        if rows.is_empty() {
            out += "Every test passed on every profile.\n";
        } else {
            out += "| test |";
            for p in &m.profiles {
                out += &format!(" {} |", md_cell(p));
            }
            out += "\n| --- |";
            out += &" --- |".repeat(m.profiles.len());
            out += "\n";
            for (t, cells) in rows {
                out += &format!("| `{}` |", md_cell(t));
                for c in cells {
                    let l = c.label();
                    let shown = if c.failing() {
                        format!("**{l}**")
                    } else {
                        l.to_string()
                    };
                    out += &format!(" {shown} |");
                }
                out += "\n";
            }
        }
    }
    if !j.cases.is_empty() {
        out +=
            "\n### Benchmark verdicts\n\n| case | verdict | metric | value | baseline | delta |\n";
        out += "| --- | --- | --- | --- | --- | --- |\n";
        for c in &j.cases {
            let cells = render::case_cells(c);
            out += "|";
            for v in cells {
                out += &format!(" {} |", md_cell(&v));
            }
            out += "\n";
        }
    }
    let (profiles, rows) = r.bench_matrix();
    if !rows.is_empty() {
        out += "\n### Benchmark verdicts per profile\n\n| case |";
        for p in &profiles {
            out += &format!(" {} |", md_cell(p));
        }
        out += "\n| --- |";
        out += &" --- |".repeat(profiles.len());
        out += "\n";
        for (case, cells) in &rows {
            out += &format!("| `{}` |", md_cell(case));
            for c in cells {
                let shown = c.as_ref().map_or("not run".into(), BenchCell::shown);
                out += &format!(" {} |", md_cell(&shown));
            }
            out += "\n";
        }
    }
    if !r.shifts.is_empty() {
        out += "\n### Change points in the trusted history\n\n";
        for shift in &r.shifts {
            out += &format!("- {}\n", md_cell(&shift.line()));
        }
    }
    out += "\n### Changes since the previous run\n\n";
    out += &format!("{}\n", r.diff.note());
    if let DiffState::Compared(_, d) = &r.diff {
        for (label, list) in diff_lists(d) {
            out += &format!("\n**{}** ({})\n", label, list.len());
            for t in list {
                out += &format!("- `{}`\n", t);
            }
        }
    }
    out
}

// ------------------------------------------------------------------ fetching

async fn get_job(client: &mut Client, id: &str) -> Result<Job, CtlError> {
    Ok(client
        .get_job(pb::GetJobRequest { id: id.into() })
        .await?
        .into_inner())
}

/// The test results of the job's last attempt, combined per nodeid.
async fn outcomes(
    client: &mut Client,
    job: &Job,
) -> Result<BTreeMap<String, TestOutcome>, CtlError> {
    let mut results: Vec<TestResult> = Vec::new();
    let last = job.attempts;
    follow(client, &job.id, 0, |ev| {
        if let Some(job_event::Kind::Test(t)) = &ev.kind {
            if ev.attempt == last {
                results.push(t.clone());
            }
        }
        true
    })
    .await?;
    Ok(combine(&results))
}

/// The hardware profile of the agent that ran the job (its name when unknown).
async fn profile_of(client: &mut Client, job: &Job) -> String {
    if job.agent.is_empty() {
        return "unknown".into();
    }
    let agents = match client.list_agents(pb::ListAgentsRequest {}).await {
        Ok(r) => r.into_inner().agents,
        Err(_) => Vec::new(),
    };
    agents
        .iter()
        .find(|a| a.name == job.agent)
        .and_then(|a| a.capabilities.as_ref())
        .map(|c| c.profile.clone())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| job.agent.clone())
}

/// The matrix columns of a job: its own results under its agent's profile,
/// or for a fan-out parent one column per child plus an empty (all "not run")
/// column per profile or agent that had no online agent.
async fn columns_of(client: &mut Client, job: &Job) -> Result<Vec<Column>, CtlError> {
    Ok(columns_and_bench(client, job).await?.0)
}

/// [`columns_of`], and a parent's children's benchmark cases per column.
#[allow(clippy::type_complexity)]
async fn columns_and_bench(
    client: &mut Client,
    job: &Job,
) -> Result<(Vec<Column>, Vec<(String, Vec<pb::CaseResult>)>), CtlError> {
    if job.children.is_empty() && job.not_run.is_empty() {
        let tests = outcomes(client, job).await?;
        return Ok((vec![(profile_of(client, job).await, tests)], Vec::new()));
    }
    let mut columns = Vec::new();
    let mut bench = Vec::new();
    for child in &job.children {
        let c = get_job(client, child).await?;
        if c.spec.as_ref().is_some_and(|s| s.collect_only) {
            continue; // a sharded job's collection step runs no tests
        }
        // Shards of one profile merge into that profile's column.
        let name = if c.column.is_empty() || c.column.starts_with("shard ") {
            profile_of(client, &c).await
        } else {
            c.column.clone()
        };
        if !c.cases.is_empty() {
            bench.push((name.clone(), c.cases.clone()));
        }
        columns.push((name, outcomes(client, &c).await?));
    }
    let any_bench = !bench.is_empty();
    for missing in &job.not_run {
        columns.push((missing.clone(), BTreeMap::new()));
        if any_bench {
            bench.push((missing.clone(), Vec::new()));
        }
    }
    Ok((columns, bench))
}

fn id_num(id: &str) -> Option<u64> {
    id.parse().ok()
}

/// The newest finished job of `schedule` older than `job`.
pub fn previous_of<'a>(jobs: &'a [Job], job: &Job) -> Option<&'a Job> {
    let me = id_num(&job.id)?;
    jobs.iter()
        .filter(|j| j.schedule == job.schedule && j.state().is_terminal())
        .filter(|j| id_num(&j.id).is_some_and(|n| n < me))
        .max_by_key(|j| id_num(&j.id))
}

pub async fn build(client: &mut Client, id: &str) -> Result<Report, CtlError> {
    let job = get_job(client, id).await?;
    if !job.state().is_terminal() {
        return Err(CtlError::input(format!(
            "job {} is still {}; report it once it has finished",
            job.id,
            job.state().label()
        )));
    }
    let (columns, bench) = columns_and_bench(client, &job).await?;
    let diff = if job.schedule.is_empty() {
        DiffState::NotScheduled
    } else {
        let jobs = client
            .list_jobs(pb::ListJobsRequest {
                limit: 1000,
                ..Default::default()
            })
            .await?
            .into_inner()
            .jobs;
        match previous_of(&jobs, &job) {
            None => DiffState::NoPrevious(job.schedule.clone()),
            Some(prev) => {
                let prev_cells = worst_cells(&columns_of(client, prev).await?);
                let d = diff(&prev.id, &prev_cells, &worst_cells(&columns));
                DiffState::Compared(job.schedule.clone(), d)
            }
        }
    };
    let shifts = shifts_of(client, &job, &bench).await?;
    Ok(Report {
        job,
        columns,
        bench,
        diff,
        shifts,
    })
}

/// The change points of the stored baselines of the job's cases (its own and a parent's
/// children's), per profile the cases ran on.
async fn shifts_of(
    client: &mut Client,
    job: &Job,
    bench: &[(String, Vec<pb::CaseResult>)],
) -> Result<Vec<Shift>, CtlError> {
    let cases: Vec<&pb::CaseResult> = job
        .cases
        .iter()
        .chain(bench.iter().flat_map(|(_, c)| c.iter()))
        .filter(|c| !c.profile.is_empty() && !c.metric.is_empty())
        .collect();
    let profiles: BTreeSet<&str> = cases.iter().map(|c| c.profile.as_str()).collect();
    let mut shifts = Vec::new();
    for profile in profiles {
        let stored = client
            .list_baselines(pb::ListBaselinesRequest {
                profile: profile.to_string(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .baselines;
        for b in &stored {
            let Some(k) = &b.key else { continue };
            let ours = cases.iter().any(|c| {
                c.profile == k.profile
                    && c.name == k.case
                    && c.input_hash == k.input_hash
                    && c.metric == k.metric
            });
            if !ours {
                continue;
            }
            shifts.extend(b.change_points.iter().map(|at| Shift {
                case: k.case.clone(),
                metric: k.metric.clone(),
                profile: k.profile.clone(),
                at: at.clone(),
            }));
        }
    }
    Ok(shifts)
}

/// `msctl report JOB`.
pub async fn run(
    client: &mut Client,
    id: &str,
    json_out: bool,
    junit_file: Option<&Path>,
    md: bool,
    all: bool,
) -> Result<i32, CtlError> {
    let r = build(client, id).await?;
    if let Some(path) = junit_file {
        std::fs::write(path, junit(&r))
            .map_err(|e| CtlError::input(format!("cannot write {}: {e}", path.display())))?;
        eprintln!("wrote {}", path.display());
    }
    if json_out {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&json(&r, all)).unwrap_or_default()
        );
    } else if md {
        crate::out!("{}", markdown(&r, all));
    } else if junit_file.is_none() {
        crate::out!("{}", text(&r, all));
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(nodeid: &str, when: &str, outcome: &str) -> TestResult {
        TestResult {
            nodeid: nodeid.into(),
            when: when.into(),
            outcome: outcome.into(),
            duration_s: 0.5,
            longrepr: format!("{outcome} in {when}\nE   boom <&>"),
            markers: vec![],
        }
    }

    fn cells(m: &BTreeMap<String, TestOutcome>) -> BTreeMap<&str, Cell> {
        m.iter().map(|(k, v)| (k.as_str(), v.cell)).collect()
    }

    fn col(profile: &str, tests: &[(&str, Cell)]) -> Column {
        (
            profile.into(),
            tests
                .iter()
                .map(|(t, c)| {
                    (
                        t.to_string(),
                        TestOutcome {
                            cell: *c,
                            duration_s: 0.25,
                            longrepr: if c.failing() {
                                "E   assert 1 == 2 & <x>".into()
                            } else {
                                String::new()
                            },
                        },
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn phases_combine_like_pytest() {
        let results = vec![
            tr("t.py::ok", "setup", "passed"),
            tr("t.py::ok", "call", "passed"),
            tr("t.py::ok", "teardown", "passed"),
            tr("t.py::fail", "call", "failed"),
            tr("t.py::fail", "teardown", "error"),
            tr("t.py::setup_err", "setup", "error"),
            tr("t.py::teardown_err", "call", "passed"),
            tr("t.py::teardown_err", "teardown", "error"),
            tr("t.py::skipped", "setup", "skipped"),
            tr("t.py::skip_call", "call", "skipped"),
            tr("t.py::xf", "call", "xfailed"),
            tr("t.py::xp", "call", "xpassed"),
            tr("t.py::fl", "call", "failed"),
            tr("t.py::fl", "call", "flaky"),
            tr("broken.py", "collect", "failed"),
            // pytest 9 reports a unittest test passed after its failed subTest.
            tr("t.py::ut", "call", "passed"),
            tr("t.py::ut", "subtest", "subpassed"),
            tr("t.py::ut", "subtest", "failed"),
            tr("t.py::ut", "subtest", "subpassed"),
            tr("t.py::sub_ok", "call", "passed"),
            tr("t.py::sub_ok", "subtest", "subpassed"),
            tr("t.py::sub_ok", "subtest", "skipped"),
        ];
        let m = combine(&results);
        let got = cells(&m);
        let want: BTreeMap<&str, Cell> = [
            ("t.py::ok", Cell::Pass),
            ("t.py::fail", Cell::Fail),
            ("t.py::setup_err", Cell::Error),
            ("t.py::teardown_err", Cell::Error),
            ("t.py::skipped", Cell::Skip),
            ("t.py::skip_call", Cell::Skip),
            ("t.py::xf", Cell::XFail),
            ("t.py::xp", Cell::XPass),
            ("t.py::fl", Cell::Flaky),
            ("broken.py", Cell::Error),
            ("t.py::ut", Cell::Fail),
            ("t.py::sub_ok", Cell::Pass),
        ]
        .into_iter()
        .collect();
        assert_eq!(got, want);
        assert!(m["t.py::ut"].longrepr.starts_with("failed in subtest"));
        assert_eq!(m["t.py::ok"].duration_s, 1.5);
        assert!(m["t.py::fail"].longrepr.starts_with("failed in call"));
        assert!(m["t.py::fl"].longrepr.starts_with("flaky"));
    }

    #[test]
    fn history_shows_one_verdict_per_job_run() {
        let run = |job: &str, attempt: u32, when: &str, outcome: &str| pb::TestRun {
            job_id: job.into(),
            attempt,
            when: when.into(),
            outcome: outcome.into(),
            duration_s: 0.5,
            profile: "alpha".into(),
            ..Default::default()
        };
        // Newest first, as the scheduler returns them.
        let runs = [
            run("9", 1, "subtest", "failed"),
            run("9", 1, "call", "passed"),
            run("8", 2, "call", "flaky"),
            run("8", 2, "call", "failed"),
            run("8", 1, "teardown", "error"),
            run("8", 1, "call", "passed"),
            run("7", 1, "call", "passed"),
        ];
        let verdicts = run_verdicts(&runs);
        let v: Vec<(&str, u32, &str, &str, f64)> = verdicts
            .iter()
            .map(|r| {
                assert_eq!(r.profile, "alpha");
                (
                    r.job_id.as_str(),
                    r.attempt,
                    r.when.as_str(),
                    r.outcome.as_str(),
                    r.duration_s,
                )
            })
            .collect();
        assert_eq!(
            v,
            [
                // The subtest's failure decides; its time is within the call's.
                ("9", 1, "subtest", "failed", 0.5),
                ("8", 2, "call", "flaky", 1.0),
                ("8", 1, "teardown", "error", 1.0),
                ("7", 1, "call", "passed", 0.5),
            ]
        );
    }

    #[test]
    fn rows_are_the_tests_that_did_not_pass_everywhere() {
        let m = Matrix::new(&[
            col(
                "a2",
                &[
                    ("ok", Cell::Pass),
                    ("xf", Cell::XFail),
                    ("skip_all", Cell::Skip),
                    ("skip_one", Cell::Skip),
                    ("bad", Cell::Fail),
                    ("fl", Cell::Flaky),
                    ("only_a2", Cell::Pass),
                ],
            ),
            col(
                "h100",
                &[
                    ("ok", Cell::Pass),
                    ("xf", Cell::XFail),
                    ("skip_all", Cell::Skip),
                    ("skip_one", Cell::Pass),
                    ("bad", Cell::Error),
                    ("fl", Cell::Pass),
                ],
            ),
        ]);
        assert_eq!(m.profiles, ["a2", "h100"]);
        let rows: Vec<&str> = m.selected(false).iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(rows, ["bad", "fl", "only_a2", "skip_one"]);
        let only = m.rows.iter().find(|(t, _)| t == "only_a2").unwrap();
        assert_eq!(only.1, [Cell::Pass, Cell::NotRun]);
        assert_eq!(m.selected(true).len(), 7);
        let s = m.summary();
        assert_eq!(
            summary_line(&s[0]),
            "2 pass, 1 fail, 1 flaky, 2 skip, 1 xfail"
        );
        // the same column twice: one profile, not two
        let single = Matrix::new(&[
            col("a2", &[("s", Cell::Skip)]),
            col("a2", &[("t", Cell::Pass)]),
        ]);
        assert_eq!(single.profiles, ["a2"]);
        assert!(
            single.selected(false).is_empty(),
            "a skip on the only profile is fine"
        );
    }

    #[test]
    fn diff_sorts_tests_into_new_fixed_still_and_flaky() {
        let prev = worst_cells(&[col(
            "a2",
            &[
                ("was_ok", Cell::Pass),
                ("was_bad", Cell::Fail),
                ("still", Cell::Error),
                ("was_flaky", Cell::Flaky),
                ("fixed_to_skip", Cell::Fail),
            ],
        )]);
        let cur = worst_cells(&[col(
            "a2",
            &[
                ("was_ok", Cell::Fail),
                ("was_bad", Cell::Pass),
                ("still", Cell::Fail),
                ("was_flaky", Cell::Flaky),
                ("fixed_to_skip", Cell::Skip),
                ("brand_new", Cell::Error),
                ("new_flaky", Cell::Flaky),
            ],
        )]);
        let d = diff("41", &prev, &cur);
        assert_eq!(d.previous_job, "41");
        assert_eq!(d.new_failures, ["brand_new", "was_ok"]);
        assert_eq!(d.fixed, ["was_bad"]);
        assert_eq!(d.still_failing, ["still"]);
        assert_eq!(d.new_flaky, ["new_flaky"]);
        // worst over profiles
        let w = worst_cells(&[
            col("a", &[("t", Cell::Pass)]),
            col("b", &[("t", Cell::Fail)]),
        ]);
        assert_eq!(w["t"], Cell::Fail);
    }

    #[test]
    fn previous_run_is_the_newest_finished_older_job_of_the_schedule() {
        let j = |id: &str, sched: &str, st: pb::JobState| Job {
            id: id.into(),
            schedule: sched.into(),
            state: st as i32,
            ..Default::default()
        };
        let jobs = vec![
            j("12", "nightly", pb::JobState::Passed),
            j("10", "nightly", pb::JobState::Running),
            j("9", "other", pb::JobState::Passed),
            j("8", "nightly", pb::JobState::Failed),
            j("7", "nightly", pb::JobState::Passed),
        ];
        let me = j("11", "nightly", pb::JobState::Failed);
        assert_eq!(previous_of(&jobs, &me).map(|j| j.id.as_str()), Some("8"));
        let first = j("7", "nightly", pb::JobState::Passed);
        assert!(previous_of(&jobs, &first).is_none());
    }

    #[test]
    fn xml_escaping() {
        assert_eq!(
            xml_escape("a<b>&\"c\" 'd'\u{1b}[31m\n"),
            "a&lt;b&gt;&amp;&quot;c&quot; &apos;d&apos;[31m\n"
        );
        assert_eq!(
            junit_names("tests/smoke/test_a.py::TestX::test_y[1]"),
            ("tests.smoke.test_a.TestX".into(), "test_y[1]".into())
        );
        assert_eq!(
            junit_names("tests/test_more.py::AdjacentTests::Inner::test_call_once"),
            (
                "tests.test_more.AdjacentTests.Inner".into(),
                "test_call_once".into()
            )
        );
        assert_eq!(
            junit_names("t.py::test_p[a::b/c.py]"),
            ("t".into(), "test_p[a::b/c.py]".into())
        );
        assert_eq!(junit_names("broken.py"), ("".into(), "broken".into()));
    }

    fn report(columns: Vec<Column>, diff: DiffState) -> Report {
        Report {
            shifts: Vec::new(),
            job: Job {
                id: "12".into(),
                state: pb::JobState::Failed as i32,
                attempts: 1,
                ..Default::default()
            },
            columns,
            bench: Vec::new(),
            diff,
        }
    }

    /// A tiny check of well-formedness: tags nest, attributes are quoted.
    fn tags(xml: &str) -> Vec<String> {
        let mut stack: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        let mut rest = xml;
        while let Some(i) = rest.find('<') {
            let end = rest[i..].find('>').expect("unclosed tag") + i;
            let tag = &rest[i + 1..end];
            rest = &rest[end + 1..];
            assert!(!tag.contains('<'), "{tag}");
            if tag.starts_with('?') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
                continue;
            }
            let name = tag
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches('/')
                .to_string();
            assert_eq!(tag.matches('"').count() % 2, 0, "{tag}");
            seen.push(tag.to_string());
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
        seen
    }

    #[test]
    fn junit_has_a_suite_per_profile_and_every_test() {
        let r = report(
            vec![
                col(
                    "a2",
                    &[
                        ("t/test_a.py::ok", Cell::Pass),
                        ("t/test_a.py::bad", Cell::Fail),
                        ("t/test_a.py::err", Cell::Error),
                        ("t/test_a.py::sk", Cell::Skip),
                        ("t/test_a.py::fl", Cell::Flaky),
                    ],
                ),
                col("h<100>", &[("t/test_a.py::ok", Cell::Pass)]),
            ],
            DiffState::NotScheduled,
        );
        let xml = junit(&r);
        let t = tags(&xml);
        let suites: Vec<&String> = t.iter().filter(|t| t.starts_with("testsuite ")).collect();
        assert_eq!(suites.len(), 2, "{xml}");
        assert!(
            suites[0].contains("name=\"a2\" tests=\"5\" failures=\"1\" errors=\"1\" skipped=\"1\""),
            "{xml}"
        );
        assert!(
            suites[1].contains(
                "name=\"h&lt;100&gt;\" tests=\"5\" failures=\"0\" errors=\"0\" skipped=\"4\""
            ),
            "{xml}"
        );
        assert_eq!(t.iter().filter(|t| t.starts_with("testcase ")).count(), 10);
        assert!(xml.contains("<testcase classname=\"t.test_a\" name=\"bad\" time=\"0.250\">\n      <failure message=\"E   assert 1 == 2 &amp; &lt;x&gt;\">E   assert 1 == 2 &amp; &lt;x&gt;</failure>"), "{xml}");
        assert!(xml.contains("<error message="), "{xml}");
        assert!(xml.contains("<system-out>flaky: failed, then passed on retry</system-out>"));
        assert!(xml.contains("<skipped message=\"not run\"/>"));
    }

    #[test]
    fn markdown_tables_have_one_column_per_profile() {
        let r = report(
            vec![
                col("a2", &[("ok", Cell::Pass), ("a|b", Cell::Fail)]),
                col("h100", &[("ok", Cell::Pass), ("a|b", Cell::Pass)]),
            ],
            DiffState::Compared(
                "nightly".into(),
                Diff {
                    previous_job: "11".into(),
                    new_failures: vec!["a|b".into()],
                    ..Default::default()
                },
            ),
        );
        let md = markdown(&r, false);
        let table: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(
            table,
            [
                "| test | a2 | h100 |",
                "| --- | --- | --- |",
                "| `a\\|b` | **fail** | pass |"
            ],
            "{md}"
        );
        for l in &table {
            assert_eq!(l.replace("\\|", "").matches('|').count(), 4, "{l}");
        }
        assert!(md.starts_with("## msfleet report: job 12 failed\n"), "{md}");
        assert!(md.contains("- **a2**: 1 pass, 1 fail\n"), "{md}");
        assert!(
            md.contains("compared with job 11 (previous run of schedule nightly)"),
            "{md}"
        );
        assert!(md.contains("**new failures** (1)\n- `a|b`\n"), "{md}");
        let txt = text(&r, false);
        assert!(txt.contains("  new failures (1):\n    a|b\n"), "{txt}");
        assert!(txt.contains("  fixed: none\n"), "{txt}");
        let v = json(&r, true);
        assert_eq!(v["matrix"].as_array().unwrap().len(), 2);
        assert_eq!(v["summary"]["h100"]["pass"], 2);
        assert_eq!(v["diff"]["new_failures"][0], "a|b");
    }

    #[test]
    fn change_points_of_the_cases_are_reported_with_their_run() {
        let mut r = report(Vec::new(), DiffState::NotScheduled);
        r.shifts.push(Shift {
            case: "decode".into(),
            metric: "total_time_s".into(),
            profile: "h100".into(),
            at: pb::ChangePoint {
                job_id: "31".into(),
                time_ms: 1_795_284_000_000,
                index: 12,
                before: 0.1,
                after: 0.106,
                shift_pct: 6.0,
            },
        });
        let t = text(&r, false);
        assert!(
            t.contains(
                "decode total_time_s (h100): +6.0% from job 31 (2026-11-21T18:00:00Z, run 13 of the history): 0.100 -> 0.106"
            ),
            "{t}"
        );
        let v = json(&r, false);
        assert_eq!(v["change_points"][0]["change_point"]["job_id"], "31");
        assert_eq!(v["change_points"][0]["profile"], "h100");
        assert!(markdown(&r, false).contains("### Change points in the trusted history"));
        // None: no section.
        let r = report(Vec::new(), DiffState::NotScheduled);
        assert!(!text(&r, false).contains("change points"));
    }
}
