//! Crontab expressions: the 5 fields and the `@` aliases validated field by
//! field (with messages naming the field), and their translation into the
//! syntax of the `cron` crate.

use std::str::FromStr;

use chrono::{Datelike, NaiveDate};

use super::{clip, ScheduleError};

pub(super) const FIELD_LIST: &str = "minute hour day-of-month month day-of-week";
pub(super) const ALIASES: &str =
    "@yearly, @annually, @monthly, @weekly, @daily, @midnight, @nightly, @hourly";
const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Minute,
    Hour,
    Dom,
    Month,
    Dow,
}

const KINDS: [Kind; 5] = [Kind::Minute, Kind::Hour, Kind::Dom, Kind::Month, Kind::Dow];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Minute => "minute",
            Kind::Hour => "hour",
            Kind::Dom => "day-of-month",
            Kind::Month => "month",
            Kind::Dow => "day-of-week",
        }
    }
    fn min(self) -> u32 {
        match self {
            Kind::Minute | Kind::Hour | Kind::Dow => 0,
            Kind::Dom | Kind::Month => 1,
        }
    }
    fn max(self) -> u32 {
        match self {
            Kind::Minute => 59,
            Kind::Hour => 23,
            Kind::Dom => 31,
            Kind::Month => 12,
            Kind::Dow => 7,
        }
    }
    /// Names and the number of the first name.
    fn names(self) -> Option<(&'static [&'static str], u32)> {
        match self {
            Kind::Month => Some((&MONTH_NAMES, 1)),
            Kind::Dow => Some((&DAY_NAMES, 0)),
            _ => None,
        }
    }
}

/// A problem with one comma-separated part of a field.
struct ElemError {
    element: String,
    problem: String,
}

fn elem_err(element: &str, problem: impl Into<String>) -> ElemError {
    ElemError {
        element: clip(element).into_owned(),
        problem: problem.into(),
    }
}

fn parse_value(kind: Kind, text: &str) -> Result<u32, ElemError> {
    let (min, max) = (kind.min(), kind.max());
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(elem_err(text, format!("is out of range {min}-{max}"))),
        };
    }
    match kind.names() {
        Some((names, base)) => {
            let lower = text.to_ascii_lowercase();
            match names.iter().position(|n| *n == lower) {
                Some(i) => Ok(base + i as u32),
                None => {
                    let what = if kind == Kind::Month { "month" } else { "day" };
                    Err(elem_err(
                        text,
                        format!("is not a {what} name or {min}-{max}"),
                    ))
                }
            }
        }
        None => Err(elem_err(text, format!("is not a number in {min}-{max}"))),
    }
}

/// Bits of the values one list element selects (bit 7 of day-of-week is
/// Sunday again; [`parse_field`] folds it onto bit 0).
fn parse_element(kind: Kind, elem: &str) -> Result<u64, ElemError> {
    if elem.is_empty() {
        return Err(elem_err(elem, "is an empty list element"));
    }
    let (range, step) = match elem.split_once('/') {
        Some((range, step_text)) => {
            if step_text.is_empty() || !step_text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(elem_err(
                    elem,
                    format!("has a step '{}' that is not a number", clip(step_text)),
                ));
            }
            let step = step_text.parse::<u32>().unwrap_or(u32::MAX);
            if step == 0 {
                return Err(elem_err(elem, "has a step of 0"));
            }
            (range, step)
        }
        None => (elem, 1),
    };
    let (lo, hi) = if range == "*" {
        (kind.min(), kind.max())
    } else if let Some((a, b)) = range.split_once('-') {
        let lo = parse_value(kind, a)?;
        let hi = parse_value(kind, b)?;
        if lo > hi {
            return Err(elem_err(
                elem,
                format!("is a backwards range ({lo} > {hi}); write ranges low-high"),
            ));
        }
        (lo, hi)
    } else {
        let v = parse_value(kind, range)?;
        if elem.contains('/') {
            return Err(elem_err(
                elem,
                format!(
                    "has a step but no range (write '{range}-{}/{step}')",
                    kind.max()
                ),
            ));
        }
        (v, v)
    };
    let mut bits = 0u64;
    let mut v = lo;
    while v <= hi {
        bits |= 1 << v;
        v = match v.checked_add(step) {
            Some(next) => next,
            None => break,
        };
    }
    Ok(bits)
}

fn parse_field(kind: Kind, text: &str) -> Result<u64, ElemError> {
    let mut bits = 0u64;
    for elem in text.split(',') {
        bits |= parse_element(kind, elem)?;
    }
    if kind == Kind::Dow && bits & (1 << 7) != 0 {
        bits = (bits & !(1 << 7)) | 1;
    }
    Ok(bits)
}

/// The parsed fields as bit sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Fields {
    /// Bit m for minute m (0-59).
    pub(super) minutes: u64,
    /// Bit h for hour h (0-23).
    pub(super) hours: u64,
    /// Bit d for day d (1-31).
    pub(super) dom: u64,
    /// Bit m for month m (1-12).
    pub(super) months: u64,
    /// Bit 0 = Sunday .. bit 6 = Saturday.
    pub(super) dow: u64,
    /// The field text starts with `*` (Vixie cron's DOM_STAR / DOW_STAR).
    pub(super) dom_star: bool,
    pub(super) dow_star: bool,
}

impl Fields {
    /// Both day fields restricted: a day matches if either matches.
    pub(super) fn dom_or_dow(&self) -> bool {
        !self.dom_star && !self.dow_star
    }

    pub(super) fn day_matches(&self, d: NaiveDate) -> bool {
        if self.months & (1 << d.month()) == 0 {
            return false;
        }
        let dom = self.dom & (1 << d.day()) != 0;
        let dow = self.dow & (1 << d.weekday().num_days_from_sunday()) != 0;
        if self.dom_or_dow() {
            dom || dow
        } else {
            dom && dow
        }
    }

    pub(super) fn slots_per_day(&self) -> u64 {
        u64::from(self.minutes.count_ones()) * u64::from(self.hours.count_ones())
    }

    pub(super) fn times_of_day(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        bits(self.hours).flat_map(move |h| bits(self.minutes).map(move |m| (h, m)))
    }
}

fn bits(set: u64) -> impl Iterator<Item = u32> {
    (0..64).filter(move |i| set & (1u64 << i) != 0)
}

/// A field in the syntax the `cron` crate reads: `*` when every value in
/// `min..=max` is set, else an explicit list (values shifted by `shift`).
fn cron_list(set: u64, min: u32, max: u32, shift: u32) -> String {
    let full = (min..=max).all(|v| set & (1 << v) != 0);
    if full {
        return "*".to_string();
    }
    bits(set)
        .map(|v| (v + shift).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn days_in_month_max(month: u32) -> u32 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn alias_fields(alias: &str) -> Option<&'static str> {
    Some(match alias.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@nightly" => "0 2 * * *",
        "@hourly" => "0 * * * *",
        _ => return None,
    })
}

/// The validated fields of `expr` (trimmed): 5 fields or an alias, each
/// field in range, and a day that exists in some selected month.
pub(super) fn parse_fields(expr: &str) -> Result<Fields, ScheduleError> {
    let tokens: Vec<&str> = expr.split_whitespace().collect();
    let Some(first) = tokens.first() else {
        return Err(ScheduleError::Empty {
            expr: clip(expr).into_owned(),
        });
    };
    let texts: Vec<&str> = if first.starts_with('@') {
        let Some(expansion) = alias_fields(first) else {
            return Err(ScheduleError::UnknownAlias {
                alias: clip(first).into_owned(),
                expr: clip(expr).into_owned(),
            });
        };
        if tokens.len() != 1 {
            return Err(ScheduleError::AliasWithFields {
                alias: clip(first).into_owned(),
                expr: clip(expr).into_owned(),
            });
        }
        expansion.split(' ').collect()
    } else {
        if tokens.len() != 5 {
            return Err(ScheduleError::FieldCount {
                got: tokens.len(),
                expr: clip(expr).into_owned(),
            });
        }
        tokens.clone()
    };

    let mut sets = [0u64; 5];
    for ((kind, text), set) in KINDS.iter().zip(&texts).zip(sets.iter_mut()) {
        *set = parse_field(*kind, text).map_err(|e| ScheduleError::BadField {
            expr: clip(expr).into_owned(),
            field: kind.name(),
            value: clip(text).into_owned(),
            element: e.element,
            problem: e.problem,
        })?;
    }
    let fields = Fields {
        minutes: sets[0],
        hours: sets[1],
        dom: sets[2],
        months: sets[3],
        dow: sets[4],
        dom_star: texts[2].starts_with('*'),
        dow_star: texts[4].starts_with('*'),
    };

    // Only "day-of-month restricted, day-of-week ANDed" can be empty
    // (the crate would search to 2100 and then give up).
    if !fields.dom_or_dow() {
        let possible =
            bits(fields.months).any(|m| bits(fields.dom).any(|d| d <= days_in_month_max(m)));
        if !possible {
            return Err(ScheduleError::NeverFires {
                reason: format!(
                    "day-of-month '{}' does not occur in month '{}'",
                    texts[2], texts[3]
                ),
                expr: clip(expr).into_owned(),
            });
        }
    }
    Ok(fields)
}

/// `fields` as 6-field (seconds-first) schedules of the `cron` crate: one, or
/// two when day-of-month and day-of-week are OR-ed (the crate ANDs them).
/// `expr` is only named in the error.
pub(super) fn cron_schedules(
    expr: &str,
    fields: &Fields,
) -> Result<Vec<cron::Schedule>, ScheduleError> {
    let minute = cron_list(fields.minutes, 0, 59, 0);
    let hour = cron_list(fields.hours, 0, 23, 0);
    let dom = cron_list(fields.dom, 1, 31, 0);
    let month = cron_list(fields.months, 1, 12, 0);
    // The crate numbers weekdays 1 = Sunday .. 7 = Saturday.
    let dow = cron_list(fields.dow, 0, 6, 1);
    let sources = if fields.dom_or_dow() {
        vec![
            format!("0 {minute} {hour} {dom} {month} *"),
            format!("0 {minute} {hour} * {month} {dow}"),
        ]
    } else {
        vec![format!("0 {minute} {hour} {dom} {month} {dow}")]
    };
    sources
        .iter()
        .map(|s| {
            cron::Schedule::from_str(s).map_err(|e| ScheduleError::Internal {
                expr: clip(expr).into_owned(),
                reason: format!("cron crate refused '{s}': {e}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Datelike, NaiveDate};

    use crate::schedule::test_support::*;
    use crate::schedule::*;

    // ---- aliases ---------------------------------------------------------

    #[test]
    fn every_alias_matches_its_expansion() {
        let from = utc(2026, 6, 3, 10, 17); // a Wednesday
        for (alias, expansion) in [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@nightly", "0 2 * * *"),
            ("@hourly", "0 * * * *"),
        ] {
            let a = spec(alias);
            let e = spec(expansion);
            assert_eq!(a.upcoming(from, 5), e.upcoming(from, 5), "{alias}");
            assert_eq!(a.to_string(), alias);
        }
        assert_eq!(spec("@DAILY").next_after(from), Some(utc(2026, 6, 4, 0, 0)));
    }

    #[test]
    fn alias_next_fire_times() {
        let from = utc(2026, 6, 3, 10, 17);
        assert_eq!(
            spec("@yearly").next_after(from),
            Some(utc(2027, 1, 1, 0, 0))
        );
        assert_eq!(
            spec("@annually").next_after(from),
            Some(utc(2027, 1, 1, 0, 0))
        );
        assert_eq!(
            spec("@monthly").next_after(from),
            Some(utc(2026, 7, 1, 0, 0))
        );
        assert_eq!(
            spec("@weekly").next_after(from),
            Some(utc(2026, 6, 7, 0, 0))
        );
        assert_eq!(spec("@daily").next_after(from), Some(utc(2026, 6, 4, 0, 0)));
        assert_eq!(
            spec("@midnight").next_after(from),
            Some(utc(2026, 6, 4, 0, 0))
        );
        assert_eq!(
            spec("@nightly").next_after(from),
            Some(utc(2026, 6, 4, 2, 0))
        );
        assert_eq!(
            spec("@hourly").next_after(from),
            Some(utc(2026, 6, 3, 11, 0))
        );
        assert_eq!(weekday(utc(2026, 6, 7, 0, 0)), 0);
    }

    #[test]
    fn alias_errors() {
        assert_eq!(
            err("@sometimes"),
            "bad cron expression '@sometimes': unknown alias '@sometimes' (expected one of \
             @yearly, @annually, @monthly, @weekly, @daily, @midnight, @nightly, @hourly)"
        );
        assert!(err("@reboot").contains("unknown alias '@reboot'"));
        assert_eq!(
            err("@daily 5"),
            "bad cron expression '@daily 5': alias '@daily' must be the whole expression"
        );
    }

    // ---- fields ----------------------------------------------------------

    #[test]
    fn lists_ranges_and_steps() {
        let s = spec("0,30 9-11 * * *");
        let day = utc(2026, 6, 3, 0, 0);
        assert_eq!(
            all_between(&s, day, day + DAY),
            vec![
                utc(2026, 6, 3, 9, 0),
                utc(2026, 6, 3, 9, 30),
                utc(2026, 6, 3, 10, 0),
                utc(2026, 6, 3, 10, 30),
                utc(2026, 6, 3, 11, 0),
                utc(2026, 6, 3, 11, 30),
            ]
        );
        let s = spec("*/15 3 * * *");
        let got = all_between(&s, day, day + DAY);
        let want: Vec<i64> = [0, 15, 30, 45]
            .iter()
            .map(|m| utc(2026, 6, 3, 3, *m))
            .collect();
        assert_eq!(got, want);
        let s = spec("1-30/5 4 * * *");
        let got = all_between(&s, day, day + DAY);
        let want: Vec<i64> = [1, 6, 11, 16, 21, 26]
            .iter()
            .map(|m| utc(2026, 6, 3, 4, *m))
            .collect();
        assert_eq!(got, want);
        // A step larger than the range selects the start only.
        let s = spec("*/90 5 * * *");
        assert_eq!(all_between(&s, day, day + DAY), vec![utc(2026, 6, 3, 5, 0)]);
        // Mixed list of steps and values.
        let s = spec("5,*/20,50-52 6 * * *");
        let got = all_between(&s, day, day + DAY);
        let want: Vec<i64> = [0, 5, 20, 40, 50, 51, 52]
            .iter()
            .map(|m| utc(2026, 6, 3, 6, *m))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn month_names_and_ranges() {
        let from = utc(2026, 1, 15, 0, 0);
        let names = [
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        for (i, name) in names.iter().enumerate() {
            let by_name = spec(&format!("0 0 1 {name} *"));
            let by_num = spec(&format!("0 0 1 {} *", i + 1));
            assert_eq!(
                by_name.upcoming(from, 3),
                by_num.upcoming(from, 3),
                "{name}"
            );
            let first = by_name.next_after(from).unwrap();
            let month = DateTime::from_timestamp_millis(first).unwrap().month();
            assert_eq!(month as usize, i + 1, "{name}");
        }
        let s = spec("0 0 1 MAR-may,Nov *");
        assert_eq!(
            s.upcoming(from, 5),
            vec![
                utc(2026, 3, 1, 0, 0),
                utc(2026, 4, 1, 0, 0),
                utc(2026, 5, 1, 0, 0),
                utc(2026, 11, 1, 0, 0),
                utc(2027, 3, 1, 0, 0),
            ]
        );
        let s = spec("0 0 1 */4 *");
        assert_eq!(
            s.upcoming(from, 3),
            vec![
                utc(2026, 5, 1, 0, 0),
                utc(2026, 9, 1, 0, 0),
                utc(2027, 1, 1, 0, 0)
            ]
        );
    }

    #[test]
    fn day_names_and_ranges() {
        let from = utc(2026, 6, 3, 12, 0); // Wednesday
        for (i, name) in ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
            .iter()
            .enumerate()
        {
            let by_name = spec(&format!("0 2 * * {name}"));
            let by_num = spec(&format!("0 2 * * {i}"));
            let slots = by_name.upcoming(from, 4);
            assert_eq!(slots, by_num.upcoming(from, 4), "{name}");
            for s in slots {
                assert_eq!(weekday(s), i as u32, "{name}");
            }
        }
        let s = spec("0 2 * * Mon-FRI");
        let slots = s.upcoming(from, 10);
        assert!(slots.iter().all(|t| (1..=5).contains(&weekday(*t))));
        assert_eq!(slots[0], utc(2026, 6, 4, 2, 0)); // Thursday
        assert_eq!(slots[2], utc(2026, 6, 8, 2, 0)); // Monday, weekend skipped
        let s = spec("0 2 * * mon-fri/2");
        let days: Vec<u32> = s.upcoming(from, 6).into_iter().map(weekday).collect();
        assert_eq!(days, vec![5, 1, 3, 5, 1, 3]);
    }

    #[test]
    fn dow_zero_and_seven_are_sunday() {
        let from = utc(2026, 6, 3, 12, 0);
        let sunday = utc(2026, 6, 7, 2, 0);
        assert_eq!(weekday(sunday), 0);
        assert_eq!(spec("0 2 * * 0").next_after(from), Some(sunday));
        assert_eq!(spec("0 2 * * 7").next_after(from), Some(sunday));
        assert_eq!(spec("0 2 * * sun").next_after(from), Some(sunday));
        assert_eq!(
            spec("0 2 * * 7").upcoming(from, 5),
            spec("0 2 * * 0").upcoming(from, 5)
        );
        // 5-7 is Friday, Saturday, Sunday.
        let days: Vec<u32> = spec("0 2 * * 5-7")
            .upcoming(from, 6)
            .into_iter()
            .map(weekday)
            .collect();
        assert_eq!(days, vec![5, 6, 0, 5, 6, 0]);
        // 0-7 and * are every day.
        assert_eq!(
            spec("0 2 * * 0-7").upcoming(from, 9),
            spec("0 2 * * *").upcoming(from, 9)
        );
    }

    #[test]
    fn monday_at_two_fires_on_monday() {
        let s = spec("0 2 * * 1");
        let from = utc(2026, 6, 3, 12, 0); // Wednesday
        let next = s.next_after(from).unwrap();
        assert_eq!(next, utc(2026, 6, 8, 2, 0));
        assert_eq!(weekday(next), 1);
        assert_eq!(s.next_after(next), Some(utc(2026, 6, 15, 2, 0)));
        // From Monday 01:59 it is today; from Monday 02:00 it is next week.
        assert_eq!(
            s.next_after(utc(2026, 6, 8, 1, 59)),
            Some(utc(2026, 6, 8, 2, 0))
        );
        assert_eq!(
            s.next_after(utc(2026, 6, 8, 2, 0)),
            Some(utc(2026, 6, 15, 2, 0))
        );
        for t in s.upcoming(from, 60) {
            assert_eq!(weekday(t), 1);
        }
    }

    #[test]
    fn dom_and_dow_both_restricted_is_or() {
        let s = spec("0 0 1 * mon");
        let from = utc(2026, 5, 29, 0, 0); // Friday
        assert_eq!(
            s.upcoming(from, 8),
            vec![
                utc(2026, 6, 1, 0, 0), // Monday and the 1st: once
                utc(2026, 6, 8, 0, 0),
                utc(2026, 6, 15, 0, 0),
                utc(2026, 6, 22, 0, 0),
                utc(2026, 6, 29, 0, 0),
                utc(2026, 7, 1, 0, 0), // Wednesday, the 1st
                utc(2026, 7, 6, 0, 0),
                utc(2026, 7, 13, 0, 0),
            ]
        );
        // Over a whole year: exactly the days that are the 1st or a Monday.
        let (a, b) = (utc(2026, 1, 1, 0, 0) - 1, utc(2027, 1, 1, 0, 0) - 1);
        let slots = all_between(&s, a, b);
        let mut want = vec![];
        let mut d = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        while d.year() == 2026 {
            if d.day() == 1 || d.weekday().num_days_from_sunday() == 1 {
                want.push(d.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis());
            }
            d = d.succ_opt().unwrap();
        }
        assert_eq!(slots, want);
        assert_eq!(s.count_between(a, b), want.len() as u64);
        // Backwards too.
        assert_eq!(
            s.latest_at_or_before(utc(2026, 7, 5, 0, 0), 0),
            Some(utc(2026, 7, 1, 0, 0))
        );
        assert_eq!(
            s.latest_at_or_before(utc(2026, 7, 1, 0, 0), 0),
            Some(utc(2026, 7, 1, 0, 0))
        );
        assert_eq!(
            s.latest_at_or_before(utc(2026, 6, 30, 0, 0), 0),
            Some(utc(2026, 6, 29, 0, 0))
        );
    }

    #[test]
    fn dom_or_dow_with_a_star_field_is_and() {
        // Vixie cron: a field starting with '*' counts as unrestricted, so
        // `*/2` in day-of-month ANDs with day-of-week: odd-day Mondays.
        let s = spec("0 0 */2 * mon");
        for t in s.upcoming(utc(2026, 1, 1, 0, 0), 20) {
            let d = DateTime::from_timestamp_millis(t).unwrap();
            assert_eq!(d.weekday().num_days_from_sunday(), 1);
            assert_eq!(d.day() % 2, 1);
        }
        // Only day-of-month restricted: that day in every month.
        let s = spec("0 0 13 * *");
        assert_eq!(
            s.next_after(utc(2026, 6, 14, 0, 0)),
            Some(utc(2026, 7, 13, 0, 0))
        );
        // Only day-of-week restricted: every Friday.
        let s = spec("0 0 * * fri");
        assert_eq!(
            s.next_after(utc(2026, 6, 3, 0, 0)),
            Some(utc(2026, 6, 5, 0, 0))
        );
    }

    #[test]
    fn leap_day_and_never_firing() {
        let s = spec("0 0 29 2 *");
        assert_eq!(
            s.upcoming(utc(2026, 1, 1, 0, 0), 2),
            vec![utc(2028, 2, 29, 0, 0), utc(2032, 2, 29, 0, 0)]
        );
        assert_eq!(
            err("0 0 30 feb *"),
            "bad cron expression '0 0 30 feb *': it never fires (day-of-month '30' does not \
             occur in month 'feb')"
        );
        assert!(err("0 0 31 4,6,9,11 *").contains("never fires"));
        // With day-of-week also restricted it fires on those weekdays.
        assert!(CronSpec::parse("0 0 30 2 mon", "UTC").is_ok());
        // Past the crate's last year there are no slots.
        assert_eq!(spec("0 0 1 1 *").next_after(utc(2100, 1, 1, 0, 0)), None);
    }

    // ---- error messages ----------------------------------------------------

    #[test]
    fn bad_expression_messages_name_the_field() {
        assert_eq!(
            err("61 2 * * *"),
            "bad cron expression '61 2 * * *': field 'minute' = '61' is out of range 0-59"
        );
        assert_eq!(
            err("0 2 * * * *"),
            "bad cron expression '0 2 * * * *': expected 5 fields (minute hour day-of-month \
             month day-of-week), got 6"
        );
        assert_eq!(
            err("0 2 * *"),
            "bad cron expression '0 2 * *': expected 5 fields (minute hour day-of-month \
             month day-of-week), got 4"
        );
        assert_eq!(
            err("0 2 * * funday"),
            "bad cron expression '0 2 * * funday': field 'day-of-week' = 'funday' is not a \
             day name or 0-7"
        );
        assert_eq!(
            err("0 24 * * *"),
            "bad cron expression '0 24 * * *': field 'hour' = '24' is out of range 0-23"
        );
        assert_eq!(
            err("0 2 0 * *"),
            "bad cron expression '0 2 0 * *': field 'day-of-month' = '0' is out of range 1-31"
        );
        assert_eq!(
            err("0 2 32 * *"),
            "bad cron expression '0 2 32 * *': field 'day-of-month' = '32' is out of range 1-31"
        );
        assert_eq!(
            err("0 2 * 13 *"),
            "bad cron expression '0 2 * 13 *': field 'month' = '13' is out of range 1-12"
        );
        assert_eq!(
            err("0 2 * smarch *"),
            "bad cron expression '0 2 * smarch *': field 'month' = 'smarch' is not a month \
             name or 1-12"
        );
        assert_eq!(
            err("0 2 * * 8"),
            "bad cron expression '0 2 * * 8': field 'day-of-week' = '8' is out of range 0-7"
        );
        assert_eq!(
            err("0,61 2 * * *"),
            "bad cron expression '0,61 2 * * *': field 'minute' = '0,61': '61' is out of range 0-59"
        );
        assert_eq!(
            err("0 1-25 * * *"),
            "bad cron expression '0 1-25 * * *': field 'hour' = '1-25': '25' is out of range 0-23"
        );
        assert_eq!(
            err("x 2 * * *"),
            "bad cron expression 'x 2 * * *': field 'minute' = 'x' is not a number in 0-59"
        );
        assert_eq!(
            err("0 mon * * *"),
            "bad cron expression '0 mon * * *': field 'hour' = 'mon' is not a number in 0-23"
        );
        assert_eq!(
            err("*/0 2 * * *"),
            "bad cron expression '*/0 2 * * *': field 'minute' = '*/0' has a step of 0"
        );
        assert_eq!(
            err("*/x 2 * * *"),
            "bad cron expression '*/x 2 * * *': field 'minute' = '*/x' has a step 'x' that \
             is not a number"
        );
        assert_eq!(
            err("0 5-1 * * *"),
            "bad cron expression '0 5-1 * * *': field 'hour' = '5-1' is a backwards range \
             (5 > 1); write ranges low-high"
        );
        assert_eq!(
            err("5/10 2 * * *"),
            "bad cron expression '5/10 2 * * *': field 'minute' = '5/10' has a step but no \
             range (write '5-59/10')"
        );
        assert_eq!(
            err("1,,2 2 * * *"),
            "bad cron expression '1,,2 2 * * *': field 'minute' = '1,,2': '' is an empty list \
             element"
        );
        assert_eq!(
            err("0 2 ? * *"),
            "bad cron expression '0 2 ? * *': field 'day-of-month' = '?' is not a number in 1-31"
        );
        assert_eq!(
            err("0 2 L * *"),
            "bad cron expression '0 2 L * *': field 'day-of-month' = 'L' is not a number in 1-31"
        );
        assert_eq!(
            err("0 2 * * 1#2"),
            "bad cron expression '0 2 * * 1#2': field 'day-of-week' = '1#2' is not a day name \
             or 0-7"
        );
        assert_eq!(
            err("99999999999 2 * * *"),
            "bad cron expression '99999999999 2 * * *': field 'minute' = '99999999999' is out \
             of range 0-59"
        );
        assert!(err("").contains("it is empty"));
        assert!(err("   ").contains("it is empty"));
        // The structured form carries the field too.
        let e = CronSpec::parse("0 2 * * funday", "UTC").unwrap_err();
        assert_eq!(e.field(), Some("day-of-week"));
        assert_eq!(CronSpec::parse("@x", "UTC").unwrap_err().field(), None);
        // Every field, each named.
        for (expr, field) in [
            ("60 * * * *", "minute"),
            ("* 60 * * *", "hour"),
            ("* * 60 * *", "day-of-month"),
            ("* * * 60 *", "month"),
            ("* * * * 60", "day-of-week"),
        ] {
            let e = CronSpec::parse(expr, "UTC").unwrap_err();
            assert_eq!(e.field(), Some(field), "{expr}");
            assert!(
                e.to_string().contains(&format!("field '{field}' = '60'")),
                "{e}"
            );
        }
    }
}
