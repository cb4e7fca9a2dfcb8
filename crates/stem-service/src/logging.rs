//! The `tracing` subscriber of every Stem process: stderr, text or JSON
//! (`STEM_LOG_FORMAT`), level from `RUST_LOG`, else the caller's default
//! (`info` for services, `warn` for the operator CLI); and, for services
//! when `STEM_OTLP_ENDPOINT` is set, the OpenTelemetry layer that exports
//! the spans of [`stem::trace`] over OTLP/HTTP.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use stem::config::LogFormat;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the global subscriber, filtering by `RUST_LOG` or else by
/// `default_filter`. Safe to call more than once (later calls are ignored).
pub fn init_logging(format: LogFormat, default_filter: &str) {
    install(format, default_filter, None);
}

/// Keeps the span exporter of a service; flushes it when dropped (at the
/// end of `main`), so the last spans are not lost.
#[must_use = "spans are flushed when this is dropped"]
pub struct Traces(Option<SdkTracerProvider>);

impl Drop for Traces {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            if let Err(e) = provider.shutdown() {
                tracing::debug!(error = %e, "trace exporter shutdown");
            }
        }
    }
}

/// The logging a service binary starts with, for the service `service`
/// (the spans' `service.name`): [`init_logging`] in the format
/// `STEM_LOG_FORMAT` names, at `info` unless `RUST_LOG` says otherwise;
/// when `STEM_OTLP_ENDPOINT` holds an http(s) URL, spans are exported in
/// batches to `<endpoint>/v1/traces` and [`stem::trace::enable`] turns
/// them on. (An invalid endpoint is left to the configuration check,
/// which exits 78 naming it.) Hold the returned [`Traces`] until exit.
pub fn init_service_logging(service: &str) -> Traces {
    let endpoint = std::env::var("STEM_OTLP_ENDPOINT").ok();
    init_service_logging_to(service, log_format_from_env(), "info", endpoint.as_deref())
}

/// [`init_service_logging`] with the OTLP endpoint given instead of read
/// from `STEM_OTLP_ENDPOINT` (the benchmark points it at its own sink).
pub fn init_service_logging_to(
    service: &str,
    format: LogFormat,
    default_filter: &str,
    endpoint: Option<&str>,
) -> Traces {
    // The exporter's HTTP client is built on rustls, which needs the
    // process's crypto provider before any client exists.
    stem::redis_conn::install_crypto_provider();
    let endpoint = endpoint
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .and_then(|v| stem::telemetry::http_url("STEM_OTLP_ENDPOINT", v).ok())
        .map(|url| stem::telemetry::otlp_base(&url));
    let provider = endpoint.and_then(|url| match tracer_provider(service, &url) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("could not set up trace export to {url}: {e}");
            None
        }
    });
    install(format, default_filter, provider.clone());
    if let Some(provider) = &provider {
        // The worker's spans go through the global provider (stem::trace).
        opentelemetry::global::set_tracer_provider(provider.clone());
        stem::trace::enable();
    }
    Traces(provider)
}

fn tracer_provider(service: &str, endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .with_timeout(std::time::Duration::from_secs(5))
        .build()?;
    let namespace = std::env::var("STEM_WORKER_NAMESPACE")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "stem".into());
    let resource = Resource::builder()
        .with_service_name(service.to_string())
        .with_attribute(KeyValue::new("service.namespace", namespace))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Warnings and errors the OpenTelemetry SDK and exporter logged (failed
/// exports, dropped spans): each means telemetry was lost. Exported as
/// `stem_telemetry_errors_total`.
static TELEMETRY_ERRORS: AtomicU64 = AtomicU64::new(0);

/// How many telemetry errors this process logged so far.
pub fn telemetry_errors() -> u64 {
    TELEMETRY_ERRORS.load(Ordering::Relaxed)
}

/// Counts the SDK's own warnings and errors (it logs through `tracing`).
struct CountTelemetryErrors;

impl<S: tracing::Subscriber> Layer<S> for CountTelemetryErrors {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let meta = event.metadata();
        if *meta.level() <= tracing::Level::WARN && meta.target().starts_with("opentelemetry") {
            TELEMETRY_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn install(format: LogFormat, default_filter: &str, provider: Option<SdkTracerProvider>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Spans go to the exporter whatever RUST_LOG says about log lines: the
    // log filter applies to the log layer only. The spans that only carry
    // a trace's ids to log lines stay out (what they name is exported).
    let otel = provider.map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("stem"))
            .with_filter(
                Targets::new()
                    .with_default(LevelFilter::INFO)
                    .with_target(stem::trace::LOG_ONLY_TARGET, LevelFilter::OFF),
            )
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry()
        .with(otel)
        .with(CountTelemetryErrors);
    let _ = match format {
        LogFormat::Json => registry.with(fmt.json().with_filter(filter)).try_init(),
        LogFormat::Text => registry.with(fmt.with_filter(filter)).try_init(),
    };
}

/// The log format named by `STEM_LOG_FORMAT`, before full configuration is
/// parsed (so configuration errors are logged in the right format).
pub fn log_format_from_env() -> LogFormat {
    match std::env::var("STEM_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}
