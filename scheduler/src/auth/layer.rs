//! The tower layer in front of every gRPC service: finds the method's rule,
//! establishes the caller from its bearer token or client certificate,
//! refuses with `Unauthenticated` / `PermissionDenied` / `Unimplemented`, and
//! otherwise passes the request on with the [`Principal`] in its extensions.

use super::{admit, need, AgentProof, Need, Principal, TokenIndex};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

/// Wraps every service of the server in [`Authorize`].
#[derive(Clone)]
pub struct AuthLayer {
    tokens: Arc<TokenIndex>,
}

impl AuthLayer {
    pub fn new(tokens: Arc<TokenIndex>) -> AuthLayer {
        AuthLayer { tokens }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    tokens: Arc<TokenIndex>,
}

/// What to tell a caller without a credential.
pub const NO_TOKEN: &str = "this scheduler needs a token: pass --token-file FILE, set \
     MSFLEET_TOKEN or write it to ~/.config/msfleet/token (a new scheduler's admin token is \
     in DATA_DIR/admin.token)";

impl<S, B, RB> tower::Service<http::Request<B>> for Authorize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match check(&self.tokens, &req) {
            Ok(Some(who)) => {
                req.extensions_mut().insert(who);
            }
            Ok(None) => {}
            Err(status) => {
                let path = req.uri().path().chars().take(200).collect::<String>();
                tracing::info!(method = %path, code = ?status.code(), "refused: {}", status.message());
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        // The service that was polled ready is the one to call (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}

/// The caller of `req`, or why it may not call. `Ok(None)` for open methods.
fn check<B>(tokens: &TokenIndex, req: &http::Request<B>) -> Result<Option<Principal>, Status> {
    let path = req.uri().path();
    let Some(need) = need(path) else {
        return Err(Status::unimplemented(
            "no such method on this scheduler (or one without an access rule)",
        ));
    };
    if need == Need::Open {
        return Ok(None);
    }
    let who = match bearer(req)? {
        Some(secret) => tokens.authenticate(secret).ok_or_else(|| {
            Status::unauthenticated(
                "the token is not valid here: it was revoked, mistyped, or made by another scheduler",
            )
        })?,
        None => match certificate_name(req)? {
            Some(name) => Principal::Agent {
                name,
                labels: BTreeMap::new(),
                profile: String::new(),
                proof: AgentProof::Certificate,
            },
            None => return Err(Status::unauthenticated(NO_TOKEN)),
        },
    };
    admit(&who, need).map_err(Status::permission_denied)?;
    Ok(Some(who))
}

/// The secret of an `authorization: Bearer SECRET` header.
fn bearer<B>(req: &http::Request<B>) -> Result<Option<&str>, Status> {
    super::bearer_secret(req.headers().get(http::header::AUTHORIZATION))
        .map_err(Status::unauthenticated)
}

/// The agent name of a verified client certificate: its first DNS name, else
/// its common name. rustls has already checked it against `--client-ca`.
fn certificate_name<B>(req: &http::Request<B>) -> Result<Option<String>, Status> {
    let Some(certs) = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.peer_certs())
    else {
        return Ok(None);
    };
    let Some(leaf) = certs.first() else {
        return Ok(None);
    };
    let bad = |why: &str| Status::unauthenticated(format!("client certificate: {why}"));
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|_| bad("not a readable X.509 certificate"))?;
    let dns = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
        });
    let cn = || {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .map(str::to_string)
    };
    match dns.or_else(cn) {
        Some(name) if !name.is_empty() && name.len() <= 128 => Ok(Some(name)),
        _ => Err(bad("it names no agent (no DNS name or common name)")),
    }
}
