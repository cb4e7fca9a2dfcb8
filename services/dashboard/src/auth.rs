//! Who may see: HTTP basic auth on every route but the health checks
//! (`DASHBOARD_USERNAME`/`DASHBOARD_PASSWORD`), and the headers every
//! answer carries (CSP `default-src 'self'`: the pages run no inline
//! script and load nothing from elsewhere; `no-store` on everything but the
//! assets). Where requests may come from and what they may do is
//! [`crate::guard`]'s.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use subtle::ConstantTimeEq;

use crate::AppState;

/// Equal in time independent of where the inputs differ (credentials
/// here, CSRF tokens in [`crate::guard`]).
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Asks for credentials on every route but `/healthz` and `/readyz` when
/// they are configured.
pub(crate) async fn basic_auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(creds) = &st.config().credentials else {
        return next.run(req).await;
    };
    if st.is_health(req.uri().path()) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        })
        .and_then(|v| String::from_utf8(v).ok());
    let ok = given
        .as_deref()
        .and_then(|v| v.split_once(':'))
        .is_some_and(|(user, pass)| {
            // Both compared, whatever the first gives.
            same(user, &creds.username) & same(pass, &creds.password)
        });
    if ok {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"Stem dashboard\", charset=\"UTF-8\"",
        )],
        "authentication required\n",
    )
        .into_response()
}

/// Adds the security headers to every answer.
pub(crate) async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    // Pages show live state, never to be served from a cache; this also
    // keeps a browser from parking a left page, with its open event
    // stream, in its back/forward cache. Assets set their own.
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}
