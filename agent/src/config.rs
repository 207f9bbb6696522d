//! Agent settings: a TOML file (`--config`) overlaid by command-line flags.
//!
//! The owner's policy ([`AgentPolicy`], see [`msfleet_proto::policy`]) comes
//! from here too: `allow_git`, `allow_bench_commands`, `deny_env`, `allow_env`
//! and `allow_plugins` in the file, `--allow-git`, `--allow-bench-commands`,
//! `--deny-env`, `--allow-env` and `--allow-plugin` as flags ([`PolicyFlags`]).

use msfleet_proto::client::{Bearer, Target};
use msfleet_proto::AgentPolicy;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The `--config` file. Every key is optional; unknown keys are an error so a
/// typo never silently falls back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub scheduler: Option<String>,
    pub name: Option<String>,
    pub work_dir: Option<PathBuf>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub roots: Vec<PathBuf>,
    pub python: Option<PathBuf>,
    /// `uv` for job environments (default: `uv` on PATH if it runs, else pip).
    pub uv: Option<PathBuf>,
    /// Most disk job environments and named caches may use together, e.g. "200GiB";
    /// the least recently used not in use are evicted past it. Unset: no limit.
    pub cache_budget: Option<String>,
    pub slots: Option<u32>,
    /// e.g. "10s"
    pub kill_grace: Option<String>,
    /// Longest one git command of a checkout may run, e.g. "10m" (the default).
    pub git_timeout: Option<String>,
    /// How many times pytest is restarted after a crash (default 3).
    pub max_crash_restarts: Option<u32>,
    pub npu_smi: Option<PathBuf>,
    /// How often the host is probed again and its capabilities and health
    /// sent to the scheduler, e.g. "60s" (the default).
    pub probe_interval: Option<String>,
    /// Disk free on the work dir below this (MiB) makes the host degraded
    /// (default 2048).
    pub min_disk_free_mb: Option<u64>,
    /// Most test results sent in one update (default 512).
    pub result_batch_max: Option<usize>,
    /// Most bytes of test results in one update (default 262144).
    pub result_batch_bytes: Option<usize>,
    /// Longest a test result waits for more to share its update, e.g. "20ms" (the default).
    pub result_batch_delay: Option<String>,
    /// File with this agent's join token (`msctl agent token create`).
    pub token_file: Option<PathBuf>,
    /// CA (PEM) that signed the scheduler's certificate (https:// addresses).
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mTLS: the certificate's name is the agent's.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Git URL patterns fetched (replaces the default https/ssh patterns).
    pub allow_git: Option<Vec<String>>,
    /// `true` (any), `false` (none, the default) or command patterns.
    pub allow_bench_commands: Option<BenchCommands>,
    /// Environment variable names refused on top of the defaults.
    #[serde(default)]
    pub deny_env: Vec<String>,
    /// Names let through although denied (e.g. "PYTHONPATH").
    #[serde(default)]
    pub allow_env: Vec<String>,
    /// pytest plugins a job may load with `-p NAME`.
    #[serde(default)]
    pub allow_plugins: Vec<String>,
}

/// `allow_bench_commands = true | false | ["python *", ...]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BenchCommands {
    All(bool),
    Patterns(Vec<String>),
}

/// The policy flags (flattened into msagent's command line).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct PolicyFlags {
    /// A git URL pattern the agent fetches (repeatable; replaces the default
    /// 'https://**' 'ssh://**' '*@*:**'; `*` stops at '/', `**` does not).
    #[arg(long = "allow-git", value_name = "PATTERN")]
    pub allow_git: Vec<String>,
    /// Let benchmark commands run: alone, any; with a PATTERN (repeatable),
    /// those whose first word or whole command matches it.
    #[arg(
        long = "allow-bench-commands",
        value_name = "PATTERN",
        num_args = 0..=1,
        default_missing_value = "*"
    )]
    pub allow_bench_commands: Vec<String>,
    /// Refuse jobs that set this environment variable (repeatable; NAME* is a
    /// prefix), on top of the defaults.
    #[arg(long = "deny-env", value_name = "NAME")]
    pub deny_env: Vec<String>,
    /// Let this environment variable through although denied (repeatable).
    #[arg(long = "allow-env", value_name = "NAME")]
    pub allow_env: Vec<String>,
    /// A pytest plugin jobs may load with -p NAME (repeatable).
    #[arg(long = "allow-plugin", value_name = "NAME")]
    pub allow_plugins: Vec<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }
}

/// Restarts of pytest after crashes, per attempt, unless configured.
pub const DEFAULT_MAX_CRASH_RESTARTS: u32 = 3;
/// How often the host is probed again by default.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(60);
/// Disk free (MiB) under which the host is degraded by default.
pub const DEFAULT_MIN_DISK_FREE_MB: u64 = 2048;

/// How long one git command of a checkout may run, unless configured.
pub const DEFAULT_GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Bytes from a size like `200GiB` or `512M` (binary units), at least 1 MiB.
pub fn parse_cache_budget(text: &str) -> Result<u64, String> {
    let bytes =
        msfleet_proto::memory::parse(text).map_err(|e| e.replacen("memory ", "size ", 1))?;
    if bytes < 1 << 20 {
        return Err(format!(
            "size '{text}' is less than 1 MiB (use e.g. 200GiB)"
        ));
    }
    Ok(bytes)
}

/// The settings the agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub scheduler: String,
    pub name: String,
    pub work_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// Absolute, canonical directories under which `dir` sources may live.
    pub roots: Vec<PathBuf>,
    pub python: PathBuf,
    /// `uv` named by `--uv`; unset: `uv` on PATH when `uv --version` runs, else pip
    /// builds job environments ([`crate::environment`]).
    pub uv: Option<PathBuf>,
    /// Bytes job environments and named caches may use together (`--cache-budget`).
    pub cache_budget: Option<u64>,
    pub slots: u32,
    /// Time between SIGTERM and SIGKILL of a test's process group.
    pub kill_grace: Duration,
    /// Longest one git command (clone, fetch, checkout) may run; past it the
    /// git process group is killed and the attempt ends `error`.
    pub git_timeout: Duration,
    /// How many times one attempt restarts pytest after it died of a signal
    /// the agent did not send, on the tests not yet reported.
    pub max_crash_restarts: u32,
    pub npu_smi: PathBuf,
    /// How often the host is probed again (capabilities and health sent).
    pub probe_interval: Duration,
    /// Disk free on the work dir below this (MiB) makes the host degraded.
    pub min_disk_free_mb: u64,
    /// How test results are grouped into updates (`crate::session`).
    pub result_batch: ResultBatch,
    /// How to reach the scheduler: address, CA, client certificate.
    pub target: Target,
    /// The join token, sent with every call (its Debug never shows the secret).
    pub bearer: Bearer,
    /// What the owner lets this agent run (published with the capabilities).
    pub policy: AgentPolicy,
}

/// Flag values (all optional: the file and defaults fill the rest).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub scheduler: Option<String>,
    pub name: Option<String>,
    pub work_dir: Option<PathBuf>,
    pub labels: Vec<String>,
    pub roots: Vec<PathBuf>,
    pub python: Option<PathBuf>,
    pub uv: Option<PathBuf>,
    pub cache_budget: Option<u64>,
    pub slots: Option<u32>,
    pub kill_grace: Option<Duration>,
    pub git_timeout: Option<Duration>,
    pub max_crash_restarts: Option<u32>,
    pub npu_smi: Option<PathBuf>,
    pub probe_interval: Option<Duration>,
    pub min_disk_free_mb: Option<u64>,
    pub result_batch_max: Option<usize>,
    pub result_batch_bytes: Option<usize>,
    pub result_batch_delay: Option<Duration>,
    pub token_file: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub policy: PolicyFlags,
}

/// How the session groups an attempt's test results into one update
/// (`TaskUpdate.tests`): a batch goes when it holds `max_results` results or
/// `max_bytes` bytes, or `max_delay` after its first result, whichever comes
/// first, and before any other update of the attempt (order is kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultBatch {
    pub max_results: usize,
    pub max_bytes: usize,
    pub max_delay: Duration,
}

impl Default for ResultBatch {
    fn default() -> Self {
        ResultBatch {
            max_results: 512,
            max_bytes: 256 * 1024,
            // One update per few dozen results of a fast suite: an update
            // costs msched a commit whatever it holds (a generated 30,000-test
            // suite: msched ~1.0 s of CPU at 5 ms, ~0.55 s at 20 ms).
            max_delay: Duration::from_millis(20),
        }
    }
}

impl ResultBatch {
    /// Within what the scheduler takes: 1 to [`msfleet_proto::MAX_BATCH_RESULTS`]
    /// results, 1 KiB to [`msfleet_proto::MAX_BATCH_BYTES`], a delay of at most 1s.
    fn resolve(
        max_results: Option<usize>,
        max_bytes: Option<usize>,
        delay: Option<Duration>,
    ) -> Result<ResultBatch, ConfigError> {
        let d = ResultBatch::default();
        let b = ResultBatch {
            max_results: max_results.unwrap_or(d.max_results),
            max_bytes: max_bytes.unwrap_or(d.max_bytes),
            max_delay: delay.unwrap_or(d.max_delay),
        };
        if !(1..=msfleet_proto::MAX_BATCH_RESULTS).contains(&b.max_results) {
            return Err(ConfigError::Invalid(format!(
                "result_batch_max {} is outside 1..={}",
                b.max_results,
                msfleet_proto::MAX_BATCH_RESULTS
            )));
        }
        if !(1024..=msfleet_proto::MAX_BATCH_BYTES).contains(&b.max_bytes) {
            return Err(ConfigError::Invalid(format!(
                "result_batch_bytes {} is outside 1024..={}",
                b.max_bytes,
                msfleet_proto::MAX_BATCH_BYTES
            )));
        }
        if b.max_delay > Duration::from_secs(1) {
            return Err(ConfigError::Invalid(format!(
                "result_batch_delay {:?} is longer than 1s",
                b.max_delay
            )));
        }
        Ok(b)
    }
}

impl AgentConfig {
    /// Flags win over the file; labels and roots from both are combined.
    pub fn resolve(file: FileConfig, flags: Overrides) -> Result<AgentConfig, ConfigError> {
        let policy = resolve_policy(&file, flags.policy)?;
        let scheduler = flags
            .scheduler
            .or(file.scheduler)
            .unwrap_or_else(|| "http://127.0.0.1:7070".into());
        if !(scheduler.starts_with("http://") || scheduler.starts_with("https://")) {
            return Err(ConfigError::Invalid(format!(
                "scheduler address '{scheduler}' must start with http:// or https://"
            )));
        }
        let name = match flags.name.or(file.name) {
            Some(n) => n,
            None => Some(crate::probe::host::hostname())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "agent".into()),
        };
        let mut labels = file.labels;
        for l in flags.labels {
            let (k, v) = l.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!("label '{l}' must look like key=value"))
            })?;
            if k.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "label '{l}' has an empty key"
                )));
            }
            labels.insert(k.to_string(), v.to_string());
        }
        let work_dir = flags
            .work_dir
            .or(file.work_dir)
            .unwrap_or_else(|| PathBuf::from(".msfleet/agent"));
        let mut roots = Vec::new();
        for r in file.roots.into_iter().chain(flags.roots) {
            let canon = std::fs::canonicalize(&r).map_err(|e| {
                ConfigError::Invalid(format!(
                    "root '{}' is not a usable directory: {e}",
                    r.display()
                ))
            })?;
            if !canon.is_dir() {
                return Err(ConfigError::Invalid(format!(
                    "root '{}' is not a directory",
                    r.display()
                )));
            }
            roots.push(canon);
        }
        let kill_grace = match (flags.kill_grace, file.kill_grace) {
            (Some(d), _) => d,
            (None, Some(s)) => humantime::parse_duration(&s)
                .map_err(|e| ConfigError::Invalid(format!("kill_grace '{s}': {e}")))?,
            (None, None) => Duration::from_secs(10),
        };
        let git_timeout = match (flags.git_timeout, file.git_timeout) {
            (Some(d), _) => d,
            (None, Some(s)) => humantime::parse_duration(&s)
                .map_err(|e| ConfigError::Invalid(format!("git_timeout '{s}': {e}")))?,
            (None, None) => DEFAULT_GIT_TIMEOUT,
        };
        if git_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "git_timeout must be longer than 0s (e.g. 10m)".into(),
            ));
        }
        let probe_interval = match (flags.probe_interval, &file.probe_interval) {
            (Some(d), _) => d,
            (None, Some(s)) => humantime::parse_duration(s)
                .map_err(|e| ConfigError::Invalid(format!("probe_interval '{s}': {e}")))?,
            (None, None) => DEFAULT_PROBE_INTERVAL,
        };
        if probe_interval < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(format!(
                "probe interval {probe_interval:?} is shorter than 1s"
            )));
        }
        let result_batch_delay = match (flags.result_batch_delay, &file.result_batch_delay) {
            (Some(d), _) => Some(d),
            (None, Some(s)) => Some(
                humantime::parse_duration(s)
                    .map_err(|e| ConfigError::Invalid(format!("result_batch_delay '{s}': {e}")))?,
            ),
            (None, None) => None,
        };
        let result_batch = ResultBatch::resolve(
            flags.result_batch_max.or(file.result_batch_max),
            flags.result_batch_bytes.or(file.result_batch_bytes),
            result_batch_delay,
        )?;
        let token = match flags.token_file.or(file.token_file) {
            Some(p) => Some(
                msfleet_proto::client::read_token_file(&p)
                    .map_err(|e| ConfigError::Invalid(e.to_string()))?,
            ),
            None => None,
        };
        let bearer =
            Bearer::new(token.as_deref()).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let identity = match (
            flags.tls_cert.or(file.tls_cert),
            flags.tls_key.or(file.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "--tls-cert and --tls-key go together".into(),
                ))
            }
        };
        let target = Target {
            addr: scheduler.clone(),
            ca: flags.ca.or(file.ca),
            identity,
        };
        if token.is_none() && target.identity.is_none() {
            tracing::warn!(
                "no --token-file and no client certificate: the scheduler will refuse this agent"
            );
        }
        let slots = flags.slots.or(file.slots).unwrap_or(1);
        if slots == 0 {
            return Err(ConfigError::Invalid("slots must be at least 1".into()));
        }
        let cache_budget = match (flags.cache_budget, &file.cache_budget) {
            (Some(b), _) => Some(b),
            (None, Some(t)) => Some(
                parse_cache_budget(t)
                    .map_err(|e| ConfigError::Invalid(format!("cache_budget: {e}")))?,
            ),
            (None, None) => None,
        };
        Ok(AgentConfig {
            scheduler,
            name,
            work_dir,
            labels,
            roots,
            python: flags
                .python
                .or(file.python)
                .unwrap_or_else(|| PathBuf::from("python3")),
            uv: flags.uv.or(file.uv),
            cache_budget,
            slots,
            kill_grace,
            git_timeout,
            max_crash_restarts: flags
                .max_crash_restarts
                .or(file.max_crash_restarts)
                .unwrap_or(DEFAULT_MAX_CRASH_RESTARTS),
            npu_smi: flags
                .npu_smi
                .or(file.npu_smi)
                .unwrap_or_else(|| PathBuf::from("npu-smi")),
            probe_interval,
            min_disk_free_mb: flags
                .min_disk_free_mb
                .or(file.min_disk_free_mb)
                .unwrap_or(DEFAULT_MIN_DISK_FREE_MB),
            result_batch,
            target,
            bearer,
            policy,
        })
    }
}

/// The policy from the file and the flags over [`msfleet_proto::policy::defaults`]:
/// `allow_git` and `allow_bench_commands` given by flags replace the file's,
/// which replace the defaults; the name lists add up (`deny_env` to the defaults).
fn resolve_policy(file: &FileConfig, flags: PolicyFlags) -> Result<AgentPolicy, ConfigError> {
    let mut p = msfleet_proto::policy::defaults();
    if !flags.allow_git.is_empty() {
        p.allow_git = flags.allow_git;
    } else if let Some(g) = &file.allow_git {
        p.allow_git = g.clone();
    }
    p.allow_bench_commands = if !flags.allow_bench_commands.is_empty() {
        flags.allow_bench_commands
    } else {
        match &file.allow_bench_commands {
            None | Some(BenchCommands::All(false)) => Vec::new(),
            Some(BenchCommands::All(true)) => vec!["*".into()],
            Some(BenchCommands::Patterns(v)) => v.clone(),
        }
    };
    p.deny_env
        .extend(file.deny_env.iter().cloned().chain(flags.deny_env));
    p.allow_env = file
        .allow_env
        .iter()
        .cloned()
        .chain(flags.allow_env)
        .collect();
    p.allow_plugins = file
        .allow_plugins
        .iter()
        .cloned()
        .chain(flags.allow_plugins)
        .collect();
    let lists = [
        ("allow_git", &p.allow_git),
        ("allow_bench_commands", &p.allow_bench_commands),
        ("deny_env", &p.deny_env),
        ("allow_env", &p.allow_env),
        ("allow_plugins", &p.allow_plugins),
    ];
    for (what, items) in lists {
        if items.iter().any(|i| i.trim().is_empty()) {
            return Err(ConfigError::Invalid(format!("{what} has an empty entry")));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_crash_restarts_from_the_file_or_the_flag() {
        let file: FileConfig = toml::from_str("max_crash_restarts = 1").unwrap();
        let cfg = AgentConfig::resolve(file, Overrides::default()).unwrap();
        assert_eq!(cfg.max_crash_restarts, 1);
        let file: FileConfig = toml::from_str("max_crash_restarts = 1").unwrap();
        let flags = Overrides {
            max_crash_restarts: Some(0),
            ..Default::default()
        };
        assert_eq!(
            AgentConfig::resolve(file, flags)
                .unwrap()
                .max_crash_restarts,
            0
        );
    }

    #[test]
    fn git_timeout_defaults_to_ten_minutes_and_is_set_by_the_file_or_the_flag() {
        let cfg = AgentConfig::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(cfg.git_timeout, Duration::from_secs(600));
        let file = || toml::from_str::<FileConfig>(r#"git_timeout = "90s""#).unwrap();
        let cfg = AgentConfig::resolve(file(), Overrides::default()).unwrap();
        assert_eq!(cfg.git_timeout, Duration::from_secs(90));
        let flags = Overrides {
            git_timeout: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        assert_eq!(
            AgentConfig::resolve(file(), flags).unwrap().git_timeout,
            Duration::from_secs(5)
        );
        let zero = toml::from_str::<FileConfig>(r#"git_timeout = "0s""#).unwrap();
        let err = AgentConfig::resolve(zero, Overrides::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "git_timeout must be longer than 0s (e.g. 10m)"
        );
        let bad = toml::from_str::<FileConfig>(r#"git_timeout = "soon""#).unwrap();
        assert!(AgentConfig::resolve(bad, Overrides::default())
            .unwrap_err()
            .to_string()
            .starts_with("git_timeout 'soon': "));
    }

    #[test]
    fn flags_override_the_file_and_labels_merge() {
        let file: FileConfig = toml::from_str(
            r#"
            scheduler = "http://10.0.0.1:7070"
            name = "from-file"
            slots = 2
            kill_grace = "3s"
            [labels]
            pool = "nightly"
            rack = "a3"
            "#,
        )
        .unwrap();
        let flags = Overrides {
            name: Some("from-flag".into()),
            labels: vec!["rack=b1".into()],
            ..Default::default()
        };
        let cfg = AgentConfig::resolve(file, flags).unwrap();
        assert_eq!(cfg.max_crash_restarts, DEFAULT_MAX_CRASH_RESTARTS);
        assert_eq!(cfg.name, "from-flag");
        assert_eq!(cfg.scheduler, "http://10.0.0.1:7070");
        assert_eq!(cfg.slots, 2);
        assert_eq!(cfg.kill_grace, Duration::from_secs(3));
        assert_eq!(cfg.labels["pool"], "nightly");
        assert_eq!(cfg.labels["rack"], "b1");
    }

    #[test]
    fn the_probe_interval_and_disk_threshold_come_from_file_and_flags() {
        let cfg = AgentConfig::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(cfg.probe_interval, DEFAULT_PROBE_INTERVAL);
        assert_eq!(cfg.min_disk_free_mb, DEFAULT_MIN_DISK_FREE_MB);
        let file = || -> FileConfig {
            toml::from_str("probe_interval = \"5m\"\nmin_disk_free_mb = 512\n").unwrap()
        };
        let cfg = AgentConfig::resolve(file(), Overrides::default()).unwrap();
        assert_eq!(cfg.probe_interval, Duration::from_secs(300));
        assert_eq!(cfg.min_disk_free_mb, 512);
        let flags = Overrides {
            probe_interval: Some(Duration::from_secs(2)),
            min_disk_free_mb: Some(1),
            ..Default::default()
        };
        let cfg = AgentConfig::resolve(file(), flags).unwrap();
        assert_eq!(cfg.probe_interval, Duration::from_secs(2));
        assert_eq!(cfg.min_disk_free_mb, 1);
        let too_often = Overrides {
            probe_interval: Some(Duration::from_millis(10)),
            ..Default::default()
        };
        let e = AgentConfig::resolve(FileConfig::default(), too_often).unwrap_err();
        assert!(e.to_string().contains("shorter than 1s"), "{e}");
    }

    #[test]
    fn the_policy_defaults_and_what_the_owner_changes() {
        let cfg = AgentConfig::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(cfg.policy, msfleet_proto::policy::defaults());
        assert!(cfg.policy.allow_bench_commands.is_empty());
        assert!(cfg.policy.deny_env.contains(&"LD_PRELOAD".to_string()));

        let file: FileConfig = toml::from_str(
            r#"
            allow_git = ["https://github.com/org/*"]
            allow_bench_commands = true
            deny_env = ["AWS_*"]
            allow_env = ["PYTHONPATH"]
            allow_plugins = ["xdist"]
            "#,
        )
        .unwrap();
        let cfg = AgentConfig::resolve(file, Overrides::default()).unwrap();
        assert_eq!(cfg.policy.allow_git, ["https://github.com/org/*"]);
        assert_eq!(cfg.policy.allow_bench_commands, ["*"]);
        assert!(cfg.policy.deny_env.contains(&"AWS_*".to_string()));
        assert!(
            cfg.policy.deny_env.contains(&"GIT_*".to_string()),
            "defaults stay"
        );
        assert_eq!(cfg.policy.allow_env, ["PYTHONPATH"]);
        assert_eq!(cfg.policy.allow_plugins, ["xdist"]);

        let file: FileConfig = toml::from_str(r#"allow_bench_commands = ["python *"]"#).unwrap();
        let flags = Overrides {
            policy: PolicyFlags {
                allow_git: vec!["file:///srv/**".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let cfg = AgentConfig::resolve(file, flags).unwrap();
        assert_eq!(cfg.policy.allow_bench_commands, ["python *"]);
        assert_eq!(cfg.policy.allow_git, ["file:///srv/**"]);
        let off: FileConfig = toml::from_str("allow_bench_commands = false").unwrap();
        let cfg = AgentConfig::resolve(off, Overrides::default()).unwrap();
        assert!(cfg.policy.allow_bench_commands.is_empty());
        assert!(toml::from_str::<FileConfig>("allow_bench_commands = 3").is_err());
        let empty = Overrides {
            policy: PolicyFlags {
                allow_env: vec![" ".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(AgentConfig::resolve(FileConfig::default(), empty).is_err());
    }

    #[test]
    fn policy_flags_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            policy: PolicyFlags,
        }
        let c = Cli::parse_from(["x", "--allow-bench-commands", "--allow-env", "PYTHONPATH"]);
        assert_eq!(c.policy.allow_bench_commands, ["*"]);
        assert_eq!(c.policy.allow_env, ["PYTHONPATH"]);
        let c = Cli::parse_from([
            "x",
            "--allow-bench-commands",
            "python *",
            "--allow-bench-commands=./run",
            "--allow-git",
            "file://**",
        ]);
        assert_eq!(c.policy.allow_bench_commands, ["python *", "./run"]);
        assert_eq!(c.policy.allow_git, ["file://**"]);
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        assert!(toml::from_str::<FileConfig>("schedular = \"x\"").is_err());
        let bad_label = Overrides {
            labels: vec!["novalue".into()],
            ..Default::default()
        };
        assert!(AgentConfig::resolve(FileConfig::default(), bad_label).is_err());
        let bad_root = Overrides {
            roots: vec!["/definitely/not/here".into()],
            ..Default::default()
        };
        assert!(AgentConfig::resolve(FileConfig::default(), bad_root).is_err());
        let bad_addr = Overrides {
            scheduler: Some("127.0.0.1:1".into()),
            ..Default::default()
        };
        assert!(AgentConfig::resolve(FileConfig::default(), bad_addr).is_err());
    }

    /// Result batching from the file or the flags (flags win), defaults
    /// otherwise; values the scheduler would refuse are refused here, naming
    /// the key.
    #[test]
    fn result_batching_is_configured_and_bounded() {
        let file = || -> FileConfig {
            toml::from_str("result_batch_max = 64\nresult_batch_delay = \"30ms\"").unwrap()
        };
        let cfg = AgentConfig::resolve(file(), Overrides::default()).unwrap();
        assert_eq!(cfg.result_batch.max_results, 64);
        assert_eq!(cfg.result_batch.max_delay, Duration::from_millis(30));
        assert_eq!(cfg.result_batch.max_bytes, ResultBatch::default().max_bytes);
        let flags = Overrides {
            result_batch_max: Some(8),
            result_batch_bytes: Some(4096),
            ..Default::default()
        };
        let cfg = AgentConfig::resolve(file(), flags).unwrap();
        assert_eq!(
            (cfg.result_batch.max_results, cfg.result_batch.max_bytes),
            (8, 4096)
        );
        for (flags, key) in [
            (
                Overrides {
                    result_batch_max: Some(0),
                    ..Default::default()
                },
                "result_batch_max",
            ),
            (
                Overrides {
                    result_batch_max: Some(msfleet_proto::MAX_BATCH_RESULTS + 1),
                    ..Default::default()
                },
                "result_batch_max",
            ),
            (
                Overrides {
                    result_batch_bytes: Some(msfleet_proto::MAX_BATCH_BYTES + 1),
                    ..Default::default()
                },
                "result_batch_bytes",
            ),
            (
                Overrides {
                    result_batch_delay: Some(Duration::from_secs(2)),
                    ..Default::default()
                },
                "result_batch_delay",
            ),
        ] {
            let e = AgentConfig::resolve(FileConfig::default(), flags).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
        let bad: FileConfig = toml::from_str("result_batch_delay = \"soon\"").unwrap();
        let e = AgentConfig::resolve(bad, Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("result_batch_delay"), "{e}");
    }
}
