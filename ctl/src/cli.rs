//! msctl's flags and subcommands.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Submit, watch and inspect test jobs on an msfleet scheduler.
///
/// Exit codes: 0 passed / ok, 1 tests failed, 2 bad usage or input,
/// 3 infrastructure error, cancelled, timed out or expired.
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
        #[arg(long, default_value_t = 50)]
        limit: u32,
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
    /// Drain, undrain or quarantine an agent.
    Agent {
        #[command(subcommand)]
        action: AgentAction,
    },
    /// List queues with pending and running counts.
    Queues {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentAction {
    /// Finish running work, take nothing new.
    Drain { name: String },
    /// Take work again.
    Undrain { name: String },
    /// Take nothing new and mark the agent suspect.
    Quarantine { name: String },
}

#[derive(Args, Debug)]
pub struct Submit {
    /// Read the job from a TOML file (see --dry-run for the format).
    #[arg(short = 'f', long = "file", conflicts_with_all = ["kind"])]
    pub file: Option<PathBuf>,
    /// What to run: pytest.
    #[arg(value_parser = ["pytest"])]
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
    /// Retries of a lost attempt.
    #[arg(long)]
    pub retries: Option<u32>,
    /// KEY=VALUE for the test process (repeatable).
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// KEY=VALUE label on the job (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// Watch the job and exit with its result.
    #[arg(long)]
    pub wait: bool,
    /// Print the job as TOML (for -f) instead of submitting it.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the submitted job as JSON.
    #[arg(long)]
    pub json: bool,
    /// Arguments for pytest (after --).
    #[arg(last = true)]
    pub pytest_args: Vec<String>,
}
