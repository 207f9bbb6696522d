//! msagent: the msfleet agent as a library. `main.rs` is a thin wrapper.
//!
//! Code map: [`config`] (TOML + flags) -> [`probe`] + [`profile`] ->
//! [`capabilities`] (what is reported, the owner's policy included) ->
//! [`session`] (the scheduler link, outbox and resume) -> [`runner`] (one
//! attempt: [`policy`] check, [`source`] checkout, [`policy`] paths, then
//! pytest with live results through the plugin socket, or the benchmark core
//! [`bench`](mod@bench)). Both run their commands through [`process`] (own process group,
//! log chunks, deadline and cancel: SIGTERM, grace, SIGKILL); [`attempt`] holds
//! the types they share (attempt identity, update sink, stop reasons, guard);
//! [`contain`] puts each run in its own cgroup (or, without one, finds its
//! processes as a subreaper) so that nothing a job starts outlives it.

pub mod attempt;
pub mod bench;
pub mod capabilities;
pub mod config;
pub mod contain;
pub mod devices;
pub mod environment;
#[cfg(test)]
mod fuzz_tests;
pub mod health;
pub mod leftover;
pub mod metrics;
pub mod policy;
pub mod probe;
pub mod process;
pub mod profile;
pub mod runner;
pub mod session;
pub mod source;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
