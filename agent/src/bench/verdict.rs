//! Judging one benchmark case's measurements against its baseline: the pure math, no I/O.
//!
//! One call to [`judge_runs`] takes the post-warmup samples of one metric of one case, one slice
//! per *run* of this job (the first run, then the confirming re-runs), the metric's
//! [`Direction`], what is known about its past ([`Baseline`]: the pinned `initial` anchor, the
//! movable `baseline` anchor, the medians of earlier accepted runs and the noise prior pooled
//! over the profile's cases) and the [`Rules`], and returns a [`Judgement`]: a [`Verdict`] and an
//! [`Explanation`] that says which numbers and which limit decided it. [`judge`] is the same for
//! one run. The shared statistics (t quantiles, pooling, power) are [`msfleet_proto::noise`].
//!
//! # The noise this is built for
//!
//! A run's median moves from run to run mostly by a *run-level shift* shared by all its
//! repetitions (the machine's state that night), plus the within-run noise the median averages
//! down, plus rare single-repetition spikes the median ignores. The accepted runs' medians
//! measure exactly that mix, so the history rule compares medians with medians; the run's own
//! spread only decides whether its median can be trusted at all.
//!
//! # The steps, in order
//!
//! 1. **Input.** Samples must be non-empty, finite and strictly positive (times and throughputs
//!    are; the history rule works on logarithms). Anchors must have a finite positive value and a
//!    finite non-negative tolerance, and the history medians in the window must be finite and
//!    positive. Anything else is [`Verdict::Error`] with the reason; nothing here panics or
//!    divides by zero.
//! 2. **Summary** ([`summarize`]) of each run: median `m`, MAD, robust CV `= 1.4826 * MAD / m`,
//!    and with at least [`MIN_DRIFT_SAMPLES`] (10) samples the *drift*: the first and second
//!    `floor(n/2)` samples in measurement order, `drift = median(second) / median(first) - 1`,
//!    and a Mann-Whitney rank statistic `drift_z` between the halves (with fewer samples a drift
//!    cannot be told from one outlier: both are 0).
//! 3. **Noise** (first run only). The run is [`Verdict::Noisy`] only when its median cannot be
//!    trusted either way: robust CV > `max_cv` (10%) with at least [`MIN_CV_SAMPLES`] (3)
//!    samples, or a drift both large (`|drift| > max_drift`, 10%) and clear
//!    (`|drift_z| > DRIFT_Z`, two-sided 0.1%). One outlier repetition moves neither the MAD nor
//!    a rank test. A *deterministic* metric (at least two samples, all equal) skips this step.
//! 4. **History rule**, once the window holds `k >= min_history` (5) accepted runs (the last
//!    `k_window`, 30). In log space with `ybar` the mean of the window's logs, the noise `s^2` is
//!    the window's sample variance shrunk toward the pooled prior of the profile's cases
//!    (`(d0 s0^2 + (k-1) s^2) / (d0 + k - 1)`, `df = d0 + k - 1`; without a prior the window's
//!    own, `df = k - 1`), floored at `sd_floor` (`ln 1.01`). With `J` runs of this job and `y`
//!    the log of their pooled median (`noise::pooled_runs`: the first run's median, the mean
//!    of two logs, the median of three or more, so one shifted run cannot decide alone),
//!    `z = (y - ybar) / (s * sqrt(f(J) + 1/k))` with `f(J)` the variance factor of that pooling
//!    (`noise::pooled_var_factor`: 1, 1/2, 0.449 for three) and `change = exp(y - ybar) - 1`.
//!    * **One run** (`J = 1`): `z > t(candidate_confidence, df)` (0.90) and `change >
//!      min_effect` (5%) makes a *regression candidate* (`needs_confirmation`): the caller
//!      re-runs the case `confirm_runs` (2) times in fresh processes and calls [`judge_runs`]
//!      with all runs. `z < -t(confidence, df)` and `change < -min_effect` is an improvement
//!      (higher-is-better metrics mirror both signs).
//!    * **All runs** (`J > 1`): regression when `z > t(confidence, df)` (0.995) and `change >
//!      min_effect`, else the candidate was not confirmed and the verdict is pass. The false
//!      alarm rate is that of the pooled test (at most `1 - confidence`), and its power that of
//!      `J` runs, not the product of two single-run powers.
//!
//!    When the history passes: **slow drift against the pinned anchor** (rule `anchor-drift`):
//!    if the `initial` anchor is present and the decision value is outside
//!    `initial_tolerance` of it, the verdict is regression (or improvement). A history that
//!    creeps up by 2% a week never looks unusual to itself; the pinned anchor catches it. A
//!    value outside the movable `baseline` anchor's tolerance but inside the history's noise
//!    passes, and the message says so: with enough history, the history is the measure of noise.
//! 5. **Tolerance rule**, the fallback with fewer than `min_history` runs (and the only rule for a
//!    deterministic metric that has an anchor): `|m/initial - 1| <= initial_tolerance` and
//!    `|m/baseline - 1| <= baseline_tolerance` pass; outside either, the side (slower or faster,
//!    mirrored for higher-is-better) gives regression (a candidate, with one run) or
//!    improvement. If one anchor says regression and the other improvement, regression wins.
//!    With all runs, their pooled median (`noise::pooled_runs`) decides: still outside, regression;
//!    inside, noisy (no history to tell noise from change). With neither anchor the verdict is
//!    [`Verdict::NoBaseline`].
//!
//! Every verdict with a history carries its **minimum detectable effect** (`mde_pct`): the
//! change a decision over `1 + confirm_runs` runs detects with 80% power at its noise
//! ([`msfleet_proto::noise::Power`]), never below `min_effect`; under the tolerance rule it is the
//! tightest tolerance. A value exactly at a limit passes (comparisons allow a relative slack of
//! `1e-12`).
//!
//! # Operators
//!
//! [`compare_operators`] compares the run's top-N operators (by total time) with the baseline's
//! top-N: operators missing from or new in the run's top-N are listed, and an operator in both
//! whose time moved by more than the operator tolerance (either way) makes the case a
//! regression; [`with_operators`] folds such a report into a metric's judgement.

use std::collections::BTreeMap;
use std::fmt;

use msfleet_proto::noise::{self, Power};
pub use msfleet_proto::noise::{t_cdf, t_quantile, NoisePrior};
use serde::{Deserialize, Serialize};

/// Scale that makes the MAD a consistent estimator of the standard deviation for normal data.
pub const ROBUST_CV_SCALE: f64 = 1.4826;
/// Default number of most recent accepted runs the history rule looks at.
pub const DEFAULT_K_WINDOW: usize = noise::K_WINDOW;
/// Default number of accepted runs from which on the history rule decides.
pub const DEFAULT_MIN_HISTORY: usize = 5;
/// Default smallest change (fraction) the history rule reports.
pub const DEFAULT_MIN_EFFECT: f64 = noise::MIN_EFFECT;
/// Default largest robust CV (fraction) of a run that is not noisy.
pub const DEFAULT_MAX_CV: f64 = 0.10;
/// Default largest `|drift|` (fraction) between the halves of a run that is not noisy.
pub const DEFAULT_MAX_DRIFT: f64 = 0.10;
/// Fewest samples for which drift is computed; below this drift is 0.
pub const MIN_DRIFT_SAMPLES: usize = 10;
/// Fewest samples for which the robust CV can make a run noisy.
pub const MIN_CV_SAMPLES: usize = 3;
/// With history, a run whose robust CV exceeds `max_cv` is noisy only when the standard error
/// of its median (`sqrt(pi/2) * cv / sqrt(n)`) exceeds this many times the history's sd.
pub const NOISY_SE_RATIO: f64 = 3.0;
/// `|drift_z|` above which a drift is clear (two-sided 0.1%).
pub const DRIFT_Z: f64 = 3.290_526_731_491_926;
/// Default one-sided confidence of the final regression decision and of improvements.
pub const DEFAULT_CONFIDENCE: f64 = noise::CONFIDENCE;
/// Default one-sided confidence of a first run's candidate threshold.
pub const DEFAULT_CANDIDATE_CONFIDENCE: f64 = noise::CANDIDATE_CONFIDENCE;
/// Default confirming re-runs of a regression candidate.
pub const DEFAULT_CONFIRM_RUNS: usize = noise::CONFIRM_RUNS;
/// Default floor for the history's standard deviation in log space: `ln 1.01`.
pub const DEFAULT_SD_FLOOR: f64 = noise::SD_FLOOR;
/// Relative slack in limit comparisons, so that a value exactly at a limit passes.
const LIMIT_SLACK: f64 = 1e-12;

/// Name of the rule that decided: the tolerance anchors.
pub const RULE_TOLERANCE: &str = "tolerance";
/// Name of the rule that decided: the history of accepted runs.
pub const RULE_HISTORY: &str = "history";
/// Name of the rule that decided: the pinned initial anchor overruling a passing history.
pub const RULE_ANCHOR_DRIFT: &str = "anchor-drift";
/// Name of the rule that decided: spread or drift of the run, or an unconfirmed change.
pub const RULE_NOISE: &str = "noise";
/// Name of the rule that decided: the operator comparison.
pub const RULE_OPERATORS: &str = "operators";
/// Name of the rule that decided: nothing to compare against.
pub const RULE_NONE: &str = "none";
/// Name of the rule that decided: invalid input (samples, baseline or rules).
pub const RULE_INPUT: &str = "input";
/// What a judgement that needs confirming re-runs says at the end of its message.
const NEEDS_CONFIRMATION: &str = "; needs confirming re-runs";

/// Why a set of samples, a baseline or a set of rules cannot be judged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VerdictError {
    #[error("no samples")]
    Empty,
    #[error("sample {index} is not finite ({value})")]
    NonFinite { index: usize, value: f64 },
    #[error("sample {index} is not positive ({value})")]
    NonPositive { index: usize, value: f64 },
    #[error("run {run}: {source}")]
    Rerun {
        run: usize,
        #[source]
        source: Box<VerdictError>,
    },
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
    /// Mann-Whitney z of the second half against the first (positive: the second is larger),
    /// 0 with fewer than [`MIN_DRIFT_SAMPLES`].
    pub drift_z: f64,
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
    let (drift, drift_z) = if n >= MIN_DRIFT_SAMPLES {
        let half = n / 2;
        let (first, second) = (&samples[..half], &samples[n - half..]);
        (
            median_of(second) / median_of(first) - 1.0,
            rank_z(first, second),
        )
    } else {
        (0.0, 0.0)
    };
    Ok(Summary {
        n,
        median,
        mad,
        robust_cv: ROBUST_CV_SCALE * mad / median,
        drift,
        drift_z,
        min: samples.iter().copied().fold(f64::INFINITY, f64::min),
        max: samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// Mann-Whitney z of `b` against `a` (normal approximation, ties count one half): positive
/// when `b` tends to be larger.
fn rank_z(a: &[f64], b: &[f64]) -> f64 {
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let u: f64 = b
        .iter()
        .map(|y| {
            a.iter()
                .map(|x| match y.total_cmp(x) {
                    std::cmp::Ordering::Greater => 1.0,
                    std::cmp::Ordering::Equal => 0.5,
                    std::cmp::Ordering::Less => 0.0,
                })
                .sum::<f64>()
        })
        .sum();
    let mean = na * nb / 2.0;
    let sd = (na * nb * (na + nb + 1.0) / 12.0).sqrt();
    if sd > 0.0 {
        (u - mean) / sd
    } else {
        0.0
    }
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
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Baseline {
    /// The pinned anchor (`initial` and `initial_tolerance` of the case file).
    pub initial: Option<Anchor>,
    /// The movable anchor (`baseline` and `baseline_tolerance` of the case file).
    pub baseline: Option<Anchor>,
    /// Medians of earlier accepted runs, oldest first.
    pub history: Vec<f64>,
    /// Run ids of `history`, same order; the ids of the window end up in the explanation.
    pub history_ids: Vec<String>,
    /// The noise of the profile's cases, pooled by the scheduler: the history's spread is
    /// shrunk toward it.
    pub prior: Option<NoisePrior>,
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
    /// One-sided confidence of the final regression decision and of improvements.
    pub confidence: f64,
    /// One-sided confidence of the first run's threshold for a regression candidate.
    pub candidate_confidence: f64,
    /// Re-runs of a regression candidate.
    pub confirm_runs: usize,
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
            candidate_confidence: DEFAULT_CANDIDATE_CONFIDENCE,
            confirm_runs: DEFAULT_CONFIRM_RUNS,
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
        if !(self.candidate_confidence > 0.5 && self.candidate_confidence <= self.confidence) {
            return bad("candidate_confidence must be in (0.5, confidence]");
        }
        if self.confirm_runs > 10 {
            return bad("confirm_runs must be at most 10");
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
    /// The first run's median (0 when the samples could not be summarized): what joins the
    /// history.
    pub value: f64,
    /// The reference the value was compared with: the deciding anchor's value, or the geometric
    /// mean `exp(ybar)` of the history window for the history rule.
    pub baseline: Option<f64>,
    /// `(decision value / baseline - 1) * 100`, the decision value being `pooled_value` when
    /// several runs decided, else `value`.
    pub delta_pct: Option<f64>,
    /// The limit that applied, e.g. `baseline_tolerance 20%` or
    /// `z > t(0.995,4)=4.604 and delta > +5%`.
    pub limit: String,
    /// The history rule's z, when it was computed.
    pub z: Option<f64>,
    /// The t quantile the z was compared with.
    pub t_limit: Option<f64>,
    /// Runs of history in the window (`min(history.len(), k_window)`).
    pub k: usize,
    /// The first run's robust CV.
    pub spread_cv: f64,
    /// The first run's drift between its halves.
    pub drift: f64,
    /// Ids of the history runs the history rule used.
    pub baseline_run_ids: Vec<String>,
    /// `tolerance`, `history`, `anchor-drift`, `noise`, `operators`, `none` or `input`.
    pub rule: String,
    /// One readable sentence.
    pub message: String,
    /// Smallest change (percent) the decision detects with 80% power at this noise; the
    /// tightest tolerance under the tolerance rule.
    pub mde_pct: Option<f64>,
    /// Runs of this job the decision used.
    pub runs: usize,
    /// Samples of the first run.
    pub samples: usize,
    /// The runs' pooled median (`noise::pooled_runs`), when more than one run decided.
    pub pooled_value: Option<f64>,
    /// Degrees of freedom of the noise estimate.
    pub df: Option<f64>,
}

/// A verdict with its explanation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub verdict: Verdict,
    /// Set on a first run's regression candidates: re-run the case `confirm_runs` times and
    /// pass all runs to [`judge_runs`].
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

/// One anchor compared with the decision value.
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
    /// Runs of this job in the decision.
    runs: usize,
    z: f64,
    /// The deciding quantile: the candidate one for a first run's regression side, else the
    /// strict one.
    t: f64,
    t_confidence: f64,
    df: f64,
    /// `exp(ybar)`.
    reference: f64,
    /// `exp(y - ybar) - 1`.
    change: f64,
    side: Side,
    ids: Vec<String>,
    min_effect: f64,
    dir: Direction,
    /// Minimum detectable effect of a confirmed decision (fraction).
    mde: f64,
    /// Shrunk toward a pooled prior.
    pooled: bool,
    /// The sd of one run's log median (posterior, floored).
    sd: f64,
}

impl HistoryEval {
    /// `value` is the decision value ([`noise::pooled_runs`] of the `runs` runs' medians).
    fn new(
        value: f64,
        runs: usize,
        window: &[f64],
        ids: Vec<String>,
        prior: Option<&NoisePrior>,
        dir: Direction,
        rules: &Rules,
    ) -> Self {
        let k = window.len();
        let kf = k as f64;
        let own = noise::log_spread(window);
        let (var, df) = noise::posterior(own.as_ref(), prior).unwrap_or((0.0, kf - 1.0));
        let pooled = prior.is_some_and(|p| p.df > 0.0);
        let ybar = own.map_or(0.0, |s| s.mean);
        let s = var.sqrt().max(rules.sd_floor);
        // A zero floor with a constant history would divide by zero; keep a positive scale.
        let s = if s > 0.0 { s } else { f64::MIN_POSITIVE };
        let z = (value.ln() - ybar) / (s * (noise::pooled_var_factor(runs) + 1.0 / kf).sqrt());
        let strict = t_quantile(rules.confidence, df);
        let candidate = t_quantile(rules.candidate_confidence, df);
        let reference = ybar.exp();
        let change = value / reference - 1.0;
        let sign = dir.worse_sign();
        let effect = rules.min_effect + LIMIT_SLACK;
        // A first run's regression side uses the looser candidate threshold.
        let worse_t = if runs == 1 { candidate } else { strict };
        let (side, t, t_confidence) = if sign * z > worse_t && sign * change > effect {
            let conf = if runs == 1 {
                rules.candidate_confidence
            } else {
                rules.confidence
            };
            (Side::Worse, worse_t, conf)
        } else if sign * z < -strict && sign * change < -effect {
            (Side::Better, strict, rules.confidence)
        } else {
            (Side::Within, strict, rules.confidence)
        };
        let power = Power {
            sd: s,
            df,
            k,
            within_cv: 0.0,
            repetitions: 0,
        };
        let planned = u32::try_from(1 + rules.confirm_runs).unwrap_or(1);
        let mde = power.mde(planned, rules.confidence).max(rules.min_effect);
        HistoryEval {
            k,
            runs,
            z,
            t,
            t_confidence,
            df,
            reference,
            change,
            side,
            ids,
            min_effect: rules.min_effect,
            dir,
            mde,
            pooled,
            sd: s,
        }
    }

    fn t_label(&self) -> String {
        format!(
            "t({},{})={:.3}",
            num(self.t_confidence),
            num(self.df),
            self.t
        )
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
        let what = if self.runs > 1 {
            format!("the pooled median of {} runs is ", self.runs)
        } else {
            String::new()
        };
        let noise = if self.pooled {
            format!("noise pooled with the profile's cases, df {}", num(self.df))
        } else {
            format!("df {}", num(self.df))
        };
        format!(
            "{what}{} against the geometric mean {} of {} accepted runs (z={:.2}, {}, {noise})",
            pct(self.change),
            num(self.reference),
            self.k,
            self.z,
            self.t_label()
        )
    }

    fn power_note(&self) -> String {
        format!(
            "this case can detect changes of {} or more",
            pct(self.mde).trim_start_matches('+')
        )
    }
}

/// Judges one run's post-warmup samples against its baseline: [`judge_runs`] with one run.
pub fn judge(samples: &[f64], dir: Direction, base: &Baseline, rules: &Rules) -> Judgement {
    judge_runs(&[samples], dir, base, rules)
}

/// Judges the runs of this job (the first run, then the confirming re-runs) against the
/// baseline. See the module documentation for the exact rules; this never panics.
pub fn judge_runs(runs: &[&[f64]], dir: Direction, base: &Baseline, rules: &Rules) -> Judgement {
    if let Err(e) = rules.validate() {
        return error_judgement(None, &e);
    }
    let Some(first_samples) = runs.first() else {
        return error_judgement(None, &VerdictError::Empty);
    };
    let summary = match summarize(first_samples) {
        Ok(s) => s,
        Err(e) => return error_judgement(None, &e),
    };
    let mut medians = vec![summary.median];
    for (i, samples) in runs.iter().enumerate().skip(1) {
        match summarize(samples) {
            Ok(s) => medians.push(s.median),
            Err(e) => {
                let e = VerdictError::Rerun {
                    run: i + 1,
                    source: Box::new(e),
                };
                return error_judgement(Some(&summary), &e);
            }
        }
    }
    let k = base.history.len().min(rules.k_window);
    let window = &base.history[base.history.len() - k..];
    if let Err(e) = validate_baseline(base, window) {
        return error_judgement(Some(&summary), &e);
    }
    let j = medians.len();
    let m = summary.median;
    // With several runs: was the first run alone a regression candidate of this metric (not
    // only of its operators)? Only then is "not confirmed" the story.
    let first_was_candidate = j > 1 && {
        let first = judge_runs(&runs[..1], dir, base, rules);
        first.needs_confirmation && first.explanation.rule != RULE_OPERATORS
    };
    // The decision value: the first run's median, or the pooled median of all runs.
    let value = noise::pooled_runs(&medians).unwrap_or(m);
    let anchors: Vec<AnchorEval> = [("initial", &base.initial), ("baseline", &base.baseline)]
        .into_iter()
        .filter_map(|(name, a)| a.as_ref().map(|a| AnchorEval::new(name, a, value, dir)))
        .collect();
    let deterministic = summary.is_deterministic();
    // A deterministic metric with an anchor is judged by tolerance alone.
    let tolerance_only = deterministic && !anchors.is_empty();
    let history = (k >= rules.min_history && !tolerance_only).then(|| {
        let ids = base.history_ids[base.history_ids.len().saturating_sub(k)..].to_vec();
        HistoryEval::new(value, j, window, ids, base.prior.as_ref(), dir, rules)
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
        mde_pct: None,
        runs: j,
        samples: summary.n,
        pooled_value: (j > 1).then_some(value),
        df: None,
    };
    let m_txt = if j == 1 {
        format!("median {}", num(m))
    } else {
        let all: Vec<String> = medians.iter().map(|v| num(*v)).collect();
        format!("medians {} of {j} runs", all.join(", "))
    };

    // Noise: a first run whose median cannot be trusted says nothing either way.
    if !deterministic {
        // With history, a spread the history's own noise already covers is no reason: only a
        // median whose own uncertainty dwarfs the run-to-run noise cannot be judged.
        let median_se =
            noise::MEDIAN_EFFICIENCY.sqrt() * summary.robust_cv / (summary.n as f64).sqrt();
        let cv_bad = summary.n >= MIN_CV_SAMPLES
            && summary.robust_cv > rules.max_cv + LIMIT_SLACK
            && history
                .as_ref()
                .is_none_or(|h| median_se > NOISY_SE_RATIO * h.sd);
        let drift_bad =
            summary.drift.abs() > rules.max_drift + LIMIT_SLACK && summary.drift_z.abs() > DRIFT_Z;
        if cv_bad || drift_bad {
            if let Some(h) = &history {
                fill_history(&mut ex, h);
            } else if let Some(a) = primary_anchor(&anchors) {
                fill_anchor(&mut ex, a);
            }
            ex.limit = format!(
                "robust CV <= {}% (or its median's error within {NOISY_SE_RATIO}x the \
                 history's sd) and not (|drift| > {}% with rank |z| > {DRIFT_Z:.2})",
                num(rules.max_cv * 100.0),
                num(rules.max_drift * 100.0)
            );
            let mut why = Vec::new();
            if cv_bad {
                let vs_history = history.as_ref().map_or(String::new(), |h| {
                    format!(
                        " and its median's error {} is over {NOISY_SE_RATIO}x the history's \
                         run-to-run sd {}",
                        pct(median_se).trim_start_matches('+'),
                        pct(h.sd).trim_start_matches('+')
                    )
                });
                why.push(format!(
                    "robust CV {}% exceeds {}%{vs_history}",
                    num(summary.robust_cv * 100.0),
                    num(rules.max_cv * 100.0)
                ));
            }
            if drift_bad {
                why.push(format!(
                    "drift {} between the first and second half exceeds {}% (rank z {:.2})",
                    pct(summary.drift),
                    num(rules.max_drift * 100.0),
                    summary.drift_z
                ));
            }
            ex.message = format!(
                "noisy: median {} of {} samples cannot be judged, {}",
                num(m),
                summary.n,
                why.join(" and ")
            );
            return finish(Verdict::Noisy, RULE_NOISE, ex);
        }
    }

    if let Some(h) = &history {
        fill_history(&mut ex, h);
        let power = h.power_note();
        let confirmed = |ex: &mut Explanation| {
            if j > 1 {
                ex.message
                    .push_str(&format!("; confirmed by {j} runs together"));
            }
        };
        match h.side {
            Side::Worse | Side::Better => {
                let verdict = if h.side == Side::Worse {
                    Verdict::Regression
                } else {
                    Verdict::Improvement
                };
                ex.limit = h.limit(h.side);
                let label = if verdict == Verdict::Regression && j == 1 {
                    "regression candidate".to_string()
                } else {
                    verdict.to_string()
                };
                ex.message = format!("{label}: {m_txt} is {}; {power}", h.describe());
                confirmed(&mut ex);
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
                "{verdict}: {m_txt} is {}, although it is {} (the history has drifted)",
                a.describe(),
                h.describe()
            );
            confirmed(&mut ex);
            return finish(verdict, RULE_ANCHOR_DRIFT, ex);
        }
        let unconfirmed = if first_was_candidate {
            "the regression candidate was not confirmed: "
        } else {
            ""
        };
        ex.limit = h.limit(Side::Within);
        // Outside the movable anchor's tolerance but inside the history's noise.
        if let Some(a) = anchors
            .iter()
            .find(|a| a.name == "baseline" && a.side != Side::Within)
        {
            ex.message = format!(
                "pass: {unconfirmed}{m_txt} is {}, inside the history's noise although {} \
                 against {} {} is outside {}; {power}",
                h.describe(),
                pct(a.delta),
                a.name,
                num(a.value),
                a.limit()
            );
            return finish(Verdict::Pass, RULE_HISTORY, ex);
        }
        ex.message = format!("pass: {unconfirmed}{m_txt} is {}; {power}", h.describe());
        return finish(Verdict::Pass, RULE_HISTORY, ex);
    }

    // Tolerance rule.
    let Some(primary) = primary_anchor(&anchors) else {
        ex.limit = format!("{} accepted runs", rules.min_history);
        ex.message = if k == 0 {
            format!("no_baseline: {m_txt}, no anchor and no history to compare with")
        } else {
            format!(
                "no_baseline: {m_txt}, no anchor and only {k} accepted runs of history \
                 (the history rule needs {})",
                rules.min_history
            )
        };
        return finish(Verdict::NoBaseline, RULE_NONE, ex);
    };
    ex.mde_pct = anchors
        .iter()
        .map(|a| a.tolerance * 100.0)
        .min_by(f64::total_cmp);
    let deciding = |side: Side| {
        anchors
            .iter()
            .filter(|a| a.side == side)
            .max_by(|a, b| a.excess().total_cmp(&b.excess()))
    };
    let (mut verdict, decider) = if let Some(a) = deciding(Side::Worse) {
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
    let mut rule = RULE_TOLERANCE;
    ex.message = if j > 1 && verdict == Verdict::Regression {
        format!("regression: {m_txt}, together {all}{why}; confirmed by {j} runs together")
    } else if first_was_candidate {
        // The first run was outside, the runs together are not: without history there is
        // no telling noise from change.
        verdict = Verdict::Noisy;
        rule = RULE_NOISE;
        format!(
            "noisy: regression not confirmed, {m_txt}, together {all}{why}; the first run \
             alone was outside"
        )
    } else if j > 1 {
        format!("{verdict}: {m_txt}, together {all}{why}")
    } else if verdict == Verdict::Regression {
        format!("regression candidate: {m_txt} is {all}{why}")
    } else {
        format!("{verdict}: {m_txt} is {all}{why}")
    };
    finish(verdict, rule, ex)
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
    if let Some(p) = &base.prior {
        if !(p.var.is_finite() && p.var >= 0.0 && p.df.is_finite() && p.df >= 0.0) {
            return Err(VerdictError::InvalidBaseline(format!(
                "the pooled noise prior must be finite and not negative (var {}, df {})",
                p.var, p.df
            )));
        }
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
    ex.mde_pct = Some(h.mde * 100.0);
    ex.df = Some(h.df);
}

fn finish(verdict: Verdict, rule: &str, mut ex: Explanation) -> Judgement {
    ex.rule = rule.to_string();
    let needs_confirmation = verdict == Verdict::Regression && ex.runs <= 1;
    if needs_confirmation {
        ex.message.push_str(NEEDS_CONFIRMATION);
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
            mde_pct: None,
            runs: 0,
            samples: summary.map_or(0, |s| s.n),
            pooled_value: None,
            df: None,
        },
    }
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
/// improvement or no_baseline into a regression (rule `operators`; a candidate needing
/// confirmation when one run was judged, confirmed when the report holds for all runs) and are
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
        let runs = out.explanation.runs;
        out.verdict = Verdict::Regression;
        out.needs_confirmation = runs <= 1;
        out.explanation.rule = RULE_OPERATORS.to_string();
        out.explanation.limit = format!("operator_tolerance {}%", num(ops.tolerance * 100.0));
        out.explanation.message = if runs <= 1 {
            format!(
                "regression candidate: {notes} (the metric alone was {was}){NEEDS_CONFIRMATION}"
            )
        } else {
            format!("regression: {notes} in each of {runs} runs (the metric alone was {was})")
        };
    } else {
        let msg = &out.explanation.message;
        out.explanation.message = match msg.strip_suffix(NEEDS_CONFIRMATION) {
            Some(head) => format!("{head}; {notes}{NEEDS_CONFIRMATION}"),
            None => format!("{msg}; {notes}"),
        };
    }
    out
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
        // robust CV = 1.4826 * 1 / 2 = 0.7413; n = 3 < 10 -> drift 0.
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
        // robust CV = 1.4826 / 2.5 = 0.59304; four samples: no drift.
        let s = summarize(&[1.0, 2.0, 3.0, 10.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert_eq!(s.mad, 1.0);
        assert!(close(s.robust_cv, 0.59304, 1e-12));
        assert_eq!(s.drift, 0.0);
    }

    #[test]
    fn summary_odd_n_drift_skips_middle() {
        // [1 x5, 5, 2 x5]: halves [1 x5] and [2 x5] (the middle 5 is in neither): drift 2/1 - 1;
        // rank z: U = 25, mean 12.5, sd sqrt(25 * 11 / 12) = 4.787 -> 2.611.
        let s = summarize(&[1.0, 1.0, 1.0, 1.0, 1.0, 5.0, 2.0, 2.0, 2.0, 2.0, 2.0]).unwrap();
        assert_eq!(s.drift, 1.0);
        assert!(close(
            s.drift_z,
            12.5 / (25.0f64 * 11.0 / 12.0).sqrt(),
            1e-12
        ));
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
        // A first run is held to the candidate quantile t(0.9, 4) = 1.533.
        assert!(close(j.explanation.t_limit.unwrap(), 1.5332, 1e-3));
        assert!(close(j.explanation.delta_pct.unwrap(), 30.013, 1e-2));
        assert!(close(j.explanation.baseline.unwrap(), 0.99990, 1e-5));
        assert_eq!(j.explanation.limit, "z > t(0.9,4)=1.533 and delta > +5%");
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
        assert_eq!(j.explanation.limit, "z < -t(0.9,4)=1.533 and delta < -5%");
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
    fn above_tolerance_within_noise_passes() {
        // History with large spread [0.8, 1.2, 0.9, 1.1, 1.0]:
        // ln = [-0.223144, 0.182322, -0.105361, 0.095310, 0], ybar = -0.010174,
        // s = 0.160235, se = 0.160235 * 1.095445 = 0.175529.
        // m = 1.25 (samples 1.24, 1.25, 1.26): vs baseline 1.0 (tol 20%) +25% -> tolerance
        // alone says regression; z = (0.223144 + 0.010174) / 0.175529 = 1.329 <= 1.533 -> the
        // change is within the history's noise: the history is the measure, it passes (and says
        // the anchor's tolerance was exceeded).
        let mut base = with_history(&[0.8, 1.2, 0.9, 1.1, 1.0]);
        base.baseline = anchor(1.0, 0.2);
        let j = judge(&[1.24, 1.25, 1.26], LOW, &base, &Rules::default());
        assert_eq!(j.verdict, Verdict::Pass);
        assert_eq!(j.explanation.rule, RULE_HISTORY);
        assert!(close(j.explanation.z.unwrap(), 1.3292, 1e-3));
        assert!(
            j.explanation
                .message
                .contains("+25.0% against baseline 1 is outside baseline_tolerance 20%"),
            "{}",
            j.explanation.message
        );
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
        // Five samples are too few for drift (one outlier would decide it): 0.
        let s = summarize(&[1.0, 1.2, 0.8, 1.1, 0.9]).unwrap();
        assert!(close(s.robust_cv, 0.14826, 1e-9));
        assert_eq!(s.drift, 0.0);
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
        // [1.0 x10, 1.12 x10]: median 1.06, every |x - 1.06| = 0.06, MAD 0.06;
        // robust CV = 1.4826 * 0.06 / 1.06 = 8.39% <= 10%, but drift = 1.12 / 1.0 - 1 = +12%
        // > 10% and clear: rank z = (100 - 50) / sqrt(100 * 21 / 12) = 3.780 > 3.29 -> noisy.
        let mut samples = vec![1.0; 10];
        samples.extend([1.12; 10]);
        let s = summarize(&samples).unwrap();
        assert!(close(s.robust_cv, 1.4826 * 0.06 / 1.06, 1e-9));
        assert!(close(s.drift, 0.12, 1e-9));
        assert!(close(s.drift_z, 50.0 / 175.0f64.sqrt(), 1e-9));
        let j = judge(&samples, LOW, &with_baseline(1.0, 0.2), &Rules::default());
        assert_eq!(j.verdict, Verdict::Noisy);
        assert!(j.explanation.message.contains("drift"));
        assert!(close(j.explanation.drift, 0.12, 1e-9));
        // Eight samples of the same shape: too few for a clear rank test -> judged (pass).
        let eight = [1.0, 1.0, 1.0, 1.0, 1.12, 1.12, 1.12, 1.12];
        assert_eq!(summarize(&eight).unwrap().drift, 0.0);
        let j = judge(&eight, LOW, &with_baseline(1.0, 0.2), &Rules::default());
        assert_eq!(j.verdict, Verdict::Pass);
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
        // A non-deterministic run at the same median goes through the history rule, whose
        // noise covers +5%: pass.
        base.baseline = anchor(40.0, 0.02);
        let j = judge(&[41.9, 42.0, 42.1], LOW, &base, &Rules::default());
        assert_eq!(j.verdict, Verdict::Pass);
        assert_eq!(j.explanation.rule, RULE_HISTORY);
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
    fn tolerance_candidate_confirmed_by_all_runs() {
        let base = with_baseline(1.0, 0.2);
        let rules = Rules::default();
        let first = judge(&[1.30], LOW, &base, &rules);
        assert!(first.needs_confirmation);
        assert!(first
            .explanation
            .message
            .starts_with("regression candidate: "));
        // Runs 1.30, 1.28, 1.29: pooled median 1.29, +29% -> confirmed.
        let all = judge_runs(&[&[1.30], &[1.28], &[1.29]], LOW, &base, &rules);
        assert_eq!(all.verdict, Verdict::Regression);
        assert!(!all.needs_confirmation);
        assert_eq!(all.explanation.value, 1.30);
        assert_eq!(all.explanation.pooled_value, Some(1.29));
        assert_eq!(all.explanation.runs, 3);
        assert!(close(all.explanation.delta_pct.unwrap(), 29.0, 1e-9));
        assert!(
            all.explanation
                .message
                .contains("confirmed by 3 runs together"),
            "{}",
            all.explanation.message
        );
        assert!(!all.explanation.message.contains("needs confirming"));
    }

    #[test]
    fn tolerance_candidate_not_confirmed_is_noisy() {
        // Runs 1.30, 1.02, 1.01: pooled median 1.02 is within 20%; with no history there is no
        // telling noise from change.
        let base = with_baseline(1.0, 0.2);
        let rules = Rules::default();
        let c = judge_runs(&[&[1.30], &[1.02], &[1.01]], LOW, &base, &rules);
        assert_eq!(c.verdict, Verdict::Noisy);
        assert!(!c.needs_confirmation);
        assert_eq!(c.explanation.rule, RULE_NOISE);
        assert!(
            c.explanation.message.contains("not confirmed"),
            "{}",
            c.explanation.message
        );
        // A re-run without samples is an error naming the run.
        let e = judge_runs(&[&[1.30], &[]], LOW, &base, &rules);
        assert_eq!(e.verdict, Verdict::Error);
        assert!(
            e.explanation.message.contains("run 2: no samples"),
            "{}",
            e.explanation.message
        );
    }

    #[test]
    fn history_candidate_is_decided_by_the_runs_together() {
        // HIST5 (s = 0.0158135, k = 5). m = 1.06: z = (0.0582689 + 0.0001) / 0.0173228 = 3.370
        // > t(0.9,4) = 1.533 and change +6.0% > 5%: a candidate, not yet a regression.
        let rules = Rules::default();
        let base = with_history(&HIST5);
        let first = judge(&[1.06], LOW, &base, &rules);
        assert_eq!(first.verdict, Verdict::Regression);
        assert!(first.needs_confirmation);
        assert!(close(first.explanation.z.unwrap(), 3.3700, 1e-3));
        assert!(close(first.explanation.t_limit.unwrap(), 1.5332, 1e-3));
        // Runs 1.06, 1.07, 1.065: pooled median 1.065; se = 0.0158135 * sqrt(0.4487 + 1/5)
        // = 0.0127362; z = (0.0629748 + 0.0001) / 0.0127362 = 4.953 < t(0.999,4) = 7.173:
        // the candidate is not confirmed, and the runs together pass.
        let all = judge_runs(&[&[1.06], &[1.07], &[1.065]], LOW, &base, &rules);
        assert_eq!(all.verdict, Verdict::Pass);
        assert!(!all.needs_confirmation);
        assert!(close(all.explanation.z.unwrap(), 4.9525, 1e-3));
        assert!(close(all.explanation.t_limit.unwrap(), 7.1732, 1e-3));
        assert!(
            all.explanation.message.contains("not confirmed"),
            "{}",
            all.explanation.message
        );
        // Runs 1.30, 1.28, 1.31: clear -> regression confirmed.
        let all = judge_runs(&[&[1.30], &[1.28], &[1.31]], LOW, &base, &rules);
        assert_eq!(all.verdict, Verdict::Regression);
        assert!(!all.needs_confirmation);
        assert_eq!(
            all.explanation.limit,
            "z > t(0.999,4)=7.173 and delta > +5%"
        );
        // One slow run among three cannot decide alone: 1.30, 1.0, 1.01 -> pooled 1.01.
        let all = judge_runs(&[&[1.30], &[1.0], &[1.01]], LOW, &base, &rules);
        assert_eq!(all.verdict, Verdict::Pass);
    }

    #[test]
    fn the_pooled_prior_sharpens_a_short_history() {
        // Five runs with sd 1.58% alone: t(0.999, 4) = 7.17. With a prior of sd 1.5% on 60
        // degrees of freedom, df = 64 and t is near the normal 3.1: the same runs confirm.
        let rules = Rules::default();
        let mut base = with_history(&HIST5);
        let runs: [&[f64]; 3] = [&[1.09], &[1.08], &[1.085]];
        assert_eq!(judge_runs(&runs, LOW, &base, &rules).verdict, Verdict::Pass);
        base.prior = Some(NoisePrior {
            var: 0.015f64.powi(2),
            df: 60.0,
            cases: 12,
        });
        let j = judge_runs(&runs, LOW, &base, &rules);
        assert_eq!(j.verdict, Verdict::Regression, "{}", j.explanation.message);
        assert!(close(j.explanation.df.unwrap(), 64.0, 1e-12));
        assert!(j.explanation.t_limit.unwrap() < 3.3);
        assert!(j
            .explanation
            .message
            .contains("pooled with the profile's cases"));
        // Every history verdict says what it can detect.
        let mde = j.explanation.mde_pct.unwrap();
        assert!((5.0..10.0).contains(&mde), "{mde}");
        assert!(
            j.explanation
                .message
                .contains("this case can detect changes of"),
            "{}",
            j.explanation.message
        );
        // A bad prior is an input error.
        base.prior = Some(NoisePrior {
            var: f64::NAN,
            df: 3.0,
            cases: 2,
        });
        assert_eq!(judge(&[1.0], LOW, &base, &rules).verdict, Verdict::Error);
    }

    #[test]
    fn one_outlier_repetition_does_not_make_a_run_noisy() {
        // Five samples with one spike: MAD 0.01, CV 1.5%; five samples are too few for drift.
        let spiky = [1.0, 1.01, 0.99, 1.0, 1.8];
        let s = summarize(&spiky).unwrap();
        assert!(close(s.robust_cv, 0.014826, 1e-9));
        assert_eq!((s.drift, s.drift_z), (0.0, 0.0));
        let j = judge(&spiky, LOW, &with_baseline(1.0, 0.2), &Rules::default());
        assert_eq!(j.verdict, Verdict::Pass);
        // Twenty samples, one spike in the second half: the rank test sees no drift.
        let mut twenty = vec![1.0; 20];
        for (i, v) in twenty.iter_mut().enumerate() {
            *v += 0.001 * (i % 5) as f64;
        }
        twenty[15] = 1.8;
        let j = judge(&twenty, LOW, &with_baseline(1.0, 0.2), &Rules::default());
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.explanation.message);
    }

    #[test]
    fn a_spread_the_history_covers_is_judged_not_noisy() {
        // CV 14.8% with 5 samples: its median's error sqrt(pi/2) * 0.14826 / sqrt(5) = 8.31%.
        let run = [1.0, 1.2, 0.8, 1.1, 0.9];
        // Against HIST5 (sd 1.58%: 8.31% > 3 x 1.58%): noisy.
        let j = judge(&run, LOW, &with_history(&HIST5), &Rules::default());
        assert_eq!(j.verdict, Verdict::Noisy);
        assert!(
            j.explanation.message.contains("median's error 8.3%"),
            "{}",
            j.explanation.message
        );
        // Against a history as spread as the run (sd 16%): judged, and it passes.
        let wide = with_history(&[0.8, 1.2, 0.9, 1.1, 1.0]);
        let j = judge(&run, LOW, &wide, &Rules::default());
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.explanation.message);
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
}
