//! The worker's health endpoint (`STEM_WORKER_HEALTH_PORT`): `/healthz`
//! answers while the process runs, `/readyz` when the broker answers.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use stem::broker::Broker;
use tokio_util::sync::CancellationToken;

pub async fn serve(
    port: u16,
    worker: String,
    broker: Arc<dyn Broker>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let name = worker.clone();
    let app = Router::new()
        .route(
            "/healthz",
            get(move || async move { Json(json!({ "status": "ok", "worker": name })) }),
        )
        .route(
            "/readyz",
            get(move || async move {
                match tokio::time::timeout(Duration::from_secs(2), broker.ping()).await {
                    Ok(Ok(())) => Json(json!({ "status": "ready" })).into_response(),
                    Ok(Err(e)) => not_ready(e.to_string()),
                    Err(_) => not_ready("no answer within 2s".into()),
                }
            }),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": "Route not found." })),
            )
        });
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    tracing::info!(worker = %worker, "health endpoint on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    Ok(())
}

fn not_ready(reason: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": "Redis is not answering.", "broker": reason })),
    )
        .into_response()
}
