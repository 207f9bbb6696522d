//! `ingest`: simulated agents streaming test results over the real AgentLink
//! protocol, each into its own job. Measures results/s made durable (from the
//! first result sent to the last result's Ack: acks leave only after the
//! flush), msched CPU per result, and the store's bytes per result. Runs the
//! same load twice on fresh schedulers, interleaved: one result per update
//! (how agents sent results before batches) and `--ingest-batch` results per
//! update, and prints the ratio.

use super::*;
use std::collections::BTreeMap;

#[derive(clap::Args, Debug)]
pub struct IngestArgs {
    /// Test results per run of the ingest scenario, over all its agents.
    #[arg(long, default_value_t = 200_000)]
    pub ingest_results: usize,
    /// Results per update in the batched run (the agent's --result-batch-max);
    /// 1 runs the single-result run only.
    #[arg(long, default_value_t = 512)]
    pub ingest_batch: usize,
    /// Simulated agents streaming at once (one job each).
    #[arg(long, default_value_t = 8)]
    pub ingest_agents: usize,
    /// Updates an agent keeps unacknowledged before it waits for an Ack.
    #[arg(long, default_value_t = 64)]
    pub ingest_window: usize,
    /// Pairs of runs (single, batched), interleaved.
    #[arg(long, default_value_t = 1)]
    pub ingest_rounds: usize,
}

/// What one run measured.
struct Run {
    results: u64,
    seconds: f64,
    cpu_s: f64,
    store_bytes: u64,
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The `i`th result of an agent's suite: node ids of a real-looking layout.
fn result(agent: usize, i: usize) -> pb::TestResult {
    let outcome = match i % 50 {
        0 => "failed",
        7 => "skipped",
        _ => "passed",
    };
    pb::TestResult {
        nodeid: format!(
            "tests/unit/test_module_{:03}.py::TestGroup{}::test_case_{i}[param-{}]",
            i / 200,
            i % 7,
            (i + agent) % 13
        ),
        when: "call".into(),
        outcome: outcome.into(),
        duration_s: 0.001 * (i % 97) as f64,
        longrepr: if outcome == "failed" {
            format!("AssertionError: assert {i} == {}", i + 1)
        } else {
            String::new()
        },
        markers: Vec::new(),
    }
}

/// One simulated agent: registers, takes its job, sends Started, then its
/// `results` in updates of `batch` (one `TestResult` each when `batch` is 1,
/// as older agents did), at most `window` unacknowledged, then Finished.
/// Returns (first result sent, last Ack received) in ns.
async fn stream_agent(
    ch: Channel,
    index: usize,
    secret: String,
    results: usize,
    batch: usize,
    window: usize,
) -> Result<(u64, u64)> {
    let name = format!("ing-{index:04}");
    let mut client = AgentLinkClient::with_interceptor(ch, Bearer::new(Some(&secret))?)
        .max_decoding_message_size(msfleet_proto::MAX_MESSAGE)
        .max_encoding_message_size(msfleet_proto::MAX_MESSAGE);
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(window + 8);
    tx.send(crate::register(
        &name,
        &format!("{name}-{}", now_ns()),
        vec![],
    ))
    .await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    let send =
        |attempt: &Option<pb::AttemptRef>, seq: u64, kind: task_update::Kind| pb::AgentMessage {
            msg: Some(agent_message::Msg::Update(pb::TaskUpdate {
                attempt: attempt.clone(),
                seq,
                kind: Some(kind),
            })),
        };
    let updates = results.div_ceil(batch) as u64;
    let finished_seq = updates + 2;
    let (mut next, mut acked, mut sent_results) = (2u64, 0u64, 0usize);
    let (mut first_ns, mut attempt) = (0u64, None);
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    loop {
        let msg = tokio::select! {
            msg = inbound.message() => msg?,
            _ = heartbeat.tick() => {
                let running = attempt.iter().cloned().collect();
                let hb = pb::Heartbeat { running };
                tx.send(pb::AgentMessage { msg: Some(agent_message::Msg::Heartbeat(hb)) }).await?;
                continue;
            }
        };
        let Some(msg) = msg else {
            bail!("{name}: the scheduler closed the session");
        };
        match msg.msg {
            Some(scheduler_message::Msg::Assign(a)) => {
                attempt = a.attempt.clone();
                tx.send(send(
                    &attempt,
                    1,
                    task_update::Kind::Started(pb::Started {}),
                ))
                .await?;
                first_ns = now_ns();
            }
            Some(scheduler_message::Msg::Ack(ack)) => {
                acked = acked.max(ack.seq);
                if acked >= finished_seq {
                    return Ok((first_ns, now_ns()));
                }
            }
            Some(scheduler_message::Msg::Reject(r)) => bail!("{name}: rejected: {}", r.message),
            _ => continue,
        }
        if attempt.is_none() {
            continue;
        }
        // Keep the window full.
        while next <= updates + 1 && next - acked <= window as u64 {
            let n = batch.min(results - sent_results);
            let kind = if batch == 1 {
                task_update::Kind::Test(result(index, sent_results))
            } else {
                task_update::Kind::Tests(pb::TestResults {
                    results: (sent_results..sent_results + n)
                        .map(|i| result(index, i))
                        .collect(),
                })
            };
            sent_results += n;
            tx.send(send(&attempt, next, kind)).await?;
            next += 1;
        }
        if next == updates + 2 && acked > updates {
            let done = task_update::Kind::Finished(pb::Finished {
                outcome: pb::Outcome::Failed as i32,
                ..Default::default()
            });
            tx.send(send(&attempt, finished_seq, done)).await?;
            next += 1;
        }
    }
}

async fn run_once(args: &Args, bin: &PathBuf, batch: usize) -> Result<Run> {
    let a = &args.ingest;
    let sched = Sched::start(bin, &args.heartbeat, None, &args.metrics)?;
    let ch = channel(&sched.addr).await?;
    let mut admin = fleet_client(ch.clone(), &sched.admin)?;
    let per_agent = a.ingest_results.div_ceil(a.ingest_agents.max(1));
    let mut secrets = Vec::new();
    for i in 0..a.ingest_agents {
        secrets.push(crate::agent_secret(&mut admin, format!("ing-{i:04}")).await?);
    }
    let mut agents = Vec::new();
    for (i, secret) in secrets.into_iter().enumerate() {
        let ch = channel(&sched.addr).await?;
        let window = a.ingest_window.max(1);
        agents.push(tokio::spawn(stream_agent(
            ch, i, secret, per_agent, batch, window,
        )));
    }
    wait_agents(&mut admin, a.ingest_agents).await?;
    let data = sched.dir.path().join("data");
    let bytes0 = dir_bytes(&data);
    let (_, cpu0) = sched.usage();
    // One job pinned to each agent: an agent that finished early takes no
    // second job (it has left).
    for i in 0..a.ingest_agents {
        let mut job = spec(None);
        job.requirements = format!("agent.name==\"ing-{i:04}\"");
        admin.submit(pb::SubmitRequest { spec: Some(job) }).await?;
    }
    let (mut first, mut last) = (u64::MAX, 0u64);
    for h in agents {
        let (f, l) = tokio::time::timeout(Duration::from_secs(600), h)
            .await
            .context("an ingest agent did not finish in 600s")???;
        first = first.min(f);
        last = last.max(l);
    }
    let (_, cpu1) = sched.usage();
    // sled writes its segments lazily: what a restart would find.
    let store_bytes = dir_bytes(&data).saturating_sub(bytes0);
    let results = (per_agent * a.ingest_agents) as u64;
    let jobs = admin
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs;
    let counted: u64 = jobs
        .iter()
        .filter_map(|j| j.tests.as_ref())
        .map(|t| t.total)
        .sum();
    if counted != results {
        bail!("msched counted {counted} results of {results} sent");
    }
    Ok(Run {
        results,
        seconds: (last.saturating_sub(first)) as f64 / 1e9,
        cpu_s: cpu1 - cpu0,
        store_bytes,
    })
}

pub async fn ingest(args: &Args, bin: &PathBuf) -> Result<()> {
    let a = &args.ingest;
    // 1: the single-result run only (what an msched before batches takes).
    let batch = a.ingest_batch.clamp(1, msfleet_proto::MAX_BATCH_RESULTS);
    let sizes: &[usize] = if batch == 1 { &[1] } else { &[1, batch] };
    let mut runs: BTreeMap<usize, Vec<Run>> = BTreeMap::new();
    for _ in 0..a.ingest_rounds.max(1) {
        for &b in sizes {
            runs.entry(b)
                .or_default()
                .push(run_once(args, bin, b).await?);
        }
    }
    println!(
        "== ingest: {} results from {} simulated agents, {} round(s)",
        a.ingest_results,
        a.ingest_agents,
        a.ingest_rounds.max(1)
    );
    let mut rate = BTreeMap::new();
    for (b, rs) in &runs {
        let results: u64 = rs.iter().map(|r| r.results).sum();
        let secs: f64 = rs.iter().map(|r| r.seconds).sum();
        let cpu: f64 = rs.iter().map(|r| r.cpu_s).sum();
        let bytes: u64 = rs.iter().map(|r| r.store_bytes).sum();
        let per_s = results as f64 / secs.max(1e-9);
        rate.insert(*b, (per_s, cpu / results as f64));
        let how = if *b == 1 {
            "1 result per update".to_string()
        } else {
            format!("{b} results per update")
        };
        println!("  {how}: {per_s:.0} results/s durable");
        println!(
            "  {how}: msched CPU per result {:.2} us",
            1e6 * cpu / results as f64
        );
        println!(
            "  {how}: store bytes per result {:.1}",
            bytes as f64 / results as f64
        );
    }
    if let (Some(single), Some(batched)) = (rate.get(&1), rate.get(&batch)) {
        println!(
            "  batched vs single: {:.1}x results/s, {:.1}x less CPU per result",
            batched.0 / single.0,
            single.1 / batched.1.max(1e-12)
        );
    }
    Ok(())
}
