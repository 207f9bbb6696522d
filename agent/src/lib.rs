//! msagent: the msfleet agent as a library. `main.rs` is a thin wrapper.
//!
//! Code map: [`config`] (TOML + flags) -> [`probe`] + [`profile`] ->
//! [`capabilities`] (what is reported) -> [`session`] (the scheduler link,
//! outbox and resume) -> [`runner`] (one attempt: [`source`] checkout, pytest
//! in its own process group, live results through the plugin socket).

pub mod bench;
pub mod capabilities;
pub mod config;
#[cfg(test)]
mod fuzz_tests;
pub mod probe;
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
