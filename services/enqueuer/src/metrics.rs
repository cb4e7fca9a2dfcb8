//! What the enqueue API records when metrics are exported:
//! `stem_enqueued_total{task,queue}` per accepted task and
//! `http_server_request_duration_seconds{method,route,status}` per
//! request (the route as declared, e.g. `/tasks/{id}`, so ids do not
//! become series). Off (and free) when the process exports nothing.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::KeyValue;

/// The API's instruments; [`ApiMetrics::off`] records nothing.
#[derive(Clone, Default)]
pub struct ApiMetrics {
    inner: Option<Arc<Instruments>>,
}

struct Instruments {
    enqueued: Counter<u64>,
    requests: Histogram<f64>,
}

impl ApiMetrics {
    /// Records nothing.
    pub fn off() -> Self {
        ApiMetrics::default()
    }

    /// Records through `meter`.
    pub fn new(meter: &Meter) -> Self {
        ApiMetrics {
            inner: Some(Arc::new(Instruments {
                enqueued: meter
                    .u64_counter("stem_enqueued")
                    .with_description("Tasks accepted by the enqueue API.")
                    .build(),
                requests: meter
                    .f64_histogram("http_server_request_duration_seconds")
                    .with_description("How long the enqueue API took to answer.")
                    .with_unit("s")
                    .with_boundaries(stem::telemetry::DURATION_BUCKETS.to_vec())
                    .build(),
            })),
        }
    }

    /// `n` tasks of `task` accepted onto `queue`.
    pub fn enqueued(&self, task: &str, queue: &str, n: u64) {
        if let Some(i) = &self.inner {
            i.enqueued.add(
                n,
                &[
                    KeyValue::new("task", task.to_string()),
                    KeyValue::new("queue", queue.to_string()),
                ],
            );
        }
    }
}

/// Times each request (a `from_fn_with_state` middleware).
pub async fn time_requests(
    State(metrics): State<ApiMetrics>,
    req: Request,
    next: Next,
) -> Response {
    let Some(i) = metrics.inner.clone() else {
        return next.run(req).await;
    };
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let began = Instant::now();
    let response = next.run(req).await;
    i.requests.record(
        began.elapsed().as_secs_f64(),
        &[
            KeyValue::new("method", method),
            KeyValue::new("route", route),
            KeyValue::new("status", i64::from(response.status().as_u16())),
        ],
    );
    response
}
