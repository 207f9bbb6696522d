//! Deadlines everywhere and an agent that keeps its promises (issue 10,
//! parts 3 and 5), with real msched / msagent / msctl processes: a hung git
//! fetch is cut by the job's timeout and by cancel, two jobs of one git
//! repository share its cache safely, an agent refuses an assignment beyond
//! its `--slots`, and a runner that panics ends its job `error` while the
//! agent keeps taking work.

mod common;

use common::*;
use msfleet_proto as pb;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// An `http://127.0.0.1:PORT/repo.git` URL whose server accepts every
/// connection and never answers (a hung fetch).
fn hung_git_server() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming() {
            match c {
                Ok(s) => held.push(s),
                Err(_) => return,
            }
        }
    });
    format!("http://127.0.0.1:{port}/repo.git")
}

/// Agent flags that let it fetch from the local hung server.
const ALLOW_LOCAL_HTTP_GIT: &[&str] = &["--allow-git", "http://127.0.0.1:**"];

/// Live (not zombie) processes whose command line mentions `needle`.
fn procs_naming(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            found.push(cmd);
        }
    }
    found
}

fn wait_no_git_naming(url: &str) {
    wait_for(
        Duration::from_secs(10),
        "no git process left",
        || procs_naming(url).is_empty().then_some(()),
        || format!("{:?}", procs_naming(url)),
    );
}

/// A hung git fetch is part of the attempt: the job's --timeout cuts it
/// (`timed_out`, naming the checkout), and in another job `msctl cancel`
/// does (`cancelled`); no git process is left either time, and the agent
/// goes on taking work.
#[test]
fn a_hung_git_fetch_is_cut_by_the_jobs_timeout_and_by_cancel() {
    let url = hung_git_server();
    let mut f = Fleet::new();
    f.add_agent("a1", &[], ALLOW_LOCAL_HTTP_GIT);

    let t0 = Instant::now();
    let id = f.submit(&["pytest", "--git", &url, "--ref", "main", "--timeout", "3s"]);
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "timed_out", "{j:#}");
    assert_eq!(
        j["reason"],
        format!("timed out after 3s (in the git clone of {url})"),
        "{j:#}"
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    wait_no_git_naming(&url);

    let id = f.submit(&["pytest", "--git", &url, "--ref", "main"]);
    f.wait_state(&id, "running");
    wait_for(
        Duration::from_secs(20),
        "git to hang on the fetch",
        || (!procs_naming(&url).is_empty()).then_some(()),
        || "no git process names the URL".into(),
    );
    let out = f.ctl(&["cancel", &id, "--wait"]);
    assert_eq!(out.code, 0, "{out}");
    let j = f.show(&id);
    assert_eq!(j["state"], "cancelled", "{j:#}");
    wait_no_git_naming(&url);

    // The slot is free again.
    let quick = s(&f.write_suite("quick", &[("test_quick.py", "def test_ok():\n    pass\n")]));
    let out = f.ctl(&["submit", "pytest", "--dir", &quick, "--wait"]);
    assert_eq!(out.code, 0, "{out}");
}

/// git's own timeout (`msagent --git-timeout`) cuts a hung fetch inside a
/// job whose own timeout is far off: the job ends `error` naming git and the
/// setting, and no git process is left.
#[test]
fn the_agents_git_timeout_cuts_a_hung_fetch_and_names_git() {
    let url = hung_git_server();
    let mut f = Fleet::new();
    let mut extra = ALLOW_LOCAL_HTTP_GIT.to_vec();
    extra.extend(["--git-timeout", "1s"]);
    f.add_agent("a1", &[], &extra);
    let id = f.submit(&["pytest", "--git", &url, "--ref", "main", "--timeout", "5m"]);
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "error", "{j:#}");
    assert_eq!(
        j["reason"],
        format!(
            "git clone failed for {url}: git did not finish within 1s (the agent's --git-timeout); killed"
        ),
        "{j:#}"
    );
    wait_no_git_naming(&url);
}

/// Two jobs of one git repository at once on a two-slot agent both check it
/// out and pass: the cache of the repository is locked while one clones it.
#[test]
fn two_jobs_on_the_same_git_repo_at_once_both_pass() {
    let mut f = Fleet::new();
    let mut extra = ALLOW_FILE_GIT.to_vec();
    extra.extend(["--slots", "2"]);
    f.add_agent("a1", &[], &extra);
    let repo = f.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("test_from_git.py"),
        "import time\n\ndef test_a():\n    time.sleep(0.5)\n\ndef test_b():\n    pass\n",
    )
    .unwrap();
    let url = git_repo(&repo, "two tests");
    let ids: Vec<String> = (0..2)
        .map(|_| f.submit(&["pytest", "--git", &url, "--ref", "main"]))
        .collect();
    for id in &ids {
        let j = f.wait_terminal(id);
        assert_eq!(j["state"], "passed", "{j:#}");
        assert_eq!(count(&j, "passed"), 2, "{j:#}");
        assert_eq!(j["attempts"], 1, "{j:#}");
    }
}

/// A runner that panics (a test-only fault, debug builds) ends its job
/// `error` naming the panic instead of leaving it running, and the agent
/// goes on to pass the next job.
#[test]
fn an_injected_runner_panic_ends_the_job_in_error_and_the_agent_keeps_working() {
    if !cfg!(debug_assertions) {
        // The binaries of this profile are release builds: they never read MSAGENT_FAULT.
        eprintln!("release build: MSAGENT_FAULT is compiled into debug builds only; skipped");
        return;
    }
    let mut f = Fleet::new();
    f.add_agent_with_env("a1", &[], &[], &[("MSAGENT_FAULT", "panic-in-runner")]);
    let quick = s(&f.write_suite("quick", &[("test_quick.py", "def test_ok():\n    pass\n")]));
    let out = f.ctl(&["submit", "pytest", "--dir", &quick, "--wait"]);
    assert_eq!(out.code, 3, "an infrastructure error:\n{out}");
    let id = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("submitted job "))
        .map(|id| id.trim().to_string())
        .unwrap_or_else(|| panic!("no 'submitted job N' line:\n{out}"));
    let j = f.show(&id);
    assert_eq!(j["state"], "error", "{j:#}");
    assert_eq!(
        j["reason"], "agent runner panicked: injected fault (MSAGENT_FAULT=panic-in-runner)",
        "{j:#}"
    );
    let out = f.ctl(&["submit", "pytest", "--dir", &quick, "--wait"]);
    assert_eq!(out.code, 0, "the agent keeps taking work:\n{out}");
    let a = f.agent_json("a1").expect("listed");
    assert_eq!(a["connected"], true, "{a:#}");
}

// ------------------------------------------------------------ slots, raw protocol

/// A stand-in scheduler: registers the agent, sends it the assignments it
/// was given at once, acknowledges every update and hands each message the
/// agent sent to the test.
struct FakeScheduler {
    seen: tokio::sync::mpsc::UnboundedSender<pb::AgentMessage>,
    assign: Vec<pb::Assignment>,
}

#[tonic::async_trait]
impl pb::agent_link_server::AgentLink for FakeScheduler {
    type SessionStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::SchedulerMessage, tonic::Status>>;

    async fn session(
        &self,
        req: tonic::Request<tonic::Streaming<pb::AgentMessage>>,
    ) -> Result<tonic::Response<Self::SessionStream>, tonic::Status> {
        use pb::scheduler_message::Msg;
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let seen = self.seen.clone();
        let assign = self.assign.clone();
        tokio::spawn(async move {
            let say = |m: Msg| Ok(pb::SchedulerMessage { msg: Some(m) });
            match inbound.message().await {
                Ok(Some(m)) => {
                    let _ = seen.send(m);
                }
                _ => return,
            }
            let registered = pb::Registered {
                heartbeat_interval_ms: 500,
                lease_timeout_ms: 10_000,
                resumed: Vec::new(),
            };
            let _ = tx.send(say(Msg::Registered(registered))).await;
            for a in assign {
                let _ = tx.send(say(Msg::Assign(a))).await;
            }
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(pb::agent_message::Msg::Update(u)) = &m.msg {
                    let ack = pb::Ack {
                        attempt: u.attempt.clone(),
                        seq: u.seq,
                    };
                    let _ = tx.send(say(Msg::Ack(ack))).await;
                }
                let _ = seen.send(m);
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }

    async fn get_baselines(
        &self,
        _req: tonic::Request<pb::GetBaselinesRequest>,
    ) -> Result<tonic::Response<pb::GetBaselinesResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no baselines here"))
    }
}

/// Kills the msagent it holds when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An msagent with `--slots 1` sent two assignments at once runs the first
/// and refuses the second, saying so: `Finished{REQUEUE, refused}` naming
/// its slots, before the second ever starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_an_assignment_beyond_its_slots_and_says_so() {
    use pb::task_update::Kind;
    let dir = tempfile::Builder::new()
        .prefix("msfleet-e2e-")
        .tempdir()
        .unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let suite = root.join("suite");
    std::fs::create_dir_all(&suite).unwrap();
    std::fs::write(
        suite.join("test_slow.py"),
        "import time\n\ndef test_slow():\n    time.sleep(3)\n",
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let assignment = |task: &str| pb::Assignment {
        attempt: Some(pb::AttemptRef {
            task_id: task.into(),
            attempt: 1,
            epoch: 1,
        }),
        job_id: task.into(),
        spec: Some(pb::JobSpec {
            kind: "pytest".into(),
            source: Some(pb::Source {
                kind: Some(pb::source::Kind::Dir(s(&suite))),
            }),
            timeout_ms: Some(60_000),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let fake = FakeScheduler {
        seen: seen_tx,
        assign: vec![assignment("1"), assignment("2")],
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::agent_link_server::AgentLinkServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let log = std::fs::File::create(root.join("msagent.log")).unwrap();
    let _agent = Killed(
        Command::new(bin("msagent"))
            .args(["--scheduler", &format!("http://{addr}")])
            .args(["--name", "h1", "--slots", "1", "--kill-grace", "1s"])
            .args(["--work-dir", &s(&root.join("work"))])
            .args(["--root", &s(&root)])
            .args(["--python", &s(&python())])
            .env_remove("MSFLEET_AGENT_TOKEN_FILE")
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("msagent starts"),
    );
    let mut refused = None;
    let mut first_started = false;
    let mut second: Vec<u64> = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while refused.is_none() || !first_started {
        let m = tokio::time::timeout_at(until, seen.recv())
            .await
            .unwrap_or_else(|_| {
                let log = std::fs::read_to_string(root.join("msagent.log")).unwrap_or_default();
                panic!("no refusal within 60 s; msagent log:\n{log}")
            })
            .expect("the fake scheduler runs");
        let Some(pb::agent_message::Msg::Update(u)) = m.msg else {
            continue;
        };
        let task = u
            .attempt
            .as_ref()
            .map(|a| a.task_id.clone())
            .unwrap_or_default();
        match (task.as_str(), u.kind) {
            ("1", Some(Kind::Started(_))) => first_started = true,
            ("2", Some(Kind::Finished(f))) => {
                second.push(u.seq);
                refused = Some(f);
            }
            ("2", _) => second.push(u.seq),
            _ => {}
        }
    }
    let f = refused.unwrap();
    assert_eq!(
        second,
        vec![1],
        "the refusal is all the second attempt sent"
    );
    assert_eq!(f.outcome(), pb::Outcome::Requeue, "{f:?}");
    assert!(f.refused, "{f:?}");
    assert_eq!(
        f.reason,
        "agent h1 has no free slot: it runs 1 attempt on its 1 slot (--slots)"
    );
}
