//! A case's runs judged against its baselines, the `CaseResult` that becomes of it, the log line
//! that says it, and the tally of an attempt's verdicts.

use super::baselines::{baseline_for, Baselines};
use super::cases::{LoadedCase, Plan};
use super::metrics::{median_operators, primary_metric, primary_samples, RunSample};
use super::verdict::{self, Direction, Judgement, OperatorReport, Rules, Verdict};
use msfleet_proto::bench as pbench;
use msfleet_proto::case::CaseError;
use msfleet_proto::{self as pb, Outcome};
use std::collections::BTreeMap;

/// A judged measurement.
pub(super) struct Judged {
    pub(super) metric: String,
    pub(super) judgement: Judgement,
    pub(super) operators: Vec<verdict::OperatorTime>,
    pub(super) report: Option<OperatorReport>,
}

/// Judges the primary metric of this job's runs of a case (the first run, then the
/// confirming re-runs; each a list of measured repetitions) against `stored` (or the case
/// file) and folds in the operator comparison: with several runs, operators count as moved
/// only when they moved in every run.
pub(super) fn judge_runs(
    plan: &Plan,
    lc: &LoadedCase,
    runs: &[Vec<RunSample>],
    baselines: &Baselines,
) -> Result<Judged, String> {
    let first = runs.first().ok_or("no runs to judge")?;
    let metric = primary_metric(plan.metric.as_deref(), first);
    let samples = runs
        .iter()
        .map(|r| primary_samples(&metric, r))
        .collect::<Result<Vec<_>, _>>()?;
    let stored = baselines.find(lc, &metric);
    let base = baseline_for(&lc.case, stored);
    let dir = if pbench::higher_is_better(&metric) {
        Direction::HigherIsBetter
    } else {
        Direction::LowerIsBetter
    };
    let slices: Vec<&[f64]> = samples.iter().map(Vec::as_slice).collect();
    let mut judgement = verdict::judge_runs(&slices, dir, &base, &Rules::default());
    let operators = median_operators(first);
    let base_ops: Vec<verdict::OperatorTime> = match stored {
        Some(b) if !b.anchor_operators.is_empty() => b
            .anchor_operators
            .iter()
            .map(|o| verdict::OperatorTime {
                name: o.name.clone(),
                total_time_s: o.total_time_s,
                num_calls: o.num_calls,
            })
            .collect(),
        _ => lc
            .case
            .operators
            .iter()
            .map(|o| verdict::OperatorTime {
                name: o.name.clone(),
                total_time_s: o.total_time_s,
                num_calls: o.num_calls,
            })
            .collect(),
    };
    let compare = |ops: &[verdict::OperatorTime]| {
        verdict::compare_operators(
            ops,
            &base_ops,
            lc.case.operator_top_n,
            lc.case.operator_tolerance,
        )
    };
    let report = (!operators.is_empty() && !base_ops.is_empty()).then(|| {
        let mut report = compare(&operators);
        let every_run_moved = runs[1..]
            .iter()
            .all(|r| compare(&median_operators(r)).regressed);
        if !every_run_moved {
            report.regressed = false;
            report.moved.clear();
        }
        report
    });
    if let Some(r) = &report {
        judgement = verdict::with_operators(judgement, r);
    }
    Ok(Judged {
        metric,
        judgement,
        operators,
        report,
    })
}

pub(super) fn explanation(ex: &verdict::Explanation) -> pb::Explanation {
    pb::Explanation {
        value: ex.value,
        baseline: ex.baseline,
        delta_pct: ex.delta_pct,
        limit: ex.limit.clone(),
        z: ex.z,
        t_limit: ex.t_limit,
        k: u32::try_from(ex.k).unwrap_or(u32::MAX),
        spread_cv: ex.spread_cv,
        baseline_run_ids: ex.baseline_run_ids.clone(),
        rule: ex.rule.clone(),
        message: ex.message.clone(),
        mde_pct: ex.mde_pct,
        runs: u32::try_from(ex.runs).unwrap_or(u32::MAX),
        samples: u32::try_from(ex.samples).unwrap_or(u32::MAX),
        pooled_value: ex.pooled_value,
        df: ex.df,
    }
}

/// An `error` result for a case that could not be measured or judged.
pub(super) fn error_result(
    name: &str,
    file: &str,
    input_hash: &str,
    metric: &str,
    rule: &str,
    message: String,
) -> pb::CaseResult {
    pb::CaseResult {
        name: name.to_string(),
        file: file.to_string(),
        input_hash: input_hash.to_string(),
        metric: metric.to_string(),
        verdict: Verdict::Error.as_str().to_string(),
        explanation: Some(pb::Explanation {
            rule: rule.to_string(),
            message,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The result of a case file that did not load.
pub fn case_error_result(e: &CaseError) -> pb::CaseResult {
    error_result(
        &e.case,
        &e.file.display().to_string(),
        "",
        "",
        verdict::RULE_INPUT,
        e.to_string(),
    )
}

/// A number with four significant digits, without trailing zeros.
fn num(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return format!("{x}");
    }
    let decimals = (3 - x.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// The one-line summary of a case for the attempt's log.
pub fn summary_line(r: &pb::CaseResult) -> String {
    let ex = r.explanation.clone().unwrap_or_default();
    let mut line = format!("msfleet: case {}: {}", r.name, r.verdict);
    if r.verdict == Verdict::Error.as_str() {
        line.push_str(": ");
        line.push_str(ex.message.lines().next().unwrap_or(""));
    } else {
        line.push_str(&format!(" {} {}", r.metric, num(ex.value)));
        let mut paren = Vec::new();
        if r.verdict == Verdict::NoBaseline.as_str() {
            paren.push("nothing to compare with yet".to_string());
        }
        if let Some(b) = ex.baseline {
            line.push_str(&format!(" vs {}", num(b)));
        }
        if let Some(d) = ex.delta_pct {
            paren.push(format!("{d:+.1}%"));
        }
        if !ex.limit.is_empty() && r.verdict != Verdict::NoBaseline.as_str() {
            paren.push(ex.limit.clone());
        }
        if !paren.is_empty() {
            line.push_str(&format!(" ({})", paren.join(", ")));
        }
        if r.rerun {
            let runs = ex.runs.max(2);
            line.push_str(&if r.confirmed {
                format!(", confirmed by {runs} runs together")
            } else {
                format!(", not confirmed by {runs} runs together")
            });
        }
        if !r.operators_moved.is_empty() {
            line.push_str(&format!(
                "; operators moved: {}",
                r.operators_moved.join(", ")
            ));
        }
        if let Some(note) = pbench::history_unavailable(&ex.message) {
            line.push_str("; ");
            line.push_str(note);
        }
    }
    line.push('\n');
    line
}

/// Counts of the verdicts of an attempt's cases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub counts: BTreeMap<String, usize>,
    /// Cases that could not be run at all (an unreadable case file, a command
    /// that cannot start): the fleet's problem, not the benchmark's.
    pub setup_errors: usize,
    /// The first setup error's message.
    pub first_setup_error: Option<String>,
}

impl Tally {
    pub fn record(&mut self, verdict: &str) {
        *self.counts.entry(verdict.to_string()).or_insert(0) += 1;
    }

    /// A case (already recorded as `error`) that could not be run, and why.
    pub fn record_setup_error(&mut self, why: &str) {
        self.setup_errors += 1;
        if self.first_setup_error.is_none() {
            let line = why.lines().next().unwrap_or("").trim();
            self.first_setup_error = Some(line.chars().take(300).collect());
        }
    }

    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    fn count(&self, v: Verdict) -> usize {
        self.counts.get(v.as_str()).copied().unwrap_or(0)
    }

    /// Passed when no case regressed or errored; failed when one regressed, or
    /// errored in its own run; else `error` when a case could not be set up
    /// (or there were none): with a reason.
    pub fn outcome(&self) -> (Outcome, String) {
        let total = self.total();
        let cases = if total == 1 { "case" } else { "cases" };
        if total == 0 {
            return (Outcome::Error, "no benchmark cases found".into());
        }
        let (reg, err) = (self.count(Verdict::Regression), self.count(Verdict::Error));
        // Infrastructure is never a benchmark failure: unless a case measured
        // a regression or failed in its own run, cases that could not run at
        // all make the attempt an error.
        if self.setup_errors > 0 && reg == 0 && err <= self.setup_errors {
            let n = self.setup_errors;
            let first = self.first_setup_error.as_deref().unwrap_or("");
            return (
                Outcome::Error,
                format!("{n} of {total} {cases} could not run: {first}"),
            );
        }
        if reg == 0 && err == 0 {
            let parts: Vec<String> = self
                .counts
                .iter()
                .map(|(v, n)| format!("{n} {v}"))
                .collect();
            return (
                Outcome::Passed,
                format!("{total} {cases}: {}", parts.join(", ")),
            );
        }
        let reason = match (reg, err) {
            (r, 0) => format!("{r} of {total} {cases} regressed"),
            (0, e) => format!("{e} of {total} {cases} errored"),
            (r, e) => format!("{r} of {total} {cases} regressed, {e} errored"),
        };
        (Outcome::Failed, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_reasons() {
        let mut t = Tally::default();
        assert_eq!(
            t.outcome(),
            (Outcome::Error, "no benchmark cases found".to_string())
        );
        for v in ["pass", "pass", "improvement", "noisy"] {
            t.record(v);
        }
        assert_eq!(
            t.outcome(),
            (
                Outcome::Passed,
                "4 cases: 1 improvement, 1 noisy, 2 pass".to_string()
            )
        );
        t.record("regression");
        t.record("regression");
        t.record("error");
        assert_eq!(
            t.outcome(),
            (
                Outcome::Failed,
                "2 of 7 cases regressed, 1 errored".to_string()
            )
        );
    }

    #[test]
    fn cases_that_could_not_run_make_an_error_unless_a_case_failed_on_its_own() {
        let mut t = Tally::default();
        t.record("pass");
        t.record("error");
        t.record_setup_error("cannot start 'nope': No such file or directory (os error 2)\nmore");
        assert_eq!(
            t.outcome(),
            (
                Outcome::Error,
                "1 of 2 cases could not run: cannot start 'nope': No such file or directory (os error 2)"
                    .to_string()
            )
        );
        // A case that ran and errored on its own (or regressed) is the
        // benchmark's verdict: failed.
        t.record("error");
        assert_eq!(
            t.outcome(),
            (Outcome::Failed, "2 of 3 cases errored".to_string())
        );
        let mut t = Tally::default();
        t.record("regression");
        t.record("error");
        t.record_setup_error("case x: not valid JSON");
        assert_eq!(t.outcome().0, Outcome::Failed);
    }

    #[test]
    fn numbers_have_four_significant_digits() {
        assert_eq!(num(0.0201234), "0.02012");
        assert_eq!(num(0.0154), "0.0154");
        assert_eq!(num(12345.6), "12346");
        assert_eq!(num(1.5), "1.5");
        assert_eq!(num(0.0), "0");
    }
}
