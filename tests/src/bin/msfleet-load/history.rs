//! `history`: msched's restart time and RSS with 0, 100,000 and 1,000,000
//! (`--history-jobs`) finished jobs in its store. The jobs are written
//! straight into a stopped msched's store through its own store library (a
//! job record, its state events, 10 test results and their test-history
//! record, and its finished-index entry, as msched
//! writes them, then archived into chunks of 64 as msched's retention thread
//! does a minute after a job's end), so a million take seconds, not hours of
//! simulated runs. The goal is flat: a start loads only what is live, and
//! sled's own open cost follows the key count. One figure per line.

use super::*;
use msched::retention::ARCHIVE_AFTER_MS;
use msched::store::{Store, WriteSet};

/// Jobs per store batch while generating.
const BATCH: usize = 10_000;
/// Test results per generated job (with their test-history record).
const TESTS: u64 = 10;
/// Plain restarts measured per level.
const RESTARTS: usize = 5;

/// Appends `n` finished jobs after id `from` (ids `from+1 ..= from+n`);
/// returns the seconds spent archiving them.
fn generate(data: &std::path::Path, from: u64, n: usize, archive: bool) -> Result<f64> {
    let store = Store::open(data, 64 << 20).context("opening the stopped msched's store")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut w = WriteSet::default();
    let mut archiving = 0.0;
    for i in 1..=n as u64 {
        let id = from + i;
        // Ended an hour ago or so: past the archive's minute.
        let at = now - 3_600_000 + (i as i64 % 60_000);
        let mut spec = spec(None);
        spec.name = format!("history-{id}");
        spec.queue = "default".into();
        let job = pb::Job {
            id: id.to_string(),
            spec: Some(spec),
            state: pb::JobState::Passed as i32,
            reason: "passed".into(),
            agent: "sim-00001".into(),
            attempts: 1,
            submitted_at_ms: at - 2_000,
            started_at_ms: at - 1_000,
            finished_at_ms: at,
            last_event_seq: 3 + TESTS,
            submitted_by: "history".into(),
            tests: Some(pb::TestCounts {
                total: TESTS,
                passed: TESTS,
                ..Default::default()
            }),
            ..Default::default()
        };
        let state = |state: pb::JobState| {
            Some(pb::job_event::Kind::State(pb::StateChange {
                state: state as i32,
                reason: String::new(),
                agent: "sim-00001".into(),
            }))
        };
        let tests = (0..TESTS).map(|t| {
            Some(pb::job_event::Kind::Test(pb::TestResult {
                nodeid: format!("tests/test_history.py::test_{t}"),
                when: "call".into(),
                outcome: "passed".into(),
                duration_s: 0.01,
                ..Default::default()
            }))
        });
        let kinds = [state(pb::JobState::Queued), state(pb::JobState::Running)]
            .into_iter()
            .chain(tests)
            .chain([state(pb::JobState::Passed)]);
        for (seq, kind) in (1..).zip(kinds) {
            if let Some(pb::job_event::Kind::Test(t)) = &kind {
                w.put_test_run(&t.nodeid, id, seq, "sim", "sim-00001");
            }
            w.put_event(
                id,
                pb::JobEvent {
                    seq,
                    time_ms: at,
                    attempt: 1,
                    kind,
                },
            );
        }
        w.put_job(id, &job);
        w.set_live(id, false);
        w.put_finished(id, at);
        if (i as usize).is_multiple_of(BATCH) {
            store.apply(std::mem::take(&mut w))?;
            let t = Instant::now();
            if archive {
                store.archive_finished(now - ARCHIVE_AFTER_MS, BATCH)?;
            }
            archiving += t.elapsed().as_secs_f64();
        }
    }
    store.apply(w)?;
    let t = Instant::now();
    while archive && store.archive_finished(now - ARCHIVE_AFTER_MS, BATCH)? > 0 {}
    archiving += t.elapsed().as_secs_f64();
    store.flush()?;
    Ok(archiving)
}

/// Starts msched on `data`, and returns (seconds to ready, RSS bytes once
/// ready and settled), then stops it (SIGTERM, so the store closes).
fn restart(bin: &PathBuf, data: &std::path::Path) -> Result<(f64, u64)> {
    let ready = data.with_extension("ready");
    let _ = std::fs::remove_file(&ready);
    let t = Instant::now();
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--ready-file")
        .arg(&ready)
        .args(["--http-listen", "off"])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while std::fs::read_to_string(&ready).map_or(true, |r| r.is_empty()) {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("msched did not become ready within 600 s");
        }
        if let Some(status) = child.try_wait()? {
            bail!("msched exited during its start: {status}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let (rss, _) = crate::proc_usage(&child.id().to_string());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stop = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > stop {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // sled lets go of its lock a moment after the process is gone.
    std::thread::sleep(Duration::from_millis(200));
    Ok((secs, rss))
}

pub async fn history(args: &Args, bin: &PathBuf) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = match &args.history_dir {
        Some(d) => d.join("data"),
        None => dir.path().join("data"),
    };
    if data.exists() {
        bail!(
            "{} exists: give --history-dir a new, empty directory",
            data.display()
        );
    }
    let top = args.history_jobs.max(1);
    let levels: Vec<usize> = [0, top / 10, top]
        .into_iter()
        .filter(|&n| n <= top)
        .collect();
    println!("== history: msched restart time and RSS with N finished jobs in its store");
    // The first start makes the store and the admin token; it is not measured.
    restart(bin, &data)?;
    let mut stored = 0usize;
    let mut figures = Vec::new();
    for level in levels {
        if level > stored {
            let t = Instant::now();
            let archive = !args.history_unarchived;
            let archiving = generate(&data, stored as u64, level - stored, archive)?;
            println!(
                "  history generated {} finished jobs in {:.1} s",
                level - stored,
                t.elapsed().as_secs_f64()
            );
            if archive {
                println!(
                    "  history archived them (as msched's retention thread does) at {:.0} jobs/s",
                    (level - stored) as f64 / archiving.max(1e-9)
                );
            }
            stored = level;
        }
        // The first start after the writes also replays sled's log; the
        // second is a plain restart.
        let (first, _) = restart(bin, &data)?;
        // Plain restarts: the median of a few (the machine is shared).
        let mut runs = (0..RESTARTS)
            .map(|_| restart(bin, &data))
            .collect::<Result<Vec<_>>>()?;
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (secs, rss) = runs[runs.len() / 2];
        println!("  history {level} finished jobs: first start after writing {first:.3} s");
        println!(
            "  history {level} finished jobs: restart {secs:.3} s (median of {RESTARTS}; {:.3} .. {:.3})",
            runs[0].0,
            runs[runs.len() - 1].0
        );
        println!(
            "  history {level} finished jobs: RSS {:.1} MiB",
            rss as f64 / 1048576.0
        );
        figures.push((secs, rss));
    }
    if let (Some(first), Some(last)) = (figures.first(), figures.last()) {
        println!(
            "  history ratio restart at {top} / at 0: {:.2}",
            last.0 / first.0.max(0.001)
        );
        println!(
            "  history ratio RSS at {top} / at 0: {:.2}",
            last.1 as f64 / (first.1.max(1)) as f64
        );
    }
    Ok(())
}
