//! Who is looking at the dashboard, and whether a form they post is theirs.
//!
//! - `?token=TOKEN` on any page logs in: the token is checked, set as an
//!   HttpOnly, SameSite=Strict cookie (Secure under TLS) and the browser is
//!   sent to the same URL without it, so it stays out of the history and of
//!   any link shared from there. `Authorization: Bearer TOKEN` works on every
//!   page too (scripts).
//! - An admin action (POST) from a cookie session must carry the session's
//!   CSRF token (an HMAC of the session's secret under a key of this process)
//!   and, when the browser sends one, an `Origin` of this very host. A
//!   request with a bearer header carries no ambient credential and needs no
//!   CSRF token.
//!
//! The token is never logged, echoed in a page, or put in a redirect.

use crate::auth::{self, Principal, TokenIndex};
use axum::http::{header, HeaderMap, HeaderValue};
use ring::hmac;

/// The session cookie's name.
pub const COOKIE: &str = "msfleet_token";
/// The form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "csrf";
/// Longest cookie or form token taken at all (a secret is 72 characters).
const MAX_SECRET: usize = 256;

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Cookie,
    Bearer,
}

/// A caller of the dashboard: who, how, and their session's secret (to derive
/// the CSRF token; never shown).
#[derive(Debug, Clone)]
pub struct Viewer {
    pub who: Principal,
    pub via: Via,
    secret: String,
}

impl Viewer {
    pub fn is_admin(&self) -> bool {
        self.who.is_admin()
    }
}

/// Why a request is not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No credential at all: the login form.
    #[error("log in with a viewer (or higher) token")]
    NoToken,
    /// A credential that is malformed or unknown.
    #[error("{0}")]
    BadToken(String),
    /// Known, but the role is not enough.
    #[error("{0}")]
    Forbidden(String),
}

/// The secret of the session cookie in a `Cookie` header, if any.
pub fn cookie_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .filter(|v| !v.is_empty() && v.len() <= MAX_SECRET)
}

/// Who sent `headers`: a bearer header wins over the cookie.
pub fn viewer(headers: &HeaderMap, tokens: &TokenIndex) -> Result<Viewer, Refused> {
    let bearer =
        auth::bearer_secret(headers.get(header::AUTHORIZATION)).map_err(Refused::BadToken)?;
    let (secret, via) = match (bearer, cookie_secret(headers)) {
        (Some(s), _) => (s, Via::Bearer),
        (None, Some(s)) => (s, Via::Cookie),
        (None, None) => return Err(Refused::NoToken),
    };
    let who = authenticate(secret, tokens)?;
    Ok(Viewer {
        who,
        via,
        secret: secret.to_string(),
    })
}

/// A person's token of viewer role or higher.
pub fn authenticate(secret: &str, tokens: &TokenIndex) -> Result<Principal, Refused> {
    if secret.len() > MAX_SECRET {
        return Err(Refused::BadToken("the token is too long to be one".into()));
    }
    let who = tokens.authenticate(secret).ok_or_else(|| {
        Refused::BadToken(
            "the token is not valid here: it was revoked, mistyped, or made by another scheduler"
                .into(),
        )
    })?;
    auth::admit(&who, auth::Need::Person(auth::Role::Viewer)).map_err(Refused::Forbidden)?;
    Ok(who)
}

/// `Set-Cookie` for a session with `secret`.
pub fn set_cookie(secret: &str, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict{secure}"
    ))
    .ok()
}

/// `Set-Cookie` that ends the session.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("msfleet_token=; Max-Age=0"))
}

/// A `?token=` in `path_and_query`: the token and the same URL without it.
pub fn take_token_param(path_and_query: &str) -> Option<(String, String)> {
    let (path, query) = path_and_query.split_once('?')?;
    let mut token = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        // Every `token` goes (the first one counts), so none stays in the URL.
        match pair.split_once('=') {
            Some(("token", value)) => {
                let value = form_urlencoded::parse(format!("t={value}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                token.get_or_insert(value);
            }
            _ if pair == "token" => {
                token.get_or_insert_with(String::new);
            }
            _ => rest.push(pair),
        }
    }
    let token = token?;
    let url = if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    Some((token, url))
}

/// Where a login may send the browser: a path of this site, nothing else.
pub fn local_target(next: &str) -> &str {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.chars().any(|c| c.is_control());
    if ok {
        next
    } else {
        "/"
    }
}

/// The key CSRF tokens are derived with: new for each process, so a restart
/// asks for a reload of an open page before its next action.
pub struct CsrfKey(hmac::Key);

impl CsrfKey {
    pub fn random() -> Result<CsrfKey, ring::error::Unspecified> {
        let rng = ring::rand::SystemRandom::new();
        Ok(CsrfKey(hmac::Key::generate(hmac::HMAC_SHA256, &rng)?))
    }

    #[cfg(test)]
    pub fn fixed(bytes: &[u8]) -> CsrfKey {
        CsrfKey(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// The CSRF token of `viewer`'s session (hex).
    pub fn token(&self, viewer: &Viewer) -> String {
        let tag = hmac::sign(&self.0, viewer.secret.as_bytes());
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `given` is `viewer`'s CSRF token (constant time).
    fn verify(&self, viewer: &Viewer, given: &str) -> bool {
        let Some(tag) = unhex(given) else {
            return false;
        };
        hmac::verify(&self.0, viewer.secret.as_bytes(), &tag).is_ok()
    }

    /// Whether a POST of `viewer` with `headers` and form token `given` is
    /// the viewer's own: a bearer caller always is; a cookie session needs
    /// its CSRF token, and an `Origin`, if sent, naming this host.
    pub fn check_post(
        &self,
        viewer: &Viewer,
        headers: &HeaderMap,
        given: &str,
    ) -> Result<(), String> {
        if viewer.via == Via::Bearer {
            return Ok(());
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            let origin_host = origin
                .to_str()
                .ok()
                .and_then(|o| o.split_once("://"))
                .map(|(_, h)| h.trim_end_matches('/'));
            if host.is_none() || origin_host != host {
                return Err("refused: the form was not sent from this dashboard (Origin)".into());
            }
        }
        if !self.verify(viewer, given) {
            return Err(
                "refused: the form's CSRF token is missing or stale; reload the page and try again"
                    .into(),
            );
        }
        Ok(())
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn index() -> TokenIndex {
        let tokens = TokenIndex::default();
        for (secret, name, role) in [
            ("msfleet_v", "vera", Role::Viewer),
            ("msfleet_a", "ana", Role::Admin),
        ] {
            tokens.insert(
                auth::secret_hash(secret),
                Principal::Person {
                    name: name.into(),
                    role,
                },
            );
        }
        tokens.insert(
            auth::secret_hash("msfleet_agent"),
            Principal::Agent {
                name: "a1".into(),
                labels: Default::default(),
                profile: String::new(),
                proof: auth::AgentProof::Token,
            },
        );
        tokens
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_cookie_is_found_among_others_and_bounded() {
        let h = headers(&[(header::COOKIE, "a=1; msfleet_token=msfleet_v; b=2")]);
        assert_eq!(cookie_secret(&h), Some("msfleet_v"));
        let h = headers(&[
            (header::COOKIE, "a=1"),
            (header::COOKIE, "msfleet_token=\"x\""),
        ]);
        assert_eq!(cookie_secret(&h), Some("x"));
        assert_eq!(
            cookie_secret(&headers(&[(header::COOKIE, "msfleet_token=")])),
            None
        );
        assert_eq!(
            cookie_secret(&headers(&[(header::COOKIE, "other_msfleet_token=x")])),
            None
        );
        let long = format!("msfleet_token={}", "x".repeat(300));
        assert_eq!(cookie_secret(&headers(&[(header::COOKIE, &long)])), None);
    }

    #[test]
    fn a_viewer_comes_by_cookie_or_bearer_and_agents_or_strangers_do_not() {
        let tokens = index();
        let v = viewer(
            &headers(&[(header::COOKIE, "msfleet_token=msfleet_v")]),
            &tokens,
        )
        .unwrap();
        assert_eq!(
            (v.who.name(), v.via, v.is_admin()),
            ("vera", Via::Cookie, false)
        );
        let a = viewer(
            &headers(&[
                (header::COOKIE, "msfleet_token=msfleet_v"),
                (header::AUTHORIZATION, "Bearer msfleet_a"),
            ]),
            &tokens,
        )
        .unwrap();
        assert_eq!(
            (a.who.name(), a.via, a.is_admin()),
            ("ana", Via::Bearer, true)
        );
        assert_eq!(
            viewer(&HeaderMap::new(), &tokens).unwrap_err(),
            Refused::NoToken
        );
        let e = viewer(&headers(&[(header::COOKIE, "msfleet_token=nope")]), &tokens).unwrap_err();
        assert!(matches!(e, Refused::BadToken(m) if m.contains("not valid")));
        let e = viewer(&headers(&[(header::AUTHORIZATION, "Basic x")]), &tokens).unwrap_err();
        assert!(matches!(e, Refused::BadToken(m) if m.contains("Bearer")));
        let e = viewer(
            &headers(&[(header::AUTHORIZATION, "Bearer msfleet_agent")]),
            &tokens,
        )
        .unwrap_err();
        assert!(matches!(e, Refused::Forbidden(m) if m.contains("agent link")));
    }

    #[test]
    fn the_token_parameter_is_taken_out_of_the_url() {
        assert_eq!(
            take_token_param("/jobs?token=msfleet_x&state=running"),
            Some(("msfleet_x".into(), "/jobs?state=running".into()))
        );
        assert_eq!(
            take_token_param("/?token=a%2Bb"),
            Some(("a+b".into(), "/".into()))
        );
        assert_eq!(take_token_param("/jobs?state=running"), None);
        assert_eq!(take_token_param("/jobs"), None);
        assert_eq!(take_token_param("/x?tokens=1"), None);
        assert_eq!(
            take_token_param("/x?token=a&token=b&q=1"),
            Some(("a".into(), "/x?q=1".into())),
            "no second token stays behind"
        );
    }

    #[test]
    fn a_login_redirects_only_within_the_site() {
        assert_eq!(local_target("/jobs/7"), "/jobs/7");
        assert_eq!(local_target("//evil.example/"), "/");
        assert_eq!(local_target("/\\evil.example"), "/");
        assert_eq!(local_target("https://evil.example/"), "/");
        assert_eq!(local_target("/a\r\nSet-Cookie: x"), "/");
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_under_tls() {
        let c = set_cookie("msfleet_v", true).unwrap();
        let c = c.to_str().unwrap();
        assert!(c.starts_with("msfleet_token=msfleet_v;"), "{c}");
        for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(c.contains(part), "{c}");
        }
        assert!(!set_cookie("msfleet_v", false)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Secure"));
        assert!(set_cookie("bad\nvalue", false).is_none());
        assert!(clear_cookie(false).to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn a_post_needs_its_sessions_csrf_token_and_a_matching_origin() {
        let tokens = index();
        let key = CsrfKey::fixed(b"k");
        let cookie = |s: &str| format!("msfleet_token={s}");
        let ana = viewer(&headers(&[(header::COOKIE, &cookie("msfleet_a"))]), &tokens).unwrap();
        let vera = viewer(&headers(&[(header::COOKIE, &cookie("msfleet_v"))]), &tokens).unwrap();
        let good = key.token(&ana);
        assert_eq!(good.len(), 64);
        assert_ne!(good, key.token(&vera), "per session");
        assert_ne!(
            good,
            CsrfKey::fixed(b"other").token(&ana),
            "per process key"
        );
        let same = headers(&[
            (header::HOST, "127.0.0.1:8080"),
            (header::ORIGIN, "http://127.0.0.1:8080"),
        ]);
        assert!(key.check_post(&ana, &same, &good).is_ok());
        assert!(
            key.check_post(&ana, &headers(&[]), &good).is_ok(),
            "no Origin sent"
        );
        let e = key.check_post(&ana, &same, &key.token(&vera)).unwrap_err();
        assert!(e.contains("CSRF"), "{e}");
        assert!(key.check_post(&ana, &same, "").is_err());
        assert!(key.check_post(&ana, &same, &"zz".repeat(32)).is_err());
        let forged = headers(&[
            (header::HOST, "127.0.0.1:8080"),
            (header::ORIGIN, "http://evil.example"),
        ]);
        let e = key.check_post(&ana, &forged, &good).unwrap_err();
        assert!(e.contains("Origin"), "{e}");
        let bearer = viewer(
            &headers(&[(header::AUTHORIZATION, "Bearer msfleet_a")]),
            &tokens,
        )
        .unwrap();
        assert!(
            key.check_post(&bearer, &forged, "").is_ok(),
            "no ambient credential"
        );
    }
}

/// Fuzz target (`cargo test fuzz_dashboard`; cases from `MSFLEET_FUZZ_CASES`):
/// what a browser or a script sends the dashboard before anyone is known —
/// the query, the cookie, the bearer header, a login's `next`, a form's CSRF
/// token — never panics, never lets a stranger in, and never keeps a token
/// in the address it redirects to.
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::auth::Role;
    use msfleet_proto::fuzz::fuzz_config;
    use proptest::prelude::*;

    const VIEWER: &str = "msfleet_fuzz_viewer";

    fn tokens() -> TokenIndex {
        let tokens = TokenIndex::default();
        tokens.insert(
            auth::secret_hash(VIEWER),
            Principal::Person {
                name: "vera".into(),
                role: Role::Viewer,
            },
        );
        tokens
    }

    /// Query pairs, with `token` (bare, empty, encoded) among them often.
    fn query() -> impl Strategy<Value = Vec<String>> {
        let pair = prop_oneof![
            Just("token".to_string()),
            "token=[a-z_%+0-9]{0,12}",
            "[a-z]{1,6}=[a-z0-9%+]{0,8}",
            "[ -~]{0,12}",
        ];
        prop::collection::vec(pair, 0..6)
    }

    fn is_token_pair(pair: &str) -> bool {
        pair == "token" || pair.starts_with("token=")
    }

    proptest! {
        #![proptest_config(fuzz_config())]

        #[test]
        fn fuzz_dashboard_login_inputs(
            path in "/[a-z/]{0,10}",
            pairs in query(),
            cookie in "[ -~]{0,300}",
            bearer in "[ -~]{0,80}",
            next in "\\PC{0,20}|[/\\\\][ -~]{0,12}",
            csrf in "[0-9a-f]{64}|[ -~]{0,70}",
        ) {
            // `?token=`: taken out, whatever else the query holds.
            let url = format!("{path}?{}", pairs.join("&"));
            match take_token_param(&url) {
                Some((_, rest)) => {
                    prop_assert!(pairs.iter().any(|p| is_token_pair(p)), "{url}");
                    prop_assert!(rest.starts_with(&path), "{url} -> {rest}");
                    if let Some((_, q)) = rest.split_once('?') {
                        prop_assert!(!q.split('&').any(is_token_pair), "{url} -> {rest}");
                    }
                }
                None => prop_assert!(
                    !pairs.iter().any(|p| is_token_pair(p)),
                    "{url}: its token was not taken"
                ),
            }

            // The cookie and the bearer header: only the known secret gets in.
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                headers.insert(header::COOKIE, v);
                if let Some(secret) = cookie_secret(&headers) {
                    prop_assert!(!secret.is_empty() && secret.len() <= MAX_SECRET);
                    prop_assert!(!secret.contains(';'), "{cookie}");
                }
            }
            if let Ok(v) = HeaderValue::from_str(&bearer) {
                headers.insert(header::AUTHORIZATION, v);
            }
            if let Ok(v) = viewer(&headers, &tokens()) {
                prop_assert_eq!(v.secret.as_str(), VIEWER);
            }

            // A login's `next`: a path of this site, else the home page.
            let to = local_target(&next);
            prop_assert!(to == "/" || to == next);
            prop_assert!(to.starts_with('/') && !to.starts_with("//") && !to.starts_with("/\\"));

            // A cookie session's form: only its own CSRF token passes.
            let key = CsrfKey::fixed(b"fuzz");
            let session = Viewer {
                who: Principal::Person { name: "vera".into(), role: Role::Admin },
                via: Via::Cookie,
                secret: VIEWER.into(),
            };
            let ok = key.check_post(&session, &HeaderMap::new(), &csrf).is_ok();
            prop_assert_eq!(ok, csrf == key.token(&session), "{}", csrf);
            prop_assert!(key.check_post(&session, &HeaderMap::new(), &key.token(&session)).is_ok());
        }
    }
}
