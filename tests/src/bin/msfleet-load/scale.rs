//! `scale`: N simulated agents connected and heartbeating (every 10 s by
//! default), nothing else: msched's RSS and CPU per figure of N (10,000 and
//! 100,000 by default), and what the load generator itself burned.

use crate::simagent::{self, FleetStats};
use crate::{Args, Sched};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub async fn run(args: &Args, bin: &PathBuf) -> Result<()> {
    let figures: Vec<usize> = args
        .scale_agents
        .split(',')
        .map(|n| n.trim().replace('_', "").parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--scale-agents {}: {e}", args.scale_agents))?;
    for n in figures {
        one(args, bin, n).await?;
    }
    Ok(())
}

async fn one(args: &Args, bin: &PathBuf, n: usize) -> Result<()> {
    let per = crate::agents_per_connection(n, args.per_connection)?;
    let mut flags = [
        "--heartbeat-interval",
        &args.scale_heartbeat,
        "--lease-timeout",
        "60s",
        "--http-listen",
        "off",
    ]
    .map(str::to_string)
    .to_vec();
    let certs = tempfile::tempdir()?;
    let tls = args
        .scale_tls
        .then(|| crate::tls::make(certs.path()))
        .transpose()?;
    if let Some(t) = &tls {
        flags.extend(t.flags.iter().cloned());
    }
    let sched = Sched::start_with(bin, flags)?;
    let (rss0, _) = sched.usage();
    let stats = FleetStats::new(n);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let client_tls = tls.map(|t| t.client);
    simagent::start_fleet(
        &sched,
        n,
        "scale",
        args.sources,
        per,
        client_tls,
        stats.clone(),
        stop,
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while stats.registered_after(0) < n {
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} agents registered",
                stats.registered_after(0)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connected_s = t.elapsed().as_secs_f64();
    // Let the registrations' writes and the first heartbeats settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ended0 = stats
        .sessions_ended
        .load(std::sync::atomic::Ordering::Relaxed);
    let (_, cpu0) = sched.usage();
    let self0 = crate::self_cpu_s();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.scale_seconds)).await;
    let (rss, cpu1) = sched.usage();
    let secs = t.elapsed().as_secs_f64();
    let self_cpu = crate::self_cpu_s() - self0;
    let ended = stats
        .sessions_ended
        .load(std::sync::atomic::Ordering::Relaxed)
        - ended0;
    let _ = stop_tx.send(true);
    let conn = if args.scale_tls {
        "TLS HTTP/2 connection"
    } else {
        "HTTP/2 connection"
    };
    let how = if per == 1 {
        format!("one {conn} each, from {} source addresses", args.sources)
    } else {
        format!(
            "{per} per {conn} ({} connections: the open-files limit allows no more)",
            n.div_ceil(per)
        )
    };
    println!(
        "== scale: {n} simulated agents, {how}, heartbeat every {}",
        args.scale_heartbeat
    );
    println!("  all registered in {connected_s:.1}s");
    println!(
        "  msched RSS {:.1} MiB (empty: {:.1} MiB) = {:.1} KiB per agent",
        rss as f64 / 1048576.0,
        rss0 as f64 / 1048576.0,
        rss.saturating_sub(rss0) as f64 / 1024.0 / n as f64
    );
    println!(
        "  msched CPU {:.1}% of one core over {secs:.0}s",
        100.0 * (cpu1 - cpu0) / secs
    );
    println!(
        "  load generator CPU {:.1}% of one core",
        100.0 * self_cpu / secs
    );
    println!("  sessions lost while measuring: {ended}");
    if ended > 0 {
        bail!("{ended} agent sessions ended while the fleet was idle");
    }
    Ok(())
}
