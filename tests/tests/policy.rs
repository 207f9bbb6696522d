//! End-to-end tests of secrets and agent policies: real msched, msagent and
//! msctl processes. A secret env value reaches the test and never comes back
//! out; an agent runs only what its owner's policy admits, the scheduler
//! refuses at submit what no agent's policy admits, and an agent that refuses
//! anyway (a symlink the scheduler cannot see) ends the job `error`.

mod common;

use common::*;
use std::path::Path;

fn s(p: &Path) -> String {
    p.display().to_string()
}

const SECRET: &str = "tok-2718281828-plugh";
const FILE_SECRET: &str = "file-secret-1618033988";

/// The test asserts both values arrived, then prints them: one split across
/// two writes (two reads of the pipe on the agent), one whole on stderr.
const SECRET_TEST: &str = r#"
import os, sys, time

def test_the_secrets_arrive():
    token = os.environ["API_TOKEN"]
    assert token == "tok-2718281828-plugh"
    assert os.environ["FROM_FILE"] == "file-secret-1618033988"
    assert os.environ["PLAIN"] == "visible-value"
    sys.stdout.write("token: " + token[:9]); sys.stdout.flush()
    time.sleep(0.5)
    sys.stdout.write(token[9:] + " <- printed\n"); sys.stdout.flush()
    print("from file:", os.environ["FROM_FILE"], file=sys.stderr)
"#;

#[test]
fn a_secret_env_value_reaches_the_test_and_never_comes_back_out() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let suite = f.write_suite("secret", &[("test_secret.py", SECRET_TEST)]);
    let token_file = f.path().join("token.txt");
    std::fs::write(&token_file, format!("{FILE_SECRET}\n")).unwrap();
    let secret_flag = format!("API_TOKEN={SECRET}");
    let file_flag = format!("FROM_FILE=@{}", s(&token_file));
    let dir = s(&suite);
    let job: Vec<&str> = vec![
        "pytest",
        "--dir",
        &dir,
        "--env",
        "PLAIN=visible-value",
        "--secret-env",
        &secret_flag,
        "--secret-env",
        &file_flag,
        "--",
        "-s",
    ];
    let leaks = |what: &str, text: &str| {
        assert!(
            !text.contains(SECRET) && !text.contains(FILE_SECRET),
            "{what} shows a secret value:\n{text}"
        );
    };

    let mut dry = vec!["submit", "--dry-run"];
    dry.extend(&job);
    let dry = f.ctl(&dry);
    assert_eq!(dry.code, 0, "{dry}");
    leaks("--dry-run", &dry.stdout);
    assert!(dry.stdout.contains("API_TOKEN = \"[redacted]\""), "{dry}");
    assert!(dry.stdout.contains("PLAIN = \"visible-value\""), "{dry}");

    let mut submit = vec!["submit", "--json"];
    submit.extend(&job);
    let submitted = f.ctl(&submit);
    assert_eq!(submitted.code, 0, "{submitted}");
    leaks("submit --json", &submitted.stdout);
    let id = submitted.json()["id"].as_str().unwrap().to_string();

    let watch = f.ctl(&["watch", &id]);
    let done = f.wait_terminal(&id);
    assert_eq!(
        done["state"], "passed",
        "the values reached the test: {done:#}"
    );
    leaks("watch", &watch.stdout);
    leaks("watch (stderr)", &watch.stderr);
    assert_eq!(done["env"]["PLAIN"], "visible-value", "{done:#}");
    assert_eq!(done["secret_env"]["API_TOKEN"], "[redacted]", "{done:#}");
    assert_eq!(done["secret_env"]["FROM_FILE"], "[redacted]", "{done:#}");

    let show = f.ctl(&["show", &id, "--json"]);
    leaks("show --json", &show.stdout);
    let show_text = f.ctl(&["show", &id]);
    leaks("show", &show_text.stdout);
    let list = f.ctl(&["list", "--json"]);
    assert_eq!(list.code, 0, "{list}");
    leaks("list --json", &list.stdout);
    let watch_json = f.ctl(&["watch", &id, "--json"]);
    assert_eq!(watch_json.code, 0, "{watch_json}");
    leaks("watch --json", &watch_json.stdout);
    let report = f.ctl(&["report", &id, "--json"]);
    assert_eq!(report.code, 0, "{report}");
    leaks("report --json", &report.stdout);
    let logs = f.ctl(&["logs", &id]);
    assert_eq!(logs.code, 0, "{logs}");
    leaks("logs", &logs.stdout);
    leaks("logs (stderr)", &logs.stderr);
    assert!(
        logs.stdout.contains("token: [redacted] <- printed"),
        "the value split across two reads is redacted whole:\n{logs}"
    );
    assert!(
        logs.stderr.contains("from file: [redacted]"),
        "the test's stderr goes to msctl's stderr:\n{logs}"
    );
    for log in [&f.sched.log, &f.agents[0].log] {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        leaks(&format!("{}", log.display()), &text);
    }
}

#[test]
fn a_missing_secret_file_is_bad_input_in_one_line() {
    let f = Fleet::new();
    let out = f.ctl(&[
        "submit",
        "pytest",
        "--dir",
        &s(&f.root),
        "--secret-env",
        "T=@/definitely/not/here",
    ]);
    assert_eq!(out.code, 2, "{out}");
    assert_eq!(out.stderr_lines().len(), 1, "{out}");
    assert!(
        out.stderr
            .contains("secret_env T: cannot read /definitely/not/here"),
        "{out}"
    );
}

/// Submits `args` and expects a refusal (exit 2) whose one line says `want`.
fn refused(f: &Fleet, args: &[&str], want: &[&str]) {
    let mut full = vec!["submit"];
    full.extend_from_slice(args);
    let out = f.ctl(&full);
    assert_eq!(out.code, 2, "{out}");
    let line = out.stderr_lines().join("\n");
    for w in want {
        assert!(line.contains(w), "'{w}' not in:\n{out}");
    }
}

#[test]
fn a_job_no_agents_policy_admits_is_refused_at_submit() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    f.add_agent("a2", &[], &[]);
    let suite = f.write_suite("ok", &[("test_ok.py", "def test_ok():\n    pass\n")]);
    let dir = s(&suite);
    let before = f.list().len();
    refused(
        &f,
        &["pytest", "--dir", &dir, "--env", "LD_PRELOAD=/tmp/evil.so"],
        &[
            "no registered agent's policy admits this job",
            "a1, a2: the agent's policy refuses environment variable LD_PRELOAD",
        ],
    );
    refused(
        &f,
        &["pytest", "--dir", &dir, "--", "--rootdir", "/"],
        &["pytest option --rootdir / leaves the source tree"],
    );
    refused(
        &f,
        &["pytest", "--dir", &dir, "--", "-p", "evilplugin"],
        &["does not load pytest plugin '-p evilplugin'"],
    );
    refused(
        &f,
        &["pytest", "--git", "file:///srv/repo", "--ref", "main"],
        &["does not fetch git URL 'file:///srv/repo'"],
    );
    assert_eq!(f.list().len(), before, "nothing was submitted");
}

#[test]
fn a_benchmark_job_is_refused_by_an_agent_with_the_default_policy() {
    let mut f = Fleet::new();
    f.add_agent("strict", &[], &[]);
    let suite = f.write_suite(
        "bench",
        &[("cases/c.json", r#"{"name": "c", "user_input": {}}"#)],
    );
    let dir = s(&suite);
    let command = format!("{} -c pass {{case}}", python().display());
    let bench: Vec<&str> = vec![
        "bench",
        "--dir",
        &dir,
        "--cases",
        "cases",
        "--command",
        &command,
        "--warmup",
        "0",
        "--repetitions",
        "1",
    ];
    refused(
        &f,
        &bench,
        &["strict: the agent's policy runs no benchmark commands (allow_bench_commands = false)"],
    );
    // An agent whose owner allows benchmark commands takes it; the strict one never does.
    f.add_agent("open", &[], ALLOW_BENCH);
    let id = f.submit(&bench);
    let j = f.wait_terminal(&id);
    assert_eq!(j["agent"], "open", "{j:#}");
    // It ran (a case that cannot run, or a refusal, would be `error`).
    assert_ne!(j["state"], "error", "{j:#}");
}

/// The scheduler checks paths as text; a symlink in the checkout that leads
/// out of it is found by the agent, which refuses: the job ends `error` (an
/// infrastructure outcome, not `failed`) with the agent's reason.
#[test]
fn an_agent_that_refuses_anyway_ends_the_job_in_error_with_its_reason() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let suite = f.write_suite("ok", &[("test_ok.py", "def test_ok():\n    pass\n")]);
    let outside = f.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("test_evil.py"), "def test_evil():\n    pass\n").unwrap();
    std::os::unix::fs::symlink(&outside, suite.join("escape")).unwrap();
    let id = f.submit(&["pytest", "--dir", &s(&suite), "--", "escape/test_evil.py"]);
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "error", "{j:#}");
    let reason = j["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(
            "refused by this agent's policy: path argument 'escape/test_evil.py' leaves the source tree"
        ),
        "{j:#}"
    );
    assert_eq!(count(&j, "total"), 0, "nothing ran: {j:#}");
    assert_eq!(j["attempts"], 1, "a refusal is not retried: {j:#}");
}
