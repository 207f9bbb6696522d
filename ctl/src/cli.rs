//! msctl's flags and subcommands.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Submit, watch and inspect test jobs on an msfleet scheduler.
///
/// Exit codes: 0 passed / ok, 1 tests failed (or a benchmark case regressed
/// or errored), 2 bad usage or input, 3 infrastructure error, cancelled,
/// timed out, expired or no_resource.
#[derive(Parser, Debug)]
#[command(name = "msctl", version)]
pub struct Cli {
    /// Scheduler address (http://HOST:PORT or HOST:PORT).
    #[arg(
        long,
        env = "MSFLEET_ADDR",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub addr: String,
    /// File holding your token (else $MSFLEET_TOKEN, else ~/.config/msfleet/token).
    #[arg(long, env = "MSFLEET_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the scheduler's, for https:// addresses.
    #[arg(long, env = "MSFLEET_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Export a trace of `submit` over OTLP/gRPC to this collector (e.g.
    /// http://localhost:4317; the standard OTEL_EXPORTER_OTLP_ENDPOINT does the same): the
    /// job's spans in msched and msagent join it.
    #[arg(long, value_name = "URL", global = true)]
    pub otlp_endpoint: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Submit a job (flags, or -f job.toml).
    Submit(Box<Submit>),
    /// Follow a job live: one line per finished test, progress, a final summary.
    Watch {
        job: String,
        /// One JSON object per event.
        #[arg(long)]
        json: bool,
    },
    /// Print a job's test output.
    Logs {
        job: String,
        /// Keep following until the job finishes.
        #[arg(short, long)]
        follow: bool,
    },
    /// Show one job.
    Show {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first.
    List {
        #[arg(long)]
        queue: Option<String>,
        #[arg(long)]
        state: Option<String>,
        /// key=value (repeatable; all must match).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Only jobs this token name submitted.
        #[arg(long)]
        submitter: Option<String>,
        /// Jobs per page (the scheduler returns at most 10000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Resume after the page that printed this cursor (older jobs).
        #[arg(long)]
        cursor: Option<String>,
        /// {"jobs": [...], "next_cursor": "..."}.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job (running tests are stopped: SIGTERM, grace, SIGKILL).
    Cancel {
        job: String,
        /// Wait until the job has stopped.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// List agents and their hardware.
    Agents {
        #[arg(long)]
        json: bool,
    },
    /// Drain, undrain, quarantine, health-check or forget an agent.
    Agent {
        #[command(subcommand)]
        action: AgentAction,
    },
    /// List queues with pending and running counts.
    Queues {
        #[arg(long)]
        json: bool,
    },
    /// Benchmark baselines: list, show, accept a job's results, export to case files.
    Baseline {
        #[command(subcommand)]
        action: BaselineAction,
    },
    /// Test results over time.
    Test {
        #[command(subcommand)]
        action: TestAction,
    },
    /// A finished job's compatibility matrix (tests that did not pass on every
    /// hardware profile), benchmark verdicts, and the diff against the previous
    /// run of its schedule. Exits 0 whenever the report was produced.
    Report {
        job: String,
        #[arg(long, conflicts_with_all = ["markdown"])]
        json: bool,
        /// Write JUnit XML (every test, one testsuite per profile) to FILE.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// GitHub-flavoured markdown, for an issue or a chat.
        #[arg(long)]
        markdown: bool,
        /// Show every test, not only those that did not pass everywhere.
        #[arg(long)]
        all: bool,
    },
    /// Durable cron schedules: add, list, show, pause, resume, delete, run-now.
    Schedule {
        #[command(subcommand)]
        action: ScheduleAction,
    },
    /// Print a shell completion script: `msctl completions bash > /etc/bash_completion.d/msctl`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print msctl's man page (roff): `msctl man | man -l -`.
    Man,
    /// People's tokens (admin): create, list, revoke.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Print a login link to the web dashboard (msched --http-listen) with
    /// your token; opening it logs the browser in.
    Dashboard {
        /// The dashboard's address (HOST:PORT or a URL); else read from --ready-file.
        #[arg(long, value_name = "ADDR", required_unless_present = "ready_file")]
        http: Option<String>,
        /// msched's ready file (--ready-file there): its `http ADDR` line.
        #[arg(long, value_name = "FILE", env = "MSFLEET_READY_FILE")]
        ready_file: Option<PathBuf>,
        /// Also open the link in the desktop's browser.
        #[arg(long)]
        open: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Make a token; its secret is printed once, on the last line.
    Create {
        name: String,
        #[arg(long, value_parser = ["viewer", "submitter", "admin"])]
        role: String,
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token at once.
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
pub enum AgentTokenAction {
    /// Make an agent's join token (give it to `msagent --token-file`); its
    /// secret is printed once, on the last line.
    Create {
        name: String,
        /// Trusted label key=value (repeatable): wins over the agent's own.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Hardware profile the agent is counted under (overrides its own key).
        #[arg(long)]
        profile: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List agent tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke an agent's token: its live session ends within a second and its
    /// running attempts are requeued.
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TestAction {
    /// A test's recorded outcomes and durations, newest first, per hardware profile.
    History {
        /// pytest node id, e.g. tests/smoke/test_a.py::test_x[1]
        test_id: String,
        #[arg(long)]
        profile: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ScheduleAction {
    /// Add a schedule that submits a job file's job at each cron slot.
    Add(Box<ScheduleAdd>),
    /// List schedules: next fire time in each one's zone, last job and its state.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one schedule: timing, policies, its job and its last run.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop firing until resumed.
    Pause {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Fire again.
    Resume {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a schedule (its jobs are kept).
    Delete {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Submit the schedule's job now (not tied to a slot); prints the job id.
    RunNow {
        name: String,
        /// Watch the job and exit with its result.
        #[arg(long)]
        wait: bool,
        /// Print the submitted job as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct ScheduleAdd {
    /// Schedule name (unique).
    pub name: String,
    /// 5-field crontab (minute hour day-of-month month day-of-week) or
    /// @hourly, @daily, @midnight, @nightly (02:00), @weekly, @monthly, @yearly.
    #[arg(long, allow_hyphen_values = true)]
    pub cron: String,
    /// IANA time zone the expression is read in, e.g. Asia/Shanghai.
    #[arg(long, default_value = "UTC")]
    pub tz: String,
    /// After scheduler downtime: fire the latest missed slot once, or skip it.
    #[arg(long, default_value = "fire_once", value_parser = ["fire_once", "skip"])]
    pub misfire: String,
    /// While the previous run is still going: skip the slot, or queue its job.
    #[arg(long, default_value = "skip", value_parser = ["skip", "queue"])]
    pub overlap: String,
    /// The job to submit, as a TOML job file (the format of `submit -f`).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Override the job file's queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Override the job file's requirement expression.
    #[arg(long = "require")]
    pub require: Option<String>,
    /// Print the schedule as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum BaselineAction {
    /// List baselines: case, metric, hardware profile, anchor, history.
    List {
        /// Only this case.
        #[arg(long = "case")]
        case: Option<String>,
        /// Only this hardware profile.
        #[arg(long)]
        profile: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Every baseline of one case: anchor, operators, history and audit trail.
    Show {
        case: String,
        #[arg(long)]
        profile: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Make a finished benchmark job's results the baselines' anchors (audited).
    Accept {
        job: String,
        /// Who accepts: the scheduler records your token's name; a different
        /// --by is refused.
        #[arg(long = "by")]
        by: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write the baselines back into the case files of DIR (baseline_time_s, operators).
    Export {
        dir: PathBuf,
        /// Hardware profile whose baselines to write (needed when several match).
        #[arg(long)]
        profile: Option<String>,
        /// Metric whose baseline becomes baseline_time_s (default: total_time_s, else wall_time_s).
        #[arg(long)]
        metric: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentAction {
    /// Finish running work, take nothing new.
    Drain {
        name: String,
        /// Stop what still runs this long from now (e.g. 30m) and requeue it
        /// elsewhere without using its retries.
        #[arg(long)]
        deadline: Option<String>,
    },
    /// Take work again (also ends a quarantine; alias `release`).
    #[command(visible_alias = "release")]
    Undrain { name: String },
    /// Take nothing new but health checks, and stop what it runs now (its
    /// attempts are requeued elsewhere without using a retry): its results
    /// are suspect. Ended by `undrain`.
    Quarantine {
        name: String,
        /// Why, shown in `msctl agents` with your token's name.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Run a health check on the agent (also a quarantined one) and wait for
    /// it: the agent probes its host (disk free, GPU and NPU health, pytest).
    /// Exit 0 healthy, 1 unhealthy, 3 it could not run. A pass releases an
    /// automatic quarantine (infra errors, unhealthy probe), not an admin's.
    Check {
        name: String,
        /// One JSON object per line: the job, then each event.
        #[arg(long)]
        json: bool,
    },
    /// Remove an agent that is gone for good (not connected, holding no
    /// attempts): `agents` and each-agent fan-outs no longer list it.
    Forget { name: String },
    /// Agents' join tokens: create, list, revoke.
    Token {
        #[command(subcommand)]
        action: AgentTokenAction,
    },
}

#[derive(Args, Debug)]
pub struct Submit {
    /// Read the job from a TOML file (see --dry-run for the format).
    #[arg(short = 'f', long = "file", conflicts_with_all = ["kind"])]
    pub file: Option<PathBuf>,
    /// What to run: pytest, or bench (benchmark cases).
    #[arg(value_parser = ["pytest", "bench", "benchmark"])]
    pub kind: Option<String>,
    /// Directory with the tests (on the agent; must be under one of its roots).
    #[arg(long, conflicts_with = "git")]
    pub dir: Option<PathBuf>,
    /// Git repository to check out.
    #[arg(long)]
    pub git: Option<String>,
    /// Branch, tag or commit of --git.
    #[arg(long = "ref", requires = "git")]
    pub git_ref: Option<String>,
    #[arg(long)]
    pub queue: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// Requirement expression, e.g. 'gpu.count>=1 && label.pool=="nightly"'.
    #[arg(long = "require")]
    pub require: Option<String>,
    /// Time limit of one attempt, e.g. 30m.
    #[arg(long, allow_hyphen_values = true)]
    pub timeout: Option<String>,
    /// Retries of a lost attempt whose agent did not go away (it gave the
    /// attempt up, its credential was revoked).
    #[arg(long)]
    pub retries: Option<u32>,
    /// Retries of an attempt lost with its agent (silent past its lease,
    /// disconnected, restarted), apart from --retries (default: the
    /// scheduler's, 5).
    #[arg(long)]
    pub agent_lost_retries: Option<u32>,
    /// Most memory the attempt's processes may use together, e.g. 4G or 512M
    /// (binary units); a breach ends the attempt `error`. Only agents that can
    /// enforce a limit (a cgroup memory controller) take the job.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// GPUs the attempt gets for itself: the scheduler picks free, healthy
    /// ones on one agent and the test sees only those (CUDA_VISIBLE_DEVICES
    /// and NVIDIA_VISIBLE_DEVICES by UUID). A job without --gpus sees none.
    #[arg(long, value_name = "N")]
    pub gpus: Option<u32>,
    /// NPUs the attempt gets for itself (ASCEND_RT_VISIBLE_DEVICES); a job
    /// without --npus sees none.
    #[arg(long, value_name = "N")]
    pub npus: Option<u32>,
    /// Per-GPU minimum memory of the --gpus, e.g. 40G.
    #[arg(long = "gpu-memory", value_name = "SIZE", requires = "gpus")]
    pub gpu_memory: Option<String>,
    /// Per-NPU minimum memory (HBM) of the --npus, e.g. 32G.
    #[arg(long = "npu-memory", value_name = "SIZE", requires = "npus")]
    pub npu_memory: Option<String>,
    /// pytest: a shell command run in the checkout, in a venv the agent makes
    /// for the job, before pytest (repeatable, in order; e.g. 'pip install
    /// -e .[test]'). Part of the environment's key: the next job with the same
    /// key reuses the venv without running it again. A failure ends the job
    /// `error`.
    #[arg(long = "setup", value_name = "CMD")]
    pub setup: Vec<String>,
    /// pytest: a requirements file, relative to the checkout, installed in the
    /// job's venv (repeatable). Its content is part of the environment's key.
    #[arg(long = "requirements", value_name = "FILE")]
    pub requirements_files: Vec<String>,
    /// pytest: install the checkout editable in the job's venv, with these
    /// extras (e.g. test,docs; none when left out), so the checkout is what
    /// is tested. A reused venv re-links the new checkout without dependencies.
    #[arg(
        long = "install-project",
        value_name = "EXTRAS",
        num_args = 0..=1,
        default_missing_value = ""
    )]
    pub install_project: Option<String>,
    /// pytest: the job's venv also sees the agent interpreter's
    /// site-packages (heavy preinstalled frameworks stay shared).
    #[arg(long = "system-site-packages")]
    pub system_site_packages: bool,
    /// A cache the agent keeps across jobs under its work dir (repeatable):
    /// huggingface (HF_HOME), pip (PIP_CACHE_DIR), uv (UV_CACHE_DIR), torch
    /// (TORCH_HOME), or NAME=ENVVAR.
    #[arg(long = "cache", value_name = "NAME")]
    pub caches: Vec<String>,
    /// A job not started this long after submit ends `expired`, e.g. 2h
    /// (default: the queue's, 24 h).
    #[arg(
        long = "expire-after",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub expire_after: Option<String>,
    /// Accept the job although no registered agent could run it; it waits for
    /// one until it expires, then ends `no_resource`.
    #[arg(long = "allow-unmatched")]
    pub allow_unmatched: bool,
    /// KEY=VALUE for the test process (repeatable).
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// NAME=VALUE for the test process that is never shown back (repeatable):
    /// views and --dry-run print [redacted], and so do the test's logs.
    /// NAME=@FILE reads the value from FILE (one trailing newline dropped);
    /// NAME=@@X is the value @X.
    #[arg(long = "secret-env", value_name = "NAME=VALUE")]
    pub secret_env: Vec<String>,
    /// KEY=VALUE label on the job (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// Return the existing job when this key was submitted before (within the
    /// scheduler's dedup window) instead of making a second one.
    #[arg(long = "dedup-key", value_name = "KEY")]
    pub dedup_key: Option<String>,
    /// pytest: re-run failed tests up to N times; a test that fails and then
    /// passes counts as flaky.
    #[arg(long = "retry-failed", value_name = "N")]
    pub retry_failed: Option<u32>,
    /// One child job per hardware profile (each-profile) or per agent
    /// (each-agent) among the registered agents that match.
    #[arg(long, value_parser = ["each-profile", "each-agent"])]
    pub fanout: Option<String>,
    /// pytest: split the selection across N jobs that can run on N agents at
    /// once (collected once, partitioned by recorded test durations).
    #[arg(long, value_name = "N")]
    pub shards: Option<u32>,
    /// Watch the job and exit with its result.
    #[arg(long)]
    pub wait: bool,
    /// Print the job as TOML (for -f) instead of submitting it.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the submitted job as JSON.
    #[arg(long)]
    pub json: bool,
    /// bench: case directory or file (repeatable). Relative to the workspace with
    /// --dir/--git; without them a single local DIR becomes the job's source.
    #[arg(long = "cases", value_name = "PATH")]
    pub cases: Vec<String>,
    /// bench: command run per case and repetition, split like a shell does
    /// (no expansion); {case} is the case file, {name} the case name.
    #[arg(long, value_name = "CMD", allow_hyphen_values = true)]
    pub command: Option<String>,
    /// bench: unmeasured runs per case first (default 1).
    #[arg(long, value_name = "N")]
    pub warmup: Option<u32>,
    /// bench: measured runs per case (default 5).
    #[arg(long, value_name = "N")]
    pub repetitions: Option<u32>,
    /// bench: the metric the case files' baseline_time_s refers to
    /// (default total_time_s when reported, else wall_time_s).
    #[arg(long, value_name = "NAME")]
    pub metric: Option<String>,
    /// bench: METRIC=REGEX pulling a value from the command's output; the first
    /// group is the value, an optional second a time unit (repeatable).
    #[arg(
        long = "extract",
        value_name = "METRIC=REGEX",
        allow_hyphen_values = true
    )]
    pub extract: Vec<String>,
    /// bench: the results feed the baseline history.
    #[arg(long)]
    pub trusted: bool,
    /// Arguments for pytest (after --).
    #[arg(last = true)]
    pub pytest_args: Vec<String>,
}

impl Submit {
    /// The bench-only flags given, by name.
    pub fn bench_flags(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        if !self.cases.is_empty() {
            given.push("--cases");
        }
        if self.command.is_some() {
            given.push("--command");
        }
        if self.warmup.is_some() {
            given.push("--warmup");
        }
        if self.repetitions.is_some() {
            given.push("--repetitions");
        }
        if self.metric.is_some() {
            given.push("--metric");
        }
        if !self.extract.is_empty() {
            given.push("--extract");
        }
        if self.trusted {
            given.push("--trusted");
        }
        given
    }
}
