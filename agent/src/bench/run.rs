//! Runs one attempt of a benchmark job.
//!
//! Every case file named by the job is run `warmup + repetitions` times in the job's workspace,
//! each run a fresh process in its own process group, reaped with `wait4` so that its resource
//! usage is exactly that of the run. Each measured run yields
//!
//! * **measured** metrics, by the agent: `wall_time_s`, `cpu_time_s` (user + system),
//!   `peak_rss_bytes`, and on NVIDIA hosts `gpu_memory_peak_bytes` and `gpu_throttle_reasons`
//!   (NVML, sampled every 50 ms while the run lasts; absent without NVML);
//! * **reported** metrics, by the case's command: every top-level finite number of the JSON object
//!   it writes to `$MSFLEET_METRICS` (plus its `operators` list), and the job's regex extractors
//!   applied to the run's output.
//!
//! The primary metric (the job's `metric`, else `total_time_s` when every run reported it, else
//! `wall_time_s`) is judged against the case's baselines with [`verdict::judge`]; the operators
//! with [`verdict::compare_operators`]. A regression candidate is re-run once and confirmed (or
//! not) with [`verdict::confirm`]. One `CaseResult` per case is sent as soon as the case is done.
//!
//! [`run`] is the attempt (spec, case loading, baselines from the scheduler, outcome); [`Bench`]
//! runs loaded cases against given baselines and needs no scheduler.

use super::verdict::{self, Direction, Judgement, OperatorReport, Rules, Verdict};
use crate::attempt::{
    attempt_timeout, finished, halted, AttemptSpec, Guard, Halt, StopReason, Updates,
};
use crate::config::AgentConfig;
use crate::process::{OutputHook, ProcessGroup};
use msfleet_proto::bench::{self as pbench, Extract, TOTAL_TIME, WALL_TIME};
use msfleet_proto::case::{self, Case, CaseError};
use msfleet_proto::{self as pb, task_update, BenchmarkSpec, Finished, Outcome};
use nix::sys::signal::Signal;
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Measured by the agent: user + system CPU time of the run's process tree.
pub const CPU_TIME: &str = "cpu_time_s";
/// Measured by the agent: peak resident set size of the run (its largest process).
pub const PEAK_RSS: &str = "peak_rss_bytes";
/// Measured through NVML: peak GPU memory used by the run's processes.
pub const GPU_MEMORY_PEAK: &str = "gpu_memory_peak_bytes";
/// Measured through NVML: NVML clock throttle reason bits seen during the run (GPU idle excluded).
pub const GPU_THROTTLE: &str = "gpu_throttle_reasons";

/// Output of one run kept in memory for the extractors (the newest part).
pub const OUTPUT_CAP: usize = 4 * 1024 * 1024;
/// Stderr kept for the error message of a failed run.
const STDERR_TAIL_CAP: usize = 16 * 1024;
/// Lines of stderr quoted when a run fails.
const STDERR_TAIL_LINES: usize = 10;
/// How often NVML is sampled during a run.
const GPU_SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How long the agent keeps asking the scheduler for baselines before it judges without them.
pub const BASELINE_RETRY_BUDGET: Duration = Duration::from_secs(30);

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

// ---------------------------------------------------------------- baselines

/// Baselines of this agent's profile for the attempt's cases.
#[derive(Debug, Clone, Default)]
pub struct Baselines {
    /// By (case name, input hash); one entry per metric.
    pub by_case: HashMap<(String, String), Vec<pb::Baseline>>,
    /// Set when the scheduler could not be asked: said in every explanation.
    pub unavailable: Option<String>,
}

impl Baselines {
    pub fn from_list(list: Vec<pb::Baseline>) -> Baselines {
        let mut by_case: HashMap<(String, String), Vec<pb::Baseline>> = HashMap::new();
        for b in list {
            let Some(k) = &b.key else { continue };
            by_case
                .entry((k.case.clone(), k.input_hash.clone()))
                .or_default()
                .push(b);
        }
        Baselines {
            by_case,
            unavailable: None,
        }
    }

    fn find(&self, lc: &LoadedCase, metric: &str) -> Option<&pb::Baseline> {
        self.by_case
            .get(&(lc.case.name.clone(), lc.input_hash.clone()))?
            .iter()
            .find(|b| b.key.as_ref().is_some_and(|k| k.metric == metric))
    }
}

/// The verdict inputs of a case's primary metric: the case file's anchors, with the stored
/// anchor (accepted with `msctl baseline accept`) in place of `baseline_time_s`, and the stored
/// history of accepted runs.
pub fn baseline_for(c: &Case, stored: Option<&pb::Baseline>) -> verdict::Baseline {
    let anchor = |a: &case::Anchor| verdict::Anchor {
        value: a.time_s,
        tolerance: a.tolerance,
    };
    let stored_anchor = stored
        .and_then(|b| b.anchor)
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(|value| verdict::Anchor {
            value,
            tolerance: c.baseline_tolerance,
        });
    let history = stored.map_or(&[][..], |b| {
        &b.history[b.history.len().saturating_sub(verdict::DEFAULT_K_WINDOW)..]
    });
    verdict::Baseline {
        initial: c.initial.as_ref().map(anchor),
        baseline: stored_anchor.or_else(|| c.baseline.as_ref().map(anchor)),
        history: history.iter().map(|r| r.median).collect(),
        history_ids: history.iter().map(|r| r.job_id.clone()).collect(),
    }
}

/// Why one GetBaselines call failed.
enum FetchError {
    /// Worth another try (scheduler down or restarting).
    Transient(String),
    Final(String),
}

async fn get_baselines_once(
    addr: &str,
    req: pb::GetBaselinesRequest,
) -> Result<pb::GetBaselinesResponse, FetchError> {
    let endpoint = tonic::transport::Endpoint::from_shared(addr.to_string())
        .map_err(|e| FetchError::Final(format!("bad scheduler address '{addr}': {e}")))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| FetchError::Transient(format!("connecting to {addr}: {e}")))?;
    let mut client = pb::agent_link_client::AgentLinkClient::new(channel)
        .max_decoding_message_size(pb::MAX_MESSAGE)
        .max_encoding_message_size(pb::MAX_MESSAGE);
    let mut request = tonic::Request::new(req);
    request.set_timeout(Duration::from_secs(10));
    match client.get_baselines(request).await {
        Ok(r) => Ok(r.into_inner()),
        Err(s) => {
            use tonic::Code;
            let msg = format!("GetBaselines: {}: {}", s.code(), s.message());
            Err(match s.code() {
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Unknown
                | Code::Internal
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Cancelled => FetchError::Transient(msg),
                _ => FetchError::Final(msg),
            })
        }
    }
}

/// Asks the scheduler at `addr` for the baselines of `req`'s cases, retrying transient failures
/// for up to `budget`. `Ok(Err(why))` when it gave up; `Err` when the attempt was stopped.
pub async fn fetch_baselines(
    addr: &str,
    req: pb::GetBaselinesRequest,
    budget: Duration,
    guard: &mut Guard<'_>,
) -> Result<Result<pb::GetBaselinesResponse, String>, Halt> {
    let give_up = Instant::now() + budget;
    let mut pause = Duration::from_millis(500);
    loop {
        let outcome = tokio::select! {
            r = get_baselines_once(addr, req.clone()) => r,
            h = guard.wait() => return Err(h),
        };
        match outcome {
            Ok(resp) => return Ok(Ok(resp)),
            Err(FetchError::Final(why)) => return Ok(Err(why)),
            Err(FetchError::Transient(why)) => {
                if Instant::now() + pause > give_up {
                    return Ok(Err(why));
                }
                tracing::warn!(%why, retry_in = ?pause, "baselines unavailable");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    h = guard.wait() => return Err(h),
                }
                pause = (pause * 2).min(Duration::from_secs(8));
            }
        }
    }
}

// ---------------------------------------------------------------- one run

/// Where a metric comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Measured,
    Reported,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Measured => "measured",
            Source::Reported => "reported",
        }
    }
}

/// What one run of a case yielded.
#[derive(Debug, Clone, Default)]
struct RunSample {
    /// Agent-measured metrics, in a fixed order.
    measured: Vec<(&'static str, f64)>,
    /// From `$MSFLEET_METRICS` and the extractors.
    reported: BTreeMap<String, f64>,
    operators: Vec<verdict::OperatorTime>,
    /// Throttle reason bits seen (GPU idle excluded); 0 without NVML.
    throttle: u64,
}

impl RunSample {
    fn get(&self, metric: &str) -> Option<f64> {
        self.measured
            .iter()
            .find(|(n, _)| *n == metric)
            .map(|(_, v)| *v)
            .or_else(|| self.reported.get(metric).copied())
    }
}

/// What the `$MSFLEET_METRICS` file said.
#[derive(Debug, Clone, Default, PartialEq)]
struct Reported {
    metrics: Vec<(String, f64)>,
    operators: Vec<verdict::OperatorTime>,
}

/// Parses the JSON object a case wrote to `$MSFLEET_METRICS`: every top-level finite number is a
/// metric; `operators` is a list of `{name, total_time_s, num_calls}` (`num_calls` optional).
fn parse_reported(bytes: &[u8]) -> Result<Reported, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("the top level must be a JSON object".into());
    };
    let mut out = Reported::default();
    for (key, v) in map {
        if key == "operators" {
            if !v.is_null() {
                out.operators = parse_operators(&v)?;
            }
        } else if let Some(x) = v.as_f64().filter(|x| x.is_finite()) {
            out.metrics.push((key, x));
        }
    }
    Ok(out)
}

fn parse_operators(v: &Value) -> Result<Vec<verdict::OperatorTime>, String> {
    let Value::Array(items) = v else {
        return Err("\"operators\" must be a list of {name, total_time_s, num_calls}".into());
    };
    let mut ops = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let name = item
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("operators[{i}] has no \"name\" string"))?;
        let total_time_s = item
            .get("total_time_s")
            .and_then(Value::as_f64)
            .filter(|t| t.is_finite() && *t >= 0.0)
            .ok_or_else(|| {
                format!("operators[{i}] ({name}): \"total_time_s\" must be a non-negative number")
            })?;
        let num_calls = match item.get("num_calls") {
            None | Some(Value::Null) => 0,
            Some(n) => n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|x| *x >= 0.0 && x.fract() == 0.0 && *x <= u64::MAX as f64)
                        .map(|x| x as u64)
                })
                .ok_or_else(|| {
                    format!("operators[{i}] ({name}): \"num_calls\" must be a non-negative integer")
                })?,
        };
        ops.push(verdict::OperatorTime {
            name: name.to_string(),
            total_time_s,
            num_calls,
        });
    }
    Ok(ops)
}

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

// ---------------------------------------------------------------- GPU sampling

/// What NVML showed during one run.
#[derive(Debug, Clone, Default)]
struct GpuPeak {
    /// Peak memory of the run's processes, when any showed up on a GPU.
    ours: Option<u64>,
    /// Throttle bits of the GPUs the run's processes used.
    ours_throttle: u64,
    /// NVML listed processes this agent cannot see (another pid namespace): the run's own
    /// processes cannot be told apart, so the device-wide numbers stand in.
    foreign_pids: bool,
    /// Peak rise of the devices' used memory over the start of the run.
    device_delta: u64,
    all_throttle: u64,
}

impl GpuPeak {
    /// `(peak memory bytes, throttle bits)`, when the run used a GPU.
    fn metrics(&self) -> Option<(u64, u64)> {
        match self.ours {
            Some(bytes) => Some((bytes, self.ours_throttle)),
            None if self.foreign_pids && self.device_delta > 0 => {
                Some((self.device_delta, self.all_throttle))
            }
            None => None,
        }
    }
}

/// Samples NVML on a blocking thread until finished.
struct GpuWatch {
    stop: std::sync::mpsc::Sender<()>,
    task: JoinHandle<GpuPeak>,
}

impl GpuWatch {
    fn start(nvml: Arc<Nvml>, pgid: libc::pid_t, marker: String) -> GpuWatch {
        let (stop, stop_rx) = std::sync::mpsc::channel();
        let task = tokio::task::spawn_blocking(move || sample_gpus(&nvml, pgid, &marker, &stop_rx));
        GpuWatch { stop, task }
    }

    async fn finish(self) -> GpuPeak {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

fn sample_gpus(
    nvml: &Nvml,
    pgid: libc::pid_t,
    marker: &str,
    stop: &std::sync::mpsc::Receiver<()>,
) -> GpuPeak {
    let count = nvml.device_count().unwrap_or(0);
    let devices: Vec<_> = (0..count)
        .filter_map(|i| nvml.device_by_index(i).ok())
        .collect();
    let used = |d: &nvml_wrapper::Device<'_>| d.memory_info().map_or(0, |m| m.used);
    let start_used: u64 = devices.iter().map(used).sum();
    let mut peak = GpuPeak::default();
    let mut members: HashMap<u32, Option<bool>> = HashMap::new();
    loop {
        let mut ours_total = 0u64;
        let mut seen_ours = false;
        let mut used_total = 0u64;
        for d in &devices {
            used_total += used(d);
            let throttle = d
                .current_throttle_reasons()
                .map_or(0, |t| t.difference(ThrottleReasons::GPU_IDLE).bits());
            peak.all_throttle |= throttle;
            let mut on_device = false;
            for p in d.running_compute_processes().unwrap_or_default() {
                match *members
                    .entry(p.pid)
                    .or_insert_with(|| belongs(p.pid, pgid, marker))
                {
                    Some(true) => {
                        on_device = true;
                        if let UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
                            ours_total += bytes;
                        }
                    }
                    Some(false) => {}
                    None => peak.foreign_pids = true,
                }
            }
            if on_device {
                seen_ours = true;
                peak.ours_throttle |= throttle;
            }
        }
        if seen_ours {
            peak.ours = Some(peak.ours.unwrap_or(0).max(ours_total));
        }
        peak.device_delta = peak.device_delta.max(used_total.saturating_sub(start_used));
        match stop.recv_timeout(GPU_SAMPLE_EVERY) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return peak,
        }
    }
}

/// Whether `pid` belongs to the run: in its process group, or carrying its environment marker
/// (a process that left the group). `None` when the pid is not visible here.
fn belongs(pid: u32, pgid: libc::pid_t, marker: &str) -> Option<bool> {
    let p = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: getpgid only reads its integer argument.
    let group = unsafe { libc::getpgid(p) };
    if group < 0 {
        return None;
    }
    if group == pgid {
        return Some(true);
    }
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    Some(env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
}

/// Names of the performance-relevant throttle reasons in `bits`.
fn throttle_names(bits: u64) -> Vec<&'static str> {
    let t = ThrottleReasons::from_bits_truncate(bits);
    [
        (ThrottleReasons::SW_POWER_CAP, "sw_power_cap"),
        (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
        (ThrottleReasons::SYNC_BOOST, "sync_boost"),
        (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
        (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
        (
            ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
            "hw_power_brake_slowdown",
        ),
    ]
    .into_iter()
    .filter(|(flag, _)| t.contains(*flag))
    .map(|(_, name)| name)
    .collect()
}

/// Loads NVML for GPU metrics; `Err(why)` without a driver or without GPUs.
pub async fn load_nvml() -> Result<Arc<Nvml>, String> {
    let loaded = tokio::task::spawn_blocking(|| {
        let nvml = Nvml::init().map_err(|e| e.to_string())?;
        match nvml.device_count() {
            Ok(n) if n > 0 => Ok(nvml),
            Ok(_) => Err("no NVIDIA GPU".to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    match loaded {
        Ok(r) => r.map(Arc::new),
        Err(e) => Err(e.to_string()),
    }
}

// ---------------------------------------------------------------- metrics and judgement

/// The samples of one metric over a case's measured runs.
#[derive(Debug, Clone)]
struct Series {
    name: String,
    source: Source,
    samples: Vec<f64>,
}

fn unit_of(metric: &str) -> &'static str {
    if metric.ends_with("_s") {
        "s"
    } else if metric.ends_with("_bytes") {
        "bytes"
    } else {
        ""
    }
}

/// Every metric of the runs: measured ones first (in their order), then the reported ones by
/// name. A reported metric with a measured metric's name is dropped (the agent's value wins).
fn series_of(runs: &[RunSample]) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    let mut add = |name: &str, source: Source, v: f64| {
        if let Some(s) = out.iter_mut().find(|s| s.name == name) {
            if s.source == source {
                s.samples.push(v);
            }
        } else {
            out.push(Series {
                name: name.to_string(),
                source,
                samples: vec![v],
            });
        }
    };
    for r in runs {
        for (n, v) in &r.measured {
            add(n, Source::Measured, *v);
        }
    }
    for r in runs {
        for (n, v) in &r.reported {
            add(n, Source::Reported, *v);
        }
    }
    out
}

fn metric_summary(s: &Series) -> pb::MetricSummary {
    let m = verdict::median_of(&s.samples);
    let deviations: Vec<f64> = s.samples.iter().map(|v| (v - m).abs()).collect();
    let mad = verdict::median_of(&deviations);
    let robust_cv = if m != 0.0 {
        verdict::ROBUST_CV_SCALE * mad / m.abs()
    } else {
        0.0
    };
    pb::MetricSummary {
        name: s.name.clone(),
        unit: unit_of(&s.name).to_string(),
        source: s.source.as_str().to_string(),
        n: u32::try_from(s.samples.len()).unwrap_or(u32::MAX),
        median: m,
        mad,
        robust_cv,
        samples: s.samples.clone(),
    }
}

/// The metric the verdict is about: the job's, else `total_time_s` when every run reported it,
/// else `wall_time_s`.
fn primary_metric(plan_metric: Option<&str>, runs: &[RunSample]) -> String {
    if let Some(m) = plan_metric {
        return m.to_string();
    }
    if !runs.is_empty() && runs.iter().all(|r| r.reported.contains_key(TOTAL_TIME)) {
        TOTAL_TIME.to_string()
    } else {
        WALL_TIME.to_string()
    }
}

/// The primary metric's value in every run, or why it is missing.
fn primary_samples(metric: &str, runs: &[RunSample]) -> Result<Vec<f64>, String> {
    let mut samples = Vec::with_capacity(runs.len());
    for (i, r) in runs.iter().enumerate() {
        match r.get(metric) {
            Some(v) => samples.push(v),
            None => {
                let known: Vec<&str> = r
                    .measured
                    .iter()
                    .map(|(n, _)| *n)
                    .chain(r.reported.keys().map(String::as_str))
                    .collect();
                return Err(format!(
                    "metric '{metric}' is missing from run {} of {} (it has: {})",
                    i + 1,
                    runs.len(),
                    known.join(", ")
                ));
            }
        }
    }
    Ok(samples)
}

/// Per-operator medians over the runs (each run's duplicates added up first), largest first.
fn median_operators(runs: &[RunSample]) -> Vec<verdict::OperatorTime> {
    let mut order: Vec<String> = Vec::new();
    let mut per: HashMap<String, (Vec<f64>, Vec<f64>)> = HashMap::new();
    for r in runs {
        let mut this_run: BTreeMap<&str, (f64, u64)> = BTreeMap::new();
        for op in &r.operators {
            let e = this_run.entry(op.name.as_str()).or_insert((0.0, 0));
            e.0 += op.total_time_s;
            e.1 = e.1.saturating_add(op.num_calls);
        }
        for (name, (t, calls)) in this_run {
            let e = per.entry(name.to_string()).or_insert_with(|| {
                order.push(name.to_string());
                (Vec::new(), Vec::new())
            });
            e.0.push(t);
            e.1.push(calls as f64);
        }
    }
    let mut ops: Vec<verdict::OperatorTime> = order
        .into_iter()
        .filter_map(|name| {
            let (times, calls) = per.remove(&name)?;
            Some(verdict::OperatorTime {
                total_time_s: verdict::median_of(&times),
                num_calls: verdict::median_of(&calls).round() as u64,
                name,
            })
        })
        .collect();
    ops.sort_by(|a, b| {
        b.total_time_s
            .total_cmp(&a.total_time_s)
            .then_with(|| a.name.cmp(&b.name))
    });
    ops
}

/// A judged measurement.
struct Judged {
    metric: String,
    judgement: Judgement,
    operators: Vec<verdict::OperatorTime>,
    report: Option<OperatorReport>,
}

/// Judges the runs' primary metric against `stored` (or the case file) and folds in the
/// operator comparison.
fn judge_runs(
    plan: &Plan,
    lc: &LoadedCase,
    runs: &[RunSample],
    baselines: &Baselines,
) -> Result<Judged, String> {
    let metric = primary_metric(plan.metric.as_deref(), runs);
    let samples = primary_samples(&metric, runs)?;
    let stored = baselines.find(lc, &metric);
    let base = baseline_for(&lc.case, stored);
    let dir = if pbench::higher_is_better(&metric) {
        Direction::HigherIsBetter
    } else {
        Direction::LowerIsBetter
    };
    let mut judgement = verdict::judge(&samples, dir, &base, &Rules::default());
    let operators = median_operators(runs);
    let base_ops: Vec<verdict::OperatorTime> = match stored {
        Some(b) if !b.anchor_operators.is_empty() => b
            .anchor_operators
            .iter()
            .map(|o| verdict::OperatorTime {
                name: o.name.clone(),
                total_time_s: o.total_time_s,
                num_calls: o.num_calls,
            })
            .collect(),
        _ => lc
            .case
            .operators
            .iter()
            .map(|o| verdict::OperatorTime {
                name: o.name.clone(),
                total_time_s: o.total_time_s,
                num_calls: o.num_calls,
            })
            .collect(),
    };
    let report = (!operators.is_empty() && !base_ops.is_empty()).then(|| {
        verdict::compare_operators(
            &operators,
            &base_ops,
            lc.case.operator_top_n,
            lc.case.operator_tolerance,
        )
    });
    if let Some(r) = &report {
        judgement = verdict::with_operators(judgement, r);
    }
    Ok(Judged {
        metric,
        judgement,
        operators,
        report,
    })
}

fn explanation(ex: &verdict::Explanation) -> pb::Explanation {
    pb::Explanation {
        value: ex.value,
        baseline: ex.baseline,
        delta_pct: ex.delta_pct,
        limit: ex.limit.clone(),
        z: ex.z,
        t_limit: ex.t_limit,
        k: u32::try_from(ex.k).unwrap_or(u32::MAX),
        spread_cv: ex.spread_cv,
        baseline_run_ids: ex.baseline_run_ids.clone(),
        rule: ex.rule.clone(),
        message: ex.message.clone(),
    }
}

/// An `error` result for a case that could not be measured or judged.
fn error_result(
    name: &str,
    file: &str,
    input_hash: &str,
    metric: &str,
    rule: &str,
    message: String,
) -> pb::CaseResult {
    pb::CaseResult {
        name: name.to_string(),
        file: file.to_string(),
        input_hash: input_hash.to_string(),
        metric: metric.to_string(),
        verdict: Verdict::Error.as_str().to_string(),
        explanation: Some(pb::Explanation {
            rule: rule.to_string(),
            message,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The result of a case file that did not load.
pub fn case_error_result(e: &CaseError) -> pb::CaseResult {
    error_result(
        &e.case,
        &e.file.display().to_string(),
        "",
        "",
        verdict::RULE_INPUT,
        e.to_string(),
    )
}

/// A number with four significant digits, without trailing zeros.
fn num(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return format!("{x}");
    }
    let decimals = (3 - x.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// The one-line summary of a case for the attempt's log.
pub fn summary_line(r: &pb::CaseResult) -> String {
    let ex = r.explanation.clone().unwrap_or_default();
    let mut line = format!("msfleet: case {}: {}", r.name, r.verdict);
    if r.verdict == Verdict::Error.as_str() {
        line.push_str(": ");
        line.push_str(ex.message.lines().next().unwrap_or(""));
    } else {
        line.push_str(&format!(" {} {}", r.metric, num(ex.value)));
        let mut paren = Vec::new();
        if r.verdict == Verdict::NoBaseline.as_str() {
            paren.push("nothing to compare with yet".to_string());
        }
        if let Some(b) = ex.baseline {
            line.push_str(&format!(" vs {}", num(b)));
        }
        if let Some(d) = ex.delta_pct {
            paren.push(format!("{d:+.1}%"));
        }
        if !ex.limit.is_empty() && r.verdict != Verdict::NoBaseline.as_str() {
            paren.push(ex.limit.clone());
        }
        if !paren.is_empty() {
            line.push_str(&format!(" ({})", paren.join(", ")));
        }
        if r.rerun {
            line.push_str(if r.confirmed {
                ", confirmed by a re-run"
            } else {
                ", not confirmed by a re-run"
            });
        }
        if !r.operators_moved.is_empty() {
            line.push_str(&format!(
                "; operators moved: {}",
                r.operators_moved.join(", ")
            ));
        }
    }
    line.push('\n');
    line
}

// ---------------------------------------------------------------- the runner

/// Counts of the verdicts of an attempt's cases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub counts: BTreeMap<String, usize>,
}

impl Tally {
    pub fn record(&mut self, verdict: &str) {
        *self.counts.entry(verdict.to_string()).or_insert(0) += 1;
    }

    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    fn count(&self, v: Verdict) -> usize {
        self.counts.get(v.as_str()).copied().unwrap_or(0)
    }

    /// Passed when no case regressed or errored, else failed; with a reason.
    pub fn outcome(&self) -> (Outcome, String) {
        let total = self.total();
        let cases = if total == 1 { "case" } else { "cases" };
        if total == 0 {
            return (Outcome::Failed, "no benchmark cases found".into());
        }
        let (reg, err) = (self.count(Verdict::Regression), self.count(Verdict::Error));
        if reg == 0 && err == 0 {
            let parts: Vec<String> = self
                .counts
                .iter()
                .map(|(v, n)| format!("{n} {v}"))
                .collect();
            return (
                Outcome::Passed,
                format!("{total} {cases}: {}", parts.join(", ")),
            );
        }
        let reason = match (reg, err) {
            (r, 0) => format!("{r} of {total} {cases} regressed"),
            (0, e) => format!("{e} of {total} {cases} errored"),
            (r, e) => format!("{r} of {total} {cases} regressed, {e} errored"),
        };
        (Outcome::Failed, reason)
    }
}

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
    runs: AtomicU64,
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
            runs: AtomicU64::new(0),
        }
    }

    /// Records each run's process group in `path` while it runs.
    pub fn with_pgid_file(mut self, path: PathBuf) -> Bench {
        self.pgid_file = Some(path);
        self
    }

    /// Samples GPU memory and throttling through `nvml` during each run.
    pub fn with_gpu(mut self, nvml: Option<Arc<Nvml>>) -> Bench {
        self.gpu = nvml;
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
            self.report(case_error_result(e), &mut tally);
        }
        for lc in cases {
            let r = self.run_case(lc, baselines, guard).await?;
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

    /// Measures one case (re-running a regression candidate once) and judges it. `Err` only
    /// when the attempt was stopped; a case that fails is an `error` result.
    pub async fn run_case(
        &self,
        lc: &LoadedCase,
        baselines: &Baselines,
        guard: &mut Guard<'_>,
    ) -> Result<pb::CaseResult, Halt> {
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
            Err(Interrupt::Failed(why)) => return Ok(error(why)),
        };
        let first = match judge_runs(&self.plan, lc, &runs, baselines) {
            Ok(j) => j,
            Err(why) => return Ok(error(why)),
        };
        let mut judgement = first.judgement.clone();
        let mut rerun = false;
        if first.judgement.needs_confirmation {
            rerun = true;
            self.log(format!(
                "msfleet: case {}: regression candidate, re-running to confirm\n",
                lc.case.name
            ));
            let again = match self.measure(lc, guard, true).await {
                Ok(r) => r,
                Err(Interrupt::Halted(h)) => return Err(h),
                Err(Interrupt::Failed(why)) => {
                    return Ok(error(format!(
                        "the re-run confirming a regression failed: {why}"
                    )))
                }
            };
            let second = match judge_runs(&self.plan, lc, &again, baselines) {
                Ok(j) => j,
                Err(why) => {
                    return Ok(error(format!(
                        "the re-run confirming a regression failed: {why}"
                    )))
                }
            };
            judgement = verdict::confirm(&first.judgement, &second.judgement);
        }

        let mut message = judgement.explanation.message.clone();
        let throttle = runs.iter().fold(0u64, |acc, r| acc | r.throttle);
        let names = throttle_names(throttle);
        if !names.is_empty() {
            message.push_str(&format!(
                "; the GPU was throttled during the runs ({})",
                names.join(", ")
            ));
        }
        if let Some(why) = &baselines.unavailable {
            message.push_str(&format!(
                "; baselines unavailable ({why}): judged with the case file's anchors only"
            ));
        }
        let mut ex = explanation(&judgement.explanation);
        ex.message = message;
        let report = first.report.unwrap_or_default();
        Ok(pb::CaseResult {
            name: lc.case.name.clone(),
            file: lc.file.clone(),
            input_hash: lc.input_hash.clone(),
            metric: first.metric,
            verdict: judgement.verdict.as_str().to_string(),
            explanation: Some(ex),
            metrics: series_of(&runs).iter().map(metric_summary).collect(),
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
        })
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
            return Err(Interrupt::Failed("the benchmark command is empty".into()));
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
        let mut group = ProcessGroup::spawn(&mut cmd)
            .map_err(|e| Interrupt::Failed(format!("cannot start '{program}': {e}")))?;
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
            .map(|nvml| GpuWatch::start(nvml, pid, marker));
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
    stop: &mut watch::Receiver<Option<StopReason>>,
) -> Option<Finished> {
    let timeout = attempt_timeout(&a.spec);
    let mut guard = Guard::new(tokio::time::Instant::now() + timeout, stop);
    let Some(spec) = a.spec.benchmark.as_ref() else {
        return finished(
            Outcome::Error,
            "a benchmark job needs benchmark settings (command, cases)",
            -1,
        );
    };
    let plan = match Plan::new(spec) {
        Ok(p) => p,
        Err(e) => return finished(Outcome::Error, e.to_string(), -1),
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
    let result = run_with(cfg, a, plan, ws, &scratch, &run_dir, slot, tx, &mut guard).await;
    let _ = tokio::fs::remove_dir_all(&scratch).await;
    match result {
        Ok(tally) => {
            let (outcome, reason) = tally.outcome();
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
        match fetch_baselines(&cfg.scheduler, req, BASELINE_RETRY_BUDGET, guard).await? {
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

    let gpu = if cases.is_empty() {
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
    .with_gpu(gpu);
    bench.run_all(&cases, &errors, &baselines, guard).await
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::attempt::AttemptKey;
    use tokio::sync::mpsc;

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
            message(r).contains("confirmed by a re-run"),
            "{}",
            message(r)
        );
        let ex = r.explanation.clone().unwrap();
        assert!((ex.delta_pct.unwrap() - 42.857).abs() < 0.01, "{ex:?}");
        assert_eq!(ex.limit, "baseline_tolerance 20%");
        assert!(log.contains("re-running to confirm"), "{log}");
        assert!(log.contains("re-run 3 of 3"), "{log}");
        assert!(
            log.contains(
                "msfleet: case slow: regression total_time_s 0.1 vs 0.07 (+42.9%, baseline_tolerance 20%), confirmed by a re-run"
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
            (Outcome::Failed, "2 of 3 cases errored".to_string())
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
                "; baselines unavailable (connecting to http://x: refused): judged with the case file's anchors only"
            ),
            "{}",
            message(&cases[0])
        );
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

    #[test]
    fn reported_metrics_parse_numbers_and_operators() {
        let r = parse_reported(
            br#"{"total_time_s": 0.0398, "tokens": 12, "ok": true, "label": "x", "nested": {"a": 1},
                 "operators": [{"name": "mm", "total_time_s": 0.02, "num_calls": 7},
                               {"name": "add", "total_time_s": 0.001, "num_calls": 2.0},
                               {"name": "relu", "total_time_s": 0}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.metrics,
            [
                ("total_time_s".to_string(), 0.0398),
                ("tokens".to_string(), 12.0)
            ]
        );
        let ops: Vec<(&str, u64)> = r
            .operators
            .iter()
            .map(|o| (o.name.as_str(), o.num_calls))
            .collect();
        assert_eq!(ops, [("mm", 7), ("add", 2), ("relu", 0)]);
        for (bad, want) in [
            (&b"[1]"[..], "the top level must be a JSON object"),
            (b"", "not valid JSON"),
            (b"{\"x\": NaN}", "not valid JSON"),
            (b"{\"operators\": 3}", "\"operators\" must be a list"),
            (
                b"{\"operators\": [{\"total_time_s\": 1}]}",
                "operators[0] has no \"name\"",
            ),
            (
                b"{\"operators\": [{\"name\": \"a\", \"total_time_s\": -1}]}",
                "operators[0] (a): \"total_time_s\"",
            ),
            (
                b"{\"operators\": [{\"name\": \"a\", \"total_time_s\": 1, \"num_calls\": 1.5}]}",
                "operators[0] (a): \"num_calls\"",
            ),
        ] {
            let e = parse_reported(bad).unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
    }

    fn sample(reported: &[(&str, f64)], ops: &[(&str, f64)]) -> RunSample {
        RunSample {
            measured: vec![(WALL_TIME, 1.0), (CPU_TIME, 0.5)],
            reported: reported.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            operators: ops
                .iter()
                .map(|(n, t)| verdict::OperatorTime {
                    name: n.to_string(),
                    total_time_s: *t,
                    num_calls: 1,
                })
                .collect(),
            throttle: 0,
        }
    }

    #[test]
    fn primary_metric_prefers_the_job_then_total_time_then_wall_time() {
        let both = [
            sample(&[(TOTAL_TIME, 0.1)], &[]),
            sample(&[(TOTAL_TIME, 0.2)], &[]),
        ];
        let partial = [sample(&[(TOTAL_TIME, 0.1)], &[]), sample(&[], &[])];
        assert_eq!(primary_metric(None, &both), TOTAL_TIME);
        assert_eq!(primary_metric(None, &partial), WALL_TIME);
        assert_eq!(primary_metric(Some(CPU_TIME), &partial), CPU_TIME);
        assert_eq!(primary_samples(CPU_TIME, &partial).unwrap(), [0.5, 0.5]);
        let e = primary_samples(TOTAL_TIME, &partial).unwrap_err();
        assert_eq!(
            e,
            "metric 'total_time_s' is missing from run 2 of 2 (it has: wall_time_s, cpu_time_s)"
        );
    }

    #[test]
    fn operator_medians_add_duplicates_and_sort_by_time() {
        let runs = [
            sample(&[], &[("a", 1.0), ("b", 2.0), ("a", 1.0)]),
            sample(&[], &[("a", 3.0), ("b", 2.5)]),
            sample(&[], &[("a", 2.5), ("c", 9.0)]),
        ];
        let ops = median_operators(&runs);
        let got: Vec<(&str, f64)> = ops
            .iter()
            .map(|o| (o.name.as_str(), o.total_time_s))
            .collect();
        assert_eq!(got, [("c", 9.0), ("a", 2.5), ("b", 2.25)]);
    }

    #[test]
    fn series_keep_measured_first_and_drop_shadowed_reports() {
        let runs = [
            sample(&[("zeta", 1.0), (WALL_TIME, 9.0), ("alpha", 0.0)], &[]),
            sample(&[("zeta", 2.0)], &[]),
        ];
        let s: Vec<pb::MetricSummary> = series_of(&runs).iter().map(metric_summary).collect();
        let names: Vec<(&str, &str, u32)> = s
            .iter()
            .map(|m| (m.name.as_str(), m.source.as_str(), m.n))
            .collect();
        assert_eq!(
            names,
            [
                (WALL_TIME, "measured", 2),
                (CPU_TIME, "measured", 2),
                ("alpha", "reported", 1),
                ("zeta", "reported", 2)
            ]
        );
        assert_eq!(s[0].samples, [1.0, 1.0]);
        assert_eq!(s[2].robust_cv, 0.0, "a zero median does not divide");
        assert_eq!(s[3].median, 1.5);
    }

    #[test]
    fn tally_reasons() {
        let mut t = Tally::default();
        assert_eq!(t.outcome().0, Outcome::Failed);
        for v in ["pass", "pass", "improvement", "noisy"] {
            t.record(v);
        }
        assert_eq!(
            t.outcome(),
            (
                Outcome::Passed,
                "4 cases: 1 improvement, 1 noisy, 2 pass".to_string()
            )
        );
        t.record("regression");
        t.record("regression");
        t.record("error");
        assert_eq!(
            t.outcome(),
            (
                Outcome::Failed,
                "2 of 7 cases regressed, 1 errored".to_string()
            )
        );
    }

    #[test]
    fn numbers_have_four_significant_digits() {
        assert_eq!(num(0.0201234), "0.02012");
        assert_eq!(num(0.0154), "0.0154");
        assert_eq!(num(12345.6), "12346");
        assert_eq!(num(1.5), "1.5");
        assert_eq!(num(0.0), "0");
    }

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

    // ------------------------------------------------------------ GetBaselines

    struct Stub;

    #[tonic::async_trait]
    impl pb::agent_link_server::AgentLink for Stub {
        type SessionStream =
            tokio_stream::wrappers::ReceiverStream<Result<pb::SchedulerMessage, tonic::Status>>;

        async fn session(
            &self,
            _: tonic::Request<tonic::Streaming<pb::AgentMessage>>,
        ) -> Result<tonic::Response<Self::SessionStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("stub"))
        }

        async fn get_baselines(
            &self,
            req: tonic::Request<pb::GetBaselinesRequest>,
        ) -> Result<tonic::Response<pb::GetBaselinesResponse>, tonic::Status> {
            let req = req.into_inner();
            if req.attempt.map(|a| a.epoch) != Some(7) {
                return Err(tonic::Status::failed_precondition("stale epoch"));
            }
            let baselines = req
                .keys
                .into_iter()
                .map(|k| pb::Baseline {
                    key: Some(pb::BaselineKey {
                        metric: TOTAL_TIME.into(),
                        profile: "h100".into(),
                        ..k
                    }),
                    anchor: Some(0.5),
                    ..Default::default()
                })
                .collect();
            Ok(tonic::Response::new(pb::GetBaselinesResponse {
                profile: "h100".into(),
                baselines,
            }))
        }
    }

    fn request(epoch: u64) -> pb::GetBaselinesRequest {
        pb::GetBaselinesRequest {
            attempt: Some(pb::AttemptRef {
                task_id: "t".into(),
                attempt: 1,
                epoch,
            }),
            keys: vec![pb::BaselineKey {
                case: "c".into(),
                input_hash: "h".into(),
                ..Default::default()
            }],
        }
    }

    /// Serves [`Stub`] on an ephemeral port: its address and the server task.
    pub(crate) async fn stub_scheduler() -> (String, JoinHandle<Result<(), tonic::transport::Error>>)
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::agent_link_server::AgentLinkServer::new(Stub))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (addr, server)
    }

    #[tokio::test]
    async fn baselines_come_from_the_scheduler_or_fall_back() {
        let (addr, server) = stub_scheduler().await;
        let (_stop_tx, mut stop) = watch::channel(None);
        let mut guard = Guard::new(
            tokio::time::Instant::now() + Duration::from_secs(60),
            &mut stop,
        );
        let resp = fetch_baselines(&addr, request(7), Duration::from_secs(5), &mut guard)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.profile, "h100");
        let b = Baselines::from_list(resp.baselines);
        assert_eq!(
            b.by_case[&("c".to_string(), "h".to_string())][0].anchor,
            Some(0.5)
        );
        // A refusal is not retried.
        let t0 = Instant::now();
        let why = fetch_baselines(&addr, request(1), Duration::from_secs(30), &mut guard)
            .await
            .unwrap()
            .unwrap_err();
        assert!(why.contains("stale epoch"), "{why}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        server.abort();
        let _ = server.await;

        // Nobody listening: retried until the budget is spent, then given up.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let t0 = Instant::now();
        let why = fetch_baselines(&closed, request(7), Duration::from_secs(1), &mut guard)
            .await
            .unwrap()
            .unwrap_err();
        assert!(why.starts_with("connecting to"), "{why}");
        assert!(t0.elapsed() >= Duration::from_millis(500));
        assert!(t0.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn stored_anchor_keeps_the_case_tolerance_and_the_history_window() {
        let c = Case::parse(
            "c",
            r#"{"user_input": {}, "initial_time_s": 1, "baseline_time_s": 2, "baseline_tolerance": 0.3}"#,
        )
        .unwrap();
        let stored = pb::Baseline {
            anchor: Some(1.5),
            history: (0..40)
                .map(|i| pb::BaselineRun {
                    job_id: i.to_string(),
                    median: 1.0,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let b = baseline_for(&c, Some(&stored));
        assert_eq!(
            b.baseline,
            Some(verdict::Anchor {
                value: 1.5,
                tolerance: 0.3
            })
        );
        assert_eq!(b.initial.map(|a| a.value), Some(1.0));
        assert_eq!(b.history.len(), 30);
        assert_eq!(b.history_ids.first().map(String::as_str), Some("10"));
        let plain = baseline_for(&c, None);
        assert_eq!(plain.baseline.map(|a| a.value), Some(2.0));
        assert!(plain.history.is_empty());
    }
}
