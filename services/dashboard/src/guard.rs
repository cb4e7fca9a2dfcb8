//! Where a request may come from and what it may do: one layer every
//! route but the health checks passes (after basic auth), so each page
//! and action is a plain handler.
//!
//! - **Host.** The dashboard answers only under the names it serves
//!   ([`stem_service::host`]: `localhost`, `*.localhost`, IP literals and
//!   `DASHBOARD_ALLOWED_HOSTS`). A DNS-rebinding page reaches it under the
//!   attacker's own name, which is refused here (403) before any page,
//!   token or event stream is served.
//! - **Session.** Each browser gets a random `stem_csrf` cookie
//!   (`HttpOnly`: never readable by a script; `SameSite=Lax`: never sent
//!   with another site's POST or fetch, only when the user follows a link
//!   here, so such a link does not replace the session other tabs hold);
//!   the CSRF token its pages carry is an HMAC of that cookie under a key
//!   drawn at random per process. A token is thus good only together with
//!   the cookie it was made for, and neither can be fetched from another
//!   site.
//! - **Actions** (every method but GET and HEAD): refused (403, nothing
//!   changed) in read-only mode, when `Origin` names another origin (or,
//!   without `Origin`, `Sec-Fetch-Site` says `cross-site`/`same-site`),
//!   and without the session's token (the `X-CSRF-Token` header or the
//!   form field `csrf_token`).

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SecureRandom as _;
use stem_service::host::{request_host, serves, split_authority};

use crate::auth::same;
use crate::AppState;

/// The header an action may carry its CSRF token in (else the form field
/// `csrf_token`).
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// The session cookie's name.
const COOKIE: &str = "stem_csrf";

/// Most bytes of an action's body read to find its token: axum's default
/// body limit, which the enqueue form's JSON arguments live under anyway.
const MAX_FORM: usize = 2 * 1024 * 1024;

/// The CSRF token of the request's session, for the page to carry.
#[derive(Clone, Debug, Default)]
pub(crate) struct Session {
    pub token: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Put there by `guard`; an empty token (no form can succeed) if a
        // route were ever mounted outside it.
        Ok(parts
            .extensions
            .get::<Session>()
            .cloned()
            .unwrap_or_default())
    }
}

/// The key session tokens are made with, drawn once per process.
pub(crate) struct SessionKey(ring::hmac::Key);

impl SessionKey {
    pub(crate) fn random() -> Self {
        let rng = ring::rand::SystemRandom::new();
        // The system's generator failing is not something to serve on.
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| panic!("the system random generator failed"));
        Self(key)
    }

    /// The token pages of the session `cookie` carry.
    fn token(&self, cookie: &str) -> String {
        URL_SAFE_NO_PAD.encode(ring::hmac::sign(&self.0, cookie.as_bytes()).as_ref())
    }
}

/// A fresh session cookie value: 32 random bytes, base64url.
fn new_cookie() -> String {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .unwrap_or_else(|_| panic!("the system random generator failed"));
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The session cookie the request carries, when well formed.
fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .find(|v| v.len() == 43 && URL_SAFE_NO_PAD.decode(v).is_ok_and(|b| b.len() == 32))
        .map(str::to_string)
}

/// Whether an action's `Origin` / `Sec-Fetch-Site` say it comes from a
/// page of this dashboard (or from no page at all: curl, scripts).
fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_none_or(|site| matches!(site, "same-origin" | "none"));
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let (authority, default_port) = match origin.split_once("://") {
        Some(("http", a)) => (a, "80"),
        Some(("https", a)) => (a, "443"),
        _ => return false, // `null`, or no origin of the web
    };
    let (origin_name, origin_port) = split_authority(authority);
    let (host_name, host_port) = split_authority(host);
    // A proxy that forwards the host without its port (nginx's `$host`)
    // leaves only the names to compare.
    origin_name == host_name && host_port.is_none_or(|p| p == origin_port.unwrap_or(default_port))
}

/// Why a request was refused (403, or 413 for an oversize form; nothing
/// changed).
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Asked for under a name the dashboard does not serve.
    Host(String),
    /// An action from a page of another origin.
    CrossSite,
    /// No CSRF token, another one, or no session cookie.
    Csrf,
    /// An action's body over the size read to find its token.
    TooLarge,
    /// `DASHBOARD_READ_ONLY` is on.
    ReadOnly,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let text = match self {
            Refusal::Host(host) => format!(
                "this dashboard does not answer under the host name {host:?}: open it as \
                 localhost or by IP address, or add the name to DASHBOARD_ALLOWED_HOSTS\n"
            ),
            Refusal::CrossSite => "refused: the action was sent from another site\n".into(),
            Refusal::Csrf => "missing or wrong CSRF token: reload the page and try again\n".into(),
            Refusal::ReadOnly => "this dashboard is read-only (DASHBOARD_READ_ONLY)\n".into(),
            Refusal::TooLarge => {
                return (StatusCode::PAYLOAD_TOO_LARGE, "the form is too large\n").into_response()
            }
        };
        (StatusCode::FORBIDDEN, text).into_response()
    }
}

/// The layer (see the module doc).
pub(crate) async fn guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if st.is_health(req.uri().path()) {
        return next.run(req).await;
    }
    let host = request_host(&req).to_string();
    if !serves(&host, &st.config().allowed_hosts) {
        return Refusal::Host(host).into_response();
    }
    let cookie = cookie_of(req.headers());
    let fresh = cookie.is_none();
    let cookie = cookie.unwrap_or_else(new_cookie);
    let session = Session {
        token: st.0.session_key.token(&cookie),
    };
    let mut req = req;
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        req = match check_action(&st, req, &host, &session, fresh).await {
            Ok(req) => req,
            Err(refused) => return refused.into_response(),
        };
    }
    req.extensions_mut().insert(session);
    let mut res = next.run(req).await;
    if fresh {
        let path = if st.base().is_empty() { "/" } else { st.base() };
        let set = format!("{COOKIE}={cookie}; Path={path}; HttpOnly; SameSite=Lax");
        if let Ok(v) = HeaderValue::from_str(&set) {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    res
}

/// Lets an action through (the request, its body read and put back) or
/// says why not.
async fn check_action(
    st: &AppState,
    req: Request,
    host: &str,
    session: &Session,
    fresh: bool,
) -> Result<Request, Refusal> {
    if st.config().read_only {
        return Err(Refusal::ReadOnly);
    }
    if !same_origin(req.headers(), host) {
        return Err(Refusal::CrossSite);
    }
    if fresh {
        return Err(Refusal::Csrf);
    }
    if let Some(token) = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
        return match same(token, &session.token) {
            true => Ok(req),
            false => Err(Refusal::Csrf),
        };
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM)
        .await
        .map_err(|_| Refusal::TooLarge)?;
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    let given = fields
        .iter()
        .find(|(k, _)| k == "csrf_token")
        .map(|(_, v)| v.as_str());
    match given {
        Some(token) if same(token, &session.token) => {
            Ok(Request::from_parts(parts, Body::from(bytes)))
        }
        _ => Err(Refusal::Csrf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_same_origin_actions_pass() {
        let host = "localhost:8080";
        assert!(same_origin(&headers(&[]), host), "no page: curl");
        assert!(same_origin(
            &headers(&[("origin", "http://localhost:8080")]),
            host
        ));
        assert!(!same_origin(
            &headers(&[("origin", "http://localhost:9999")]),
            host
        ));
        assert!(!same_origin(
            &headers(&[("origin", "http://evil.example:8080")]),
            host
        ));
        assert!(!same_origin(&headers(&[("origin", "null")]), host));
        // Behind a proxy that drops the port from Host, names decide.
        assert!(same_origin(
            &headers(&[("origin", "http://localhost:8080")]),
            "localhost"
        ));
        assert!(same_origin(
            &headers(&[("origin", "http://localhost")]),
            "localhost:80"
        ));
        for site in ["cross-site", "same-site"] {
            let h = headers(&[("sec-fetch-site", site)]);
            assert!(!same_origin(&h, host), "{site}");
        }
        assert!(same_origin(
            &headers(&[("sec-fetch-site", "same-origin")]),
            host
        ));
    }

    #[test]
    fn session_cookies_are_read_only_when_well_formed() {
        let good = new_cookie();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={good}; c=d")).expect("header"),
        );
        assert_eq!(cookie_of(&h), Some(good.clone()));
        assert_eq!(cookie_of(&headers(&[("cookie", "stem_csrf=short")])), None);
        let key = SessionKey::random();
        assert_ne!(key.token(&good), key.token(&new_cookie()));
        assert_eq!(key.token(&good), key.token(&good));
    }
}
