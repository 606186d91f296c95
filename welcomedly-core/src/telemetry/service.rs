//! [`HttpTelemetry`], the service built by [`HttpTelemetryLayer`](super::HttpTelemetryLayer).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::HeaderName;
use http::{HeaderMap, Request, Response};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt;
use tower::Service;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::future::{ResponseFuture, State, TARGET};
use super::json;
use super::layer::Shared;
use super::request_id::{REQUEST_ID_HEADER, RequestId};
use super::route::Route;
use super::trace_ids::{self, LocalTrace, Trace};

/// Adds request id, request span, trace context, metrics and the `x-request-id` /
/// `x-instance-id` headers to an HTTP service; see
/// [`HttpTelemetryLayer`](super::HttpTelemetryLayer).
#[derive(Clone, Debug)]
pub struct HttpTelemetry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> HttpTelemetry<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpTelemetry<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let start = Instant::now();

        let request_id = match req
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(RequestId::accept)
        {
            Some(id) => id,
            None => {
                let id = RequestId::generate();
                // Replace what the client sent, so handlers and downstream calls that read the
                // header see the same id as the logs and the response.
                req.headers_mut()
                    .insert(REQUEST_ID_HEADER, id.header_value().clone());
                id
            }
        };
        let route = Route::of(req.extensions());
        // The request span is at INFO: where no subscriber enables INFO (`RUST_LOG=warn`, the
        // access log off) the span is disabled and a local trace would be thrown away below, so
        // its ids (random numbers, hex, a context) are not made at all. The same check the span
        // macro starts with, so it never disagrees with `span.is_disabled()` the other way.
        let local = (tracing::level_enabled!(tracing::Level::INFO) && trace_ids::wanted())
            .then(|| LocalTrace::new(req.headers()));

        let span = tracing::info_span!(
            target: TARGET,
            "request",
            method = req.method().as_str(),
            route = route.as_str(),
            request_id = request_id.as_str(),
            instance_id = self.shared.instance_id.as_str(),
            status = Empty,
            latency_ms = Empty,
            // Known now when traced locally, recorded by `link_trace` otherwise.
            trace_id = local.as_ref().map(LocalTrace::trace_id),
            span_id = local.as_ref().map(LocalTrace::span_id),
            otel.kind = "server",
        );
        let trace = match local {
            _ if span.is_disabled() => None,
            Some(local) => Some(Trace::Local(local.context)),
            None => link_trace(&span, req.headers()).map(Trace::Exported),
        };

        let method = req.method().clone();
        let header = request_id.header_value().clone();
        req.extensions_mut().insert(request_id);

        let future = {
            let _entered = span.enter();
            let _context = trace.as_ref().and_then(Trace::attach_local);
            self.inner.call(req)
        };
        let state = State {
            start,
            request_id: header,
            route,
            method,
            trace,
            shared: Arc::clone(&self.shared),
        };
        ResponseFuture::new(future, span, state)
    }
}

/// Makes the incoming W3C trace context (read with the global propagator) the parent of `span`
/// and records the resulting `trace_id` / `span_id` on it, so every log line of the request can
/// be joined to its trace. Returns the OpenTelemetry context of the span when a trace is active;
/// without the OpenTelemetry layer in the subscriber there is none and this records nothing.
fn link_trace(span: &Span, headers: &HeaderMap) -> Option<opentelemetry::Context> {
    if let Some(parent) = incoming_parent(headers)
        && parent.span().span_context().is_valid()
        && span.set_parent(parent).is_err()
    {
        // No OpenTelemetry layer (or the span is filtered out): there is no trace to record.
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if !span_context.is_valid() {
        return None;
    }
    let mut trace_hex = [0; 32];
    let mut span_hex = [0; 16];
    let trace_id = hex(&span_context.trace_id().to_bytes(), &mut trace_hex);
    let span_id = hex(&span_context.span_id().to_bytes(), &mut span_hex);
    if !json::append_trace_ids(span, trace_id, span_id) {
        // Another subscriber: one `record_all` of two strings, so every layer looks the span up
        // once, and hex written here spares each layer a `Display` round trip through `fmt`.
        tracing::record_all!(span, trace_id = trace_id, span_id = span_id);
    }
    Some(context)
}

/// The context the global propagator reads from `headers`, when they have a `traceparent`.
pub(crate) fn incoming_parent(headers: &HeaderMap) -> Option<opentelemetry::Context> {
    // Without a `traceparent` there is no parent to extract: skipping the global propagator
    // spares every such request a lock shared by all cores and a context clone.
    headers.contains_key(TRACEPARENT).then(|| {
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(headers))
        })
    })
}

/// The W3C TraceContext header that carries the parent span.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The W3C TraceContext header that carries vendor-specific trace state.
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Lower-case hex of `bytes` into `out` (twice as long), as W3C TraceContext writes ids.
pub(crate) fn hex<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    fn digit(nibble: u8) -> u8 {
        if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        }
    }
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        if let [high, low] = pair {
            *high = digit(byte >> 4);
            *low = digit(byte & 0x0f);
        }
    }
    // Always valid: only ASCII digits were written.
    std::str::from_utf8(out).unwrap_or_default()
}

/// Reads propagation headers from an [`http::HeaderMap`].
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // A `&str` key is parsed into a header name (validated and lower-cased byte by byte) on
        // every lookup; the W3C propagator asks for these two on every request that has a parent.
        let value = match key {
            "traceparent" => self.0.get(TRACEPARENT),
            "tracestate" => self.0.get(TRACESTATE),
            _ => self.0.get(key),
        };
        value.and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceId};

    #[test]
    fn the_extractor_finds_headers_by_any_name() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, http::HeaderValue::from_static("00-a-b-01"));
        headers.insert(TRACESTATE, http::HeaderValue::from_static("k=v"));
        headers.insert("baggage", http::HeaderValue::from_static("b=1"));
        let extractor = HeaderExtractor(&headers);
        assert_eq!(extractor.get("traceparent"), Some("00-a-b-01"));
        assert_eq!(extractor.get("tracestate"), Some("k=v"));
        assert_eq!(extractor.get("baggage"), Some("b=1"));
        assert_eq!(extractor.get("Baggage"), Some("b=1"));
        assert_eq!(extractor.get("absent"), None);
    }

    #[test]
    fn ids_are_written_as_w3c_lower_case_hex() {
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let mut buf = [0; 32];
        assert_eq!(
            hex(&trace_id.to_bytes(), &mut buf),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let span_id = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        let mut buf = [0; 16];
        assert_eq!(hex(&span_id.to_bytes(), &mut buf), span_id.to_string());
    }
}
