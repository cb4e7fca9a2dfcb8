//! The metrics pipeline of one process: an OpenTelemetry meter provider
//! whose readers are the exporters `STEM_METRIC_EXPORTERS` names.
//!
//! - `prometheus[:PORT]`: a manual reader, collected on each scrape of
//!   `/metrics` and written in the Prometheus text format (0.0.4) by the
//!   `prometheus` crate's encoder (served on axum by [`crate::http`]);
//! - `console`: the same text, logged every `OTEL_METRIC_EXPORT_INTERVAL`
//!   ms (default 15 000), like the OTLP push;
//! - `otlp[:URL]`: a periodic reader pushing OTLP/HTTP (protobuf) every
//!   `OTEL_METRIC_EXPORT_INTERVAL` ms (default 15 000) to `URL`, or to
//!   `STEM_OTLP_ENDPOINT` + `/v1/metrics`. The reader aggregates in place
//!   and exports from its own thread, so a slow or unreachable collector
//!   costs a failed export (logged by the SDK), never the task path.
//!
//! The library records through the [`Meter`] this hands out; with no
//! exporter there is no provider and no meter, and the library records
//! nothing beyond its own atomics.

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::http::header;
use axum::routing::get;
use axum::{Json, Router};
use opentelemetry::metrics::{Meter, MeterProvider as _, ObservableCounter};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, PeriodicReader, Pipeline, SdkMeterProvider, Temporality,
};
use opentelemetry_sdk::Resource;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::TextEncoder;
use serde_json::json;
use stem::telemetry::Exporter;
use tokio_util::sync::CancellationToken;

/// Where OTLP goes when neither `otlp:URL` nor `STEM_OTLP_ENDPOINT` says.
pub const DEFAULT_OTLP_ENDPOINT: &str = "http://localhost:4318";

/// A process's metrics: the meter the library records through and what
/// reads it. Cheap to clone; [`Metrics::off`] when no exporter is set.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    provider: SdkMeterProvider,
    meter: Meter,
    /// Read on demand (Prometheus scrape, console log).
    pull: Option<Arc<ManualReader>>,
    /// `stem_telemetry_errors_total`, kept so its callback stays.
    _errors: ObservableCounter<u64>,
}

impl Metrics {
    /// No exporter: nothing is recorded.
    pub fn off() -> Self {
        Metrics::default()
    }

    /// The pipeline `exporters` name for the process `service` (the
    /// resource's `service.name`; `namespace` is `service.namespace`).
    /// Starts the Prometheus endpoints and the console log; they and the
    /// OTLP push stop with `stop` (the push flushes once more then).
    pub fn start(
        service: &str,
        namespace: &str,
        exporters: &[Exporter],
        otlp_endpoint: Option<&str>,
        stop: &CancellationToken,
    ) -> anyhow::Result<Self> {
        if exporters.is_empty() {
            return Ok(Metrics::off());
        }
        // The OTLP client is built on rustls, which needs the process's
        // crypto provider first.
        stem::redis_conn::install_crypto_provider();
        let resource = Resource::builder()
            .with_service_name(service.to_string())
            .with_attribute(KeyValue::new("service.namespace", namespace.to_string()))
            .build();
        let mut builder = SdkMeterProvider::builder().with_resource(resource);
        let needs_pull = exporters
            .iter()
            .any(|e| matches!(e, Exporter::Prometheus { .. } | Exporter::Console));
        let pull = needs_pull.then(|| Arc::new(ManualReader::builder().build()));
        if let Some(reader) = &pull {
            builder = builder.with_reader(SharedReader(reader.clone()));
        }
        for e in exporters {
            if let Exporter::Otlp { url } = e {
                builder = builder.with_reader(otlp_reader(url.as_deref(), otlp_endpoint)?);
            }
        }
        let provider = builder.build();
        let meter = provider.meter("stem");
        let errors = meter
            .u64_observable_counter("stem_telemetry_errors")
            .with_description(
                "Warnings and errors of the telemetry exporters (failed exports, dropped spans): telemetry lost.",
            )
            .with_callback(|o| o.observe(crate::logging::telemetry_errors(), &[]))
            .build();
        let metrics = Metrics {
            inner: Some(Arc::new(Inner {
                provider,
                meter,
                pull,
                _errors: errors,
            })),
        };
        metrics.spawn_pull_exporters(exporters, stop);
        let m = metrics.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            m.shutdown().await;
        });
        Ok(metrics)
    }

    /// Starts the pull exporters `exporters` name: each Prometheus
    /// endpoint and the console log, until `stop`.
    fn spawn_pull_exporters(&self, exporters: &[Exporter], stop: &CancellationToken) {
        for e in exporters {
            match e {
                Exporter::Prometheus { port } => {
                    let (port, m, stop) = (*port, self.clone(), stop.clone());
                    tokio::spawn(async move {
                        if let Err(e) = serve_prometheus(port, m, stop).await {
                            tracing::error!(port, error = %e, "prometheus exporter failed");
                        }
                    });
                }
                Exporter::Console => {
                    let (m, stop) = (self.clone(), stop.clone());
                    let every = export_interval();
                    tokio::spawn(async move {
                        while stop
                            .run_until_cancelled(tokio::time::sleep(every))
                            .await
                            .is_some()
                        {
                            tracing::info!(target: "stem::metrics", "\n{}", m.prometheus_text());
                        }
                    });
                }
                Exporter::Otlp { .. } => {}
            }
        }
    }

    /// The meter to record through; `None` when nothing is exported.
    pub fn meter(&self) -> Option<&Meter> {
        self.inner.as_ref().map(|i| &i.meter)
    }

    /// Everything recorded so far, in the Prometheus text format (empty
    /// without a pull exporter).
    pub fn prometheus_text(&self) -> String {
        let Some(reader) = self.inner.as_ref().and_then(|i| i.pull.clone()) else {
            return String::new();
        };
        match TextEncoder::new().encode_to_string(&families(&reader)) {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(error = %e, "could not render the metrics");
                String::new()
            }
        }
    }

    /// Flushes and stops the readers (a last OTLP push).
    pub async fn shutdown(&self) {
        if let Some(inner) = self.inner.clone() {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = inner.provider.shutdown() {
                    tracing::debug!(error = %e, "metrics shutdown");
                }
            })
            .await;
        }
    }
}

/// `OTEL_METRIC_EXPORT_INTERVAL` (ms), 15 s when unset or invalid.
fn export_interval() -> Duration {
    std::env::var("OTEL_METRIC_EXPORT_INTERVAL")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(Duration::from_secs(15), Duration::from_millis)
}

/// The manual reader, shared between the provider (which registers its
/// pipeline) and the scrape handler (which collects through it).
#[derive(Debug)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// Everything `reader` collects, as Prometheus metric families (the data
/// model the `prometheus` crate's text encoder writes): counters get
/// `_total`, histograms cumulative buckets up to `+Inf`.
fn families(reader: &ManualReader) -> Vec<MetricFamily> {
    let mut rm = ResourceMetrics::default();
    if let Err(e) = reader.collect(&mut rm) {
        tracing::warn!(error = %e, "could not collect metrics");
        return Vec::new();
    }
    let mut out = Vec::new();
    for scope in rm.scope_metrics() {
        for metric in scope.metrics() {
            let family = match metric.data() {
                AggregatedMetrics::U64(data) => family(metric.name(), data, |v| v as f64),
                AggregatedMetrics::I64(data) => family(metric.name(), data, |v| v as f64),
                AggregatedMetrics::F64(data) => family(metric.name(), data, |v| v),
            };
            if let Some(mut f) = family {
                f.set_help(metric.description().to_string());
                out.push(f);
            }
        }
    }
    out.sort_by(|a, b| a.name().cmp(b.name()));
    out
}

fn labels<'a>(attrs: impl Iterator<Item = &'a KeyValue>) -> Vec<LabelPair> {
    attrs
        .map(|kv| {
            let mut l = LabelPair::default();
            l.set_name(kv.key.to_string());
            l.set_value(kv.value.to_string());
            l
        })
        .collect()
}

fn family<T: Copy>(name: &str, data: &MetricData<T>, as_f64: fn(T) -> f64) -> Option<MetricFamily> {
    let mut f = MetricFamily::default();
    let mut metrics = Vec::new();
    match data {
        MetricData::Sum(sum) if sum.is_monotonic() => {
            f.set_field_type(MetricType::COUNTER);
            f.set_name(if name.ends_with("_total") {
                name.to_string()
            } else {
                format!("{name}_total")
            });
            for dp in sum.data_points() {
                let mut c = Counter::default();
                c.set_value(as_f64(dp.value()));
                let mut m = Metric::default();
                m.set_label(labels(dp.attributes()));
                m.set_counter(c);
                metrics.push(m);
            }
        }
        MetricData::Sum(sum) => {
            f.set_field_type(MetricType::GAUGE);
            f.set_name(name.to_string());
            for dp in sum.data_points() {
                metrics.push(gauge(dp.attributes(), as_f64(dp.value())));
            }
        }
        MetricData::Gauge(g) => {
            f.set_field_type(MetricType::GAUGE);
            f.set_name(name.to_string());
            for dp in g.data_points() {
                metrics.push(gauge(dp.attributes(), as_f64(dp.value())));
            }
        }
        MetricData::Histogram(h) => {
            f.set_field_type(MetricType::HISTOGRAM);
            f.set_name(name.to_string());
            for dp in h.data_points() {
                let mut cumulative = 0;
                let buckets = dp
                    .bounds()
                    .zip(dp.bucket_counts())
                    .map(|(bound, n)| {
                        cumulative += n;
                        let mut b = Bucket::default();
                        b.set_upper_bound(bound);
                        b.set_cumulative_count(cumulative);
                        b
                    })
                    .collect();
                let mut hist = Histogram::default();
                hist.set_sample_count(dp.count());
                hist.set_sample_sum(as_f64(dp.sum()));
                hist.set_bucket(buckets);
                let mut m = Metric::default();
                m.set_label(labels(dp.attributes()));
                m.set_histogram(hist);
                metrics.push(m);
            }
        }
        MetricData::ExponentialHistogram(_) => return None,
    }
    f.set_metric(metrics);
    Some(f)
}

fn gauge<'a>(attrs: impl Iterator<Item = &'a KeyValue>, value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::default();
    m.set_label(labels(attrs));
    m.set_gauge(g);
    m
}

/// Serves `metrics` in the Prometheus text format on
/// `0.0.0.0:port/metrics` (and `/healthz`) until `stop`.
pub async fn serve_prometheus(
    port: u16,
    metrics: Metrics,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    // Collecting walks every series; keep it off the
                    // runtime's worker threads.
                    let text = tokio::task::spawn_blocking(move || metrics.prometheus_text())
                        .await
                        .unwrap_or_default();
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .fallback(crate::http::not_found);
    crate::http::serve(port, app, stop, "prometheus metrics (/metrics)").await
}

/// The periodic OTLP/HTTP reader for `url`, or for `otlp_endpoint` (else
/// the default collector) + `/v1/metrics`.
fn otlp_reader(
    url: Option<&str>,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<PeriodicReader<opentelemetry_otlp::MetricExporter>> {
    let url = match url {
        Some(u) => u.to_string(),
        None => format!(
            "{}/v1/metrics",
            otlp_endpoint
                .unwrap_or(DEFAULT_OTLP_ENDPOINT)
                .trim_end_matches('/')
        ),
    };
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .with_timeout(Duration::from_secs(5))
        .build()?;
    let reader = PeriodicReader::builder(exporter)
        .with_interval(export_interval())
        .build();
    tracing::info!(url = %url, interval_ms = export_interval().as_millis() as u64, "pushing metrics over OTLP/HTTP");
    Ok(reader)
}
