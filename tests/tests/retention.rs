//! `msched --retain`: a finished job older than the window is deleted, and
//! asking for it says so (NotFound, exit 2, one line naming --retain), while
//! live jobs stay.

mod common;

use common::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn set_clock(path: &std::path::Path, ms: i64) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, ms.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A clock file set to now: its directory (kept while the test runs), its
/// path and the time it says.
fn clock_at_now() -> (tempfile::TempDir, std::path::PathBuf, i64) {
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    set_clock(&clock, now);
    (dir, clock, now)
}

/// msched's flags for reading time from `clock` and retaining an hour.
fn retain_an_hour_by(clock: &std::path::Path) -> Vec<String> {
    vec![
        "--clock-file".into(),
        clock.display().to_string(),
        "--retain".into(),
        "1h".into(),
    ]
}

#[test]
fn a_retained_away_job_answers_not_found_naming_the_retention() {
    let (_clock_dir, clock, now) = clock_at_now();
    let f = Fleet::with_opts(SchedOpts {
        extra: retain_an_hour_by(&clock),
        ..Default::default()
    });
    let old = f.submit(&["pytest", "--dir", "/srv/x"]);
    let cancelled = f.ctl(&["cancel", &old]);
    assert_eq!(cancelled.code, 0, "{cancelled}");
    let live = f.submit(&["pytest", "--dir", "/srv/x"]);
    set_clock(&clock, now + 2 * 3_600_000);
    let gone = wait_for(
        Duration::from_secs(10),
        "the cancelled job to be retired",
        || {
            let out = f.ctl(&["show", &old]);
            (out.code != 0).then_some(out)
        },
        || format!("{}", f.ctl(&["show", &old])),
    );
    assert_eq!(gone.code, 2, "{gone}");
    assert_eq!(
        gone.stderr.trim(),
        format!(
            "msctl: no job with id '{old}': it finished more than 1h ago and was deleted (msched --retain)"
        ),
        "{gone}"
    );
    let watch = f.ctl(&["watch", &old]);
    assert_eq!(watch.code, 2, "{watch}");
    assert!(watch.stderr.contains("msched --retain"), "{watch}");
    assert_eq!(f.show(&live)["state"], "queued", "a live job stays");
    let ids: Vec<String> = f
        .list()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec![live]);
    // Bad --retain values are refused at start with what to use.
    let bad = std::process::Command::new(bin("msched"))
        .args(["--retain", "soon"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("use a duration of at least 1m (e.g. 30d, 12h) or off"),
        "{err}"
    );
}

/// `msfleet_store_jobs_archived_total` from msched's `/metrics` (0 before the first).
fn archived(f: &Fleet) -> u64 {
    let (code, body) = msfleet_tests::http_get(&f.sched.http_addr, "/metrics", None).unwrap();
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix("msfleet_store_jobs_archived_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// What a user sees of finished jobs: each one's `show`, its `watch`, a
/// test's history and the job list.
fn seen(f: &Fleet, ids: &[String]) -> Vec<String> {
    let mut all: Vec<String> = ids
        .iter()
        .flat_map(|id| {
            let show = f.ctl(&["show", id, "--json"]);
            assert_eq!(show.code, 0, "{show}");
            // Its exit code is the job's result.
            let watch = f.ctl(&["watch", id]);
            [show.stdout, format!("{}\n{}", watch.code, watch.stdout)]
        })
        .collect();
    let history = f.ctl(&["test", "history", "test_a.py::test_fails", "--json"]);
    assert_eq!(history.code, 0, "{history}");
    all.push(history.stdout);
    all.push(
        f.list()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    all
}

/// A minute after their end finished jobs move into the store's archive
/// chunks: after a kill -9 (nothing of them in memory) they show, watch,
/// list and keep their test history exactly as before, and `--retain`
/// still deletes them on time.
#[test]
fn archived_jobs_read_the_same_after_a_kill_9_and_are_retired_on_time() {
    let (_clock_dir, clock, now) = clock_at_now();
    let mut f = Fleet::with_opts(SchedOpts {
        extra: retain_an_hour_by(&clock),
        // The clock jumps by hours: leases must not expire meanwhile.
        lease_timeout: "10h".into(),
        ..Default::default()
    });
    f.add_agent("a1", &[], &[]);
    let suite = f.write_suite(
        "arch",
        &[(
            "test_a.py",
            "def test_passes():\n    pass\n\ndef test_fails():\n    assert False\n",
        )],
    );
    let dir = suite.to_str().unwrap();
    let ids: Vec<String> = (0..3)
        .map(|_| {
            let id = f.submit(&["pytest", "--dir", dir]);
            f.wait_terminal(&id);
            id
        })
        .collect();
    let before = seen(&f, &ids);
    assert_eq!(f.show(&ids[0])["state"], "failed", "{}", before[0]);
    assert_eq!(archived(&f), 0, "not before a minute has passed");
    set_clock(&clock, now + 2 * 60_000);
    wait_for(
        Duration::from_secs(10),
        "the finished jobs to be archived",
        || (archived(&f) >= 3).then_some(()),
        || format!("archived {}", archived(&f)),
    );
    f.sched.restart();
    assert_eq!(seen(&f, &ids), before, "archived jobs read back the same");
    set_clock(&clock, now + 2 * 3_600_000);
    for id in &ids {
        let gone = wait_for(
            Duration::from_secs(10),
            "the archived job to be retired",
            || {
                let out = f.ctl(&["show", id]);
                (out.code != 0).then_some(out)
            },
            || format!("{}", f.ctl(&["show", id])),
        );
        assert!(gone.stderr.contains("msched --retain"), "{gone}");
    }
    f.sched.restart();
    assert!(f.list().is_empty(), "{:?}", f.list());
}
