//! `msched`: the msfleet scheduler daemon.

use anyhow::Context;
use clap::Parser;
use msfleet_proto::telemetry::{init_logging, LogFormat};
use std::path::PathBuf;
use std::time::Duration;

/// The msfleet scheduler: durable job queues, leases and the gRPC API.
#[derive(Parser, Debug)]
#[command(name = "msched", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; see --ready-file).
    #[arg(long, env = "MSCHED_LISTEN", default_value = "127.0.0.1:7070")]
    listen: String,
    /// Where the sled database lives.
    #[arg(long, env = "MSCHED_DATA_DIR", default_value = ".msfleet/sched")]
    data_dir: PathBuf,
    /// Write the bound address here once the scheduler accepts connections.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// How long an agent may be silent before its attempts are lost (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    lease_timeout: Duration,
    /// How often agents heartbeat.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// After a restart, how long known agents get to reconnect (default: the
    /// lease timeout plus the longest reconnect backoff of an agent, 10 s: an
    /// agent that was backing off comes back within that of msched listening).
    #[arg(long, value_parser = humantime::parse_duration)]
    restart_grace: Option<Duration>,
    /// Retries of an attempt lost with its agent (silent past its lease,
    /// disconnected, restarted, replaced) for jobs that set none; counted
    /// apart from the job's --retries.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=msched::limits::MAX_AGENT_LOST_RETRIES as i64))]
    agent_lost_retries: u32,
    /// Attempt timeout of jobs that set none.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    default_timeout: Duration,
    /// Quarantine an agent after this many attempts in a row on it ended
    /// `error` (an infrastructure failure); 0 never does.
    #[arg(long, default_value_t = 3)]
    quarantine_after: u32,
    /// Extra queue, besides default, nightly, benchmark and npu (repeatable).
    #[arg(long = "queue")]
    queues: Vec<String>,
    /// Wait that raises a pending job's priority by one (aging).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    aging: Duration,
    /// How long a job that sets no expiry may wait unstarted before it ends
    /// `expired`: DURATION for every queue, or QUEUE=DURATION for one (repeatable).
    #[arg(long = "expire-after", value_name = "[QUEUE=]DURATION")]
    expire_after: Vec<String>,
    /// How long `submit --dedup-key` remembers a key.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    dedup_window: Duration,
    /// Delete finished jobs (their events and test history with them) this
    /// long after they ended, in the background; `off` keeps them forever.
    #[arg(long, default_value = "30d", value_parser = parse_retain)]
    retain: Retain,
    /// Serve TLS with this certificate chain (PEM). Needed on any address but loopback.
    #[arg(long, env = "MSCHED_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "MSCHED_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Accept client certificates signed by this CA (PEM) as agent identities
    /// (mTLS: the certificate's DNS name or common name is the agent's name).
    #[arg(long, env = "MSCHED_CLIENT_CA", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Allow plain text on a non-loopback address (tokens then cross the
    /// network in the clear). Logs a warning at every start.
    #[arg(long)]
    insecure: bool,
    /// Total log output one attempt may store (bytes; K, M, G, KiB, MiB, GiB
    /// suffixes); past it a marker is logged and the rest is dropped.
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    max_log_bytes: u64,
    /// Export traces over OTLP/gRPC to this collector (e.g. http://localhost:4317); the
    /// standard OTEL_EXPORTER_OTLP_ENDPOINT does the same. Neither: no export.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Address of the HTTP listener with /metrics, /healthz and /readyz
    /// (port 0 picks a free port, written to --ready-file); `off` serves none
    /// and records no metrics. HTTPS with --tls-cert; plain text off loopback
    /// needs --insecure.
    #[arg(long, env = "MSCHED_HTTP_LISTEN", default_value = "127.0.0.1:7071")]
    http_listen: String,
    /// Log lines as `text` or `json` (one object a line, with job, attempt
    /// and agent fields where a line is about them).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Testing: read the time (Unix ms) from this file instead of the system clock.
    #[arg(long, hide = true)]
    clock_file: Option<PathBuf>,
}

/// `1048576`, `1MiB`, `64K`, `2G`: binary units.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size such as 1048576, 64KiB or 256MiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => {
            return Err(format!(
                "unknown unit in '{s}': use K, M or G (KiB, MiB, GiB)"
            ))
        }
    };
    n.checked_mul(1 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("'{s}' is not a positive size that fits"))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let telemetry =
        match msfleet_proto::telemetry::init("msched", args.otlp_endpoint.as_deref(), true) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("msched: {e}");
                std::process::exit(2);
            }
        };
    init_logging(args.log_format, false, telemetry.as_ref());
    let result = run(args).await;
    if let Some(t) = telemetry {
        t.shutdown().await;
    }
    if let Err(e) = result {
        // One line that says what to fix (no backtrace, whatever RUST_BACKTRACE says).
        eprintln!("msched: {e:#}");
        std::process::exit(2);
    }
}

/// Below this open-files limit msched says how many agents it can serve.
const MIN_OPEN_FILES: u64 = 65_536;

async fn run(args: Args) -> anyhow::Result<()> {
    if args.lease_timeout <= args.heartbeat_interval {
        anyhow::bail!("--lease-timeout must be longer than --heartbeat-interval");
    }
    let mut cfg = msched::Config::new(&args.data_dir);
    cfg.lease_timeout = args.lease_timeout;
    cfg.heartbeat_interval = args.heartbeat_interval;
    cfg.restart_grace = args
        .restart_grace
        .unwrap_or(args.lease_timeout + msfleet_proto::backoff::BACKOFF_MAX);
    cfg.default_timeout = args.default_timeout;
    cfg.default_agent_lost_retries = args.agent_lost_retries;
    cfg.dedup_window = args.dedup_window;
    cfg.retain = args.retain.0;
    cfg.max_log_bytes = args.max_log_bytes;
    cfg.quarantine_after = args.quarantine_after;
    if let Some(path) = &args.clock_file {
        cfg.clock = std::sync::Arc::new(msched::clock::FileClock::new(path));
    }
    for q in cfg.queues.values_mut() {
        *q = args.aging;
    }
    for q in &args.queues {
        if q.is_empty()
            || !q
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            anyhow::bail!("bad queue name '{q}': use letters, digits, '-' and '_'");
        }
        cfg.queues.insert(q.clone(), args.aging);
    }
    for e in &args.expire_after {
        let (queue, text) = match e.split_once('=') {
            Some((q, d)) => (Some(q), d),
            None => (None, e.as_str()),
        };
        let d = humantime::parse_duration(text.trim())
            .ok()
            .filter(|d| {
                !d.is_zero() && d.as_millis() <= msched::limits::MAX_EXPIRE_AFTER_MS as u128
            })
            .with_context(|| {
                format!("--expire-after {e}: use e.g. 24h or nightly=12h (at most 30 days)")
            })?;
        match queue {
            Some(q) if !cfg.queues.contains_key(q) => {
                anyhow::bail!("--expire-after {e}: no queue '{q}' (add it with --queue)")
            }
            Some(q) => {
                cfg.expire_after.insert(q.to_string(), d);
            }
            None => cfg.default_expire_after = d,
        }
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let read = |what: &str, p: &PathBuf| {
            std::fs::read(p).with_context(|| format!("reading {what} {}", p.display()))
        };
        cfg.tls = Some(msched::config::TlsFiles {
            cert: read("--tls-cert", cert)?,
            key: read("--tls-key", key)?,
            client_ca: args
                .client_ca
                .as_ref()
                .map(|p| read("--client-ca", p))
                .transpose()?,
        });
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    // One connection (one file descriptor) per agent session.
    match msfleet_proto::open_files::raise_to_hard() {
        Ok(l) if l.soft < MIN_OPEN_FILES => tracing::warn!(
            limit = l.soft,
            "the open-files limit caps the agents msched can serve near {}: raise it \
             (LimitNOFILE= in the systemd unit, ulimit -Hn)",
            l.soft.saturating_sub(64)
        ),
        Ok(l) => tracing::info!(limit = l.soft, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    if cfg.tls.is_none() && !addr.ip().is_loopback() {
        if !args.insecure {
            anyhow::bail!(
                "refusing plain text on {addr} (not loopback): add --tls-cert PEM --tls-key PEM \
                 (and --client-ca PEM for agent certificates), or --insecure to accept the risk"
            );
        }
        tracing::warn!(%addr, "--insecure: serving plain text off loopback; tokens cross the network in the clear");
    }
    let http = match args.http_listen.as_str() {
        "off" => None,
        listen => {
            let http = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding --http-listen {listen} (or 'off')"))?;
            let http_addr = http.local_addr()?;
            if cfg.tls.is_none() && !http_addr.ip().is_loopback() {
                if !args.insecure {
                    anyhow::bail!(
                        "refusing plain-text HTTP on {http_addr} (not loopback): /metrics tokens \
                         would cross the network in the clear; add --tls-cert PEM --tls-key PEM \
                         (HTTPS with the gRPC certificate), or --insecure to accept the risk"
                    );
                }
                tracing::warn!(%http_addr, "--insecure: HTTP listener off loopback in plain text");
            }
            tracing::info!(%http_addr, "msched HTTP listening (/metrics, /healthz, /readyz)");
            Some(http)
        }
    };
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "msched listening");
    cfg.ready_file = args.ready_file.clone();
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
    };
    msched::serve(cfg, listener, http, shutdown).await?;
    Ok(())
}

/// `--retain`: a duration of at least a minute, or `off`.
#[derive(Debug, Clone, Copy)]
struct Retain(Option<Duration>);

fn parse_retain(text: &str) -> Result<Retain, String> {
    if text.trim() == "off" {
        return Ok(Retain(None));
    }
    humantime::parse_duration(text.trim())
        .ok()
        .filter(|d| *d >= Duration::from_secs(60))
        .map(|d| Retain(Some(d)))
        .ok_or_else(|| "use a duration of at least 1m (e.g. 30d, 12h) or off".to_string())
}
