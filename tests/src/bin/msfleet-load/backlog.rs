//! `backlog`: dispatch latency with a growing queue. Jobs no agent here can
//! run (`label.pool=="elsewhere"`, accepted with allow_unmatched) pile up to
//! 100, 1,000, 10,000 and 100,000 pending; at each level probe jobs the one
//! simulated agent can run are submitted one at a time, and the time from
//! submit to the agent receiving the assignment is measured. Dispatch that
//! walked the queue would pay for every pending job on every pass; flat is
//! the goal. Prints one figure per level and the ratio 100k / 100.

use super::*;

const LEVELS: [usize; 4] = [100, 1_000, 10_000, 100_000];

fn unrunnable() -> pb::JobSpec {
    let mut s = spec(None);
    s.requirements = "label.pool==\"elsewhere\"".into();
    s.allow_unmatched = true;
    s
}

pub async fn backlog(args: &Args, bin: &PathBuf) -> Result<()> {
    let sched = Sched::start(bin, &args.heartbeat, None, &args.metrics)?;
    let obs = Arc::new(Observed::default());
    *obs.latency.lock().await = Some(Histogram::new(3)?);
    let stop = Arc::new(tokio::sync::Notify::new());
    fleet(&sched, 1, "backlog", obs.clone(), stop.clone()).await?;
    let ch = channel(&sched.addr).await?;
    let mut fc = fleet_client(ch.clone(), &sched.admin)?;
    wait_agents(&mut fc, 1).await?;
    let probes = args.probes.max(1);
    println!("== backlog: dispatch latency (submit -> assignment received) with N jobs pending, {probes} probes each");
    let mut pending = 0usize;
    let mut medians = Vec::new();
    for level in LEVELS {
        // Fill up to `level` pending jobs, from concurrent submitters.
        let next = Arc::new(AtomicU64::new(pending as u64));
        let mut fill = Vec::new();
        for _ in 0..args.submitters {
            let mut c = fleet_client(ch.clone(), &sched.admin)?;
            let next = next.clone();
            fill.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < level as u64 {
                    c.submit(pb::SubmitRequest {
                        spec: Some(unrunnable()),
                    })
                    .await?;
                }
                Ok::<_, tonic::Status>(())
            }));
        }
        for h in fill {
            h.await??;
        }
        pending = level;
        let queued = fc
            .list_queues(pb::ListQueuesRequest {})
            .await?
            .into_inner()
            .queues
            .iter()
            .map(|q| q.pending)
            .sum::<u64>();
        if queued < level as u64 {
            bail!("{queued} jobs pending, expected {level}");
        }
        *obs.latency.lock().await = Some(Histogram::new(3)?);
        for _ in 0..probes {
            let done = obs.finished.load(Ordering::Relaxed);
            fc.submit(pb::SubmitRequest {
                spec: Some(spec(Some(now_ns()))),
            })
            .await?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while obs.finished.load(Ordering::Relaxed) == done {
                if Instant::now() > deadline {
                    bail!("a probe job was not run within 30 s with {level} pending");
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        let h = obs
            .latency
            .lock()
            .await
            .take()
            .unwrap_or_else(|| Histogram::new(3).expect("histogram"));
        let p50 = h.value_at_quantile(0.5) as f64 / 1000.0;
        medians.push(p50);
        println!(
            "  backlog {level} pending: dispatch latency p50 {p50:.2} ms, p99 {:.2} ms (n={})",
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.len()
        );
    }
    stop.notify_waiters();
    if let (Some(first), Some(last)) = (medians.first(), medians.last()) {
        println!(
            "  backlog ratio p50 at 100,000 / at 100 pending: {:.2}",
            last / first.max(0.001)
        );
    }
    Ok(())
}
