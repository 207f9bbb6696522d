//! Judging one benchmark case's measurements against its baseline: the pure math, no I/O.
//!
//! One call to [`judge`] takes the post-warmup samples of one metric of one case, the metric's
//! [`Direction`], what is known about its past ([`Baseline`]: the pinned `initial` anchor, the
//! movable `baseline` anchor, and the medians of earlier accepted runs) and the [`Rules`], and
//! returns a [`Judgement`]: a [`Verdict`] and an [`Explanation`] that says which numbers and
//! which limit decided it.
//!
//! # The steps, in order
//!
//! 1. **Input.** Samples must be non-empty, finite and strictly positive (times and throughputs
//!    are; the history rule works on logarithms). Anchors must have a finite positive value and a
//!    finite non-negative tolerance, and the history medians in the window must be finite and
//!    positive. Anything else is [`Verdict::Error`] with the reason; nothing here panics or
//!    divides by zero.
//! 2. **Summary** ([`summarize`]): median `m`, MAD (median absolute deviation from `m`), robust
//!    CV `= 1.4826 * MAD / m`, and *drift*: with at least [`MIN_DRIFT_SAMPLES`] samples, the
//!    samples in measurement order are split into a first and a second half of `floor(n/2)`
//!    samples each (for odd `n` the middle sample is in neither) and
//!    `drift = median(second half) / median(first half) - 1` (signed; 0 with fewer samples).
//! 3. **Noise.** A run with robust CV > `max_cv` (10%) or `|drift|` > `max_drift` (10%) is
//!    [`Verdict::Noisy`]: its median cannot be trusted either way. A *deterministic* metric (at
//!    least two samples, all equal, so MAD = 0) skips this step.
//! 4. **History rule**, once the window holds `k >= min_history` (5) accepted runs, the window
//!    being the last `k_window` (30) history medians. In log space, `y = ln m`, `ybar` and `s` are
//!    the mean and sample standard deviation of the logs of the window (`s` floored at
//!    `sd_floor = ln 1.01`), `z = (y - ybar) / (s * sqrt(1 + 1/k))` (a prediction interval for one
//!    new observation) and `change = m / exp(ybar) - 1`. For lower-is-better metrics the run is a
//!    regression when `z > t(confidence, k-1)` **and** `change > min_effect` (5%), an improvement
//!    when `z < -t` and `change < -min_effect`; higher-is-better metrics mirror both signs. With
//!    `k >= min_history` the history rule decides, with two additions when it says pass:
//!    * **Slow drift against the pinned anchor** (rule `anchor-drift`): if the `initial` anchor is
//!      present and `m` is outside `initial_tolerance` of it, the verdict is regression (or
//!      improvement). A history that creeps up by 2% a week never looks unusual to itself; the
//!      pinned anchor catches it.
//!    * **Above tolerance but within noise** (rule `noise`): if the `baseline` anchor alone would
//!      say regression or improvement but `|z| <= t` (the change is inside the history's
//!      prediction interval), the verdict is [`Verdict::Noisy`], not pass.
//!
//!    A change that is statistically clear (`|z| > t`) but smaller than `min_effect` passes, even
//!    if it is outside `baseline_tolerance`: with enough history, `min_effect` is the effect size
//!    that matters.
//! 5. **Tolerance rule**, the fallback with fewer than `min_history` runs (and the only rule for a
//!    deterministic metric that has an anchor): `|m/initial - 1| <= initial_tolerance` and
//!    `|m/baseline - 1| <= baseline_tolerance` pass; outside either, the side (slower or faster,
//!    mirrored for higher-is-better) gives regression or improvement. If one anchor says
//!    regression and the other improvement, regression wins. With neither anchor the verdict is
//!    [`Verdict::NoBaseline`] (a deterministic metric with no anchor but enough history still
//!    uses the history rule; its `s` is then the floor, so nothing divides by zero).
//!
//! A value exactly at a limit passes (comparisons allow a relative slack of `1e-12` so that
//! `1.2 / 1.0 - 1 = 0.19999999999999996` against a 20% tolerance does not depend on rounding).
//!
//! # Confirmation and operators
//!
//! Every regression from [`judge`] comes with `needs_confirmation = true`: the caller re-runs the
//! case once and calls [`confirm`], which reports regression only if the re-run is a regression
//! too, else noisy. Improvements need no confirmation.
//!
//! [`compare_operators`] compares the run's top-N operators (by total time) with the baseline's
//! top-N: operators missing from or new in the run's top-N are listed, and an operator in both
//! whose time moved by more than the operator tolerance (either way) makes the case a
//! regression; [`with_operators`] folds such a report into a metric's judgement.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Scale that makes the MAD a consistent estimator of the standard deviation for normal data.
pub const ROBUST_CV_SCALE: f64 = 1.4826;
/// Default number of most recent accepted runs the history rule looks at.
pub const DEFAULT_K_WINDOW: usize = 30;
/// Default number of accepted runs from which on the history rule decides.
pub const DEFAULT_MIN_HISTORY: usize = 5;
/// Default smallest change (fraction) the history rule reports.
pub const DEFAULT_MIN_EFFECT: f64 = 0.05;
/// Default largest robust CV (fraction) of a run that is not noisy.
pub const DEFAULT_MAX_CV: f64 = 0.10;
/// Default largest `|drift|` (fraction) between the halves of a run that is not noisy.
pub const DEFAULT_MAX_DRIFT: f64 = 0.10;
/// Fewest samples for which drift is computed; below this drift is 0.
pub const MIN_DRIFT_SAMPLES: usize = 4;
/// Default one-sided confidence of the history rule's t quantile.
pub const DEFAULT_CONFIDENCE: f64 = 0.99;
/// Default floor for the history's standard deviation in log space: `ln 1.01`.
pub const DEFAULT_SD_FLOOR: f64 = 0.009_950_330_853_168_092;
/// Relative slack in limit comparisons, so that a value exactly at a limit passes.
const LIMIT_SLACK: f64 = 1e-12;

/// Name of the rule that decided: the tolerance anchors.
pub const RULE_TOLERANCE: &str = "tolerance";
/// Name of the rule that decided: the history of accepted runs.
pub const RULE_HISTORY: &str = "history";
/// Name of the rule that decided: the pinned initial anchor overruling a passing history.
pub const RULE_ANCHOR_DRIFT: &str = "anchor-drift";
/// Name of the rule that decided: spread or drift of the run, or a change within the noise.
pub const RULE_NOISE: &str = "noise";
/// Name of the rule that decided: the operator comparison.
pub const RULE_OPERATORS: &str = "operators";
/// Name of the rule that decided: nothing to compare against.
pub const RULE_NONE: &str = "none";
/// Name of the rule that decided: invalid input (samples, baseline or rules).
pub const RULE_INPUT: &str = "input";

/// Why a set of samples, a baseline or a set of rules cannot be judged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VerdictError {
    #[error("no samples")]
    Empty,
    #[error("sample {index} is not finite ({value})")]
    NonFinite { index: usize, value: f64 },
    #[error("sample {index} is not positive ({value})")]
    NonPositive { index: usize, value: f64 },
    #[error("invalid baseline: {0}")]
    InvalidBaseline(String),
    #[error("invalid rules: {0}")]
    InvalidRules(String),
}

/// Summary of one run's post-warmup samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    /// Median absolute deviation from the median.
    pub mad: f64,
    /// `1.4826 * mad / median`.
    pub robust_cv: f64,
    /// `median(second half) / median(first half) - 1`, 0 with fewer than [`MIN_DRIFT_SAMPLES`].
    pub drift: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// At least two samples, all equal: a metric with no spread at all (counts, sizes).
    pub fn is_deterministic(&self) -> bool {
        self.n >= 2 && self.min == self.max
    }
}

/// Summarizes post-warmup samples, given in measurement order (the order matters for drift).
/// Samples must be non-empty, finite and strictly positive.
pub fn summarize(samples: &[f64]) -> Result<Summary, VerdictError> {
    if samples.is_empty() {
        return Err(VerdictError::Empty);
    }
    for (index, &value) in samples.iter().enumerate() {
        if !value.is_finite() {
            return Err(VerdictError::NonFinite { index, value });
        }
        if value <= 0.0 {
            return Err(VerdictError::NonPositive { index, value });
        }
    }
    let median = median_of(samples);
    let deviations: Vec<f64> = samples.iter().map(|v| (v - median).abs()).collect();
    let mad = median_of(&deviations);
    let n = samples.len();
    let drift = if n >= MIN_DRIFT_SAMPLES {
        let half = n / 2;
        median_of(&samples[n - half..]) / median_of(&samples[..half]) - 1.0
    } else {
        0.0
    };
    Ok(Summary {
        n,
        median,
        mad,
        robust_cv: ROBUST_CV_SCALE * mad / median,
        drift,
        min: samples.iter().copied().fold(f64::INFINITY, f64::min),
        max: samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// Median of a slice of finite numbers (mean of the middle two for even length; 0 when empty).
pub fn median_of(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Which way is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Times, memory: a larger value is a regression.
    #[default]
    LowerIsBetter,
    /// Throughput: a smaller value is a regression.
    HigherIsBetter,
}

impl Direction {
    /// +1 when a larger value is worse, -1 when a smaller value is worse.
    fn worse_sign(self) -> f64 {
        match self {
            Direction::LowerIsBetter => 1.0,
            Direction::HigherIsBetter => -1.0,
        }
    }
}

/// A reference value with the relative tolerance allowed around it (0.2 = 20%).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anchor {
    pub value: f64,
    pub tolerance: f64,
}

/// What is known about a case's metric before this run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Baseline {
    /// The pinned anchor (`initial` and `initial_tolerance` of the case file).
    pub initial: Option<Anchor>,
    /// The movable anchor (`baseline` and `baseline_tolerance` of the case file).
    pub baseline: Option<Anchor>,
    /// Medians of earlier accepted runs, oldest first.
    #[serde(default)]
    pub history: Vec<f64>,
    /// Run ids of `history`, same order; the ids of the window end up in the explanation.
    #[serde(default)]
    pub history_ids: Vec<String>,
}

/// Thresholds of the judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    /// How many of the most recent accepted runs the history rule uses (K).
    pub k_window: usize,
    /// From how many accepted runs in the window on the history rule decides.
    pub min_history: usize,
    /// Smallest relative change the history rule reports as regression or improvement.
    pub min_effect: f64,
    /// Largest robust CV of a run that is not noisy.
    pub max_cv: f64,
    /// Largest `|drift|` of a run that is not noisy.
    pub max_drift: f64,
    /// One-sided confidence of the t quantile.
    pub confidence: f64,
    /// Floor of the history's standard deviation in log space.
    pub sd_floor: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            k_window: DEFAULT_K_WINDOW,
            min_history: DEFAULT_MIN_HISTORY,
            min_effect: DEFAULT_MIN_EFFECT,
            max_cv: DEFAULT_MAX_CV,
            max_drift: DEFAULT_MAX_DRIFT,
            confidence: DEFAULT_CONFIDENCE,
            sd_floor: DEFAULT_SD_FLOOR,
        }
    }
}

impl Rules {
    fn validate(&self) -> Result<(), VerdictError> {
        let bad = |what: &str| Err(VerdictError::InvalidRules(what.to_string()));
        if self.min_history < 2 {
            return bad("min_history must be at least 2 (the t quantile needs k - 1 >= 1)");
        }
        if self.k_window < self.min_history {
            return bad("k_window must be at least min_history");
        }
        if !(self.confidence > 0.5 && self.confidence < 1.0) {
            return bad("confidence must be in (0.5, 1)");
        }
        for (name, v) in [
            ("min_effect", self.min_effect),
            ("max_cv", self.max_cv),
            ("max_drift", self.max_drift),
            ("sd_floor", self.sd_floor),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(VerdictError::InvalidRules(format!(
                    "{name} must be finite and not negative ({v})"
                )));
            }
        }
        Ok(())
    }
}

/// The verdict on one metric of one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Regression,
    Improvement,
    NoBaseline,
    Noisy,
    Error,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Regression => "regression",
            Verdict::Improvement => "improvement",
            Verdict::NoBaseline => "no_baseline",
            Verdict::Noisy => "noisy",
            Verdict::Error => "error",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a verdict was reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The run's median (0 when the samples could not be summarized).
    pub value: f64,
    /// The reference the value was compared with: the deciding anchor's value, or the geometric
    /// mean `exp(ybar)` of the history window for the history rule.
    pub baseline: Option<f64>,
    /// `(value / baseline - 1) * 100`.
    pub delta_pct: Option<f64>,
    /// The limit that applied, e.g. `baseline_tolerance 20%` or
    /// `z > t(0.99,4)=3.747 and delta > +5%`.
    pub limit: String,
    /// The history rule's z, when it was computed.
    pub z: Option<f64>,
    /// The t quantile the z was compared with.
    pub t_limit: Option<f64>,
    /// Runs of history in the window (`min(history.len(), k_window)`).
    pub k: usize,
    /// The run's robust CV.
    pub spread_cv: f64,
    /// The run's drift between its halves.
    pub drift: f64,
    /// Ids of the history runs the history rule used.
    pub baseline_run_ids: Vec<String>,
    /// `tolerance`, `history`, `anchor-drift`, `noise`, `operators`, `none` or `input`.
    pub rule: String,
    /// One readable sentence.
    pub message: String,
}

/// A verdict with its explanation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub verdict: Verdict,
    /// Set on regressions: re-run the case once and pass both judgements to [`confirm`].
    pub needs_confirmation: bool,
    pub explanation: Explanation,
}

/// Where a value lies relative to a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Worse,
    Better,
    Within,
}

/// One anchor compared with the run's median.
#[derive(Debug, Clone)]
struct AnchorEval {
    name: &'static str,
    value: f64,
    tolerance: f64,
    /// `m / value - 1`.
    delta: f64,
    side: Side,
}

impl AnchorEval {
    fn new(name: &'static str, anchor: &Anchor, m: f64, dir: Direction) -> Self {
        let delta = m / anchor.value - 1.0;
        let signed = dir.worse_sign() * delta;
        let limit = anchor.tolerance + LIMIT_SLACK;
        let side = if signed > limit {
            Side::Worse
        } else if signed < -limit {
            Side::Better
        } else {
            Side::Within
        };
        AnchorEval {
            name,
            value: anchor.value,
            tolerance: anchor.tolerance,
            delta,
            side,
        }
    }

    /// How far past its tolerance the value is, in the direction of its side.
    fn excess(&self) -> f64 {
        self.delta.abs() - self.tolerance
    }

    fn limit(&self) -> String {
        format!("{}_tolerance {}%", self.name, num(self.tolerance * 100.0))
    }

    fn describe(&self) -> String {
        format!(
            "{} against {} {} ({})",
            pct(self.delta),
            self.name,
            num(self.value),
            self.limit()
        )
    }
}

/// The history rule's numbers.
#[derive(Debug, Clone)]
struct HistoryEval {
    k: usize,
    z: f64,
    t: f64,
    /// `exp(ybar)`.
    reference: f64,
    /// `m / exp(ybar) - 1`.
    change: f64,
    side: Side,
    /// `|z| <= t`: the run lies inside the history's prediction interval.
    within_interval: bool,
    ids: Vec<String>,
    confidence: f64,
    min_effect: f64,
    dir: Direction,
}

impl HistoryEval {
    fn new(m: f64, window: &[f64], ids: Vec<String>, dir: Direction, rules: &Rules) -> Self {
        let k = window.len();
        let kf = k as f64;
        let logs: Vec<f64> = window.iter().map(|v| v.ln()).collect();
        let ybar = logs.iter().sum::<f64>() / kf;
        let var = logs.iter().map(|y| (y - ybar).powi(2)).sum::<f64>() / (kf - 1.0);
        let s = var.sqrt().max(rules.sd_floor);
        // A zero floor with a constant history would divide by zero; keep a positive scale.
        let s = if s > 0.0 { s } else { f64::MIN_POSITIVE };
        let z = (m.ln() - ybar) / (s * (1.0 + 1.0 / kf).sqrt());
        let t = t_quantile(rules.confidence, kf - 1.0);
        let reference = ybar.exp();
        let change = m / reference - 1.0;
        let sign = dir.worse_sign();
        let effect = rules.min_effect + LIMIT_SLACK;
        let side = if sign * z > t && sign * change > effect {
            Side::Worse
        } else if sign * z < -t && sign * change < -effect {
            Side::Better
        } else {
            Side::Within
        };
        HistoryEval {
            k,
            z,
            t,
            reference,
            change,
            side,
            within_interval: z.abs() <= t,
            ids,
            confidence: rules.confidence,
            min_effect: rules.min_effect,
            dir,
        }
    }

    fn t_label(&self) -> String {
        format!("t({},{})={:.3}", num(self.confidence), self.k - 1, self.t)
    }

    /// The limit on the worse side (`worse`) or the better side.
    fn limit(&self, side: Side) -> String {
        let effect = num(self.min_effect * 100.0);
        let t = self.t_label();
        let worse_is_up = self.dir == Direction::LowerIsBetter;
        match side {
            Side::Within => format!("|z| > {t} and |delta| > {effect}%"),
            s if (s == Side::Worse) == worse_is_up => {
                format!("z > {t} and delta > +{effect}%")
            }
            _ => format!("z < -{t} and delta < -{effect}%"),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} against the geometric mean {} of {} accepted runs (z={:.2}, {})",
            pct(self.change),
            num(self.reference),
            self.k,
            self.z,
            self.t_label()
        )
    }
}

/// Judges one metric's post-warmup samples against its baseline. See the module documentation
/// for the exact rules; this never panics.
pub fn judge(samples: &[f64], dir: Direction, base: &Baseline, rules: &Rules) -> Judgement {
    if let Err(e) = rules.validate() {
        return error_judgement(None, &e);
    }
    let summary = match summarize(samples) {
        Ok(s) => s,
        Err(e) => return error_judgement(None, &e),
    };
    let k = base.history.len().min(rules.k_window);
    let window = &base.history[base.history.len() - k..];
    if let Err(e) = validate_baseline(base, window) {
        return error_judgement(Some(&summary), &e);
    }
    let m = summary.median;
    let anchors: Vec<AnchorEval> = [("initial", &base.initial), ("baseline", &base.baseline)]
        .into_iter()
        .filter_map(|(name, a)| a.as_ref().map(|a| AnchorEval::new(name, a, m, dir)))
        .collect();
    let deterministic = summary.is_deterministic();
    // A deterministic metric with an anchor is judged by tolerance alone.
    let tolerance_only = deterministic && !anchors.is_empty();
    let history = (k >= rules.min_history && !tolerance_only).then(|| {
        let ids = base.history_ids[base.history_ids.len().saturating_sub(k)..].to_vec();
        HistoryEval::new(m, window, ids, dir, rules)
    });

    let mut ex = Explanation {
        value: m,
        baseline: None,
        delta_pct: None,
        limit: String::new(),
        z: None,
        t_limit: None,
        k,
        spread_cv: summary.robust_cv,
        drift: summary.drift,
        baseline_run_ids: Vec::new(),
        rule: String::new(),
        message: String::new(),
    };
    let m_txt = num(m);

    // Noise: a run whose own spread or drift is too large says nothing either way.
    if !deterministic {
        let cv_bad = summary.robust_cv > rules.max_cv + LIMIT_SLACK;
        let drift_bad = summary.drift.abs() > rules.max_drift + LIMIT_SLACK;
        if cv_bad || drift_bad {
            if let Some(h) = &history {
                fill_history(&mut ex, h);
            } else if let Some(a) = primary_anchor(&anchors) {
                fill_anchor(&mut ex, a);
            }
            ex.limit = format!(
                "robust CV <= {}% and |drift| <= {}%",
                num(rules.max_cv * 100.0),
                num(rules.max_drift * 100.0)
            );
            let mut why = Vec::new();
            if cv_bad {
                why.push(format!(
                    "robust CV {}% exceeds {}%",
                    num(summary.robust_cv * 100.0),
                    num(rules.max_cv * 100.0)
                ));
            }
            if drift_bad {
                why.push(format!(
                    "drift {} between the first and second half exceeds {}%",
                    pct(summary.drift),
                    num(rules.max_drift * 100.0)
                ));
            }
            ex.message = format!(
                "noisy: median {m_txt} of {} samples cannot be judged, {}",
                summary.n,
                why.join(" and ")
            );
            return finish(Verdict::Noisy, RULE_NOISE, ex);
        }
    }

    if let Some(h) = &history {
        fill_history(&mut ex, h);
        match h.side {
            Side::Worse | Side::Better => {
                let verdict = if h.side == Side::Worse {
                    Verdict::Regression
                } else {
                    Verdict::Improvement
                };
                ex.limit = h.limit(h.side);
                ex.message = format!("{verdict}: median {m_txt} is {}", h.describe());
                return finish(verdict, RULE_HISTORY, ex);
            }
            Side::Within => {}
        }
        // The history passes. The pinned anchor still catches a slow drift.
        if let Some(a) = anchors
            .iter()
            .find(|a| a.name == "initial" && a.side != Side::Within)
        {
            let verdict = side_verdict(a.side);
            fill_anchor(&mut ex, a);
            ex.limit = a.limit();
            ex.message = format!(
                "{verdict}: median {m_txt} is {}, although it is {} (the history has drifted)",
                a.describe(),
                h.describe()
            );
            return finish(verdict, RULE_ANCHOR_DRIFT, ex);
        }
        // Outside the movable anchor's tolerance but inside the history's noise.
        if let Some(a) = anchors
            .iter()
            .find(|a| a.name == "baseline" && a.side != Side::Within)
        {
            if h.within_interval {
                fill_anchor(&mut ex, a);
                ex.limit = format!("{} exceeded but |z| <= {}", a.limit(), h.t_label());
                ex.message = format!(
                    "noisy: median {m_txt} is {}, but {}, within the history's noise",
                    a.describe(),
                    h.describe()
                );
                return finish(Verdict::Noisy, RULE_NOISE, ex);
            }
            ex.limit = h.limit(Side::Within);
            ex.message = format!(
                "pass: median {m_txt} is {}, outside {} but below the minimum effect {}%",
                h.describe(),
                a.limit(),
                num(rules.min_effect * 100.0)
            );
            return finish(Verdict::Pass, RULE_HISTORY, ex);
        }
        ex.limit = h.limit(Side::Within);
        ex.message = format!("pass: median {m_txt} is {}", h.describe());
        return finish(Verdict::Pass, RULE_HISTORY, ex);
    }

    // Tolerance rule.
    let Some(primary) = primary_anchor(&anchors) else {
        ex.limit = format!("{} accepted runs", rules.min_history);
        ex.message = if k == 0 {
            format!("no_baseline: median {m_txt}, no anchor and no history to compare with")
        } else {
            format!(
                "no_baseline: median {m_txt}, no anchor and only {k} accepted runs of history \
                 (the history rule needs {})",
                rules.min_history
            )
        };
        return finish(Verdict::NoBaseline, RULE_NONE, ex);
    };
    let deciding = |side: Side| {
        anchors
            .iter()
            .filter(|a| a.side == side)
            .max_by(|a, b| a.excess().total_cmp(&b.excess()))
    };
    let (verdict, decider) = if let Some(a) = deciding(Side::Worse) {
        (Verdict::Regression, a)
    } else if let Some(a) = deciding(Side::Better) {
        (Verdict::Improvement, a)
    } else {
        (Verdict::Pass, primary)
    };
    fill_anchor(&mut ex, decider);
    ex.limit = if verdict == Verdict::Pass {
        anchors
            .iter()
            .map(AnchorEval::limit)
            .collect::<Vec<_>>()
            .join(" and ")
    } else {
        decider.limit()
    };
    let all = anchors
        .iter()
        .map(AnchorEval::describe)
        .collect::<Vec<_>>()
        .join(" and ");
    let why = if deterministic {
        " (deterministic metric, tolerance alone)"
    } else if k > 0 {
        " (too little history for the history rule)"
    } else {
        ""
    };
    ex.message = format!("{verdict}: median {m_txt} is {all}{why}");
    finish(verdict, RULE_TOLERANCE, ex)
}

fn validate_baseline(base: &Baseline, window: &[f64]) -> Result<(), VerdictError> {
    for (name, anchor) in [("initial", &base.initial), ("baseline", &base.baseline)] {
        if let Some(a) = anchor {
            if !(a.value.is_finite() && a.value > 0.0) {
                return Err(VerdictError::InvalidBaseline(format!(
                    "{name} value must be finite and positive ({})",
                    a.value
                )));
            }
            if !(a.tolerance.is_finite() && a.tolerance >= 0.0) {
                return Err(VerdictError::InvalidBaseline(format!(
                    "{name}_tolerance must be finite and not negative ({})",
                    a.tolerance
                )));
            }
        }
    }
    if let Some(v) = window.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
        return Err(VerdictError::InvalidBaseline(format!(
            "history median must be finite and positive ({v})"
        )));
    }
    Ok(())
}

/// The anchor reported when no anchor decides: the movable one, else the pinned one.
fn primary_anchor(anchors: &[AnchorEval]) -> Option<&AnchorEval> {
    anchors
        .iter()
        .find(|a| a.name == "baseline")
        .or_else(|| anchors.first())
}

fn side_verdict(side: Side) -> Verdict {
    match side {
        Side::Worse => Verdict::Regression,
        Side::Better => Verdict::Improvement,
        Side::Within => Verdict::Pass,
    }
}

fn fill_anchor(ex: &mut Explanation, a: &AnchorEval) {
    ex.baseline = Some(a.value);
    ex.delta_pct = Some(a.delta * 100.0);
}

fn fill_history(ex: &mut Explanation, h: &HistoryEval) {
    ex.baseline = Some(h.reference);
    ex.delta_pct = Some(h.change * 100.0);
    ex.z = Some(h.z);
    ex.t_limit = Some(h.t);
    ex.baseline_run_ids = h.ids.clone();
}

fn finish(verdict: Verdict, rule: &str, mut ex: Explanation) -> Judgement {
    ex.rule = rule.to_string();
    let needs_confirmation = verdict == Verdict::Regression;
    if needs_confirmation {
        ex.message.push_str("; needs a confirming re-run");
    }
    Judgement {
        verdict,
        needs_confirmation,
        explanation: ex,
    }
}

fn error_judgement(summary: Option<&Summary>, e: &VerdictError) -> Judgement {
    Judgement {
        verdict: Verdict::Error,
        needs_confirmation: false,
        explanation: Explanation {
            value: summary.map_or(0.0, |s| s.median),
            baseline: None,
            delta_pct: None,
            limit: String::new(),
            z: None,
            t_limit: None,
            k: 0,
            spread_cv: summary.map_or(0.0, |s| s.robust_cv),
            drift: summary.map_or(0.0, |s| s.drift),
            baseline_run_ids: Vec::new(),
            rule: RULE_INPUT.to_string(),
            message: format!("error: {e}"),
        },
    }
}

/// Combines a regression candidate with the judgement of its re-run: regression only if the
/// re-run is a regression too, else noisy (the explanation says it was not confirmed). The
/// numbers of the first judgement are kept. A `first` that needs no confirmation is returned
/// unchanged.
pub fn confirm(first: &Judgement, rerun: &Judgement) -> Judgement {
    if !(first.verdict == Verdict::Regression && first.needs_confirmation) {
        return first.clone();
    }
    let mut out = first.clone();
    out.needs_confirmation = false;
    let base_msg = first
        .explanation
        .message
        .trim_end_matches("; needs a confirming re-run")
        .to_string();
    let rerun_txt = match rerun.explanation.delta_pct {
        Some(d) => format!(
            "{} (median {}, {})",
            rerun.verdict,
            num(rerun.explanation.value),
            pct(d / 100.0)
        ),
        None => format!(
            "{} (median {})",
            rerun.verdict,
            num(rerun.explanation.value)
        ),
    };
    if rerun.verdict == Verdict::Regression {
        out.explanation.message = format!("{base_msg}; confirmed by a re-run: {rerun_txt}");
    } else {
        out.verdict = Verdict::Noisy;
        out.explanation.rule = RULE_NOISE.to_string();
        out.explanation.message = format!(
            "noisy: regression not confirmed, the re-run was {rerun_txt}; first run: {base_msg}"
        );
    }
    out
}

/// Time spent in one operator during a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorTime {
    pub name: String,
    pub total_time_s: f64,
    pub num_calls: u64,
}

/// The run's top-N operators against the baseline's top-N.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OperatorReport {
    /// In the baseline's top-N, not in the run's top-N (baseline order).
    pub missing: Vec<String>,
    /// In the run's top-N, not in the baseline's top-N (run order).
    pub new: Vec<String>,
    /// In both top-Ns with `|t / t_base - 1| > tolerance`: name and `t / t_base - 1`, largest
    /// move first.
    pub moved: Vec<(String, f64)>,
    /// Some operator moved: the case is a regression.
    pub regressed: bool,
    /// The operator tolerance that applied.
    pub tolerance: f64,
}

/// Compares the run's top `top_n` operators by total time with the baseline's. Entries with the
/// same name are added up; entries with a non-finite or negative time are ignored, and an
/// operator whose baseline time is 0 cannot move (no ratio).
pub fn compare_operators(
    run: &[OperatorTime],
    base: &[OperatorTime],
    top_n: usize,
    tolerance: f64,
) -> OperatorReport {
    let run_top = top_operators(run, top_n);
    let base_top = top_operators(base, top_n);
    let find =
        |list: &[(String, f64)], name: &str| list.iter().find(|(n, _)| n == name).map(|(_, t)| *t);
    let missing = base_top
        .iter()
        .filter(|(n, _)| find(&run_top, n).is_none())
        .map(|(n, _)| n.clone())
        .collect();
    let new = run_top
        .iter()
        .filter(|(n, _)| find(&base_top, n).is_none())
        .map(|(n, _)| n.clone())
        .collect();
    let mut moved: Vec<(String, f64)> = base_top
        .iter()
        .filter(|(_, tb)| *tb > 0.0)
        .filter_map(|(n, tb)| find(&run_top, n).map(|t| (n.clone(), t / tb - 1.0)))
        .filter(|(_, d)| d.abs() > tolerance + LIMIT_SLACK)
        .collect();
    moved.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then_with(|| a.0.cmp(&b.0)));
    OperatorReport {
        regressed: !moved.is_empty(),
        missing,
        new,
        moved,
        tolerance,
    }
}

/// The `n` operators with the largest total time (ties by name), duplicates added up.
fn top_operators(ops: &[OperatorTime], n: usize) -> Vec<(String, f64)> {
    let mut totals: BTreeMap<&str, f64> = BTreeMap::new();
    for op in ops
        .iter()
        .filter(|o| o.total_time_s.is_finite() && o.total_time_s >= 0.0)
    {
        *totals.entry(op.name.as_str()).or_insert(0.0) += op.total_time_s;
    }
    let mut list: Vec<(String, f64)> = totals
        .into_iter()
        .map(|(name, t)| (name.to_string(), t))
        .collect();
    list.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    list.truncate(n);
    list
}

/// Folds an operator comparison into a metric's judgement. Moved operators turn a pass,
/// improvement or no_baseline into a regression (rule `operators`, needing confirmation) and are
/// added to an existing regression's message; noisy and error judgements stay as they are (their
/// operator times are no more trustworthy than their medians). Missing and new operators are
/// only mentioned.
pub fn with_operators(judgement: Judgement, ops: &OperatorReport) -> Judgement {
    let mut out = judgement;
    let mut notes = Vec::new();
    if !ops.moved.is_empty() {
        let moved: Vec<String> = ops
            .moved
            .iter()
            .map(|(n, d)| format!("{n} {}", pct(*d)))
            .collect();
        notes.push(format!(
            "operators moved beyond {}%: {}",
            num(ops.tolerance * 100.0),
            moved.join(", ")
        ));
    }
    if !ops.missing.is_empty() {
        notes.push(format!("missing operators: {}", ops.missing.join(", ")));
    }
    if !ops.new.is_empty() {
        notes.push(format!("new operators: {}", ops.new.join(", ")));
    }
    if notes.is_empty() {
        return out;
    }
    let notes = notes.join("; ");
    let promote = ops.regressed
        && matches!(
            out.verdict,
            Verdict::Pass | Verdict::Improvement | Verdict::NoBaseline
        );
    if promote {
        let was = out.verdict;
        out.verdict = Verdict::Regression;
        out.needs_confirmation = true;
        out.explanation.rule = RULE_OPERATORS.to_string();
        out.explanation.limit = format!("operator_tolerance {}%", num(ops.tolerance * 100.0));
        out.explanation.message =
            format!("regression: {notes} (the metric alone was {was}); needs a confirming re-run");
    } else {
        out.explanation.message = format!("{}; {notes}", out.explanation.message);
    }
    out
}

/// Cumulative distribution function of Student's t with `df > 0` degrees of freedom.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if t >= 0.0 {
        1.0 - t_upper_tail(t, df)
    } else {
        t_upper_tail(-t, df)
    }
}

/// Quantile of Student's t: the `t` with `t_cdf(t, df) = p`, for `df > 0` (not necessarily an
/// integer). NaN for `p` outside `[0, 1]` or invalid `df`; -inf and +inf at 0 and 1.
///
/// Bisection on the upper tail `P(T > t) = I_x(df/2, 1/2) / 2` with `x = df / (df + t^2)`, the
/// regularized incomplete beta computed by its continued fraction (modified Lentz). Accurate to
/// about 1e-12 relative.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if p.is_nan() || df.is_nan() || df <= 0.0 || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    if p == 0.5 {
        return 0.0;
    }
    if p < 0.5 {
        return -t_quantile(1.0 - p, df);
    }
    let q = 1.0 - p;
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    while t_upper_tail(hi, df) > q {
        lo = hi;
        hi *= 2.0;
        if !hi.is_finite() {
            return f64::INFINITY;
        }
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi || hi - lo <= 1e-13 * hi {
            break;
        }
        if t_upper_tail(mid, df) > q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// `P(T > t)` for `t >= 0`.
fn t_upper_tail(t: f64, df: f64) -> f64 {
    let x = df / (df + t * t);
    0.5 * reg_inc_beta(df / 2.0, 0.5, x)
}

/// Regularized incomplete beta `I_x(a, b)` for `a, b > 0`.
fn reg_inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (-x).ln_1p();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

/// Continued fraction of the incomplete beta, modified Lentz.
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const MAX_ITER: usize = 100_000;
    const EPS: f64 = 1e-15;
    const TINY: f64 = 1e-300;
    let guard = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / guard(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..=MAX_ITER {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, n = 9; about 1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEF: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin().abs()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = COEF[0];
    for (i, c) in COEF.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// A number with 4 significant digits, without trailing zeros.
fn num(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return format!("{x}");
    }
    let p = 3 - x.abs().log10().floor() as i32;
    let rounded = if p >= 0 {
        let f = 10f64.powi(p);
        (x * f).round() / f
    } else {
        let f = 10f64.powi(-p);
        (x / f).round() * f
    };
    format!("{rounded}")
}

/// A signed percentage with one decimal, from a fraction: `+30.0%`.
fn pct(fraction: f64) -> String {
    format!("{:+.1}%", fraction * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn median_is_the_middle_or_the_mean_of_the_middle_two() {
        assert_eq!(median_of(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_of(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median_of(&[7.0]), 7.0);
        // The run summary of a metric without samples (run.rs) reads 0.
        assert_eq!(median_of(&[]), 0.0);
    }

    fn anchor(value: f64, tolerance: f64) -> Option<Anchor> {
        Some(Anchor { value, tolerance })
    }

    fn with_baseline(value: f64, tolerance: f64) -> Baseline {
        Baseline {
            baseline: anchor(value, tolerance),
            ..Baseline::default()
        }
    }

    fn with_history(history: &[f64]) -> Baseline {
        Baseline {
            history: history.to_vec(),
            history_ids: (0..history.len()).map(|i| format!("run-{i}")).collect(),
            ..Baseline::default()
        }
    }

    const LOW: Direction = Direction::LowerIsBetter;
    const HIGH: Direction = Direction::HigherIsBetter;

    #[test]
    fn sd_floor_constant_is_ln_1_01() {
        assert!(close(DEFAULT_SD_FLOOR, 1.01f64.ln(), 1e-17));
    }

    #[test]
    fn summary_odd_n() {
        // [1, 2, 4]: median 2; |x - 2| = [1, 0, 2] -> sorted [0, 1, 2], MAD 1;
        // robust CV = 1.4826 * 1 / 2 = 0.7413; n = 3 < 4 -> drift 0.
        let s = summarize(&[1.0, 2.0, 4.0]).unwrap();
        assert_eq!(s.n, 3);
        assert_eq!(s.median, 2.0);
        assert_eq!(s.mad, 1.0);
        assert!(close(s.robust_cv, 0.7413, 1e-12));
        assert_eq!(s.drift, 0.0);
        assert_eq!((s.min, s.max), (1.0, 4.0));
    }

    #[test]
    fn summary_even_n() {
        // [1, 2, 3, 10]: median (2 + 3) / 2 = 2.5; |x - 2.5| = [1.5, 0.5, 0.5, 7.5]
        // -> sorted [0.5, 0.5, 1.5, 7.5], MAD (0.5 + 1.5) / 2 = 1.0;
        // robust CV = 1.4826 / 2.5 = 0.59304.
        // Drift: halves [1, 2] (median 1.5) and [3, 10] (median 6.5): 6.5 / 1.5 - 1 = 3.3333.
        let s = summarize(&[1.0, 2.0, 3.0, 10.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert_eq!(s.mad, 1.0);
        assert!(close(s.robust_cv, 0.59304, 1e-12));
        assert!(close(s.drift, 10.0 / 3.0, 1e-12));
    }

    #[test]
    fn summary_odd_n_drift_skips_middle() {
        // [1, 1, 5, 2, 2]: halves [1, 1] and [2, 2] (the middle 5 is in neither): drift 2/1 - 1.
        let s = summarize(&[1.0, 1.0, 5.0, 2.0, 2.0]).unwrap();
        assert_eq!(s.drift, 1.0);
        assert_eq!(s.median, 2.0);
    }

    #[test]
    fn tolerance_pass() {
        // m = 1.05 (samples 1.04, 1.05, 1.06; MAD 0.01, CV 1.4%) vs baseline 1.0, tolerance 20%:
        // delta = 1.05 / 1.0 - 1 = +5% <= 20% -> pass.
        let j = judge(
            &[1.04, 1.05, 1.06],
            LOW,
            &with_baseline(1.0, 0.2),
            &Rules::default(),
        );
        assert_eq!(j.verdict, Verdict::Pass);
        assert!(!j.needs_confirmation);
        assert_eq!(j.explanation.rule, RULE_TOLERANCE);
        assert!(close(j.explanation.delta_pct.unwrap(), 5.0, 1e-9));
        assert_eq!(j.explanation.baseline, Some(1.0));
        assert_eq!(j.explanation.limit, "baseline_tolerance 20%");
        assert_eq!(j.explanation.k, 0);
    }

    #[test]
    fn tolerance_regression() {
        // m = 1.30 vs 1.0: delta +30% > 20% and slower -> regression, needs confirmation.
        let j = judge(
            &[1.29, 1.30, 1.31],
            LOW,
            &with_baseline(1.0, 0.2),
            &Rules::default(),
        );
        assert_eq!(j.verdict, Verdict::Regression);
        assert!(j.needs_confirmation);
        assert!(close(j.explanation.delta_pct.unwrap(), 30.0, 1e-9));
        assert_eq!(j.explanation.limit, "baseline_tolerance 20%");
        assert!(
            j.explanation.message.contains("+30.0%"),
            "{}",
            j.explanation.message
        );
    }

    #[test]
    fn tolerance_improvement() {
        // m = 0.70 vs 1.0: delta -30% < -20% and faster -> improvement, no confirmation.
        let j = judge(
            &[0.69, 0.70, 0.71],
            LOW,
            &with_baseline(1.0, 0.2),
            &Rules::default(),
        );
        assert_eq!(j.verdict, Verdict::Improvement);
        assert!(!j.needs_confirmation);
        assert!(close(j.explanation.delta_pct.unwrap(), -30.0, 1e-9));
    }

    #[test]
    fn exactly_at_tolerance_passes() {
        // 1.2 / 1.0 - 1 = 0.19999999999999996 in floating point; exactly 20% passes either way.
        let j = judge(&[1.2], LOW, &with_baseline(1.0, 0.2), &Rules::default());
        assert_eq!(j.verdict, Verdict::Pass);
    }

    #[test]
    fn initial_anchor_rule_without_history() {
        // m = 1.15: vs baseline 1.15 (tol 20%) 0%; vs initial 1.0 (tol 10%) +15% > 10%
        // -> regression decided by the initial anchor.
        let base = Baseline {
            initial: anchor(1.0, 0.10),
            baseline: anchor(1.15, 0.20),
            ..Baseline::default()
        };
        let j = judge(&[1.14, 1.15, 1.16], LOW, &base, &Rules::default());
        assert_eq!(j.verdict, Verdict::Regression);
        assert_eq!(j.explanation.rule, RULE_TOLERANCE);
        assert_eq!(j.explanation.baseline, Some(1.0));
        assert_eq!(j.explanation.limit, "initial_tolerance 10%");
        assert!(close(j.explanation.delta_pct.unwrap(), 15.0, 1e-9));
        // Both within: both limits are listed.
        let j = judge(&[1.05], LOW, &base, &Rules::default());
        assert_eq!(j.verdict, Verdict::Pass);
        assert_eq!(
            j.explanation.limit,
            "initial_tolerance 10% and baseline_tolerance 20%"
        );
    }

    #[test]
    fn conflicting_anchors_regression_wins() {
        // initial 1.0 +-10%, baseline 2.0 +-10%, m = 1.5: +50% vs initial (worse), -25% vs
        // baseline (better) -> regression.
        let base = Baseline {
            initial: anchor(1.0, 0.10),
            baseline: anchor(2.0, 0.10),
            ..Baseline::default()
        };
        let j = judge(&[1.5], LOW, &base, &Rules::default());
        assert_eq!(j.verdict, Verdict::Regression);
        assert_eq!(j.explanation.baseline, Some(1.0));
    }

    #[test]
    fn higher_is_better_tolerance_mirrored() {
        // Throughput 80 vs 100 (tol 10%): -20%, lower throughput -> regression.
        let j = judge(&[80.0], HIGH, &with_baseline(100.0, 0.1), &Rules::default());
        assert_eq!(j.verdict, Verdict::Regression);
        assert!(close(j.explanation.delta_pct.unwrap(), -20.0, 1e-9));
        // 120 vs 100: +20% -> improvement.
        let j = judge(
            &[120.0],
            HIGH,
            &with_baseline(100.0, 0.1),
            &Rules::default(),
        );
        assert_eq!(j.verdict, Verdict::Improvement);
        // 105 vs 100: +5% -> pass.
        let j = judge(
            &[105.0],
            HIGH,
            &with_baseline(100.0, 0.1),
            &Rules::default(),
        );
        assert_eq!(j.verdict, Verdict::Pass);
    }

    /// History [1.00, 1.02, 0.98, 1.01, 0.99], k = 5:
    /// ln = [0, 0.0198026, -0.0202027, 0.0099503, -0.0100503], sum = -0.00050009,
    /// ybar = -0.00010002, exp(ybar) = 0.99990;
    /// sum of squared deviations = 0.00100026, s^2 = 0.00100026 / 4 = 0.00025007,
    /// s = 0.0158135 (> floor ln 1.01 = 0.00995); se = s * sqrt(1 + 1/5) = 0.0158135 * 1.095445
    /// = 0.0173228; t(0.99, 4) = 3.747.
    const HIST5: [f64; 5] = [1.00, 1.02, 0.98, 1.01, 0.99];

    #[test]
    fn history_rule_regression_candidate() {
        // m = 1.30: y = ln 1.30 = 0.262364; z = (0.262364 + 0.000100) / 0.0173228 = 15.151
        // > 3.747; change = 1.30 / 0.99990 - 1 = +30.01% > 5% -> regression candidate.
        let j = judge(&[1.30], LOW, &with_history(&HIST5), &Rules::default());
        assert_eq!(j.verdict, Verdict::Regression);
        assert!(j.needs_confirmation);
        assert_eq!(j.explanation.rule, RULE_HISTORY);
        assert_eq!(j.explanation.k, 5);
        assert!(close(j.explanation.z.unwrap(), 15.1514, 1e-3));
        assert!(close(j.explanation.t_limit.unwrap(), 3.7469, 1e-3));
        assert!(close(j.explanation.delta_pct.unwrap(), 30.013, 1e-2));
        assert!(close(j.explanation.baseline.unwrap(), 0.99990, 1e-5));
        assert_eq!(j.explanation.limit, "z > t(0.99,4)=3.747 and delta > +5%");
        assert_eq!(j.explanation.baseline_run_ids.len(), 5);
    }

    #[test]
    fn history_rule_pass() {
        // m = 1.03: y = 0.0295588; z = (0.0295588 + 0.0001000) / 0.0173228 = 1.712 < 3.747
        // (and change +3.01% < 5%) -> pass.
        let j = judge(&[1.03], LOW, &with_history(&HIST5), &Rules::default());
        assert_eq!(j.verdict, Verdict::Pass);
        assert_eq!(j.explanation.rule, RULE_HISTORY);
        assert!(close(j.explanation.z.unwrap(), 1.7121, 1e-3));
        assert!(close(j.explanation.delta_pct.unwrap(), 3.0103, 1e-3));
    }

    #[test]
    fn history_rule_higher_is_better_mirrored() {
        // History [100, 102, 98, 101, 99] is HIST5 scaled by 100: same s, se = 0.0173228,
        // exp(ybar) = 99.990. m = 70: z = (ln 70 - ln 99.990) / se = -20.58 < -3.747 and
        // change -29.99% < -5% -> throughput dropped: regression.
        let h = [100.0, 102.0, 98.0, 101.0, 99.0];
        let j = judge(&[70.0], HIGH, &with_history(&h), &Rules::default());
        assert_eq!(j.verdict, Verdict::Regression);
        assert!(close(j.explanation.z.unwrap(), -20.584, 1e-2));
        assert_eq!(j.explanation.limit, "z < -t(0.99,4)=3.747 and delta < -5%");
        // m = 130: z = +15.15, change +30.01% -> improvement.
        let j = judge(&[130.0], HIGH, &with_history(&h), &Rules::default());
        assert_eq!(j.verdict, Verdict::Improvement);
        // The same 130 on a lower-is-better metric is a regression.
        let j = judge(&[130.0], LOW, &with_history(&h), &Rules::default());
        assert_eq!(j.verdict, Verdict::Regression);
    }

    #[test]
    fn history_uses_last_k_window_runs() {
        // 10 old runs at 2.0, then HIST5; with k_window 5 only HIST5 counts -> same z as above.
        let mut h = vec![2.0; 10];
        h.extend_from_slice(&HIST5);
        let rules = Rules {
            k_window: 5,
            ..Rules::default()
        };
        let j = judge(&[1.03], LOW, &with_history(&h), &rules);
        assert_eq!(j.explanation.k, 5);
        assert!(close(j.explanation.z.unwrap(), 1.7121, 1e-3));
        let ids: Vec<String> = (10..15).map(|i| format!("run-{i}")).collect();
        assert_eq!(j.explanation.baseline_run_ids, ids);
    }

    #[test]
    fn too_little_history_falls_back_to_tolerance() {
        // 4 runs < 5: tolerance decides. Without anchors: no_baseline.
        let j = judge(&[1.30], LOW, &with_history(&HIST5[..4]), &Rules::default());
        assert_eq!(j.verdict, Verdict::NoBaseline);
        assert_eq!(j.explanation.k, 4);
        let mut base = with_history(&HIST5[..4]);
        base.baseline = anchor(1.0, 0.2);
        let j = judge(&[1.30], LOW, &base, &Rules::default());
        assert_eq!(j.verdict, Verdict::Regression);
        assert_eq!(j.explanation.rule, RULE_TOLERANCE);
    }

    #[test]
    fn no_baseline_without_anchor_or_history() {
        let j = judge(&[1.0, 1.1], LOW, &Baseline::default(), &Rules::default());
        assert_eq!(j.verdict, Verdict::NoBaseline);
        assert_eq!(j.explanation.rule, RULE_NONE);
        assert!(!j.needs_confirmation);
    }

    #[test]
    fn anchor_drift_overrules_passing_history() {
        // History crept up: [1.10, 1.12, 1.13, 1.14, 1.15], exp(ybar) = 1.12787,
        // s = 0.017107, se = 0.017107 * 1.095445 = 0.018740.
        // m = 1.16: z = (ln 1.16 - 0.120329) / 0.018740 = 1.499 < 3.747 -> history passes;
        // but vs pinned initial 1.0 (tol 10%): +16% -> regression by anchor drift.
        let mut base = with_history(&[1.10, 1.12, 1.13, 1.14, 1.15]);
        base.initial = anchor(1.0, 0.10);
        let j = judge(&[1.16], LOW, &base, &Rules::default());
        assert_eq!(j.verdict, Verdict::Regression);
        assert!(j.needs_confirmation);
        assert_eq!(j.explanation.rule, RULE_ANCHOR_DRIFT);
        assert_eq!(j.explanation.baseline, Some(1.0));
        assert!(close(j.explanation.delta_pct.unwrap(), 16.0, 1e-9));
        assert!(close(j.explanation.z.unwrap(), 1.499, 1e-3));
        // With a wider pinned tolerance (20%) it passes.
        base.initial = anchor(1.0, 0.20);
        let j = judge(&[1.16], LOW, &base, &Rules::default());
        assert_eq!(j.verdict, Verdict::Pass);
        assert_eq!(j.explanation.rule, RULE_HISTORY);
    }

    #[test]
    fn above_tolerance_within_noise_is_noisy() {
        // History with large spread [0.8, 1.2, 0.9, 1.1, 1.0]:
        // ln = [-0.223144, 0.182322, -0.105361, 0.095310, 0], ybar = -0.010174,
        // s = 0.160235, se = 0.160235 * 1.095445 = 0.175529.
        // m = 1.25 (samples 1.24, 1.25, 1.26): vs baseline 1.0 (tol 20%) +25% -> tolerance
        // alone says regression; z = (0.223144 + 0.010174) / 0.175529 = 1.329 <= 3.747 -> the
        // change is within the history's noise -> noisy.
        let mut base = with_history(&[0.8, 1.2, 0.9, 1.1, 1.0]);
        base.baseline = anchor(1.0, 0.2);
        let j = judge(&[1.24, 1.25, 1.26], LOW, &base, &Rules::default());
        assert_eq!(j.verdict, Verdict::Noisy);
        assert_eq!(j.explanation.rule, RULE_NOISE);
        assert!(close(j.explanation.z.unwrap(), 1.3292, 1e-3));
        assert!(close(j.explanation.delta_pct.unwrap(), 25.0, 1e-9));
        assert!(!j.needs_confirmation);
    }

    #[test]
    fn significant_but_below_min_effect_passes() {
        // History [1, 1, 1, 1, 1]: s = 0 floored to ln 1.01 = 0.0099503, se = 0.0109001.
        // m = 1.04: z = ln 1.04 / 0.0109001 = 0.0392207 / 0.0109001 = 3.598 < 3.747: pass.
        // m = 1.045: z = 0.0440169 / 0.0109001 = 4.038 > 3.747 but change 4.5% < 5%: pass even
        // though outside a 2% baseline tolerance.
        let mut base = with_history(&[1.0; 5]);
        base.baseline = anchor(1.0, 0.02);
        let j = judge(&[1.045], LOW, &base, &Rules::default());
        assert!(close(j.explanation.z.unwrap(), 4.0382, 1e-3));
        assert_eq!(j.verdict, Verdict::Pass);
        assert_eq!(j.explanation.rule, RULE_HISTORY);
        // m = 1.06: z = 0.0582689 / 0.0109001 = 5.346, change 6% > 5%: regression.
        let j = judge(&[1.06], LOW, &base, &Rules::default());
        assert_eq!(j.verdict, Verdict::Regression);
        assert_eq!(j.explanation.rule, RULE_HISTORY);
    }

    #[test]
    fn noisy_by_cv() {
        // [1.0, 1.2, 0.8, 1.1, 0.9]: median 1.0; |x - 1| = [0, 0.2, 0.2, 0.1, 0.1]
        // -> sorted [0, 0.1, 0.1, 0.2, 0.2], MAD 0.1; robust CV = 0.14826 > 10% -> noisy.
        // Drift: [1.0, 1.2] (1.1) vs [1.1, 0.9] (1.0): 1.0 / 1.1 - 1 = -9.1%, within 10%.
        let s = summarize(&[1.0, 1.2, 0.8, 1.1, 0.9]).unwrap();
        assert!(close(s.robust_cv, 0.14826, 1e-9));
        assert!(close(s.drift, -1.0 / 11.0, 1e-9));
        let j = judge(
            &[1.0, 1.2, 0.8, 1.1, 0.9],
            LOW,
            &with_baseline(1.0, 0.2),
            &Rules::default(),
        );
        assert_eq!(j.verdict, Verdict::Noisy);
        assert_eq!(j.explanation.rule, RULE_NOISE);
        assert!(j.explanation.message.contains("robust CV"));
        assert!(!j.explanation.message.contains("drift"));
    }

    #[test]
    fn noisy_by_drift() {
        // [1.0 x4, 1.12 x4]: median 1.06, every |x - 1.06| = 0.06, MAD 0.06;
        // robust CV = 1.4826 * 0.06 / 1.06 = 8.39% <= 10%, but drift = 1.12 / 1.0 - 1 = +12%
        // > 10% -> noisy.
        let samples = [1.0, 1.0, 1.0, 1.0, 1.12, 1.12, 1.12, 1.12];
        let s = summarize(&samples).unwrap();
        assert!(close(s.robust_cv, 1.4826 * 0.06 / 1.06, 1e-9));
        assert!(close(s.drift, 0.12, 1e-9));
        let j = judge(&samples, LOW, &with_baseline(1.0, 0.2), &Rules::default());
        assert_eq!(j.verdict, Verdict::Noisy);
        assert!(j.explanation.message.contains("drift"));
        assert!(close(j.explanation.drift, 0.12, 1e-9));
    }

    #[test]
    fn deterministic_metric_judged_by_tolerance_alone() {
        // [42, 42, 42] vs 40 (tol 2%): +5% -> regression by tolerance, although the history
        // [30, 50, 35, 45, 40] is so spread that the history rule would call it noise.
        let mut base = with_history(&[30.0, 50.0, 35.0, 45.0, 40.0]);
        base.baseline = anchor(40.0, 0.02);
        let j = judge(&[42.0, 42.0, 42.0], LOW, &base, &Rules::default());
        assert_eq!(j.verdict, Verdict::Regression);
        assert_eq!(j.explanation.rule, RULE_TOLERANCE);
        assert_eq!(j.explanation.z, None);
        assert_eq!(j.explanation.spread_cv, 0.0);
        // Tolerance 10%: +5% passes.
        base.baseline = anchor(40.0, 0.10);
        let j = judge(&[42.0, 42.0, 42.0], LOW, &base, &Rules::default());
        assert_eq!(j.verdict, Verdict::Pass);
        // A non-deterministic run at the same median goes through the history rule -> noisy.
        base.baseline = anchor(40.0, 0.02);
        let j = judge(&[41.9, 42.0, 42.1], LOW, &base, &Rules::default());
        assert_eq!(j.verdict, Verdict::Noisy);
    }

    #[test]
    fn deterministic_metric_without_anchor_uses_floored_history() {
        // Constant history [100 x5]: s = 0 -> floor; m = 100 exactly: z = 0 -> pass, no NaN.
        let j = judge(
            &[100.0, 100.0],
            LOW,
            &with_history(&[100.0; 5]),
            &Rules::default(),
        );
        assert_eq!(j.verdict, Verdict::Pass);
        assert_eq!(j.explanation.z, Some(0.0));
        // m = 110: z = ln 1.1 / 0.0109001 = 8.74, change 10% -> regression.
        let j = judge(
            &[110.0, 110.0],
            LOW,
            &with_history(&[100.0; 5]),
            &Rules::default(),
        );
        assert_eq!(j.verdict, Verdict::Regression);
    }

    #[test]
    fn bad_input_is_error_without_panic() {
        let rules = Rules::default();
        let base = with_baseline(1.0, 0.2);
        for samples in [
            &[][..],
            &[1.0, 0.0][..],
            &[1.0, -1.0][..],
            &[1.0, f64::NAN][..],
            &[f64::INFINITY][..],
            &[f64::NEG_INFINITY, 1.0][..],
        ] {
            let j = judge(samples, LOW, &base, &rules);
            assert_eq!(j.verdict, Verdict::Error, "{samples:?}");
            assert_eq!(j.explanation.rule, RULE_INPUT);
            assert!(j.explanation.message.starts_with("error: "));
            assert!(j.explanation.value.is_finite());
        }
        assert_eq!(summarize(&[]), Err(VerdictError::Empty));
        assert!(matches!(
            summarize(&[1.0, f64::NAN]),
            Err(VerdictError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            summarize(&[0.0]),
            Err(VerdictError::NonPositive { index: 0, .. })
        ));
        // Baseline 0, negative tolerance, NaN anchor, zero history median.
        for base in [
            with_baseline(0.0, 0.2),
            with_baseline(1.0, -0.1),
            with_baseline(f64::NAN, 0.2),
            with_history(&[1.0, 1.0, 0.0, 1.0, 1.0]),
            with_history(&[1.0, 1.0, f64::INFINITY, 1.0, 1.0]),
        ] {
            let j = judge(&[1.0], LOW, &base, &rules);
            assert_eq!(j.verdict, Verdict::Error, "{base:?}");
            assert!(j.explanation.message.contains("invalid baseline"));
        }
        // Invalid rules.
        let bad = Rules {
            min_history: 1,
            ..Rules::default()
        };
        assert_eq!(judge(&[1.0], LOW, &base, &bad).verdict, Verdict::Error);
        let bad = Rules {
            confidence: 1.0,
            ..Rules::default()
        };
        assert_eq!(judge(&[1.0], LOW, &base, &bad).verdict, Verdict::Error);
    }

    #[test]
    fn confirm_regression() {
        let base = with_baseline(1.0, 0.2);
        let rules = Rules::default();
        let first = judge(&[1.30], LOW, &base, &rules);
        assert!(first.needs_confirmation);
        let rerun = judge(&[1.28], LOW, &base, &rules);
        let c = confirm(&first, &rerun);
        assert_eq!(c.verdict, Verdict::Regression);
        assert!(!c.needs_confirmation);
        assert_eq!(c.explanation.value, 1.30);
        assert!(c.explanation.message.contains("confirmed by a re-run"));
        assert!(!c.explanation.message.contains("needs a confirming"));
    }

    #[test]
    fn confirm_not_confirmed_is_noisy() {
        let base = with_baseline(1.0, 0.2);
        let rules = Rules::default();
        let first = judge(&[1.30], LOW, &base, &rules);
        let rerun = judge(&[1.02], LOW, &base, &rules);
        assert_eq!(rerun.verdict, Verdict::Pass);
        let c = confirm(&first, &rerun);
        assert_eq!(c.verdict, Verdict::Noisy);
        assert!(!c.needs_confirmation);
        assert_eq!(c.explanation.rule, RULE_NOISE);
        assert!(
            c.explanation.message.contains("not confirmed"),
            "{}",
            c.explanation.message
        );
        // A re-run that errors does not confirm either.
        let c = confirm(&first, &judge(&[], LOW, &base, &rules));
        assert_eq!(c.verdict, Verdict::Noisy);
        // A first judgement that is no regression comes back unchanged.
        assert_eq!(confirm(&rerun, &first), rerun);
    }

    fn op(name: &str, t: f64) -> OperatorTime {
        OperatorTime {
            name: name.to_string(),
            total_time_s: t,
            num_calls: 1,
        }
    }

    #[test]
    fn operator_comparison() {
        // Base top 3: mm 10, conv 8, relu 2 (softmax 1 is 4th).
        // Run top 3: mm 13, conv 8.2, gelu 3 (relu 1.9 is 4th).
        // missing [relu], new [gelu]; mm 13 / 10 - 1 = +30% > 20% moved; conv 8.2 / 8 - 1 =
        // +2.5% not moved -> regressed.
        let base = [
            op("mm", 10.0),
            op("conv", 8.0),
            op("relu", 2.0),
            op("softmax", 1.0),
        ];
        let run = [
            op("mm", 13.0),
            op("conv", 8.2),
            op("gelu", 3.0),
            op("relu", 1.9),
        ];
        let r = compare_operators(&run, &base, 3, 0.2);
        assert_eq!(r.missing, vec!["relu".to_string()]);
        assert_eq!(r.new, vec!["gelu".to_string()]);
        assert_eq!(r.moved.len(), 1);
        assert_eq!(r.moved[0].0, "mm");
        assert!(close(r.moved[0].1, 0.3, 1e-12));
        assert!(r.regressed);

        // A faster operator beyond tolerance also moved (|delta|): conv 8 -> 5 = -37.5%.
        let run2 = [op("mm", 10.5), op("conv", 5.0), op("relu", 2.0)];
        let r2 = compare_operators(&run2, &base, 3, 0.2);
        assert_eq!(r2.moved, vec![("conv".to_string(), -0.375)]);
        assert!(r2.missing.is_empty() && r2.new.is_empty());

        // Duplicates add up; nothing moved -> not regressed.
        let run3 = [
            op("mm", 5.0),
            op("mm", 5.0),
            op("conv", 8.0),
            op("relu", 2.0),
        ];
        let r3 = compare_operators(&run3, &base, 3, 0.2);
        assert!(!r3.regressed && r3.moved.is_empty());
        assert!(
            compare_operators(&run, &base, 0, 0.2)
                == OperatorReport {
                    tolerance: 0.2,
                    ..OperatorReport::default()
                }
        );

        // Folded into a passing metric: regression by the operators rule.
        let pass = judge(&[1.0], LOW, &with_baseline(1.0, 0.2), &Rules::default());
        let j = with_operators(pass.clone(), &r);
        assert_eq!(j.verdict, Verdict::Regression);
        assert!(j.needs_confirmation);
        assert_eq!(j.explanation.rule, RULE_OPERATORS);
        assert_eq!(j.explanation.limit, "operator_tolerance 20%");
        assert!(
            j.explanation.message.contains("mm +30.0%"),
            "{}",
            j.explanation.message
        );
        assert!(j.explanation.message.contains("missing operators: relu"));
        assert!(j.explanation.message.contains("new operators: gelu"));
        // Nothing moved and nothing listed: unchanged.
        assert_eq!(with_operators(pass.clone(), &r3), pass);
    }

    #[test]
    fn t_quantile_known_values() {
        for (df, want) in [
            (1.0, 31.8205),
            (2.0, 6.9646),
            (4.0, 3.7469),
            (10.0, 2.7638),
            (29.0, 2.4620),
            (100.0, 2.3642),
        ] {
            let got = t_quantile(0.99, df);
            assert!(close(got, want, 1e-3), "t(0.99,{df}) = {got}, want {want}");
        }
        // Other levels: t(0.975, 1) = 12.7062, t(0.95, 5) = 2.0150, t(0.975, 30) = 2.0423.
        assert!(close(t_quantile(0.975, 1.0), 12.7062, 1e-3));
        assert!(close(t_quantile(0.95, 5.0), 2.0150, 1e-3));
        assert!(close(t_quantile(0.975, 30.0), 2.0423, 1e-3));
        // Large df tends to the normal quantile z(0.99) = 2.3263.
        assert!(close(t_quantile(0.99, 1e7), 2.3263, 1e-3));
        // Symmetry, centre, round trip, edges.
        assert!(close(t_quantile(0.01, 4.0), -3.7469, 1e-3));
        assert_eq!(t_quantile(0.5, 3.0), 0.0);
        assert!(close(t_cdf(t_quantile(0.99, 7.0), 7.0), 0.99, 1e-12));
        assert!(t_quantile(0.99, 0.0).is_nan());
        assert!(t_quantile(1.5, 3.0).is_nan());
        assert_eq!(t_quantile(1.0, 3.0), f64::INFINITY);
    }

    #[test]
    fn verdict_display_and_names() {
        let all = [
            (Verdict::Pass, "pass"),
            (Verdict::Regression, "regression"),
            (Verdict::Improvement, "improvement"),
            (Verdict::NoBaseline, "no_baseline"),
            (Verdict::Noisy, "noisy"),
            (Verdict::Error, "error"),
        ];
        for (v, s) in all {
            assert_eq!(v.to_string(), s);
        }
    }

    #[test]
    fn number_formatting() {
        assert_eq!(num(20.0), "20");
        assert_eq!(num(1.0), "1");
        assert_eq!(num(0.99990), "0.9999");
        assert_eq!(num(123456.0), "123500");
        assert_eq!(num(0.000123456), "0.0001235");
        assert_eq!(pct(0.3), "+30.0%");
        assert_eq!(pct(-0.0909), "-9.1%");
    }

    /// Tiny deterministic PRNG: 64-bit LCG (Knuth's MMIX constants), Box-Muller normals.
    struct Lcg(u64);

    impl Lcg {
        fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0
        }

        /// Uniform in (0, 1) from the top 53 bits.
        fn uniform(&mut self) -> f64 {
            ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        fn normal(&mut self) -> f64 {
            let (u1, u2) = (self.uniform(), self.uniform());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }

        /// `n` lognormal samples around `center` with log-sd `sigma`.
        fn run(&mut self, center: f64, sigma: f64, n: usize) -> Vec<f64> {
            (0..n)
                .map(|_| center * (sigma * self.normal()).exp())
                .collect()
        }
    }

    struct SimResult {
        candidates: usize,
        confirmed: usize,
        noisy: usize,
    }

    /// `trials` judgements: a history of 30 accepted run medians (10 samples each, 3% lognormal
    /// noise around 1.0) and a new run of 10 samples around `1.0 * factor`; every regression
    /// candidate gets a re-run from the same distribution and goes through `confirm`.
    fn simulate(seed: u64, trials: usize, factor: f64) -> SimResult {
        const SIGMA: f64 = 0.03;
        const SAMPLES: usize = 10;
        let mut rng = Lcg(seed);
        let rules = Rules::default();
        let mut out = SimResult {
            candidates: 0,
            confirmed: 0,
            noisy: 0,
        };
        for _ in 0..trials {
            let history: Vec<f64> = (0..30)
                .map(|_| median_of(&rng.run(1.0, SIGMA, SAMPLES)))
                .collect();
            let base = with_history(&history);
            let j = judge(&rng.run(factor, SIGMA, SAMPLES), LOW, &base, &rules);
            match j.verdict {
                Verdict::Regression => {
                    out.candidates += 1;
                    let rerun = judge(&rng.run(factor, SIGMA, SAMPLES), LOW, &base, &rules);
                    if confirm(&j, &rerun).verdict == Verdict::Regression {
                        out.confirmed += 1;
                    }
                }
                Verdict::Noisy => out.noisy += 1,
                _ => {}
            }
        }
        out
    }

    #[test]
    fn false_alarm_rate_stable_series() {
        let trials = 1000;
        let r = simulate(0x5eed_0001, trials, 1.0);
        let rate = r.candidates as f64 / trials as f64;
        println!(
            "false-alarm rate (stable, 3% lognormal noise, k=30, 10 samples/run): \
             {}/{trials} = {:.2}% regression candidates, {:.2}% confirmed, {:.2}% noisy",
            r.candidates,
            rate * 100.0,
            r.confirmed as f64 / trials as f64 * 100.0,
            r.noisy as f64 / trials as f64 * 100.0
        );
        assert!(rate < 0.02, "false-alarm rate {rate}");
    }

    #[test]
    fn detection_rate_ten_percent_slowdown() {
        let trials = 1000;
        let r = simulate(0x5eed_0002, trials, 1.10);
        let rate = r.candidates as f64 / trials as f64;
        println!(
            "detection rate (10% slowdown, 3% lognormal noise, k=30, 10 samples/run): \
             {}/{trials} = {:.2}% regression candidates, {:.2}% confirmed, {:.2}% noisy",
            r.candidates,
            rate * 100.0,
            r.confirmed as f64 / trials as f64 * 100.0,
            r.noisy as f64 / trials as f64 * 100.0
        );
        assert!(rate > 0.90, "detection rate {rate}");
    }
}
