//! Scheduler settings (from `msched` flags).

use crate::clock::{Clock, SystemClock};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The queues every scheduler has, with their aging interval.
pub const BUILTIN_QUEUES: [&str; 4] = ["default", "nightly", "benchmark", "npu"];

/// Default of [`Config::retain`]: 30 days.
pub const DEFAULT_RETAIN: Duration = Duration::from_secs(30 * 24 * 3600);

/// Default of [`Config::max_log_bytes`]: 256 MiB.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// How long an agent may be silent before its attempts are declared lost.
    pub lease_timeout: Duration,
    /// How often agents are told to heartbeat.
    pub heartbeat_interval: Duration,
    /// After start-up, how long known agents get to reconnect before their leases can expire.
    pub restart_grace: Duration,
    /// Attempt timeout for jobs that set none.
    pub default_timeout: Duration,
    /// Retries of a lost attempt for jobs that set none.
    pub default_retries: u32,
    /// Retries of an attempt lost with its agent (silent, disconnected,
    /// restarted, replaced) for jobs that set none; apart from `retries`.
    pub default_agent_lost_retries: u32,
    /// Attempts in a row ending `error` on one agent that quarantine it
    /// (0: never).
    pub quarantine_after: u32,
    /// Queue name -> wait that raises a job's priority by one.
    pub queues: BTreeMap<String, Duration>,
    /// How long a job may wait unstarted when its spec sets no expiry:
    /// per queue, else `default_expire_after`.
    pub expire_after: BTreeMap<String, Duration>,
    pub default_expire_after: Duration,
    /// sled page cache.
    pub cache_bytes: u64,
    /// How long a submit's dedup key is remembered.
    pub dedup_window: Duration,
    /// Finished jobs older than this (by their end) are deleted with their
    /// events and test history, in the background; `None` keeps them forever.
    pub retain: Option<Duration>,
    /// Finished jobs the core keeps in memory beside the live ones; the rest
    /// are read from the store when asked for.
    pub finished_cache: usize,
    pub clock: Arc<dyn Clock>,
    /// Total log bytes one attempt may store; past it one marker event is
    /// appended and the rest of the attempt's output is dropped.
    pub max_log_bytes: u64,
    /// Serve TLS with this certificate and key (PEM); `None` is plain text
    /// (allowed only on loopback unless `--insecure`, checked by `msched`).
    pub tls: Option<TlsFiles>,
    /// Written with the bound address once the scheduler serves (after the
    /// store is loaded and the bootstrap admin token exists).
    pub ready_file: Option<PathBuf>,
}

/// PEM contents for the TLS listener.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    /// Client certificates signed by this CA identify agents (mTLS); clients
    /// without one still connect and authenticate with a token.
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsFiles")
            .field("client_ca", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The expiry of a job in `queue` whose spec sets none.
    pub fn expire_after_for(&self, queue: &str) -> Duration {
        self.expire_after
            .get(queue)
            .copied()
            .unwrap_or(self.default_expire_after)
    }

    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            lease_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            // The lease timeout + an agent's longest reconnect backoff.
            restart_grace: Duration::from_secs(30) + msfleet_proto::backoff::BACKOFF_MAX,
            default_timeout: Duration::from_secs(3600),
            default_retries: 2,
            default_agent_lost_retries: 5,
            quarantine_after: 3,
            queues: BUILTIN_QUEUES
                .iter()
                .map(|q| (q.to_string(), Duration::from_secs(300)))
                .collect(),
            expire_after: BTreeMap::new(),
            default_expire_after: Duration::from_secs(24 * 3600),
            cache_bytes: 64 << 20,
            dedup_window: Duration::from_secs(24 * 3600),
            retain: Some(DEFAULT_RETAIN),
            finished_cache: 10_000,
            clock: Arc::new(SystemClock),
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            tls: None,
            ready_file: None,
        }
    }
}
