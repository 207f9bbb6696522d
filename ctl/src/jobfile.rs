//! The job file: the TOML form of a job spec that `msctl submit -f` reads and
//! `msctl submit --dry-run` writes, so one round-trips into the other.
//!
//! ```toml
//! kind = "pytest"
//! queue = "nightly"
//! priority = 0
//! requirements = 'gpu.count>=1 && label.pool=="nightly"'
//! timeout = "30m"
//! retries = 2
//! args = ["-m", "not nightly", "tests/regression"]
//! [source]
//! dir = "/srv/checkouts/msmodeling"      # or: git = "https://...", ref = "main"
//! [env]
//! CUDA_VISIBLE_DEVICES = "0"
//! [labels]
//! team = "modeling"
//! ```

use msfleet_proto::{source, GitSource, JobSpec, Source};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    #[serde(default = "pytest")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub queue: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub requirements: String,
    /// A duration like "30m" or "1h30m".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default)]
    pub args: Vec<String>,
    pub source: SourceFile,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn pytest() -> String {
    "pytest".into()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<String>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
}

/// A job file that cannot become a spec.
#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    #[error("{0}")]
    Toml(String),
    #[error("bad timeout '{value}': {reason} (use e.g. 30m, 1h, 90s)")]
    Timeout { value: String, reason: String },
    #[error("[source] needs exactly one of dir = \"...\" or git = \"...\"")]
    Source,
    #[error("'ref' only goes with 'git'")]
    RefWithoutGit,
}

impl JobFile {
    pub fn parse(text: &str) -> Result<JobFile, JobFileError> {
        toml::from_str(text).map_err(|e| JobFileError::Toml(e.to_string()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// The spec to submit. Checks what only the client can (durations, source shape);
    /// the scheduler checks the rest.
    pub fn to_spec(&self) -> Result<JobSpec, JobFileError> {
        let timeout_ms = match &self.timeout {
            None => None,
            Some(t) => Some(parse_timeout(t)?),
        };
        let kind = match (&self.source.dir, &self.source.git) {
            (Some(d), None) => {
                if self.source.git_ref.is_some() {
                    return Err(JobFileError::RefWithoutGit);
                }
                source::Kind::Dir(d.clone())
            }
            (None, Some(url)) => source::Kind::Git(GitSource {
                url: url.clone(),
                r#ref: self.source.git_ref.clone().unwrap_or_default(),
            }),
            _ => return Err(JobFileError::Source),
        };
        Ok(JobSpec {
            kind: self.kind.clone(),
            source: Some(Source { kind: Some(kind) }),
            args: self.args.clone(),
            queue: self.queue.clone(),
            priority: self.priority,
            requirements: self.requirements.clone(),
            timeout_ms,
            retries: self.retries,
            env: self.env.clone().into_iter().collect(),
            labels: self.labels.clone().into_iter().collect(),
            name: self.name.clone(),
        })
    }
}

/// Parses a positive duration ("30m", "1h30m", "45s") into milliseconds.
pub fn parse_timeout(t: &str) -> Result<i64, JobFileError> {
    let bad = |reason: &str| JobFileError::Timeout {
        value: t.to_string(),
        reason: reason.to_string(),
    };
    if t.trim_start().starts_with('-') {
        return Err(bad("it is negative"));
    }
    let d = humantime::parse_duration(t.trim()).map_err(|e| bad(&e.to_string()))?;
    if d.is_zero() {
        return Err(bad("it must be longer than zero"));
    }
    i64::try_from(d.as_millis()).map_err(|_| bad("too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_output_reads_back_as_the_same_spec() {
        let f = JobFile {
            kind: "pytest".into(),
            queue: "nightly".into(),
            priority: 3,
            requirements: r#"gpu.count>=1 && label.pool=="nightly""#.into(),
            timeout: Some("30m".into()),
            retries: Some(1),
            args: vec!["-m".into(), "not nightly".into(), "tests".into()],
            source: SourceFile {
                git: Some("https://example.com/r.git".into()),
                git_ref: Some("main".into()),
                dir: None,
            },
            env: [("A".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        let back = JobFile::parse(&f.to_toml()).unwrap();
        assert_eq!(back, f);
        let spec = back.to_spec().unwrap();
        assert_eq!(spec.timeout_ms, Some(1_800_000));
        assert_eq!(spec.args.len(), 3);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert!(JobFile::parse("kind = \"pytest\"\n[source]\ndir=\"/x\"\nbogus = 1").is_err());
        let f = JobFile::parse("[source]\ndir = \"/x\"\ngit = \"y\"").unwrap();
        assert!(matches!(f.to_spec(), Err(JobFileError::Source)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("-5m").is_err());
        assert!(parse_timeout("soon").is_err());
        assert_eq!(parse_timeout("1h30m").unwrap(), 5_400_000);
    }
}
