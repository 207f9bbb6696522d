//! A simulation of nightly benchmark runs that drives the real verdict code
//! ([`verdict::judge_runs`] with the prior from [`noise::pool`], the way the scheduler pools and
//! the agent confirms) under configurable noise, and measures what the verdicts are worth:
//! false alarms and `noisy` verdicts on unchanged cases, detection of 5/10/15/20% slowdowns, and
//! the detection of an *oracle* that knows each case's null distribution exactly and judges a
//! single run at the same false-alarm rate.
//!
//! `cargo bench -p msagent --bench verdict_sim` prints the table for every [`NoiseModel`] of
//! [`settings`] (`-- --suites N --seed S` to change the size and the seed); the unit test runs a
//! smaller version and checks the goals loosely.
//!
//! # The noise model
//!
//! A *suite* is [`NoiseModel::cases`] cases measured on one hardware profile. Each case has its
//! own noise level (a multiplier, `exp(-h)`, 1 or `exp(h)` with `h = heterogeneity`, on both the
//! run shift and the within-run noise). A *run* of a case is `repetitions` samples
//! `exp(level + b + w_i + spike_i)`: `b` the run-level shift shared by all repetitions
//! (normal, or Student-t with `run_tail_df` degrees of freedom scaled to the same sd), plus with
//! probability `bimodal_prob` the slow mode's `bimodal_shift`; `w_i` within-run normal noise;
//! `spike_i` = `spike_size` with probability `spike_prob` per repetition. The case's `level`
//! walks by `drift_sd` per night (slow drift the history does not know about). Each case has
//! `history` accepted runs, then tonight's run is measured at `level + ln(1 + slowdown)`; a
//! regression candidate gets the verdict code's confirming re-runs, each with a fresh run shift.

use super::verdict::{self, Baseline, Direction, Rules, Verdict};
use msfleet_proto::noise;

/// The slowdowns whose detection is measured (fractions).
pub const SLOWDOWNS: [f64; 4] = [0.05, 0.10, 0.15, 0.20];

/// One noise setting.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseModel {
    pub name: &'static str,
    /// Cases per suite (pooled together).
    pub cases: usize,
    /// Accepted runs of history per case.
    pub history: usize,
    /// Repetitions per run.
    pub repetitions: usize,
    /// Log sd of the run-level shift.
    pub run_sd: f64,
    /// Student-t degrees of freedom of the run shift (heavier tails); `None`: normal.
    pub run_tail_df: Option<f64>,
    /// Log sd of each repetition around its run.
    pub within_sd: f64,
    /// Probability that a repetition spikes, and the spike's log size.
    pub spike_prob: f64,
    pub spike_size: f64,
    /// Log sd of the case level's random walk per night.
    pub drift_sd: f64,
    /// Probability that a run lands in the slow mode, and the mode's log shift.
    pub bimodal_prob: f64,
    pub bimodal_shift: f64,
    /// Spread of the cases' noise levels (log of the largest multiplier).
    pub heterogeneity: f64,
}

impl NoiseModel {
    const BASE: NoiseModel = NoiseModel {
        name: "",
        cases: 12,
        history: 8,
        repetitions: 5,
        run_sd: 0.03,
        run_tail_df: None,
        within_sd: 0.02,
        spike_prob: 0.02,
        spike_size: 0.405, // ln 1.5
        drift_sd: 0.0,
        bimodal_prob: 0.0,
        bimodal_shift: 0.0,
        heterogeneity: 0.3,
    };
}

/// The settings of the bench: several kinds of machine noise, none tuned for.
pub fn settings() -> Vec<NoiseModel> {
    let b = NoiseModel::BASE;
    vec![
        NoiseModel {
            name: "run shift 3% + within 2% + spikes",
            ..b
        },
        NoiseModel {
            name: "run shift 4.5%, heavy-tailed (t5)",
            run_sd: 0.045,
            run_tail_df: Some(5.0),
            ..b
        },
        NoiseModel {
            name: "within-run dominated (1% / 6%)",
            run_sd: 0.01,
            within_sd: 0.06,
            ..b
        },
        NoiseModel {
            name: "frequent big spikes (10% x +100%)",
            spike_prob: 0.10,
            spike_size: std::f64::consts::LN_2,
            ..b
        },
        NoiseModel {
            name: "slow drift 0.7%/night",
            drift_sd: 0.007,
            ..b
        },
        NoiseModel {
            name: "bimodal runs (20% at +5%)",
            run_sd: 0.02,
            bimodal_prob: 0.2,
            bimodal_shift: 0.049,
            ..b
        },
        NoiseModel {
            name: "quiet machine (1% / 1%)",
            run_sd: 0.01,
            within_sd: 0.01,
            ..b
        },
        NoiseModel {
            name: "one case alone: nothing to pool",
            cases: 1,
            ..b
        },
        NoiseModel {
            name: "3 cases, 10 reps, 20 runs",
            cases: 3,
            history: 20,
            repetitions: 10,
            ..b
        },
    ]
}

/// What one setting measured. Rates are fractions of the unchanged (or slowed) cases.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    pub model: NoiseModel,
    /// Case trials per slowdown.
    pub trials: usize,
    pub false_alarms: f64,
    pub noisy: f64,
    /// Detection at each of [`SLOWDOWNS`].
    pub detection: [f64; 4],
    /// The oracle's detection at the same false-alarm rate (at least [`ORACLE_MIN_ALPHA`]).
    pub oracle: [f64; 4],
    /// The false-alarm rate the oracle was held to.
    pub oracle_alpha: f64,
    /// Noisy verdicts on slowed cases, at each slowdown.
    pub noisy_slowed: [f64; 4],
    /// Extra runs (re-runs) per case trial on unchanged cases.
    pub reruns_per_case: f64,
}

impl SimReport {
    /// Oracle minus ours at each slowdown (points of percentage).
    pub fn gap(&self) -> [f64; 4] {
        std::array::from_fn(|i| (self.oracle[i] - self.detection[i]) * 100.0)
    }
}

/// The oracle is held to the procedure's false-alarm rate, but never to less than this: a rate
/// measured as 0 would make any oracle blind.
pub const ORACLE_MIN_ALPHA: f64 = 0.005;

/// SplitMix64: small, fast, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Student t with `df` degrees of freedom, scaled to unit variance (`df > 2`).
    fn t_unit(&mut self, df: f64) -> f64 {
        // Chi-square by a sum of squared normals for integer df, else by Wilson-Hilferty.
        let chi2 = if df.fract() == 0.0 && df <= 30.0 {
            (0..df as usize).map(|_| self.normal().powi(2)).sum::<f64>()
        } else {
            let z = self.normal();
            df * (1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt()).powi(3)
        };
        self.normal() / (chi2 / df).sqrt() * ((df - 2.0) / df).sqrt()
    }
}

impl NoiseModel {
    /// The case noise multipliers, one per case (a fixed cycle, so every suite has all).
    fn multiplier(&self, case: usize) -> f64 {
        [1.0, (-self.heterogeneity).exp(), self.heterogeneity.exp()][case % 3]
    }

    /// One run's samples at `level` (log) for a case with noise multiplier `mult`.
    fn run(&self, rng: &mut Rng, level: f64, mult: f64) -> Vec<f64> {
        let unit = match self.run_tail_df {
            Some(df) => rng.t_unit(df),
            None => rng.normal(),
        };
        let mut shift = self.run_sd * mult * unit;
        if rng.uniform() < self.bimodal_prob {
            shift += self.bimodal_shift;
        }
        (0..self.repetitions)
            .map(|_| {
                let spike = if rng.uniform() < self.spike_prob {
                    self.spike_size
                } else {
                    0.0
                };
                (level + shift + self.within_sd * mult * rng.normal() + spike).exp()
            })
            .collect()
    }

    /// The log median of one null run relative to its level.
    fn null_log_median(&self, rng: &mut Rng, mult: f64) -> f64 {
        verdict::median_of(&self.run(rng, 0.0, mult)).ln()
    }
}

/// Tallies of one slowdown.
#[derive(Default, Clone, Copy)]
struct Tally {
    regression: usize,
    noisy: usize,
    reruns: usize,
}

/// One case's verdict tonight, as the agent reaches it: a first run, and for a regression
/// candidate the confirming re-runs judged together with it.
fn verdict_tonight(
    model: &NoiseModel,
    rng: &mut Rng,
    base: &Baseline,
    rules: &Rules,
    level: f64,
    mult: f64,
) -> (Verdict, usize) {
    let mut runs = vec![model.run(rng, level, mult)];
    let first = verdict::judge(&runs[0], Direction::LowerIsBetter, base, rules);
    if !first.needs_confirmation {
        return (first.verdict, 0);
    }
    for _ in 0..rules.confirm_runs {
        runs.push(model.run(rng, level, mult));
    }
    let slices: Vec<&[f64]> = runs.iter().map(Vec::as_slice).collect();
    let all = verdict::judge_runs(&slices, Direction::LowerIsBetter, base, rules);
    (all.verdict, rules.confirm_runs)
}

/// Simulates `suites` suites of `model` (every case of every suite at every slowdown) from
/// `seed`.
pub fn simulate(model: &NoiseModel, suites: usize, seed: u64) -> SimReport {
    let rules = Rules::default();
    let mut rng = Rng::new(seed);
    let mut null = Tally::default();
    let mut slowed = [Tally::default(); 4];
    let mut trials = 0;
    for _ in 0..suites {
        // Every case's history, then the prior pooled over the suite, as the scheduler does.
        let mut cases = Vec::with_capacity(model.cases);
        for c in 0..model.cases {
            let mult = model.multiplier(c);
            let mut level = 0.0;
            let mut history = Vec::with_capacity(model.history);
            for _ in 0..model.history {
                history.push(verdict::median_of(&model.run(&mut rng, level, mult)));
                level += model.drift_sd * rng.normal();
            }
            cases.push((mult, level, history));
        }
        let spreads: Vec<noise::LogSpread> = cases
            .iter()
            .filter_map(|(_, _, h)| noise::log_spread(h))
            .collect();
        let prior = noise::pool(&spreads);
        for (mult, level, history) in &cases {
            trials += 1;
            let base = Baseline {
                history: history.clone(),
                history_ids: (0..history.len()).map(|i| i.to_string()).collect(),
                prior,
                ..Baseline::default()
            };
            let (v, reruns) = verdict_tonight(model, &mut rng, &base, &rules, *level, *mult);
            count(&mut null, v, reruns);
            for (i, s) in SLOWDOWNS.iter().enumerate() {
                let at = level + s.ln_1p();
                let (v, reruns) = verdict_tonight(model, &mut rng, &base, &rules, at, *mult);
                count(&mut slowed[i], v, reruns);
            }
        }
    }
    let rate = |n: usize| n as f64 / trials.max(1) as f64;
    let false_alarms = rate(null.regression);
    let oracle_alpha = false_alarms.max(ORACLE_MIN_ALPHA);
    let oracle = oracle_detection(model, oracle_alpha, seed ^ 0x0a11_ce00);
    SimReport {
        model: model.clone(),
        trials,
        false_alarms,
        noisy: rate(null.noisy),
        detection: std::array::from_fn(|i| rate(slowed[i].regression)),
        oracle,
        oracle_alpha,
        noisy_slowed: std::array::from_fn(|i| rate(slowed[i].noisy)),
        reruns_per_case: rate(null.reruns),
    }
}

fn count(t: &mut Tally, v: Verdict, reruns: usize) {
    match v {
        Verdict::Regression => t.regression += 1,
        Verdict::Noisy => t.noisy += 1,
        _ => {}
    }
    t.reruns += reruns;
}

/// Detection of the single-run oracle at false-alarm rate `alpha`: per case noise level, the
/// `1 - alpha` quantile of the null distribution of a run's log median (by Monte Carlo, the
/// oracle knows it), and the share of slowed runs above it; averaged over the levels.
fn oracle_detection(model: &NoiseModel, alpha: f64, seed: u64) -> [f64; 4] {
    const DRAWS: usize = 20_000;
    let mut rng = Rng::new(seed);
    let mut out = [0.0; 4];
    for level in 0..3 {
        let mult = model.multiplier(level);
        let mut null: Vec<f64> = (0..DRAWS)
            .map(|_| model.null_log_median(&mut rng, mult))
            .collect();
        null.sort_by(f64::total_cmp);
        let at = ((1.0 - alpha) * DRAWS as f64).floor() as usize;
        let q = null[at.min(DRAWS - 1)];
        for (i, s) in SLOWDOWNS.iter().enumerate() {
            let shift = s.ln_1p();
            let above = null.iter().filter(|v| *v + shift > q).count();
            out[i] += above as f64 / DRAWS as f64 / 3.0;
        }
    }
    out
}

/// The report as table rows (percentages).
pub fn table(reports: &[SimReport]) -> String {
    let mut out = format!(
        "{:<36} {:>6} {:>6} {:>6} | {:>17} {:>17} {:>17} {:>17} | {:>7}\n",
        "setting (cases x runs x reps)",
        "FA%",
        "noisy%",
        "rerun",
        "5%: ours/orc/gap",
        "10%: ours/orc/gap",
        "15%: ours/orc/gap",
        "20%: ours/orc/gap",
        "orc FA%"
    );
    for r in reports {
        let gap = r.gap();
        let cells: Vec<String> = (0..4)
            .map(|i| {
                format!(
                    "{:>5.1}/{:>5.1}/{:>+5.1}",
                    r.detection[i] * 100.0,
                    r.oracle[i] * 100.0,
                    gap[i]
                )
            })
            .collect();
        out.push_str(&format!(
            "{:<36} {:>6.2} {:>6.2} {:>6.3} | {:>17} {:>17} {:>17} {:>17} | {:>7.2}\n",
            format!(
                "{} ({}x{}x{})",
                r.model.name, r.model.cases, r.model.history, r.model.repetitions
            ),
            r.false_alarms * 100.0,
            r.noisy * 100.0,
            r.reruns_per_case,
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            r.oracle_alpha * 100.0
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The goals of issue 15 (false alarms <= 0.5%, noisy <= 2%, detection within 10 points of
    /// the oracle at 10% and 15%), loosely enough for 1200 case trials per setting to pass
    /// deterministically (fixed seed), tightly enough that the figures for the old rules
    /// (36% caught where the oracle caught 65%, 9% noisy) would fail. The gap is not asserted for
    /// a case alone: with nothing to pool, 8 runs leave 7 degrees of freedom (`t(0.999, 7) =
    /// 5.4`) and the verdict stays well short of the oracle there (the README says how far).
    #[test]
    fn verdicts_meet_the_goals_in_every_setting() {
        let reports: Vec<SimReport> = settings()
            .iter()
            .enumerate()
            .map(|(i, m)| simulate(m, 100, 0x15_0000 + i as u64))
            .collect();
        println!("{}", table(&reports));
        for r in &reports {
            let name = r.model.name;
            assert!(
                r.false_alarms <= 0.01,
                "{name}: false alarms {}",
                r.false_alarms
            );
            assert!(r.noisy <= 0.03, "{name}: noisy {}", r.noisy);
            let gap = r.gap();
            if r.model.cases > 1 {
                assert!(gap[1] <= 15.0, "{name}: 10% gap {}", gap[1]);
                assert!(gap[2] <= 15.0, "{name}: 15% gap {}", gap[2]);
            }
            assert!(
                r.detection[3] >= r.detection[1],
                "{name}: detection not monotone"
            );
        }
    }

    #[test]
    fn the_oracle_and_the_noise_are_what_they_say() {
        // Normal run shift of 3% alone, one repetition: the oracle at alpha 0.5% has its
        // threshold at 2.576 sd = 7.73%; a 10% slowdown (ln 1.1 = 0.0953 = 3.18 sd) is caught
        // with probability Phi(3.18 - 2.576) = 72.7%.
        let model = NoiseModel {
            repetitions: 1,
            within_sd: 0.0,
            spike_prob: 0.0,
            heterogeneity: 0.0,
            ..NoiseModel::BASE
        };
        let o = oracle_detection(&model, 0.005, 7);
        let want = noise::normal_cdf(1.1f64.ln() / 0.03 - noise::normal_quantile(0.995));
        assert!((o[1] - want).abs() < 0.02, "{} vs {want}", o[1]);
        // The t draws have unit variance.
        let mut rng = Rng::new(3);
        let v: f64 = (0..40_000).map(|_| rng.t_unit(5.0).powi(2)).sum::<f64>() / 40_000.0;
        assert!((v - 1.0).abs() < 0.1, "{v}");
    }
}
