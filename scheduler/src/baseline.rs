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

use msfleet_proto::{Baseline, BaselineAudit, BaselineKey, BaselineRun, CaseResult};
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
        let median = result.explanation.as_ref().map_or(0.0, |e| e.value);
        b.history.push(BaselineRun {
            job_id: job_id.to_string(),
            time_ms: now_ms,
            median,
            operators: result.operators.clone(),
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

    /// Baselines of `profile` for the given (case, input hash) pairs, every metric.
    pub fn for_profile(&self, profile: &str, wanted: &BTreeSet<(String, String)>) -> Vec<Baseline> {
        self.by_key
            .values()
            .filter(|b| {
                b.key.as_ref().is_some_and(|k| {
                    k.profile == profile && wanted.contains(&(k.case.clone(), k.input_hash.clone()))
                })
            })
            .cloned()
            .collect()
    }

    /// Every baseline, optionally only of one case and/or profile.
    pub fn list(&self, case: &str, profile: &str) -> Vec<Baseline> {
        self.by_key
            .values()
            .filter(|b| {
                b.key.as_ref().is_some_and(|k| {
                    (case.is_empty() || k.case == case)
                        && (profile.is_empty() || k.profile == profile)
                })
            })
            .cloned()
            .collect()
    }

    /// The baseline stored under `key` ([`key_string`]).
    pub fn get(&self, key: &str) -> Option<&Baseline> {
        self.by_key.get(key)
    }
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
}
