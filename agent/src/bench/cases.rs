//! A benchmark job's plan (its spec with the defaults filled in) and its case files.

use msfleet_proto::bench::{self as pbench, Extract};
use msfleet_proto::case::{self, Case, CaseError};
use msfleet_proto::BenchmarkSpec;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Why a benchmark attempt cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid benchmark spec: {0}")]
    Spec(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

// ---------------------------------------------------------------- plan and cases

/// A benchmark spec with its defaults filled in and its extractors compiled.
#[derive(Debug, Clone)]
pub struct Plan {
    /// argv template: `{case}` = the case file's absolute path, `{name}` = the case's name.
    pub command: Vec<String>,
    /// Case directories or files, relative to the workspace.
    pub cases: Vec<String>,
    pub warmup: u32,
    pub repetitions: u32,
    /// The job's primary metric, when it names one.
    pub metric: Option<String>,
    pub extractors: Vec<Extract>,
}

impl Plan {
    pub fn new(spec: &BenchmarkSpec) -> Result<Plan, BenchError> {
        let mut spec = spec.clone();
        pbench::validate(&mut spec).map_err(BenchError::Spec)?;
        let extractors = spec
            .extractors
            .iter()
            .map(Extract::compile)
            .collect::<Result<Vec<_>, _>>()
            .map_err(BenchError::Spec)?;
        let metric = Some(spec.metric.trim().to_string()).filter(|m| !m.is_empty());
        Ok(Plan {
            command: spec.command,
            cases: spec.cases,
            warmup: spec.warmup.unwrap_or(pbench::DEFAULT_WARMUP),
            repetitions: spec.repetitions.unwrap_or(pbench::DEFAULT_REPETITIONS),
            metric,
            extractors,
        })
    }
}

/// A case file that loaded.
#[derive(Debug, Clone)]
pub struct LoadedCase {
    /// Absolute path of the case file (what `{case}` becomes).
    pub path: PathBuf,
    /// Path relative to the workspace (what results show).
    pub file: String,
    pub case: Case,
    pub input_hash: String,
}

/// Loads the case files `entries` (directories or files, relative to `workspace`). Files that
/// cannot be loaded, and a second file with an already used case name, come back as errors
/// whose `file` is relative to the workspace. Blocking (file system).
pub fn load_cases(workspace: &Path, entries: &[String]) -> (Vec<LoadedCase>, Vec<CaseError>) {
    let rel = |p: &Path| p.strip_prefix(workspace).unwrap_or(p).to_path_buf();
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    let mut seen_files: HashSet<PathBuf> = HashSet::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for entry in entries {
        if Path::new(entry).is_absolute() {
            errors.push(CaseError {
                case: entry.clone(),
                file: PathBuf::from(entry),
                reason: "case paths are relative to the workspace".into(),
            });
            continue;
        }
        let path = workspace.join(entry);
        let (loaded, failed) = if path.is_dir() {
            case::load_dir(&path)
        } else {
            case::load_files(std::slice::from_ref(&path))
        };
        for mut e in failed {
            e.file = rel(&e.file);
            if seen_files.insert(e.file.clone()) {
                errors.push(e);
            }
        }
        for (p, c) in loaded {
            let file = rel(&p);
            if !seen_files.insert(file.clone()) {
                continue;
            }
            let file_txt = file.display().to_string();
            if let Some(other) = names.get(&c.name) {
                errors.push(CaseError {
                    case: p
                        .file_stem()
                        .map_or_else(|| c.name.clone(), |s| s.to_string_lossy().into_owned()),
                    file,
                    reason: format!("case name '{}' is already used by {other}", c.name),
                });
                continue;
            }
            names.insert(c.name.clone(), file_txt.clone());
            cases.push(LoadedCase {
                path: workspace.join(&file),
                file: file_txt,
                input_hash: c.input_hash(),
                case: c,
            });
        }
    }
    (cases, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_paths_must_stay_relative() {
        let dir = tempfile::tempdir().unwrap();
        let (cases, errors) = load_cases(dir.path(), &["/etc".into(), "missing.json".into()]);
        assert!(cases.is_empty());
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].reason, "case paths are relative to the workspace");
        assert_eq!(errors[1].file, PathBuf::from("missing.json"));
        assert!(errors[1].reason.starts_with("cannot read the file"));
    }
}
