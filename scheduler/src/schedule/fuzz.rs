//! Fuzz targets for `CronSpec::parse(expr, tz)` and the slot walk
//! (`cargo test fuzz_cron`; cases from `MSFLEET_FUZZ_CASES`).

use proptest::prelude::*;

use super::*;
use msfleet_proto::fuzz::{fuzz_config, MAX_ERROR_BYTES};

/// Zones with odd offsets and DST rules, near misses, and junk.
const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "Asia/Shanghai",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "America/Sao_Paulo",
    "Pacific/Apia",
    " UTC ",
    "utc",
    "",
    "Mars/Olympus",
    "Europe/",
    "+08:00",
];

/// One element of a field: numbers in and out of range, names, ranges,
/// steps, and syntax other crons accept that this one refuses.
fn element() -> impl Strategy<Value = String> {
    let num = prop_oneof![0..62u32, Just(99u32), Just(4_294_967_295u32)];
    let name = prop::sample::select(
        &[
            "jan", "FEB", "Mar", "dec", "sun", "MON", "fri", "sat", "foo", "ja", "janu",
        ][..],
    );
    prop_oneof![
        Just("*".to_string()),
        num.clone().prop_map(|n| n.to_string()),
        name.clone().prop_map(str::to_string),
        (num.clone(), num.clone()).prop_map(|(a, b)| format!("{a}-{b}")),
        (num.clone(), 0..70u32).prop_map(|(s, _)| format!("*/{s}")),
        (0..31u32, 0..60u32, 0..30u32).prop_map(|(a, b, s)| format!("{a}-{b}/{s}")),
        (name.clone(), name).prop_map(|(a, b)| format!("{a}-{b}")),
        prop::sample::select(
            &["?", "L", "W", "5#2", "5/10", "", "-", "*/", "1-", "-1", "*/x", "1--2", "١"][..]
        )
        .prop_map(str::to_string),
    ]
}

fn field() -> impl Strategy<Value = String> {
    prop::collection::vec(element(), 1..4).prop_map(|parts| parts.join(","))
}

/// Mostly 5 fields, sometimes 0-7; sometimes an alias, alone or not.
fn expr() -> impl Strategy<Value = String> {
    let alias = prop::sample::select(
        &[
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
            "@nightly",
            "@reboot",
            "@every",
            "@",
            "@DAILY",
        ][..],
    );
    prop_oneof![
        6 => prop::collection::vec(field(), 5..=5).prop_map(|f| f.join(" ")),
        2 => prop::collection::vec(field(), 0..8).prop_map(|f| f.join(" ")),
        2 => (alias, prop::collection::vec(field(), 0..2))
            .prop_map(|(a, rest)| std::iter::once(a.to_string()).chain(rest).collect::<Vec<_>>().join(" ")),
    ]
}

/// An instant between 1969 and 2101 (slots exist for 1970..=2100).
fn instant() -> impl Strategy<Value = i64> {
    -100_000_000_000i64..4_200_000_000_000
}

/// What every answer of `CronSpec::parse` must satisfy.
fn check_parse(expr: &str, tz: &str) -> Result<Option<CronSpec>, TestCaseError> {
    match CronSpec::parse(expr, tz) {
        Ok(spec) => {
            prop_assert_eq!(spec.expr(), expr.trim());
            prop_assert_eq!(spec.to_string(), expr.trim());
            let again = CronSpec::parse(spec.expr(), spec.tz());
            prop_assert_eq!(again.as_ref(), Ok(&spec), "re-parse of {:?}", expr);
            Ok(Some(spec))
        }
        Err(e) => {
            let shown = e.to_string();
            prop_assert!(!shown.is_empty());
            prop_assert!(
                shown.len() <= MAX_ERROR_BYTES,
                "{} byte error for {} byte input: {:.200}",
                shown.len(),
                expr.len() + tz.len(),
                shown
            );
            prop_assert!(
                !matches!(e, ScheduleError::Internal { .. }),
                "validated but refused by the cron crate: {}",
                shown
            );
            Ok(None)
        }
    }
}

proptest! {
    #![proptest_config(fuzz_config())]

    /// Random fields, aliases and zones: an accepted spec re-parses to
    /// itself and prints as given; from any instant, `next_after` walks
    /// strictly forward, and `upcoming` agrees with that walk.
    #[test]
    fn fuzz_cron_fields_and_next_after_is_monotonic(
        expr in expr(),
        tz in prop::sample::select(ZONES),
        from in instant(),
    ) {
        let Some(spec) = check_parse(&expr, tz)? else { return Ok(()) };
        let mut at = from;
        let mut walk = Vec::new();
        for _ in 0..6 {
            let Some(next) = spec.next_after(at) else { break };
            prop_assert!(next > at, "{} {}: next_after({}) = {}", expr, tz, at, next);
            walk.push(next);
            at = next;
        }
        prop_assert_eq!(&spec.upcoming(from, 6), &walk);
        if let (Some(first), Some(last)) = (walk.first(), walk.last()) {
            prop_assert_eq!(spec.count_between(from, *last), walk.len() as u64);
            prop_assert_eq!(spec.latest_at_or_before(*last, *first), Some(*last));
            let _ = spec.format_local(*first);
        }
    }

    /// Any text as expression and zone: no panic, and the same properties.
    #[test]
    fn fuzz_cron_random_text(expr in "\\PC{0,60}", tz in "\\PC{0,20}", from in any::<i64>()) {
        if let Some(spec) = check_parse(&expr, &tz)? {
            if let Some(next) = spec.next_after(from) {
                prop_assert!(next > from);
            }
            let _ = spec.latest_at_or_before(from, i64::MIN);
            let _ = spec.format_local(from);
        }
    }

    /// Huge expressions, zones and policy names (up to 100 KB): refused with
    /// a short message.
    #[test]
    fn fuzz_cron_long_input(
        unit in prop::sample::select(&["1", "*", "x", "@", "1,", "*/", "é", "1 ", "/", "1-"][..]),
        n in 0..100_000usize,
        prefix in prop::sample::select(&["", "0 0 ", "0 0 * * ", "@", "0 0 1 * mon-"][..]),
        which in 0..3u8,
    ) {
        let long = format!("{prefix}{}", unit.repeat(n));
        match which {
            0 => { check_parse(&long, "UTC")?; }
            1 => { check_parse("0 2 * * *", &long)?; }
            _ => {
                for e in [long.parse::<Misfire>().err(), long.parse::<Overlap>().err()].into_iter().flatten() {
                    prop_assert!(e.to_string().len() <= MAX_ERROR_BYTES);
                }
            }
        }
    }
}

/// A regression found by `fuzz_cron_long_input`: every error quoted the
/// whole expression (and field, and zone), so a 100 KB input made a 100 KB
/// message.
#[test]
fn cron_errors_cut_long_input_short() {
    let long = "1,".repeat(50_000);
    for (expr, tz) in [
        (format!("{long} * * * *"), "UTC".to_string()),
        (format!("0 0 * * * {long}"), "UTC".to_string()),
        (format!("@{long}"), "UTC".to_string()),
        ("0 2 * * *".to_string(), long.clone()),
        (format!("*/{long} * * * *"), "UTC".to_string()),
    ] {
        let e = CronSpec::parse(&expr, &tz).unwrap_err().to_string();
        assert!(
            e.len() <= MAX_ERROR_BYTES && e.contains("..."),
            "{:.300}",
            e
        );
    }
    let e = long.parse::<Misfire>().unwrap_err().to_string();
    assert!(e.len() <= MAX_ERROR_BYTES, "{:.300}", e);
}
