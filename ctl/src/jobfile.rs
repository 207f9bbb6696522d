//! The job file: the TOML form of a job spec that `msctl submit -f` reads and
//! `msctl submit --dry-run` writes, so one round-trips into the other.
//!
//! ```toml
//! kind = "pytest"
//! queue = "nightly"
//! priority = 0
//! requirements = 'gpu.count>=1 && label.pool=="nightly"'
//! timeout = "30m"
//! memory = "4G"                            # the attempt's processes together (cgroup limit)
//! gpus = 2                                 # devices of its own (or npus = 4); the agent sets
//! gpu_memory = "40G"                       # CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES
//! retries = 2
//! args = ["-m", "not nightly", "tests/regression"]
//! [source]
//! dir = "/srv/checkouts/msmodeling"      # or: git = "https://...", ref = "main"
//! [env]
//! HF_HUB_OFFLINE = "1"
//! [labels]
//! team = "modeling"
//! [secret_env]                             # never shown back: views print [redacted]
//! HF_TOKEN = "@/home/me/.config/hf-token"  # @path: read from the file (trailing newline dropped)
//! [environment]                            # pytest runs in a venv built from the checkout (cached)
//! requirements = ["requirements-test.txt"] # relative to the checkout
//! install_project = "test"                 # pip install -e .[test]; "" for no extras
//! setup = ["pip install -r extra.txt"]     # shell commands in the checkout, venv active
//! system_site_packages = true
//! ```
//!
//! `caches = ["huggingface", "models=MODEL_DIR"]` (top level) names caches the
//! agent keeps across jobs and points the variables at.
//!
//! `--dry-run` prints every `secret_env` value as `[redacted]`; such a file
//! is refused until the values (or `@path`s) are filled in again.
//!
//! `dedup_key = "nightly-2026-11-23"` (top level, any kind) makes a second
//! submit with the same key return the first job (for plain system cron).
//!
//! A benchmark job has `kind = "benchmark"`, no `args`, and a `[benchmark]` table:
//!
//! ```toml
//! kind = "benchmark"
//! [source]
//! dir = "/srv/checkouts/msmodeling"
//! [benchmark]
//! command = ["python", "run_case.py", "{case}"]   # {case}: the case file, {name}: its name
//! cases = ["tests/cases"]                          # relative to the workspace
//! warmup = 1
//! repetitions = 5
//! metric = "total_time_s"
//! trusted = false
//! [[benchmark.extract]]
//! metric = "analytic_s"
//! pattern = 'Total time for analytic:\s*([\d.]+)\s*(ns|us|ms|s)'
//! ```

use msfleet_proto::{
    bench, source, BenchmarkSpec, EnvironmentSpec, Extractor, GitSource, JobSpec, Source,
};
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_lost_retries: Option<u32>,
    /// A size like "4G" or "512M": the most memory the attempt's processes
    /// may use together; a breach ends the attempt `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// GPUs / NPUs the attempt gets for itself (the agent shows it only those).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpus: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub npus: u32,
    /// Per-device minimum memory of those GPUs / NPUs, like "40G".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npu_memory: Option<String>,
    /// A duration like "24h": not started by then, the job ends `expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_after: Option<String>,
    /// Accept the job although no registered agent could run it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unmatched: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Submitting again with a key the scheduler has seen (within its dedup
    /// window) returns the existing job instead of making a second one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dedup_key: String,
    /// pytest: re-runs of failed tests (a fail-then-pass test is flaky).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retry_failed: u32,
    /// "each-profile" or "each-agent": one child job per profile / agent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fanout: String,
    /// pytest: split the selection across this many child jobs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shards: u32,
    pub source: SourceFile,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Values (or `@path` of a file holding one) that reach the test process
    /// and are never shown back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    /// For `kind = "benchmark"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub benchmark: Option<BenchmarkFile>,
    /// pytest: the venv the agent builds from the checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvironmentFile>,
    /// Named caches kept by the agent across jobs ("huggingface", "pip", "NAME=ENVVAR").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caches: Vec<String>,
}

/// The `[environment]` table: [`EnvironmentSpec`] in TOML.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentFile {
    /// Shell commands run in the checkout with the venv active, before pytest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setup: Vec<String>,
    /// Requirements files, relative to the checkout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<String>,
    /// The checkout installed editable with these extras ("" = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_project: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub system_site_packages: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn pytest() -> String {
    "pytest".into()
}

/// The `[benchmark]` table: [`BenchmarkSpec`] in TOML.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkFile {
    /// argv template; `{case}` is the case file's path, `{name}` the case's name.
    #[serde(default)]
    pub command: Vec<String>,
    /// Case directories or files, relative to the workspace (default ".").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cases: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetitions: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metric: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trusted: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extract: Vec<ExtractFile>,
}

/// One `[[benchmark.extract]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractFile {
    pub metric: String,
    pub pattern: String,
}

impl BenchmarkFile {
    /// The spec, checked (and its defaults filled) by [`bench::validate`].
    pub fn to_spec(&self) -> Result<BenchmarkSpec, JobFileError> {
        let mut spec = BenchmarkSpec {
            command: self.command.clone(),
            cases: self.cases.clone(),
            warmup: self.warmup,
            repetitions: self.repetitions,
            metric: self.metric.clone(),
            extractors: self
                .extract
                .iter()
                .map(|e| Extractor {
                    metric: e.metric.clone(),
                    pattern: e.pattern.clone(),
                })
                .collect(),
            trusted: self.trusted,
        };
        bench::validate(&mut spec).map_err(|e| JobFileError::Benchmark(cut(&e, 600)))?;
        Ok(spec)
    }
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
    #[error("{0}")]
    Environment(String),
    #[error("bad memory limit: {0}")]
    Memory(String),
    #[error("bad per-device memory minimum {0}")]
    DeviceMemory(String),
    #[error("bad timeout '{value}': {reason} (use e.g. 30m, 1h, 90s)")]
    Timeout { value: String, reason: String },
    #[error("[source] needs exactly one of dir = \"...\" or git = \"...\"")]
    Source,
    #[error("'ref' only goes with 'git'")]
    RefWithoutGit,
    #[error("{0}")]
    Benchmark(String),
    #[error("a benchmark job runs its [benchmark] command; it takes no pytest args")]
    ArgsWithBenchmark,
    #[error("a [benchmark] table only goes with kind = \"benchmark\"")]
    BenchmarkWithoutKind,
    #[error("a benchmark job needs a [benchmark] table with a command")]
    NoBenchmark,
    #[error("secret_env {name}: cannot read {path}: {reason}")]
    SecretFile {
        name: String,
        path: String,
        reason: String,
    },
    #[error(
        "secret_env {0} is \"[redacted]\" (what --dry-run prints): give the value or @path again"
    )]
    RedactedSecret(String),
}

/// A `secret_env` value as written: `@path` is read from that file (one
/// trailing newline dropped), `@@x` is the value `@x`, anything else itself.
pub fn secret_value(name: &str, written: &str) -> Result<String, JobFileError> {
    if written == msfleet_proto::secrets::REDACTED {
        return Err(JobFileError::RedactedSecret(name.to_string()));
    }
    if let Some(escaped) = written.strip_prefix("@@") {
        return Ok(format!("@{escaped}"));
    }
    let Some(path) = written.strip_prefix('@') else {
        return Ok(written.to_string());
    };
    let text = std::fs::read_to_string(path).map_err(|e| JobFileError::SecretFile {
        name: name.to_string(),
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    let value = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    Ok(value.to_string())
}

impl JobFile {
    pub fn parse(text: &str) -> Result<JobFile, JobFileError> {
        toml::from_str(text).map_err(|e| JobFileError::Toml(toml_error(text, &e)))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// The file as it may be shown: every `secret_env` value `[redacted]`.
    pub fn redacted(&self) -> JobFile {
        let mut f = self.clone();
        for v in f.secret_env.values_mut() {
            *v = msfleet_proto::secrets::REDACTED.to_string();
        }
        f
    }

    /// The spec to submit. Checks what only the client can (durations, source shape);
    /// the scheduler checks the rest.
    pub fn to_spec(&self) -> Result<JobSpec, JobFileError> {
        let timeout_ms = match &self.timeout {
            None => None,
            Some(t) => Some(parse_timeout(t)?),
        };
        let expire_after_ms = match &self.expire_after {
            None => None,
            Some(t) => Some(parse_timeout(t)?),
        };
        let memory_limit_bytes = match &self.memory {
            None => None,
            Some(m) => Some(msfleet_proto::memory::parse(m).map_err(JobFileError::Memory)?),
        };
        let device_memory = |m: &Option<String>, what: &str| match m {
            None => Ok(None),
            Some(m) => msfleet_proto::memory::parse(m)
                .map(Some)
                .map_err(|e| JobFileError::DeviceMemory(format!("{what}: {e}"))),
        };
        let gpu_memory_bytes = device_memory(&self.gpu_memory, "gpu_memory")?;
        let npu_memory_bytes = device_memory(&self.npu_memory, "npu_memory")?;
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
        msfleet_proto::environment::validate(
            self.environment
                .as_ref()
                .map(|e| EnvironmentSpec {
                    setup: e.setup.clone(),
                    requirements: e.requirements.clone(),
                    install_project: e.install_project.clone(),
                    system_site_packages: e.system_site_packages,
                })
                .as_ref(),
            &self.caches,
            self.env.keys().chain(self.secret_env.keys()),
        )
        .map_err(JobFileError::Environment)?;
        let mut secret_env = std::collections::HashMap::new();
        for (name, written) in &self.secret_env {
            secret_env.insert(name.clone(), secret_value(name, written)?);
        }
        let benchmark = match (self.kind.as_str(), &self.benchmark) {
            ("benchmark", None) => return Err(JobFileError::NoBenchmark),
            ("benchmark", Some(_)) if !self.args.is_empty() => {
                return Err(JobFileError::ArgsWithBenchmark)
            }
            ("benchmark", Some(b)) => Some(b.to_spec()?),
            (_, Some(_)) => return Err(JobFileError::BenchmarkWithoutKind),
            (_, None) => None,
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
            agent_lost_retries: self.agent_lost_retries,
            env: self.env.clone().into_iter().collect(),
            labels: self.labels.clone().into_iter().collect(),
            name: self.name.clone(),
            benchmark,
            dedup_key: self.dedup_key.clone(),
            retry_failed: self.retry_failed,
            fanout: self.fanout.clone(),
            shards: self.shards,
            secret_env,
            expire_after_ms,
            allow_unmatched: self.allow_unmatched,
            memory_limit_bytes,
            gpus: self.gpus,
            npus: self.npus,
            gpu_memory_bytes,
            npu_memory_bytes,
            environment: self.environment.as_ref().map(|e| EnvironmentSpec {
                setup: e.setup.clone(),
                requirements: e.requirements.clone(),
                install_project: e.install_project.clone(),
                system_site_packages: e.system_site_packages,
            }),
            caches: self.caches.clone(),
            ..Default::default()
        })
    }
}

/// Longest TOML error shown as the parser wrote it; past this (its snippet
/// quotes the whole offending line, however long) only the place and a cut
/// message are shown.
const MAX_TOML_ERROR: usize = 600;

/// The parser's message for `e`, kept short even for a 100 KB line.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let full = e.to_string();
    if full.len() <= MAX_TOML_ERROR {
        return full;
    }
    let place = e
        .span()
        .and_then(|span| text.get(..span.start))
        .map(|before| {
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!(" at line {line}, column {column}")
        })
        .unwrap_or_default();
    format!("TOML parse error{place}: {}", cut(e.message().trim(), 300))
}

/// `text` up to `max` bytes (at a character boundary), else its start and `...`.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Parses a positive duration ("30m", "1h30m", "45s") into milliseconds.
pub fn parse_timeout(t: &str) -> Result<i64, JobFileError> {
    let bad = |reason: &str| JobFileError::Timeout {
        value: cut(t, 40),
        reason: cut(reason, 200),
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
            expire_after: Some("2h".into()),
            memory: Some("4G".into()),
            npus: 4,
            npu_memory: Some("32G".into()),
            allow_unmatched: true,
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
        assert_eq!(spec.expire_after_ms, Some(7_200_000));
        assert!(spec.allow_unmatched);
        assert_eq!(spec.memory_limit_bytes, Some(4 << 30));
        assert_eq!((spec.npus, spec.npu_memory_bytes), (4, Some(32 << 30)));
        assert_eq!((spec.gpus, spec.gpu_memory_bytes), (0, None));
        let sizeless = JobFile {
            npu_memory: Some("big".into()),
            ..back.clone()
        };
        let e = sizeless.to_spec().unwrap_err().to_string();
        assert!(
            e.starts_with("bad per-device memory minimum npu_memory: memory 'big'"),
            "{e}"
        );
        assert_eq!(spec.args.len(), 3);
        let bad = JobFile {
            memory: Some("lots".into()),
            ..back
        };
        let e = bad.to_spec().unwrap_err().to_string();
        assert!(e.starts_with("bad memory limit: memory 'lots'"), "{e}");
    }

    #[test]
    fn secret_values_come_from_the_file_or_a_path_and_dry_runs_hide_them() {
        let token = std::env::temp_dir().join(format!("msctl-unit-secret-{}", std::process::id()));
        std::fs::write(&token, "s3cret-from-file\n").unwrap();
        let text = format!(
            "[source]\ndir = \"/srv/x\"\n[env]\nPLAIN = \"1\"\n[secret_env]\nA = \"inline\"\nB = \"@{}\"\nC = \"@@at\"\n",
            token.display()
        );
        let f = JobFile::parse(&text).unwrap();
        let spec = f.to_spec().unwrap();
        assert_eq!(spec.secret_env["A"], "inline");
        assert_eq!(spec.secret_env["B"], "s3cret-from-file");
        assert_eq!(spec.secret_env["C"], "@at");
        assert_eq!(spec.env["PLAIN"], "1");
        let shown = f.redacted().to_toml();
        assert!(
            !shown.contains("inline") && !shown.contains("token"),
            "{shown}"
        );
        assert!(shown.contains("A = \"[redacted]\""), "{shown}");
        assert!(shown.contains("PLAIN = \"1\""), "{shown}");
        let back = JobFile::parse(&shown).unwrap().to_spec().unwrap_err();
        assert!(
            back.to_string().contains("secret_env A is \"[redacted]\""),
            "{back}"
        );

        let mut missing = f.clone();
        missing
            .secret_env
            .insert("D".into(), "@/definitely/not/here".into());
        let e = missing.to_spec().unwrap_err().to_string();
        assert!(
            e.starts_with("secret_env D: cannot read /definitely/not/here: "),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1);
        let _ = std::fs::remove_file(&token);
    }

    fn bench_file() -> JobFile {
        JobFile {
            kind: "benchmark".into(),
            queue: "benchmark".into(),
            requirements: r#"label.profile=="a2-64g""#.into(),
            source: SourceFile {
                dir: Some("/srv/msmodeling".into()),
                ..Default::default()
            },
            benchmark: Some(BenchmarkFile {
                command: vec![
                    "python".into(),
                    "-c".into(),
                    "import sys; print(sys.argv)".into(),
                    "{case}".into(),
                    "--name={name}".into(),
                ],
                cases: vec!["tests/cases".into(), "extra/one.json".into()],
                warmup: Some(2),
                repetitions: Some(7),
                metric: "total_time_s".into(),
                trusted: true,
                extract: vec![ExtractFile {
                    metric: "analytic_s".into(),
                    pattern: r"Total time for analytic:\s*([\d.]+)\s*(ns|us|ms|s)".into(),
                }],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn benchmark_dry_run_output_reads_back_as_the_same_spec() {
        let f = bench_file();
        let text = f.to_toml();
        assert!(text.contains("kind = \"benchmark\""), "{text}");
        assert!(text.contains("[benchmark]"), "{text}");
        let back = JobFile::parse(&text).unwrap();
        assert_eq!(back, f, "{text}");
        let spec = back.to_spec().unwrap();
        assert_eq!(spec.kind, "benchmark");
        assert!(spec.args.is_empty());
        let b = spec.benchmark.unwrap();
        assert_eq!(b.command.len(), 5);
        assert_eq!(b.command[2], "import sys; print(sys.argv)");
        assert_eq!(b.cases, ["tests/cases", "extra/one.json"]);
        assert_eq!((b.warmup, b.repetitions), (Some(2), Some(7)));
        assert_eq!(b.metric, "total_time_s");
        assert!(b.trusted);
        assert_eq!(b.extractors.len(), 1);
        assert_eq!(b.extractors[0].metric, "analytic_s");
        assert_eq!(
            b.extractors[0].pattern,
            r"Total time for analytic:\s*([\d.]+)\s*(ns|us|ms|s)"
        );
    }

    #[test]
    fn minimal_benchmark_file_gets_the_defaults() {
        let f = JobFile::parse(
            "kind = \"benchmark\"\n[source]\ndir = \"/x\"\n[benchmark]\ncommand = [\"run\", \"{case}\"]\n",
        )
        .unwrap();
        let b = f.to_spec().unwrap().benchmark.unwrap();
        assert_eq!(b.cases, ["."]);
        assert_eq!(
            (b.warmup, b.repetitions),
            (
                Some(bench::DEFAULT_WARMUP),
                Some(bench::DEFAULT_REPETITIONS)
            )
        );
        // The defaults are not written back into the file.
        assert_eq!(JobFile::parse(&f.to_toml()).unwrap(), f);
    }

    #[test]
    fn bad_benchmark_files_say_what_is_wrong() {
        let mut f = bench_file();
        f.args = vec!["tests".into()];
        assert!(matches!(f.to_spec(), Err(JobFileError::ArgsWithBenchmark)));

        let mut f = bench_file();
        f.kind = "pytest".into();
        assert!(matches!(
            f.to_spec(),
            Err(JobFileError::BenchmarkWithoutKind)
        ));

        let mut f = bench_file();
        f.benchmark = None;
        assert!(matches!(f.to_spec(), Err(JobFileError::NoBenchmark)));

        let mut f = bench_file();
        if let Some(b) = f.benchmark.as_mut() {
            b.command.clear();
        }
        assert!(f.to_spec().unwrap_err().to_string().contains("command"));

        let mut f = bench_file();
        if let Some(b) = f.benchmark.as_mut() {
            b.repetitions = Some(0);
        }
        assert!(f.to_spec().unwrap_err().to_string().contains("repetitions"));

        let mut f = bench_file();
        if let Some(b) = f.benchmark.as_mut() {
            b.extract[0].pattern = "no group".into();
        }
        assert!(f
            .to_spec()
            .unwrap_err()
            .to_string()
            .contains("capture group"));

        assert!(JobFile::parse(
            "kind = \"benchmark\"\n[source]\ndir = \"/x\"\n[benchmark]\ncommand = [\"r\"]\nbogus = 1\n"
        )
        .is_err());
    }

    #[test]
    fn dedup_key_round_trips_and_reaches_the_spec() {
        let text =
            "dedup_key = \"nightly-2026-11-23\"\nargs = [\"tests\"]\n[source]\ndir = \"/x\"\n";
        let f = JobFile::parse(text).unwrap();
        assert_eq!(f.dedup_key, "nightly-2026-11-23");
        let written = f.to_toml();
        assert!(
            written.contains("dedup_key = \"nightly-2026-11-23\""),
            "{written}"
        );
        assert_eq!(JobFile::parse(&written).unwrap(), f);
        assert_eq!(f.to_spec().unwrap().dedup_key, "nightly-2026-11-23");
        // No key: none written, none sent.
        let plain = JobFile::parse("[source]\ndir = \"/x\"\n").unwrap();
        assert!(!plain.to_toml().contains("dedup_key"));
        assert_eq!(plain.to_spec().unwrap().dedup_key, "");
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

    /// A regression found by `fuzz_jobfile_long_input`: the TOML error quoted
    /// the whole offending line and the timeout error the whole value, so a
    /// 100 KB line made a 100 KB message.
    #[test]
    fn errors_about_huge_lines_stay_short() {
        let long = "x".repeat(100_000);
        for text in [
            format!("kind = \"{long}"),
            format!("bogus{long} = 1"),
            format!("kind = {long}"),
            format!("retries = \"{long}\"\n[source]\ndir = \"/srv\""),
        ] {
            let e = JobFile::parse(&text).unwrap_err().to_string();
            assert!(e.len() <= 1024, "{} bytes: {e:.300}", e.len());
            assert!(e.contains("line "), "{e:.300}");
        }
        let e = parse_timeout(&format!("1{long}")).unwrap_err().to_string();
        assert!(e.len() <= 1024, "{} bytes: {e:.300}", e.len());
        // Short errors are shown as the parser wrote them, snippet and all.
        let e = JobFile::parse("kind = \"x").unwrap_err().to_string();
        assert!(e.contains("kind = \"x") && e.contains('^'), "{e}");
    }
}
