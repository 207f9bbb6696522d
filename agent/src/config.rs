//! Agent settings: a TOML file (`--config`) overlaid by command-line flags.

use msfleet_proto::client::{Bearer, Target};
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
    pub slots: Option<u32>,
    /// e.g. "10s"
    pub kill_grace: Option<String>,
    pub npu_smi: Option<PathBuf>,
    /// File with this agent's join token (`msctl agent token create`).
    pub token_file: Option<PathBuf>,
    /// CA (PEM) that signed the scheduler's certificate (https:// addresses).
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mTLS: the certificate's name is the agent's.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
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
    pub slots: u32,
    /// Time between SIGTERM and SIGKILL of a test's process group.
    pub kill_grace: Duration,
    pub npu_smi: PathBuf,
    /// How to reach the scheduler: address, CA, client certificate.
    pub target: Target,
    /// The join token, sent with every call (its Debug never shows the secret).
    pub bearer: Bearer,
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
    pub slots: Option<u32>,
    pub kill_grace: Option<Duration>,
    pub npu_smi: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl AgentConfig {
    /// Flags win over the file; labels and roots from both are combined.
    pub fn resolve(file: FileConfig, flags: Overrides) -> Result<AgentConfig, ConfigError> {
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
            slots,
            kill_grace,
            npu_smi: flags
                .npu_smi
                .or(file.npu_smi)
                .unwrap_or_else(|| PathBuf::from("npu-smi")),
            target,
            bearer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(cfg.name, "from-flag");
        assert_eq!(cfg.scheduler, "http://10.0.0.1:7070");
        assert_eq!(cfg.slots, 2);
        assert_eq!(cfg.kill_grace, Duration::from_secs(3));
        assert_eq!(cfg.labels["pool"], "nightly");
        assert_eq!(cfg.labels["rack"], "b1");
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
}
