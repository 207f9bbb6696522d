//! What the runs of a case measured and reported: the measured metrics, the `$MSFLEET_METRICS`
//! file, the series of samples per metric and their summaries, the primary metric, the
//! operators' medians.

use super::verdict;
use msfleet_proto as pb;
use msfleet_proto::bench::{TOTAL_TIME, WALL_TIME};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// Measured by the agent: user + system CPU time of the run's process tree.
pub const CPU_TIME: &str = "cpu_time_s";
/// Measured by the agent: peak resident set size of the run (its largest process).
pub const PEAK_RSS: &str = "peak_rss_bytes";
/// Measured through NVML: peak GPU memory used by the run's processes.
pub const GPU_MEMORY_PEAK: &str = "gpu_memory_peak_bytes";
/// Measured through NVML: NVML clock throttle reason bits seen during the run (GPU idle excluded).
pub const GPU_THROTTLE: &str = "gpu_throttle_reasons";

/// Where a metric comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Measured,
    Reported,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Measured => "measured",
            Source::Reported => "reported",
        }
    }
}

/// What one run of a case yielded.
#[derive(Debug, Clone, Default)]
pub(super) struct RunSample {
    /// Agent-measured metrics, in a fixed order.
    pub(super) measured: Vec<(&'static str, f64)>,
    /// From `$MSFLEET_METRICS` and the extractors.
    pub(super) reported: BTreeMap<String, f64>,
    pub(super) operators: Vec<verdict::OperatorTime>,
    /// Throttle reason bits seen (GPU idle excluded); 0 without NVML.
    pub(super) throttle: u64,
}

impl RunSample {
    fn get(&self, metric: &str) -> Option<f64> {
        self.measured
            .iter()
            .find(|(n, _)| *n == metric)
            .map(|(_, v)| *v)
            .or_else(|| self.reported.get(metric).copied())
    }
}

/// What the `$MSFLEET_METRICS` file said.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Reported {
    pub(super) metrics: Vec<(String, f64)>,
    pub(super) operators: Vec<verdict::OperatorTime>,
}

/// Parses the JSON object a case wrote to `$MSFLEET_METRICS`: every top-level finite number is a
/// metric; `operators` is a list of `{name, total_time_s, num_calls}` (`num_calls` optional).
pub(super) fn parse_reported(bytes: &[u8]) -> Result<Reported, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("the top level must be a JSON object".into());
    };
    let mut out = Reported::default();
    for (key, v) in map {
        if key == "operators" {
            if !v.is_null() {
                out.operators = parse_operators(&v)?;
            }
        } else if let Some(x) = v.as_f64().filter(|x| x.is_finite()) {
            out.metrics.push((key, x));
        }
    }
    Ok(out)
}

fn parse_operators(v: &Value) -> Result<Vec<verdict::OperatorTime>, String> {
    let Value::Array(items) = v else {
        return Err("\"operators\" must be a list of {name, total_time_s, num_calls}".into());
    };
    let mut ops = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let name = item
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("operators[{i}] has no \"name\" string"))?;
        let total_time_s = item
            .get("total_time_s")
            .and_then(Value::as_f64)
            .filter(|t| t.is_finite() && *t >= 0.0)
            .ok_or_else(|| {
                format!("operators[{i}] ({name}): \"total_time_s\" must be a non-negative number")
            })?;
        let num_calls = match item.get("num_calls") {
            None | Some(Value::Null) => 0,
            Some(n) => n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|x| *x >= 0.0 && x.fract() == 0.0 && *x <= u64::MAX as f64)
                        .map(|x| x as u64)
                })
                .ok_or_else(|| {
                    format!("operators[{i}] ({name}): \"num_calls\" must be a non-negative integer")
                })?,
        };
        ops.push(verdict::OperatorTime {
            name: name.to_string(),
            total_time_s,
            num_calls,
        });
    }
    Ok(ops)
}

/// The samples of one metric over a case's measured runs.
#[derive(Debug, Clone)]
pub(super) struct Series {
    name: String,
    source: Source,
    samples: Vec<f64>,
}

fn unit_of(metric: &str) -> &'static str {
    if metric.ends_with("_s") {
        "s"
    } else if metric.ends_with("_bytes") {
        "bytes"
    } else {
        ""
    }
}

/// Every metric of the runs: measured ones first (in their order), then the reported ones by
/// name. A reported metric with a measured metric's name is dropped (the agent's value wins).
pub(super) fn series_of(runs: &[RunSample]) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    let mut add = |name: &str, source: Source, v: f64| {
        if let Some(s) = out.iter_mut().find(|s| s.name == name) {
            if s.source == source {
                s.samples.push(v);
            }
        } else {
            out.push(Series {
                name: name.to_string(),
                source,
                samples: vec![v],
            });
        }
    };
    for r in runs {
        for (n, v) in &r.measured {
            add(n, Source::Measured, *v);
        }
    }
    for r in runs {
        for (n, v) in &r.reported {
            add(n, Source::Reported, *v);
        }
    }
    out
}

pub(super) fn metric_summary(s: &Series) -> pb::MetricSummary {
    let m = verdict::median_of(&s.samples);
    let deviations: Vec<f64> = s.samples.iter().map(|v| (v - m).abs()).collect();
    let mad = verdict::median_of(&deviations);
    let robust_cv = if m != 0.0 {
        verdict::ROBUST_CV_SCALE * mad / m.abs()
    } else {
        0.0
    };
    pb::MetricSummary {
        name: s.name.clone(),
        unit: unit_of(&s.name).to_string(),
        source: s.source.as_str().to_string(),
        n: u32::try_from(s.samples.len()).unwrap_or(u32::MAX),
        median: m,
        mad,
        robust_cv,
        samples: s.samples.clone(),
    }
}

/// The metric the verdict is about: the job's, else `total_time_s` when every run reported it,
/// else `wall_time_s`.
pub(super) fn primary_metric(plan_metric: Option<&str>, runs: &[RunSample]) -> String {
    if let Some(m) = plan_metric {
        return m.to_string();
    }
    if !runs.is_empty() && runs.iter().all(|r| r.reported.contains_key(TOTAL_TIME)) {
        TOTAL_TIME.to_string()
    } else {
        WALL_TIME.to_string()
    }
}

/// The primary metric's value in every run, or why it is missing.
pub(super) fn primary_samples(metric: &str, runs: &[RunSample]) -> Result<Vec<f64>, String> {
    let mut samples = Vec::with_capacity(runs.len());
    for (i, r) in runs.iter().enumerate() {
        match r.get(metric) {
            Some(v) => samples.push(v),
            None => {
                let known: Vec<&str> = r
                    .measured
                    .iter()
                    .map(|(n, _)| *n)
                    .chain(r.reported.keys().map(String::as_str))
                    .collect();
                return Err(format!(
                    "metric '{metric}' is missing from run {} of {} (it has: {})",
                    i + 1,
                    runs.len(),
                    known.join(", ")
                ));
            }
        }
    }
    Ok(samples)
}

/// Per-operator medians over the runs (each run's duplicates added up first), largest first.
pub(super) fn median_operators(runs: &[RunSample]) -> Vec<verdict::OperatorTime> {
    let mut order: Vec<String> = Vec::new();
    let mut per: HashMap<String, (Vec<f64>, Vec<f64>)> = HashMap::new();
    for r in runs {
        let mut this_run: BTreeMap<&str, (f64, u64)> = BTreeMap::new();
        for op in &r.operators {
            let e = this_run.entry(op.name.as_str()).or_insert((0.0, 0));
            e.0 += op.total_time_s;
            e.1 = e.1.saturating_add(op.num_calls);
        }
        for (name, (t, calls)) in this_run {
            let e = per.entry(name.to_string()).or_insert_with(|| {
                order.push(name.to_string());
                (Vec::new(), Vec::new())
            });
            e.0.push(t);
            e.1.push(calls as f64);
        }
    }
    let mut ops: Vec<verdict::OperatorTime> = order
        .into_iter()
        .filter_map(|name| {
            let (times, calls) = per.remove(&name)?;
            Some(verdict::OperatorTime {
                total_time_s: verdict::median_of(&times),
                num_calls: verdict::median_of(&calls).round() as u64,
                name,
            })
        })
        .collect();
    ops.sort_by(|a, b| {
        b.total_time_s
            .total_cmp(&a.total_time_s)
            .then_with(|| a.name.cmp(&b.name))
    });
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_metrics_parse_numbers_and_operators() {
        let r = parse_reported(
            br#"{"total_time_s": 0.0398, "tokens": 12, "ok": true, "label": "x", "nested": {"a": 1},
                 "operators": [{"name": "mm", "total_time_s": 0.02, "num_calls": 7},
                               {"name": "add", "total_time_s": 0.001, "num_calls": 2.0},
                               {"name": "relu", "total_time_s": 0}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.metrics,
            [
                ("total_time_s".to_string(), 0.0398),
                ("tokens".to_string(), 12.0)
            ]
        );
        let ops: Vec<(&str, u64)> = r
            .operators
            .iter()
            .map(|o| (o.name.as_str(), o.num_calls))
            .collect();
        assert_eq!(ops, [("mm", 7), ("add", 2), ("relu", 0)]);
        for (bad, want) in [
            (&b"[1]"[..], "the top level must be a JSON object"),
            (b"", "not valid JSON"),
            (b"{\"x\": NaN}", "not valid JSON"),
            (b"{\"operators\": 3}", "\"operators\" must be a list"),
            (
                b"{\"operators\": [{\"total_time_s\": 1}]}",
                "operators[0] has no \"name\"",
            ),
            (
                b"{\"operators\": [{\"name\": \"a\", \"total_time_s\": -1}]}",
                "operators[0] (a): \"total_time_s\"",
            ),
            (
                b"{\"operators\": [{\"name\": \"a\", \"total_time_s\": 1, \"num_calls\": 1.5}]}",
                "operators[0] (a): \"num_calls\"",
            ),
        ] {
            let e = parse_reported(bad).unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
    }

    fn sample(reported: &[(&str, f64)], ops: &[(&str, f64)]) -> RunSample {
        RunSample {
            measured: vec![(WALL_TIME, 1.0), (CPU_TIME, 0.5)],
            reported: reported.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            operators: ops
                .iter()
                .map(|(n, t)| verdict::OperatorTime {
                    name: n.to_string(),
                    total_time_s: *t,
                    num_calls: 1,
                })
                .collect(),
            throttle: 0,
        }
    }

    #[test]
    fn primary_metric_prefers_the_job_then_total_time_then_wall_time() {
        let both = [
            sample(&[(TOTAL_TIME, 0.1)], &[]),
            sample(&[(TOTAL_TIME, 0.2)], &[]),
        ];
        let partial = [sample(&[(TOTAL_TIME, 0.1)], &[]), sample(&[], &[])];
        assert_eq!(primary_metric(None, &both), TOTAL_TIME);
        assert_eq!(primary_metric(None, &partial), WALL_TIME);
        assert_eq!(primary_metric(Some(CPU_TIME), &partial), CPU_TIME);
        assert_eq!(primary_samples(CPU_TIME, &partial).unwrap(), [0.5, 0.5]);
        let e = primary_samples(TOTAL_TIME, &partial).unwrap_err();
        assert_eq!(
            e,
            "metric 'total_time_s' is missing from run 2 of 2 (it has: wall_time_s, cpu_time_s)"
        );
    }

    #[test]
    fn operator_medians_add_duplicates_and_sort_by_time() {
        let runs = [
            sample(&[], &[("a", 1.0), ("b", 2.0), ("a", 1.0)]),
            sample(&[], &[("a", 3.0), ("b", 2.5)]),
            sample(&[], &[("a", 2.5), ("c", 9.0)]),
        ];
        let ops = median_operators(&runs);
        let got: Vec<(&str, f64)> = ops
            .iter()
            .map(|o| (o.name.as_str(), o.total_time_s))
            .collect();
        assert_eq!(got, [("c", 9.0), ("a", 2.5), ("b", 2.25)]);
    }

    #[test]
    fn series_keep_measured_first_and_drop_shadowed_reports() {
        let runs = [
            sample(&[("zeta", 1.0), (WALL_TIME, 9.0), ("alpha", 0.0)], &[]),
            sample(&[("zeta", 2.0)], &[]),
        ];
        let s: Vec<pb::MetricSummary> = series_of(&runs).iter().map(metric_summary).collect();
        let names: Vec<(&str, &str, u32)> = s
            .iter()
            .map(|m| (m.name.as_str(), m.source.as_str(), m.n))
            .collect();
        assert_eq!(
            names,
            [
                (WALL_TIME, "measured", 2),
                (CPU_TIME, "measured", 2),
                ("alpha", "reported", 1),
                ("zeta", "reported", 2)
            ]
        );
        assert_eq!(s[0].samples, [1.0, 1.0]);
        assert_eq!(s[2].robust_cv, 0.0, "a zero median does not divide");
        assert_eq!(s[3].median, 1.5);
    }
}
