//! Fixtures and checks shared by the requirement tests: four typical agents,
//! parse helpers and the properties every error must have.

use super::*;

/// An 8x H100 agent in the nightly pool, rack a3.
pub(super) fn h100() -> Attributes {
    let mut a = Attributes::default();
    a.set_num("gpu.count", 8.0);
    a.set_num("gpu.memory_mb", 81559.0);
    a.set_str("gpu.model", "NVIDIA H100 80GB HBM3");
    a.set_num("cpu.cores", 64.0);
    a.set_str("host.os", "linux");
    a.set_str("label.pool", "nightly");
    a.set_str("label.rack", "a3");
    a
}

/// An Ascend NPU agent in the ci pool, rack b1.
pub(super) fn npu() -> Attributes {
    let mut a = Attributes::default();
    a.set_num("npu.count", 8.0);
    a.set_num("npu.hbm_mb", 65536.0);
    a.set_str("npu.model", "Ascend910B");
    a.set_num("cpu.cores", 192.0);
    a.set_str("label.pool", "ci");
    a.set_str("label.rack", "b1");
    a
}

/// A CPU-only agent in rack a3, no pool label.
pub(super) fn cpu_only() -> Attributes {
    let mut a = Attributes::default();
    a.set_num("cpu.cores", 16.0);
    a.set_str("label.rack", "a3");
    a
}

/// An agent with two different GPU models, in the ci pool, no rack label.
pub(super) fn mixed() -> Attributes {
    let mut a = Attributes::default();
    a.set_num("gpu.count", 2.0);
    a.add_str("gpu.model", "NVIDIA A100-SXM4-40GB");
    a.add_str("gpu.model", "NVIDIA H100 PCIe");
    a.set_num("gpu.memory_mb", 40960.0);
    a.set_num("cpu.cores", 32.0);
    a.set_str("label.pool", "ci");
    a
}

pub(super) fn parse(src: &str) -> Requirement {
    match Requirement::parse(src) {
        Ok(r) => r,
        Err(e) => panic!("{src:?} should parse: {e}\n{}", e.render(src)),
    }
}

pub(super) fn parse_err(src: &str) -> RequirementError {
    match Requirement::parse(src) {
        Ok(r) => panic!("{src:?} should not parse, got {r}"),
        Err(e) => e,
    }
}

pub(super) const T: bool = true;

pub(super) const F: bool = false;

/// (source, column, token, part of the message, part of the help)
pub(super) type ErrorCase = (
    &'static str,
    usize,
    &'static str,
    &'static str,
    &'static str,
);

/// Checks that each case fails to parse at that column and token, with
/// that part of the message and of the help.
pub(super) fn check_error_cases(cases: &[ErrorCase]) {
    for &(src, column, token, message, help) in cases {
        let err = parse_err(src);
        let shown = format!("{err}\n{}", err.render(src));
        assert_eq!(err.column, column, "column for {src:?}: {shown}");
        assert_eq!(err.token, token, "token for {src:?}: {shown}");
        assert!(
            err.message.contains(message),
            "message for {src:?}: {shown}"
        );
        let err_help = err.help.clone().unwrap_or_default();
        assert!(err_help.contains(help), "help for {src:?}: {shown}");
        check_error_invariants(src, &err);
    }
}

/// Properties every error must have, whatever the input.
pub(super) fn check_error_invariants(src: &str, err: &RequirementError) {
    let len = src.chars().count();
    assert!(err.column >= 1, "{src:?}: {err}");
    assert!(err.column <= len + 1, "{src:?}: {err}");
    let rest: String = src.chars().skip(err.column - 1).collect();
    assert!(
        rest.starts_with(&err.token),
        "{src:?}: token {:?} not at column {}",
        err.token,
        err.column
    );
    assert!(!err.message.is_empty());
    let shown = err.to_string();
    assert!(
        shown.len() <= msfleet_proto::fuzz::MAX_ERROR_BYTES,
        "{} byte error for a {} byte input: {:.200}...",
        shown.len(),
        src.len(),
        shown
    );
    let rendered = err.render(src);
    let mut lines = rendered.split('\n');
    let (Some(first), Some(carets), None) = (lines.next(), lines.next(), lines.next()) else {
        panic!("render of {src:?} is not two lines: {rendered:?}");
    };
    assert_eq!(first.chars().count(), len);
    assert_eq!(carets.chars().position(|c| c == '^'), Some(err.column - 1));
    let _ = err.to_string();
}

/// Parses `src` and checks what must hold whether or not it parses.
pub(super) fn check_any(src: &str) {
    match Requirement::parse(src) {
        Ok(req) => {
            let canonical = req.to_string();
            if canonical.chars().count() <= MAX_LEN {
                assert_eq!(
                    Requirement::parse(&canonical).as_ref(),
                    Ok(&req),
                    "{src:?} -> {canonical:?}"
                );
            }
            for agent in [h100(), npu(), cpu_only(), mixed(), Attributes::default()] {
                let _ = req.matches(&agent);
            }
        }
        Err(err) => check_error_invariants(src, &err),
    }
}
