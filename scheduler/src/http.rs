//! msched's HTTP listener (`--http-listen`): `/metrics` (Prometheus text),
//! `/healthz` (the process answers) and `/readyz` (the store is loaded and
//! the gRPC API serves).
//!
//! It starts before the store is loaded so an orchestrator sees `/readyz`
//! say 503 while a large store loads. `/metrics` needs a viewer token
//! (`Authorization: Bearer`, the same [`TokenIndex`] as gRPC) unless the
//! scrape comes from loopback; the health endpoints need none.

use crate::auth::{self, Need, Role, TokenIndex};
use crate::core::{Command, CoreHandle};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;

/// What the handlers share: the core once it is loaded, the tokens, and the
/// recorder's handle.
#[derive(Clone)]
pub struct HttpState {
    core: Arc<OnceLock<CoreHandle>>,
    tokens: Arc<TokenIndex>,
    prometheus: PrometheusHandle,
}

impl HttpState {
    pub fn new(tokens: Arc<TokenIndex>, prometheus: PrometheusHandle) -> HttpState {
        HttpState {
            core: Arc::new(OnceLock::new()),
            tokens,
            prometheus,
        }
    }

    /// The store is loaded: `/readyz` says ready and `/metrics` answers.
    pub fn set_ready(&self, core: CoreHandle) {
        let _ = self.core.set(core);
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

/// Serves the HTTP endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
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
