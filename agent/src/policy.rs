//! The agent's own check of its owner's policy, whatever the scheduler
//! decided: [`admit`] applies the shared textual rule
//! ([`msfleet_proto::policy::admits`]) before anything is fetched or run, and
//! [`admit_paths`] resolves every path the job names against the prepared
//! checkout, following symlinks, before the test or benchmark starts. A
//! refusal ends the attempt `error` (an infrastructure outcome, never
//! `failed`) with the reason.

use msfleet_proto::policy::{self, PathArg};
use msfleet_proto::{AgentPolicy, JobSpec};
use std::path::{Component, Path, PathBuf};

/// How a refusal starts, so that a person sees who refused.
pub const REFUSED: &str = "refused by this agent's policy";

/// The textual rule, as the scheduler applies it.
pub fn admit(p: &AgentPolicy, spec: &JobSpec) -> Result<(), String> {
    policy::admits(p, spec).map_err(|why| format!("{REFUSED}: {why}"))
}

/// Every path the job names must resolve (symlinks followed) inside `checkout`.
pub fn admit_paths(checkout: &Path, spec: &JobSpec) -> Result<(), String> {
    let root = std::fs::canonicalize(checkout)
        .map_err(|e| format!("{REFUSED}: cannot resolve the checkout: {e}"))?;
    for a in policy::path_args(spec) {
        if a.path.is_empty() {
            continue;
        }
        let joined = root.join(&a.path);
        match resolve(&joined) {
            Some(real) if msfleet_proto::roots::is_under(&real, &root) => {}
            Some(real) => {
                return Err(format!(
                    "{REFUSED}: {} leaves the source tree (it resolves to {})",
                    a.describe(),
                    real.display()
                ))
            }
            None => return Err(unresolvable(&a)),
        }
    }
    Ok(())
}

fn unresolvable(a: &PathArg) -> String {
    format!(
        "{REFUSED}: {} cannot be resolved (a symlink that points nowhere, or a path that is not clean)",
        a.describe()
    )
}

/// `path` with every symlink of its existing part resolved; the part that does
/// not exist yet (an output file) is appended as written. `None` for a path
/// that climbs (`..`) or whose existing part cannot be resolved (a dangling link).
fn resolve(path: &Path) -> Option<PathBuf> {
    let clean: PathBuf = path
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    if clean.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    // The deepest ancestor that exists (a dangling symlink exists as a link).
    let mut existing = clean.as_path();
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(existing).is_err() {
        rest.push(existing.file_name()?.to_owned());
        existing = existing.parent()?;
    }
    let mut real = std::fs::canonicalize(existing).ok()?;
    for part in rest.iter().rev() {
        real.push(part);
    }
    Some(real)
}

#[cfg(test)]
mod tests {
    use super::*;
    use msfleet_proto::{source, Source};

    fn job(dir: &Path, args: &[&str]) -> JobSpec {
        JobSpec {
            source: Some(Source {
                kind: Some(source::Kind::Dir(dir.display().to_string())),
            }),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn symlinks_out_of_the_checkout_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(ws.join("tests")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("test_x.py"), "").unwrap();
        std::os::unix::fs::symlink(&outside, ws.join("escape")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), ws.join("dangling")).unwrap();
        std::os::unix::fs::symlink(ws.join("tests"), ws.join("inner")).unwrap();
        for args in [
            &[
                "tests",
                "inner/x.py",
                "--junitxml=out/new/j.xml",
                "-c",
                "./tests",
            ][..],
            &["--rootdir", "."],
        ] {
            assert_eq!(admit_paths(&ws, &job(&ws, args)), Ok(()), "{args:?}");
        }
        let why = admit_paths(&ws, &job(&ws, &["escape/test_x.py"])).unwrap_err();
        assert!(
            why.starts_with("refused by this agent's policy: path argument 'escape/test_x.py' leaves the source tree (it resolves to"),
            "{why}"
        );
        let why = admit_paths(&ws, &job(&ws, &["--junitxml", "escape/new.xml"])).unwrap_err();
        assert!(
            why.contains("pytest option --junitxml escape/new.xml leaves"),
            "{why}"
        );
        let why = admit_paths(&ws, &job(&ws, &["--junitxml=dangling"])).unwrap_err();
        assert!(why.contains("cannot be resolved"), "{why}");
    }
}
