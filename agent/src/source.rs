//! Where a job's tests come from: a directory under one of the agent's roots,
//! or a git repository + ref checked out (with the `git` CLI) from a bare
//! cache into a per-attempt workspace.

use msfleet_proto::{source, Source};
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// Why a job's source could not be prepared (an infrastructure error, not a test failure).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the job has no source")]
    Missing,
    #[error("source dir '{0}' does not exist on this agent")]
    NoSuchDir(String),
    #[error("source dir '{dir}' is outside this agent's roots ({roots})")]
    OutsideRoots { dir: String, roots: String },
    #[error("git {what} failed for {url}: {message}")]
    Git {
        what: &'static str,
        url: String,
        message: String,
    },
    #[error("preparing the workspace: {0}")]
    Io(#[from] std::io::Error),
    /// ENOSPC while fetching or checking out: the agent's disk, not the tests.
    #[error("no space left on the agent's work dir {dir} ({during}: {message})")]
    DiskFull {
        dir: String,
        during: String,
        message: String,
    },
}

/// What git (or the kernel, `strerror(ENOSPC)`) says when the disk is full.
const NO_SPACE: &str = "No space left on device";

impl SourceError {
    /// The same error, as [`SourceError::DiskFull`] naming `work_dir` when
    /// it came from a full disk (ENOSPC from a file operation, or git saying
    /// so on stderr).
    fn or_disk_full(self, work_dir: &Path) -> SourceError {
        let dir = work_dir.display().to_string();
        match self {
            SourceError::Io(e)
                if e.raw_os_error() == Some(libc::ENOSPC)
                    || e.kind() == std::io::ErrorKind::StorageFull =>
            {
                SourceError::DiskFull {
                    dir,
                    during: "preparing the workspace".into(),
                    message: e.to_string(),
                }
            }
            SourceError::Git { what, url, message } if message.contains(NO_SPACE) => {
                let line = message
                    .lines()
                    .find(|l| l.contains(NO_SPACE))
                    .unwrap_or(NO_SPACE)
                    .trim()
                    .to_string();
                SourceError::DiskFull {
                    dir,
                    during: format!("git {what} of {url}"),
                    message: line,
                }
            }
            other => other,
        }
    }
}

/// A prepared workspace.
#[derive(Debug)]
pub struct Workspace {
    pub dir: PathBuf,
    /// Removed when the attempt ends (git checkouts), or kept (user directories).
    pub owned: bool,
    /// The commit checked out, for git sources.
    pub commit: Option<String>,
}

impl Workspace {
    /// Removes an owned checkout.
    pub async fn cleanup(self) {
        if self.owned {
            if let Err(e) = tokio::fs::remove_dir_all(&self.dir).await {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove workspace");
            }
        }
    }
}

/// Prepares the source of an attempt. `slot` names the per-attempt checkout.
pub async fn prepare(
    src: Option<&Source>,
    roots: &[PathBuf],
    work_dir: &Path,
    slot: &str,
) -> Result<Workspace, SourceError> {
    match src.and_then(|s| s.kind.as_ref()) {
        None => Err(SourceError::Missing),
        Some(source::Kind::Dir(d)) => {
            let dir = tokio::fs::canonicalize(d)
                .await
                .map_err(|_| SourceError::NoSuchDir(d.clone()))?;
            if !dir.is_dir() {
                return Err(SourceError::NoSuchDir(d.clone()));
            }
            if !roots
                .iter()
                .any(|r| msfleet_proto::roots::is_under(&dir, r))
            {
                return Err(SourceError::OutsideRoots {
                    dir: d.clone(),
                    roots: roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            Ok(Workspace {
                dir,
                owned: false,
                commit: None,
            })
        }
        Some(source::Kind::Git(g)) => {
            let got = checkout(&g.url, &g.r#ref, work_dir, slot).await;
            match got.map_err(|e| e.or_disk_full(work_dir)) {
                Err(e @ SourceError::DiskFull { .. }) => {
                    // What a full disk left half-written only takes more room.
                    let _ = tokio::fs::remove_dir_all(work_dir.join("workspaces").join(slot)).await;
                    Err(e)
                }
                other => other,
            }
        }
    }
}

async fn checkout(
    url: &str,
    git_ref: &str,
    work_dir: &Path,
    slot: &str,
) -> Result<Workspace, SourceError> {
    let cache_root = work_dir.join("git-cache");
    tokio::fs::create_dir_all(&cache_root).await?;
    let cache = cache_root.join(cache_name(url));
    if cache.join("HEAD").exists() {
        git(
            &[
                "fetch",
                "--quiet",
                "--prune",
                "--force",
                "origin",
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
            ],
            Some(&cache),
            "fetch",
            url,
        )
        .await?;
    } else {
        let tmp = cache.with_extension("partial");
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        git(
            &[
                "clone",
                "--quiet",
                "--bare",
                "--",
                url,
                &tmp.to_string_lossy(),
            ],
            None,
            "clone",
            url,
        )
        .await?;
        tokio::fs::rename(&tmp, &cache).await?;
    }
    let want = if git_ref.is_empty() { "HEAD" } else { git_ref };
    let missing = |first: String| SourceError::Git {
        what: "ref lookup",
        url: url.to_string(),
        message: format!("ref '{want}' does not exist: {first}"),
    };
    let commit = match rev_parse(&cache, want).await {
        Ok(c) => c,
        Err(first) => {
            // Not a branch or tag: maybe a commit or a ref like refs/pull/1/head.
            if git(
                &["fetch", "--quiet", "origin", want],
                Some(&cache),
                "fetch",
                url,
            )
            .await
            .is_ok()
            {
                rev_parse(&cache, "FETCH_HEAD")
                    .await
                    .map_err(|_| missing(first))?
            } else {
                return Err(missing(first));
            }
        }
    };
    let ws = work_dir.join("workspaces").join(slot);
    let _ = tokio::fs::remove_dir_all(&ws).await;
    tokio::fs::create_dir_all(ws.parent().unwrap_or(work_dir)).await?;
    git(
        &[
            "clone",
            "--quiet",
            "--shared",
            "--no-checkout",
            "--",
            &cache.to_string_lossy(),
            &ws.to_string_lossy(),
        ],
        None,
        "clone",
        url,
    )
    .await?;
    git(
        &["checkout", "--quiet", "--detach", &commit],
        Some(&ws),
        "checkout",
        url,
    )
    .await?;
    Ok(Workspace {
        dir: ws,
        owned: true,
        commit: Some(commit),
    })
}

async fn rev_parse(repo: &Path, r: &str) -> Result<String, String> {
    let out = Command::new("git")
        .args(["rev-parse", "--verify", &format!("{r}^{{commit}}")])
        .current_dir(repo)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

async fn git(
    args: &[&str],
    cwd: Option<&Path>,
    what: &'static str,
    url: &str,
) -> Result<(), SourceError> {
    let mut cmd = Command::new("git");
    cmd.args(args).env("GIT_TERMINAL_PROMPT", "0");
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = cmd.output().await.map_err(|e| SourceError::Git {
        what,
        url: url.to_string(),
        message: format!("cannot run git: {e}"),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SourceError::Git {
            what,
            url: url.to_string(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// A file-system-safe, stable cache directory name for a repository URL.
fn cache_name(url: &str) -> String {
    // FNV-1a: stable across versions, unlike std's DefaultHasher.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in url.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    let tail: String = url
        .rsplit('/')
        .next()
        .unwrap_or("repo")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(40)
        .collect();
    format!("{tail}-{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, args: &[&str]) {
        let ok = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }

    #[tokio::test]
    async fn checks_out_branches_tags_and_commits_and_names_missing_refs() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        sh(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("a.txt"), "one").unwrap();
        sh(&repo, &["add", "."]);
        sh(&repo, &["commit", "-qm", "one"]);
        sh(&repo, &["tag", "v1"]);
        std::fs::write(repo.join("a.txt"), "two").unwrap();
        sh(&repo, &["commit", "-qam", "two"]);
        let url = repo.to_string_lossy().to_string();
        let work = tmp.path().join("work");
        let src = |r: &str| Source {
            kind: Some(source::Kind::Git(msfleet_proto::GitSource {
                url: url.clone(),
                r#ref: r.into(),
            })),
        };
        let ws = prepare(Some(&src("main")), &[], &work, "a").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(ws.dir.join("a.txt")).unwrap(),
            "two"
        );
        let ws = prepare(Some(&src("v1")), &[], &work, "b").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(ws.dir.join("a.txt")).unwrap(),
            "one"
        );
        let commit = ws.commit.clone().unwrap();
        let ws = prepare(Some(&src(&commit[..12])), &[], &work, "c")
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(ws.dir.join("a.txt")).unwrap(),
            "one"
        );
        ws.cleanup().await;
        let err = prepare(Some(&src("no-such-branch")), &[], &work, "d")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-such-branch"), "{err}");
    }

    #[test]
    fn a_full_disk_is_named_with_the_work_dir() {
        use std::io::Write;
        // A real ENOSPC: /dev/full refuses every write with it.
        let Ok(mut full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
            eprintln!("no /dev/full here: skipped");
            return;
        };
        let e = full.write_all(b"x").and_then(|_| full.flush()).unwrap_err();
        let work = Path::new("/var/lib/msagent");
        let got = SourceError::from(e).or_disk_full(work);
        assert!(matches!(got, SourceError::DiskFull { .. }), "{got:?}");
        assert_eq!(
            got.to_string(),
            "no space left on the agent's work dir /var/lib/msagent (preparing the workspace: \
             No space left on device (os error 28))"
        );
        // Full as git says it on stderr (index-pack, checkout).
        let git = SourceError::Git {
            what: "clone",
            url: "https://example.com/r.git".into(),
            message: "error: unable to write file src/a.py\n\
                      fatal: write error: No space left on device\n\
                      fatal: index-pack failed"
                .into(),
        };
        assert_eq!(
            git.or_disk_full(work).to_string(),
            "no space left on the agent's work dir /var/lib/msagent (git clone of \
             https://example.com/r.git: fatal: write error: No space left on device)"
        );
        // Anything else is left as it was.
        let other = SourceError::Io(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(matches!(other.or_disk_full(work), SourceError::Io(_)));
    }

    #[tokio::test]
    async fn dirs_must_exist_and_lie_under_a_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let inside = root.join("proj");
        std::fs::create_dir(&inside).unwrap();
        let dir = |d: &Path| Source {
            kind: Some(source::Kind::Dir(d.to_string_lossy().into())),
        };
        let roots = vec![root.clone()];
        assert!(prepare(Some(&dir(&inside)), &roots, &root, "x")
            .await
            .is_ok());
        let missing = prepare(Some(&dir(&root.join("nope"))), &roots, &root, "x").await;
        assert!(matches!(missing, Err(SourceError::NoSuchDir(_))));
        let outside = prepare(Some(&dir(Path::new("/usr"))), &roots, &root, "x").await;
        assert!(matches!(outside, Err(SourceError::OutsideRoots { .. })));
    }

    #[tokio::test]
    async fn a_symlink_under_a_root_that_leads_out_of_it_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        // As text the path is under the root (the scheduler's view) ...
        let text = root.join("escape");
        assert!(msfleet_proto::roots::is_under(&text, &root));
        // ... but the agent resolves it first and refuses it.
        let src = Source {
            kind: Some(source::Kind::Dir(text.to_string_lossy().into())),
        };
        let got = prepare(Some(&src), std::slice::from_ref(&root), &base, "x").await;
        assert!(
            matches!(got, Err(SourceError::OutsideRoots { .. })),
            "{:?}",
            got.err()
        );
    }
}
