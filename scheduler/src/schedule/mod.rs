//! Durable cron schedules for nightly fleet runs: the time logic only.
//!
//! This module parses `msctl schedule add NAME --cron EXPR [--tz ZONE]`
//! expressions, computes fire times ("slots") in the schedule's time zone,
//! and decides what the scheduler should do at a given instant ([`due`]).
//! It does no I/O and never reads the clock: every instant is an argument,
//! in milliseconds since the Unix epoch (UTC).
//!
//! # Expressions
//!
//! The standard 5-field crontab `minute hour day-of-month month day-of-week`:
//!
//! | field        | range | names            |
//! |--------------|-------|------------------|
//! | minute       | 0-59  |                  |
//! | hour         | 0-23  |                  |
//! | day-of-month | 1-31  |                  |
//! | month        | 1-12  | `jan` .. `dec`   |
//! | day-of-week  | 0-7   | `sun` .. `sat`   |
//!
//! Each field is `*` or a comma list of `N`, `A-B`, `*/S` or `A-B/S`
//! (names are case-insensitive and may be used in ranges: `mon-fri`).
//! Day-of-week 0 and 7 are both Sunday. Not supported (refused with a
//! message): seconds or year fields, `?`, `L`, `W`, `#`, backwards ranges
//! (`5-1`), and a step without a range (`5/10`; write `5-59/10`).
//!
//! Day-of-month and day-of-week follow Vixie cron: when *both* fields are
//! restricted (neither starts with `*`), a day matches if *either* matches,
//! so `0 0 1 * mon` fires on the 1st of every month and on every Monday.
//! When either field starts with `*` (including `*/2`), both must match.
//!
//! Aliases: `@yearly` = `@annually` = `0 0 1 1 *`, `@monthly` = `0 0 1 * *`,
//! `@weekly` = `0 0 * * 0`, `@daily` = `@midnight` = `0 0 * * *`,
//! `@hourly` = `0 * * * *`, and `@nightly` = `0 2 * * *` (02:00, when the
//! nightly fleet runs go). `@reboot` is refused: schedules are time-based.
//!
//! An expression that can never fire (`0 0 30 feb *`) is refused.
//!
//! # Time zones and daylight-saving time
//!
//! `tz` is an IANA name (`UTC`, `Europe/Berlin`, `Asia/Shanghai`). Slots are
//! wall-clock times in that zone, so `0 2 * * *` in `Asia/Shanghai` fires at
//! 18:00 UTC of the previous day.
//!
//! * **Spring forward** (a wall time that does not exist): the slot is
//!   *moved* to the first instant after the gap, i.e. the moment the clocks
//!   jump. `30 2 * * *` in `Europe/Berlin` fires on 2026-03-29 at 03:00 CEST
//!   (01:00 UTC) instead of being skipped, so a nightly run is not lost once
//!   a year. Several slots that land in the same gap (and a slot at the end of
//!   the gap, e.g. 03:00) become the same instant and therefore one slot.
//! * **Fall back** (a wall time that occurs twice): the slot fires at the
//!   *first* occurrence only (`30 2 * * *` in Berlin on 2026-10-25 fires at
//!   02:30 CEST = 00:30 UTC, not again at 02:30 CET). A consequence is that
//!   a sub-hourly schedule has no slots during the second pass of the
//!   repeated hour.
//!
//! Slots exist for local years 1970 to 2100 (the range of the `cron` crate).
//!
//! # Firing
//!
//! A slot is identified by its instant in UTC milliseconds; that value is the
//! dedup key the caller persists as `last_slot`, so each slot fires at most
//! once, ever. See [`due`] for the misfire rules ([`Misfire`]) and
//! [`Overlap::decide`] for what to do when the previous run is still going.

mod crontab;
#[cfg(test)]
mod fuzz;
mod slot;
#[cfg(test)]
mod test_support;

use std::fmt;
use std::str::FromStr;

use chrono::TimeZone;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::clip;
use crontab::{Fields, ALIASES, FIELD_LIST};
pub use slot::{due, Due};

/// The zone used when `--tz` is not given.
pub const DEFAULT_TZ: &str = "UTC";

/// A slot that is at most this old at `now` is "on time"; older ones are
/// misfires handled by [`Misfire`].
pub const ON_TIME_GRACE_MS: i64 = 60_000;

/// Why an expression, zone or policy name was refused. The messages are
/// meant for `msctl` users and name the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("bad cron expression '{expr}': it is empty; expected 5 fields ({FIELD_LIST}) or an alias such as @nightly")]
    Empty { expr: String },
    #[error("bad cron expression '{expr}': expected 5 fields ({FIELD_LIST}), got {got}")]
    FieldCount { expr: String, got: usize },
    #[error("bad cron expression '{expr}': unknown alias '{alias}' (expected one of {ALIASES})")]
    UnknownAlias { expr: String, alias: String },
    #[error("bad cron expression '{expr}': alias '{alias}' must be the whole expression")]
    AliasWithFields { expr: String, alias: String },
    /// `value` is the whole field; `element` the part of it that is wrong
    /// (equal to `value` when the field has a single part).
    #[error("bad cron expression '{expr}': field '{field}' = '{value}'{}", field_tail(.value, .element, .problem))]
    BadField {
        expr: String,
        field: &'static str,
        value: String,
        element: String,
        problem: String,
    },
    #[error("bad cron expression '{expr}': it never fires ({reason})")]
    NeverFires { expr: String, reason: String },
    #[error("unknown time zone '{tz}': expected an IANA name such as 'UTC', 'Europe/Berlin' or 'Asia/Shanghai'")]
    UnknownTimeZone { tz: String },
    #[error("unknown {kind} policy '{value}' (expected {expected})")]
    UnknownPolicy {
        kind: &'static str,
        value: String,
        expected: &'static str,
    },
    /// The validated expression was rejected by the `cron` crate (a bug here).
    #[error("bad cron expression '{expr}': internal error: {reason}")]
    Internal { expr: String, reason: String },
}

impl ScheduleError {
    /// The field the error is about (`minute`, ..., `day-of-week`), if any.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ScheduleError::BadField { field, .. } => Some(field),
            _ => None,
        }
    }
}

fn field_tail(value: &str, element: &str, problem: &str) -> String {
    if element == value {
        format!(" {problem}")
    } else {
        format!(": '{element}' {problem}")
    }
}

/// A parsed, validated cron schedule in a time zone.
///
/// `Display` prints the expression as it was given (trimmed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronSpec {
    expr: String,
    tz: Tz,
    fields: Fields,
    /// 6-field (seconds-first) schedules in the `cron` crate's syntax,
    /// evaluated on the zone's *wall clock* (as if it were UTC). Two of them
    /// when day-of-month and day-of-week are OR-ed (the crate ANDs them).
    schedules: Vec<cron::Schedule>,
}

impl fmt::Display for CronSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
    }
}

impl CronSpec {
    /// Parse a 5-field crontab expression or alias, in IANA zone `tz`.
    pub fn parse(expr: &str, tz: &str) -> Result<CronSpec, ScheduleError> {
        let original = expr.trim().to_string();
        let fields = crontab::parse_fields(&original)?;

        let tz: Tz = tz
            .trim()
            .parse()
            .map_err(|_| ScheduleError::UnknownTimeZone {
                tz: clip(tz).into_owned(),
            })?;

        let schedules = crontab::cron_schedules(&original, &fields)?;

        Ok(CronSpec {
            expr: original,
            tz,
            fields,
            schedules,
        })
    }

    /// The expression as given (trimmed).
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The IANA name of the zone.
    pub fn tz(&self) -> &str {
        self.tz.name()
    }

    /// `ms` as a wall-clock time in the schedule's zone, e.g.
    /// `2026-11-23 02:00 CST`.
    pub fn format_local(&self, ms: i64) -> String {
        match self.tz.timestamp_millis_opt(ms).single() {
            Some(dt) => dt.format("%Y-%m-%d %H:%M %Z").to_string(),
            None => format!("{ms} ms"),
        }
    }
}

/// What to do about slots missed while the scheduler was down or late.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// Fire the newest missed slot once (never once per missed slot).
    #[default]
    FireOnce,
    /// Fire nothing; just move past the missed slots.
    Skip,
}

impl fmt::Display for Misfire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Misfire::FireOnce => "fire_once",
            Misfire::Skip => "skip",
        })
    }
}

impl FromStr for Misfire {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "fire_once" => Ok(Misfire::FireOnce),
            "skip" => Ok(Misfire::Skip),
            _ => Err(ScheduleError::UnknownPolicy {
                kind: "misfire",
                value: clip(s).into_owned(),
                expected: "'fire_once' or 'skip'",
            }),
        }
    }
}

/// What to do when a slot comes due while the schedule's previous run is
/// still going.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Do not start another run for this slot.
    #[default]
    Skip,
    /// Start the run for this slot once the previous one has finished.
    Queue,
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
        })
    }
}

impl FromStr for Overlap {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "skip" => Ok(Overlap::Skip),
            "queue" => Ok(Overlap::Queue),
            _ => Err(ScheduleError::UnknownPolicy {
                kind: "overlap",
                value: clip(s).into_owned(),
                expected: "'skip' or 'queue'",
            }),
        }
    }
}

/// The decision for a slot that fired ([`Due::Fire`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapAction {
    /// No previous run is going: start the run now.
    Start,
    /// The previous run is going and the policy is `skip`: drop this slot.
    Skip,
    /// The previous run is going and the policy is `queue`: start this run
    /// when it finishes.
    Queue,
}

impl Overlap {
    /// In every case the slot is consumed: the caller persists
    /// `last_slot = slot` whether it starts, skips or queues the run, so a
    /// skipped slot is not retried later.
    pub fn decide(self, previous_running: bool) -> OverlapAction {
        match (previous_running, self) {
            (false, _) => OverlapAction::Start,
            (true, Overlap::Skip) => OverlapAction::Skip,
            (true, Overlap::Queue) => OverlapAction::Queue,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::schedule::test_support::*;
    use crate::schedule::*;

    #[test]
    fn display_expr_and_tz() {
        let s = spec_tz("  0 2 * * *  ", "Asia/Shanghai");
        assert_eq!(s.to_string(), "0 2 * * *");
        assert_eq!(s.expr(), "0 2 * * *");
        assert_eq!(s.tz(), "Asia/Shanghai");
        assert_eq!(spec_tz("0 2 * * *", DEFAULT_TZ).tz(), "UTC");
        assert_eq!(spec("0\t2  *  * *").to_string(), "0\t2  *  * *");
    }

    #[test]
    fn format_local_names_the_zone() {
        let s = spec("0 2 * * *");
        assert_eq!(
            s.format_local(utc(2026, 6, 3, 2, 0)),
            "2026-06-03 02:00 UTC"
        );
        let b = spec_tz("0 2 * * *", "Europe/Berlin");
        assert_eq!(
            b.format_local(utc(2026, 6, 3, 0, 0)),
            "2026-06-03 02:00 CEST"
        );
        assert_eq!(
            b.format_local(utc(2026, 1, 3, 1, 0)),
            "2026-01-03 02:00 CET"
        );
    }

    #[test]
    fn bad_time_zone_is_named() {
        let e = CronSpec::parse("0 2 * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown time zone 'Mars/Olympus': expected an IANA name such as 'UTC', \
             'Europe/Berlin' or 'Asia/Shanghai'"
        );
        assert!(CronSpec::parse("0 2 * * *", "").is_err());
        assert!(CronSpec::parse("0 2 * * *", "Europe/Berlin").is_ok());
        assert!(CronSpec::parse("0 2 * * *", "Etc/UTC").is_ok());
    }

    // ---- policies ----------------------------------------------------------

    #[test]
    fn policies_parse_print_and_serialize() {
        assert_eq!(Misfire::default(), Misfire::FireOnce);
        assert_eq!(Overlap::default(), Overlap::Skip);
        assert_eq!("fire_once".parse::<Misfire>(), Ok(Misfire::FireOnce));
        assert_eq!("fire-once".parse::<Misfire>(), Ok(Misfire::FireOnce));
        assert_eq!("skip".parse::<Misfire>(), Ok(Misfire::Skip));
        assert_eq!("queue".parse::<Overlap>(), Ok(Overlap::Queue));
        assert_eq!("Skip".parse::<Overlap>(), Ok(Overlap::Skip));
        assert_eq!(
            "later".parse::<Misfire>().unwrap_err().to_string(),
            "unknown misfire policy 'later' (expected 'fire_once' or 'skip')"
        );
        assert!("run".parse::<Overlap>().is_err());
        for m in [Misfire::FireOnce, Misfire::Skip] {
            assert_eq!(m.to_string().parse::<Misfire>(), Ok(m));
        }
        for o in [Overlap::Skip, Overlap::Queue] {
            assert_eq!(o.to_string().parse::<Overlap>(), Ok(o));
        }
        assert_eq!(
            serde_json::to_string(&Misfire::FireOnce).unwrap(),
            "\"fire_once\""
        );
        assert_eq!(serde_json::to_string(&Overlap::Queue).unwrap(), "\"queue\"");
        assert_eq!(
            serde_json::from_str::<Misfire>("\"skip\"").unwrap(),
            Misfire::Skip
        );
        let d = Due::Fire { slot: 5, missed: 1 };
        let back: Due = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn spec_is_send_sync_and_comparable() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<CronSpec>();
        assert_send_sync::<ScheduleError>();
        assert_eq!(spec("0 2 * * *"), spec("0 2 * * *"));
        assert_ne!(spec("0 2 * * *"), spec_tz("0 2 * * *", "Europe/Berlin"));
    }

    #[test]
    fn overlap_decisions() {
        assert_eq!(Overlap::Skip.decide(false), OverlapAction::Start);
        assert_eq!(Overlap::Queue.decide(false), OverlapAction::Start);
        assert_eq!(Overlap::Skip.decide(true), OverlapAction::Skip);
        assert_eq!(Overlap::Queue.decide(true), OverlapAction::Queue);
    }
}
