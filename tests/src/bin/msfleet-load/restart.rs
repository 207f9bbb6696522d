//! `restart`: N simulated agents connected (default 10,000), M of them running
//! an attempt (default 1,000); kill -9 msched and start it again on the same
//! data dir and port. Measured: when msched is ready again, when every agent
//! re-registered and every attempt was resumed (goal <= 15 s), how many
//! connections the fleet made and the most in one second (the agents use
//! msagent's jittered backoff, `msfleet_proto::backoff`). Fails if any
//! attempt was declared lost or requeued, or an agent told to abandon one.

use crate::simagent::{self, FleetStats};
use crate::{Args, Sched};
use anyhow::{bail, Result};
use msfleet_proto as pb;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub async fn run(args: &Args, bin: &PathBuf) -> Result<()> {
    let n = args.restart_agents;
    let running = args.restart_running.min(n);
    let per = crate::agents_per_connection(n, args.per_connection)?;
    // msched's own defaults for heartbeat, lease timeout and restart grace.
    let flags = ["--http-listen", "off"].map(str::to_string).to_vec();
    let mut sched = Sched::start_with(bin, flags)?;
    let stats = FleetStats::new(n);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    simagent::start_fleet(
        &sched,
        n,
        "rs",
        args.sources,
        per,
        None,
        stats.clone(),
        stop,
    )
    .await?;
    wait("agents registered", Duration::from_secs(300), || {
        stats.registered_after(0) >= n
    })
    .await?;
    let fc = crate::fleet_client(crate::channel(&sched.addr).await?, &sched.admin)?;
    let ids = submit(&fc, running).await?;
    wait("attempts running", Duration::from_secs(120), || {
        stats.running.load(Ordering::Relaxed) >= running as u64
    })
    .await?;
    // Their Started updates durable before the kill.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let killed_ns = stats.since_t0_ns();
    let killed = Instant::now();
    let killed_at = stats.t0.elapsed();
    sched.kill9_and_restart()?;
    let ready_s = killed.elapsed().as_secs_f64();
    let mut all_registered = None;
    let mut all_resumed = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while all_registered.is_none() || all_resumed.is_none() {
        if Instant::now() > deadline {
            bail!(
                "after 120 s only {} of {n} agents re-registered and {} of {running} attempts resumed",
                stats.registered_after(killed_ns),
                stats.resumed_after(killed_ns)
            );
        }
        if all_registered.is_none() && stats.registered_after(killed_ns) >= n {
            all_registered = Some(killed.elapsed().as_secs_f64());
        }
        if all_resumed.is_none() && stats.resumed_after(killed_ns) >= running {
            all_resumed = Some(killed.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (connects, peak) = stats.connects_since(killed_at);
    let fc = crate::fleet_client(crate::channel(&sched.addr).await?, &sched.admin)?;
    let lost = not_running_first_attempt(&fc, &ids).await?;
    let abandoned = stats.abandoned.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let how = if per == 1 {
        format!(
            "one connection each, from {} source addresses",
            args.sources
        )
    } else {
        format!("{per} per connection")
    };
    println!(
        "== restart: kill -9 msched under {n} simulated agents ({how}), {running} running attempts"
    );
    println!("  msched ready again {ready_s:.2}s after the kill");
    println!(
        "  every agent re-registered {:.2}s after the kill",
        all_registered.unwrap_or_default()
    );
    println!(
        "  every attempt resumed {:.2}s after the kill (goal <= 15 s)",
        all_resumed.unwrap_or_default()
    );
    println!("  reconnects: {connects} connection attempts, at most {peak} in one second");
    println!("  attempts lost or requeued: {lost}, told to abandon: {abandoned}");
    if lost > 0 || abandoned > 0 {
        bail!("{lost} attempts were lost or requeued and {abandoned} abandoned across the restart");
    }
    Ok(())
}

async fn wait(what: &str, limit: Duration, done: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn submit(fc: &crate::Fc, jobs: usize) -> Result<Vec<String>> {
    use futures::StreamExt;
    futures::stream::iter(0..jobs)
        .map(|_| {
            let mut fc = fc.clone();
            async move {
                let job = fc
                    .submit(pb::SubmitRequest {
                        spec: Some(crate::spec(None)),
                    })
                    .await?
                    .into_inner();
                Ok(job.id)
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<Result<String>>>()
        .await
        .into_iter()
        .collect()
}

/// Jobs of `ids` that are not running their first attempt any more.
async fn not_running_first_attempt(fc: &crate::Fc, ids: &[String]) -> Result<usize> {
    let mut lost = 0;
    for id in ids {
        let job = fc
            .clone()
            .get_job(pb::GetJobRequest { id: id.clone() })
            .await?
            .into_inner();
        if job.state() != pb::JobState::Running || job.attempts != 1 {
            eprintln!(
                "job {id}: {} after {} attempts",
                job.state().label(),
                job.attempts
            );
            lost += 1;
        }
    }
    Ok(lost)
}
