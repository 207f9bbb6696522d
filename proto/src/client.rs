//! How msctl and msagent reach a scheduler: one address rule (`http://` plain
//! text, `https://` TLS, a bare `HOST:PORT` is plain text), one TLS setup (the
//! CA of `--ca` / `MSFLEET_CA`, else the system roots), one bearer-token
//! interceptor, and one translation of the failures a person can fix (wrong
//! CA, TLS against plain text and the reverse) into a line that says what to do.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A channel whose every call carries the caller's token.
pub type AuthedChannel = InterceptedService<Channel, Bearer>;

/// Where and how to connect.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `http://HOST:PORT`, `https://HOST:PORT` or `HOST:PORT`.
    pub addr: String,
    /// PEM file of the CA that signed the scheduler's certificate.
    pub ca: Option<PathBuf>,
    /// PEM certificate and key of this client (mTLS agents).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// HTTP/2 pings on an agent's scheduler connection: a scheduler that stops
/// answering (a dead host, a partition without a reset) is noticed within
/// about their sum, and the agent reconnects (a scheduler that dies on a live
/// host resets the connection: noticed at once). The scheduler sends an idle
/// agent nothing, so each agent pings every interval, and msched answers each
/// ping at about the CPU of a heartbeat: at 100,000 agents 20 s is 5,000
/// pings a second (measured, `msfleet-load --scenario scale`: 10 s made
/// pings half of an idle fleet's cost to msched).
pub const AGENT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const AGENT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// `endpoint` set up as an agent's session connection (keepalive pings, also
/// while idle): msagent's and the load generator's simulated agents' one setup.
pub fn agent_link(endpoint: Endpoint) -> Endpoint {
    endpoint
        .http2_keep_alive_interval(AGENT_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(AGENT_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Something only the user can fix (address, CA, TLS on one side only):
    /// retrying will not help.
    #[error("{0}")]
    Config(String),
    /// The scheduler is not reachable now (down, restarting): retry later.
    #[error("{0}")]
    Unreachable(String),
}

impl Target {
    /// The URL the address means.
    pub fn url(&self) -> String {
        if self.addr.contains("://") {
            self.addr.clone()
        } else {
            format!("http://{}", self.addr)
        }
    }

    fn is_tls(&self) -> bool {
        self.url().starts_with("https://")
    }

    /// The endpoint for this target, TLS configured for `https://`.
    pub fn endpoint(&self) -> Result<Endpoint, ConnectError> {
        let url = self.url();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConnectError::Config(format!(
                "bad scheduler address '{}': use http://HOST:PORT or https://HOST:PORT",
                self.addr
            )));
        }
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| {
                ConnectError::Config(format!("bad scheduler address '{}': {e}", self.addr))
            })?
            .connect_timeout(Duration::from_secs(5));
        if self.is_tls() {
            let mut tls = ClientTlsConfig::new();
            tls = match &self.ca {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca, "--ca")?)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(tonic::transport::Identity::from_pem(
                    read(cert, "--tls-cert")?,
                    read(key, "--tls-key")?,
                ));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| ConnectError::Config(format!("TLS settings: {}", chain(&e))))?;
        } else if self.ca.is_some() {
            return Err(ConnectError::Config(format!(
                "--ca is given but the address '{}' is plain text: use https://",
                self.addr
            )));
        }
        Ok(endpoint)
    }

    /// Connects now, or says what is wrong.
    pub async fn connect(&self) -> Result<Channel, ConnectError> {
        let endpoint = self.endpoint()?;
        endpoint
            .connect()
            .await
            .map_err(|e| self.explain(&chain(&e)))
    }

    /// For a plain-text (`http://`) target: does the server at its address
    /// answer like a TLS server? Sends the HTTP/2 preface and reads the first
    /// bytes back: a TLS server answers with a TLS record (an alert, 0x15, or
    /// a handshake, 0x16, then version 3.x), an HTTP/2 server with a SETTINGS
    /// frame. Asked only after a call failed, to say which mistake it was.
    pub async fn serves_tls_instead(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if self.is_tls() {
            return false;
        }
        let url = self.url();
        let hostport = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let probe = async {
            let mut s = tokio::net::TcpStream::connect(&hostport).await.ok()?;
            s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .ok()?;
            let mut buf = [0u8; 2];
            s.read_exact(&mut buf).await.ok()?;
            Some(matches!(buf[0], 0x15 | 0x16) && buf[1] == 0x03)
        };
        tokio::time::timeout(Duration::from_secs(3), probe)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    /// The one-line mistake for a plain-text client talking to a TLS server.
    pub fn plain_text_to_tls(&self) -> ConnectError {
        ConnectError::Config(format!(
            "the scheduler at {} serves TLS: use https:// and --ca (or MSFLEET_CA)",
            self.url()
        ))
    }

    /// Turns a transport failure into what a person can do about it.
    pub fn explain(&self, detail: &str) -> ConnectError {
        let url = self.url();
        let d = detail.to_ascii_lowercase();
        if d.contains("invalid peer certificate") || d.contains("unknownissuer") {
            return ConnectError::Config(format!(
                "the scheduler at {url} presented a certificate this client does not trust \
                 (give the CA that signed it with --ca or MSFLEET_CA): {detail}"
            ));
        }
        if d.contains("corrupt message") || d.contains("invalidcontenttype") {
            return ConnectError::Config(format!(
                "the scheduler at {url} does not speak TLS: use http:// for it, or start it \
                 with --tls-cert and --tls-key"
            ));
        }
        // What a plain-text HTTP/2 client reads when a TLS server answers its
        // preface with a TLS alert. (A scheduler that dies mid-call gives
        // resets and closed streams instead, which stay retryable.)
        if !self.is_tls()
            && (d.contains("h2 protocol error: http2 error")
                || d.contains("frame with invalid size"))
        {
            return ConnectError::Config(format!(
                "the scheduler at {url} closed a plain-text connection: it probably serves TLS; \
                 use https:// and --ca ({detail})"
            ));
        }
        ConnectError::Unreachable(format!("connecting to {url}: {detail}"))
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path)
        .map_err(|e| ConnectError::Config(format!("cannot read {what} {}: {e}", path.display())))
}

/// An error and its sources, one line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Adds `authorization: Bearer TOKEN` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// A token secret (surrounding whitespace trimmed); `None` sends no header.
    pub fn new(secret: Option<&str>) -> Result<Bearer, ConnectError> {
        match secret.map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(Bearer(None)),
            Some(s) => format!("Bearer {s}")
                .parse()
                .map(|v| Bearer(Some(v)))
                .map_err(|_| {
                    ConnectError::Config("the token holds characters a header cannot carry".into())
                }),
        }
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str(if self.0.is_some() {
            "Bearer(..)"
        } else {
            "Bearer(none)"
        })
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Reads a token file: the secret alone, surrounding whitespace ignored.
pub fn read_token_file(path: &Path) -> Result<String, ConnectError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConnectError::Config(format!(
            "cannot read the token file {}: {e}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(ConnectError::Config(format!(
            "the token file {} must hold the token alone on one line",
            path.display()
        )));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(addr: &str) -> Target {
        Target {
            addr: addr.into(),
            ..Default::default()
        }
    }

    #[test]
    fn addresses_and_their_mistakes() {
        assert_eq!(target("h:1").url(), "http://h:1");
        assert!(target("https://h:1").is_tls());
        assert!(matches!(
            target("ftp://h").endpoint(),
            Err(ConnectError::Config(_))
        ));
        let plain_with_ca = Target {
            ca: Some("/x.pem".into()),
            ..target("http://h:1")
        };
        let e = plain_with_ca.endpoint().unwrap_err().to_string();
        assert!(e.contains("use https://"), "{e}");
        let missing_ca = Target {
            ca: Some("/no/such/ca.pem".into()),
            ..target("https://h:1")
        };
        let e = missing_ca.endpoint().unwrap_err().to_string();
        assert!(e.contains("cannot read --ca /no/such/ca.pem"), "{e}");
    }

    #[test]
    fn failures_a_person_can_fix_are_told_apart_from_a_scheduler_that_is_down() {
        let tls = target("https://h:1");
        let wrong_ca = tls.explain("invalid peer certificate: UnknownIssuer");
        assert!(matches!(wrong_ca, ConnectError::Config(m) if m.contains("--ca")));
        let plain_server = tls.explain("received corrupt message of type InvalidContentType");
        assert!(
            matches!(plain_server, ConnectError::Config(m) if m.contains("does not speak TLS"))
        );
        let tls_server = target("http://h:1").explain("h2 protocol error: http2 error");
        assert!(matches!(tls_server, ConnectError::Config(m) if m.contains("use https://")));
        let died = target("http://h:1").explain("transport error: connection reset by peer");
        assert!(
            matches!(died, ConnectError::Unreachable(_)),
            "a restart is retried"
        );
        let down = tls.explain("tcp connect error: Connection refused (os error 111)");
        assert!(matches!(down, ConnectError::Unreachable(_)));
    }

    #[test]
    fn a_bearer_never_prints_its_secret() {
        let b = Bearer::new(Some(" msfleet_abc \n")).unwrap();
        assert_eq!(format!("{b:?}"), "Bearer(..)");
        assert!(Bearer::new(Some("bad\u{7f}")).is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "msfleet_abc\n").unwrap();
        assert_eq!(read_token_file(&p).unwrap(), "msfleet_abc");
        std::fs::write(&p, "two words\n").unwrap();
        assert!(read_token_file(&p).is_err());
    }
}
