//! One function per msctl subcommand. Each returns the process exit code.

use crate::argv;
use crate::cli::{
    AgentAction, BaselineAction, Cli, Command, ScheduleAction, ScheduleAdd, Submit, TestAction,
};
use crate::export::{self, Outcome};
use crate::follow::follow;
use crate::jobfile::{parse_timeout, ExtractFile, JobFile, SourceFile};
use crate::progress::Progress;
use crate::render::{self, counts_line};
use crate::{exit, Client, CtlError};
use msfleet_proto::client::{self as client, Bearer, ConnectError, Target};
use msfleet_proto::fleet_client::FleetClient;
use msfleet_proto::{self as pb, job_event, CaseResult, JobState, TestCounts};
use std::io::Write;
use std::path::{Path, PathBuf};

pub async fn run(cli: Cli) -> Result<i32, CtlError> {
    let target = target(&cli);
    match run_command(cli).await {
        Err(e) if e.code == exit::INFRA => Err(transport_hint(e, &target).await),
        other => other,
    }
}

/// A failed call that shows a mistake only the user can fix says so: plain
/// text against a TLS scheduler shows up only at the first call, as one of
/// several transport errors, so the port is asked whether it speaks TLS.
async fn transport_hint(e: CtlError, target: &Target) -> CtlError {
    if let ConnectError::Config(m) = target.explain(&e.message) {
        return CtlError::input(m);
    }
    if target.serves_tls_instead().await {
        return CtlError::input(target.plain_text_to_tls().to_string());
    }
    e
}

fn target(cli: &Cli) -> Target {
    Target {
        addr: cli.addr.clone(),
        ca: cli.ca.clone(),
        identity: None,
    }
}

async fn run_command(cli: Cli) -> Result<i32, CtlError> {
    match &cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "msctl", &mut script);
            crate::out!("{}", String::from_utf8_lossy(&script));
            return Ok(exit::OK);
        }
        Command::Man => {
            use clap::CommandFactory;
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map_err(|e| CtlError::infra(format!("rendering the man page: {e}")))?;
            crate::out!("{}", String::from_utf8_lossy(&page));
            return Ok(exit::OK);
        }
        _ => {}
    }
    if let Command::Submit(s) = &cli.command {
        if s.dry_run {
            let file = job_file(s)?;
            file.to_spec().map_err(|e| CtlError::input(e.to_string()))?;
            crate::out!("{}", file.redacted().to_toml());
            return Ok(exit::OK);
        }
    }
    if let Command::Schedule {
        action: ScheduleAction::Add(a),
    } = &cli.command
    {
        // A bad job file is bad input whether or not the scheduler is up.
        let schedule = new_schedule(a)?;
        let mut client = connect(&cli).await?;
        return schedule_add(&mut client, schedule, a.json).await;
    }
    if let Command::Dashboard {
        http,
        ready_file,
        open,
    } = &cli.command
    {
        let http = match (http, ready_file) {
            (Some(h), _) => h.clone(),
            (None, Some(path)) => crate::dashboard::http_from_ready_file(path)?,
            (None, None) => {
                return Err(CtlError::input(
                    "say where the dashboard is: --http HOST:PORT or --ready-file FILE",
                ))
            }
        };
        let tls = cli.addr.trim().starts_with("https://");
        let link = crate::dashboard::login_link(&http, tls, &token(&cli)?.unwrap_or_default())?;
        crate::out!("{link}");
        if *open {
            crate::dashboard::open(&link)?;
        }
        return Ok(exit::OK);
    }
    let mut client = connect(&cli).await?;
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
                print_json(&render::job_json(&j));
            } else {
                crate::out!("{}", render::job_text(&j));
            }
            Ok(exit::OK)
        }
        Command::List {
            queue,
            state,
            labels,
            submitter,
            limit,
            cursor,
            json,
        } => {
            let page = client
                .list_jobs(pb::ListJobsRequest {
                    queue: queue.unwrap_or_default(),
                    state: state.unwrap_or_default(),
                    labels,
                    limit,
                    cursor: cursor.unwrap_or_default(),
                    submitter: submitter.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let jobs = page.jobs;
            if !page.next_cursor.is_empty() {
                eprintln!(
                    "more jobs: msctl list --cursor {} (with the same filters)",
                    page.next_cursor
                );
            }
            if json {
                print_json(&serde_json::json!({
                    "jobs": jobs.iter().map(render::job_json).collect::<Vec<_>>(),
                    "next_cursor": page.next_cursor,
                }));
            } else {
                let rows: Vec<Vec<String>> = jobs
                    .iter()
                    .map(|j| {
                        let spec = j.spec.clone().unwrap_or_default();
                        let results = if spec.kind == "benchmark" {
                            render::cases_summary(&j.cases)
                        } else {
                            counts_line(&j.tests.unwrap_or_default())
                        };
                        vec![
                            j.id.clone(),
                            j.state().label().to_string(),
                            spec.queue,
                            spec.priority.to_string(),
                            j.agent.clone(),
                            results,
                            spec.name,
                        ]
                    })
                    .collect();
                crate::out!(
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
                print_json(&render::job_json(&j));
            } else {
                crate::outln!("job {}: {}{}", j.id, j.state().label(), reason(&j.reason));
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
                print_json(&agents.iter().map(render::agent_json).collect());
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
                        let state = if a.state_reason.is_empty() {
                            a.state.clone()
                        } else {
                            format!("{} ({})", a.state, a.state_reason)
                        };
                        vec![
                            a.name.clone(),
                            state,
                            format!("{}/{}", a.running.len(), caps.slots.max(1)),
                            render::devices_busy(a, "gpu"),
                            render::devices_busy(a, "npu"),
                            caps.profile.clone(),
                            labels.join(","),
                        ]
                    })
                    .collect();
                crate::out!(
                    "{}",
                    render::table(
                        &["NAME", "STATE", "RUNNING", "GPUS", "NPUS", "PROFILE", "LABELS"],
                        &rows
                    )
                );
            }
            Ok(exit::OK)
        }
        Command::Completions { .. } | Command::Man | Command::Dashboard { .. } => Ok(exit::OK), // answered above, offline
        Command::Token { action } => crate::tokens::people(&mut client, action).await,
        Command::Agent {
            action: AgentAction::Token { action },
        } => crate::tokens::agents(&mut client, action).await,
        Command::Agent {
            action: AgentAction::Forget { name },
        } => {
            let a = client
                .forget_agent(pb::ForgetAgentRequest { name })
                .await?
                .into_inner();
            crate::outln!("agent {}: forgotten", a.name);
            Ok(exit::OK)
        }
        Command::Agent {
            action: AgentAction::Check { name, json },
        } => {
            let job = client
                .check_agent(pb::CheckAgentRequest { name })
                .await?
                .into_inner();
            if json {
                crate::outln!("{}", render::job_json(&job));
            } else {
                eprintln!("submitted health check job {}", job.id);
            }
            let code = watch(&mut client, &job.id, json).await?;
            if !json {
                // The findings, one line per rule the agent checked.
                logs(&mut client, &job.id, false).await?;
            }
            Ok(code)
        }
        Command::Agent { action } => {
            let (name, admin, deadline, reason) = match action {
                AgentAction::Drain { name, deadline } => {
                    let deadline = deadline
                        .as_deref()
                        .map(parse_timeout)
                        .transpose()
                        .map_err(|e| CtlError::input(format!("--deadline: {e}")))?;
                    (
                        name,
                        pb::AgentAdmin::Drained,
                        deadline.unwrap_or(0),
                        String::new(),
                    )
                }
                AgentAction::Undrain { name } => (name, pb::AgentAdmin::Active, 0, String::new()),
                AgentAction::Quarantine { name, reason } => {
                    (name, pb::AgentAdmin::Quarantined, 0, reason)
                }
                AgentAction::Token { .. }
                | AgentAction::Forget { .. }
                | AgentAction::Check { .. } => {
                    unreachable!("matched above")
                }
            };
            let a = client
                .set_agent_admin(pb::SetAgentAdminRequest {
                    name,
                    admin: admin as i32,
                    drain_deadline_in_ms: deadline.unsigned_abs(),
                    reason,
                })
                .await?
                .into_inner();
            match (a.drain_deadline_ms, a.state_reason.as_str()) {
                (0, "") => crate::outln!("agent {}: {}", a.name, a.admin().label()),
                (0, why) => crate::outln!("agent {}: {} ({why})", a.name, a.admin().label()),
                (ms, _) => crate::outln!(
                    "agent {}: {} (deadline {})",
                    a.name,
                    a.admin().label(),
                    render::time_ms(ms)
                ),
            }
            Ok(exit::OK)
        }
        Command::Queues { json } => {
            let queues = client
                .list_queues(pb::ListQueuesRequest {})
                .await?
                .into_inner()
                .queues;
            if json {
                print_json(&queues.iter().map(render::queue_json).collect());
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
                crate::out!(
                    "{}",
                    render::table(&["QUEUE", "PENDING", "RUNNING", "AGING"], &rows)
                );
            }
            Ok(exit::OK)
        }
        Command::Baseline { action } => match action {
            BaselineAction::List {
                case,
                profile,
                json,
            } => baseline_list(&mut client, case, profile, json).await,
            BaselineAction::Show {
                case,
                profile,
                json,
            } => baseline_show(&mut client, case, profile, json).await,
            BaselineAction::Accept { job, by, json } => {
                baseline_accept(&mut client, job, by, json).await
            }
            BaselineAction::Export {
                dir,
                profile,
                metric,
            } => baseline_export(&mut client, &dir, profile, metric).await,
        },
        Command::Schedule { action } => schedule(&mut client, action).await,
        Command::Test { action } => test_command(&mut client, action).await,
        Command::Report {
            job,
            json,
            junit,
            markdown,
            all,
        } => crate::report::run(&mut client, &job, json, junit.as_deref(), markdown, all).await,
    }
}

fn reason(r: &str) -> String {
    if r.is_empty() {
        String::new()
    } else {
        format!(" ({r})")
    }
}

/// The caller's token: `--token-file`, else `$MSFLEET_TOKEN`, else
/// `~/.config/msfleet/token`, else none (the scheduler then says what to do).
fn token(cli: &Cli) -> Result<Option<String>, CtlError> {
    let bad = |e: ConnectError| CtlError::input(e.to_string());
    if let Some(path) = &cli.token_file {
        return client::read_token_file(path).map(Some).map_err(bad);
    }
    if let Some(t) = std::env::var("MSFLEET_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Ok(Some(t.trim().to_string()));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    match home.map(|h| h.join(".config/msfleet/token")) {
        Some(path) if path.is_file() => client::read_token_file(&path).map(Some).map_err(bad),
        _ => Ok(None),
    }
}

async fn connect(cli: &Cli) -> Result<Client, CtlError> {
    let target = target(cli);
    let bearer = Bearer::new(token(cli)?.as_deref()).map_err(|e| CtlError::input(e.to_string()))?;
    let channel = target.connect().await.map_err(|e| match e {
        ConnectError::Config(m) => CtlError::input(m),
        ConnectError::Unreachable(m) => CtlError::infra(m),
    })?;
    Ok(FleetClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(pb::MAX_MESSAGE)
        .max_encoding_message_size(pb::MAX_MESSAGE))
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
            let kind = match s.kind.as_deref() {
                Some("pytest") => "pytest",
                Some("bench" | "benchmark") => "benchmark",
                _ => {
                    return Err(CtlError::input(
                        "say what to submit: `msctl submit pytest --dir PATH -- ARGS`, \
                         `msctl submit bench --cases DIR --command '...'` or `msctl submit -f job.toml`",
                    ))
                }
            };
            JobFile {
                kind: kind.into(),
                ..Default::default()
            }
        }
    };
    let bench = f.kind == "benchmark";
    let bench_flags = s.bench_flags();
    if !bench && !bench_flags.is_empty() {
        return Err(CtlError::input(format!(
            "{}: only for benchmark jobs (`msctl submit bench ...`)",
            bench_flags.join(", ")
        )));
    }
    if bench && !s.pytest_args.is_empty() {
        return Err(CtlError::input(
            "arguments after -- are pytest arguments; a benchmark job runs --command '...'",
        ));
    }
    if let Some(dir) = &s.dir {
        f.source = SourceFile {
            dir: Some(agent_path(dir)?.display().to_string()),
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
    if bench {
        apply_bench_flags(&mut f, s)?;
    }
    if f.source == SourceFile::default() {
        return Err(CtlError::input(if bench {
            "the job has no source: add --cases DIR (a local case directory), --dir PATH or --git URL"
        } else {
            "the job has no source: add --dir PATH or --git URL"
        }));
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
    if let Some(r) = s.agent_lost_retries {
        f.agent_lost_retries = Some(r);
    }
    if let Some(m) = &s.memory {
        msfleet_proto::memory::parse(m).map_err(|e| CtlError::input(format!("--memory: {e}")))?;
        f.memory = Some(m.clone());
    }
    if let Some(n) = s.gpus {
        f.gpus = n;
    }
    if let Some(n) = s.npus {
        f.npus = n;
    }
    for (flag, given, field) in [
        ("--gpu-memory", &s.gpu_memory, &mut f.gpu_memory),
        ("--npu-memory", &s.npu_memory, &mut f.npu_memory),
    ] {
        if let Some(m) = given {
            msfleet_proto::memory::parse(m).map_err(|e| CtlError::input(format!("{flag}: {e}")))?;
            *field = Some(m.clone());
        }
    }
    let env_flags = !s.setup.is_empty()
        || !s.requirements_files.is_empty()
        || s.install_project.is_some()
        || s.system_site_packages;
    if env_flags {
        let e = f.environment.get_or_insert_with(Default::default);
        e.setup.extend(s.setup.iter().cloned());
        e.requirements.extend(s.requirements_files.iter().cloned());
        if let Some(x) = &s.install_project {
            e.install_project = Some(x.clone());
        }
        e.system_site_packages |= s.system_site_packages;
    }
    f.caches.extend(s.caches.iter().cloned());
    if let Some(t) = &s.expire_after {
        parse_timeout(t).map_err(|e| CtlError::input(format!("--expire-after: {e}")))?;
        f.expire_after = Some(t.clone());
    }
    if s.allow_unmatched {
        f.allow_unmatched = true;
    }
    if let Some(n) = &s.name {
        f.name = n.clone();
    }
    if let Some(n) = s.retry_failed {
        f.retry_failed = n;
    }
    if let Some(fan) = &s.fanout {
        f.fanout = fan.clone();
    }
    if let Some(n) = s.shards {
        f.shards = n;
    }
    if let Some(k) = &s.dedup_key {
        if k.trim().is_empty() {
            return Err(CtlError::input("--dedup-key is empty"));
        }
        f.dedup_key = k.clone();
    }
    for kv in &s.env {
        let (k, v) = split_kv(kv, "--env")?;
        f.env.insert(k, v);
    }
    for kv in &s.secret_env {
        let (k, v) = split_kv(kv, "--secret-env")?;
        f.secret_env.insert(k, v);
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

/// `--dir` names a directory on the agent, not here: an absolute path goes
/// through as given (the scheduler and the agent check it); a relative one is
/// resolved against the current directory, lexically (`.` and `..` folded),
/// for the common case of submitting from a checkout the agents share.
fn agent_path(path: &Path) -> Result<PathBuf, CtlError> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| {
        CtlError::input(format!(
            "--dir {}: the current directory is unreadable ({e}); give an absolute path",
            path.display()
        ))
    })?;
    let mut out = PathBuf::new();
    for c in cwd.join(path).components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Applies the bench flags to the job file's `[benchmark]` table. With a
/// source (--dir, --git or the file's), `--cases` are workspace paths; without
/// one, a single local `--cases` directory (or file) becomes the source.
fn apply_bench_flags(f: &mut JobFile, s: &Submit) -> Result<(), CtlError> {
    let has_source = f.source != SourceFile::default();
    let b = f.benchmark.get_or_insert_with(Default::default);
    if let Some(cmd) = &s.command {
        let argv = argv::split(cmd).map_err(|e| CtlError::input(format!("--command: {e}")))?;
        if argv.is_empty() {
            return Err(CtlError::input(
                "--command is empty; e.g. --command 'python run_case.py {case}'",
            ));
        }
        b.command = argv;
    }
    if let Some(n) = s.warmup {
        b.warmup = Some(n);
    }
    if let Some(n) = s.repetitions {
        b.repetitions = Some(n);
    }
    if let Some(m) = &s.metric {
        b.metric = m.clone();
    }
    if s.trusted {
        b.trusted = true;
    }
    if !s.extract.is_empty() {
        b.extract = s
            .extract
            .iter()
            .map(|e| match e.split_once('=') {
                Some((metric, pattern)) if !metric.trim().is_empty() => Ok(ExtractFile {
                    metric: metric.trim().to_string(),
                    pattern: pattern.to_string(),
                }),
                _ => Err(CtlError::input(format!(
                    "--extract '{e}' must look like METRIC=REGEX, e.g. 'analytic_s=took ([\\d.]+) (ms|s)'"
                ))),
            })
            .collect::<Result<_, _>>()?;
    }
    if s.cases.is_empty() {
        return Ok(());
    }
    if has_source {
        if let Some(abs) = s.cases.iter().find(|c| Path::new(c).is_absolute()) {
            return Err(CtlError::input(format!(
                "--cases {abs}: with a source (--dir, --git or the job file's), cases are \
                 paths relative to the workspace"
            )));
        }
        b.cases = s.cases.clone();
        return Ok(());
    }
    let [local] = s.cases.as_slice() else {
        return Err(CtlError::input(
            "several --cases need a workspace: add --dir PATH or --git URL \
             (the cases are then paths relative to it)",
        ));
    };
    let abs = std::fs::canonicalize(local).map_err(|e| {
        CtlError::input(format!(
            "--cases {local}: {e}; give an existing case directory (or add --dir/--git \
             to name cases inside a workspace)"
        ))
    })?;
    let (dir, case) = if abs.is_dir() {
        (abs, ".".to_string())
    } else {
        match (abs.parent(), abs.file_name()) {
            (Some(parent), Some(name)) => {
                (parent.to_path_buf(), name.to_string_lossy().into_owned())
            }
            _ => {
                return Err(CtlError::input(format!(
                    "--cases {local} is neither a directory nor a case file"
                )))
            }
        }
    };
    b.cases = vec![case];
    f.source = SourceFile {
        dir: Some(dir.display().to_string()),
        ..Default::default()
    };
    Ok(())
}

fn split_kv(kv: &str, flag: &str) -> Result<(String, String), CtlError> {
    match kv.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(CtlError::input(format!(
            "{flag} '{kv}' must look like KEY=VALUE"
        ))),
    }
}

async fn submit(client: &mut Client, s: Submit) -> Result<i32, CtlError> {
    use msfleet_proto::telemetry::opentelemetry::trace::{
        FutureExt as _, SpanKind, Status as SpanStatus, TraceContextExt as _, Tracer as _,
    };
    use msfleet_proto::telemetry::opentelemetry::{global, Context, KeyValue};
    let file = job_file(&s)?;
    let spec = file.to_spec().map_err(|e| CtlError::input(e.to_string()))?;
    let spec_key = spec.dedup_key.clone();
    // The trace's root when traces are exported (the global tracer is a no-op otherwise):
    // the scheduler makes the job's span its child.
    let tracer = global::tracer("msctl");
    let span = tracer
        .span_builder("msctl submit")
        .with_kind(SpanKind::Client)
        .with_attributes([KeyValue::new("cicd.pipeline.name", spec.name.clone())])
        .start(&tracer);
    let cx = Context::current_with_span(span);
    let mut request = tonic::Request::new(pb::SubmitRequest { spec: Some(spec) });
    if msfleet_proto::telemetry::enabled() {
        msfleet_proto::telemetry::inject(&cx, request.metadata_mut());
    }
    let result = submit_and_follow(client, &s, &spec_key, request)
        .with_context(cx.clone())
        .await;
    let span = cx.span();
    match &result {
        Ok((id, code)) => {
            span.set_attribute(KeyValue::new("cicd.pipeline.run.id", id.clone()));
            span.set_attribute(KeyValue::new("msctl.exit_code", i64::from(*code)));
        }
        Err(e) => span.set_status(SpanStatus::error(e.to_string())),
    }
    span.end();
    result.map(|(_, code)| code)
}

/// `submit`'s call and, with `--wait`, its following of the job: the job id and the exit code.
async fn submit_and_follow(
    client: &mut Client,
    s: &Submit,
    spec_key: &str,
    request: tonic::Request<pb::SubmitRequest>,
) -> Result<(String, i32), CtlError> {
    let job = client.submit(request).await?.into_inner();
    if s.json && s.wait {
        // NDJSON: the job, then one object per event (as `watch --json`).
        crate::outln!("{}", render::job_json(&job));
    } else if s.json {
        print_json(&render::job_json(&job));
    } else if s.wait && !job.deduplicated {
        eprintln!("submitted job {}", job.id);
    } else {
        crate::outln!("{}", job.id);
    }
    if job.deduplicated {
        eprintln!("msctl: {}", dedup_note(&job, spec_key));
    }
    for w in &job.warnings {
        eprintln!("warning: {w}");
    }
    if s.wait {
        let code = watch(client, &job.id, s.json).await?;
        return Ok((job.id, code));
    }
    Ok((job.id, exit::OK))
}

/// `job 12 already exists for dedup key K (submitted 2026-11-23T02:00:03Z)`.
pub fn dedup_note(job: &pb::Job, sent_key: &str) -> String {
    let key = job
        .spec
        .as_ref()
        .map(|s| s.dedup_key.as_str())
        .filter(|k| !k.is_empty())
        .unwrap_or(sent_key);
    format!(
        "job {} already exists for dedup key {key} (submitted {})",
        job.id,
        render::time_ms(job.submitted_at_ms)
    )
}

/// The schedule `schedule add` asks for: its job from the job file (with
/// `--queue`/`--require` applied), checked as `submit -f` checks it.
async fn test_command(client: &mut Client, action: TestAction) -> Result<i32, CtlError> {
    let TestAction::History {
        test_id,
        profile,
        limit,
        json,
    } = action;
    let runs = client
        .test_history(pb::TestHistoryRequest {
            test_id: test_id.clone(),
            profile: profile.unwrap_or_default(),
            limit,
        })
        .await?
        .into_inner()
        .runs;
    let runs = crate::report::run_verdicts(&runs);
    if json {
        print_json(&runs.iter().map(render::test_run_json).collect());
    } else if runs.is_empty() {
        crate::outln!("no recorded runs of {test_id}");
    } else {
        crate::out!("{}", render::test_history_text(&test_id, &runs));
    }
    Ok(exit::OK)
}

fn new_schedule(a: &ScheduleAdd) -> Result<pb::Schedule, CtlError> {
    let path = &a.file;
    let text = std::fs::read_to_string(path)
        .map_err(|e| CtlError::input(format!("cannot read {}: {e}", path.display())))?;
    let mut f =
        JobFile::parse(&text).map_err(|e| CtlError::input(format!("{}: {e}", path.display())))?;
    if let Some(q) = &a.queue {
        f.queue = q.clone();
    }
    if let Some(r) = &a.require {
        f.requirements = r.clone();
    }
    let spec = f
        .to_spec()
        .map_err(|e| CtlError::input(format!("{}: {e}", path.display())))?;
    if a.name.trim().is_empty() {
        return Err(CtlError::input("the schedule needs a name"));
    }
    Ok(pb::Schedule {
        name: a.name.clone(),
        cron: a.cron.clone(),
        tz: a.tz.clone(),
        spec: Some(spec),
        misfire: a.misfire.clone(),
        overlap: a.overlap.clone(),
        ..Default::default()
    })
}

async fn schedule_add(
    client: &mut Client,
    schedule: pb::Schedule,
    json: bool,
) -> Result<i32, CtlError> {
    let s = client.add_schedule(schedule).await?.into_inner();
    if json {
        print_json(&render::schedule_json(&s));
    } else {
        crate::outln!("added schedule {}", render::schedule_line(&s));
    }
    Ok(exit::OK)
}

async fn schedule(client: &mut Client, action: ScheduleAction) -> Result<i32, CtlError> {
    let name = |name: String| pb::ScheduleName { name };
    let (s, json, verb) = match action {
        ScheduleAction::Add(a) => {
            // Normally handled before connecting (see `run`).
            let json = a.json;
            return schedule_add(client, new_schedule(&a)?, json).await;
        }
        ScheduleAction::List { json } => {
            let schedules = client
                .list_schedules(pb::ListSchedulesRequest {})
                .await?
                .into_inner()
                .schedules;
            if json {
                print_json(&schedules.iter().map(render::schedule_json).collect());
            } else {
                crate::out!("{}", render::schedules_table(&schedules));
            }
            return Ok(exit::OK);
        }
        ScheduleAction::Show { name: n, json } => {
            let s = client.get_schedule(name(n)).await?.into_inner();
            if json {
                print_json(&render::schedule_json(&s));
            } else {
                crate::out!("{}", render::schedule_text(&s));
            }
            return Ok(exit::OK);
        }
        ScheduleAction::RunNow {
            name: n,
            wait,
            json,
        } => {
            let job = client.run_schedule_now(name(n.clone())).await?.into_inner();
            if json {
                print_json(&render::job_json(&job));
            } else if wait {
                eprintln!("submitted job {} for schedule {n}", job.id);
            } else {
                crate::outln!("{}", job.id);
            }
            for w in &job.warnings {
                eprintln!("warning: {w}");
            }
            if wait {
                return watch(client, &job.id, false).await;
            }
            return Ok(exit::OK);
        }
        ScheduleAction::Pause { name, json } => (
            client
                .set_schedule_paused(pb::SetSchedulePausedRequest { name, paused: true })
                .await?
                .into_inner(),
            json,
            "paused",
        ),
        ScheduleAction::Resume { name, json } => (
            client
                .set_schedule_paused(pb::SetSchedulePausedRequest {
                    name,
                    paused: false,
                })
                .await?
                .into_inner(),
            json,
            "resumed",
        ),
        ScheduleAction::Delete { name: n, json } => (
            client.delete_schedule(name(n)).await?.into_inner(),
            json,
            "deleted",
        ),
    };
    if json {
        print_json(&render::schedule_json(&s));
    } else if verb == "resumed" {
        crate::outln!(
            "schedule {} resumed, next {}",
            s.name,
            render::schedule_next(&s)
        );
    } else {
        crate::outln!("schedule {} {verb}", s.name);
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

/// A test's result lines as `watch` prints them: the outcome, the node id
/// (with the phase when not the call), the duration; a failure's last three
/// lines. A subtest's result comes after its test's, as a line under it
/// (`SUBPASS (i=0)`, `SUBFAIL [msg] (i=1)` and its failure's last lines).
fn test_lines(out: &mut impl Write, t: &pb::TestResult) {
    if t.when == pb::SUBTEST {
        let mut lines = t.longrepr.lines();
        let _ = writeln!(out, "{:9}{}", "", lines.next().unwrap_or("SUBTEST"));
        if matches!(t.outcome.as_str(), "failed" | "error") {
            let rest: Vec<&str> = lines.rev().take(3).collect();
            for line in rest.into_iter().rev() {
                let _ = writeln!(out, "{:11}{line}", "");
            }
        }
        return;
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
        let lines: Vec<&str> = t.longrepr.lines().rev().take(3).collect();
        for line in lines.into_iter().rev() {
            let _ = writeln!(out, "         {line}");
        }
    }
}

async fn watch(client: &mut Client, job: &str, json: bool) -> Result<i32, CtlError> {
    let progress = Progress::new(crate::progress::is_live_here(json));
    let mut counts = TestCounts::default();
    let mut attempt = 0u32;
    let mut final_state = JobState::Unspecified;
    let mut final_reason = String::new();
    let mut cases: Vec<CaseResult> = Vec::new();
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
                    cases.clear();
                }
                if !json {
                    let _ = progress.print(|| {
                        writeln!(
                            out,
                            "job {} {}{}",
                            job,
                            s.state().label(),
                            reason(&s.reason)
                        )
                    });
                    progress.state(&format!("job {job} {}", s.state().label()));
                }
                if s.state().is_terminal() {
                    final_state = s.state();
                    final_reason = s.reason.clone();
                }
            }
            Some(job_event::Kind::Test(t)) => {
                let before = counts.total;
                counts.record_result(t);
                if !json && !t.outcome.is_empty() {
                    progress.print(|| test_lines(&mut out, t));
                    let counted = counts.total != before;
                    if let Some(line) = progress.tested(&counts, &t.nodeid, counted) {
                        let _ = writeln!(out, "{line}");
                    }
                }
            }
            Some(job_event::Kind::Case(c)) => {
                if !json {
                    progress.print(|| {
                        let _ = writeln!(out, "{}", render::case_line(c));
                        for line in render::case_details(c) {
                            let _ = writeln!(out, "{:12}{line}", "");
                        }
                    });
                }
                match cases
                    .iter_mut()
                    .find(|k| k.name == c.name && k.file == c.file)
                {
                    Some(seen) => *seen = c.clone(),
                    None => cases.push(c.clone()),
                }
                progress.case_done(cases.len(), &c.name, &c.verdict.to_uppercase());
            }
            Some(job_event::Kind::Environment(env)) => {
                if !json {
                    progress.print(|| {
                        let _ = writeln!(out, "{}", render::environment_line(env));
                    });
                }
            }
            Some(job_event::Kind::Log(_)) | None => {}
        }
        let _ = out.flush();
        true
    })
    .await?;
    progress.finish();
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
        let summary = if cases.is_empty() {
            counts_line(&counts)
        } else {
            crate::out!("\n{}\n", render::cases_table(&cases));
            render::cases_summary(&cases)
        };
        crate::outln!(
            "job {job} {}: {} in {:.1}s{}",
            final_state.label(),
            summary,
            started.elapsed().as_secs_f64(),
            reason(&final_reason)
        );
    }
    Ok(exit_code(final_state))
}

async fn logs(client: &mut Client, job: &str, follow_on: bool) -> Result<i32, CtlError> {
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

pub(crate) fn print_json(v: &serde_json::Value) {
    crate::outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn list_baselines(
    client: &mut Client,
    case: Option<String>,
    profile: Option<String>,
) -> Result<Vec<pb::Baseline>, CtlError> {
    Ok(client
        .list_baselines(pb::ListBaselinesRequest {
            case: case.unwrap_or_default(),
            profile: profile.unwrap_or_default(),
        })
        .await?
        .into_inner()
        .baselines)
}

async fn baseline_list(
    client: &mut Client,
    case: Option<String>,
    profile: Option<String>,
    json: bool,
) -> Result<i32, CtlError> {
    let baselines = list_baselines(client, case, profile).await?;
    if json {
        print_json(&baselines.iter().map(render::baseline_json).collect());
    } else {
        crate::out!("{}", render::baselines_table(&baselines));
    }
    Ok(exit::OK)
}

async fn baseline_show(
    client: &mut Client,
    case: String,
    profile: Option<String>,
    json: bool,
) -> Result<i32, CtlError> {
    let baselines: Vec<pb::Baseline> = list_baselines(client, Some(case.clone()), profile.clone())
        .await?
        .into_iter()
        .filter(|b| b.key.as_ref().is_some_and(|k| k.case == case))
        .collect();
    if baselines.is_empty() {
        return Err(CtlError::input(match profile {
            Some(p) => format!("no baseline for case '{case}' on profile '{p}'"),
            None => format!("no baseline for case '{case}'"),
        }));
    }
    if json {
        print_json(&baselines.iter().map(render::baseline_json).collect());
    } else {
        let texts: Vec<String> = baselines.iter().map(render::baseline_text).collect();
        crate::out!("{}", texts.join("\n"));
    }
    Ok(exit::OK)
}

async fn baseline_accept(
    client: &mut Client,
    job: String,
    by: Option<String>,
    json: bool,
) -> Result<i32, CtlError> {
    let baselines = client
        .accept_baselines(pb::AcceptBaselinesRequest {
            job_id: job.clone(),
            who: by.unwrap_or_default(),
        })
        .await?
        .into_inner()
        .baselines;
    // The scheduler recorded the caller's token name: show what it recorded.
    let who = baselines
        .iter()
        .find_map(|b| b.audit.last().map(|a| a.who.clone()))
        .unwrap_or_default();
    if json {
        print_json(&baselines.iter().map(render::baseline_json).collect());
        return Ok(exit::OK);
    }
    if baselines.is_empty() {
        crate::outln!("job {job}: no case results to accept");
        return Ok(exit::OK);
    }
    crate::outln!(
        "accepted {} baseline{} from job {job} as {who}:",
        baselines.len(),
        if baselines.len() == 1 { "" } else { "s" }
    );
    for b in &baselines {
        crate::outln!("  {}", render::accepted_line(b));
    }
    Ok(exit::OK)
}

async fn baseline_export(
    client: &mut Client,
    dir: &Path,
    profile: Option<String>,
    metric: Option<String>,
) -> Result<i32, CtlError> {
    let (cases, errors) = pb::case::load_dir(dir);
    for e in &errors {
        eprintln!("skipped: {e}");
    }
    if cases.is_empty() {
        return Err(CtlError::input(format!(
            "no case files (*.json) could be loaded from {}",
            dir.display()
        )));
    }
    let baselines = list_baselines(client, None, profile.clone()).await?;
    let plan = export::plan(&cases, &baselines, profile.as_deref(), metric.as_deref())
        .map_err(|e| CtlError::input(e.to_string()))?;
    let mut code = exit::OK;
    for item in plan {
        let file = item.path.display();
        match &item.outcome {
            Outcome::Updated { text, .. } => match export::write_atomic(&item.path, text) {
                Ok(()) => crate::outln!("{}", export::outcome_line(&item)),
                Err(e) => {
                    crate::outln!("error        {}  cannot write {file}: {e}", item.case);
                    code = exit::INFRA;
                }
            },
            _ => crate::outln!("{}", export::outcome_line(&item)),
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn submit(args: &[&str]) -> Submit {
        let argv = ["msctl", "submit"].iter().chain(args).copied();
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Submit(s),
                ..
            }) => *s,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn error(args: &[&str]) -> CtlError {
        match job_file(&submit(args)).and_then(|f| {
            f.to_spec()
                .map(|_| f)
                .map_err(|e| CtlError::input(e.to_string()))
        }) {
            Ok(f) => panic!("{args:?} was accepted: {f:?}"),
            Err(e) => e,
        }
    }

    fn fixtures() -> String {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../proto/tests/fixtures/bench-cases")
            .display()
            .to_string()
    }

    #[test]
    fn bench_with_a_local_case_dir_makes_it_the_source() {
        let dir = fixtures();
        let f = job_file(&submit(&[
            "bench",
            "--cases",
            &dir,
            "--command",
            "python -m msmodeling.run '{case}' --name \"{name}\"",
            "--warmup",
            "0",
            "--repetitions",
            "9",
            "--metric",
            "total_time_s",
            "--extract",
            r"analytic_s=Total time for analytic:\s*([\d.]+)\s*(ms|s)",
            "--trusted",
        ]))
        .unwrap();
        assert_eq!(f.kind, "benchmark");
        let canonical = std::fs::canonicalize(&dir).unwrap();
        assert_eq!(f.source.dir, Some(canonical.display().to_string()));
        let b = f.benchmark.clone().unwrap();
        assert_eq!(
            b.command,
            [
                "python",
                "-m",
                "msmodeling.run",
                "{case}",
                "--name",
                "{name}"
            ]
        );
        assert_eq!(b.cases, ["."]);
        assert_eq!((b.warmup, b.repetitions), (Some(0), Some(9)));
        assert!(b.trusted);
        assert_eq!(b.extract[0].metric, "analytic_s");
        assert_eq!(
            b.extract[0].pattern,
            r"Total time for analytic:\s*([\d.]+)\s*(ms|s)"
        );
        let spec = f.to_spec().unwrap();
        assert_eq!(spec.kind, "benchmark");
        // The dry run's file reads back as the same job.
        assert_eq!(JobFile::parse(&f.to_toml()).unwrap(), f);
    }

    #[test]
    fn bench_with_a_local_case_file_runs_that_file() {
        let file = format!("{}/qwen3-8B-decode.json", fixtures());
        let f = job_file(&submit(&[
            "bench",
            "--cases",
            &file,
            "--command",
            "run {case}",
        ]))
        .unwrap();
        let b = f.benchmark.unwrap();
        assert_eq!(b.cases, ["qwen3-8B-decode.json"]);
        let parent = std::fs::canonicalize(fixtures()).unwrap();
        assert_eq!(f.source.dir, Some(parent.display().to_string()));
    }

    #[test]
    fn bench_with_a_git_source_takes_workspace_paths() {
        let f = job_file(&submit(&[
            "benchmark",
            "--git",
            "https://example.com/m.git",
            "--cases",
            "tests/cases/a",
            "--cases",
            "tests/cases/b.json",
            "--command",
            "run {case}",
        ]))
        .unwrap();
        assert_eq!(
            f.benchmark.unwrap().cases,
            ["tests/cases/a", "tests/cases/b.json"]
        );
        assert_eq!(f.source.git.as_deref(), Some("https://example.com/m.git"));
    }

    #[test]
    fn bench_flag_misuse_is_bad_input() {
        let dir = fixtures();
        // (arguments, what the message must contain)
        let cases: &[(&[&str], &[&str])] = &[
            // bench-only flags with pytest, pytest args with bench.
            (
                &["pytest", "--dir", &dir, "--cases", "x", "--trusted"],
                &["--cases, --trusted"],
            ),
            (
                &["pytest", "--dir", &dir, "--repetitions", "3"],
                &["--repetitions"],
            ),
            (
                &[
                    "bench",
                    "--cases",
                    &dir,
                    "--command",
                    "run",
                    "--",
                    "-k",
                    "x",
                ],
                &["pytest arguments"],
            ),
            // Splitting, missing or empty command.
            (
                &["bench", "--cases", &dir, "--command", "run 'x"],
                &["--command", "unterminated"],
            ),
            (
                &["bench", "--cases", &dir, "--command", "  "],
                &["--command is empty"],
            ),
            (&["bench", "--cases", &dir], &["command"]),
            // Sources.
            (&["bench", "--command", "run"], &["no source"]),
            (
                &[
                    "bench",
                    "--cases",
                    &dir,
                    "--cases",
                    &dir,
                    "--command",
                    "run",
                ],
                &["several --cases"],
            ),
            (
                &[
                    "bench",
                    "--cases",
                    "/definitely/not/here",
                    "--command",
                    "run",
                ],
                &["/definitely/not/here"],
            ),
            (
                &[
                    "bench",
                    "--dir",
                    &dir,
                    "--cases",
                    "/abs",
                    "--command",
                    "run",
                ],
                &["relative to the workspace"],
            ),
            (
                &[
                    "bench",
                    "--dir",
                    &dir,
                    "--cases",
                    "../up",
                    "--command",
                    "run",
                ],
                &[".."],
            ),
            // bench::validate's checks.
            (
                &[
                    "bench",
                    "--cases",
                    &dir,
                    "--command",
                    "run",
                    "--repetitions",
                    "0",
                ],
                &["repetitions"],
            ),
            (
                &[
                    "bench",
                    "--cases",
                    &dir,
                    "--command",
                    "run",
                    "--extract",
                    "nometric",
                ],
                &["METRIC=REGEX"],
            ),
            (
                &[
                    "bench",
                    "--cases",
                    &dir,
                    "--command",
                    "run",
                    "--extract",
                    "x=([",
                ],
                &["bad regex"],
            ),
            (
                &[
                    "bench",
                    "--cases",
                    &dir,
                    "--command",
                    "run",
                    "--extract",
                    r"x=\d+",
                ],
                &["capture group"],
            ),
        ];
        for &(args, needles) in cases {
            let e = error(args);
            assert_eq!(e.code, exit::BAD_INPUT, "{}", e.message);
            for needle in needles {
                assert!(e.message.contains(needle), "{}", e.message);
            }
        }
    }

    #[test]
    fn unknown_kinds_are_refused_by_clap() {
        assert!(Cli::try_parse_from(["msctl", "submit", "jest", "--dir", "."]).is_err());
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["msctl"].iter().chain(args).copied())
    }

    fn agent_action(args: &[&str]) -> AgentAction {
        match parse(args) {
            Ok(Cli {
                command: Command::Agent { action },
                ..
            }) => action,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn agent_quarantine_release_and_check() {
        assert!(matches!(
            agent_action(&["agent", "quarantine", "h1", "--reason", "fan noise"]),
            AgentAction::Quarantine { name, reason } if name == "h1" && reason == "fan noise"
        ));
        assert!(matches!(
            agent_action(&["agent", "quarantine", "h1"]),
            AgentAction::Quarantine { reason, .. } if reason.is_empty()
        ));
        assert!(matches!(
            agent_action(&["agent", "release", "h1"]),
            AgentAction::Undrain { name } if name == "h1"
        ));
        assert!(matches!(
            agent_action(&["agent", "check", "h1", "--json"]),
            AgentAction::Check { name, json: true } if name == "h1"
        ));
        assert!(parse(&["agent", "check"]).is_err(), "check needs a name");
    }

    fn schedule_action(args: &[&str]) -> ScheduleAction {
        match parse(args) {
            Ok(Cli {
                command: Command::Schedule { action },
                ..
            }) => action,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn job_toml(tag: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("msctl-unit-{tag}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn schedule_add_flags_and_defaults() {
        let a = match schedule_action(&[
            "schedule",
            "add",
            "nightly",
            "--cron",
            "0 2 * * *",
            "--tz",
            "Asia/Shanghai",
            "--misfire",
            "skip",
            "--overlap",
            "queue",
            "-f",
            "job.toml",
            "--queue",
            "nightly",
            "--require",
            "gpu.count>=1",
            "--json",
        ]) {
            ScheduleAction::Add(a) => *a,
            other => panic!("{other:?}"),
        };
        assert_eq!(a.name, "nightly");
        assert_eq!(a.cron, "0 2 * * *");
        assert_eq!(a.tz, "Asia/Shanghai");
        assert_eq!((a.misfire.as_str(), a.overlap.as_str()), ("skip", "queue"));
        assert_eq!(a.file, PathBuf::from("job.toml"));
        assert_eq!(a.queue.as_deref(), Some("nightly"));
        assert_eq!(a.require.as_deref(), Some("gpu.count>=1"));
        assert!(a.json);

        let a = match schedule_action(&["schedule", "add", "n", "--cron", "@nightly", "-f", "j"]) {
            ScheduleAction::Add(a) => *a,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (a.tz.as_str(), a.misfire.as_str(), a.overlap.as_str()),
            ("UTC", "fire_once", "skip")
        );
        assert!(!a.json && a.queue.is_none() && a.require.is_none());
    }

    #[test]
    fn schedule_add_refuses_bad_flags_with_usage_errors() {
        use clap::error::ErrorKind;
        let usage = |args: &[&str]| {
            let e = parse(args).expect_err("accepted");
            assert_eq!(e.exit_code(), exit::BAD_INPUT, "{args:?}: {e}");
            e
        };
        let base = ["schedule", "add", "n", "--cron", "@daily", "-f", "j.toml"];
        let e = usage(&[&base[..], &["--misfire", "later"]].concat());
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
        assert!(e.to_string().contains("fire_once"), "{e}");
        let e = usage(&[&base[..], &["--overlap", "kill"]].concat());
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
        // --cron and -f are required; a name too.
        let e = usage(&["schedule", "add", "n", "-f", "j.toml"]);
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        let e = usage(&["schedule", "add", "n", "--cron", "@daily"]);
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        usage(&["schedule", "add", "--cron", "@daily", "-f", "j.toml"]);
        usage(&["schedule", "pause"]);
        usage(&["schedule", "frobnicate", "n"]);
    }

    #[test]
    fn schedule_subcommands_parse() {
        assert!(matches!(
            schedule_action(&["schedule", "list"]),
            ScheduleAction::List { json: false }
        ));
        assert!(matches!(
            schedule_action(&["schedule", "list", "--json"]),
            ScheduleAction::List { json: true }
        ));
        match schedule_action(&["schedule", "show", "nightly", "--json"]) {
            ScheduleAction::Show { name, json } => {
                assert_eq!((name.as_str(), json), ("nightly", true))
            }
            other => panic!("{other:?}"),
        }
        match schedule_action(&["schedule", "pause", "nightly"]) {
            ScheduleAction::Pause { name, json } => {
                assert_eq!((name.as_str(), json), ("nightly", false))
            }
            other => panic!("{other:?}"),
        }
        match schedule_action(&["schedule", "resume", "nightly"]) {
            ScheduleAction::Resume { name, .. } => assert_eq!(name, "nightly"),
            other => panic!("{other:?}"),
        }
        match schedule_action(&["schedule", "delete", "nightly"]) {
            ScheduleAction::Delete { name, .. } => assert_eq!(name, "nightly"),
            other => panic!("{other:?}"),
        }
        match schedule_action(&["schedule", "run-now", "nightly", "--wait"]) {
            ScheduleAction::RunNow { name, wait, json } => {
                assert_eq!((name.as_str(), wait, json), ("nightly", true, false))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn new_schedule_reads_the_job_file_and_applies_overrides() {
        let path = job_toml(
            "sched",
            "queue = \"default\"\nargs = [\"-m\", \"nightly\"]\n[source]\ngit = \"https://example.com/r.git\"\nref = \"main\"\n",
        );
        let p = path.display().to_string();
        let a = match schedule_action(&[
            "schedule",
            "add",
            "nightly",
            "--cron",
            "0 2 * * *",
            "--tz",
            "Europe/Berlin",
            "-f",
            &p,
            "--queue",
            "nightly",
        ]) {
            ScheduleAction::Add(a) => *a,
            other => panic!("{other:?}"),
        };
        let s = new_schedule(&a).unwrap();
        assert_eq!(s.name, "nightly");
        assert_eq!(s.cron, "0 2 * * *");
        assert_eq!(s.tz, "Europe/Berlin");
        assert_eq!(
            (s.misfire.as_str(), s.overlap.as_str()),
            ("fire_once", "skip")
        );
        let spec = s.spec.unwrap();
        assert_eq!(spec.queue, "nightly");
        assert_eq!(spec.args, ["-m", "nightly"]);
        assert!(!s.paused && s.last_slot_ms.is_none());

        // A bad or missing job file is bad input, before any connection.
        std::fs::write(&path, "[source]\ndir = \"/x\"\ngit = \"y\"\n").unwrap();
        let e = new_schedule(&a).unwrap_err();
        assert_eq!(e.code, exit::BAD_INPUT);
        assert!(e.message.contains("exactly one of dir"), "{}", e.message);
        let _ = std::fs::remove_file(&path);
        let e = new_schedule(&a).unwrap_err();
        assert_eq!(e.code, exit::BAD_INPUT);
        assert!(e.message.contains("cannot read"), "{}", e.message);
    }

    #[test]
    fn dedup_key_flag_sets_the_spec_and_survives_a_dry_run() {
        let dir = fixtures();
        let f = job_file(&submit(&[
            "pytest",
            "--dir",
            &dir,
            "--dedup-key",
            "nightly-2026-11-23",
            "--",
            "tests",
        ]))
        .unwrap();
        assert_eq!(f.to_spec().unwrap().dedup_key, "nightly-2026-11-23");
        let back = JobFile::parse(&f.to_toml()).unwrap();
        assert_eq!(back, f);
        // The flag overrides the file's key.
        let path = job_toml(
            "dedup",
            "dedup_key = \"from-file\"\n[source]\ndir = \"/x\"\n",
        );
        let p = path.display().to_string();
        assert_eq!(
            job_file(&submit(&["-f", &p])).unwrap().dedup_key,
            "from-file"
        );
        assert_eq!(
            job_file(&submit(&["-f", &p, "--dedup-key", "flag"]))
                .unwrap()
                .dedup_key,
            "flag"
        );
        let e = job_file(&submit(&["-f", &p, "--dedup-key", " "])).unwrap_err();
        assert_eq!(e.code, exit::BAD_INPUT);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn dedup_note_names_the_job_key_and_time() {
        let job = pb::Job {
            id: "12".into(),
            spec: Some(pb::JobSpec {
                dedup_key: "nightly-2026-11-23".into(),
                ..Default::default()
            }),
            submitted_at_ms: 1_795_399_203_000,
            deduplicated: true,
            ..Default::default()
        };
        assert_eq!(
            dedup_note(&job, "sent"),
            "job 12 already exists for dedup key nightly-2026-11-23 (submitted 2026-11-23T02:00:03Z)"
        );
        let bare = pb::Job { spec: None, ..job };
        assert!(dedup_note(&bare, "sent").contains("dedup key sent "));
    }

    #[test]
    fn dir_is_a_path_on_the_agent_absolute_as_given_relative_from_here() {
        let remote = Path::new("/srv/checkouts/not-on-this-machine");
        assert_eq!(agent_path(remote).unwrap(), remote);
        let here = std::env::current_dir().unwrap();
        assert_eq!(
            agent_path(Path::new("./a/../b/c")).unwrap(),
            here.join("b").join("c")
        );
    }
}
