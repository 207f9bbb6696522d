//! Measures the store's group commit: W writer threads each apply a small
//! batch and wait for `after_durable`, N times. Prints commit latency
//! percentiles and commits/s.
//!
//!     cargo run --release -p msched --example store_flush -- [WRITERS] [COMMITS_PER_WRITER]

use msched::store::{Store, WriteSet};
use msfleet_proto::{Job, JobEvent};
use std::sync::mpsc;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let writers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let per: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let dir = std::env::temp_dir().join(format!("msched-flush-{}", std::process::id()));
    let store = Store::open(&dir, 64 << 20).expect("open store");
    let start = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(per as usize);
                for i in 0..per {
                    let id = (w as u64) << 32 | i;
                    let mut ws = WriteSet::default();
                    ws.put_job(
                        id,
                        &Job {
                            id: id.to_string(),
                            ..Default::default()
                        },
                    );
                    ws.put_event(
                        id,
                        JobEvent {
                            seq: 1,
                            ..Default::default()
                        },
                    );
                    let t = Instant::now();
                    store.apply(ws).expect("apply");
                    let (tx, rx) = mpsc::channel();
                    store.after_durable(Box::new(move |ok| {
                        let _ = tx.send(ok);
                    }));
                    assert!(rx.recv().unwrap_or(false));
                    lat.push(t.elapsed().as_micros() as u64);
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    println!(
        "{writers} writers x {per}: {:.0} durable commits/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len() as f64 / secs,
        q(0.5),
        q(0.99),
        q(1.0)
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
