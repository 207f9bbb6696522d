//! The baseline book: per (case, input hash, metric, hardware profile), the
//! accepted anchor and the history of accepted runs that verdicts are judged
//! against.
//!
//! Invariants (here and nowhere else):
//! - a baseline of one hardware profile never serves another: every lookup is
//!   by the full key, profile included;
//! - history grows only from trusted runs that passed, improved or had no
//!   baseline yet, or from an explicit, audited `accept`; a regression (or a
//!   noisy or failed case) never becomes the baseline by itself.
//!
//! Every baseline served (to an agent's GetBaselines or a user's
//! ListBaselines) carries views computed on read by [`with_views`]: its noise
//! and power ([`pb::NoiseEstimate`], the spread pooled over all cases of the
//! same profile and metric) and the change points of its history. The pooling
//! happens here and nowhere else: the agent judges with the served prior.

use msfleet_proto::noise::{self, LogSpread, NoisePrior, Power};
use msfleet_proto::{self as pb, Baseline, BaselineAudit, BaselineKey, BaselineRun, CaseResult};
use std::collections::{BTreeMap, BTreeSet};

/// Accepted runs kept per key (verdicts use the newest 30).
pub const HISTORY_KEPT: usize = 100;

/// The storage key of a baseline.
pub fn key_string(k: &BaselineKey) -> String {
    format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}",
        k.profile, k.case, k.input_hash, k.metric
    )
}

/// Verdicts whose runs may join the history of a trusted stream.
fn joins_history(verdict: &str) -> bool {
    matches!(verdict, "pass" | "improvement" | "no_baseline")
}

/// All baselines, in memory; the core persists what these methods return.
#[derive(Debug, Default)]
pub struct BaselineBook {
    by_key: BTreeMap<String, Baseline>,
}

impl BaselineBook {
    pub fn load(entries: Vec<(String, Baseline)>) -> BaselineBook {
        BaselineBook {
            by_key: entries.into_iter().collect(),
        }
    }

    fn key_of(result: &CaseResult) -> BaselineKey {
        BaselineKey {
            case: result.name.clone(),
            input_hash: result.input_hash.clone(),
            metric: result.metric.clone(),
            profile: result.profile.clone(),
        }
    }

    fn append(
        &mut self,
        result: &CaseResult,
        job_id: &str,
        now_ms: i64,
        audit: BaselineAudit,
    ) -> (String, Baseline) {
        let key = Self::key_of(result);
        let ks = key_string(&key);
        let b = self.by_key.entry(ks.clone()).or_insert_with(|| Baseline {
            key: Some(key),
            ..Default::default()
        });
        let ex = result.explanation.clone().unwrap_or_default();
        b.history.push(BaselineRun {
            job_id: job_id.to_string(),
            time_ms: now_ms,
            median: ex.value,
            operators: result.operators.clone(),
            samples: ex.samples,
            spread_cv: if ex.spread_cv.is_finite() && ex.spread_cv >= 0.0 {
                ex.spread_cv
            } else {
                0.0
            },
        });
        if b.history.len() > HISTORY_KEPT {
            let excess = b.history.len() - HISTORY_KEPT;
            b.history.drain(..excess);
        }
        b.audit.push(audit);
        (ks, b.clone())
    }

    /// A trusted run's result: appended to the history when it may be. Returns
    /// the changed baseline to persist.
    pub fn record_trusted(
        &mut self,
        result: &CaseResult,
        job_id: &str,
        now_ms: i64,
    ) -> Option<(String, Baseline)> {
        if !joins_history(&result.verdict) || result.metric.is_empty() || result.profile.is_empty()
        {
            return None;
        }
        let value = result.explanation.as_ref().map_or(0.0, |e| e.value);
        if !(value.is_finite() && value > 0.0) {
            return None;
        }
        let audit = BaselineAudit {
            action: "auto".into(),
            who: "trusted stream".into(),
            time_ms: now_ms,
            job_id: job_id.to_string(),
            value,
        };
        Some(self.append(result, job_id, now_ms, audit))
    }

    /// `msctl baseline accept`: each measured case of the job becomes the
    /// anchor of its key and joins its history. Errored cases are skipped.
    pub fn accept(
        &mut self,
        results: &[CaseResult],
        job_id: &str,
        who: &str,
        now_ms: i64,
    ) -> Vec<(String, Baseline)> {
        let mut changed = Vec::new();
        for r in results {
            let value = r.explanation.as_ref().map_or(0.0, |e| e.value);
            if r.verdict == "error" || r.metric.is_empty() || !(value.is_finite() && value > 0.0) {
                continue;
            }
            let audit = BaselineAudit {
                action: "accept".into(),
                who: who.to_string(),
                time_ms: now_ms,
                job_id: job_id.to_string(),
                value,
            };
            let (ks, _) = self.append(r, job_id, now_ms, audit);
            if let Some(b) = self.by_key.get_mut(&ks) {
                b.anchor = Some(value);
                b.anchor_operators = r.operators.clone();
                changed.push((ks, b.clone()));
            }
        }
        changed
    }

    /// Baselines of `profile` for the given (case, input hash) pairs, every metric, with their
    /// views.
    pub fn for_profile(&self, profile: &str, wanted: &BTreeSet<(String, String)>) -> Vec<Baseline> {
        let mut priors = Priors::default();
        self.by_key
            .values()
            .filter(|b| {
                b.key.as_ref().is_some_and(|k| {
                    k.profile == profile && wanted.contains(&(k.case.clone(), k.input_hash.clone()))
                })
            })
            .map(|b| self.with_views(b, &mut priors))
            .collect()
    }

    /// Every baseline, optionally only of one case and/or profile, with their views.
    pub fn list(&self, case: &str, profile: &str) -> Vec<Baseline> {
        let mut priors = Priors::default();
        self.by_key
            .values()
            .filter(|b| {
                b.key.as_ref().is_some_and(|k| {
                    (case.is_empty() || k.case == case)
                        && (profile.is_empty() || k.profile == profile)
                })
            })
            .map(|b| self.with_views(b, &mut priors))
            .collect()
    }

    /// The baseline stored under `key` ([`key_string`]).
    pub fn get(&self, key: &str) -> Option<&Baseline> {
        self.by_key.get(key)
    }

    /// The pooled noise prior of (profile, metric): over every stored key of that profile
    /// and metric, each key's window of the newest [`noise::K_WINDOW`] accepted runs.
    fn prior(&self, profile: &str, metric: &str) -> Option<NoisePrior> {
        let spreads: Vec<LogSpread> = self
            .by_key
            .values()
            .filter(|b| {
                b.key
                    .as_ref()
                    .is_some_and(|k| k.profile == profile && k.metric == metric)
            })
            .filter_map(|b| noise::log_spread(&window_medians(b)))
            .collect();
        noise::pool(&spreads)
    }

    /// `b` with its noise estimate and change points filled in.
    fn with_views(&self, b: &Baseline, priors: &mut Priors) -> Baseline {
        let mut out = b.clone();
        let Some(key) = &b.key else { return out };
        let prior = *priors
            .entry((key.profile.clone(), key.metric.clone()))
            .or_insert_with(|| self.prior(&key.profile, &key.metric));
        out.noise = noise_estimate(b, prior.as_ref());
        let medians: Vec<f64> = b.history.iter().map(|r| r.median).collect();
        out.change_points = noise::change_points(&medians)
            .into_iter()
            .filter_map(|c| {
                let run = b.history.get(c.index)?;
                Some(pb::ChangePoint {
                    job_id: run.job_id.clone(),
                    time_ms: run.time_ms,
                    index: u32::try_from(c.index).unwrap_or(u32::MAX),
                    before: c.before,
                    after: c.after,
                    shift_pct: c.shift() * 100.0,
                })
            })
            .collect();
        out
    }
}

/// Priors computed so far while serving one request, by (profile, metric).
type Priors = BTreeMap<(String, String), Option<NoisePrior>>;

/// The medians of the newest [`noise::K_WINDOW`] accepted runs, the verdict's window.
fn window_medians(b: &Baseline) -> Vec<f64> {
    b.history[b.history.len().saturating_sub(noise::K_WINDOW)..]
        .iter()
        .map(|r| r.median)
        .collect()
}

/// The noise and power of one key: `None` with fewer than two accepted runs of its own.
fn noise_estimate(b: &Baseline, prior: Option<&NoisePrior>) -> Option<pb::NoiseEstimate> {
    let window = &b.history[b.history.len().saturating_sub(noise::K_WINDOW)..];
    let own = noise::log_spread(&window_medians(b))?;
    let (var, df) = noise::posterior(Some(&own), prior)?;
    let sd = var.sqrt().max(noise::SD_FLOOR);
    let cvs: Vec<f64> = window
        .iter()
        .filter(|r| r.samples >= 2)
        .map(|r| r.spread_cv)
        .collect();
    let within_cv = if cvs.is_empty() {
        0.0
    } else {
        (cvs.iter().map(|c| c * c).sum::<f64>() / cvs.len() as f64).sqrt()
    };
    let mut reps: Vec<u32> = window
        .iter()
        .map(|r| r.samples)
        .filter(|&n| n > 0)
        .collect();
    reps.sort_unstable();
    let repetitions = reps.get(reps.len() / 2).copied().unwrap_or(0);
    let power = Power {
        sd,
        df,
        k: window.len().max(1),
        within_cv,
        repetitions,
    };
    let confirmed_runs = 1 + noise::CONFIRM_RUNS as u32;
    let floor = |x: f64| x.max(noise::MIN_EFFECT) * 100.0;
    Some(pb::NoiseEstimate {
        runs: u32::try_from(window.len()).unwrap_or(u32::MAX),
        own_sd_log: own.var.sqrt(),
        pooled_sd_log: prior.map_or(0.0, |p| p.var.sqrt()),
        prior_df: prior.map_or(0.0, |p| p.df),
        cases_pooled: prior.map_or(0, |p| u32::try_from(p.cases).unwrap_or(u32::MAX)),
        sd_log: sd,
        df,
        within_cv,
        repetitions,
        run_sd_log: power.run_sd(),
        mde_pct: floor(power.mde(1, noise::CONFIDENCE)),
        mde_confirmed_pct: floor(power.mde(confirmed_runs, noise::CONFIDENCE)),
        target_pct: noise::TARGET_MDE * 100.0,
        repetitions_for_target: power.repetitions_for(noise::TARGET_MDE, 1, noise::CONFIDENCE),
        runs_for_target: power.runs_for(noise::TARGET_MDE, noise::CONFIDENCE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use msfleet_proto::Explanation;

    fn result(verdict: &str, profile: &str, value: f64) -> CaseResult {
        CaseResult {
            name: "qwen3-8B-decode".into(),
            input_hash: "abc".into(),
            metric: "total_time_s".into(),
            verdict: verdict.into(),
            profile: profile.into(),
            explanation: Some(Explanation {
                value,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_good_trusted_runs_join_the_history() {
        let mut book = BaselineBook::default();
        assert!(book
            .record_trusted(&result("pass", "gpu-a", 1.0), "1", 10)
            .is_some());
        assert!(book
            .record_trusted(&result("no_baseline", "gpu-a", 1.1), "2", 11)
            .is_some());
        assert!(book
            .record_trusted(&result("regression", "gpu-a", 1.5), "3", 12)
            .is_none());
        assert!(book
            .record_trusted(&result("noisy", "gpu-a", 1.2), "4", 13)
            .is_none());
        assert!(book
            .record_trusted(&result("error", "gpu-a", 0.0), "5", 14)
            .is_none());
        let all = book.list("", "");
        assert_eq!(all.len(), 1);
        let medians: Vec<f64> = all[0].history.iter().map(|r| r.median).collect();
        assert_eq!(medians, vec![1.0, 1.1]);
        assert_eq!(all[0].anchor, None);
    }

    #[test]
    fn profiles_stay_apart_and_accept_is_audited() {
        let mut book = BaselineBook::default();
        book.accept(&[result("no_baseline", "gpu-a", 2.0)], "7", "alice", 100);
        book.accept(&[result("no_baseline", "npu-b", 5.0)], "8", "bob", 200);
        let wanted: BTreeSet<_> = [("qwen3-8B-decode".to_string(), "abc".to_string())].into();
        let a = book.for_profile("gpu-a", &wanted);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].anchor, Some(2.0));
        assert_eq!(a[0].audit[0].who, "alice");
        assert_eq!(a[0].audit[0].job_id, "7");
        assert_eq!(book.for_profile("npu-b", &wanted)[0].anchor, Some(5.0));
        assert!(book.for_profile("cpu", &wanted).is_empty());
        assert_eq!(book.list("", "npu-b").len(), 1);
    }

    #[test]
    fn history_is_capped() {
        let mut book = BaselineBook::default();
        for i in 0..(HISTORY_KEPT + 20) {
            book.record_trusted(
                &result("pass", "p", 1.0 + i as f64),
                &i.to_string(),
                i as i64,
            );
        }
        let b = &book.list("", "")[0];
        assert_eq!(b.history.len(), HISTORY_KEPT);
        assert_eq!(b.history[0].job_id, "20");
    }

    fn named(case: &str, verdict: &str, value: f64, cv: f64) -> CaseResult {
        let mut r = result(verdict, "gpu-a", value);
        r.name = case.into();
        if let Some(e) = r.explanation.as_mut() {
            e.samples = 5;
            e.spread_cv = cv;
        }
        r
    }

    #[test]
    fn served_baselines_carry_the_pooled_noise_and_the_change_points() {
        let mut book = BaselineBook::default();
        // Six cases of 8 runs with about 3% run-to-run spread; case "step" moves up 6% at
        // its 12th run and stays there.
        let wiggle = [1.0, 1.03, 0.97, 1.02, 0.98, 1.0, 1.04, 0.96];
        for c in 0..6 {
            for i in 0..8 {
                let v = wiggle[(i + c) % 8];
                book.record_trusted(
                    &named(&format!("c{c}"), "pass", v, 0.02),
                    &format!("{c}-{i}"),
                    i as i64,
                );
            }
        }
        let flat = [1.0, 1.004, 0.996, 1.002, 0.998, 1.0];
        for i in 0..24 {
            let v = flat[i % 6] * if i >= 12 { 1.06 } else { 1.0 };
            book.record_trusted(
                &named("step", "pass", v, 0.01),
                &format!("s{i}"),
                100 + i as i64,
            );
        }
        let all = book.list("", "gpu-a");
        assert_eq!(all.len(), 7);
        let c0 = all
            .iter()
            .find(|b| b.key.as_ref().unwrap().case == "c0")
            .unwrap();
        let n = c0.noise.as_ref().expect("a noise estimate");
        assert_eq!(n.runs, 8);
        assert_eq!(n.cases_pooled, 7);
        assert!(n.prior_df > 7.0, "{n:?}");
        assert!(n.df > 7.0 && n.sd_log > 0.0, "{n:?}");
        assert_eq!(n.repetitions, 5);
        assert!((n.within_cv - 0.02).abs() < 1e-12);
        assert!(
            n.mde_pct >= 5.0 && n.mde_confirmed_pct <= n.mde_pct,
            "{n:?}"
        );
        assert_eq!(n.target_pct, 5.0);
        assert!(c0.change_points.is_empty());
        // The served prior is the same whether one case or the whole profile is asked for.
        let wanted: BTreeSet<_> = [("c0".to_string(), "abc".to_string())].into();
        let one = book.for_profile("gpu-a", &wanted);
        assert_eq!(one[0].noise, c0.noise);
        let step = all
            .iter()
            .find(|b| b.key.as_ref().unwrap().case == "step")
            .unwrap();
        assert_eq!(step.change_points.len(), 1, "{:?}", step.change_points);
        let cp = &step.change_points[0];
        assert_eq!((cp.index, cp.job_id.as_str(), cp.time_ms), (12, "s12", 112));
        assert!((cp.shift_pct - 6.0).abs() < 0.5, "{cp:?}");
        // The views are not stored: the book's own copy has none.
        assert!(book.by_key.values().all(|b| b.noise.is_none()));
        // One run: no estimate.
        let mut lone = BaselineBook::default();
        lone.record_trusted(&named("x", "pass", 1.0, 0.0), "1", 1);
        assert_eq!(lone.list("", "")[0].noise, None);
    }
}
