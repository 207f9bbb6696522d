//! How an agent waits before reconnecting to its scheduler: the one rule,
//! shared by msagent's session and the load generator's simulated agents
//! (`msfleet-load restart` measures a fleet reconnecting with it).
//!
//! Full jitter: each delay is drawn uniformly between [`BACKOFF_MIN`] and a
//! bound that starts at [`FIRST_BOUND`] and doubles with each failure up to
//! [`BACKOFF_MAX`]. The first reconnect after a lost session is spread too, so
//! a fleet whose scheduler restarts does not come back in one burst.

use std::time::Duration;

/// The shortest wait before a reconnect.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// The bound of the first reconnect after a session was lost (`failures` 0):
/// 10,000 agents losing their scheduler at once come back over about a
/// second, not in the same few milliseconds.
pub const FIRST_BOUND: Duration = Duration::from_secs(1);
/// The longest wait before a reconnect.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The delay before reconnect number `failures` (0 for the first since the
/// last registered session): at least [`BACKOFF_MIN`], at most
/// `min(BACKOFF_MAX, FIRST_BOUND * 2^failures)`, uniform in between as
/// `random` (any u64) says.
pub fn reconnect_delay(failures: u32, random: u64) -> Duration {
    let min = BACKOFF_MIN.as_millis() as u64;
    let bound = (FIRST_BOUND.as_millis() as u64)
        .saturating_mul(1u64 << failures.min(20))
        .min(BACKOFF_MAX.as_millis() as u64);
    Duration::from_millis(min + random % (bound - min + 1))
}

/// A small xorshift generator for the jitter (no secrets depend on it).
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the clock and the process id (one agent per process).
    pub fn new() -> Jitter {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter::seeded(nanos ^ (u64::from(std::process::id()) << 32))
    }

    /// Seeded from `seed` (simulated agents in one process: one seed each).
    pub fn seeded(seed: u64) -> Jitter {
        // splitmix64 once, so neighbouring seeds start far apart; never 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Jitter((z ^ (z >> 31)) | 1)
    }

    /// The next pseudo-random number.
    pub fn draw(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

impl Default for Jitter {
    fn default() -> Jitter {
        Jitter::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_from_the_first_bound_to_the_cap_with_full_jitter() {
        assert_eq!(reconnect_delay(0, 0), BACKOFF_MIN);
        assert_eq!(reconnect_delay(0, 800), FIRST_BOUND, "the first bound");
        assert_eq!(reconnect_delay(0, 801), BACKOFF_MIN, "wraps within it");
        assert_eq!(reconnect_delay(1, 1_800), Duration::from_secs(2));
        assert_eq!(reconnect_delay(3, 7_800), Duration::from_secs(8));
        for failures in [4, 5, 40, u32::MAX] {
            assert_eq!(reconnect_delay(failures, 9_800), BACKOFF_MAX, "capped");
            assert_eq!(reconnect_delay(failures, 9_801), BACKOFF_MIN);
        }
    }

    /// 10,000 agents losing their scheduler at the same instant: their first
    /// reconnects spread evenly over [BACKOFF_MIN, FIRST_BOUND] (no 100 ms
    /// holds more than 2x its share), and later rounds over wider windows.
    #[test]
    fn a_fleet_losing_its_scheduler_at_once_reconnects_spread_out() {
        let agents = 10_000u64;
        let first: Vec<Duration> = (0..agents)
            .map(|i| reconnect_delay(0, Jitter::seeded(i).draw()))
            .collect();
        assert!(first
            .iter()
            .all(|d| (BACKOFF_MIN..=FIRST_BOUND).contains(d)));
        let mut buckets = [0u64; 8]; // 100 ms each over 200..1000 ms
        for d in &first {
            let i = ((d.as_millis() as u64 - 200) / 100).min(7) as usize;
            buckets[i] += 1;
        }
        let share = agents / 8;
        for (i, n) in buckets.iter().enumerate() {
            assert!(
                *n > share / 2 && *n < share * 2,
                "{n} reconnects in the 100 ms from {} ms (share {share})",
                200 + 100 * i
            );
        }
        // The same agents on their fourth failure: spread over 0.2..8 s.
        let later: Vec<u128> = (0..agents)
            .map(|i| {
                let mut j = Jitter::seeded(i);
                for _ in 0..3 {
                    j.draw();
                }
                reconnect_delay(3, j.draw()).as_millis()
            })
            .collect();
        assert!(later.iter().all(|ms| (200..=8_000).contains(ms)));
        let under_1s = later.iter().filter(|ms| **ms < 1_000).count() as u64;
        assert!(under_1s < agents / 5, "{under_1s} of {agents} under 1 s");
        assert!(later.iter().any(|ms| *ms > 7_000));
    }

    #[test]
    fn seeds_differ_and_never_stall() {
        let mut a = Jitter::seeded(0);
        let mut b = Jitter::seeded(1);
        assert_ne!(a.draw(), b.draw());
        let mut z = Jitter(1);
        assert!((0..1000).all(|_| z.draw() != 0));
    }
}
