//! Starting a scheduler: open the store, start the core, serve gRPC (the two
//! msfleet services, gRPC health and reflection) on a listener.

use crate::api::{AgentLinkService, FleetService};
use crate::config::Config;
use crate::core;
use crate::store::Store;
use msfleet_proto::{agent_link_server::AgentLinkServer, fleet_server::FleetServer};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// Why the scheduler could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("opening the store in {dir}: {source}")]
    Store {
        dir: String,
        source: crate::store::StoreError,
    },
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Runs a blocking store step (open, load) off the async runtime.
async fn blocking_store_step<T: Send + 'static>(
    cfg: &Config,
    step: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ServeError> {
    let store_error = |source| ServeError::Store {
        dir: cfg.data_dir.display().to_string(),
        source,
    };
    tokio::task::spawn_blocking(step)
        .await
        .map_err(|e| {
            store_error(crate::store::StoreError::Sled(sled::Error::Io(
                std::io::Error::other(e),
            )))
        })?
        .map_err(store_error)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let cfg = Arc::new(cfg);
    let (dir, cache) = (cfg.data_dir.clone(), cfg.cache_bytes);
    let store = blocking_store_step(&cfg, move || Store::open(&dir, cache)).await?;
    let (core_store, core_cfg) = (store.clone(), cfg.clone());
    let core = blocking_store_step(&cfg, move || core::start(core_cfg, core_store)).await?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<FleetServer<FleetService>>().await;
    health
        .set_serving::<AgentLinkServer<AgentLinkService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(msfleet_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let max = msfleet_proto::MAX_MESSAGE;
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            FleetServer::new(FleetService::new(core.clone(), store.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            AgentLinkServer::new(AgentLinkService::new(core)).max_decoding_message_size(max),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    store.flush().map_err(|source| ServeError::Store {
        dir: cfg.data_dir.display().to_string(),
        source,
    })?;
    Ok(())
}
