//! The native benchmark core: running benchmark cases and judging them against their baselines.
//!
//! [`verdict`] holds the pure math that turns one case's post-warmup samples, its anchors and
//! its history of accepted runs into a verdict with an explanation; [`run`] runs a benchmark
//! attempt's cases (processes, measurements, baselines from the scheduler) and reports them.

pub mod run;
pub mod verdict;
