//! msctl as a Unix tool: it stops quietly when its reader goes away, and
//! `--dir` is a path on the agent (relative paths resolved from here).

mod common;

use common::*;
use std::process::Command;

#[test]
fn a_closed_pipe_ends_msctl_quietly() {
    let f = Fleet::new();
    // One job whose listing is ~200 KB, more than a pipe holds.
    let big = "v".repeat(10_000);
    let labels: Vec<String> = (0..20).map(|i| format!("l{i}={big}")).collect();
    let mut args = vec!["pytest".to_string(), "--dir".into(), "/srv/x".into()];
    for l in &labels {
        args.push("--label".into());
        args.push(l.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    f.submit(&args);
    // `msctl list --json | head -c 10`: the reader is gone after 10 bytes.
    let msctl = ctl_cmd(&f.addr(), &["list", "--json"]);
    let mut sh = Command::new("bash");
    sh.arg("-c")
        .arg(r#"set -o pipefail; "$0" "$@" | head -c 10 >/dev/null; echo "status=$?" >&2"#)
        .arg(msctl.get_program())
        .args(msctl.get_args());
    for (k, v) in msctl.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    let out = run_cmd(sh, CTL_TIMEOUT);
    assert!(!out.stderr.contains("panicked"), "{out}");
    assert!(
        out.stderr.contains("status=141"),
        "msctl ends by SIGPIPE (141), quietly: {out}"
    );
}

#[test]
fn a_relative_dir_is_resolved_from_the_current_directory() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let suite = f.copy_example("suite");
    let mut cmd = ctl_cmd(&f.addr(), &["submit", "pytest", "--dir", "suite", "--json"]);
    cmd.current_dir(suite.parent().unwrap());
    let out = run_cmd(cmd, CTL_TIMEOUT);
    assert_eq!(out.code, 0, "{out}");
    let job = out.json();
    assert_eq!(
        job["source"]["dir"].as_str().unwrap_or_default(),
        suite.to_str().unwrap(),
        "{job:#}"
    );
}

#[test]
fn msagent_probe_prints_json_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin("msagent"));
    cmd.args(["--probe", "--work-dir"]).arg(dir.path());
    let out = run_cmd(cmd, CTL_TIMEOUT);
    assert_eq!(out.code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {out}"));
    assert!(
        report["profile"].as_str().is_some_and(|p| !p.is_empty()),
        "{report:#}"
    );
    assert!(report["host"].is_object(), "{report:#}");
}

#[test]
fn submit_json_wait_prints_one_json_object_per_line() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let suite = f.copy_example("suite");
    let out = f.ctl(&[
        "submit",
        "pytest",
        "--dir",
        suite.to_str().unwrap(),
        "--wait",
        "--json",
    ]);
    assert_eq!(out.code, 1, "the example suite has a failing test: {out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines.len() > 3, "{out}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l}"));
        assert!(v.is_object(), "{l}");
    }
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert!(
        first["id"].is_string(),
        "the first line is the job: {first}"
    );
}

#[test]
fn completions_and_the_man_page_need_no_scheduler() {
    for (args, want) in [
        (vec!["completions", "bash"], "_msctl()"),
        (vec!["completions", "zsh"], "#compdef msctl"),
        (vec!["completions", "fish"], "complete -c msctl"),
        (vec!["man"], ".TH msctl 1"),
    ] {
        // An address nothing listens on: these must not connect.
        let out = run_cmd(ctl_cmd("http://127.0.0.1:9", &args), CTL_TIMEOUT);
        assert_eq!(out.code, 0, "{args:?}: {out}");
        assert!(
            out.stdout.contains(want),
            "{args:?}: {}",
            &out.stdout[..out.stdout.len().min(300)]
        );
    }
    let out = run_cmd(
        ctl_cmd("http://127.0.0.1:9", &["completions", "tcsh"]),
        CTL_TIMEOUT,
    );
    assert_eq!(out.code, 2, "an unknown shell is bad usage: {out}");
}

/// `msctl list --limit N` pages: the text listing hints at the next cursor on
/// stderr, `--json` carries it as `next_cursor`, and walking the cursors
/// shows every job once, newest first; a bad cursor is refused in one line.
#[test]
fn list_pages_with_a_cursor() {
    let f = Fleet::new();
    let mut made: Vec<String> = (0..5)
        .map(|_| f.submit(&["pytest", "--dir", "/srv/x"]))
        .collect();
    made.reverse();
    let first = f.ctl(&["list", "--limit", "2"]);
    assert_eq!(first.code, 0, "{first}");
    assert_eq!(
        first
            .stdout
            .lines()
            .filter(|l| l.contains("queued"))
            .count(),
        2,
        "{first}"
    );
    let hint = first
        .stderr
        .lines()
        .find(|l| l.starts_with("more jobs: msctl list --cursor "))
        .unwrap_or_else(|| panic!("a hint with the next cursor:\n{first}"));
    let mut cursor = hint
        .trim_start_matches("more jobs: msctl list --cursor ")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let mut seen: Vec<String> = first
        .stdout
        .lines()
        .filter(|l| l.contains("queued"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    while !cursor.is_empty() {
        let page = f.ctl(&["list", "--limit", "2", "--cursor", &cursor, "--json"]);
        assert_eq!(page.code, 0, "{page}");
        let v = page.json();
        seen.extend(
            v["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_string()),
        );
        cursor = v["next_cursor"].as_str().unwrap().to_string();
    }
    assert_eq!(seen, made, "every job once, newest first");
    let bad = f.ctl(&["list", "--cursor", "yesterday"]);
    assert_ne!(bad.code, 0, "{bad}");
    assert!(bad.stderr.contains("bad cursor 'yesterday'"), "{bad}");
    assert_eq!(bad.stderr.trim().lines().count(), 1, "one line: {bad}");
}
