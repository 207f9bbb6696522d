//! The benchmark trend chart, rendered on the server as SVG (no script, no
//! CDN, works offline and in a screenshot): run medians over time as a line
//! with one point per run coloured by verdict, the baseline band, and the
//! accepted-baseline runs marked with a ring.
//!
//! Every run point is a `<circle class="run verdict-V">` with `data-job`,
//! `data-median` and `data-time`, so tests (and people with dev tools) read
//! what is drawn.

use maud::{html, Markup};
use msfleet_proto as pb;
use std::collections::BTreeSet;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 36.0;

/// The band the chart shades: where the accepted runs lie.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Band {
    pub low: f64,
    pub center: f64,
    pub high: f64,
}

/// The baseline band of `baseline`: the median of its newest 30 accepted
/// runs (the window verdicts judge against) ± 3 scaled MADs, at least ±2%;
/// with no history, its anchor ± 2%.
pub fn band(baseline: &pb::Baseline) -> Option<Band> {
    let recent: Vec<f64> = baseline
        .history
        .iter()
        .rev()
        .take(30)
        .map(|r| r.median)
        .filter(|m| m.is_finite() && *m > 0.0)
        .collect();
    let center = match median(&recent) {
        Some(m) => m,
        None => baseline.anchor.filter(|a| a.is_finite() && *a > 0.0)?,
    };
    let deviations: Vec<f64> = recent.iter().map(|m| (m - center).abs()).collect();
    let spread = (median(&deviations).unwrap_or(0.0) * 1.4826 * 3.0).max(center * 0.02);
    Some(Band {
        low: (center - spread).max(0.0),
        center,
        high: center + spread,
    })
}

fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The job ids of `baseline`'s accepted runs.
pub fn accepted_jobs(baseline: Option<&pb::Baseline>) -> BTreeSet<String> {
    baseline
        .map(|b| b.history.iter().map(|r| r.job_id.clone()).collect())
        .unwrap_or_default()
}

/// A short number: 3 significant digits.
pub fn short(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    format!("{v:.digits$}")
}

/// The SVG chart of `runs` (oldest first) with `band` and the `accepted` runs.
pub fn trend(
    runs: &[pb::CaseRun],
    band: Option<Band>,
    accepted: &BTreeSet<String>,
    unit: &str,
) -> Markup {
    let points: Vec<&pb::CaseRun> = runs
        .iter()
        .filter(|r| r.median.is_finite() && r.median > 0.0)
        .collect();
    if points.is_empty() {
        return html! { p.empty { "No measured run yet." } };
    }
    let (t0, t1) = points.iter().fold((i64::MAX, i64::MIN), |(lo, hi), r| {
        (lo.min(r.time_ms), hi.max(r.time_ms))
    });
    let mut lo = points
        .iter()
        .map(|r| r.median)
        .fold(f64::INFINITY, f64::min);
    let mut hi = points
        .iter()
        .map(|r| r.median)
        .fold(f64::NEG_INFINITY, f64::max);
    if let Some(b) = band {
        lo = lo.min(b.low);
        hi = hi.max(b.high);
    }
    let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.01).max(1e-12);
    let (lo, hi) = ((lo - pad).max(0.0), hi + pad);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let n = points.len();
    // Evenly spaced by run when all share one instant, else by time.
    let x = |i: usize, t: i64| {
        if t1 > t0 {
            LEFT + plot_w * (t - t0) as f64 / (t1 - t0) as f64
        } else if n > 1 {
            LEFT + plot_w * i as f64 / (n - 1) as f64
        } else {
            LEFT + plot_w / 2.0
        }
    };
    let y = |v: f64| TOP + plot_h * (1.0 - (v - lo) / (hi - lo));
    let line: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{:.1},{:.1}", x(i, r.time_ms), y(r.median)))
        .collect();
    let ticks: Vec<f64> = (0..=4).map(|i| lo + (hi - lo) * i as f64 / 4.0).collect();
    let unit_label = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    html! {
        svg.trend viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img"
            aria-label="run medians over time" data-runs=(n) {
            @if let Some(b) = band {
                rect.band x=(LEFT) y=(format!("{:.1}", y(b.high))) width=(plot_w)
                    height=(format!("{:.1}", (y(b.low) - y(b.high)).max(1.0)))
                    data-low=(b.low) data-high=(b.high) {
                    title { "baseline band " (short(b.low)) "–" (short(b.high)) (unit_label) }
                }
                line.baseline x1=(LEFT) x2=(LEFT + plot_w) y1=(format!("{:.1}", y(b.center)))
                    y2=(format!("{:.1}", y(b.center))) {}
            }
            @for t in &ticks {
                line.grid x1=(LEFT) x2=(LEFT + plot_w) y1=(format!("{:.1}", y(*t))) y2=(format!("{:.1}", y(*t))) {}
                text.axis x=(LEFT - 6.0) y=(format!("{:.1}", y(*t) + 4.0)) text-anchor="end" { (short(*t)) }
            }
            text.axis.time x=(LEFT) y=(HEIGHT - 10.0) data-ms=(t0) { (super::pages::utc(t0)) }
            text.axis.time x=(LEFT + plot_w) y=(HEIGHT - 10.0) text-anchor="end" data-ms=(t1) { (super::pages::utc(t1)) }
            polyline.medians points=(line.join(" ")) {}
            @for (i, r) in points.iter().enumerate() {
                @let (cx, cy) = (format!("{:.1}", x(i, r.time_ms)), format!("{:.1}", y(r.median)));
                @if accepted.contains(&r.job_id) {
                    circle.accepted cx=(cx) cy=(cy) r="8" data-job=(r.job_id) {}
                }
                circle class={ "run verdict-" (r.verdict) } cx=(cx) cy=(cy) r="4.5"
                    data-job=(r.job_id) data-median=(r.median) data-time=(r.time_ms)
                    data-verdict=(r.verdict) {
                    title { "job " (r.job_id) ": " (short(r.median)) (unit_label) " — " (r.verdict) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(job: &str, t: i64, median: f64, verdict: &str) -> pb::CaseRun {
        pb::CaseRun {
            job_id: job.into(),
            time_ms: t,
            median,
            verdict: verdict.into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_measured_run_is_one_point_and_accepted_ones_are_ringed() {
        let runs = vec![
            run("1", 1000, 1.0, "no_baseline"),
            run("2", 2000, 1.02, "pass"),
            run("3", 3000, 1.5, "regression"),
            run("4", 4000, 0.0, "error"),
        ];
        let accepted: BTreeSet<String> = ["1".to_string()].into();
        let svg = trend(&runs, None, &accepted, "s").into_string();
        assert_eq!(
            svg.matches("<circle class=\"run ").count(),
            3,
            "the errored run has no median"
        );
        assert_eq!(svg.matches("class=\"accepted\"").count(), 1);
        assert!(svg.contains("verdict-regression"));
        assert!(svg.contains("data-runs=\"3\""));
        assert!(trend(&[], None, &accepted, "")
            .into_string()
            .contains("No measured run"));
    }

    #[test]
    fn the_band_is_robust_to_one_outlier() {
        let history = [1.0, 1.01, 0.99, 1.0, 5.0]
            .iter()
            .enumerate()
            .map(|(i, &m)| pb::BaselineRun {
                job_id: i.to_string(),
                median: m,
                ..Default::default()
            })
            .collect();
        let b = band(&pb::Baseline {
            history,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(b.center, 1.0);
        assert!(b.high < 1.1 && b.low > 0.9, "{b:?}");
        let anchored = band(&pb::Baseline {
            anchor: Some(2.0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (anchored.low, anchored.center, anchored.high),
            (1.96, 2.0, 2.04)
        );
        assert!(band(&pb::Baseline::default()).is_none());
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(short(1.23456), "1.23");
        assert_eq!(short(123.456), "123");
        assert_eq!(short(0.0123456), "0.0123");
    }
}
