//! A real OTLP/HTTP receiver for tests: what an OpenTelemetry collector
//! accepts on `/v1/metrics` and `/v1/traces` (protobuf bodies), decoded
//! with the protocol's own message types and kept for assertions. The
//! services under test push to it exactly as they would to a collector.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

#[derive(Default)]
struct Received {
    metrics: Vec<ExportMetricsServiceRequest>,
    traces: Vec<ExportTraceServiceRequest>,
}

type Shared = Arc<Mutex<Received>>;

/// A receiver on a free loopback port; stops when dropped.
pub struct OtlpReceiver {
    port: u16,
    received: Shared,
    server: tokio::task::JoinHandle<()>,
}

/// One data point of a sum or gauge: its attributes and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub attributes: BTreeMap<String, String>,
    pub value: f64,
    /// `service.name` of the process that sent it.
    pub service: String,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// Attributes as a map of their text values.
pub fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

/// The `service.name` of a resource (empty when absent).
fn service_name(resource: &Option<Resource>) -> String {
    resource
        .as_ref()
        .map(|res| attributes(&res.attributes))
        .and_then(|a| a.get("service.name").cloned())
        .unwrap_or_default()
}

fn lock(r: &Shared) -> parking_lot::MutexGuard<'_, Received> {
    r.lock()
}

async fn metrics(State(r): State<Shared>, body: Bytes) -> StatusCode {
    match ExportMetricsServiceRequest::decode(body) {
        Ok(m) => {
            lock(&r).metrics.push(m);
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

async fn traces(State(r): State<Shared>, body: Bytes) -> StatusCode {
    match ExportTraceServiceRequest::decode(body) {
        Ok(t) => {
            lock(&r).traces.push(t);
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

impl OtlpReceiver {
    /// Listens on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let received: Shared = Arc::default();
        let app = Router::new()
            .route("/v1/metrics", post(metrics))
            .route("/v1/traces", post(traces))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(OtlpReceiver {
            port,
            received,
            server,
        })
    }

    /// The base URL (`STEM_OTLP_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many metric exports arrived.
    pub fn metric_exports(&self) -> usize {
        lock(&self.received).metrics.len()
    }

    /// Every data point of the sum or gauge `name`, from every export.
    pub fn points(&self, name: &str) -> Vec<Point> {
        let r = lock(&self.received);
        let mut out = Vec::new();
        for req in &r.metrics {
            for rm in &req.resource_metrics {
                let service = service_name(&rm.resource);
                for sm in &rm.scope_metrics {
                    for m in sm.metrics.iter().filter(|m| m.name == name) {
                        let dps = match &m.data {
                            Some(metric::Data::Sum(s)) => &s.data_points,
                            Some(metric::Data::Gauge(g)) => &g.data_points,
                            _ => continue,
                        };
                        for dp in dps {
                            let value = match dp.value {
                                Some(number_data_point::Value::AsInt(i)) => i as f64,
                                Some(number_data_point::Value::AsDouble(d)) => d,
                                None => continue,
                            };
                            out.push(Point {
                                attributes: attributes(&dp.attributes),
                                value,
                                service: service.clone(),
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// Every span received, with the `service.name` that sent it.
    pub fn spans(&self) -> Vec<(String, Span)> {
        let r = lock(&self.received);
        let mut out = Vec::new();
        for req in &r.traces {
            for rs in &req.resource_spans {
                let service = service_name(&rs.resource);
                for ss in &rs.scope_spans {
                    out.extend(ss.spans.iter().map(|s| (service.clone(), s.clone())));
                }
            }
        }
        out
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}
