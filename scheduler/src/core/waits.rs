//! Queue wait (submit to first assignment) over the last hour, per queue: a
//! small rolling window that `assign` feeds, so the queue view's p50/p95 never
//! scan jobs. In memory only: a restart starts a fresh hour.

use std::collections::{BTreeMap, VecDeque};

/// How far back the window reaches.
pub const WINDOW_MS: i64 = 3_600_000;
/// Samples kept per queue: past it the oldest go first, so a burst of
/// assignments cannot grow the scheduler's memory.
pub const SAMPLES_KEPT: usize = 4096;

/// The waits of the last hour, per queue.
#[derive(Debug, Default)]
pub struct WaitWindow {
    /// queue -> (assigned at ms, waited ms), oldest first.
    by_queue: BTreeMap<String, VecDeque<(i64, u64)>>,
}

/// What the queue view shows of a window.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct WaitStats {
    pub count: u64,
    pub p50_s: f64,
    pub p95_s: f64,
}

impl WaitWindow {
    /// A job of `queue` was assigned at `now_ms` after waiting `waited_ms`.
    pub fn record(&mut self, queue: &str, now_ms: i64, waited_ms: u64) {
        let samples = self.by_queue.entry(queue.to_string()).or_default();
        while samples
            .front()
            .is_some_and(|&(at, _)| at <= now_ms - WINDOW_MS)
            || samples.len() >= SAMPLES_KEPT
        {
            samples.pop_front();
        }
        samples.push_back((now_ms, waited_ms));
    }

    /// p50 / p95 of `queue`'s waits assigned within the hour before `now_ms`
    /// (nearest rank).
    pub fn stats(&self, queue: &str, now_ms: i64) -> WaitStats {
        let Some(samples) = self.by_queue.get(queue) else {
            return WaitStats::default();
        };
        let mut waits: Vec<u64> = samples
            .iter()
            .filter(|&&(at, _)| at > now_ms - WINDOW_MS)
            .map(|&(_, w)| w)
            .collect();
        if waits.is_empty() {
            return WaitStats::default();
        }
        waits.sort_unstable();
        let rank = |p: f64| {
            let i = ((p * waits.len() as f64).ceil() as usize).clamp(1, waits.len()) - 1;
            waits[i] as f64 / 1000.0
        };
        WaitStats {
            count: waits.len() as u64,
            p50_s: rank(0.50),
            p95_s: rank(0.95),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::*;
    use super::super::Command;
    use super::*;
    use msfleet_proto::Outcome;

    fn default_queue(h: &mut Harness) -> msfleet_proto::Queue {
        h.call(|reply| Command::ListQueues { reply })
            .unwrap()
            .into_iter()
            .find(|q| q.name == "default")
            .expect("the default queue")
    }

    /// The queue view: the oldest pending job's age from the pending index,
    /// and the waits of the jobs assigned, recorded at assignment.
    #[test]
    fn the_queue_view_shows_the_oldest_pending_age_and_assigned_waits() {
        let mut h = Harness::new();
        h.submit(spec()).unwrap();
        h.advance(4_000);
        h.submit(spec()).unwrap();
        h.advance(6_000);
        let q = default_queue(&mut h);
        assert_eq!(
            (q.pending, q.oldest_pending_s, q.waits_last_hour),
            (2, 10.0, 0)
        );
        // One slot: the first job (waited 10 s) is assigned, the second waits on.
        let mut a = h.register("a1", "cpu", 1);
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        let q = default_queue(&mut h);
        assert_eq!((q.pending, q.oldest_pending_s), (1, 6.0));
        assert_eq!(
            (q.waits_last_hour, q.wait_p50_s, q.wait_p95_s),
            (1, 10.0, 10.0)
        );
        h.advance(2_000);
        h.finish(&mut a, &r, Outcome::Passed);
        h.assignments(&mut a);
        let q = default_queue(&mut h);
        assert_eq!(
            (q.pending, q.oldest_pending_s, q.waits_last_hour),
            (0, 0.0, 2)
        );
        assert_eq!((q.wait_p50_s, q.wait_p95_s), (8.0, 10.0));
        h.advance(WINDOW_MS);
        assert_eq!(default_queue(&mut h).waits_last_hour, 0, "an hour later");
    }

    #[test]
    fn percentiles_cover_the_last_hour_only() {
        let mut w = WaitWindow::default();
        let t0 = 10 * WINDOW_MS;
        // An old, long wait that leaves the window.
        w.record("default", t0, 900_000);
        for i in 1..=20u64 {
            w.record("default", t0 + WINDOW_MS + i as i64, i * 1000);
        }
        let now = t0 + WINDOW_MS + 100;
        let s = w.stats("default", now);
        assert_eq!(s.count, 20);
        assert_eq!(s.p50_s, 10.0);
        assert_eq!(s.p95_s, 19.0);
        assert_eq!(w.stats("nightly", now), WaitStats::default());
        // An hour later nothing is left.
        assert_eq!(w.stats("default", now + WINDOW_MS).count, 0);
    }

    #[test]
    fn the_window_is_bounded() {
        let mut w = WaitWindow::default();
        for i in 0..(SAMPLES_KEPT as i64 + 500) {
            w.record("q", i, 5);
        }
        assert_eq!(w.by_queue["q"].len(), SAMPLES_KEPT);
        assert_eq!(w.stats("q", 10_000).count, SAMPLES_KEPT as u64);
    }
}
