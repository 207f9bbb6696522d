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

#[test]
fn a_retained_away_job_answers_not_found_naming_the_retention() {
    let clock_dir = tempfile::tempdir().unwrap();
    let clock = clock_dir.path().join("clock");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    set_clock(&clock, now);
    let f = Fleet::with_opts(SchedOpts {
        extra: vec![
            "--clock-file".into(),
            clock.display().to_string(),
            "--retain".into(),
            "1h".into(),
        ],
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
