//! Starting a scheduler: open the store, start the core, serve gRPC (the two
//! msfleet services, gRPC health and reflection) on a listener.

use crate::api::{AgentLinkService, FleetService};
use crate::auth::{self, layer::AuthLayer, TokenIndex};
use crate::config::Config;
use crate::core::{self, Command, CoreHandle};
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
    #[error("making the bootstrap admin token: {0}")]
    Bootstrap(String),
    #[error("announcing readiness: {0}")]
    Ready(String),
    #[error("installing the metrics recorder: {0}")]
    Metrics(String),
    #[error("the HTTP listener's {0}")]
    HttpTls(#[from] crate::http::TlsError),
}

/// Where the bootstrap admin token is written.
pub fn admin_token_path(cfg: &Config) -> std::path::PathBuf {
    cfg.data_dir.join("admin.token")
}

/// On first start (no admin token exists), makes one and writes its secret,
/// alone on one line, to `DATA_DIR/admin.token` (mode 0600), like `nomad acl
/// bootstrap`. The file is written before the token is stored, so a crash in
/// between leaves no admin token and the next start simply makes a new one.
async fn bootstrap_admin(core: &CoreHandle, cfg: &Config) -> Result<(), ServeError> {
    let has = core
        .call(|reply| Command::HasAdminToken { reply })
        .await
        .map_err(|s| ServeError::Bootstrap(s.message().to_string()))?;
    if has {
        return Ok(());
    }
    let secret = auth::new_secret()
        .map_err(|_| ServeError::Bootstrap("the system random source failed".into()))?;
    let path = admin_token_path(cfg);
    write_secret_file(&path, &secret)
        .map_err(|e| ServeError::Bootstrap(format!("writing {}: {e}", path.display())))?;
    let mut last = String::new();
    for name in ["admin".to_string()]
        .into_iter()
        .chain((2..10).map(|n| format!("admin-{n}")))
    {
        let req = msfleet_proto::CreateTokenRequest {
            name: name.clone(),
            role: "admin".into(),
            ..Default::default()
        };
        let hash = auth::secret_hash(&secret);
        match core
            .call(|reply| Command::CreateToken {
                req,
                hash,
                by: "bootstrap".into(),
                reply,
            })
            .await
        {
            Ok(_) => {
                tracing::info!(
                    token = %name,
                    path = %path.display(),
                    "first start: wrote an admin token to {} (msctl --token-file {} ...)",
                    path.display(),
                    path.display()
                );
                return Ok(());
            }
            Err(s) if s.code() == tonic::Code::AlreadyExists => last = s.message().to_string(),
            Err(s) => return Err(ServeError::Bootstrap(s.message().to_string())),
        }
    }
    Err(ServeError::Bootstrap(last))
}

/// Writes `secret` and a newline to `path` with mode 0600, atomically.
fn write_secret_file(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
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

/// HTTP/2 pings to a peer that sent nothing for a heartbeat interval and
/// this much more: a connection whose peer stops answering (a frozen or
/// vanished agent host, a partition without a reset) is closed within about
/// heartbeat + slack + timeout, so its session ends in seconds. A live agent
/// heartbeats within every interval (hyper pings only a connection it read
/// nothing from), so 100,000 agents cost no pings from this side.
const KEEPALIVE_SLACK: std::time::Duration = std::time::Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// HTTP/2 flow-control windows per connection and per stream. Nearly every
/// connection is one agent with one session stream: these bound what a
/// connection may have in flight toward msched (hyper's defaults are 1 MiB
/// per stream, on up to 100,000 connections), and an agent's result stream
/// still moves megabytes a second at LAN round trips.
const CONNECTION_WINDOW: u32 = 512 * 1024;
const STREAM_WINDOW: u32 = 256 * 1024;

/// Serves gRPC on `listener` (and, with `http`, the HTTP endpoints of
/// [`crate::http`]) until `shutdown` resolves.
///
/// The HTTP listener answers from the start (`/readyz` 503 while the store
/// loads); once the store is loaded and the admin token exists, the ready
/// file is written (the gRPC address, then `http ADDR`) and systemd is told
/// `READY=1`.
/// How long a stopping msched waits for open streams (watchers) to end.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

pub async fn serve(
    cfg: Config,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let cfg = Arc::new(cfg);
    let tokens = Arc::new(TokenIndex::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut http_state = None;
    let mut http_addr = None;
    if let Some(http) = http {
        let prometheus = crate::http::prometheus().map_err(ServeError::Metrics)?;
        let dashboard = crate::dashboard::Settings {
            csrf: crate::dashboard::login::CsrfKey::random().map_err(|_| {
                ServeError::Ready("no randomness for the dashboard's CSRF key".into())
            })?,
            secure: cfg.tls.is_some(),
            stopping: stop_rx.clone(),
        };
        let state = crate::http::HttpState::new(tokens.clone(), prometheus, dashboard);
        let tls = cfg
            .tls
            .as_ref()
            .map(|t| crate::http::tls_acceptor(&t.cert, &t.key))
            .transpose()?;
        http_addr = Some(
            http.local_addr()
                .map_err(|e| ServeError::Ready(e.to_string()))?,
        );
        http_state = Some(state.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = crate::http::serve(http, tls, state, stopped).await {
                tracing::error!(error = %e, "the HTTP listener stopped");
            }
        });
    }
    let (dir, cache) = (cfg.data_dir.clone(), cfg.cache_bytes);
    let store = blocking_store_step(&cfg, move || Store::open(&dir, cache)).await?;
    let (core_store, core_cfg) = (store.clone(), cfg.clone());
    let core_tokens = tokens.clone();
    let core =
        blocking_store_step(&cfg, move || core::start(core_cfg, core_store, core_tokens)).await?;
    bootstrap_admin(&core, &cfg).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Ready(e.to_string()))?;
    if let Some(state) = &http_state {
        state.set_ready(core.clone(), store.clone());
    }
    if let Some(path) = &cfg.ready_file {
        let mut text = addr.to_string();
        if let Some(http) = http_addr {
            text.push_str(&format!("\nhttp {http}"));
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| ServeError::Ready(format!("writing {}: {e}", path.display())))?;
    }
    match msfleet_proto::systemd::notify_ready() {
        Ok(Some(every)) => tracing::info!(?every, "systemd watchdog on"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "could not tell systemd READY=1"),
    }
    let ending = core.clone();
    let shutdown = async move {
        shutdown.await;
        msfleet_proto::systemd::notify_stopping();
        let _ = stop_tx.send(true);
        // The graceful stop waits for every open stream: agents hold theirs
        // open for good, so the core ends them.
        match ending.call(|reply| Command::EndSessions { reply }).await {
            Ok(n) => tracing::info!(agents = n, "shutting down: agent sessions ended"),
            Err(e) => tracing::warn!(error = %e, "shutting down: could not end agent sessions"),
        }
    };
    // Whatever else stays open (a `watch` of a job still queued) gets
    // SHUTDOWN_GRACE, then its connection is dropped.
    let mut stopping = stop_rx.clone();
    let grace_over = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<FleetServer<FleetService>>().await;
    health
        .set_serving::<AgentLinkServer<AgentLinkService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(msfleet_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // The same services for clients that speak only v1alpha (grpcio-reflection,
    // older grpcurl and grpcui, Postman).
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(msfleet_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let max = msfleet_proto::MAX_MESSAGE;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &cfg.tls {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key));
        if let Some(ca) = &tls.client_ca {
            config = config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(true);
        }
        builder = builder.tls_config(config)?;
    }
    let serve = builder
        .http2_keepalive_interval(Some(cfg.heartbeat_interval + KEEPALIVE_SLACK))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .layer(AuthLayer::new(tokens))
        .add_service(
            health_service
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            reflection
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            reflection_v1alpha
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            FleetServer::new(FleetService::new(
                core.clone(),
                store.clone(),
                stop_rx.clone(),
            ))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
        .add_service(
            AgentLinkServer::new(AgentLinkService::new(core))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .serve_with_incoming_shutdown(no_delay(listener), shutdown);
    tokio::select! {
        served = serve => served?,
        () = grace_over => tracing::warn!(
            grace = ?SHUTDOWN_GRACE,
            "shutting down: streams still open after the grace are dropped"
        ),
    }
    store.flush().map_err(|source| ServeError::Store {
        dir: cfg.data_dir.display().to_string(),
        source,
    })?;
    Ok(())
}

/// The accepted connections with Nagle's algorithm off. tonic sets
/// TCP_NODELAY only on listeners it binds itself; without it a small reply
/// (an Assignment, an ack) can wait out the peer's delayed ACK (40 ms).
fn no_delay(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        if let Err(e) = conn.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        Ok(conn)
    })
}

#[cfg(test)]
mod no_delay_tests {
    use futures::StreamExt;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(super::no_delay(listener));
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let conn = incoming.next().await.unwrap().unwrap();
        assert!(
            conn.nodelay().unwrap(),
            "TCP_NODELAY on the accepted stream"
        );
    }
}
