//! msfleet-load: a load generator for msched over the real protocols.
//!
//! It starts an `msched` (the binary next to this one) on a fresh data dir,
//! connects N simulated agents over the real AgentLink protocol (each answers
//! an assignment with Started + Finished(passed) task updates) and submits
//! trivial jobs through the real Fleet API. Scenarios:
//!
//! - `throughput`: M jobs from C concurrent submitters as fast as possible;
//!   jobs/s from first submit to the last Finished ack (acks are sent only
//!   after the result is durable, so this is durable -> assigned -> durable).
//! - `latency`: a fixed offered rate; submit -> assignment-received latency
//!   (p50/p90/p99/max) measured with the submit time carried in a job label.
//! - `idle`: N agents connected and heartbeating; scheduler RSS and CPU.
//! - `backlog` (`backlog.rs`): dispatch latency with 100 .. 100,000 jobs pending.
//! - `history` (`history.rs`): msched restart time and RSS with 0 .. 1,000,000
//!   finished jobs in its store.
//! - `scale` (`scale.rs`): 10,000 and 100,000 agents, one connection each,
//!   heartbeating every 10 s; msched RSS and CPU per figure.
//! - `restart` (`restart.rs`): kill -9 msched under 10,000 agents (1,000
//!   running): time to full re-registration and resumption, peak reconnects.
//! - `ingest` ([`ingest`]): agents streaming test results; results/s durable,
//!   msched CPU and store bytes per result, one result per update vs batches.
//!
//! Everything is bounded in count and time and talks to loopback only.

mod restart;
mod scale;
mod simagent;
mod tls;

use anyhow::{bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use msfleet_proto as pb;
use msfleet_proto::agent_link_client::AgentLinkClient;
use msfleet_proto::client::Bearer;
use msfleet_proto::fleet_client::FleetClient;
use msfleet_proto::{agent_message, scheduler_message, task_update};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

mod backlog;
mod history;
mod ingest;

#[derive(Parser, Debug)]
#[command(name = "msfleet-load")]
struct Args {
    /// throughput, latency, idle or all (those three); ingest; backlog; history; scale; restart.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Simulated agents for throughput/latency.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Jobs for the throughput scenario.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Concurrent submitters for the throughput scenario.
    #[arg(long, default_value_t = 64)]
    submitters: usize,
    /// Offered rate (jobs/s) for the latency scenario.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of offered load in the latency scenario.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Agents for the idle scenario.
    #[arg(long, default_value_t = 1000)]
    idle_agents: usize,
    /// Seconds the idle scenario measures over.
    #[arg(long, default_value_t = 20)]
    idle_seconds: u64,
    /// Fleet sizes of the scale scenario, comma-separated.
    #[arg(long, default_value = "10000,100000")]
    scale_agents: String,
    /// Heartbeat interval of the scale scenario.
    #[arg(long, default_value = "10s")]
    scale_heartbeat: String,
    /// Seconds the scale scenario measures over (per fleet size).
    #[arg(long, default_value_t = 30)]
    scale_seconds: u64,
    /// The scale scenario over TLS: msched serves a certificate (a new CA's,
    /// made with openssl) and the agents connect with https.
    #[arg(long)]
    scale_tls: bool,
    /// Agents of the restart scenario.
    #[arg(long, default_value_t = 10_000)]
    restart_agents: usize,
    /// Of them, agents running an attempt when msched is killed.
    #[arg(long, default_value_t = 1_000)]
    restart_running: usize,
    /// Simulated agents per HTTP/2 connection in scale/restart (0: one each,
    /// unless the open-files limit forces sharing).
    #[arg(long, default_value_t = 0)]
    per_connection: usize,
    /// Loopback source addresses (127.0.0.1..=N) the scale/restart agents
    /// connect from: each gives ~28,000 ephemeral ports.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=250))]
    sources: u8,
    /// Heartbeat interval given to msched.
    #[arg(long, default_value = "5s")]
    heartbeat: String,
    /// Use this msched binary (default: next to msfleet-load).
    #[arg(long)]
    msched: Option<PathBuf>,
    /// Start an in-process OTLP/gRPC receiver and have msched export its traces to it
    /// (`--otlp-endpoint`), to measure what tracing costs the scheduler.
    #[arg(long)]
    otlp: bool,
    /// `on`: msched serves /metrics (its HTTP listener on a free loopback
    /// port) and the generator scrapes it every second; `off`: no HTTP
    /// listener, no recorder (every metric is a no-op).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    metrics: String,
    /// Probe jobs per level in the backlog scenario.
    #[arg(long, default_value_t = 200)]
    probes: usize,
    /// Finished jobs at the history scenario's largest level.
    #[arg(long, default_value_t = 1_000_000)]
    history_jobs: usize,
    /// Keep the history scenario's store here (a new, empty directory) instead of a temporary one.
    #[arg(long)]
    history_dir: Option<PathBuf>,
    /// Leave the history scenario's jobs in their own keys, as msched before
    /// the archive did (with `--msched OLD`, that msched's figures).
    #[arg(long)]
    history_unarchived: bool,
    #[command(flatten)]
    ingest: ingest::IngestArgs,
}

/// Set once a scenario is over: agent streams breaking after that are expected.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Which scheduler of this process is the current one: a scraper of an
/// earlier one (scenarios that start several in turn) stops.
static GENERATION: AtomicU64 = AtomicU64::new(0);

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A spawned scheduler with its own data dir.
struct Sched {
    child: Child,
    addr: String,
    /// The bootstrap admin token msched wrote on its first start.
    admin: String,
    dir: tempfile::TempDir,
    /// How it was started (binary, flags other than --listen), to start it again.
    bin: PathBuf,
    flags: Vec<String>,
}

type Fc = FleetClient<InterceptedService<Channel, Bearer>>;

/// A Fleet client on `ch` that carries `secret`.
/// Creates an agent token named `name` and returns its secret.
async fn agent_secret(admin: &mut Fc, name: String) -> Result<String> {
    Ok(admin
        .create_token(pb::CreateTokenRequest {
            name,
            role: "agent".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .secret)
}

fn fleet_client(ch: Channel, secret: &str) -> Result<Fc> {
    Ok(
        FleetClient::with_interceptor(ch, Bearer::new(Some(secret))?)
            .max_decoding_message_size(msfleet_proto::MAX_MESSAGE)
            .max_encoding_message_size(msfleet_proto::MAX_MESSAGE),
    )
}

impl Sched {
    fn start(bin: &PathBuf, heartbeat: &str, otlp: Option<&str>, metrics: &str) -> Result<Sched> {
        let mut flags: Vec<String> = otlp
            .iter()
            .flat_map(|url| ["--otlp-endpoint".to_string(), url.to_string()])
            .collect();
        flags.extend(
            ["--heartbeat-interval", heartbeat, "--lease-timeout", "60s"].map(str::to_string),
        );
        flags.push("--http-listen".into());
        flags.push(
            if metrics == "on" {
                "127.0.0.1:0"
            } else {
                "off"
            }
            .into(),
        );
        Sched::start_with(bin, flags)
    }

    /// Starts `bin` on a fresh data dir with `flags` (besides --listen,
    /// --data-dir and --ready-file).
    fn start_with(bin: &PathBuf, flags: Vec<String>) -> Result<Sched> {
        STOPPING.store(false, Ordering::Relaxed);
        GENERATION.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::tempdir()?;
        let child = spawn_msched(bin, &flags, "127.0.0.1:0", dir.path())?;
        let mut sched = Sched {
            child,
            addr: String::new(),
            admin: String::new(),
            dir,
            bin: bin.clone(),
            flags,
        };
        let (addr, http) = sched.wait_ready()?;
        sched.addr = format!("http://{addr}");
        sched.admin = std::fs::read_to_string(sched.dir.path().join("data/admin.token"))
            .context("reading msched's admin token")?
            .trim()
            .to_string();
        if let Some(http) = http {
            scrape_every_second(http);
        }
        Ok(sched)
    }

    /// Waits for the ready file: (gRPC address, HTTP address).
    fn wait_ready(&self) -> Result<(String, Option<String>)> {
        let ready = self.dir.path().join("addr");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(r) = std::fs::read_to_string(&ready)
                .ok()
                .filter(|r| !r.is_empty())
            {
                let addr = r.lines().next().unwrap_or_default().to_string();
                let http = r
                    .lines()
                    .find_map(|l| l.strip_prefix("http "))
                    .map(str::to_string);
                return Ok((addr, http));
            }
            if Instant::now() > deadline {
                bail!("msched did not become ready");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// kill -9, then the same msched again on the same data dir and port;
    /// returns once it is ready (the ready file written again).
    fn kill9_and_restart(&mut self) -> Result<()> {
        self.child.kill().context("kill -9 msched")?;
        self.child.wait()?;
        let _ = std::fs::remove_file(self.dir.path().join("addr"));
        let listen = self.addr.trim_start_matches("http://").to_string();
        self.child = spawn_msched(&self.bin, &self.flags, &listen, self.dir.path())?;
        self.wait_ready()?;
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (RSS bytes, CPU seconds user+sys) from /proc.
    fn usage(&self) -> (u64, f64) {
        proc_usage(&self.pid().to_string())
    }
}

/// A simulated agent's registration: one slot, profile `sim`, label `pool=load`.
fn register(name: &str, instance: &str, resume: Vec<pb::AttemptRef>) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(agent_message::Msg::Register(pb::Register {
            name: name.to_string(),
            instance_id: instance.to_string(),
            capabilities: Some(pb::Capabilities {
                slots: 1,
                profile: "sim".into(),
                labels: [("pool".to_string(), "load".to_string())].into(),
                ..Default::default()
            }),
            resume,
        })),
    }
}

/// (RSS bytes, CPU seconds user+sys) of process `pid` ("self" for this one).
fn proc_usage(pid: &str) -> (u64, f64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            let ut: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some((ut + st) / ticks)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}

/// CPU seconds this load generator used so far.
fn self_cpu_s() -> f64 {
    proc_usage("self").1
}

/// File descriptors kept free of agent connections (msched's store, listeners, ...).
const FD_RESERVE: u64 = 1024;

/// How many simulated agents share one HTTP/2 connection: `asked` if given
/// (and it fits), else 1 where the open-files limit allows one connection
/// per agent (in this process and in msched), else the fewest that fit.
fn agents_per_connection(agents: usize, asked: usize) -> Result<usize> {
    let limit = msfleet_proto::open_files::limit()?.soft;
    let room = limit.saturating_sub(FD_RESERVE).max(1) as usize;
    let per = match asked {
        0 => agents.div_ceil(room).max(1),
        n => n,
    };
    if agents.div_ceil(per) > room {
        bail!(
            "{agents} agents at {per} per connection need {} connections, but the open-files \
             limit is {limit}: raise it (ulimit -Hn) or pass a larger --per-connection",
            agents.div_ceil(per)
        );
    }
    if per > 1 {
        eprintln!(
            "msfleet-load: the open-files limit ({limit}) allows {room} connections: \
             {per} simulated agents share each"
        );
    }
    Ok(per)
}

fn spawn_msched(
    bin: &PathBuf,
    flags: &[String],
    listen: &str,
    dir: &std::path::Path,
) -> Result<Child> {
    Command::new(bin)
        .args(flags)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .args(["--listen", listen, "--data-dir"])
        .arg(dir.join("data"))
        .arg("--ready-file")
        .arg(dir.join("addr"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// Scrapes msched's `/metrics` once a second (as a busy Prometheus would)
/// until the scenario is over, so `--metrics on` counts rendering too.
fn scrape_every_second(http: String) {
    std::thread::spawn(move || {
        let generation = GENERATION.load(Ordering::Relaxed);
        while !STOPPING.load(Ordering::Relaxed) && GENERATION.load(Ordering::Relaxed) == generation
        {
            match msfleet_tests::http_get(&http, "/metrics", None) {
                Ok((200, _)) => {}
                Ok((code, body)) => eprintln!("msfleet-load: /metrics answered {code}: {body}"),
                Err(e) => eprintln!("msfleet-load: scraping /metrics: {e}"),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

impl Drop for Sched {
    fn drop(&mut self) {
        STOPPING.store(true, Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the simulated agents observed.
#[derive(Default)]
struct Observed {
    finished: AtomicU64,
    assigned: AtomicU64,
    last_finish_ns: AtomicU64,
    latency: Mutex<Option<Histogram<u64>>>,
}

async fn channel(addr: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(addr.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

/// One simulated agent on `ch`: registers, heartbeats, runs every assignment instantly.
async fn sim_agent(
    ch: Channel,
    name: String,
    secret: String,
    obs: Arc<Observed>,
    stop: Arc<tokio::sync::Notify>,
) -> Result<()> {
    let mut client = AgentLinkClient::with_interceptor(ch, Bearer::new(Some(&secret))?)
        .max_decoding_message_size(msfleet_proto::MAX_MESSAGE)
        .max_encoding_message_size(msfleet_proto::MAX_MESSAGE);
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(256);
    tx.send(register(&name, &format!("{name}-{}", now_ns()), vec![]))
        .await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    let mut hb_every = Duration::from_secs(5);
    let mut heartbeat = tokio::time::interval(hb_every);
    loop {
        tokio::select! {
            _ = stop.notified() => return Ok(()),
            _ = heartbeat.tick() => {
                tx.send(pb::AgentMessage { msg: Some(agent_message::Msg::Heartbeat(pb::Heartbeat { running: vec![] })) }).await?;
            }
            msg = inbound.message() => {
                let Some(msg) = msg? else { return Ok(()) };
                match msg.msg {
                    Some(scheduler_message::Msg::Registered(r)) => {
                        let every = Duration::from_millis(r.heartbeat_interval_ms.max(100));
                        if every != hb_every {
                            hb_every = every;
                            heartbeat = tokio::time::interval(hb_every);
                        }
                    }
                    Some(scheduler_message::Msg::Assign(a)) => {
                        obs.assigned.fetch_add(1, Ordering::Relaxed);
                        if let Some(t0) = a.spec.as_ref().and_then(|s| s.labels.get("t0")).and_then(|v| v.parse::<u64>().ok()) {
                            let us = now_ns().saturating_sub(t0) / 1000;
                            if let Some(h) = obs.latency.lock().await.as_mut() {
                                let _ = h.record(us.max(1));
                            }
                        }
                        let r = a.attempt.clone();
                        for (seq, kind) in [
                            (1, task_update::Kind::Started(pb::Started {})),
                            (2, task_update::Kind::Finished(pb::Finished { outcome: pb::Outcome::Passed as i32, reason: String::new(), exit_code: 0, ..Default::default() })),
                        ] {
                            tx.send(pb::AgentMessage { msg: Some(agent_message::Msg::Update(pb::TaskUpdate { attempt: r.clone(), seq, kind: Some(kind) })) }).await?;
                        }
                    }
                    Some(scheduler_message::Msg::Ack(ack)) if ack.seq >= 2 => {
                        obs.finished.fetch_add(1, Ordering::Relaxed);
                        obs.last_finish_ns.store(now_ns(), Ordering::Relaxed);
                    }
                    Some(scheduler_message::Msg::Reject(r)) => {
                        eprintln!("{name}: rejected: {}", r.message);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Makes each agent's join token, then connects `n` agents, 50 per HTTP/2 connection.
async fn fleet(
    sched: &Sched,
    n: usize,
    prefix: &str,
    obs: Arc<Observed>,
    stop: Arc<tokio::sync::Notify>,
) -> Result<()> {
    let addr = &sched.addr;
    let mut admin = fleet_client(channel(addr).await?, &sched.admin)?;
    let mut ch = channel(addr).await?;
    for i in 0..n {
        if i % 50 == 0 && i > 0 {
            ch = channel(addr).await?;
        }
        let (c, o, s) = (ch.clone(), obs.clone(), stop.clone());
        let name = format!("{prefix}-{i:05}");
        let secret = agent_secret(&mut admin, name.clone()).await?;
        tokio::spawn(async move {
            if let Err(e) = sim_agent(c, name.clone(), secret, o, s).await {
                if !STOPPING.load(Ordering::Relaxed) {
                    eprintln!("{name}: {e}");
                }
            }
        });
    }
    Ok(())
}

async fn wait_agents(client: &mut Fc, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let agents = client
            .list_agents(pb::ListAgentsRequest {})
            .await?
            .into_inner()
            .agents;
        if agents.iter().filter(|a| a.connected).count() >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {} of {n} agents connected", agents.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn spec(t0: Option<u64>) -> pb::JobSpec {
    let mut labels = std::collections::HashMap::new();
    if let Some(t) = t0 {
        labels.insert("t0".to_string(), t.to_string());
    }
    pb::JobSpec {
        kind: "pytest".into(),
        source: Some(pb::Source {
            kind: Some(pb::source::Kind::Git(pb::GitSource {
                url: "https://example.invalid/load.git".into(),
                r#ref: "main".into(),
            })),
        }),
        requirements: "label.pool==\"load\"".into(),
        labels,
        ..Default::default()
    }
}

async fn throughput(args: &Args, bin: &PathBuf, otlp: &Option<OtlpSink>) -> Result<()> {
    let sched = Sched::start(
        bin,
        &args.heartbeat,
        otlp.as_ref().map(|o| o.url.as_str()),
        &args.metrics,
    )?;
    let obs = Arc::new(Observed::default());
    let stop = Arc::new(tokio::sync::Notify::new());
    fleet(&sched, args.agents, "tp", obs.clone(), stop.clone()).await?;
    let ch = channel(&sched.addr).await?;
    let mut fc = fleet_client(ch.clone(), &sched.admin)?;
    wait_agents(&mut fc, args.agents).await?;
    let (_, cpu0) = sched.usage();
    let start = Instant::now();
    let start_ns = now_ns();
    let next = Arc::new(AtomicU64::new(0));
    let mut submit_lat = Histogram::<u64>::new(3)?;
    let mut handles = Vec::new();
    for _ in 0..args.submitters {
        let mut c = fleet_client(ch.clone(), &sched.admin)?;
        let next = next.clone();
        let total = args.jobs as u64;
        handles.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                c.submit(pb::SubmitRequest {
                    spec: Some(spec(None)),
                })
                .await?;
                let _ = h.record((t.elapsed().as_micros() as u64).max(1));
            }
            Ok::<_, tonic::Status>(h)
        }));
    }
    for h in handles {
        submit_lat.add(h.await??)?;
    }
    let submitted_in = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    while obs.finished.load(Ordering::Relaxed) < args.jobs as u64 {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} jobs finished",
                obs.finished.load(Ordering::Relaxed),
                args.jobs
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed_s = (obs.last_finish_ns.load(Ordering::Relaxed) - start_ns) as f64 / 1e9;
    let (rss, cpu1) = sched.usage();
    stop.notify_waiters();
    println!(
        "== throughput: {} jobs, {} simulated agents, {} submitters",
        args.jobs, args.agents, args.submitters
    );
    println!(
        "  submits acknowledged (durable) in {:.2}s: {:.0} submits/s",
        submitted_in.as_secs_f64(),
        args.jobs as f64 / submitted_in.as_secs_f64()
    );
    println!(
        "  submit RPC latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        submit_lat.value_at_quantile(0.5) as f64 / 1000.0,
        submit_lat.value_at_quantile(0.99) as f64 / 1000.0,
        submit_lat.max() as f64 / 1000.0
    );
    println!(
        "  end to end (submit -> assigned -> finished durable): {elapsed_s:.2}s = {:.0} jobs/s",
        args.jobs as f64 / elapsed_s
    );
    println!(
        "  msched: RSS {:.1} MiB, CPU {:.2}s over {:.2}s ({:.0}% of one core)",
        rss as f64 / 1048576.0,
        cpu1 - cpu0,
        elapsed_s,
        100.0 * (cpu1 - cpu0) / elapsed_s
    );
    println!(
        "  msched CPU per job: {:.3} ms (metrics {})",
        1000.0 * (cpu1 - cpu0) / args.jobs as f64,
        args.metrics
    );
    Ok(())
}

async fn latency(args: &Args, bin: &PathBuf, otlp: &Option<OtlpSink>) -> Result<()> {
    let sched = Sched::start(
        bin,
        &args.heartbeat,
        otlp.as_ref().map(|o| o.url.as_str()),
        &args.metrics,
    )?;
    let obs = Arc::new(Observed::default());
    *obs.latency.lock().await = Some(Histogram::new(3)?);
    let stop = Arc::new(tokio::sync::Notify::new());
    fleet(&sched, args.agents, "lat", obs.clone(), stop.clone()).await?;
    let ch = channel(&sched.addr).await?;
    let mut fc = fleet_client(ch.clone(), &sched.admin)?;
    wait_agents(&mut fc, args.agents).await?;
    let total = args.rate * args.seconds;
    let period = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = Vec::with_capacity(total as usize);
    let start = Instant::now();
    for _ in 0..total {
        tick.tick().await;
        let mut c = fleet_client(ch.clone(), &sched.admin)?;
        inflight.push(tokio::spawn(async move {
            c.submit(pb::SubmitRequest {
                spec: Some(spec(Some(now_ns()))),
            })
            .await
            .map(|_| ())
        }));
    }
    let offered_s = start.elapsed().as_secs_f64();
    for h in inflight {
        h.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while obs.finished.load(Ordering::Relaxed) < total {
        if Instant::now() > deadline {
            bail!(
                "only {} of {total} jobs finished",
                obs.finished.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.notify_waiters();
    let h = obs
        .latency
        .lock()
        .await
        .take()
        .unwrap_or_else(|| Histogram::new(3).expect("histogram"));
    println!(
        "== latency: {total} jobs offered at {} jobs/s over {offered_s:.1}s, {} simulated agents",
        args.rate, args.agents
    );
    println!(
        "  submit -> assignment received: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    );
    Ok(())
}

async fn idle(args: &Args, bin: &PathBuf, otlp: &Option<OtlpSink>) -> Result<()> {
    let sched = Sched::start(
        bin,
        &args.heartbeat,
        otlp.as_ref().map(|o| o.url.as_str()),
        &args.metrics,
    )?;
    let (rss0, _) = sched.usage();
    let obs = Arc::new(Observed::default());
    let stop = Arc::new(tokio::sync::Notify::new());
    fleet(&sched, args.idle_agents, "idle", obs, stop.clone()).await?;
    let mut fc = fleet_client(channel(&sched.addr).await?, &sched.admin)?;
    wait_agents(&mut fc, args.idle_agents).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, cpu0) = sched.usage();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let (rss, cpu1) = sched.usage();
    let secs = t.elapsed().as_secs_f64();
    stop.notify_waiters();
    println!(
        "== idle: {} simulated agents connected, heartbeat every {}",
        args.idle_agents, args.heartbeat
    );
    println!(
        "  msched RSS {:.1} MiB (empty: {:.1} MiB), CPU {:.1}% of one core over {secs:.0}s",
        rss as f64 / 1048576.0,
        rss0 as f64 / 1048576.0,
        100.0 * (cpu1 - cpu0) / secs
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // One file descriptor per simulated agent connection (msched, its child, inherits it).
    if let Err(e) = msfleet_proto::open_files::raise_to_hard() {
        eprintln!("msfleet-load: could not raise the open-files limit: {e}");
    }
    let bin = match &args.msched {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no parent dir")?
            .join("msched"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it (cargo build --release --bins) or pass --msched",
            bin.display()
        );
    }
    let otlp = if args.otlp {
        Some(OtlpSink::start().await?)
    } else {
        None
    };
    let all = args.scenario == "all";
    let mut ran = false;
    if all || args.scenario == "throughput" {
        throughput(&args, &bin, &otlp).await?;
        ran = true;
    }
    if all || args.scenario == "latency" {
        latency(&args, &bin, &otlp).await?;
        ran = true;
    }
    if all || args.scenario == "idle" {
        idle(&args, &bin, &otlp).await?;
        ran = true;
    }
    if args.scenario == "backlog" {
        backlog::backlog(&args, &bin).await?;
        ran = true;
    }
    if args.scenario == "history" {
        history::history(&args, &bin).await?;
        ran = true;
    }
    // Not part of `all`: minutes long, and the fleet sizes want a quiet machine.
    match args.scenario.as_str() {
        "scale" => {
            scale::run(&args, &bin).await?;
            ran = true;
        }
        "restart" => {
            restart::run(&args, &bin).await?;
            ran = true;
        }
        _ => {}
    }
    if args.scenario == "ingest" {
        ingest::ingest(&args, &bin).await?;
        ran = true;
    }
    if let Some(o) = &otlp {
        // msched's batches leave every 5 s and at its shutdown.
        tokio::time::sleep(Duration::from_millis(200)).await;
        println!(
            "== otlp: {} spans received by the in-process receiver",
            o.spans.load(Ordering::Relaxed)
        );
    }
    if !ran {
        bail!(
            "unknown scenario '{}': use throughput, latency, idle, all, ingest, backlog, history, scale or restart",
            args.scenario
        );
    }
    Ok(())
}

/// An in-process OTLP/gRPC receiver that counts the spans it gets.
struct OtlpSink {
    url: String,
    spans: Arc<AtomicU64>,
}

struct CountSpans(Arc<AtomicU64>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for CountSpans
{
    async fn export(
        &self,
        req: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let n: usize = req
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(Default::default()))
    }
}

/// Metric exports are taken and dropped (msched's come every 60 s and at its end).
#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService
    for CountSpans
{
    async fn export(
        &self,
        _req: tonic::Request<
            opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse,
        >,
        tonic::Status,
    > {
        Ok(tonic::Response::new(Default::default()))
    }
}

impl OtlpSink {
    async fn start() -> Result<OtlpSink> {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let spans = Arc::new(AtomicU64::new(0));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(CountSpans(spans.clone())))
                .add_service(
                    opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer::new(
                        CountSpans(spans.clone()),
                    ),
                )
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Ok(OtlpSink { url, spans })
    }
}
