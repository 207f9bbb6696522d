//! One function per msctl subcommand. Each returns the process exit code.

use crate::cli::{AgentAction, Cli, Command, Submit};
use crate::follow::follow;
use crate::jobfile::{parse_timeout, JobFile, SourceFile};
use crate::render::{self, counts_line};
use crate::{exit, CtlError};
use msfleet_proto::fleet_client::FleetClient;
use msfleet_proto::{self as pb, job_event, JobState, TestCounts};
use std::io::{IsTerminal, Write};
use tonic::transport::{Channel, Endpoint};

pub async fn run(cli: Cli) -> Result<i32, CtlError> {
    if let Command::Submit(s) = &cli.command {
        if s.dry_run {
            let file = job_file(s)?;
            file.to_spec().map_err(|e| CtlError::input(e.to_string()))?;
            print!("{}", file.to_toml());
            return Ok(exit::OK);
        }
    }
    let mut client = connect(&cli.addr).await?;
    match cli.command {
        Command::Submit(s) => submit(&mut client, *s).await,
        Command::Watch { job, json } => watch(&mut client, &job, json).await,
        Command::Logs { job, follow } => logs(&mut client, &job, follow).await,
        Command::Show { job, json } => {
            let j = client
                .get_job(pb::GetJobRequest { id: job })
                .await?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&render::job_json(&j)).unwrap_or_default()
                );
            } else {
                print!("{}", render::job_text(&j));
            }
            Ok(exit::OK)
        }
        Command::List {
            queue,
            state,
            labels,
            limit,
            json,
        } => {
            let jobs = client
                .list_jobs(pb::ListJobsRequest {
                    queue: queue.unwrap_or_default(),
                    state: state.unwrap_or_default(),
                    labels,
                    limit,
                })
                .await?
                .into_inner()
                .jobs;
            if json {
                let v: Vec<_> = jobs.iter().map(render::job_json).collect();
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                let rows: Vec<Vec<String>> = jobs
                    .iter()
                    .map(|j| {
                        let spec = j.spec.clone().unwrap_or_default();
                        vec![
                            j.id.clone(),
                            j.state().label().to_string(),
                            spec.queue,
                            spec.priority.to_string(),
                            j.agent.clone(),
                            counts_line(&j.tests.unwrap_or_default()),
                            spec.name,
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render::table(
                        &["ID", "STATE", "QUEUE", "PRIO", "AGENT", "TESTS", "NAME"],
                        &rows
                    )
                );
            }
            Ok(exit::OK)
        }
        Command::Cancel { job, wait, json } => {
            let j = client
                .cancel_job(pb::CancelJobRequest { id: job.clone() })
                .await?
                .into_inner();
            let j = if wait && !j.state().is_terminal() {
                follow(&mut client, &job, j.last_event_seq, |_| true).await?;
                client
                    .get_job(pb::GetJobRequest { id: job })
                    .await?
                    .into_inner()
            } else {
                j
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&render::job_json(&j)).unwrap_or_default()
                );
            } else {
                println!("job {}: {}{}", j.id, j.state().label(), reason(&j.reason));
            }
            Ok(exit::OK)
        }
        Command::Agents { json } => {
            let agents = client
                .list_agents(pb::ListAgentsRequest {})
                .await?
                .into_inner()
                .agents;
            if json {
                let v: Vec<_> = agents.iter().map(render::agent_json).collect();
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                let rows: Vec<Vec<String>> = agents
                    .iter()
                    .map(|a| {
                        let caps = a.capabilities.clone().unwrap_or_default();
                        let mut labels: Vec<String> = caps
                            .labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect();
                        labels.sort();
                        vec![
                            a.name.clone(),
                            a.admin().label().to_string(),
                            if a.connected { "online" } else { "offline" }.to_string(),
                            format!("{}/{}", a.running.len(), caps.slots.max(1)),
                            caps.gpus.len().to_string(),
                            caps.npus.len().to_string(),
                            caps.profile.clone(),
                            labels.join(","),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render::table(
                        &[
                            "NAME", "ADMIN", "STATUS", "RUNNING", "GPUS", "NPUS", "PROFILE",
                            "LABELS"
                        ],
                        &rows
                    )
                );
            }
            Ok(exit::OK)
        }
        Command::Agent { action } => {
            let (name, admin) = match action {
                AgentAction::Drain { name } => (name, pb::AgentAdmin::Drained),
                AgentAction::Undrain { name } => (name, pb::AgentAdmin::Active),
                AgentAction::Quarantine { name } => (name, pb::AgentAdmin::Quarantined),
            };
            let a = client
                .set_agent_admin(pb::SetAgentAdminRequest {
                    name,
                    admin: admin as i32,
                })
                .await?
                .into_inner();
            println!("agent {}: {}", a.name, a.admin().label());
            Ok(exit::OK)
        }
        Command::Queues { json } => {
            let queues = client
                .list_queues(pb::ListQueuesRequest {})
                .await?
                .into_inner()
                .queues;
            if json {
                let v: Vec<_> = queues.iter().map(render::queue_json).collect();
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                let rows: Vec<Vec<String>> = queues
                    .iter()
                    .map(|q| {
                        vec![
                            q.name.clone(),
                            q.pending.to_string(),
                            q.running.to_string(),
                            format!("{}s", q.aging_s),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render::table(&["QUEUE", "PENDING", "RUNNING", "AGING"], &rows)
                );
            }
            Ok(exit::OK)
        }
    }
}

fn reason(r: &str) -> String {
    if r.is_empty() {
        String::new()
    } else {
        format!(" ({r})")
    }
}

async fn connect(addr: &str) -> Result<FleetClient<Channel>, CtlError> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| CtlError::input(format!("bad --addr '{addr}': {e}")))?
        .connect_timeout(std::time::Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| CtlError::infra(format!("cannot reach the scheduler at {url}: {e}")))?;
    Ok(FleetClient::new(channel).max_decoding_message_size(pb::MAX_MESSAGE))
}

/// The job file the submit flags describe (flags override `-f`).
fn job_file(s: &Submit) -> Result<JobFile, CtlError> {
    let mut f = match &s.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CtlError::input(format!("cannot read {}: {e}", path.display())))?;
            JobFile::parse(&text)
                .map_err(|e| CtlError::input(format!("{}: {e}", path.display())))?
        }
        None => {
            if s.kind.is_none() {
                return Err(CtlError::input(
                    "say what to submit: `msctl submit pytest --dir PATH -- ARGS` or `msctl submit -f job.toml`",
                ));
            }
            JobFile {
                kind: "pytest".into(),
                ..Default::default()
            }
        }
    };
    if let Some(dir) = &s.dir {
        let abs = std::fs::canonicalize(dir).map_err(|e| {
            CtlError::input(format!(
                "--dir {}: {e}; give an existing directory",
                dir.display()
            ))
        })?;
        if !abs.is_dir() {
            return Err(CtlError::input(format!(
                "--dir {} is not a directory",
                dir.display()
            )));
        }
        f.source = SourceFile {
            dir: Some(abs.display().to_string()),
            ..Default::default()
        };
    }
    if let Some(url) = &s.git {
        f.source = SourceFile {
            git: Some(url.clone()),
            git_ref: s.git_ref.clone(),
            dir: None,
        };
    }
    if f.source == SourceFile::default() {
        return Err(CtlError::input(
            "the job has no source: add --dir PATH or --git URL",
        ));
    }
    if let Some(q) = &s.queue {
        f.queue = q.clone();
    }
    if let Some(p) = s.priority {
        f.priority = p;
    }
    if let Some(r) = &s.require {
        f.requirements = r.clone();
    }
    if let Some(t) = &s.timeout {
        parse_timeout(t).map_err(|e| CtlError::input(format!("--timeout: {e}")))?;
        f.timeout = Some(t.clone());
    }
    if let Some(r) = s.retries {
        f.retries = Some(r);
    }
    if let Some(n) = &s.name {
        f.name = n.clone();
    }
    for kv in &s.env {
        let (k, v) = split_kv(kv, "--env")?;
        f.env.insert(k, v);
    }
    for kv in &s.labels {
        let (k, v) = split_kv(kv, "--label")?;
        f.labels.insert(k, v);
    }
    if !s.pytest_args.is_empty() {
        f.args = s.pytest_args.clone();
    }
    Ok(f)
}

fn split_kv(kv: &str, flag: &str) -> Result<(String, String), CtlError> {
    match kv.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(CtlError::input(format!(
            "{flag} '{kv}' must look like KEY=VALUE"
        ))),
    }
}

async fn submit(client: &mut FleetClient<Channel>, s: Submit) -> Result<i32, CtlError> {
    let file = job_file(&s)?;
    let spec = file.to_spec().map_err(|e| CtlError::input(e.to_string()))?;
    let job = client
        .submit(pb::SubmitRequest { spec: Some(spec) })
        .await?
        .into_inner();
    if s.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&render::job_json(&job)).unwrap_or_default()
        );
    } else if s.wait {
        eprintln!("submitted job {}", job.id);
    } else {
        println!("{}", job.id);
    }
    for w in &job.warnings {
        eprintln!("warning: {w}");
    }
    if s.wait {
        return watch(client, &job.id, false).await;
    }
    Ok(exit::OK)
}

/// Exit code for a finished job.
pub fn exit_code(state: JobState) -> i32 {
    match state {
        JobState::Passed => exit::OK,
        JobState::Failed => exit::TESTS_FAILED,
        _ => exit::INFRA,
    }
}

async fn watch(client: &mut FleetClient<Channel>, job: &str, json: bool) -> Result<i32, CtlError> {
    let tty = std::io::stderr().is_terminal();
    let mut counts = TestCounts::default();
    let mut attempt = 0u32;
    let mut final_state = JobState::Unspecified;
    let mut final_reason = String::new();
    let started = std::time::Instant::now();
    let mut out = std::io::stdout();
    follow(client, job, 0, |ev| {
        if json {
            let _ = writeln!(out, "{}", render::event_json(job, ev));
        }
        match &ev.kind {
            Some(job_event::Kind::State(s)) => {
                if ev.attempt != attempt && s.state() == JobState::Assigned {
                    attempt = ev.attempt;
                    counts = TestCounts::default(); // a new attempt counts afresh
                }
                if tty {
                    eprint!("\r\x1b[K");
                }
                if !json {
                    let _ = writeln!(
                        out,
                        "job {} {}{}",
                        job,
                        s.state().label(),
                        reason(&s.reason)
                    );
                }
                if s.state().is_terminal() {
                    final_state = s.state();
                    final_reason = s.reason.clone();
                }
            }
            Some(job_event::Kind::Test(t)) => {
                counts.record(&t.outcome);
                if !json && !t.outcome.is_empty() {
                    if tty {
                        eprint!("\r\x1b[K");
                    }
                    let when = if matches!(t.when.as_str(), "call" | "") || t.outcome == "skipped" {
                        String::new()
                    } else {
                        format!(" [{}]", t.when)
                    };
                    let _ = writeln!(
                        out,
                        "{:<8} {}{} ({:.2}s)",
                        t.outcome.to_uppercase(),
                        t.nodeid,
                        when,
                        t.duration_s
                    );
                    if matches!(t.outcome.as_str(), "failed" | "error") {
                        for line in t
                            .longrepr
                            .lines()
                            .rev()
                            .take(3)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                        {
                            let _ = writeln!(out, "         {line}");
                        }
                    }
                    let progress = format!("[{} done: {}]", counts.total, counts_line(&counts));
                    if tty {
                        eprint!("{progress}");
                    } else if counts.total % 10 == 0 {
                        let _ = writeln!(out, "{progress}");
                    }
                }
            }
            Some(job_event::Kind::Log(_)) | None => {}
        }
        let _ = out.flush();
        true
    })
    .await?;
    if tty {
        eprint!("\r\x1b[K");
    }
    if final_state == JobState::Unspecified {
        // The stream ended without a final state (should not happen); ask.
        let j = client
            .get_job(pb::GetJobRequest { id: job.into() })
            .await?
            .into_inner();
        final_state = j.state();
        final_reason = j.reason;
    }
    if !json {
        println!(
            "job {job} {}: {} in {:.1}s{}",
            final_state.label(),
            counts_line(&counts),
            started.elapsed().as_secs_f64(),
            reason(&final_reason)
        );
    }
    Ok(exit_code(final_state))
}

async fn logs(
    client: &mut FleetClient<Channel>,
    job: &str,
    follow_on: bool,
) -> Result<i32, CtlError> {
    let upto = if follow_on {
        u64::MAX
    } else {
        client
            .get_job(pb::GetJobRequest { id: job.into() })
            .await?
            .into_inner()
            .last_event_seq
    };
    if upto == 0 {
        return Ok(exit::OK);
    }
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    follow(client, job, 0, |ev| {
        if let Some(job_event::Kind::Log(l)) = &ev.kind {
            let _ = if l.stream == "stderr" {
                stderr.write_all(&l.data)
            } else {
                stdout.write_all(&l.data).and_then(|_| stdout.flush())
            };
        }
        ev.seq < upto
    })
    .await?;
    Ok(exit::OK)
}
