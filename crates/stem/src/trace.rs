//! Traces across the queue: the W3C `traceparent` a task carries in its
//! headers, and the spans the producer and the worker open around it.
//!
//! A task's `traceparent` header is set when it is enqueued, from the
//! `stem.enqueue` span (whose parent is whatever span the caller is in,
//! such as the enqueuer's HTTP request continuing a caller's trace), and it
//! lives inside the signed spec: it cannot be moved onto another task.
//! The worker opens `stem.consume` under it and `stem.execute.<task>`
//! under that, once per attempt, so retries and replays show up as more
//! attempts of one trace.
//!
//! The worker's spans (`Attempt`) are opened on the OpenTelemetry API
//! directly rather than as `tracing` spans: the sampler decides first, and
//! an attempt whose trace is not sampled costs that decision and nothing
//! more (a `tracing` span is built, recorded and bridged whether sampled or
//! not, which cost about 15 µs of worker CPU per task; see
//! `docs/benchmarks.md`, results of 2026-12-01, "cheaper spans"). A sampled attempt also gets a
//! `tracing` span of target [`LOG_ONLY_TARGET`] holding its `trace_id` and
//! `span_id`, so the body's log lines name them; the services keep that
//! span out of their export.
//!
//! Spans are only opened once a process turned tracing on with [`enable`]
//! (the services do when `STEM_OTLP_ENDPOINT` is set): otherwise nothing
//! here runs on the task path.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{
    FutureExt as _, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags,
    TraceId, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::envelope::TaskSpec;

/// The header a task's trace context travels in.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The target of the `tracing` spans that only carry a trace's ids to the
/// log lines inside them; a process exporting `tracing` spans leaves this
/// target out, as the spans they name are exported already.
pub const LOG_ONLY_TARGET: &str = "stem::trace::log_only";

static ENABLED: AtomicBool = AtomicBool::new(false);
static TRACER: OnceLock<BoxedTracer> = OnceLock::new();

/// Opens spans from now on, through the global tracer provider, which the
/// process installs first (`opentelemetry::global::set_tracer_provider`).
pub fn enable() {
    let _ = TRACER.set(opentelemetry::global::tracer("stem"));
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether spans are opened.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The spans of one attempt of a task on a worker: `stem.consume` under
/// the trace the task's `traceparent` names (a new trace without one) and
/// `stem.execute.<task>` under it, around the body.
pub(crate) struct Attempt {
    consume: Context,
    execute: Context,
    log: tracing::Span,
}

impl Attempt {
    /// Opens the spans of an attempt; `None` when tracing is off or the
    /// sampler drops the trace (then nothing else is built).
    pub(crate) fn open(
        spec: &TaskSpec,
        attempt: u32,
        worker: &str,
        namespace: &str,
    ) -> Option<Self> {
        if !enabled() {
            return None;
        }
        let tracer = TRACER.get()?;
        let parent = spec
            .headers
            .get(TRACEPARENT_HEADER)
            .and_then(|v| parent_from(v))
            .unwrap_or_default();
        let mut consume = tracer
            .span_builder("stem.consume")
            .with_kind(SpanKind::Consumer)
            .start_with_context(tracer, &parent);
        if !consume.is_recording() {
            return None;
        }
        consume.set_attributes([
            KeyValue::new("stem.task", spec.name.clone()),
            KeyValue::new("stem.task.id", spec.id.clone()),
            KeyValue::new("stem.task.attempt", i64::from(attempt)),
            KeyValue::new("stem.queue", spec.queue.clone()),
            KeyValue::new("stem.worker.id", worker.to_string()),
            KeyValue::new("stem.worker.namespace", namespace.to_string()),
        ]);
        let consume = parent.with_span(consume);
        let execute = tracer
            .span_builder(format!("stem.execute.{}", spec.name))
            .with_attributes([KeyValue::new("stem.task.attempt", i64::from(attempt))])
            .start_with_context(tracer, &consume);
        let sc = execute.span_context().clone();
        let log = tracing::info_span!(
            target: LOG_ONLY_TARGET,
            "stem.execute",
            trace_id = %format_args!("{:032x}", sc.trace_id()),
            span_id = %format_args!("{:016x}", sc.span_id()),
        );
        let execute = consume.with_span(execute);
        Some(Self {
            consume,
            execute,
            log,
        })
    }

    /// `body` run inside the execute span: its log lines name the span, and
    /// spans the body opens are its children.
    pub(crate) fn around<F: Future>(&self, body: F) -> impl Future<Output = F::Output> {
        body.instrument(self.log.clone())
            .with_context(self.execute.clone())
    }

    /// Ends the spans, the execute span with an error status when the
    /// attempt failed.
    pub(crate) fn finish(self, error: Option<&str>) {
        if let Some(message) = error {
            self.execute
                .span()
                .set_status(Status::error(message.to_string()));
        }
        self.execute.span().end();
        self.consume.span().end();
    }
}

/// Opens and ends the producer span `stem.enqueue` of the task `id`, a
/// child of the trace `given` names (a `traceparent` the caller put in the
/// task's headers) or else of the caller's current `tracing` span (such as
/// the enqueuer's HTTP request); returns the `traceparent` to carry in the
/// task's headers, `None` when tracing is off. An unsampled trace still
/// gets one (flags `00`), so the worker follows the producer's decision.
pub(crate) fn enqueue(
    name: &str,
    id: &str,
    queue: &str,
    priority: u8,
    given: Option<&str>,
) -> Option<String> {
    if !enabled() {
        return None;
    }
    let tracer = TRACER.get()?;
    let parent = given
        .and_then(parent_from)
        .unwrap_or_else(|| tracing::Span::current().context());
    let mut span = tracer
        .span_builder("stem.enqueue")
        .with_kind(SpanKind::Producer)
        .start_with_context(tracer, &parent);
    if span.is_recording() {
        span.set_attributes([
            KeyValue::new("stem.task", name.to_string()),
            KeyValue::new("stem.task.id", id.to_string()),
            KeyValue::new("stem.queue", queue.to_string()),
            KeyValue::new("stem.task.priority", i64::from(priority)),
        ]);
    }
    let sc = span.span_context().clone();
    span.end();
    sc.is_valid().then(|| {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The remote parent a `traceparent` value names; `None` when it is not a
/// valid version-00 value (ignored then, as the W3C rules ask).
pub fn parent_from(traceparent: &str) -> Option<Context> {
    span_context_of(traceparent).map(|sc| Context::new().with_remote_span_context(sc))
}

/// The trace id (32 hex digits) a `traceparent` value names, by the same
/// rules as [`parent_from`]: what a trace UI's `/trace/<id>` link takes.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    span_context_of(traceparent).map(|sc| format!("{:032x}", sc.trace_id()))
}

/// The valid span context a version-00 `traceparent` value carries, read
/// as the W3C Trace Context rules write it: `00-<32>-<16>-<2>`, every field
/// lowercase hex (checked byte by byte, so no sign, no uppercase, no
/// space), neither id all zeros. Of the flags only `sampled` (`0x01`) is
/// kept: a bit this version does not define is not passed on to the task
/// or the spans. (The OpenTelemetry SDK's `TraceContextPropagator` is not
/// used: it accepts a leading `+` in the ids and other versions.)
fn span_context_of(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00"
        || parts.next().is_some()
        || !lowercase_hex(trace, 32)
        || !lowercase_hex(span, 16)
        || !lowercase_hex(flags, 2)
    {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()? & TraceFlags::SAMPLED.to_u8();
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// Whether `field` is exactly `len` digits of lowercase hex.
fn lowercase_hex(field: &str, len: usize) -> bool {
    field.len() == len
        && field
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Makes `span` a child of the trace `traceparent` names (when valid).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(parent_from) {
        let _ = span.set_parent(cx);
    }
}

/// Records `span`'s `trace_id` and `span_id` fields (declared empty by the
/// span) from its trace context, so log lines inside it name them: the
/// JSON log format shows them under `span` and `spans`. Done for the spans
/// log lines are written in (the task body's, the HTTP request's), not for
/// every span: each recorded field is also an attribute to export.
pub fn stamp(span: &tracing::Span) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", format!("{:032x}", sc.trace_id()).as_str());
        span.record("span_id", format!("{:016x}", sc.span_id()).as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_values_parse_or_are_ignored() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = parent_from(ok).expect("valid");
        let sc = cx.span().span_context().clone();
        assert_eq!(
            format!("{:032x}", sc.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(format!("{:016x}", sc.span_id()), "00f067aa0ba902b7");
        assert!(sc.is_remote());
        assert_eq!(
            trace_id_of(ok).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parent_from(bad).is_none(), "{bad:?}");
            assert!(trace_id_of(bad).is_none(), "{bad:?}");
        }
    }

    /// What the W3C rules refuse and the integer parsers would take: a
    /// sign, uppercase, spaces or other versions; each value is refused
    /// whole (a new trace starts), not read as something close to it.
    #[test]
    fn traceparent_fields_are_lowercase_hex_only() {
        for bad in [
            // A leading `+` in every field (`from_str_radix` takes it).
            "00-+bf92f3577b34da6a3ce929d0e0e4736-+0f067aa0ba902b7-+1",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-+0f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
            "00--bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Uppercase, in each field.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473A-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bA-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            // Not hex, spaces inside, a missing or an extra field.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7- 1",
            "00-4bf92f3577b34da6a3ce929d0e0e47 6-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            // Versions other than 00, the invalid ff among them.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "+0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Both ids all zeros.
            "00-00000000000000000000000000000000-0000000000000000-01",
        ] {
            assert!(parent_from(bad).is_none(), "{bad:?}");
            assert!(trace_id_of(bad).is_none(), "{bad:?}");
        }
    }

    /// Only the `sampled` bit of the flags is kept: unknown bits are
    /// accepted and dropped, as W3C asks, so they never reach the task.
    #[test]
    fn traceparent_flags_keep_only_the_sampled_bit() {
        for (flags, kept) in [
            ("00", 0x00),
            ("01", 0x01),
            ("ff", 0x01),
            ("fe", 0x00),
            ("02", 0x00),
        ] {
            let value = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
            let cx = parent_from(&value).expect("valid");
            assert_eq!(
                cx.span().span_context().trace_flags().to_u8(),
                kept,
                "flags {flags}"
            );
        }
    }
}
