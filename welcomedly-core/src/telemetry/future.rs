//! [`ResponseFuture`], the future of [`HttpTelemetry`](super::HttpTelemetry).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{HeaderValue, Method, Response, StatusCode};
use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt;
use pin_project_lite::pin_project;
use tracing::{Level, Span};

use super::layer::{INSTANCE_ID_HEADER, Shared};
use super::request_id::REQUEST_ID_HEADER;
use super::route::Route;
use super::trace_ids::Trace;

pin_project! {
    /// Response future of [`HttpTelemetry`](super::HttpTelemetry): polls the inner future inside
    /// the request span, then records status, latency and the metric and sets the
    /// `x-request-id` / `x-instance-id` headers.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        // Taken when the inner future completes.
        state: Option<State>,
    }
}

/// What the future needs at completion, gathered by the service at call time.
pub(crate) struct State {
    pub(crate) start: Instant,
    pub(crate) request_id: HeaderValue,
    pub(crate) route: Route,
    pub(crate) method: Method,
    /// The trace of the request, when one is active (see `poll`).
    pub(crate) trace: Option<Trace>,
    pub(crate) shared: Arc<Shared>,
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, span: Span, state: State) -> Self {
        Self {
            inner,
            span,
            state: Some(state),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let _context = this
            .state
            .as_ref()
            .and_then(|state| state.trace.as_ref())
            .and_then(Trace::attach_local);
        let result = ready!(this.inner.poll(cx));
        let Some(state) = this.state.take() else {
            // Polled again after completion: nothing left to record.
            return Poll::Ready(result);
        };
        let elapsed = state.start.elapsed();
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        let status = result.as_ref().ok().map(Response::status);
        // On the span they serve the exported trace (as attributes) and the response event's
        // line, which lists the span's fields. Without a response event no log line is written
        // inside the span after this point, so they go straight to the OpenTelemetry span: no
        // subscriber dispatch, no filter, no log formatter. Skipping them when no trace is
        // active spares a log formatter that re-serialises a span's fields on every record
        // (tracing-subscriber's JSON) a pass per request.
        if let Some(trace) = &state.trace {
            let status = status.map(|status| i64::from(status.as_u16()));
            if state.shared.response_level.is_some() {
                match status {
                    Some(status) => {
                        tracing::record_all!(this.span, latency_ms = latency_ms, status = status);
                    }
                    None => {
                        this.span.record("latency_ms", latency_ms);
                    }
                }
            } else if let Trace::Exported(trace) = trace {
                let latency = KeyValue::new("latency_ms", latency_ms);
                match status {
                    Some(status) => trace
                        .span()
                        .set_attributes([latency, KeyValue::new("status", status)]),
                    None => trace.span().set_attribute(latency),
                }
            }
        }
        if let Some(level) = state.shared.response_level {
            response_event(level, status, latency_ms);
        }
        if let Some(metrics) = &state.shared.metrics {
            metrics.record(&state.method, &state.route, status, elapsed);
        }
        Poll::Ready(result.map(|mut response| {
            let headers = response.headers_mut();
            headers.insert(REQUEST_ID_HEADER, state.request_id);
            headers.insert(INSTANCE_ID_HEADER, state.shared.instance_header.clone());
            response
        }))
    }
}

/// A stable target for filters (`RUST_LOG=welcomedly_core::telemetry=debug`), whatever file the
/// code lives in.
pub(crate) const TARGET: &str = "welcomedly_core::telemetry";

/// The optional access-log event; `tracing` needs the level at compile time, hence the ladder.
fn response_event(level: Level, status: Option<StatusCode>, latency_ms: f64) {
    let status = status.map(|s| s.as_u16());
    if level == Level::ERROR {
        tracing::error!(target: TARGET, status, latency_ms, "request completed");
    } else if level == Level::WARN {
        tracing::warn!(target: TARGET, status, latency_ms, "request completed");
    } else if level == Level::INFO {
        tracing::info!(target: TARGET, status, latency_ms, "request completed");
    } else if level == Level::DEBUG {
        tracing::debug!(target: TARGET, status, latency_ms, "request completed");
    } else {
        tracing::trace!(target: TARGET, status, latency_ms, "request completed");
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}
