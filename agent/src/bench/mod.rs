//! The native benchmark core: running benchmark cases and judging them against their baselines.
//!
//! [`verdict`] holds the pure math that turns one case's post-warmup samples, its anchors and
//! its history of accepted runs into a verdict with an explanation; [`run`] runs a benchmark
//! attempt's cases (processes through [`crate::process`], measurements, baselines from the
//! scheduler) and reports them. Around it: [`cases`] (the plan and the case files),
//! [`baselines`] (what the scheduler has stored for this profile), [`metrics`] (measured and
//! reported metrics, series and summaries), [`gpu`] (NVML sampling during a run) and [`judge`]
//! (a case's runs judged, the `CaseResult`, the log line, the attempt's tally).

pub mod baselines;
pub mod cases;
pub mod gpu;
pub mod judge;
pub mod metrics;
pub mod run;
pub mod sim;
pub mod verdict;
