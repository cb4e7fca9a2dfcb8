//! The HTTP endpoints a service answers besides its own API, on axum:
//!
//! - the health endpoint (`STEM_WORKER_HEALTH_PORT` for the worker,
//!   `STEM_BEAT_HEALTH_PORT` for beat):
//!   `/healthz` while the process runs, `/readyz` while its store answers;
//! - [`readyz`], the same readiness answer for the services that hold a
//!   [`Stem`] handle and serve their own router (enqueuer, dashboard);
//! - the serving and 404 helpers [`crate::metrics`] builds the Prometheus
//!   endpoint of `STEM_METRIC_EXPORTERS=prometheus[:PORT]` on.
//!
//! Every other path answers 404 with a JSON body, like the enqueuer.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use stem::broker::Broker;
use stem::client::Stem;
use tokio_util::sync::CancellationToken;

/// How long `/readyz` waits for the store before answering 503.
const READY_WITHIN: Duration = Duration::from_secs(2);

/// Serves `/healthz` and `/readyz` (while `broker` answers a ping) on
/// `0.0.0.0:port` until `stop`. `/healthz` names the process: `role` is
/// the JSON key (`"worker"`, `"beat"`), `name` its value.
pub async fn serve_health(
    port: u16,
    role: &'static str,
    name: String,
    broker: Arc<dyn Broker>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let healthy = json!({ "status": "ok", role: name.clone() });
    let app = Router::new()
        .route("/healthz", get(move || async move { Json(healthy) }))
        .route(
            "/readyz",
            get(move || async move {
                match tokio::time::timeout(READY_WITHIN, broker.ping()).await {
                    Ok(Ok(())) => Json(json!({ "status": "ready" })).into_response(),
                    Ok(Err(e)) => not_ready(e.to_string()),
                    Err(_) => not_ready(format!("no answer within {READY_WITHIN:?}")),
                }
            }),
        )
        .fallback(not_found);
    serve(port, app, stop, &format!("health endpoint of {name}")).await
}

/// The `/readyz` answer of a service holding a [`Stem`] handle (the
/// enqueuer, the dashboard): 200 `{"status":"ready"}` when the broker and
/// the result backend both answer a ping within 2 s, else 503
/// naming which did not.
pub async fn readyz(stem: &Stem) -> Response {
    let (b, r) = (stem.broker(), stem.backend());
    let (broker, backend) = tokio::join!(
        tokio::time::timeout(READY_WITHIN, b.ping()),
        tokio::time::timeout(READY_WITHIN, r.ping()),
    );
    let describe = |r: Result<stem::Result<()>, tokio::time::error::Elapsed>| match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {READY_WITHIN:?}")),
    };
    match (describe(broker), describe(backend)) {
        (Ok(()), Ok(())) => Json(json!({ "status": "ready" })).into_response(),
        (b, r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "error": "Redis is not answering.",
                "broker": b.err().unwrap_or_else(|| "ok".into()),
                "backend": r.err().unwrap_or_else(|| "ok".into()),
            })),
        )
            .into_response(),
    }
}

fn not_ready(reason: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": "Redis is not answering.", "broker": reason })),
    )
        .into_response()
}

/// The JSON 404 every endpoint of this crate answers for unknown paths.
pub(crate) async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "Route not found." })),
    )
        .into_response()
}

/// Serves `app` on `0.0.0.0:port` until `stop`; `what` names it in the log.
pub(crate) async fn serve(
    port: u16,
    app: Router,
    stop: CancellationToken,
    what: &str,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    tracing::info!("{what} on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    Ok(())
}
