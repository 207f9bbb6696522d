//! End-to-end tests of durable cron schedules and dedup keys. The scheduler's
//! clock is driven through `msched --clock-file` (no sleeping for minutes).

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// 2026-11-23T00:00:00Z
const DAY: i64 = 1_795_392_000_000;
const HOUR: i64 = 3_600_000;
const MIN: i64 = 60_000;

/// A fleet whose scheduler reads the time from a file we control.
struct Timed {
    f: Fleet,
    clock: PathBuf,
    _clock_dir: tempfile::TempDir,
}

impl Timed {
    fn new(start_ms: i64) -> Timed {
        let clock_dir = tempfile::tempdir().unwrap();
        let clock = clock_dir.path().join("now");
        std::fs::write(&clock, start_ms.to_string()).unwrap();
        let opts = SchedOpts {
            extra: vec!["--clock-file".into(), clock.display().to_string()],
            ..Default::default()
        };
        Timed {
            f: Fleet::with_opts(opts),
            clock,
            _clock_dir: clock_dir,
        }
    }

    fn set(&self, ms: i64) {
        let tmp = self.clock.with_extension("tmp");
        std::fs::write(&tmp, ms.to_string()).unwrap();
        std::fs::rename(&tmp, &self.clock).unwrap();
    }

    /// A job file for a quick passing suite under the agents' root.
    fn job_file(&self, name: &str) -> PathBuf {
        self.job_file_with(name, "")
    }

    /// The same, with `top` (TOML keys) added at the top.
    fn job_file_with(&self, name: &str, top: &str) -> PathBuf {
        let suite = self
            .f
            .write_suite(name, &[("test_ok.py", "def test_ok():\n    pass\n")]);
        let file = self.f.path().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "kind = \"pytest\"\n{top}[source]\ndir = \"{}\"\n",
                suite.display()
            ),
        )
        .unwrap();
        file
    }

    fn jobs_of(&self, schedule: &str) -> Vec<Value> {
        self.f
            .list()
            .into_iter()
            .filter(|j| j["schedule"] == schedule)
            .collect()
    }

    /// Waits until the schedule has made `n` jobs, then checks it stays at `n`.
    fn expect_jobs(&self, schedule: &str, n: usize) -> Vec<Value> {
        wait_for(
            Duration::from_secs(20),
            &format!("{n} jobs of schedule {schedule}"),
            || (self.jobs_of(schedule).len() >= n).then_some(()),
            || format!("{:#?}", self.jobs_of(schedule)),
        );
        std::thread::sleep(Duration::from_millis(1200)); // several scheduler ticks
        let jobs = self.jobs_of(schedule);
        assert_eq!(
            jobs.len(),
            n,
            "schedule {schedule} fired a slot twice: {jobs:#?}"
        );
        jobs
    }

    fn add(&self, name: &str, cron: &str, extra: &[&str]) -> Out {
        self.add_with(name, cron, "", extra)
    }

    /// `add` with `top` TOML keys in the job file.
    fn add_with(&self, name: &str, cron: &str, top: &str, extra: &[&str]) -> Out {
        let file = self.job_file_with(&format!("suite-{name}"), top);
        let mut args = vec![
            "schedule",
            "add",
            name,
            "--cron",
            cron,
            "-f",
            file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.f.ctl(&args)
    }
}

#[test]
fn a_schedule_fires_once_per_slot() {
    let mut t = Timed::new(DAY + HOUR + 59 * MIN); // 01:59
    t.f.add_agent("a1", &[], &[]);
    let out = t.add("nightly", "0 2 * * *", &[]);
    assert_eq!(out.code, 0, "{out}");
    let list = t.f.ctl(&["schedule", "list", "--json"]).json();
    assert_eq!(list[0]["next_ms"], DAY + 2 * HOUR, "{list:#}");
    assert!(t.jobs_of("nightly").is_empty());

    t.set(DAY + 2 * HOUR + 1_000); // 02:00:01
    let jobs = t.expect_jobs("nightly", 1);
    assert_eq!(jobs[0]["slot_ms"], DAY + 2 * HOUR);
    t.f.wait_terminal(jobs[0]["id"].as_str().unwrap());

    t.set(DAY + 2 * HOUR + 30 * MIN); // later the same night: nothing new
    t.expect_jobs("nightly", 1);
    t.set(DAY + 24 * HOUR + 2 * HOUR + 5_000); // the next night
    let jobs = t.expect_jobs("nightly", 2);
    let show = t.f.ctl(&["schedule", "show", "nightly", "--json"]).json();
    assert_eq!(show["last_job_id"], jobs[0]["id"], "{show:#}");
}

#[test]
fn a_restart_across_a_slot_fires_it_once_not_zero_not_twice() {
    let mut t = Timed::new(DAY + HOUR); // 01:00
    let out = t.add("hourly", "0 * * * *", &["--overlap", "queue"]);
    assert_eq!(out.code, 0, "{out}");
    t.f.sched.kill9();
    // Down from 01:00 to 04:30: slots 02:00, 03:00 and 04:00 were missed.
    t.set(DAY + 4 * HOUR + 30 * MIN);
    t.f.sched.restart();
    let jobs = t.expect_jobs("hourly", 1);
    assert_eq!(
        jobs[0]["slot_ms"],
        DAY + 4 * HOUR,
        "the latest missed slot: {jobs:#?}"
    );
    // Another restart does not fire it again.
    t.f.sched.restart();
    t.expect_jobs("hourly", 1);
}

#[test]
fn misfire_skip_does_not_fire_missed_slots() {
    let mut t = Timed::new(DAY + HOUR);
    let out = t.add(
        "skipper",
        "0 * * * *",
        &["--misfire", "skip", "--overlap", "queue"],
    );
    assert_eq!(out.code, 0, "{out}");
    t.f.sched.kill9();
    t.set(DAY + 4 * HOUR + 30 * MIN);
    t.f.sched.restart();
    t.expect_jobs("skipper", 0);
    t.set(DAY + 5 * HOUR + 1_000); // the next slot, on time, fires
    let jobs = t.expect_jobs("skipper", 1);
    assert_eq!(jobs[0]["slot_ms"], DAY + 5 * HOUR);
}

#[test]
fn overlap_skip_and_queue() {
    let t = Timed::new(DAY + 1_000);
    // No agent: each job stays queued, i.e. still going at the next slot
    // (its expiry, an hour, is past the next slot).
    let hour = "expire_after = \"1h\"\n";
    assert_eq!(t.add_with("skip", "*/5 * * * *", hour, &[]).code, 0);
    assert_eq!(
        t.add_with("queue", "*/5 * * * *", hour, &["--overlap", "queue"])
            .code,
        0
    );
    // Without an expiry a run expires at the next slot, which then fires.
    assert_eq!(t.add("period", "*/5 * * * *", &[]).code, 0);
    t.set(DAY + 5 * MIN + 1_000);
    t.expect_jobs("skip", 1);
    t.expect_jobs("queue", 1);
    t.expect_jobs("period", 1);
    t.set(DAY + 10 * MIN + 1_000);
    t.expect_jobs("skip", 1);
    t.expect_jobs("queue", 2);
    let period = t.expect_jobs("period", 2);
    let first = t.f.show(period[1]["id"].as_str().unwrap());
    assert_eq!(first["state"], "no_resource", "{first:#}");
}

#[test]
fn bad_schedules_are_refused_with_the_field_named() {
    let t = Timed::new(DAY);
    let out = t.add("bad", "61 2 * * *", &[]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("minute"), "{out}");
    let out = t.add("bad", "0 2 * *", &[]);
    assert_eq!(out.code, 2, "{out}");
    let out = t.add("bad", "0 2 * * funday", &[]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("day-of-week"), "{out}");
    let out = t.add("bad", "@sometimes", &[]);
    assert_eq!(out.code, 2, "{out}");
    let out = t.add("bad", "@daily", &["--tz", "Mars/Olympus"]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("Mars/Olympus"), "{out}");
    let list = t.f.ctl(&["schedule", "list", "--json"]).json();
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(0),
        "nothing was added: {list:#}"
    );
}

#[test]
fn time_zones_pause_resume_run_now_and_delete() {
    let t = Timed::new(DAY); // 00:00 UTC = 08:00 in Shanghai
    let out = t.add("sh", "0 2 * * *", &["--tz", "Asia/Shanghai"]);
    assert_eq!(out.code, 0, "{out}");
    let s = t.f.ctl(&["schedule", "show", "sh", "--json"]).json();
    // 02:00 Shanghai (UTC+8) on the 24th = 18:00 UTC on the 23rd.
    assert_eq!(s["next_ms"], DAY + 18 * HOUR, "{s:#}");
    assert_eq!(t.f.ctl(&["schedule", "pause", "sh"]).code, 0);
    t.set(DAY + 18 * HOUR + 1_000);
    t.expect_jobs("sh", 0);
    let out = t.f.ctl(&["schedule", "run-now", "sh"]);
    assert_eq!(out.code, 0, "{out}");
    t.expect_jobs("sh", 1);
    assert_eq!(t.f.ctl(&["schedule", "delete", "sh"]).code, 0);
    let out = t.f.ctl(&["schedule", "show", "sh"]);
    assert_eq!(out.code, 2, "{out}");
}

#[test]
fn a_dedup_key_returns_the_existing_job_within_the_window() {
    let t = Timed::new(DAY);
    let file = t.job_file("dedup");
    let submit = |key: &str| {
        let out =
            t.f.ctl(&["submit", "-f", file.to_str().unwrap(), "--dedup-key", key]);
        assert_eq!(out.code, 0, "{out}");
        (out.stdout.trim().to_string(), out.stderr)
    };
    let (first, _) = submit("nightly-2026-11-23");
    let (again, note) = submit("nightly-2026-11-23");
    assert_eq!(first, again, "same key, same job");
    assert!(note.contains("already"), "{note}");
    let (other, _) = submit("nightly-2026-11-24");
    assert_ne!(other, first);
    assert_eq!(t.f.list().len(), 2);
    // Past the 24h retention window the key makes a new job.
    t.set(DAY + 25 * HOUR);
    std::thread::sleep(Duration::from_millis(500));
    let (later, _) = submit("nightly-2026-11-23");
    assert_ne!(later, first);
}
