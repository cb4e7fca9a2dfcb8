//! The routes of the enqueue API (README "HTTP API (enqueuer)"). Request
//! bodies are typed structs read by [`JsonBody`], so every rejection (not
//! JSON, empty, malformed, wrong types, oversize) gets the API's JSON
//! error shape.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use stem::client::{EnqueueOptions, EnqueueRequest, Stem};
use stem::envelope::TaskStatus;
use stem_demo as demo;
use tracing::Instrument;

use crate::body::JsonBody;
use crate::error::ApiError;
use crate::metrics::ApiMetrics;

/// Most names a single `POST /group` accepts.
pub(crate) const MAX_GROUP: usize = 10_000;
/// Largest request body.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// A producer whose registry holds the demo catalogue.
    pub stem: Stem,
    /// What the API records (off unless metrics are exported).
    pub metrics: ApiMetrics,
    /// Host names answered besides the local ones (`ENQUEUER_ALLOWED_HOSTS`).
    pub allowed_hosts: std::sync::Arc<Vec<String>>,
}

impl AppState {
    /// Handlers on `stem`, recording no metrics.
    pub fn new(stem: Stem) -> Self {
        AppState {
            stem,
            metrics: ApiMetrics::off(),
            allowed_hosts: Default::default(),
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
            only_served_hosts,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::time_requests,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Answers only under the host names the API serves
/// ([`stem_service::host`]): a DNS-rebinding page sends its own name, and
/// may send JSON, which the content-type rule alone would let in. The
/// health checks answer under any name (container healthchecks, load
/// balancers).
async fn only_served_hosts(
    State(st): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    let health = matches!(req.uri().path(), "/healthz" | "/readyz");
    let host = stem_service::host::request_host(&req);
    if !health && !stem_service::host::serves(host, &st.allowed_hosts) {
        return Err(ApiError::ForeignHost(host.to_string()));
    }
    Ok(next.run(req).await)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("Route not found.".into())
}

/// The body of `POST /enqueue` (README "HTTP API (enqueuer)"): every
/// field optional; fields the API does not know are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnqueueBody {
    task: Option<String>,
    name: Option<String>,
    delay_ms: Option<u64>,
    fail: Option<bool>,
    countdown_ms: Option<u64>,
    priority: Option<u64>,
    idempotency_key: Option<String>,
}

/// The body of `POST /group`.
#[derive(Deserialize)]
struct GroupBody {
    names: Option<Vec<String>>,
}

/// `s` trimmed, `None` when nothing is left: a blank field means "the
/// default", as an absent one does.
fn text(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// `v` when it is at most `max`, else the API's 400 naming `field`.
fn at_most(field: &str, v: Option<u64>, max: u64) -> Result<Option<u64>, ApiError> {
    match v {
        Some(v) if v > max => Err(ApiError::BadRequest(format!(
            "\"{field}\" must be an integer from 0 to {max}."
        ))),
        v => Ok(v),
    }
}

/// `POST /enqueue`. With tracing on, the request is a server span that
/// continues the caller's trace when it sends a `traceparent` header, and
/// the task's `stem.enqueue` span is its child.
async fn enqueue(
    State(st): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<EnqueueBody>,
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

async fn enqueue_body(st: AppState, body: EnqueueBody) -> Result<Response, ApiError> {
    let task = text(body.task).unwrap_or_else(|| demo::DEFAULT_TASK.to_string());
    let name = text(body.name).unwrap_or_else(|| "friend".to_string());
    let delay_ms = at_most("delayMs", body.delay_ms, 3_600_000)?;
    let fail = body.fail;
    let countdown_ms = at_most("countdownMs", body.countdown_ms, 30 * 86_400_000)?;
    let priority = at_most("priority", body.priority, 9)?;
    let idempotency_key = text(body.idempotency_key);
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
    JsonBody(body): JsonBody<GroupBody>,
) -> Result<Response, ApiError> {
    let names = match body.names {
        Some(n) if n.len() > MAX_GROUP => {
            return Err(ApiError::BadRequest(format!(
                "\"names\" holds at most {MAX_GROUP} entries."
            )))
        }
        Some(n) if !n.is_empty() => n,
        _ => {
            return Err(ApiError::BadRequest(
                "Provide a non-empty \"names\" array.".into(),
            ))
        }
    };
    let mut tasks = Vec::with_capacity(names.len());
    for name in names {
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
