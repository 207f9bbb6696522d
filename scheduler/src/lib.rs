//! msched: the msfleet scheduler as a library. `main.rs` is a thin wrapper.
//!
//! Code map: [`store`] (sled, group commit) <- [`core`] (the single-threaded
//! state machine: jobs, [`queue`], [`lease`], [`matching`] with
//! [`requirement`], [`baseline`]) <- [`api`] (gRPC services) <- [`server`] (wiring).

pub mod api;
pub mod auth;
pub mod baseline;
pub mod clock;
pub mod config;
pub mod core;
pub mod dashboard;
pub mod devices;
pub mod http;
pub mod jobspec;
pub mod lease;
pub mod limits;
pub mod matching;
pub mod metrics;
pub mod queue;
pub mod requirement;
pub mod retention;
pub mod schedule;
pub mod server;
pub mod shard;
pub mod store;
mod telemetry;

pub use config::Config;
pub use server::serve;

/// Longest piece of outside input, in characters, that an error message
/// quotes; a longer one is cut and ends in `...`, so a message stays short
/// however long the input (found by the fuzz targets: a 100 KB input made a
/// 100 KB message).
pub(crate) const MAX_QUOTED: usize = 40;

/// `text` as an error message quotes it: whole up to [`MAX_QUOTED`]
/// characters, else its start and `...`.
pub(crate) fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_QUOTED) {
        None => text.into(),
        Some((end, _)) => format!("{}...", &text[..end]).into(),
    }
}
