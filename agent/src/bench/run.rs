//! Runs one attempt of a benchmark job.
//!
//! Every case file named by the job is run `warmup + repetitions` times in the job's workspace,
//! each run a fresh process in its own process group ([`crate::process::ProcessGroup`]), reaped
//! with `wait4` so that its resource usage is exactly that of the run. Each measured run yields
//!
//! * **measured** metrics, by the agent: `wall_time_s`, `cpu_time_s` (user + system),
//!   `peak_rss_bytes`, and on NVIDIA hosts `gpu_memory_peak_bytes` and `gpu_throttle_reasons`
//!   (NVML, sampled every 50 ms while the run lasts; absent without NVML);
//! * **reported** metrics, by the case's command: every top-level finite number of the JSON object
//!   it writes to `$MSFLEET_METRICS` (plus its `operators` list), and the job's regex extractors
//!   applied to the run's output.
//!
//! The primary metric (the job's `metric`, else `total_time_s` when every run reported it, else
//! `wall_time_s`) is judged against the case's baselines with [`judge_runs`]; the operators with
//! [`compare_operators`]. A regression candidate (a first run past the looser candidate
//! threshold) is re-run `confirm_runs` times, each a fresh set of processes, and all runs
//! together decide. One `CaseResult` per case is sent as soon as the case is done.
//!
//! [`judge_runs`]: super::verdict::judge_runs
//! [`compare_operators`]: super::verdict::compare_operators
//!
//! [`run`] is the attempt (spec, case loading, baselines from the scheduler, outcome); [`Bench`]
//! runs loaded cases against given baselines and needs no scheduler. The metrics are parsed and
//! summarized in [`super::metrics`], sampled from NVML in [`super::gpu`], and judged into a
//! `CaseResult` in [`super::judge`].

use super::baselines::{fetch_baselines, Baselines, BASELINE_RETRY_BUDGET};
use super::cases::{load_cases, BenchError, LoadedCase, Plan};
use super::gpu::{load_nvml, throttle_names, GpuPeak, GpuWatch};
use super::judge::{case_error_result, error_result, explanation, judge_runs, summary_line, Tally};
use super::metrics::{
    metric_summary, parse_reported, series_of, Reported, RunSample, CPU_TIME, GPU_MEMORY_PEAK,
    GPU_THROTTLE, PEAK_RSS,
};
use super::verdict::{Rules, Verdict};
use crate::attempt::{
    attempt_timeout, finished, halted, job_fault, AttemptSpec, Guard, Halt, Updates,
};
use crate::config::AgentConfig;
use crate::process::{OutputHook, ProcessGroup};
use msfleet_proto::bench::WALL_TIME;
use msfleet_proto::case::CaseError;
use msfleet_proto::{self as pb, task_update, Finished, Outcome};
use nix::sys::signal::Signal;
use nvml_wrapper::Nvml;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Output of one run kept in memory for the extractors (the newest part).
pub const OUTPUT_CAP: usize = 4 * 1024 * 1024;
/// Stderr kept for the error message of a failed run.
const STDERR_TAIL_CAP: usize = 16 * 1024;
/// Lines of stderr quoted when a run fails.
const STDERR_TAIL_LINES: usize = 10;

/// A run's output: the newest [`OUTPUT_CAP`] bytes of stdout and stderr interleaved as read,
/// and the newest part of stderr.
#[derive(Default)]
struct Captured {
    combined: Vec<u8>,
    stderr: Vec<u8>,
}

impl Captured {
    fn push(&mut self, stream: &str, data: &[u8]) {
        append_capped(&mut self.combined, data, OUTPUT_CAP);
        if stream == "stderr" {
            append_capped(&mut self.stderr, data, STDERR_TAIL_CAP);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(tail(&self.combined, OUTPUT_CAP)).into_owned()
    }

    /// The last lines of stderr, indented, for an error message.
    fn stderr_tail(&self) -> String {
        let text = String::from_utf8_lossy(tail(&self.stderr, STDERR_TAIL_CAP)).into_owned();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..]
            .iter()
            .map(|l| {
                let cut: String = l.chars().take(300).collect();
                format!("\n  {cut}")
            })
            .collect()
    }
}

/// Appends, dropping the oldest bytes once the buffer holds twice `cap` (amortized).
fn append_capped(buf: &mut Vec<u8>, data: &[u8], cap: usize) {
    buf.extend_from_slice(data);
    if buf.len() > 2 * cap {
        buf.drain(..buf.len() - cap);
    }
}

fn tail(buf: &[u8], cap: usize) -> &[u8] {
    &buf[buf.len().saturating_sub(cap)..]
}

/// Which run of a case this is.
#[derive(Debug, Clone, Copy)]
struct Phase {
    warmup: bool,
    /// 0-based within its kind (warmup or measured).
    index: u32,
    of: u32,
    rerun: bool,
}

impl Phase {
    fn label(&self) -> String {
        let kind = match (self.warmup, self.rerun) {
            (true, _) => "warmup run",
            (false, true) => "re-run",
            (false, false) => "run",
        };
        format!("{kind} {} of {}", self.index + 1, self.of)
    }
}

/// Why a case stopped before it was judged.
#[derive(Debug)]
enum Interrupt {
    Halted(Halt),
    /// The case is an error, for this reason.
    Failed(String),
    /// The case could not be run at all (the command cannot start): an
    /// infrastructure error, for this reason.
    Setup(String),
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => match Signal::try_from(s) {
            Ok(sig) => format!("was killed by signal {s} ({sig})"),
            Err(_) => format!("was killed by signal {s}"),
        },
        (None, None) => format!("ended with status {status}"),
    }
}

// ---------------------------------------------------------------- the runner

/// Runs loaded cases in one workspace and reports them.
pub struct Bench {
    plan: Plan,
    workspace: PathBuf,
    /// Holds the runs' metrics files.
    scratch: PathBuf,
    /// Where the current run's process group is recorded (for `process::reap_orphans`).
    pgid_file: Option<PathBuf>,
    /// The job's env and the attempt's identity, given to every run.
    env: Vec<(String, String)>,
    kill_grace: Duration,
    tx: Updates,
    gpu: Option<Arc<Nvml>>,
    /// The GPUs sampled: the attempt's own.
    gpu_uuids: Arc<Vec<String>>,
    runs: AtomicU64,
    /// Labels each run's containment cell; the job's memory limit applied to each run.
    cell_label: String,
    memory_limit: Option<u64>,
}

impl Bench {
    /// `scratch` must exist. Runs get `env` on top of the agent's environment.
    pub fn new(
        plan: Plan,
        workspace: PathBuf,
        scratch: PathBuf,
        env: Vec<(String, String)>,
        kill_grace: Duration,
        tx: Updates,
    ) -> Bench {
        Bench {
            plan,
            workspace,
            scratch,
            pgid_file: None,
            env,
            kill_grace,
            tx,
            gpu: None,
            gpu_uuids: Arc::default(),
            runs: AtomicU64::new(0),
            cell_label: "bench".into(),
            memory_limit: None,
        }
    }

    /// Names each run's containment cell after the attempt (`slot`) and gives it the job's
    /// memory limit.
    pub fn with_containment(mut self, slot: &str, memory_limit: Option<u64>) -> Bench {
        self.cell_label = slot.to_string();
        self.memory_limit = memory_limit;
        self
    }

    /// Records each run's process group in `path` while it runs.
    pub fn with_pgid_file(mut self, path: PathBuf) -> Bench {
        self.pgid_file = Some(path);
        self
    }

    /// Samples GPU memory and throttling through `nvml` during each run, on
    /// the GPUs with these UUIDs only (the attempt's own).
    pub fn with_gpu(mut self, nvml: Option<Arc<Nvml>>, uuids: Vec<String>) -> Bench {
        self.gpu = nvml;
        self.gpu_uuids = Arc::new(uuids);
        self
    }

    fn log(&self, text: String) {
        self.tx.log("stderr", text);
    }

    /// Reports the malformed case files, then runs and reports every case in order.
    pub async fn run_all(
        &self,
        cases: &[LoadedCase],
        errors: &[CaseError],
        baselines: &Baselines,
        guard: &mut Guard<'_>,
    ) -> Result<Tally, Halt> {
        let mut tally = Tally::default();
        for e in errors {
            let r = case_error_result(e);
            tally.record_setup_error(&e.to_string());
            self.report(r, &mut tally);
        }
        for lc in cases {
            let (r, setup) = self
                .run_case(lc, baselines, guard)
                .instrument(tracing::info_span!("benchmark case", case = %lc.case.name))
                .await?;
            if setup {
                let why = r.explanation.as_ref().map_or("", |e| e.message.as_str());
                tally.record_setup_error(why);
            }
            self.report(r, &mut tally);
        }
        Ok(tally)
    }

    fn report(&self, r: pb::CaseResult, tally: &mut Tally) {
        tally.record(&r.verdict);
        self.log(summary_line(&r));
        tracing::info!(case = %r.name, verdict = %r.verdict, metric = %r.metric, "benchmark case done");
        self.tx.send(task_update::Kind::Case(r));
    }

    /// Measures one case (re-running a regression candidate) and judges it. `Err` only
    /// when the attempt was stopped; a case that fails is an `error` result, with `true` when
    /// it could not be run at all (its command cannot start).
    pub async fn run_case(
        &self,
        lc: &LoadedCase,
        baselines: &Baselines,
        guard: &mut Guard<'_>,
    ) -> Result<(pb::CaseResult, bool), Halt> {
        let plan_metric = self.plan.metric.clone().unwrap_or_default();
        let error = |message: String| {
            error_result(
                &lc.case.name,
                &lc.file,
                &lc.input_hash,
                &plan_metric,
                "",
                message,
            )
        };
        self.log(format!(
            "msfleet: case {} ({}): {} warmup + {} measured runs\n",
            lc.case.name, lc.file, self.plan.warmup, self.plan.repetitions
        ));
        let runs = match self.measure(lc, guard, false).await {
            Ok(r) => r,
            Err(Interrupt::Halted(h)) => return Err(h),
            Err(Interrupt::Failed(why)) => return Ok((error(why), false)),
            Err(Interrupt::Setup(why)) => return Ok((error(why), true)),
        };
        let mut all_runs = vec![runs];
        let first = match judge_runs(&self.plan, lc, &all_runs, baselines) {
            Ok(j) => j,
            Err(why) => return Ok((error(why), false)),
        };
        let mut judgement = first.judgement.clone();
        let mut rerun = false;
        if first.judgement.needs_confirmation {
            rerun = true;
            let reruns = Rules::default().confirm_runs;
            self.log(format!(
                "msfleet: case {}: regression candidate, {reruns} confirming re-run(s)\n",
                lc.case.name
            ));
            for _ in 0..reruns {
                match self.measure(lc, guard, true).await {
                    Ok(r) => all_runs.push(r),
                    Err(Interrupt::Halted(h)) => return Err(h),
                    Err(Interrupt::Failed(why) | Interrupt::Setup(why)) => {
                        return Ok((
                            error(format!("a re-run confirming a regression failed: {why}")),
                            false,
                        ))
                    }
                }
            }
            judgement = match judge_runs(&self.plan, lc, &all_runs, baselines) {
                Ok(j) => j.judgement,
                Err(why) => {
                    return Ok((
                        error(format!("a re-run confirming a regression failed: {why}")),
                        false,
                    ))
                }
            };
        }
        let runs = &all_runs[0];

        let mut message = judgement.explanation.message.clone();
        let throttle = all_runs
            .iter()
            .flatten()
            .fold(0u64, |acc, r| acc | r.throttle);
        let names = throttle_names(throttle);
        if !names.is_empty() {
            message.push_str(&format!(
                "; the GPU was throttled during the runs ({})",
                names.join(", ")
            ));
        }
        // History that could not be fetched is said in the verdict itself: a
        // case judged by its file's anchors says so, and one that has only
        // history to be judged by is `error` (the fleet's failure, not the
        // benchmark's), never "nothing to compare with yet".
        let mut verdict = judgement.verdict.as_str().to_string();
        let mut setup = false;
        if let Some(why) = &baselines.unavailable {
            if judgement.verdict == Verdict::NoBaseline {
                verdict = Verdict::Error.as_str().to_string();
                setup = true;
                message =
                    format!("history unavailable: {why} (the case file has no anchor to judge by)");
            } else {
                message.push_str(&format!(
                    "; history unavailable: {why} (judged with the case file's anchors only)"
                ));
            }
        }
        let mut ex = explanation(&judgement.explanation);
        ex.message = message;
        let report = first.report.unwrap_or_default();
        Ok((
            pb::CaseResult {
                name: lc.case.name.clone(),
                file: lc.file.clone(),
                input_hash: lc.input_hash.clone(),
                metric: first.metric,
                verdict,
                explanation: Some(ex),
                metrics: series_of(runs).iter().map(metric_summary).collect(),
                operators: first
                    .operators
                    .iter()
                    .map(|o| pb::OperatorTime {
                        name: o.name.clone(),
                        total_time_s: o.total_time_s,
                        num_calls: o.num_calls,
                    })
                    .collect(),
                operators_missing: report.missing,
                operators_new: report.new,
                operators_moved: report
                    .moved
                    .iter()
                    .map(|(n, d)| format!("{n} {:+.1}%", d * 100.0))
                    .collect(),
                rerun,
                confirmed: rerun && judgement.verdict == Verdict::Regression,
                profile: String::new(),
            },
            setup,
        ))
    }

    /// The warmup runs, then the measured runs (returned).
    async fn measure(
        &self,
        lc: &LoadedCase,
        guard: &mut Guard<'_>,
        rerun: bool,
    ) -> Result<Vec<RunSample>, Interrupt> {
        for index in 0..self.plan.warmup {
            let phase = Phase {
                warmup: true,
                index,
                of: self.plan.warmup,
                rerun,
            };
            self.run_once(lc, guard, phase).await?;
        }
        let mut runs = Vec::with_capacity(self.plan.repetitions as usize);
        for index in 0..self.plan.repetitions {
            let phase = Phase {
                warmup: false,
                index,
                of: self.plan.repetitions,
                rerun,
            };
            runs.push(self.run_once(lc, guard, phase).await?);
        }
        Ok(runs)
    }

    /// Runs the case's command once and collects its metrics.
    async fn run_once(
        &self,
        lc: &LoadedCase,
        guard: &mut Guard<'_>,
        phase: Phase,
    ) -> Result<RunSample, Interrupt> {
        if let Some(h) = guard.halted() {
            return Err(Interrupt::Halted(h.clone()));
        }
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let metrics_path = self.scratch.join(format!("metrics-{n}.json"));
        let _ = tokio::fs::remove_file(&metrics_path).await;
        let case_path = lc.path.to_string_lossy();
        let argv: Vec<String> = self
            .plan
            .command
            .iter()
            .map(|a| {
                a.replace("{case}", &case_path)
                    .replace("{name}", &lc.case.name)
            })
            .collect();
        let Some((program, args)) = argv.split_first() else {
            return Err(Interrupt::Setup("the benchmark command is empty".into()));
        };
        self.log(format!(
            "msfleet: case {}: {}\n",
            lc.case.name,
            phase.label()
        ));
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .current_dir(&self.workspace)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("PYTHONUNBUFFERED", "1")
            .env("MSFLEET_METRICS", &metrics_path)
            .env("MSFLEET_CASE", lc.path.as_os_str())
            .env("MSFLEET_CASE_NAME", &lc.case.name)
            .env("MSFLEET_REPETITION", phase.index.to_string())
            .env("MSFLEET_WARMUP", if phase.warmup { "1" } else { "0" })
            .env("MSFLEET_RERUN", if phase.rerun { "1" } else { "0" });
        let started = Instant::now();
        let mut group = ProcessGroup::spawn(&mut cmd, &self.cell_label, self.memory_limit)
            .map_err(|e| Interrupt::Setup(format!("cannot start '{program}': {e}")))?;
        let pid = group.pid();
        let marker = format!("MSFLEET_METRICS={}", metrics_path.display());
        if let Some(f) = &self.pgid_file {
            let _ = group.record(f.clone(), &metrics_path).await;
        }
        // The extractors read the output, the error message quotes stderr's tail.
        let captured = Arc::new(Mutex::new(Captured::default()));
        let hook: OutputHook = {
            let captured = captured.clone();
            Arc::new(move |stream: &str, data: &[u8]| {
                captured
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(stream, data);
            })
        };
        let running = group.start(&self.tx, Some(hook));
        let gpu = self
            .gpu
            .clone()
            .map(|nvml| GpuWatch::start(nvml, self.gpu_uuids.clone(), pid, marker));
        let mut exited = running.wait(guard, self.kill_grace).await;
        let gpu_peak = match gpu {
            Some(g) => Some(g.finish().await),
            None => None,
        };
        exited.drain().await;
        if let Some(h) = exited.halted {
            let _ = tokio::fs::remove_file(&metrics_path).await;
            return Err(Interrupt::Halted(h));
        }
        if let Some(oom) = exited.oom {
            let _ = tokio::fs::remove_file(&metrics_path).await;
            return Err(Interrupt::Setup(format!("{}: {oom}", phase.label())));
        }
        let reaped = exited
            .reaped
            .map_err(|e| Interrupt::Failed(format!("waiting for the run: {e}")))?;
        let output = std::mem::take(&mut *captured.lock().unwrap_or_else(|e| e.into_inner()));
        if !reaped.status.success() {
            let _ = tokio::fs::remove_file(&metrics_path).await;
            let tail = output.stderr_tail();
            let tail = if tail.is_empty() {
                " (no output on stderr)".to_string()
            } else {
                format!("; last lines of stderr:{tail}")
            };
            return Err(Interrupt::Failed(format!(
                "{} of '{}' {}{tail}",
                phase.label(),
                argv.join(" "),
                describe_status(reaped.status)
            )));
        }

        let reported = match tokio::fs::read(&metrics_path).await {
            Ok(bytes) => parse_reported(&bytes).map_err(|e| {
                Interrupt::Failed(format!(
                    "{}: the metrics file ($MSFLEET_METRICS) is unreadable: {e}",
                    phase.label()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Reported::default(),
            Err(e) => {
                return Err(Interrupt::Failed(format!(
                    "{}: cannot read the metrics file ($MSFLEET_METRICS): {e}",
                    phase.label()
                )))
            }
        };
        let _ = tokio::fs::remove_file(&metrics_path).await;

        let mut sample = RunSample {
            measured: vec![
                (
                    WALL_TIME,
                    reaped.ended.duration_since(started).as_secs_f64(),
                ),
                (CPU_TIME, reaped.cpu_s),
                (PEAK_RSS, reaped.max_rss_bytes as f64),
            ],
            reported: reported.metrics.into_iter().collect(),
            operators: reported.operators,
            throttle: 0,
        };
        if let Some((bytes, throttle)) = gpu_peak.as_ref().and_then(GpuPeak::metrics) {
            sample.measured.push((GPU_MEMORY_PEAK, bytes as f64));
            sample.measured.push((GPU_THROTTLE, throttle as f64));
            sample.throttle = throttle;
        }
        if !self.plan.extractors.is_empty() {
            let text = output.text();
            for e in &self.plan.extractors {
                if let Some(v) = e.extract(&text).filter(|v| v.is_finite()) {
                    sample.reported.insert(e.metric.clone(), v);
                }
            }
        }
        Ok(sample)
    }
}

// ---------------------------------------------------------------- the attempt

/// Runs one attempt of a benchmark job in the prepared workspace `ws` and returns how it
/// finished (`None` when abandoned). `slot` names the attempt's files under the work dir.
pub async fn run(
    cfg: &AgentConfig,
    a: &AttemptSpec,
    slot: &str,
    ws: &Path,
    tx: &Updates,
    guard: &mut Guard<'_>,
) -> Option<Finished> {
    let timeout = attempt_timeout(&a.spec);
    let Some(spec) = a.spec.benchmark.as_ref() else {
        return job_fault("a benchmark job needs benchmark settings (command, cases)");
    };
    let plan = match Plan::new(spec) {
        Ok(p) => p,
        Err(e) => return job_fault(e.to_string()),
    };
    let run_dir = cfg.work_dir.join("run");
    let scratch = run_dir.join(format!("{slot}-bench"));
    // Absolute: the runs see it from the workspace.
    let created = match tokio::fs::create_dir_all(&scratch).await {
        Ok(()) => tokio::fs::canonicalize(&scratch).await,
        Err(e) => Err(e),
    };
    let scratch = match created {
        Ok(s) => s,
        Err(e) => {
            let e = BenchError::Io {
                what: format!("creating {}", scratch.display()),
                source: e,
            };
            return finished(Outcome::Error, e.to_string(), -1);
        }
    };
    let result = run_with(cfg, a, plan, ws, &scratch, &run_dir, slot, tx, guard).await;
    let _ = tokio::fs::remove_dir_all(&scratch).await;
    match result {
        Ok(tally) => {
            let (outcome, reason) = tally.outcome();
            if tally.total() == 0 {
                // The job's cases select nothing: its doing, not the agent's.
                return job_fault(reason);
            }
            let code = if outcome == Outcome::Passed { 0 } else { 1 };
            finished(outcome, reason, code)
        }
        Err(h) => halted(h, timeout, -1),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_with(
    cfg: &AgentConfig,
    a: &AttemptSpec,
    plan: Plan,
    ws: &Path,
    scratch: &Path,
    run_dir: &Path,
    slot: &str,
    tx: &Updates,
    guard: &mut Guard<'_>,
) -> Result<Tally, Halt> {
    let workspace = ws.to_path_buf();
    let entries = plan.cases.clone();
    let (cases, errors) =
        match tokio::task::spawn_blocking(move || load_cases(&workspace, &entries)).await {
            Ok(loaded) => loaded,
            Err(e) => {
                let err = CaseError {
                    case: "cases".into(),
                    file: PathBuf::from(plan.cases.join(", ")),
                    reason: format!("loading the case files failed: {e}"),
                };
                (Vec::new(), vec![err])
            }
        };
    tx.log(
        "stderr",
        format!(
            "msfleet: benchmark: {} case(s){} from {}; {} warmup + {} measured runs each of: {}\n",
            cases.len(),
            if errors.is_empty() {
                String::new()
            } else {
                format!(" and {} malformed", errors.len())
            },
            plan.cases.join(", "),
            plan.warmup,
            plan.repetitions,
            plan.command.join(" ")
        ),
    );

    let mut baselines = Baselines::default();
    if !cases.is_empty() {
        let req = pb::GetBaselinesRequest {
            attempt: Some(pb::AttemptRef {
                task_id: a.task_id.clone(),
                attempt: a.attempt,
                epoch: a.epoch,
            }),
            keys: cases
                .iter()
                .map(|c| pb::BaselineKey {
                    case: c.case.name.clone(),
                    input_hash: c.input_hash.clone(),
                    ..Default::default()
                })
                .collect(),
        };
        let link = (cfg.target.clone(), cfg.bearer.clone());
        match fetch_baselines(&link, req, BASELINE_RETRY_BUDGET, guard).await? {
            Ok(resp) => {
                tx.log(
                    "stderr",
                    format!(
                        "msfleet: {} stored baseline(s) for hardware profile '{}'\n",
                        resp.baselines.len(),
                        resp.profile
                    ),
                );
                baselines = Baselines::from_list(resp.baselines);
            }
            Err(why) => {
                tx.log(
                    "stderr",
                    format!(
                        "msfleet: baselines unavailable ({why}): judging with the case files' anchors only\n"
                    ),
                );
                baselines.unavailable = Some(why);
            }
        }
    }

    // Only the attempt's own GPUs are measured; without any it sees none.
    let gpu_uuids = a.gpu_uuids();
    let gpu = if cases.is_empty() || gpu_uuids.is_empty() {
        None
    } else {
        match load_nvml().await {
            Ok(nvml) => Some(nvml),
            Err(why) => {
                tx.log(
                    "stderr",
                    format!("msfleet: NVML unavailable ({why}): GPU memory and throttling are not measured\n"),
                );
                None
            }
        }
    };

    let mut env: Vec<(String, String)> = a
        .spec
        .env
        .iter()
        .chain(a.spec.secret_env.iter())
        .chain(a.device_env.iter().map(|(k, v)| (k, v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend([
        ("MSFLEET_JOB_ID".to_string(), a.job_id.clone()),
        ("MSFLEET_TASK_ID".to_string(), a.task_id.clone()),
        ("MSFLEET_ATTEMPT".to_string(), a.attempt.to_string()),
    ]);
    let bench = Bench::new(
        plan,
        ws.to_path_buf(),
        scratch.to_path_buf(),
        env,
        cfg.kill_grace,
        tx.clone(),
    )
    .with_pgid_file(run_dir.join(format!("{slot}.pgid")))
    .with_containment(slot, a.spec.memory_limit_bytes)
    .with_gpu(gpu, gpu_uuids);
    bench.run_all(&cases, &errors, &baselines, guard).await
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::attempt::{AttemptKey, StopReason};
    use msfleet_proto::bench::TOTAL_TIME;
    use msfleet_proto::BenchmarkSpec;
    use tokio::sync::mpsc;
    use tokio::sync::watch;

    type Rx = mpsc::UnboundedReceiver<(AttemptKey, task_update::Kind)>;

    /// Reports what the case's `user_input` says, after a short sleep: `time_s` (varied by
    /// +-1% over the repetitions), `ops` (name -> seconds), `exit`, `stderr`, `print`, `alloc_mb`,
    /// `burn_s`, `bad_json`.
    const SCRIPT: &str = r#"
import json, os, sys, time
case = json.load(open(sys.argv[1]))
p = case.get("user_input", {})
rep = int(os.environ["MSFLEET_REPETITION"])
assert os.environ["MSFLEET_CASE"] == sys.argv[1]
assert os.environ["MSFLEET_CASE_NAME"] == case.get("name", os.path.basename(sys.argv[1])[:-5])
time.sleep(p.get("sleep_s", 0.005))
if "alloc_mb" in p:
    block = bytearray(p["alloc_mb"] * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
if "burn_s" in p:
    end = time.process_time() + p["burn_s"]
    while time.process_time() < end:
        pass
if "print" in p:
    print(p["print"], flush=True)
if "stderr" in p:
    print(p["stderr"], file=sys.stderr, flush=True)
if "exit" in p:
    sys.exit(p["exit"])
out = {}
if "time_s" in p:
    out["total_time_s"] = p["time_s"] * (1 + 0.01 * (rep % 3 - 1))
    out["tokens"] = 128
if "ops" in p:
    out["operators"] = [{"name": n, "total_time_s": t, "num_calls": 3} for n, t in p["ops"].items()]
if p.get("bad_json"):
    with open(os.environ["MSFLEET_METRICS"], "w") as f:
        f.write("{not json")
elif out:
    with open(os.environ["MSFLEET_METRICS"], "w") as f:
        json.dump(out, f)
"#;

    pub(crate) struct Fixture {
        dir: tempfile::TempDir,
        pub(crate) rx: Rx,
        pub(crate) tx: Updates,
    }

    impl Fixture {
        pub(crate) fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("bench.py"), SCRIPT).unwrap();
            std::fs::create_dir_all(dir.path().join("cases")).unwrap();
            std::fs::create_dir_all(dir.path().join("scratch")).unwrap();
            let (tx, rx) = mpsc::unbounded_channel();
            Fixture {
                dir,
                rx,
                tx: Updates::new(("t".into(), 1), tx),
            }
        }

        pub(crate) fn ws(&self) -> &Path {
            self.dir.path()
        }

        pub(crate) fn case(&self, stem: &str, json: &str) {
            std::fs::write(self.ws().join("cases").join(format!("{stem}.json")), json).unwrap();
        }

        fn bench(&self, spec: BenchmarkSpec) -> Bench {
            Bench::new(
                Plan::new(&spec).unwrap(),
                self.ws().to_path_buf(),
                self.ws().join("scratch"),
                vec![("FROM_JOB".into(), "1".into())],
                Duration::from_millis(300),
                self.tx.clone(),
            )
        }

        fn drain(&mut self) -> (Vec<pb::CaseResult>, String) {
            let mut cases = Vec::new();
            let mut log = String::new();
            while let Ok((_, kind)) = self.rx.try_recv() {
                match kind {
                    task_update::Kind::Case(c) => cases.push(c),
                    task_update::Kind::Log(l) => log.push_str(&String::from_utf8_lossy(&l.data)),
                    _ => {}
                }
            }
            (cases, log)
        }
    }

    pub(crate) fn spec(reps: u32) -> BenchmarkSpec {
        BenchmarkSpec {
            command: vec!["python3".into(), "bench.py".into(), "{case}".into()],
            cases: vec!["cases".into()],
            warmup: Some(1),
            repetitions: Some(reps),
            ..Default::default()
        }
    }

    async fn run_dir(
        f: &Fixture,
        spec: BenchmarkSpec,
        baselines: &Baselines,
    ) -> Result<Tally, Halt> {
        let bench = f.bench(spec);
        let (cases, errors) = load_cases(f.ws(), &bench.plan.cases);
        let (_stop_tx, mut stop) = watch::channel(None);
        let mut guard = Guard::new(
            tokio::time::Instant::now() + Duration::from_secs(120),
            &mut stop,
        );
        bench.run_all(&cases, &errors, baselines, &mut guard).await
    }

    fn metric<'a>(r: &'a pb::CaseResult, name: &str) -> &'a pb::MetricSummary {
        r.metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no metric {name} in {:?}", r.metrics))
    }

    pub(crate) fn message(r: &pb::CaseResult) -> String {
        r.explanation.clone().unwrap_or_default().message
    }

    #[tokio::test]
    async fn stable_case_passes_against_its_anchor() {
        let mut f = Fixture::new();
        f.case(
            "stable",
            r#"{"name": "stable", "user_input": {"time_s": 0.1, "ops": {"mm": 0.05, "add": 0.01}},
                "baseline_time_s": 0.1, "tolerance": 0.2,
                "operators": [{"name": "mm", "total_time_s": 0.05, "num_calls": 3},
                              {"name": "add", "total_time_s": 0.01, "num_calls": 3}]}"#,
        );
        let tally = run_dir(&f, spec(5), &Baselines::default()).await.unwrap();
        assert_eq!(tally.outcome().0, Outcome::Passed);
        let (cases, log) = f.drain();
        assert_eq!(cases.len(), 1);
        let r = &cases[0];
        assert_eq!(r.verdict, "pass", "{}", message(r));
        assert_eq!(r.metric, TOTAL_TIME);
        assert_eq!(r.file, "cases/stable.json");
        assert_eq!(r.input_hash.len(), 16);
        assert!(!r.rerun && !r.confirmed);
        let ex = r.explanation.clone().unwrap();
        assert_eq!(ex.rule, "tolerance");
        assert_eq!(ex.baseline, Some(0.1));
        assert!((ex.value - 0.1).abs() < 1e-9, "{ex:?}");
        let total = metric(r, TOTAL_TIME);
        assert_eq!((total.n, total.unit.as_str()), (5, "s"));
        assert_eq!(total.source, "reported");
        assert_eq!(total.samples.len(), 5);
        let wall = metric(r, WALL_TIME);
        assert_eq!(
            (wall.source.as_str(), wall.unit.as_str()),
            ("measured", "s")
        );
        assert!(wall.median > 0.005, "{wall:?}");
        assert_eq!(metric(r, "tokens").unit, "");
        let names: Vec<_> = r.operators.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["mm", "add"]);
        assert_eq!(r.operators[0].num_calls, 3);
        assert!(r.operators_moved.is_empty() && r.operators_missing.is_empty());
        assert!(
            log.contains("msfleet: case stable: pass total_time_s 0.1 vs 0.1 (+0.0%, "),
            "{log}"
        );
        assert!(
            log.contains("warmup run 1 of 1") && log.contains("run 5 of 5"),
            "{log}"
        );
    }

    #[tokio::test]
    async fn slower_case_is_a_confirmed_regression() {
        let mut f = Fixture::new();
        f.case(
            "slow",
            r#"{"name": "slow", "user_input": {"time_s": 0.1}, "baseline_time_s": 0.07, "tolerance": 0.2}"#,
        );
        let tally = run_dir(&f, spec(3), &Baselines::default()).await.unwrap();
        assert_eq!(
            tally.outcome(),
            (Outcome::Failed, "1 of 1 case regressed".to_string())
        );
        let (cases, log) = f.drain();
        let r = &cases[0];
        assert_eq!(r.verdict, "regression", "{}", message(r));
        assert!(r.rerun && r.confirmed);
        assert!(
            message(r).contains("confirmed by 3 runs together"),
            "{}",
            message(r)
        );
        let ex = r.explanation.clone().unwrap();
        assert!((ex.delta_pct.unwrap() - 42.857).abs() < 0.01, "{ex:?}");
        assert_eq!(ex.limit, "baseline_tolerance 20%");
        assert_eq!(ex.runs, 3);
        assert_eq!(ex.samples, 3);
        assert!(ex.pooled_value.is_some());
        assert_eq!(ex.mde_pct, Some(20.0));
        assert!(
            log.contains("msfleet: case slow: regression candidate, 2 confirming re-run(s)"),
            "{log}"
        );
        // Two confirming runs of warmup + 3 repetitions each, fresh processes.
        assert_eq!(log.matches("re-run 3 of 3").count(), 2, "{log}");
        assert!(
            log.contains(
                "msfleet: case slow: regression total_time_s 0.1 vs 0.07 (+42.9%, baseline_tolerance 20%), confirmed by 3 runs together"
            ),
            "{log}"
        );
    }

    #[tokio::test]
    async fn faster_case_is_an_improvement() {
        let mut f = Fixture::new();
        f.case(
            "fast",
            r#"{"name": "fast", "user_input": {"time_s": 0.1}, "baseline_time_s": 0.15, "tolerance": 0.2}"#,
        );
        let tally = run_dir(&f, spec(3), &Baselines::default()).await.unwrap();
        assert_eq!(tally.outcome().0, Outcome::Passed);
        let (cases, _) = f.drain();
        assert_eq!(cases[0].verdict, "improvement", "{}", message(&cases[0]));
        assert!(!cases[0].rerun);
    }

    /// A command that cannot start, and a case directory without cases, are
    /// setup failures: the attempt is an error, not a failed benchmark.
    #[tokio::test]
    async fn a_command_that_cannot_start_or_no_cases_is_an_error() {
        let mut f = Fixture::new();
        f.case("fast", r#"{"name": "fast", "user_input": {"time_s": 0.1}}"#);
        let mut s = spec(1);
        s.command = vec!["./no-such-bench".into(), "{case}".into()];
        let tally = run_dir(&f, s, &Baselines::default()).await.unwrap();
        assert_eq!(
            tally.outcome(),
            (
                Outcome::Error,
                "1 of 1 case could not run: cannot start './no-such-bench': No such file or directory (os error 2)"
                    .to_string()
            )
        );
        let (cases, _) = f.drain();
        assert_eq!(cases[0].verdict, "error");

        let f = Fixture::new();
        std::fs::create_dir_all(f.ws().join("cases")).unwrap();
        let tally = run_dir(&f, spec(1), &Baselines::default()).await.unwrap();
        assert_eq!(
            tally.outcome(),
            (Outcome::Error, "no benchmark cases found".to_string())
        );
    }

    #[tokio::test]
    async fn malformed_case_file_is_an_error_and_the_rest_still_run() {
        let mut f = Fixture::new();
        f.case("broken", r#"{"name": 3}"#);
        f.case(
            "good",
            r#"{"name": "good", "user_input": {"time_s": 0.1}, "baseline_time_s": 0.1, "tolerance": 0.2}"#,
        );
        f.case(
            "twin",
            r#"{"name": "good", "user_input": {"time_s": 0.2}, "baseline_time_s": 0.2, "tolerance": 0.2}"#,
        );
        let tally = run_dir(&f, spec(2), &Baselines::default()).await.unwrap();
        assert_eq!(
            tally.outcome(),
            (
                Outcome::Error,
                "2 of 3 cases could not run: case broken (cases/broken.json): \"name\" must be a string, found a number (3)"
                    .to_string()
            )
        );
        let (cases, _) = f.drain();
        let by_name: Vec<(&str, &str)> = cases
            .iter()
            .map(|c| (c.name.as_str(), c.verdict.as_str()))
            .collect();
        assert_eq!(
            by_name,
            [("broken", "error"), ("twin", "error"), ("good", "pass")]
        );
        assert_eq!(cases[0].file, "cases/broken.json");
        assert_eq!(
            message(&cases[0]),
            "case broken (cases/broken.json): \"name\" must be a string, found a number (3)"
        );
        assert_eq!(cases[0].explanation.clone().unwrap().rule, "input");
        assert!(
            message(&cases[1]).contains("already used by cases/good.json"),
            "{}",
            message(&cases[1])
        );
    }

    #[tokio::test]
    async fn extractor_metric_is_judged_when_the_job_names_it() {
        let mut f = Fixture::new();
        f.case(
            "analytic",
            r#"{"name": "analytic", "user_input": {"print": "Total time for analytic: 25 ms"},
                "baseline_time_s": 0.025, "tolerance": 0.1}"#,
        );
        let mut s = spec(3);
        s.metric = "analytic_time_s".into();
        s.extractors.push(pb::Extractor {
            metric: "analytic_time_s".into(),
            pattern: r"Total time for analytic:\s*([\d.]+)\s*(ns|us|ms|s)\b".into(),
        });
        run_dir(&f, s, &Baselines::default()).await.unwrap();
        let (cases, log) = f.drain();
        let r = &cases[0];
        assert_eq!(r.metric, "analytic_time_s");
        assert_eq!(r.verdict, "pass", "{}", message(r));
        let m = metric(r, "analytic_time_s");
        assert_eq!(
            (m.source.as_str(), m.unit.as_str(), m.n),
            ("reported", "s", 3)
        );
        assert!((m.median - 0.025).abs() < 1e-12);
        assert!(log.contains("Total time for analytic: 25 ms"), "{log}");
    }

    #[tokio::test]
    async fn missing_primary_metric_is_an_error() {
        let mut f = Fixture::new();
        f.case("quiet", r#"{"name": "quiet", "user_input": {}}"#);
        let mut s = spec(1);
        s.metric = "analytic_time_s".into();
        run_dir(&f, s, &Baselines::default()).await.unwrap();
        let (cases, _) = f.drain();
        assert_eq!(cases[0].verdict, "error");
        assert!(
            message(&cases[0]).starts_with("metric 'analytic_time_s' is missing from run 1 of 1"),
            "{}",
            message(&cases[0])
        );
    }

    #[tokio::test]
    async fn measured_metrics_include_cpu_time_and_peak_rss() {
        let mut f = Fixture::new();
        f.case(
            "heavy",
            r#"{"name": "heavy", "user_input": {"alloc_mb": 64, "burn_s": 0.1}}"#,
        );
        run_dir(&f, spec(1), &Baselines::default()).await.unwrap();
        let (cases, _) = f.drain();
        let r = &cases[0];
        // No total_time_s reported: judged on the wall time, and no anchor.
        assert_eq!(r.metric, WALL_TIME);
        assert_eq!(r.verdict, "no_baseline", "{}", message(r));
        let cpu = metric(r, CPU_TIME);
        assert_eq!((cpu.source.as_str(), cpu.unit.as_str()), ("measured", "s"));
        assert!(cpu.median >= 0.09, "{cpu:?}");
        let rss = metric(r, PEAK_RSS);
        assert_eq!(rss.unit, "bytes");
        assert!(rss.median > 64.0 * 1024.0 * 1024.0, "{rss:?}");
        assert!(r.metrics.iter().all(|m| m.name != GPU_MEMORY_PEAK));
        assert!(
            summary_line(r).starts_with("msfleet: case heavy: no_baseline wall_time_s "),
            "{}",
            summary_line(r)
        );
        assert!(summary_line(r).ends_with(" (nothing to compare with yet)\n"));
    }

    /// A run over the job's memory limit is an error case naming the limit (where this
    /// machine lets the test make a memory cgroup).
    #[tokio::test]
    async fn a_run_over_the_memory_limit_is_an_error_naming_it() {
        if !crate::contain::active().mode().memory() {
            eprintln!("skipped: no writable cgroup memory controller here");
            return;
        }
        let mut f = Fixture::new();
        f.case("hog", r#"{"name": "hog", "user_input": {"alloc_mb": 256}}"#);
        let bench = f.bench(spec(1)).with_containment("t-1", Some(64 << 20));
        let (cases, errors) = load_cases(f.ws(), &bench.plan.cases);
        let (_stop_tx, mut stop) = watch::channel(None);
        let mut guard = Guard::new(
            tokio::time::Instant::now() + Duration::from_secs(120),
            &mut stop,
        );
        let tally = bench
            .run_all(&cases, &errors, &Baselines::default(), &mut guard)
            .await
            .unwrap();
        let (cases, _) = f.drain();
        assert_eq!(cases[0].verdict, "error");
        assert!(
            message(&cases[0]).contains("out of memory: the job's limit is 64 MiB, peak "),
            "{}",
            message(&cases[0])
        );
        let (outcome, _) = tally.outcome();
        assert_eq!(outcome, Outcome::Error);
    }

    #[tokio::test]
    async fn non_zero_exit_is_an_error_with_the_exit_code() {
        let mut f = Fixture::new();
        f.case(
            "crash",
            r#"{"name": "crash", "user_input": {"exit": 3, "stderr": "boom: out of memory"}}"#,
        );
        f.case(
            "bad-json",
            r#"{"name": "bad-json", "user_input": {"bad_json": true}}"#,
        );
        let tally = run_dir(&f, spec(2), &Baselines::default()).await.unwrap();
        assert_eq!(tally.outcome().1, "2 of 2 cases errored");
        let (cases, log) = f.drain();
        let crash = cases.iter().find(|c| c.name == "crash").unwrap();
        assert_eq!(crash.verdict, "error");
        let msg = message(crash);
        assert!(
            msg.starts_with("warmup run 1 of 1 of 'python3 bench.py ")
                && msg.contains("exited with code 3; last lines of stderr:\n  boom: out of memory"),
            "{msg}"
        );
        assert!(
            log.contains("msfleet: case crash: error: warmup run 1 of 1"),
            "{log}"
        );
        let bad = cases.iter().find(|c| c.name == "bad-json").unwrap();
        assert!(
            message(bad)
                .contains("the metrics file ($MSFLEET_METRICS) is unreadable: not valid JSON"),
            "{}",
            message(bad)
        );
    }

    #[tokio::test]
    async fn operators_that_moved_make_a_regression() {
        let mut f = Fixture::new();
        f.case(
            "ops",
            r#"{"name": "ops", "user_input": {"time_s": 0.1, "ops": {"mm": 0.08, "new_op": 0.001}},
                "baseline_time_s": 0.1, "tolerance": 0.2, "operator_tolerance": 0.1,
                "operators": [{"name": "mm", "total_time_s": 0.05, "num_calls": 3},
                              {"name": "gone", "total_time_s": 0.01, "num_calls": 1}]}"#,
        );
        run_dir(&f, spec(2), &Baselines::default()).await.unwrap();
        let (cases, _) = f.drain();
        let r = &cases[0];
        assert_eq!(r.verdict, "regression", "{}", message(r));
        assert!(r.rerun && r.confirmed);
        assert_eq!(r.operators_moved, ["mm +60.0%"]);
        assert_eq!(r.operators_missing, ["gone"]);
        assert_eq!(r.operators_new, ["new_op"]);
        assert_eq!(r.explanation.clone().unwrap().rule, "operators");
    }

    #[tokio::test]
    async fn stored_baselines_replace_the_case_file_anchor() {
        let mut f = Fixture::new();
        // The case file's anchor says regression; the accepted anchor and history say pass.
        f.case(
            "moved",
            r#"{"name": "moved", "user_input": {"time_s": 0.1}, "baseline_time_s": 0.05, "tolerance": 0.2}"#,
        );
        let (loaded, _) = load_cases(f.ws(), &["cases".to_string()]);
        let stored = pb::Baseline {
            key: Some(pb::BaselineKey {
                case: "moved".into(),
                input_hash: loaded[0].input_hash.clone(),
                metric: TOTAL_TIME.into(),
                profile: "p".into(),
            }),
            anchor: Some(0.1),
            history: (0..6)
                .map(|i| pb::BaselineRun {
                    job_id: format!("j{i}"),
                    median: 0.1 * (1.0 + 0.005 * f64::from(i % 2)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let other_metric = pb::Baseline {
            key: Some(pb::BaselineKey {
                metric: WALL_TIME.into(),
                ..stored.key.clone().unwrap()
            }),
            anchor: Some(100.0),
            ..Default::default()
        };
        let baselines = Baselines::from_list(vec![other_metric, stored]);
        run_dir(&f, spec(3), &baselines).await.unwrap();
        let (cases, _) = f.drain();
        let ex = cases[0].explanation.clone().unwrap();
        assert_eq!(cases[0].verdict, "pass", "{}", ex.message);
        assert_eq!(ex.rule, "history");
        assert_eq!(ex.k, 6);
        assert_eq!(ex.baseline_run_ids, ["j0", "j1", "j2", "j3", "j4", "j5"]);
    }

    #[tokio::test]
    async fn unavailable_baselines_are_said_in_the_explanation() {
        let mut f = Fixture::new();
        f.case(
            "c",
            r#"{"name": "c", "user_input": {"time_s": 0.1}, "baseline_time_s": 0.1, "tolerance": 0.2}"#,
        );
        let baselines = Baselines {
            unavailable: Some("connecting to http://x: refused".into()),
            ..Default::default()
        };
        run_dir(&f, spec(1), &baselines).await.unwrap();
        let (cases, _) = f.drain();
        assert_eq!(cases[0].verdict, "pass");
        assert!(
            message(&cases[0]).ends_with(
                "; history unavailable: connecting to http://x: refused (judged with the case file's anchors only)"
            ),
            "{}",
            message(&cases[0])
        );
        assert!(
            summary_line(&cases[0]).ends_with(
                "; history unavailable: connecting to http://x: refused (judged with the case file's anchors only)\n"
            ),
            "{}",
            summary_line(&cases[0])
        );
    }

    #[tokio::test]
    async fn a_case_with_only_history_to_judge_by_is_an_error_when_history_is_unavailable() {
        let mut f = Fixture::new();
        f.case("c", r#"{"name": "c", "user_input": {"time_s": 0.1}}"#);
        let unavailable = Baselines {
            unavailable: Some("connecting to http://x: refused".into()),
            ..Default::default()
        };
        let tally = run_dir(&f, spec(1), &unavailable).await.unwrap();
        let (cases, _) = f.drain();
        assert_eq!(cases[0].verdict, "error", "{}", message(&cases[0]));
        assert_eq!(
            message(&cases[0]),
            "history unavailable: connecting to http://x: refused (the case file has no anchor to judge by)"
        );
        assert!(!cases[0].metrics.is_empty(), "what was measured is kept");
        // The fleet's failure, not the benchmark's: the attempt is `error`.
        let (outcome, why) = tally.outcome();
        assert_eq!(outcome, Outcome::Error, "{why}");
        assert!(why.contains("history unavailable: connecting"), "{why}");
        // With the history reachable and empty, it is no_baseline as before.
        run_dir(&f, spec(1), &Baselines::default()).await.unwrap();
        let (cases, _) = f.drain();
        assert_eq!(cases[0].verdict, "no_baseline", "{}", message(&cases[0]));
    }

    #[tokio::test]
    async fn a_cancel_stops_the_running_process_group() {
        let mut f = Fixture::new();
        f.case("sleepy", r#"{"name": "sleepy", "user_input": {}}"#);
        // The shell ignores SIGTERM, so the grace period runs out and SIGKILL follows; its
        // child sleep is in the same group and goes too.
        let s = BenchmarkSpec {
            command: vec![
                "sh".into(),
                "-c".into(),
                "trap '' TERM; sleep 30 & echo $! > {name}.pid; wait".into(),
            ],
            cases: vec!["cases".into()],
            warmup: Some(0),
            repetitions: Some(1),
            ..Default::default()
        };
        let bench = f.bench(s);
        let (cases, _) = load_cases(f.ws(), &bench.plan.cases);
        let (stop_tx, mut stop) = watch::channel(None);
        let mut guard = Guard::new(
            tokio::time::Instant::now() + Duration::from_secs(60),
            &mut stop,
        );
        let pid_file = f.ws().join("sleepy.pid");
        let watcher = {
            let pid_file = pid_file.clone();
            tokio::spawn(async move {
                while !pid_file.exists() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                stop_tx
                    .send(Some(StopReason::Cancelled("user".into())))
                    .unwrap();
                stop_tx
            })
        };
        let t0 = Instant::now();
        let r = bench
            .run_all(&cases, &[], &Baselines::default(), &mut guard)
            .await;
        assert_eq!(r, Err(Halt::Stop(StopReason::Cancelled("user".into()))));
        assert!(t0.elapsed() < Duration::from_secs(10));
        let _stop_tx = watcher.await.unwrap();
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The sleep was in the run's group: it is dead (gone, or a zombie waiting for init).
        std::thread::sleep(Duration::from_millis(100));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
        assert!(
            stat.is_empty() || state == Some('Z'),
            "the run's child must be killed: {stat}"
        );
        let (results, _) = f.drain();
        assert!(results.is_empty(), "a stopped case is not reported");
        // A stopped guard stops the next run at once.
        assert_eq!(
            guard.wait().await,
            Halt::Stop(StopReason::Cancelled("user".into()))
        );
    }

    #[tokio::test]
    async fn the_deadline_times_the_attempt_out() {
        let f = Fixture::new();
        f.case(
            "sleepy",
            r#"{"name": "sleepy", "user_input": {"sleep_s": 30}}"#,
        );
        let bench = f.bench(spec(1));
        let (cases, _) = load_cases(f.ws(), &bench.plan.cases);
        let (_stop_tx, mut stop) = watch::channel(None);
        let mut guard = Guard::new(
            tokio::time::Instant::now() + Duration::from_millis(500),
            &mut stop,
        );
        let t0 = Instant::now();
        let r = bench
            .run_all(&cases, &[], &Baselines::default(), &mut guard)
            .await;
        assert_eq!(r, Err(Halt::TimedOut));
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
}
