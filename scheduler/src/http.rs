//! msched's HTTP listener (`--http-listen`): `/metrics` (Prometheus text),
//! `/healthz` (the process answers), `/readyz` (the store is loaded and
//! the gRPC API serves), and the web dashboard ([`crate::dashboard`]) on
//! every other path.
//!
//! It starts before the store is loaded so an orchestrator sees `/readyz`
//! say 503 while a large store loads. `/metrics` needs a viewer token
//! (`Authorization: Bearer`, the same [`TokenIndex`] as gRPC) unless the
//! scrape comes from loopback; the health endpoints need none.

use crate::auth::{self, Need, Role, TokenIndex};
use crate::core::{Command, CoreHandle};
use crate::store::Store;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// What the handlers share: the core and the store once loaded, the tokens,
/// the recorder's handle and the dashboard's settings.
#[derive(Clone)]
pub struct HttpState {
    core: Arc<OnceLock<CoreHandle>>,
    store: Arc<OnceLock<Store>>,
    tokens: Arc<TokenIndex>,
    prometheus: PrometheusHandle,
    dashboard: Arc<crate::dashboard::Settings>,
}

impl HttpState {
    pub fn new(
        tokens: Arc<TokenIndex>,
        prometheus: PrometheusHandle,
        dashboard: crate::dashboard::Settings,
    ) -> HttpState {
        HttpState {
            core: Arc::new(OnceLock::new()),
            store: Arc::new(OnceLock::new()),
            tokens,
            prometheus,
            dashboard: Arc::new(dashboard),
        }
    }

    /// The store is loaded: `/readyz` says ready, `/metrics` and the
    /// dashboard answer.
    pub fn set_ready(&self, core: CoreHandle, store: Store) {
        let _ = self.store.set(store);
        let _ = self.core.set(core);
    }

    /// The core and the store, once loaded.
    pub fn loaded(&self) -> Option<(CoreHandle, Store)> {
        Some((self.core.get()?.clone(), self.store.get()?.clone()))
    }

    pub fn tokens(&self) -> &TokenIndex {
        &self.tokens
    }

    pub fn dashboard(&self) -> &crate::dashboard::Settings {
        &self.dashboard
    }
}

/// The Prometheus recorder of this process, installed on first use (a
/// process has one global recorder).
pub fn prometheus() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| crate::metrics::install().map_err(|e| e.to_string()))
        .clone()
}

/// The address a request came from, whichever listener took it.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

/// Longest a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes done and not yet taken by the server.
const HANDSHAKES_QUEUED: usize = 64;

/// Why the TLS configuration of the HTTP listener could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert: {0}")]
    Cert(String),
    #[error("--tls-key: {0}")]
    Key(String),
    #[error("TLS: {0}")]
    Config(#[from] tokio_rustls::rustls::Error),
}

/// A TLS acceptor for `cert` (PEM chain) and `key` (PEM), HTTP/1.1 and h2.
pub fn tls_acceptor(cert: &[u8], key: &[u8]) -> Result<TlsAcceptor, TlsError> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{crypto, ServerConfig};
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Cert(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Cert("no certificate in the PEM file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Key(e.to_string()))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// An HTTPS listener: a task accepts TCP connections and runs each TLS
/// handshake in its own task (bounded in time), so a slow client never holds
/// up the others; finished handshakes queue for the server.
pub struct TlsListener {
    done: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, done) = tokio::sync::mpsc::channel(HANDSHAKES_QUEUED);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of descriptors and the like: wait, then go on.
                        tracing::warn!(error = %e, "HTTP listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, queue) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = queue.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTPS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(TlsListener { done, local })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.done.recv().await {
            Some(conn) => conn,
            // The accept task ended with the runtime: nothing comes any more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Serves the HTTP endpoints on `listener` (HTTPS with `tls`) until
/// `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(crate::dashboard::router(state.clone()))
        .with_state(state);
    match tls {
        None => {
            axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(acceptor) => {
            axum::serve(
                TlsListener::new(listener, acceptor)?,
                app.into_make_service_with_connect_info::<Peer>(),
            )
            .with_graceful_shutdown(shutdown)
            .await
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    match state.core.get() {
        Some(_) => (StatusCode::OK, "ready\n").into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: loading the store\n",
        )
            .into_response(),
    }
}

async fn metrics(
    State(state): State<HttpState>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err((code, why)) = metrics_access(peer.ip(), &headers, &state.tokens) {
        return (code, format!("{why}\n")).into_response();
    }
    let Some(core) = state.core.get() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: loading the store\n",
        )
            .into_response();
    };
    match core.call(|reply| Command::MetricsSnapshot { reply }).await {
        Ok(snapshot) => snapshot.publish(),
        Err(s) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}\n", s.message()),
            )
                .into_response()
        }
    }
    let prometheus = state.prometheus.clone();
    // Rendering walks every series: off the async workers.
    let text = tokio::task::spawn_blocking(move || {
        prometheus.run_upkeep();
        prometheus.render()
    })
    .await
    .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Who may read `/metrics`: anyone on loopback, else a viewer (or higher)
/// token as `Authorization: Bearer TOKEN`.
pub fn metrics_access(
    peer: IpAddr,
    headers: &HeaderMap,
    tokens: &TokenIndex,
) -> Result<(), (StatusCode, String)> {
    if peer.is_loopback() || peer.to_canonical().is_loopback() {
        return Ok(());
    }
    let denied = |why: String| (StatusCode::UNAUTHORIZED, why);
    let secret = auth::bearer_secret(headers.get(header::AUTHORIZATION))
        .map_err(denied)?
        .ok_or_else(|| {
            denied(
                "/metrics off loopback needs a viewer token: send 'Authorization: Bearer TOKEN' \
                 (Prometheus: authorization.credentials_file)"
                    .into(),
            )
        })?;
    let who = tokens.authenticate(secret).ok_or_else(|| {
        denied(
            "the token is not valid here: it was revoked, mistyped, or made by another scheduler"
                .into(),
        )
    })?;
    auth::admit(&who, Need::Person(Role::Viewer)).map_err(|why| (StatusCode::FORBIDDEN, why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Principal;
    use axum::http::HeaderValue;

    fn index() -> TokenIndex {
        let tokens = TokenIndex::default();
        tokens.insert(
            auth::secret_hash("msfleet_viewer"),
            Principal::Person {
                name: "grafana".into(),
                role: Role::Viewer,
            },
        );
        tokens
    }

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn metrics_need_a_viewer_token_except_from_loopback() {
        let tokens = index();
        let far: IpAddr = "192.0.2.7".parse().unwrap();
        let none = HeaderMap::new();
        assert!(metrics_access("127.0.0.1".parse().unwrap(), &none, &tokens).is_ok());
        assert!(metrics_access("::1".parse().unwrap(), &none, &tokens).is_ok());
        assert!(metrics_access("::ffff:127.0.0.1".parse().unwrap(), &none, &tokens).is_ok());

        let (code, why) = metrics_access(far, &none, &tokens).unwrap_err();
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert!(why.contains("viewer token"), "{why}");
        let (code, _) = metrics_access(far, &with_auth("Bearer wrong"), &tokens).unwrap_err();
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        let (code, why) = metrics_access(far, &with_auth("Basic abc"), &tokens).unwrap_err();
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert!(why.contains("Bearer"), "{why}");
        assert!(metrics_access(far, &with_auth("Bearer msfleet_viewer"), &tokens).is_ok());
    }

    #[test]
    fn an_agent_token_does_not_read_metrics() {
        let tokens = index();
        tokens.insert(
            auth::secret_hash("msfleet_agent"),
            Principal::Agent {
                name: "a1".into(),
                labels: Default::default(),
                profile: String::new(),
                proof: auth::AgentProof::Token,
            },
        );
        let far: IpAddr = "192.0.2.7".parse().unwrap();
        let (code, _) =
            metrics_access(far, &with_auth("Bearer msfleet_agent"), &tokens).unwrap_err();
        assert_eq!(code, StatusCode::FORBIDDEN);
    }
}
