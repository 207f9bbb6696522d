//! The scheduler's sense of time. Production reads the system clock; tests
//! drive a clock file (`msched --clock-file`) so that cron slots, restarts
//! across slots and retention windows can be tested without waiting.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now" in Unix milliseconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// Reads "now" (Unix ms, decimal) from a file on every call; keeps the last
/// good value while the file is missing or being rewritten.
#[derive(Debug)]
pub struct FileClock {
    path: PathBuf,
    last: AtomicI64,
}

impl FileClock {
    pub fn new(path: impl Into<PathBuf>) -> FileClock {
        FileClock {
            path: path.into(),
            last: AtomicI64::new(SystemClock.now_ms()),
        }
    }
}

impl Clock for FileClock {
    fn now_ms(&self) -> i64 {
        if let Some(v) = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
        {
            self.last.store(v, Ordering::Relaxed);
        }
        self.last.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_clock_follows_its_file_and_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("now");
        let c = FileClock::new(&path);
        std::fs::write(&path, "1000").unwrap();
        assert_eq!(c.now_ms(), 1000);
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(c.now_ms(), 1000);
        std::fs::write(&path, "2000\n").unwrap();
        assert_eq!(c.now_ms(), 2000);
    }
}
