//! msctl: the msfleet command line as a library. `main.rs` parses and exits.
//!
//! Code map: [`cli`] (flags) -> [`commands`] (one function per subcommand)
//! using [`jobfile`] (the TOML job format), [`argv`] (`--command` splitting),
//! [`follow`] (watch/logs streams with resume), [`progress`] (watch's live
//! line on a terminal, plain lines elsewhere), [`report`] (`report`: matrix,
//! verdicts, diff; text, JSON, JUnit, markdown), [`export`] (`baseline export`:
//! baselines -> case files) and [`render`] (text and `--json`).

// `render::job_json` is one `json!` object with many fields.
#![recursion_limit = "256"]

pub mod argv;
pub mod cli;
pub mod commands;
pub mod dashboard;
pub mod export;
pub mod follow;
#[cfg(test)]
mod fuzz_tests;
pub mod jobfile;
pub mod progress;
pub mod render;
pub mod report;
pub mod tokens;

use tonic::{Code, Status};

/// `print!` for msctl's output: when the reader has gone away (`msctl list |
/// head -1`) msctl ends quietly with 141, as a Unix tool killed by SIGPIPE
/// does, instead of panicking like `print!`. (SIGPIPE itself stays ignored:
/// with its default action a write to a closed network socket would kill msctl.)
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {
        $crate::write_stdout(format_args!($($t)*))
    };
}

/// `println!` for msctl's output; see [`out!`].
#[macro_export]
macro_rules! outln {
    () => {
        $crate::write_stdout(format_args!("\n"))
    };
    ($($t:tt)*) => {
        $crate::write_stdout(format_args!("{}\n", format_args!($($t)*)))
    };
}

/// Writes to stdout; a closed pipe ends the process with 141, another write
/// error with one line and the infrastructure exit code.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("msctl: writing the output failed: {e}");
        std::process::exit(exit::INFRA);
    }
}

/// A Fleet client whose calls carry the caller's token.
pub type Client = msfleet_proto::fleet_client::FleetClient<msfleet_proto::client::AuthedChannel>;

/// Exit codes scripts rely on.
pub mod exit {
    /// All tests passed / the command did what it was asked.
    pub const OK: i32 = 0;
    /// Tests failed, or a benchmark case regressed or errored.
    pub const TESTS_FAILED: i32 = 1;
    /// Bad usage or input: nothing was changed.
    pub const BAD_INPUT: i32 = 2;
    /// Infrastructure error, cancelled, timed out, expired or no resource.
    pub const INFRA: i32 = 3;
}

/// A failed command: what to print and how to exit.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CtlError {
    pub code: i32,
    pub message: String,
}

impl CtlError {
    pub fn input(message: impl Into<String>) -> Self {
        CtlError {
            code: exit::BAD_INPUT,
            message: message.into(),
        }
    }

    pub fn infra(message: impl Into<String>) -> Self {
        CtlError {
            code: exit::INFRA,
            message: message.into(),
        }
    }
}

impl From<Status> for CtlError {
    fn from(s: Status) -> Self {
        let code = match s.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::PermissionDenied
            | Code::Unauthenticated => exit::BAD_INPUT,
            _ => exit::INFRA,
        };
        let message = match s.code() {
            Code::Unavailable => format!("scheduler unavailable: {}", s.message()),
            _ => s.message().to_string(),
        };
        CtlError { code, message }
    }
}
