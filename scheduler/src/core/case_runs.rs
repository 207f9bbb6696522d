//! Every recent run of each benchmark case key, whatever its verdict: the
//! dashboard's trend charts. The baseline history ([`crate::baseline`]) holds
//! only accepted runs; this holds regressions too. Fed by one call from
//! `record_case`, bounded per key, persisted under the store's `r` prefix.

use super::*;
use crate::baseline::key_string;
use std::collections::VecDeque;

/// Runs kept per key; past it the oldest go.
pub const RUNS_KEPT: usize = 200;

/// All keys' kept runs, in memory (loaded at start).
#[derive(Debug, Default)]
pub struct CaseRunBook {
    by_key: BTreeMap<String, (pb::BaselineKey, VecDeque<pb::CaseRun>)>,
}

/// One key's trend as the dashboard draws it: its runs and its baseline (the
/// accepted anchor and history), if there is one.
#[derive(Debug, Clone, Default)]
pub struct Trend {
    pub runs: pb::CaseRuns,
    pub baseline: Option<pb::Baseline>,
}

impl CaseRunBook {
    pub fn load(entries: Vec<(String, pb::CaseRuns)>) -> CaseRunBook {
        let by_key = entries
            .into_iter()
            .map(|(k, r)| (k, (r.key.unwrap_or_default(), r.runs.into())))
            .collect();
        CaseRunBook { by_key }
    }

    /// Appends `c` (stamped with its profile) as a run of `job_id`; returns
    /// the key and the kept runs to persist, or nothing for a result that has
    /// no key (no metric or profile).
    pub fn record(
        &mut self,
        c: &pb::CaseResult,
        job_id: &str,
        now_ms: i64,
    ) -> Option<(String, pb::CaseRuns)> {
        if c.metric.is_empty() || c.profile.is_empty() {
            return None;
        }
        let key = pb::BaselineKey {
            case: c.name.clone(),
            input_hash: c.input_hash.clone(),
            metric: c.metric.clone(),
            profile: c.profile.clone(),
        };
        let ks = key_string(&key);
        let ex = c.explanation.clone().unwrap_or_default();
        let unit = c
            .metrics
            .iter()
            .find(|m| m.name == c.metric)
            .map(|m| m.unit.clone())
            .unwrap_or_default();
        let (_, runs) = self
            .by_key
            .entry(ks.clone())
            .or_insert_with(|| (key.clone(), VecDeque::new()));
        runs.push_back(pb::CaseRun {
            job_id: job_id.to_string(),
            time_ms: now_ms,
            median: ex.value,
            verdict: c.verdict.clone(),
            baseline: ex.baseline,
            delta_pct: ex.delta_pct,
            unit,
        });
        while runs.len() > RUNS_KEPT {
            runs.pop_front();
        }
        let stored = pb::CaseRuns {
            key: Some(key),
            runs: runs.iter().cloned().collect(),
        };
        Some((ks, stored))
    }

    /// Keys matching `case` and `profile` (empty matches all), each with at
    /// most its `newest` runs.
    fn matching(&self, case: &str, profile: &str, newest: usize) -> Vec<(String, pb::CaseRuns)> {
        self.by_key
            .iter()
            .filter(|(_, (k, _))| {
                (case.is_empty() || k.case == case) && (profile.is_empty() || k.profile == profile)
            })
            .map(|(ks, (k, runs))| {
                let skip = runs.len().saturating_sub(newest);
                (
                    ks.clone(),
                    pb::CaseRuns {
                        key: Some(k.clone()),
                        runs: runs.iter().skip(skip).cloned().collect(),
                    },
                )
            })
            .collect()
    }
}

impl Core {
    /// The trends of the keys matching `case` / `profile` (empty: all), each
    /// with its newest `newest` runs and its baseline.
    pub(super) fn trends(&self, case: &str, profile: &str, newest: usize) -> Vec<Trend> {
        self.case_runs
            .matching(case, profile, newest.clamp(1, RUNS_KEPT))
            .into_iter()
            .map(|(ks, runs)| Trend {
                baseline: self.baselines.get(&ks).cloned(),
                runs,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::*;
    use super::super::Command;
    use super::RUNS_KEPT;
    use msfleet_proto::{self as pb, task_update, Outcome};

    fn bench() -> pb::JobSpec {
        let mut s = spec();
        s.kind = "benchmark".into();
        s.queue = "nightly".into();
        s.benchmark = Some(pb::BenchmarkSpec {
            command: vec!["./run".into(), "{case}".into()],
            ..Default::default()
        });
        s
    }

    fn case(verdict: &str, value: f64) -> task_update::Kind {
        task_update::Kind::Case(pb::CaseResult {
            name: "c".into(),
            input_hash: "h1".into(),
            metric: "wall_time".into(),
            verdict: verdict.into(),
            explanation: Some(pb::Explanation {
                value,
                baseline: Some(1.0),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn trends(h: &mut Harness, newest: usize) -> Vec<super::Trend> {
        h.call(|reply| Command::Trends {
            case: "c".into(),
            profile: String::new(),
            newest,
            reply,
        })
        .unwrap()
    }

    #[test]
    fn every_run_is_kept_regressions_included_and_survives_a_restart() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "p-a", 1);
        let verdicts = ["no_baseline", "pass", "regression", "pass"];
        for (i, v) in verdicts.iter().enumerate() {
            let job = h.submit(bench()).unwrap();
            let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
            h.update(&mut a, &r, 1, started());
            h.update(&mut a, &r, 2, case(v, 1.0 + i as f64));
            h.update(&mut a, &r, 3, finished(Outcome::Passed));
            assert!(!job.id.is_empty());
        }
        h.reload();
        let t = trends(&mut h, RUNS_KEPT);
        assert_eq!(t.len(), 1);
        let runs = &t[0].runs.runs;
        let got: Vec<(&str, f64)> = runs
            .iter()
            .map(|r| (r.verdict.as_str(), r.median))
            .collect();
        assert_eq!(
            got,
            vec![
                ("no_baseline", 1.0),
                ("pass", 2.0),
                ("regression", 3.0),
                ("pass", 4.0)
            ]
        );
        assert_eq!(runs[2].baseline, Some(1.0));
        let key = t[0].runs.key.clone().unwrap();
        assert_eq!(key.profile, "p-a");
        // The trusted stream's baseline: the regression never joined it.
        let history: Vec<f64> = t[0]
            .baseline
            .as_ref()
            .unwrap()
            .history
            .iter()
            .map(|r| r.median)
            .collect();
        assert_eq!(history, vec![1.0, 2.0, 4.0]);
        assert_eq!(trends(&mut h, 1)[0].runs.runs.len(), 1, "newest only");
    }

    #[test]
    fn runs_are_bounded_per_key() {
        let mut book = super::CaseRunBook::default();
        let c = pb::CaseResult {
            name: "c".into(),
            metric: "wall_time".into(),
            profile: "p".into(),
            ..Default::default()
        };
        let mut last = None;
        for i in 0..(RUNS_KEPT + 10) {
            last = book.record(&c, &i.to_string(), i as i64);
        }
        let (_, runs) = last.unwrap();
        assert_eq!(runs.runs.len(), RUNS_KEPT);
        assert_eq!(runs.runs[0].job_id, "10", "the oldest went first");
        let no_profile = pb::CaseResult {
            profile: String::new(),
            ..c
        };
        assert!(book.record(&no_profile, "x", 0).is_none());
    }
}
