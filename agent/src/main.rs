//! `msagent`: the msfleet agent daemon for an NPU/GPU host.

use anyhow::Context;
use clap::Parser;
use msagent::config::{AgentConfig, FileConfig, Overrides};
use msfleet_proto::telemetry::{init_logging, LogFormat};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The msfleet agent: reports this host's hardware and runs the tests the scheduler assigns.
#[derive(Parser, Debug)]
#[command(name = "msagent", version)]
struct Args {
    /// TOML file with any of the settings below (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Scheduler address, e.g. http://127.0.0.1:7070.
    #[arg(long, env = "MSFLEET_SCHEDULER")]
    scheduler: Option<String>,
    /// Agent name (default: the hostname). Unique in the fleet.
    #[arg(long)]
    name: Option<String>,
    /// Where checkouts, the plugin and the runs' sockets and files go.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// A label key=value (repeatable), e.g. --label pool=nightly.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// A directory under which `dir` sources may live (repeatable).
    #[arg(long = "root")]
    roots: Vec<PathBuf>,
    /// Python interpreter that runs pytest.
    #[arg(long)]
    python: Option<PathBuf>,
    /// `uv` that builds job environments (default: `uv` on PATH when it
    /// runs, else the venv's pip).
    #[arg(long)]
    uv: Option<PathBuf>,
    /// Most disk job environments and named caches may use together, e.g.
    /// 200GiB: past it the least recently used that no attempt holds are
    /// removed. Default: no limit.
    #[arg(long = "cache-budget", value_name = "SIZE", value_parser = msagent::config::parse_cache_budget)]
    cache_budget: Option<u64>,
    /// How many attempts may run at once.
    #[arg(long)]
    slots: Option<u32>,
    /// Time between SIGTERM and SIGKILL when a test is cancelled or times out.
    #[arg(long, value_parser = humantime::parse_duration)]
    kill_grace: Option<Duration>,
    /// Longest one git command of a checkout (clone, fetch, checkout) may
    /// run before its process group is killed and the attempt ends `error`
    /// (default 10m; the attempt's own timeout applies as well).
    #[arg(long, value_parser = humantime::parse_duration)]
    git_timeout: Option<Duration>,
    /// How many times one attempt restarts pytest after pytest crashed (a
    /// signal the agent did not send) on the tests not yet reported (default 3).
    #[arg(long)]
    max_crash_restarts: Option<u32>,
    /// The npu-smi binary.
    #[arg(long)]
    npu_smi: Option<PathBuf>,
    /// How often to probe the host again and send its capabilities and health
    /// (disk free, GPU and NPU health) to the scheduler (default 60s).
    #[arg(long, value_parser = humantime::parse_duration)]
    probe_interval: Option<Duration>,
    /// Disk free on the work dir (MiB) below which the host is degraded and
    /// the scheduler quarantines it (default 2048).
    #[arg(long)]
    min_disk_free_mb: Option<u64>,
    /// Most test results sent to the scheduler in one update (default 512, at most 4096).
    #[arg(long)]
    result_batch_max: Option<usize>,
    /// Most bytes of test results in one update (default 262144, at most 4 MiB).
    #[arg(long)]
    result_batch_bytes: Option<usize>,
    /// Longest a test result waits for others to share its update (default 20ms, at most 1s).
    #[arg(long, value_parser = humantime::parse_duration)]
    result_batch_delay: Option<Duration>,
    /// File with this agent's join token (`msctl agent token create NAME`).
    #[arg(long, env = "MSFLEET_AGENT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the scheduler's, for https:// addresses.
    #[arg(long, env = "MSFLEET_CA")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS; its DNS name or common name must be --name.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The cgroup (a path as /proc/self/cgroup shows it, e.g. /msagent) under which each
    /// run gets its own cgroup, in each hierarchy (v1) or the unified one (v2). Default: a
    /// `msfleet` cgroup under the agent's own.
    #[arg(long, value_name = "PATH", conflicts_with = "no_cgroups")]
    cgroup_root: Option<PathBuf>,
    /// Never use cgroups: the agent is a child subreaper and kills every descendant of a run
    /// (jobs with a memory limit are then refused).
    #[arg(long)]
    no_cgroups: bool,
    /// Export traces over OTLP/gRPC to this collector (e.g. http://localhost:4317); the
    /// standard OTEL_EXPORTER_OTLP_ENDPOINT does the same. Neither: no export.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Serve /metrics and /healthz (Prometheus text, no token) on this
    /// address, e.g. 127.0.0.1:9464 (port 0 picks a free one, logged). Off
    /// by default.
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<String>,
    /// Log lines as `text` or `json` (one object a line; lines about an
    /// attempt carry its job and attempt, every line the agent's name).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Print the capability report as JSON and exit.
    #[arg(long)]
    probe: bool,
    #[command(flatten)]
    policy: msagent::config::PolicyFlags,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let telemetry =
        match msfleet_proto::telemetry::init("msagent", args.otlp_endpoint.as_deref(), false) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("msagent: {e}");
                std::process::exit(2);
            }
        };
    init_logging(args.log_format, true, telemetry.as_ref());
    let result = run(args).await;
    if let Some(t) = telemetry {
        t.shutdown().await;
    }
    match result {
        Ok(()) => {}
        Err(e) => {
            eprintln!("msagent: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let cfg = AgentConfig::resolve(
        file,
        Overrides {
            scheduler: args.scheduler,
            name: args.name,
            work_dir: args.work_dir,
            labels: args.labels,
            roots: args.roots,
            python: args.python,
            uv: args.uv,
            cache_budget: args.cache_budget,
            slots: args.slots,
            kill_grace: args.kill_grace,
            git_timeout: args.git_timeout,
            max_crash_restarts: args.max_crash_restarts,
            npu_smi: args.npu_smi,
            probe_interval: args.probe_interval,
            min_disk_free_mb: args.min_disk_free_mb,
            result_batch_max: args.result_batch_max,
            result_batch_bytes: args.result_batch_bytes,
            result_batch_delay: args.result_batch_delay,
            token_file: args.token_file,
            ca: args.ca,
            tls_cert: args.tls_cert,
            tls_key: args.tls_key,
            policy: args.policy,
        },
    )?;
    std::fs::create_dir_all(&cfg.work_dir)
        .with_context(|| format!("creating work dir {}", cfg.work_dir.display()))?;
    let mut cfg = cfg;
    cfg.work_dir = std::fs::canonicalize(&cfg.work_dir)?;
    let cfg = Arc::new(cfg);
    if let Some(root) = &args.cgroup_root {
        if !root.is_absolute() {
            anyhow::bail!(
                "--cgroup-root '{}' must be a cgroup path starting with '/' (as /proc/self/cgroup shows it)",
                root.display()
            );
        }
    }
    let containment =
        msagent::contain::install(msagent::contain::detect(&msagent::contain::Settings {
            cgroup_root: args.cgroup_root.clone(),
            no_cgroups: args.no_cgroups,
        }));
    let (facts, caps) = msagent::health::probe(&cfg).await;
    for note in &facts.notes {
        tracing::info!("probe: {note}");
    }
    if args.probe {
        // JSON alone on stdout (`msagent --probe | jq .profile`): the probe
        // facts with the hardware profile key and the health they make.
        let mut report = serde_json::to_value(&facts)?;
        if let Some(obj) = report.as_object_mut() {
            obj.insert("profile".into(), caps.profile.clone().into());
            if let Some(h) = &caps.health {
                obj.insert(
                    "health".into(),
                    serde_json::json!({ "status": h.status, "reasons": h.reasons }),
                );
            }
            obj.insert("containment".into(), caps.containment.clone().into());
            obj.insert("enforces_memory".into(), caps.enforces_memory.into());
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    msagent::process::reap_orphans(&cfg.work_dir);
    if let Some(h) = caps.health.as_ref().filter(|h| h.status != "ok") {
        tracing::warn!(reasons = ?h.reasons, "probe: host degraded (the scheduler quarantines it)");
    }
    containment.sweep_stale();
    tracing::info!(
        name = %cfg.name,
        profile = %caps.profile,
        gpus = caps.gpus.len(),
        npus = caps.npus.len(),
        "msagent starting"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(listen) = &args.http_listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding --http-listen {listen}"))?;
        let prometheus = msagent::metrics::install()
            .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
        tracing::info!(http_addr = %listener.local_addr()?, "msagent HTTP listening (/metrics, /healthz)");
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = msagent::metrics::serve(listener, prometheus, stopped).await {
                tracing::error!(error = %e, "the HTTP listener stopped");
            }
        });
    }
    match msfleet_proto::systemd::notify_ready() {
        Ok(Some(every)) => tracing::info!(?every, "systemd watchdog on"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "could not tell systemd READY=1"),
    }
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        let _ = stop_tx.send(true);
    });
    // Every line of the session names this agent. A log-only span (target
    // `msagent::log`): it is no trace span, however long the session runs.
    let span = tracing::info_span!(target: "msagent::log", "msagent", agent = %cfg.name);
    let result = tracing::Instrument::instrument(
        msagent::session::Session::new(cfg, caps).run(stop_rx),
        span,
    )
    .await;
    msfleet_proto::systemd::notify_stopping();
    result.map_err(anyhow::Error::from)
}
