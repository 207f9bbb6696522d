//! Fixtures shared by the schedule tests: instants, specs, errors and slot
//! walks.

use chrono::{DateTime, Datelike, NaiveDate};

use super::*;

pub(super) const MIN: i64 = 60_000;

pub(super) const HOUR: i64 = 3_600_000;

pub(super) const DAY: i64 = 24 * HOUR;

pub(super) fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
    NaiveDate::from_ymd_opt(y, mo, d)
        .unwrap()
        .and_hms_opt(h, mi, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis()
}

pub(super) fn spec(expr: &str) -> CronSpec {
    CronSpec::parse(expr, "UTC").unwrap_or_else(|e| panic!("{expr}: {e}"))
}

pub(super) fn spec_tz(expr: &str, tz: &str) -> CronSpec {
    CronSpec::parse(expr, tz).unwrap_or_else(|e| panic!("{expr} {tz}: {e}"))
}

pub(super) fn err(expr: &str) -> String {
    CronSpec::parse(expr, "UTC").unwrap_err().to_string()
}

pub(super) fn all_between(s: &CronSpec, after: i64, at: i64) -> Vec<i64> {
    let mut out = vec![];
    let mut t = after;
    while let Some(n) = s.next_after(t) {
        if n > at {
            break;
        }
        out.push(n);
        t = n;
    }
    out
}

pub(super) fn weekday(ms: i64) -> u32 {
    DateTime::from_timestamp_millis(ms)
        .unwrap()
        .weekday()
        .num_days_from_sunday()
}
