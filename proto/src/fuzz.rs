//! The one knob of every crate's property-based fuzz targets (`cargo test
//! fuzz_`, feature `fuzz`, enabled by the crates' dev-dependencies):
//! `MSFLEET_FUZZ_CASES` cases per target (default 256, so the normal test
//! suite stays fast; `scripts/fuzz` runs more). No failure files are written:
//! a failing case is printed, minimized, in the test's panic message.

use proptest::test_runner::Config;

/// Cases per fuzz target: `MSFLEET_FUZZ_CASES`, else 256.
pub fn fuzz_cases() -> u32 {
    std::env::var("MSFLEET_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(256)
}

/// The proptest config every fuzz target uses.
pub fn fuzz_config() -> Config {
    Config {
        cases: fuzz_cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Longest error message a refusal may have, whatever the input's size.
pub const MAX_ERROR_BYTES: usize = 1024;
