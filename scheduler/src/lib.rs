//! msched: the msfleet scheduler as a library. `main.rs` is a thin wrapper.
//!
//! Code map: [`store`] (sled, group commit) <- [`core`] (the single-threaded
//! state machine: jobs, [`queue`], [`lease`], [`matching`] with
//! [`requirement`], [`baseline`]) <- [`api`] (gRPC services) <- [`server`] (wiring).

pub mod api;
pub mod baseline;
pub mod clock;
pub mod config;
pub mod core;
#[cfg(test)]
pub(crate) mod fuzz_support;
pub mod jobspec;
pub mod lease;
pub mod matching;
pub mod queue;
pub mod requirement;
pub mod schedule;
pub mod server;
pub mod shard;
pub mod store;

pub use config::Config;
pub use server::serve;
