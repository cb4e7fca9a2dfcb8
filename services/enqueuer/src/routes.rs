//! The routes of the enqueue API (README "HTTP API (enqueuer)"). Request bodies are read as bytes (1 MiB cap)
//! and parsed here, so every rejection (malformed JSON, wrong types,
//! oversize) gets the API's JSON error shape.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use stem::client::{EnqueueOptions, EnqueueRequest, Stem};
use stem::envelope::TaskStatus;
use stem_demo as demo;
use tracing::Instrument;

use crate::error::ApiError;
use crate::metrics::ApiMetrics;

/// Most names a single `POST /group` accepts.
pub const MAX_GROUP: usize = 10_000;
/// Largest request body.
pub const MAX_BODY: usize = 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// A producer whose registry holds the demo catalogue.
    pub stem: Stem,
    /// What the API records (off unless metrics are exported).
    pub metrics: ApiMetrics,
}

impl AppState {
    /// Handlers on `stem`, recording no metrics.
    pub fn new(stem: Stem) -> Self {
        AppState {
            stem,
            metrics: ApiMetrics::off(),
        }
    }
}

/// The API router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/enqueue", post(enqueue))
        .route("/group", post(create_group))
        .route("/group/{id}", get(get_group))
        .route("/tasks/{id}", get(get_task))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::time_requests,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("Route not found.".into())
}

fn parse_object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let bytes = match body {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::TooLarge)
        }
        Err(rejection) => {
            return Err(ApiError::BadRequest(format!(
                "Could not read the request body: {rejection}"
            )))
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::BadRequest(
            "Request body must be a JSON object.".into(),
        )),
        Err(e) => Err(ApiError::BadRequest(format!("Malformed JSON: {e}."))),
    }
}

fn opt_string(m: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
        Some(_) => Err(ApiError::BadRequest(format!("\"{key}\" must be a string."))),
    }
}

fn opt_int(m: &Map<String, Value>, key: &str, max: u64) -> Result<Option<u64>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v <= max => Ok(Some(v)),
            _ => Err(ApiError::BadRequest(format!(
                "\"{key}\" must be an integer from 0 to {max}."
            ))),
        },
        Some(_) => Err(ApiError::BadRequest(format!(
            "\"{key}\" must be an integer."
        ))),
    }
}

fn opt_bool(m: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::BadRequest(format!(
            "\"{key}\" must be true or false."
        ))),
    }
}

/// `POST /enqueue`. With tracing on, the request is a server span that
/// continues the caller's trace when it sends a `traceparent` header, and
/// the task's `stem.enqueue` span is its child.
async fn enqueue(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let span = if stem::trace::enabled() {
        let span = tracing::info_span!(
            "POST /enqueue",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            otel.kind = "server",
            http.request.method = "POST",
            http.route = "/enqueue",
        );
        stem::trace::continue_trace(
            &span,
            headers
                .get(stem::trace::TRACEPARENT_HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        stem::trace::stamp(&span);
        span
    } else {
        tracing::Span::none()
    };
    enqueue_body(st, body).instrument(span).await
}

async fn enqueue_body(
    st: AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let m = parse_object(body)?;
    let task = opt_string(&m, "task")?.unwrap_or_else(|| demo::DEFAULT_TASK.to_string());
    let name = opt_string(&m, "name")?.unwrap_or_else(|| "friend".to_string());
    let delay_ms = opt_int(&m, "delayMs", 3_600_000)?;
    let fail = opt_bool(&m, "fail")?;
    let countdown_ms = opt_int(&m, "countdownMs", 30 * 86_400_000)?;
    let priority = opt_int(&m, "priority", 9)?;
    let idempotency_key = opt_string(&m, "idempotencyKey")?;
    if demo::spec(&task).is_none() {
        return Err(ApiError::UnknownTask {
            task,
            known: demo::names(),
        });
    }
    let mut args = Map::new();
    args.insert("name".into(), json!(name));
    if let Some(d) = delay_ms {
        args.insert("delayMs".into(), json!(d));
    }
    if let Some(f) = fail {
        args.insert("fail".into(), json!(f));
    }
    let mut meta = Map::new();
    meta.insert("demo.source".into(), json!("http.enqueue"));
    let opts = EnqueueOptions {
        priority: priority.map(|p| p as u8),
        countdown: countdown_ms.map(Duration::from_millis),
        idempotency_key,
        meta,
        ..Default::default()
    };
    let queue = st.stem.queue_for(&task, &opts);
    let out = st
        .stem
        .enqueue_raw(&task, Value::Object(args), opts)
        .await?;
    let mut body = json!({ "taskId": out.task_id, "task": task });
    if out.duplicate {
        body["duplicate"] = json!(true);
    } else {
        st.metrics.enqueued(&task, &queue, 1);
    }
    Ok(Json(body).into_response())
}

/// `POST /group`.
async fn create_group(
    State(st): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let m = parse_object(body)?;
    let names = match m.get("names") {
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_GROUP => a,
        Some(Value::Array(a)) if a.len() > MAX_GROUP => {
            return Err(ApiError::BadRequest(format!(
                "\"names\" holds at most {MAX_GROUP} entries."
            )))
        }
        _ => {
            return Err(ApiError::BadRequest(
                "Provide a non-empty \"names\" array.".into(),
            ))
        }
    };
    let mut tasks = Vec::with_capacity(names.len());
    for n in names {
        let Value::String(name) = n else {
            return Err(ApiError::BadRequest(
                "Every entry of \"names\" must be a string.".into(),
            ));
        };
        let mut meta = Map::new();
        meta.insert("demo.source".into(), json!("http.group"));
        tasks.push(EnqueueRequest {
            name: demo::DEFAULT_TASK.into(),
            args: json!({ "name": name }),
            options: EnqueueOptions {
                meta,
                ..Default::default()
            },
        });
    }
    let handle = st.stem.group(tasks).await?;
    let queue = st
        .stem
        .queue_for(demo::DEFAULT_TASK, &EnqueueOptions::default());
    st.metrics
        .enqueued(demo::DEFAULT_TASK, &queue, handle.task_ids.len() as u64);
    Ok(Json(json!({ "groupId": handle.group_id, "count": handle.task_ids.len() })).into_response())
}

fn group_entry(s: &TaskStatus) -> Value {
    let mut v = json!({ "state": s.state, "attempt": s.attempt, "meta": s.meta });
    if !s.result.is_null() {
        v["result"] = s.result.clone();
    }
    if let Some(e) = &s.error {
        v["error"] = json!(e);
    }
    v
}

/// `GET /group/{id}`.
async fn get_group(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    // Only the generated form reaches the backend's keys.
    let found = match stem::canvas::is_group_id(&id) {
        true => st.stem.backend().get_group(&id).await?,
        false => None,
    };
    let Some(g) = found else {
        return Err(ApiError::NotFound(
            "Unknown group or expired results".into(),
        ));
    };
    let results: BTreeMap<&String, Value> =
        g.results.iter().map(|(k, s)| (k, group_entry(s))).collect();
    Ok(Json(json!({
        "id": g.id,
        "expected": g.expected,
        "completed": g.results.len(),
        "results": results,
    }))
    .into_response())
}

/// `GET /tasks/{id}`.
async fn get_task(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let found = match stem::envelope::is_task_id(&id) {
        true => st.stem.status(&id).await?,
        false => None,
    };
    match found {
        Some(s) => Ok(Json(s).into_response()),
        None => Err(ApiError::NotFound(format!(
            "Unknown task {id:?} or expired status."
        ))),
    }
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 when the broker and backend answer.
async fn readyz(State(st): State<AppState>) -> Response {
    stem_service::http::readyz(&st.stem).await
}
