//! One error enum for the API whose `IntoResponse` always writes JSON
//! `{"error": "<sentence>", …}` with the right status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// An API failure.
#[derive(Debug)]
pub enum ApiError {
    /// 400 with a sentence.
    BadRequest(String),
    /// 400 for an unknown task, listing the known ones.
    UnknownTask { task: String, known: Vec<String> },
    /// 404 with a sentence.
    NotFound(String),
    /// 403: asked for under a host name the API does not serve.
    ForeignHost(String),
    /// 405.
    MethodNotAllowed,
    /// 413.
    TooLarge,
    /// 415: a body that is not declared `application/json`.
    UnsupportedMediaType,
    /// 408: the request took longer than `ENQUEUER_REQUEST_TIMEOUT`.
    Timeout,
    /// 503: Redis did not answer.
    Unavailable(String),
    /// 500.
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The body of an oversize request is left unread, so the server
        // closes the connection after answering; say so, or a keep-alive
        // client reuses the dead connection for its next request.
        let close = matches!(
            self,
            ApiError::TooLarge | ApiError::Timeout | ApiError::UnsupportedMediaType
        );
        let (status, body): (StatusCode, Value) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, json!({ "error": m })),
            ApiError::UnknownTask { task, known } => (
                StatusCode::BAD_REQUEST,
                json!({ "error": format!("Unknown task \"{task}\"."), "knownTasks": known }),
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, json!({ "error": m })),
            ApiError::ForeignHost(host) => (
                StatusCode::FORBIDDEN,
                json!({ "error": format!(
                    "This API does not answer under the host name {host:?}: use localhost or \
                     an IP address, or add the name to ENQUEUER_ALLOWED_HOSTS."
                ) }),
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({ "error": "Method not allowed for this route." }),
            ),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({ "error": "Request body is larger than 1 MiB." }),
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({ "error": "Send the body as JSON with Content-Type: application/json." }),
            ),
            ApiError::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                json!({ "error": "The request took too long (ENQUEUER_REQUEST_TIMEOUT)." }),
            ),
            ApiError::Unavailable(m) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": format!("Broker unavailable: {m}") }),
            ),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": m })),
        };
        let mut response = (status, Json(body)).into_response();
        if close {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<stem::StemError> for ApiError {
    fn from(e: stem::StemError) -> Self {
        if e.is_unavailable() {
            log_outage(&e);
            ApiError::Unavailable(e.to_string())
        } else if let stem::StemError::InvalidArgument(m) = e {
            ApiError::BadRequest(m)
        } else {
            tracing::error!(error = %e, "request failed");
            ApiError::Internal("Internal error; see the enqueuer log.".into())
        }
    }
}

/// Logs why Redis is unavailable at most once every 10 seconds, so an
/// outage is visible in the log without a line per request.
fn log_outage(e: &stem::StemError) {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = stem::envelope::now_ms();
    let last = LAST.load(Ordering::Relaxed);
    if now - last >= 10_000
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::error!(error = %e, "broker unavailable: answering 503");
    }
}
