//! A worker inside an existing axum application: the app's own route
//! enqueues, the worker runs in the same process, and both stop together
//! on Ctrl-C (the worker drains its running tasks first).
//!
//! `cargo run -p stem --example worker_in_axum`, then
//! `curl -X POST localhost:3000/greet/Ada` and
//! `curl localhost:3000/tasks/<id>`.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use stem::{Stem, StemConfig, TaskContext, TaskOptions, Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

async fn greet(State(stem): State<Stem>, Path(name): Path<String>) -> (StatusCode, Json<Value>) {
    match stem
        .enqueue_raw("greet", json!({ "name": name }), Default::default())
        .await
    {
        Ok(enqueued) => (
            StatusCode::ACCEPTED,
            Json(json!({ "id": enqueued.task_id })),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        ),
    }
}

async fn task(State(stem): State<Stem>, Path(id): Path<String>) -> (StatusCode, Json<Value>) {
    match stem.status(&id).await {
        Ok(Some(s)) => (
            StatusCode::OK,
            Json(json!({ "state": s.state.as_str(), "result": s.result })),
        ),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "unknown task" })),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        ),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let stem = Stem::connect(&StemConfig::memory())?;
    stem.registry().register_fn(
        "greet",
        TaskOptions::default(),
        |_ctx: TaskContext, args: Value| async move {
            let name = args["name"].as_str().unwrap_or("stranger").to_string();
            Ok(format!("hello, {name}"))
        },
    );

    let stop = CancellationToken::new();
    let mut config = WorkerConfig::new("in-app", &["default"]);
    config.shutdown_grace = Duration::from_secs(5);
    let worker = tokio::spawn(Worker::new(config, &stem, None).run(stop.clone()));

    let app = Router::new()
        .route("/greet/{name}", post(greet))
        .route("/tasks/{id}", get(task))
        .with_state(stem);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    let shutdown = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .await?;
    worker.await??;
    Ok(())
}
