//! Slots: the fire times of a [`CronSpec`] as UTC instants (wall times in
//! its zone, with the daylight-saving rules of the module docs), counting
//! them, and [`due`]: which slot fires now.

use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::{CronSpec, Misfire, ON_TIME_GRACE_MS};

/// First and last local dates the `cron` crate produces slots for.
const FIRST_YEAR: i32 = 1970;
const LAST_YEAR: i32 = 2100;

impl CronSpec {
    /// The first slot strictly after `after_ms`, in UTC ms.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let mut n = self.wall(after_ms)?;
        // Skips only happen when `after_ms` is in the second pass of a
        // repeated (fall-back) hour: those wall times already fired.
        loop {
            n = self.next_wall_after(n)?;
            let slot = self.slot_of(n)?;
            if slot > after_ms {
                return Some(slot);
            }
        }
    }

    /// The newest slot in `[not_before_ms, at_ms]`.
    pub fn latest_at_or_before(&self, at_ms: i64, not_before_ms: i64) -> Option<i64> {
        if not_before_ms > at_ms {
            return None;
        }
        // The wall clock to search back from. In the second pass of a
        // repeated hour, wall times up to the end of that hour have slots
        // (their first pass) that are <= at_ms, so use the larger of the
        // offsets now and a little earlier.
        let offset = self.offset_at(at_ms)?.max(
            self.offset_at(at_ms.saturating_sub(3 * 3_600_000))
                .unwrap_or(i64::MIN),
        );
        let mut n = DateTime::from_timestamp(at_ms.div_euclid(1000) + offset + 1, 0)?.naive_utc();
        loop {
            n = self.prev_wall_before(n)?;
            let slot = self.slot_of(n)?;
            if slot > at_ms {
                continue;
            }
            return (slot >= not_before_ms).then_some(slot);
        }
    }

    /// The next `count` slots strictly after `after_ms` (for `msctl` listings).
    pub fn upcoming(&self, after_ms: i64, count: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(count.min(1024));
        let mut at = after_ms;
        while out.len() < count {
            match self.next_after(at) {
                Some(slot) => {
                    out.push(slot);
                    at = slot;
                }
                None => break,
            }
        }
        out
    }

    /// How many slots lie in `(after_ms, at_ms]`.
    ///
    /// Counted day by day, not slot by slot: a day without a UTC-offset change
    /// nearby contributes `minutes x hours` at once; only the first and last
    /// day and days next to a DST transition are walked slot by slot. A year
    /// of `* * * * *` costs a few hundred day steps.
    pub fn count_between(&self, after_ms: i64, at_ms: i64) -> u64 {
        if at_ms <= after_ms {
            return 0;
        }
        let first_date = NaiveDate::from_ymd_opt(FIRST_YEAR, 1, 1).expect("valid date");
        let last_date = NaiveDate::from_ymd_opt(LAST_YEAR, 12, 31).expect("valid date");
        let start = self
            .wall(after_ms)
            .and_then(|n| n.date().pred_opt())
            .map_or(first_date, |d| d.max(first_date));
        let end = self
            .wall(at_ms)
            .and_then(|n| n.date().succ_opt())
            .map_or(last_date, |d| d.min(last_date));
        if start > end {
            return 0;
        }
        let per_day = self.fields.slots_per_day();
        let first_hm = self.fields.times_of_day().next();
        let last_hm = self.fields.times_of_day().last();
        let (Some(first_hm), Some(last_hm)) = (first_hm, last_hm) else {
            return 0;
        };

        let mut total = 0u64;
        let mut last_counted = i64::MIN;
        let mut off_prev = start.pred_opt().and_then(|d| self.midnight_offset(d));
        let mut off_cur = self.midnight_offset(start);
        let mut day = start;
        loop {
            let next_day = day.succ_opt();
            let off_next = next_day.and_then(|d| self.midnight_offset(d));
            if self.fields.day_matches(day) {
                let mut done = false;
                // Constant offset from the previous midnight to the next: the
                // day's slots are its wall times minus that offset, distinct,
                // and apart from the neighbouring days' slots.
                if let (Some(p), Some(c), Some(n)) = (off_prev, off_cur, off_next) {
                    if p == c && c == n {
                        let at = |(h, m): (u32, u32)| (wall_secs(day, h, m) - c) * 1000;
                        let (s_first, s_last) = (at(first_hm), at(last_hm));
                        if s_first > after_ms && s_last <= at_ms {
                            total += per_day;
                            last_counted = s_last;
                            done = true;
                        } else if s_last <= after_ms || s_first > at_ms {
                            done = true;
                        }
                    }
                }
                if !done {
                    for (h, m) in self.fields.times_of_day() {
                        let Some(n) = day.and_hms_opt(h, m, 0) else {
                            continue;
                        };
                        let Some(slot) = self.slot_of(n) else {
                            continue;
                        };
                        if slot > after_ms && slot <= at_ms && slot > last_counted {
                            total += 1;
                            last_counted = slot;
                        }
                    }
                }
            }
            match next_day {
                Some(d) if d <= end => {
                    off_prev = off_cur;
                    off_cur = off_next;
                    day = d;
                }
                _ => break,
            }
        }
        total
    }

    /// The wall-clock time of instant `ms` in the zone, whole seconds.
    fn wall(&self, ms: i64) -> Option<NaiveDateTime> {
        let dt = DateTime::from_timestamp(ms.div_euclid(1000), 0)?;
        Some(dt.with_timezone(&self.tz).naive_local())
    }

    /// UTC offset in seconds at instant `ms`.
    fn offset_at(&self, ms: i64) -> Option<i64> {
        let dt = DateTime::from_timestamp_millis(ms)?;
        Some(i64::from(
            self.tz
                .offset_from_utc_datetime(&dt.naive_utc())
                .fix()
                .local_minus_utc(),
        ))
    }

    /// The offset at local midnight of `day` if that wall time exists once.
    fn midnight_offset(&self, day: NaiveDate) -> Option<i64> {
        match self.tz.from_local_datetime(&day.and_time(NaiveTime::MIN)) {
            LocalResult::Single(dt) => Some(i64::from(dt.offset().fix().local_minus_utc())),
            _ => None,
        }
    }

    /// The slot (UTC ms) of matching wall time `n`: its only instant, the
    /// first of two (fall back), or the end of the gap (spring forward).
    fn slot_of(&self, n: NaiveDateTime) -> Option<i64> {
        match self.tz.from_local_datetime(&n) {
            LocalResult::Single(dt) => Some(dt.timestamp_millis()),
            LocalResult::Ambiguous(a, b) => Some(a.timestamp_millis().min(b.timestamp_millis())),
            LocalResult::None => self.gap_end(n),
        }
    }

    /// For a wall time `n` that does not exist, the instant the clocks jump
    /// over it: the smallest `u` whose wall time is later than `n`.
    fn gap_end(&self, n: NaiveDateTime) -> Option<i64> {
        let target = n.and_utc().timestamp();
        let wall_at = |u: i64| self.offset_at(u * 1000).map(|o| u + o);
        // Offsets are within +-15 h, so the wall time at lo is before n and
        // at hi after it.
        let (mut lo, mut hi) = (target - 26 * 3600, target + 26 * 3600);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if wall_at(mid)? > target {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(hi * 1000)
    }

    /// The first matching wall time strictly after `n`.
    fn next_wall_after(&self, n: NaiveDateTime) -> Option<NaiveDateTime> {
        let start = Utc.from_utc_datetime(&n);
        self.schedules
            .iter()
            .filter_map(|s| s.after(&start).next())
            .min()
            .map(|dt| dt.naive_utc())
    }

    /// The last matching wall time strictly before `n`.
    fn prev_wall_before(&self, n: NaiveDateTime) -> Option<NaiveDateTime> {
        let start = Utc.from_utc_datetime(&n);
        self.schedules
            .iter()
            .filter_map(|s| s.after(&start).next_back())
            .max()
            .map(|dt| dt.naive_utc())
    }
}

/// Seconds of wall time `day h:m` read as if it were UTC.
fn wall_secs(day: NaiveDate, h: u32, m: u32) -> i64 {
    day.and_time(NaiveTime::MIN).and_utc().timestamp() + i64::from(h * 3600 + m * 60)
}

/// What the scheduler should do now for one schedule (see [`due`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Due {
    /// No unconsumed slot is due; `next` is the next slot (None: never again).
    Nothing { next: Option<i64> },
    /// Fire `slot` now and persist `last_slot = slot`. `missed` counts the
    /// older unconsumed slots skipped over (0 in normal operation).
    Fire { slot: i64, missed: u32 },
    /// Misfire with [`Misfire::Skip`]: fire nothing, but persist
    /// `last_slot = slot` so these slots are not considered again. `missed`
    /// counts all the slots skipped over, `slot` included.
    SkipTo { slot: i64, missed: u32 },
}

impl Due {
    /// The value to persist as the schedule's `last_slot`, if it changes.
    pub fn consumed_slot(&self) -> Option<i64> {
        match *self {
            Due::Nothing { .. } => None,
            Due::Fire { slot, .. } | Due::SkipTo { slot, .. } => Some(slot),
        }
    }
}

/// What the scheduler should do at `now_ms` for a schedule created at
/// `created_ms` whose last consumed slot is `last_slot` (None = never).
///
/// Slots considered are those strictly after `max(last_slot, created_ms - 1)`
/// and at or before `now_ms`; a schedule never fires a slot from before it
/// was created. Only the newest such slot can fire:
///
/// * on time (`now_ms - slot <= ON_TIME_GRACE_MS`): [`Due::Fire`], whatever
///   the misfire policy;
/// * late (the scheduler was down or slow): with [`Misfire::FireOnce`]
///   [`Due::Fire`] for that newest slot, once; with [`Misfire::Skip`]
///   [`Due::SkipTo`].
///
/// `missed` is computed arithmetically (day by day), so a year-long outage of
/// `* * * * *` is cheap; it saturates at `u32::MAX`.
///
/// If `last_slot` or `created_ms` is after `now_ms` (the clock went back),
/// nothing fires until the clock passes the next slot after them.
pub fn due(
    spec: &CronSpec,
    created_ms: i64,
    last_slot: Option<i64>,
    now_ms: i64,
    misfire: Misfire,
) -> Due {
    let floor = created_ms.saturating_sub(1);
    let after = last_slot.map_or(floor, |l| l.max(floor));
    let Some(slot) = spec.latest_at_or_before(now_ms, after.saturating_add(1)) else {
        return Due::Nothing {
            next: spec.next_after(now_ms.max(after)),
        };
    };
    let in_window = spec.count_between(after, slot).max(1);
    let saturate = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    if now_ms - slot <= ON_TIME_GRACE_MS || misfire == Misfire::FireOnce {
        Due::Fire {
            slot,
            missed: saturate(in_window - 1),
        }
    } else {
        Due::SkipTo {
            slot,
            missed: saturate(in_window),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::schedule::test_support::*;
    use crate::schedule::*;
    use std::time::Instant;

    #[test]
    fn next_after_is_strict_and_latest_is_inclusive() {
        let s = spec("0 2 * * *");
        let slot = utc(2026, 6, 3, 2, 0);
        assert_eq!(s.next_after(slot - 1), Some(slot));
        assert_eq!(s.next_after(slot), Some(slot + DAY));
        assert_eq!(s.next_after(slot + 999), Some(slot + DAY));
        assert_eq!(s.latest_at_or_before(slot, slot), Some(slot));
        assert_eq!(s.latest_at_or_before(slot - 1, 0), Some(slot - DAY));
        assert_eq!(s.latest_at_or_before(slot + 5 * HOUR, slot), Some(slot));
        assert_eq!(s.latest_at_or_before(slot + 5 * HOUR, slot + 1), None);
        assert_eq!(s.latest_at_or_before(slot, slot + 1), None);
        assert_eq!(s.latest_at_or_before(slot + 1500, slot), Some(slot));
    }

    // ---- time zones and DST ----------------------------------------------

    #[test]
    fn shanghai_two_am_is_six_pm_utc_the_day_before() {
        let s = spec_tz("0 2 * * *", "Asia/Shanghai");
        let next = s.next_after(utc(2026, 11, 22, 12, 0)).unwrap();
        assert_eq!(next, utc(2026, 11, 22, 18, 0));
        assert_eq!(s.format_local(next), "2026-11-23 02:00 CST");
        assert_eq!(s.next_after(next), Some(utc(2026, 11, 23, 18, 0)));
        assert_eq!(
            s.latest_at_or_before(utc(2026, 11, 22, 17, 59), 0),
            Some(utc(2026, 11, 21, 18, 0))
        );
        // Day-of-week is judged on the local date: Monday 02:00 in Shanghai
        // is Sunday 18:00 UTC.
        let s = spec_tz("0 2 * * mon", "Asia/Shanghai");
        assert_eq!(
            s.next_after(utc(2026, 6, 3, 0, 0)),
            Some(utc(2026, 6, 7, 18, 0))
        );
    }

    #[test]
    fn berlin_spring_forward_moves_the_slot_to_the_jump() {
        // 2026-03-29: 02:00 CET -> 03:00 CEST at 01:00 UTC; 02:30 never exists.
        let s = spec_tz("30 2 * * *", "Europe/Berlin");
        let from = utc(2026, 3, 27, 12, 0);
        let slots = s.upcoming(from, 3);
        assert_eq!(
            slots,
            vec![
                utc(2026, 3, 28, 1, 30), // 02:30 CET
                utc(2026, 3, 29, 1, 0),  // moved to 03:00 CEST, the jump
                utc(2026, 3, 30, 0, 30), // 02:30 CEST
            ]
        );
        assert_eq!(s.format_local(slots[1]), "2026-03-29 03:00 CEST");
        // 02:00 and 03:00 on that day are the same instant: one slot.
        let s = spec_tz("0 2,3 * * *", "Europe/Berlin");
        assert_eq!(
            s.upcoming(utc(2026, 3, 28, 12, 0), 3),
            vec![
                utc(2026, 3, 29, 1, 0),
                utc(2026, 3, 30, 0, 0),
                utc(2026, 3, 30, 1, 0)
            ]
        );
        assert_eq!(
            s.count_between(utc(2026, 3, 28, 12, 0), utc(2026, 3, 29, 12, 0)),
            1
        );
        // Every-15-minutes: the gap's slots collapse into the jump.
        let s = spec_tz("*/15 * * * *", "Europe/Berlin");
        assert_eq!(
            s.upcoming(utc(2026, 3, 29, 0, 30), 4),
            vec![
                utc(2026, 3, 29, 0, 45), // 01:45 CET
                utc(2026, 3, 29, 1, 0),  // 03:00 CEST (02:00-02:45 moved here)
                utc(2026, 3, 29, 1, 15),
                utc(2026, 3, 29, 1, 30),
            ]
        );
        // The moved slot fires once through `due`.
        let s = spec_tz("30 2 * * *", "Europe/Berlin");
        let created = utc(2026, 3, 1, 0, 0);
        let slot = utc(2026, 3, 29, 1, 0);
        let prev = utc(2026, 3, 28, 1, 30);
        assert_eq!(
            due(&s, created, Some(prev), slot - 1, Misfire::FireOnce),
            Due::Nothing { next: Some(slot) }
        );
        assert_eq!(
            due(&s, created, Some(prev), slot + 10, Misfire::FireOnce),
            Due::Fire { slot, missed: 0 }
        );
        assert_eq!(
            due(&s, created, Some(slot), slot + HOUR, Misfire::FireOnce),
            Due::Nothing {
                next: Some(utc(2026, 3, 30, 0, 30))
            }
        );
    }

    #[test]
    fn berlin_fall_back_fires_the_repeated_slot_once() {
        // 2026-10-25: 03:00 CEST -> 02:00 CET at 01:00 UTC; 02:30 happens
        // at 00:30 UTC and again at 01:30 UTC.
        let s = spec_tz("30 2 * * *", "Europe/Berlin");
        let slots = s.upcoming(utc(2026, 10, 24, 12, 0), 3);
        assert_eq!(
            slots,
            vec![
                utc(2026, 10, 25, 0, 30),
                utc(2026, 10, 26, 1, 30),
                utc(2026, 10, 27, 1, 30)
            ]
        );
        assert_eq!(s.format_local(slots[0]), "2026-10-25 02:30 CEST");
        // From inside the second pass, the next slot is tomorrow's.
        assert_eq!(
            s.next_after(utc(2026, 10, 25, 1, 15)),
            Some(utc(2026, 10, 26, 1, 30))
        );
        assert_eq!(
            s.next_after(utc(2026, 10, 25, 1, 30)),
            Some(utc(2026, 10, 26, 1, 30))
        );
        // Looking back from the second pass finds the first pass.
        assert_eq!(
            s.latest_at_or_before(utc(2026, 10, 25, 1, 45), 0),
            Some(utc(2026, 10, 25, 0, 30))
        );
        assert_eq!(
            s.latest_at_or_before(utc(2026, 10, 25, 1, 15), 0),
            Some(utc(2026, 10, 25, 0, 30))
        );
        assert_eq!(
            s.count_between(utc(2026, 10, 24, 12, 0), utc(2026, 10, 25, 12, 0)),
            1
        );

        // Through due(): fires at 00:30 UTC, not again at 01:30 UTC.
        let created = utc(2026, 10, 1, 0, 0);
        let first = utc(2026, 10, 25, 0, 30);
        let d = due(
            &s,
            created,
            Some(utc(2026, 10, 24, 0, 30)),
            first + 5_000,
            Misfire::FireOnce,
        );
        assert_eq!(
            d,
            Due::Fire {
                slot: first,
                missed: 0
            }
        );
        for now in [first + HOUR, first + HOUR + 1, utc(2026, 10, 25, 1, 59)] {
            assert_eq!(
                due(&s, created, Some(first), now, Misfire::FireOnce),
                Due::Nothing {
                    next: Some(utc(2026, 10, 26, 1, 30))
                }
            );
        }

        // Every 30 minutes: no slots in the second pass of the hour.
        let s = spec_tz("*/30 * * * *", "Europe/Berlin");
        assert_eq!(
            s.upcoming(utc(2026, 10, 24, 23, 45), 5),
            vec![
                utc(2026, 10, 25, 0, 0),  // 02:00 CEST
                utc(2026, 10, 25, 0, 30), // 02:30 CEST
                utc(2026, 10, 25, 2, 0),  // 03:00 CET
                utc(2026, 10, 25, 2, 30),
                utc(2026, 10, 25, 3, 0),
            ]
        );
    }

    #[test]
    fn new_york_dst_days() {
        // 2026-03-08 02:00 EST -> 03:00 EDT (07:00 UTC); 2026-11-01 02:00 EDT -> 01:00 EST (06:00 UTC).
        let s = spec_tz("30 1 * * *", "America/New_York");
        assert_eq!(
            s.upcoming(utc(2026, 10, 31, 12, 0), 2),
            vec![utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]
        );
        let s = spec_tz("30 2 * * *", "America/New_York");
        assert_eq!(
            s.upcoming(utc(2026, 3, 7, 12, 0), 3),
            vec![
                utc(2026, 3, 8, 7, 0),
                utc(2026, 3, 9, 6, 30),
                utc(2026, 3, 10, 6, 30)
            ]
        );
    }

    #[test]
    fn count_between_matches_walking_the_slots() {
        let cases = [
            ("* * * * *", "Europe/Berlin"),
            ("*/7 * * * *", "Europe/Berlin"),
            ("30 2 * * *", "Europe/Berlin"),
            ("0 2,3 * * *", "Europe/Berlin"),
            ("15 0-4 * * sun", "Europe/Berlin"),
            ("0 0 1 * mon", "Europe/Berlin"),
            ("*/10 * * * *", "America/New_York"),
            ("*/5 * * * *", "Australia/Lord_Howe"), // 30-minute DST shifts
            ("0,30 * * * *", "America/Santiago"),   // DST at midnight
            ("0 0 * * *", "America/Santiago"),
            ("* * * * *", "Asia/Shanghai"),
            ("*/13 2-5 * 3,10 *", "UTC"),
        ];
        let windows = [
            (utc(2026, 3, 27, 7, 3), utc(2026, 3, 30, 2, 1)),
            (utc(2026, 10, 23, 22, 59), utc(2026, 10, 26, 3, 0)),
            (utc(2026, 3, 6, 0, 0), utc(2026, 3, 10, 0, 0)),
            (utc(2026, 10, 30, 0, 0), utc(2026, 11, 3, 0, 0)),
            (utc(2026, 4, 1, 0, 0), utc(2026, 4, 7, 0, 0)), // Lord Howe, Santiago
            (utc(2026, 9, 1, 0, 0), utc(2026, 9, 10, 0, 0)), // Santiago spring
            (utc(2026, 10, 1, 0, 0), utc(2026, 10, 6, 0, 0)), // Lord Howe spring
            (utc(2026, 6, 1, 0, 30), utc(2026, 6, 1, 0, 30)),
            (utc(2026, 6, 1, 0, 0), utc(2026, 6, 1, 0, 1)),
        ];
        for (expr, tz) in cases {
            let s = spec_tz(expr, tz);
            for (a, b) in windows {
                let walked = all_between(&s, a, b);
                assert!(walked.windows(2).all(|w| w[0] < w[1]), "{expr} {tz}");
                assert_eq!(
                    s.count_between(a, b),
                    walked.len() as u64,
                    "{expr} {tz} ({a}, {b}]"
                );
                // latest_at_or_before agrees with the walk.
                assert_eq!(
                    s.latest_at_or_before(b, a + 1),
                    walked.last().copied(),
                    "{expr} {tz}"
                );
            }
        }
    }

    #[test]
    fn slots_never_repeat_or_go_backwards_across_a_year_of_dst() {
        for tz in [
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
            "America/Santiago",
        ] {
            let s = spec_tz("*/30 * * * *", tz);
            let slots = all_between(&s, utc(2026, 1, 1, 0, 0), utc(2027, 1, 1, 0, 0));
            assert!(slots.windows(2).all(|w| w[0] < w[1]), "{tz}");
            // Backwards walk finds the same slots.
            let mut back = vec![];
            let mut at = utc(2027, 1, 1, 0, 0);
            while let Some(t) = s.latest_at_or_before(at, utc(2026, 1, 1, 0, 0) + 1) {
                back.push(t);
                at = t - 1;
            }
            back.reverse();
            assert_eq!(back, slots, "{tz}");
        }
    }

    // ---- due ---------------------------------------------------------------

    #[test]
    fn due_fires_each_slot_once() {
        let s = spec("0 2 * * *");
        let created = utc(2026, 6, 1, 12, 0);
        let slot = utc(2026, 6, 2, 2, 0);
        // Before the slot: nothing, next = the slot.
        assert_eq!(
            due(&s, created, None, slot - MIN, Misfire::FireOnce),
            Due::Nothing { next: Some(slot) }
        );
        // At and just after the slot: fire it.
        for now in [slot, slot + 1, slot + 30_000, slot + ON_TIME_GRACE_MS] {
            let d = due(&s, created, None, now, Misfire::FireOnce);
            assert_eq!(d, Due::Fire { slot, missed: 0 });
            assert_eq!(d.consumed_slot(), Some(slot));
        }
        // Once recorded: nothing until the next slot, however often asked.
        for now in [slot, slot + 1, slot + HOUR, slot + DAY - 1] {
            let d = due(&s, created, Some(slot), now, Misfire::FireOnce);
            assert_eq!(
                d,
                Due::Nothing {
                    next: Some(slot + DAY)
                }
            );
            assert_eq!(d.consumed_slot(), None);
        }
        assert_eq!(
            due(&s, created, Some(slot), slot + DAY, Misfire::FireOnce),
            Due::Fire {
                slot: slot + DAY,
                missed: 0
            }
        );
        // On time beats the misfire policy.
        assert_eq!(
            due(&s, created, Some(slot), slot + DAY + 10_000, Misfire::Skip),
            Due::Fire {
                slot: slot + DAY,
                missed: 0
            }
        );
    }

    #[test]
    fn restart_across_one_slot_fires_it_exactly_once() {
        let s = spec("0 2 * * *");
        let created = utc(2026, 6, 1, 12, 0);
        let missed_slot = utc(2026, 6, 3, 2, 0);
        let last = Some(missed_slot - DAY);
        // Down from 01:00 to 09:00: on start, fire the 02:00 slot once.
        let now = utc(2026, 6, 3, 9, 0);
        let d = due(&s, created, last, now, Misfire::FireOnce);
        assert_eq!(
            d,
            Due::Fire {
                slot: missed_slot,
                missed: 0
            }
        );
        // The caller records it; the next ticks do nothing.
        let last = d.consumed_slot();
        assert_eq!(last, Some(missed_slot));
        for now in [now, now + 1, now + MIN, utc(2026, 6, 4, 1, 59)] {
            assert_eq!(
                due(&s, created, last, now, Misfire::FireOnce),
                Due::Nothing {
                    next: Some(utc(2026, 6, 4, 2, 0))
                }
            );
        }
    }

    /// An hourly schedule last fired at 10:00 on 2026-06-03, the scheduler
    /// down from 10:30 to 15:20: slots 11, 12, 13, 14, 15 were missed.
    struct HourlyOutage {
        s: CronSpec,
        created: i64,
        last: i64,
        now: i64,
    }

    impl HourlyOutage {
        fn new() -> Self {
            HourlyOutage {
                s: spec("0 * * * *"),
                created: utc(2026, 6, 1, 0, 0),
                last: utc(2026, 6, 3, 10, 0),
                now: utc(2026, 6, 3, 15, 20),
            }
        }

        /// What is due when the scheduler is back, at 15:20.
        fn due_on_return(&self, misfire: Misfire) -> Due {
            due(&self.s, self.created, Some(self.last), self.now, misfire)
        }

        /// Once `d` is recorded, nothing is due at 15:20: the next slot is 16:00.
        fn assert_nothing_due_until_16(&self, d: Due, misfire: Misfire) {
            assert_eq!(
                due(&self.s, self.created, d.consumed_slot(), self.now, misfire),
                Due::Nothing {
                    next: Some(utc(2026, 6, 3, 16, 0))
                }
            );
        }
    }

    #[test]
    fn five_missed_slots_fire_only_the_latest() {
        let o = HourlyOutage::new();
        let d = o.due_on_return(Misfire::FireOnce);
        assert_eq!(
            d,
            Due::Fire {
                slot: utc(2026, 6, 3, 15, 0),
                missed: 4
            }
        );
        o.assert_nothing_due_until_16(d, Misfire::FireOnce);
    }

    #[test]
    fn skip_policy_fires_none_and_advances() {
        let o = HourlyOutage::new();
        let d = o.due_on_return(Misfire::Skip);
        assert_eq!(
            d,
            Due::SkipTo {
                slot: utc(2026, 6, 3, 15, 0),
                missed: 5
            }
        );
        assert_eq!(d.consumed_slot(), Some(utc(2026, 6, 3, 15, 0)));
        // After recording, nothing until 16:00, which then fires on time.
        o.assert_nothing_due_until_16(d, Misfire::Skip);
        let HourlyOutage {
            s, created, last, ..
        } = o;
        assert_eq!(
            due(
                &s,
                created,
                d.consumed_slot(),
                utc(2026, 6, 3, 16, 0) + 2_000,
                Misfire::Skip
            ),
            Due::Fire {
                slot: utc(2026, 6, 3, 16, 0),
                missed: 0
            }
        );
        // One slot, late by more than the grace: skipped.
        let d = due(
            &s,
            created,
            Some(last),
            utc(2026, 6, 3, 11, 2),
            Misfire::Skip,
        );
        assert_eq!(
            d,
            Due::SkipTo {
                slot: utc(2026, 6, 3, 11, 0),
                missed: 1
            }
        );
        // Late but with an older missed slot and the newest on time: fire.
        let d = due(
            &s,
            created,
            Some(last),
            utc(2026, 6, 3, 12, 0) + 30_000,
            Misfire::Skip,
        );
        assert_eq!(
            d,
            Due::Fire {
                slot: utc(2026, 6, 3, 12, 0),
                missed: 1
            }
        );
    }

    #[test]
    fn schedule_created_after_a_slot_does_not_fire_it() {
        let s = spec("0 2 * * *");
        let slot = utc(2026, 6, 3, 2, 0);
        // Created 02:00:30, i.e. 30 s after today's slot: not fired.
        let created = slot + 30_000;
        for m in [Misfire::FireOnce, Misfire::Skip] {
            assert_eq!(
                due(&s, created, None, created, m),
                Due::Nothing {
                    next: Some(slot + DAY)
                }
            );
            assert_eq!(
                due(&s, created, None, created + HOUR, m),
                Due::Nothing {
                    next: Some(slot + DAY)
                }
            );
        }
        // Created exactly at the slot: that slot counts.
        assert_eq!(
            due(&s, slot, None, slot + 5, Misfire::FireOnce),
            Due::Fire { slot, missed: 0 }
        );
        // Created long ago and never fired, scheduler down for 3 days: the
        // window starts at creation.
        let created = slot - 10 * DAY + HOUR;
        let d = due(&s, created, None, slot + 5 * HOUR, Misfire::FireOnce);
        assert_eq!(d, Due::Fire { slot, missed: 9 });
    }

    #[test]
    fn clock_going_back_does_not_refire() {
        let s = spec("0 2 * * *");
        let created = utc(2026, 6, 1, 0, 0);
        let slot = utc(2026, 6, 3, 2, 0);
        // last_slot is after now (clock stepped back): nothing, and the next
        // slot is after last_slot.
        assert_eq!(
            due(&s, created, Some(slot), slot - HOUR, Misfire::FireOnce),
            Due::Nothing {
                next: Some(slot + DAY)
            }
        );
        // A stale last_slot from before creation is ignored.
        assert_eq!(
            due(
                &s,
                created,
                Some(utc(2026, 1, 1, 2, 0)),
                utc(2026, 6, 2, 2, 0) + 1,
                Misfire::FireOnce
            ),
            Due::Fire {
                slot: utc(2026, 6, 2, 2, 0),
                missed: 1
            }
        );
    }

    #[test]
    fn due_in_a_zone() {
        let s = spec_tz("0 2 * * *", "Asia/Shanghai");
        let created = utc(2026, 11, 1, 0, 0);
        let last = Some(utc(2026, 11, 21, 18, 0));
        assert_eq!(
            due(
                &s,
                created,
                last,
                utc(2026, 11, 22, 17, 59),
                Misfire::FireOnce
            ),
            Due::Nothing {
                next: Some(utc(2026, 11, 22, 18, 0))
            }
        );
        assert_eq!(
            due(
                &s,
                created,
                last,
                utc(2026, 11, 22, 18, 0),
                Misfire::FireOnce
            ),
            Due::Fire {
                slot: utc(2026, 11, 22, 18, 0),
                missed: 0
            }
        );
    }

    #[test]
    fn year_long_outage_is_fast() {
        for tz in ["UTC", "Europe/Berlin"] {
            let s = spec_tz("* * * * *", tz);
            let created = utc(2025, 1, 1, 0, 0);
            let last = utc(2025, 6, 1, 0, 0);
            let now = utc(2026, 6, 1, 0, 0) + 30 * MIN + 5_000;
            let t = Instant::now();
            let d = due(&s, created, Some(last), now, Misfire::FireOnce);
            let elapsed = t.elapsed();
            // 365 days of wall minutes plus 30. In Berlin the spring gap's
            // 60 wall minutes collapse into the 03:00 slot (-60); the autumn
            // repeated hour's wall minutes each fire once (-0).
            let minutes = 365 * 24 * 60 + 30;
            let want = if tz == "UTC" { minutes } else { minutes - 60 };
            assert_eq!(
                d,
                Due::Fire {
                    slot: utc(2026, 6, 1, 0, 30),
                    missed: want - 1
                },
                "{tz}"
            );
            assert!(elapsed.as_millis() < 50, "{tz}: took {elapsed:?}");
            // Every-minute slots are never late (the newest is under a
            // minute old), so Skip fires too.
            assert_eq!(
                due(&s, created, Some(last), now, Misfire::Skip),
                Due::Fire {
                    slot: utc(2026, 6, 1, 0, 30),
                    missed: want - 1
                }
            );
            // Hourly, 30 min late: Skip consumes a year of slots at once.
            let s = spec_tz("0 * * * *", tz);
            let t = Instant::now();
            let d = due(&s, created, Some(last), now, Misfire::Skip);
            let hours = 365 * 24;
            let want = if tz == "UTC" { hours } else { hours - 1 };
            assert_eq!(
                d,
                Due::SkipTo {
                    slot: utc(2026, 6, 1, 0, 0),
                    missed: want
                },
                "{tz}"
            );
            assert!(t.elapsed().as_millis() < 50, "{tz}: took {:?}", t.elapsed());
        }
        // Decades, from 1970, still bounded.
        let s = spec("* * * * *");
        let t = Instant::now();
        let n = s.count_between(-1, utc(2026, 1, 1, 0, 0));
        assert_eq!(n, (utc(2026, 1, 1, 0, 0) / MIN + 1) as u64);
        assert!(t.elapsed().as_millis() < 200, "took {:?}", t.elapsed());
    }
}
