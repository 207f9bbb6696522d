//! The statistics of benchmark noise that the scheduler, the agent and msctl share: the
//! run-to-run spread of a case's accepted runs, pooled across cases (empirical Bayes), the power
//! that spread allows (minimum detectable effect, repetitions or runs needed for a target) and
//! change points across a case's trusted history. Pure math, no I/O, never panics.
//!
//! # The noise it models
//!
//! A run of a case is `n` repetitions (each a fresh process). Its median `m` moves from run to
//! run for two reasons: a *run-level shift* shared by every repetition of the run (the machine's
//! state that night: clocks, placement, neighbours; on real fleets the larger part) and the
//! *within-run* noise of the repetitions, which the median averages down (variance about
//! `pi/2 * sigma_w^2 / n` for near-normal noise; single-repetition spikes barely move it). The
//! history of accepted run medians measures the sum of both directly: in log space its sample
//! variance `s^2` estimates `sigma_b^2 + pi/2 * sigma_w^2 / n`. The within-run part is estimated
//! from the runs' robust CVs, the run-level part is what remains ([`Power`]).
//!
//! # Pooling ([`pool`], [`posterior`])
//!
//! Eight runs give a poor `s` (7 degrees of freedom: `t(0.995, 7) = 3.50` where the normal
//! quantile is 2.58). Cases of the same hardware profile share most of their noise sources, so
//! the spreads of all of them form a prior (limma's moment estimator, Smyth 2004): with
//! `d_i = k_i - 1`, `e_i = ln s_i^2 - digamma(d_i/2) + ln(d_i/2)`, the prior has
//! `trigamma(d0/2) = var(e) - mean(trigamma(d_i/2))` and `ln s0^2 = mean(e) + digamma(d0/2) -
//! ln(d0/2)`; when the cases' spreads differ no more than sampling explains, `d0` is capped at
//! the pooled degrees of freedom `sum d_i`. A case's own `s^2` is then shrunk to
//! `(d0 s0^2 + d s^2) / (d0 + d)` with `d0 + d` degrees of freedom.
//!
//! # Change points ([`change_points`])
//!
//! Binary segmentation with a CUSUM statistic over the logs of the trusted history: the split
//! that maximises the standardized difference of the two means, with the noise scale taken from
//! successive differences (which a level shift barely touches) and a Bonferroni bound over the
//! candidate splits, so a stable history raises a change point with probability below
//! [`CHANGE_POINT_ALPHA`]. Segments shorter than [`MIN_SEGMENT`] runs are not split.

/// Default one-sided confidence of the final (confirmed) regression decision.
pub const CONFIDENCE: f64 = 0.999;
/// One-sided confidence of the first run's looser threshold that triggers the confirming runs.
pub const CANDIDATE_CONFIDENCE: f64 = 0.90;
/// Re-runs (fresh processes, a fresh run-level shift) of a regression candidate.
pub const CONFIRM_RUNS: usize = 2;
/// Default smallest change (fraction) reported as regression or improvement.
pub const MIN_EFFECT: f64 = 0.05;
/// Most recent accepted runs the verdict looks at.
pub const K_WINDOW: usize = 30;
/// Floor of the standard deviation of log medians: `ln 1.01`.
pub const SD_FLOOR: f64 = 0.009_950_330_853_168_092;
/// Power at which the minimum detectable effect is stated.
pub const POWER: f64 = 0.80;
/// The minimum detectable effect `msctl baseline show` says the repetitions or runs for.
pub const TARGET_MDE: f64 = 0.05;
/// Most repetitions (and runs) the "needed for the target" figures look at.
pub const MAX_PLANNED: u32 = 1000;
/// Variance of the median of `n` near-normal samples, relative to `sigma^2 / n`.
pub const MEDIAN_EFFICIENCY: f64 = std::f64::consts::FRAC_PI_2;
/// Shortest segment of history (runs) on either side of a change point.
pub const MIN_SEGMENT: usize = 4;
/// Probability that a stable history shows a change point (Bonferroni bound).
pub const CHANGE_POINT_ALPHA: f64 = 0.01;
/// Scale that makes the MAD a consistent estimator of the standard deviation for normal data.
const MAD_SCALE: f64 = 1.4826;

/// Mean and sample variance of the logs of a case's accepted run medians.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogSpread {
    /// Runs.
    pub k: usize,
    /// Mean of the logs.
    pub mean: f64,
    /// Sample variance of the logs (`k - 1` denominator).
    pub var: f64,
}

impl LogSpread {
    /// Degrees of freedom of `var`.
    pub fn df(&self) -> f64 {
        self.k as f64 - 1.0
    }
}

/// The spread of `medians` in log space: `None` with fewer than 2 values or a value that is not
/// finite and positive.
pub fn log_spread(medians: &[f64]) -> Option<LogSpread> {
    if medians.len() < 2 || medians.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        return None;
    }
    let k = medians.len();
    let logs: Vec<f64> = medians.iter().map(|v| v.ln()).collect();
    let mean = logs.iter().sum::<f64>() / k as f64;
    let var = logs.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / (k as f64 - 1.0);
    Some(LogSpread { k, mean, var })
}

/// The noise of a group of cases (same hardware profile and metric), as a prior for each one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoisePrior {
    /// Prior variance of log medians, `s0^2`.
    pub var: f64,
    /// Prior degrees of freedom `d0` (0: no pooling).
    pub df: f64,
    /// Cases that contributed.
    pub cases: usize,
}

/// The empirical-Bayes prior of a group's spreads (see the module documentation). `None` with
/// fewer than two cases of at least 3 runs (nothing to pool). Spreads of exactly 0 (a
/// deterministic metric) are left out: their log is undefined and they say nothing of timing
/// noise.
pub fn pool(spreads: &[LogSpread]) -> Option<NoisePrior> {
    let usable: Vec<&LogSpread> = spreads
        .iter()
        .filter(|s| s.k >= 3 && s.var.is_finite() && s.var > 0.0)
        .collect();
    let g = usable.len();
    if g < 2 {
        return None;
    }
    let e: Vec<f64> = usable
        .iter()
        .map(|s| {
            let half = s.df() / 2.0;
            s.var.ln() - digamma(half) + half.ln()
        })
        .collect();
    let mean_e = e.iter().sum::<f64>() / g as f64;
    let var_e = e.iter().map(|x| (x - mean_e).powi(2)).sum::<f64>() / (g as f64 - 1.0);
    let expected = usable.iter().map(|s| trigamma(s.df() / 2.0)).sum::<f64>() / g as f64;
    let total_df: f64 = usable.iter().map(|s| s.df()).sum();
    let excess = var_e - expected;
    let d0 = if excess > 0.0 {
        (2.0 * trigamma_inverse(excess)).min(total_df)
    } else {
        total_df
    };
    let var = (mean_e + digamma(d0 / 2.0) - (d0 / 2.0).ln()).exp();
    (var.is_finite() && var > 0.0).then_some(NoisePrior {
        var,
        df: d0,
        cases: g,
    })
}

/// A case's variance of log medians and its degrees of freedom after shrinking its own spread
/// toward the prior: `(d0 s0^2 + d s^2) / (d0 + d)`, `d0 + d`. Without a prior it is the case's
/// own; without an own spread (fewer than 2 runs) the prior's. `None` with neither.
pub fn posterior(own: Option<&LogSpread>, prior: Option<&NoisePrior>) -> Option<(f64, f64)> {
    let prior = prior.filter(|p| p.df > 0.0 && p.var.is_finite() && p.var > 0.0);
    match (own, prior) {
        (Some(s), Some(p)) => {
            let d = s.df();
            Some(((p.df * p.var + d * s.var) / (p.df + d), p.df + d))
        }
        (Some(s), None) => Some((s.var, s.df())),
        (None, Some(p)) => Some((p.var, p.df)),
        (None, None) => None,
    }
}

/// What a case's noise allows it to detect.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Power {
    /// Standard deviation of one run's log median (posterior, floored).
    pub sd: f64,
    /// Its degrees of freedom.
    pub df: f64,
    /// Runs of history the decision compares with.
    pub k: usize,
    /// Root mean square of the history runs' robust CVs (within-run noise), 0 when unknown.
    pub within_cv: f64,
    /// Repetitions per run the history was measured with (0 when unknown).
    pub repetitions: u32,
}

impl Power {
    /// The run-to-run part of `sd`: what remains after the within-run noise the median of
    /// `repetitions` samples carries.
    pub fn run_sd(&self) -> f64 {
        let within = self.within_var(self.repetitions);
        (self.sd.powi(2) - within).max(0.0).sqrt()
    }

    fn within_var(&self, repetitions: u32) -> f64 {
        if repetitions == 0 {
            return 0.0;
        }
        MEDIAN_EFFICIENCY * self.within_cv.powi(2) / f64::from(repetitions)
    }

    /// Smallest change (fraction) that `runs` pooled runs of `repetitions` each detect with
    /// probability [`POWER`] at one-sided `confidence`: `exp((t + z_power) * se) - 1` with
    /// `se = sqrt(var_run(repetitions) * pooled_var_factor(runs) + sd^2 / k)`.
    pub fn mde_with(&self, repetitions: u32, runs: u32, confidence: f64) -> f64 {
        let run_var = self.run_sd().powi(2) + self.within_var(repetitions);
        let hist_var = self.sd.powi(2) / self.k.max(1) as f64;
        let se = (run_var * pooled_var_factor(runs as usize) + hist_var).sqrt();
        let t = t_quantile(confidence, self.df.max(1.0));
        ((t + normal_quantile(POWER)) * se).exp() - 1.0
    }

    /// The MDE of one run at the history's repetitions.
    pub fn mde(&self, runs: u32, confidence: f64) -> f64 {
        self.mde_with(self.repetitions, runs, confidence)
    }

    /// Fewest repetitions per run (up to [`MAX_PLANNED`]) that bring one run's MDE to
    /// `target`; `None` when the run-to-run shift alone keeps it above (more repetitions cannot
    /// help) or the repetitions are unknown.
    pub fn repetitions_for(&self, target: f64, runs: u32, confidence: f64) -> Option<u32> {
        if self.repetitions == 0 {
            return None;
        }
        (1..=MAX_PLANNED).find(|&r| self.mde_with(r, runs, confidence) <= target)
    }

    /// Fewest pooled runs (up to 100) that bring the MDE to `target`; `None` when the
    /// history's own uncertainty keeps it above.
    pub fn runs_for(&self, target: f64, confidence: f64) -> Option<u32> {
        (1..=100).find(|&j| self.mde(j, confidence) <= target)
    }
}

/// The value several runs of one job are judged by: the geometric mean of two runs' medians,
/// the median of three or more (in log space), so that one run with a shifted median (three
/// spikes among five repetitions, a slow-mode run) cannot decide alone. `None` when empty or a
/// value is not finite and positive.
pub fn pooled_runs(medians: &[f64]) -> Option<f64> {
    if medians.is_empty() || medians.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        return None;
    }
    let logs: Vec<f64> = medians.iter().map(|v| v.ln()).collect();
    Some(if logs.len() <= 2 {
        (logs.iter().sum::<f64>() / logs.len() as f64).exp()
    } else {
        median(&logs).exp()
    })
}

/// Variance of [`pooled_runs`] of `runs` runs relative to one run's, for normal noise: 1/J for
/// the mean of one or two, the exact median variances for 3 to 5, `pi / (2J)` beyond.
pub fn pooled_var_factor(runs: usize) -> f64 {
    match runs {
        0 | 1 => 1.0,
        2 => 0.5,
        3 => 0.448_7,
        4 => 0.298_3,
        5 => 0.286_8,
        j => MEDIAN_EFFICIENCY / j as f64,
    }
}

/// A level shift in a case's history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChangePointAt {
    /// Index of the first run at the new level.
    pub index: usize,
    /// Geometric means of the segments before and after (as far as the neighbouring change
    /// points).
    pub before: f64,
    pub after: f64,
    /// The standardized difference of the segment means.
    pub z: f64,
    /// The limit it exceeded.
    pub limit: f64,
}

impl ChangePointAt {
    /// `after / before - 1`.
    pub fn shift(&self) -> f64 {
        self.after / self.before - 1.0
    }
}

/// Level shifts in `medians` (oldest first), by binary segmentation (see the module
/// documentation), oldest first. Empty with fewer than `2 * MIN_SEGMENT` usable values.
pub fn change_points(medians: &[f64]) -> Vec<ChangePointAt> {
    if medians.len() < 2 * MIN_SEGMENT || medians.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        return Vec::new();
    }
    let logs: Vec<f64> = medians.iter().map(|v| v.ln()).collect();
    let diffs: Vec<f64> = logs.windows(2).map(|w| (w[1] - w[0]).abs()).collect();
    let sigma = (MAD_SCALE * median(&diffs) / std::f64::consts::SQRT_2).max(SD_FLOOR / 2.0);
    let mut found = Vec::new();
    split(&logs, 0, logs.len(), sigma, &mut found);
    found.sort_by_key(|c| c.index);
    // Segment means between neighbouring change points.
    let bounds: Vec<usize> = std::iter::once(0)
        .chain(found.iter().map(|c| c.index))
        .chain(std::iter::once(logs.len()))
        .collect();
    let mean = |a: usize, b: usize| (logs[a..b].iter().sum::<f64>() / (b - a) as f64).exp();
    for (i, c) in found.iter_mut().enumerate() {
        c.before = mean(bounds[i], bounds[i + 1]);
        c.after = mean(bounds[i + 1], bounds[i + 2]);
    }
    found
}

fn split(logs: &[f64], lo: usize, hi: usize, sigma: f64, out: &mut Vec<ChangePointAt>) {
    let n = hi - lo;
    if n < 2 * MIN_SEGMENT {
        return;
    }
    let seg = &logs[lo..hi];
    let total: f64 = seg.iter().sum();
    let mut left = 0.0;
    let mut best: Option<(usize, f64)> = None;
    for i in 1..n {
        left += seg[i - 1];
        if i < MIN_SEGMENT || n - i < MIN_SEGMENT {
            continue;
        }
        let (a, b) = (i as f64, (n - i) as f64);
        let diff = (total - left) / b - left / a;
        let z = diff.abs() / (sigma * (1.0 / a + 1.0 / b).sqrt());
        if best.is_none_or(|(_, bz)| z > bz) {
            best = Some((i, z));
        }
    }
    let Some((i, z)) = best else { return };
    let candidates = (n + 1 - 2 * MIN_SEGMENT) as f64;
    let limit = normal_quantile(1.0 - CHANGE_POINT_ALPHA / (2.0 * candidates));
    if z <= limit {
        return;
    }
    out.push(ChangePointAt {
        index: lo + i,
        before: 0.0,
        after: 0.0,
        z,
        limit,
    });
    split(logs, lo, lo + i, sigma, out);
    split(logs, lo + i, hi, sigma, out);
}

/// Median of finite numbers (0 when empty).
fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// ------------------------------------------------------------------ special functions

/// Quantile of the standard normal distribution (Acklam's rational approximation refined by
/// one Halley step; about 1e-15 relative). NaN outside `[0, 1]`.
pub fn normal_quantile(p: f64) -> f64 {
    if !(0.0..=1.0).contains(&p) || p.is_nan() {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let low = 0.02425;
    let x = if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    // One Halley step against the exact CDF.
    let e = normal_cdf(x) - p;
    let u = e * (2.0 * std::f64::consts::PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

/// CDF of the standard normal distribution.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// Complementary error function (Numerical Recipes' Chebyshev fit, about 1.2e-7 relative,
/// refined enough for the Halley step above).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
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
/// about 1e-12 relative. Above 1e6 degrees of freedom it is the normal quantile.
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
    if df > 1e6 {
        return normal_quantile(p);
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
pub fn ln_gamma(x: f64) -> f64 {
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

/// The digamma function `ψ(x)` for `x > 0` (recurrence to `x >= 10`, then the asymptotic
/// series).
pub fn digamma(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return f64::NAN;
    }
    let mut x = x;
    let mut acc = 0.0;
    while x < 10.0 {
        acc -= 1.0 / x;
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    acc + x.ln()
        - 0.5 / x
        - f * (1.0 / 12.0 - f * (1.0 / 120.0 - f * (1.0 / 252.0 - f * (1.0 / 240.0 - f / 132.0))))
}

/// The trigamma function `ψ'(x)` for `x > 0`.
pub fn trigamma(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return f64::NAN;
    }
    let mut x = x;
    let mut acc = 0.0;
    while x < 10.0 {
        acc += 1.0 / (x * x);
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    acc + 1.0 / x
        + f / 2.0
        + f / x * (1.0 / 6.0 - f * (1.0 / 30.0 - f * (1.0 / 42.0 - f * (1.0 / 30.0))))
}

/// The `x` with `trigamma(x) = y` for `y > 0` (Newton on `1/x`, as limma does).
pub fn trigamma_inverse(y: f64) -> f64 {
    if !(y.is_finite() && y > 0.0) {
        return f64::NAN;
    }
    if y > 1e7 {
        return 1.0 / y.sqrt();
    }
    if y < 1e-6 {
        return 1.0 / y;
    }
    let mut x = 0.5 + 1.0 / y;
    for _ in 0..50 {
        let tri = trigamma(x);
        // d/dx trigamma = tetragamma, approximated by a central difference of trigamma.
        let h = 1e-5 * x;
        let tetra = (trigamma(x + h) - trigamma(x - h)) / (2.0 * h);
        let dif = tri * (1.0 - tri / y) / tetra;
        x += dif;
        if x.is_nan() || x <= 0.0 {
            x = 1e-8;
        }
        if -dif / x < 1e-8 {
            break;
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn special_functions_match_known_values() {
        // ψ(1) = -γ, ψ(0.5) = -γ - 2 ln 2, ψ'(1) = π²/6, ψ'(0.5) = π²/2.
        let gamma = 0.577_215_664_901_532_9;
        assert!(close(digamma(1.0), -gamma, 1e-12));
        assert!(close(digamma(0.5), -gamma - 2.0 * 2f64.ln(), 1e-12));
        let pi2 = std::f64::consts::PI.powi(2);
        assert!(close(trigamma(1.0), pi2 / 6.0, 1e-10));
        assert!(close(trigamma(0.5), pi2 / 2.0, 1e-10));
        for x in [0.3, 1.0, 3.5, 20.0, 400.0] {
            let y = trigamma(x);
            assert!(close(trigamma_inverse(y), x, 1e-6 * x), "x={x}");
        }
        for (p, z) in [
            (0.5, 0.0),
            (0.8, 0.841_621_2),
            (0.99, 2.326_347_9),
            (0.995, 2.575_829_3),
        ] {
            assert!(close(normal_quantile(p), z, 1e-6), "p={p}");
        }
        assert!(close(normal_quantile(1e-6), -4.753_424_3, 1e-5));
        assert!(close(t_quantile(0.995, 7.0), 3.499_483, 1e-5));
        assert!(close(t_quantile(0.99, 4.0), 3.746_947, 1e-5));
        assert!(close(t_quantile(0.99, 1e9), 2.326_348, 1e-5));
    }

    #[test]
    fn pooling_shrinks_toward_the_group_and_keeps_a_different_case_apart() {
        // Ten cases of 8 runs whose spreads scatter as chi-square sampling alone would
        // (sd around 3%): the prior is near 3% with the pooled 70 degrees of freedom.
        let vars = [0.6, 0.8, 0.9, 1.0, 1.0, 1.1, 1.2, 1.3, 0.7, 1.4];
        let spreads: Vec<LogSpread> = vars
            .iter()
            .map(|f| LogSpread {
                k: 8,
                mean: 0.0,
                var: f * 0.03f64.powi(2),
            })
            .collect();
        let p = pool(&spreads).unwrap();
        assert_eq!(p.cases, 10);
        assert!(close(p.df, 70.0, 1e-9), "{p:?}");
        assert!((0.027..0.034).contains(&p.var.sqrt()), "{p:?}");
        let own = spreads[0];
        let (var, df) = posterior(Some(&own), Some(&p)).unwrap();
        assert_eq!(df, 77.0);
        assert!(var > own.var && var < p.var);

        // Spreads a hundredfold apart: sampling does not explain it, the prior is weak.
        let mixed: Vec<LogSpread> = [1e-4, 1e-2, 1e-4, 1e-2, 2e-4, 2e-2]
            .iter()
            .map(|&var| LogSpread {
                k: 8,
                mean: 0.0,
                var,
            })
            .collect();
        let p = pool(&mixed).unwrap();
        assert!(p.df < 5.0, "{p:?}");

        // Nothing to pool.
        assert_eq!(pool(&spreads[..1]), None);
        assert_eq!(posterior(None, None), None);
        assert_eq!(posterior(Some(&own), None), Some((own.var, 7.0)));
        assert_eq!(log_spread(&[1.0]), None);
        assert_eq!(log_spread(&[1.0, -1.0]), None);
        let s = log_spread(&[1.0, std::f64::consts::E]).unwrap();
        assert!(close(s.mean, 0.5, 1e-12) && close(s.var, 0.5, 1e-12));
    }

    #[test]
    fn power_splits_run_and_within_noise() {
        // sd 3% with 5 repetitions of 4% within-run CV: within part pi/2 * 0.04^2 / 5 = 5.0e-4,
        // run part sqrt(9e-4 - 5.03e-4) = 1.99%.
        let p = Power {
            sd: 0.03,
            df: 70.0,
            k: 8,
            within_cv: 0.04,
            repetitions: 5,
        };
        assert!(close(
            p.run_sd(),
            (9e-4 - MEDIAN_EFFICIENCY * 0.0016 / 5.0).sqrt(),
            1e-12
        ));
        let one = p.mde(1, CONFIDENCE);
        let three = p.mde(3, CONFIDENCE);
        assert_eq!(pooled_runs(&[1.0, 4.0]), Some(2.0));
        assert_eq!(pooled_runs(&[1.0, 2.0, 1.1]), Some(1.1));
        assert_eq!(pooled_runs(&[]), None);
        assert!(pooled_var_factor(3) < 0.5 && pooled_var_factor(9) < pooled_var_factor(5));
        // exp((t(0.999,70) + z(0.8)) * 0.03 * sqrt(1 + 1/8)) - 1 = exp(4.05 * 0.0318) - 1 = 13.8%.
        assert!((0.13..0.145).contains(&one), "{one}");
        assert!(three < one);
        // More repetitions help only the within part; the run shift keeps one run above 5%.
        assert!(p.mde_with(1000, 1, CONFIDENCE) > 0.05);
        assert_eq!(p.repetitions_for(0.05, 1, CONFIDENCE), None);
        let r = p.repetitions_for(0.11, 1, CONFIDENCE).unwrap();
        assert!(r > 5 && p.mde_with(r, 1, CONFIDENCE) <= 0.11);
        assert!(p.mde_with(r - 1, 1, CONFIDENCE) > 0.11);
        // The history's own uncertainty bounds what pooled runs reach.
        let j = p.runs_for(0.08, CONFIDENCE).unwrap();
        assert!(p.mde(j, CONFIDENCE) <= 0.08 && p.mde(j - 1, CONFIDENCE) > 0.08);
        assert_eq!(p.runs_for(0.02, CONFIDENCE), None);
        // Unknown repetitions: no plan.
        let unknown = Power {
            repetitions: 0,
            ..p
        };
        assert_eq!(unknown.repetitions_for(0.2, 1, CONFIDENCE), None);
        assert_eq!(unknown.run_sd(), 0.03);
    }

    #[test]
    fn change_points_find_a_step_no_single_night_crossed() {
        // 12 runs alternating 1% around 1.0, then 12 around 1.04: each run is within 3 sd of
        // the old level, the step is clear.
        let wiggle = [1.0, 1.01, 0.99, 1.005, 0.995, 1.0];
        let mut series: Vec<f64> = (0..12).map(|i| wiggle[i % 6]).collect();
        series.extend((0..12).map(|i| 1.04 * wiggle[(i + 3) % 6]));
        let cps = change_points(&series);
        assert_eq!(cps.len(), 1, "{cps:?}");
        assert_eq!(cps[0].index, 12);
        assert!(close(cps[0].shift(), 0.04, 0.005), "{:?}", cps[0]);
        assert!(cps[0].z > cps[0].limit);
        // Two steps.
        series.extend((0..12).map(|i| 0.97 * wiggle[i % 6]));
        let cps = change_points(&series);
        let at: Vec<usize> = cps.iter().map(|c| c.index).collect();
        assert_eq!(at, vec![12, 24]);
        assert!(cps[1].shift() < -0.05);
        // A stable series, a short one, a bad one: none.
        let stable: Vec<f64> = (0..30).map(|i| wiggle[i % 6]).collect();
        assert!(change_points(&stable).is_empty());
        assert!(change_points(&series[..7]).is_empty());
        assert!(change_points(&[1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]).is_empty());
        // A constant series: the scale floors, nothing divides by zero.
        assert!(change_points(&[2.0; 20]).is_empty());
    }
}
