//! Trace and span ids the HTTP layer makes itself when no span is exported.
//!
//! Without an OTLP endpoint, the OpenTelemetry layer would build an OpenTelemetry span for every
//! `tracing` span (attributes copied into `String`s, a start and an end time, the span data
//! assembled at close) only to drop it: no processor takes it. That was about a third of the
//! HTTP layer's cost per request, and as much again for every other span. So
//! [`Telemetry`](super::Telemetry) then leaves that layer out and adds [`LocalTraceIds`], a
//! marker telling [`HttpTelemetry`](super::HttpTelemetry) to make the request's ids itself, as
//! the SDK would have: the trace id and flags of the incoming `traceparent` (read with the
//! global propagator, so baggage and trace state come along), or a random trace id, sampled,
//! for a request without one; a random span id. They are span fields from the start (no
//! `Span::record`), and the request's OpenTelemetry context (`Context::current()` in handlers,
//! what an HTTP client injects into outgoing requests) carries them while the request is
//! polled.

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing::Subscriber;
use tracing_subscriber::Layer;

use super::service::{hex, incoming_parent};

/// Tells the HTTP layer, from the subscriber, whether to make the trace ids itself (`true`:
/// there is no OpenTelemetry layer). The outermost layer in both cases, so that finding it costs
/// one type comparison rather than a walk through every layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalTraceIds(pub(crate) bool);

impl<S: Subscriber> Layer<S> for LocalTraceIds {}

/// Whether the current subscriber asks the HTTP layer for its own trace ids.
pub(crate) fn wanted() -> bool {
    tracing::dispatcher::get_default(|dispatch| {
        dispatch
            .downcast_ref::<LocalTraceIds>()
            .is_some_and(|local| local.0)
    })
}

/// The trace of one request, when one is active.
pub(crate) enum Trace {
    /// The context of the OpenTelemetry span backing the request span.
    Exported(Context),
    /// A context carrying ids made here (see the module docs); nothing records or exports it.
    Local(Context),
}

impl Trace {
    /// Makes a local context current until the guard drops. The OpenTelemetry layer does that
    /// itself for an exported span, whenever the request span is entered.
    pub(crate) fn attach_local(&self) -> Option<opentelemetry::ContextGuard> {
        match self {
            Self::Local(context) => Some(context.clone().attach()),
            Self::Exported(_) => None,
        }
    }
}

/// The ids of a request traced locally, and their hex text for the span fields.
pub(crate) struct LocalTrace {
    pub(crate) context: Context,
    trace_hex: [u8; 32],
    span_hex: [u8; 16],
}

impl LocalTrace {
    pub(crate) fn new(headers: &HeaderMap) -> Self {
        let generator = RandomIdGenerator::default();
        let parent = incoming_parent(headers).unwrap_or_default();
        let parent_span = parent.span().span_context().clone();
        let span_context = if parent_span.is_valid() {
            SpanContext::new(
                parent_span.trace_id(),
                generator.new_span_id(),
                parent_span.trace_flags(),
                false,
                parent_span.trace_state().clone(),
            )
        } else {
            // As the SDK's default sampler decides for a root span.
            SpanContext::new(
                generator.new_trace_id(),
                generator.new_span_id(),
                TraceFlags::SAMPLED,
                false,
                Default::default(),
            )
        };
        let mut trace_hex = [0; 32];
        let mut span_hex = [0; 16];
        hex(&span_context.trace_id().to_bytes(), &mut trace_hex);
        hex(&span_context.span_id().to_bytes(), &mut span_hex);
        Self {
            context: parent.with_remote_span_context(span_context),
            trace_hex,
            span_hex,
        }
    }

    pub(crate) fn trace_id(&self) -> &str {
        // Always valid: `hex` writes ASCII digits only.
        std::str::from_utf8(&self.trace_hex).unwrap_or_default()
    }

    pub(crate) fn span_id(&self) -> &str {
        std::str::from_utf8(&self.span_hex).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceId;

    #[test]
    fn a_request_without_parent_starts_a_sampled_trace() {
        let a = LocalTrace::new(&HeaderMap::new());
        let b = LocalTrace::new(&HeaderMap::new());
        let context = a.context.span().span_context().clone();
        assert!(context.is_valid() && context.is_sampled());
        assert_eq!(a.trace_id(), context.trace_id().to_string());
        assert_eq!(a.span_id(), context.span_id().to_string());
        assert_ne!(a.trace_id(), b.trace_id());
        assert_ne!(a.span_id(), b.span_id());
    }

    #[test]
    fn an_incoming_parent_gives_its_trace_id_and_flags() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            ),
        );
        let trace = LocalTrace::new(&headers);
        let context = trace.context.span().span_context().clone();
        assert_eq!(
            context.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(trace.span_id(), "00f067aa0ba902b7", "a span of its own");
        assert!(!context.is_sampled(), "the parent's decision");
    }
}
