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
//! Spans are only opened once a process turned tracing on with [`enable`]
//! (the services do when `STEM_OTLP_ENDPOINT` is set): otherwise nothing
//! here runs on the task path.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header a task's trace context travels in.
pub const TRACEPARENT_HEADER: &str = "traceparent";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Opens spans from now on (the process exports them).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether spans are opened.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `span`'s W3C trace context, `00-<trace id>-<span id>-<flags>`, when the
/// span belongs to a trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
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
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00"
        || parts.next().is_some()
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    sc.is_valid()
        .then(|| Context::new().with_remote_span_context(sc))
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
        }
    }
}
