//! The native benchmark core: judging measured cases against their baselines.
//!
//! [`verdict`] holds the pure math that turns one case's post-warmup samples, its anchors and
//! its history of accepted runs into a verdict with an explanation.

pub mod verdict;
