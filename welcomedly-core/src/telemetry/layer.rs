//! [`HttpTelemetryLayer`]: request id, request span, trace-context extraction, metrics and the
//! `x-request-id` / `x-instance-id` response headers, fused into one layer.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use http::header::HeaderName;
use tower::Layer;
use tracing::Level;

use super::metrics::HttpMetrics;
use super::service::HttpTelemetry;
use crate::InstanceId;

/// The `x-instance-id` response header: which instance answered.
pub const INSTANCE_ID_HEADER: HeaderName = HeaderName::from_static("x-instance-id");

/// The per-request telemetry of an HTTP service, in one layer (one future, one span, no boxing):
///
/// - takes `x-request-id` when well-formed (1 to 128 visible ASCII characters), otherwise
///   generates one (UUID v4) and sets it on the request; either way puts a
///   [`RequestId`](super::RequestId) in the request extensions;
/// - opens the `request` span (`method`, `route`, `request_id`, `instance_id`, then `trace_id`,
///   `span_id`, `status`, `latency_ms`) whose parent is the W3C `traceparent` of the request
///   (read with the global text-map propagator when the request has that header), so every
///   log line written while serving the
///   request carries its ids. The last four are recorded when a trace is active (the
///   subscriber is one [`Telemetry`](super::Telemetry) sets up: with the OpenTelemetry layer
///   when spans are exported, else asking this layer to make the ids itself):
///   `trace_id` and `span_id` as span fields; `status` and `latency_ms` as attributes of the
///   exported OpenTelemetry span, and also as span fields when the
///   [response event](Self::with_response_event) is on (no other line is written inside the
///   span after the response). The response event carries status and latency in any case;
/// - records `http.server.request.duration` when [metrics](Self::with_metrics) are given;
/// - sets `x-request-id` and `x-instance-id` on every response.
///
/// The route is axum's `MatchedPath` (with the `axum` feature, when the layer is added with
/// `Router::layer`, which runs after routing), else a [`RouteLabel`](super::RouteLabel)
/// extension, else `"unmatched"`. With axum, call `Router::layer` after every `route`, `merge`,
/// `nest` and `fallback`: a router merged afterwards brings its own default fallback without the
/// layer, and its 404s would lack the headers. Latency is measured until the response head is
/// ready.
#[derive(Clone, Debug)]
#[must_use]
pub struct HttpTelemetryLayer {
    shared: Arc<Shared>,
}

/// What every request of every clone of the service reads; one `Arc` so that cloning the
/// service (axum clones it per request) costs one reference count.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) instance_id: InstanceId,
    pub(crate) instance_header: HeaderValue,
    pub(crate) metrics: Option<HttpMetrics>,
    pub(crate) response_level: Option<Level>,
}

impl HttpTelemetryLayer {
    /// A layer stamping `instance_id` on every span and response, recording no metrics and
    /// logging no event per response.
    pub fn new(instance_id: InstanceId) -> Self {
        let instance_header = instance_header(&instance_id);
        Self {
            shared: Arc::new(Shared {
                instance_id,
                instance_header,
                metrics: None,
                response_level: None,
            }),
        }
    }

    /// Records `http.server.request.duration` into `metrics` (see
    /// [`Metrics::http`](super::Metrics::http)).
    pub fn with_metrics(self, metrics: HttpMetrics) -> Self {
        self.update(|shared| shared.metrics = Some(metrics))
    }

    /// Logs one `"request completed"` event per response at `level`, with `status` and
    /// `latency_ms` (an access log). Default: none, the span alone.
    pub fn with_response_event(self, level: Level) -> Self {
        self.update(|shared| shared.response_level = Some(level))
    }

    fn update(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.shared);
        f(&mut shared);
        Self {
            shared: Arc::new(shared),
        }
    }
}

impl Clone for Shared {
    fn clone(&self) -> Self {
        Self {
            instance_id: self.instance_id.clone(),
            instance_header: self.instance_header.clone(),
            metrics: self.metrics.clone(),
            response_level: self.response_level,
        }
    }
}

/// The instance id as a header value, built once. Bytes a header cannot hold (an operator may
/// configure anything) become `_`, so the header is always present.
fn instance_header(id: &InstanceId) -> HeaderValue {
    let sanitized: Vec<u8> = id
        .as_str()
        .bytes()
        .map(|b| if (0x20..0x7F).contains(&b) { b } else { b'_' })
        .collect();
    HeaderValue::from_maybe_shared(Bytes::from(sanitized))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

impl<S> Layer<S> for HttpTelemetryLayer {
    type Service = HttpTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpTelemetry::new(inner, Arc::clone(&self.shared))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_instance_ids_still_make_a_header() {
        let header = instance_header(&InstanceId::new("pod\n1é"));
        assert_eq!(header, "pod_1__");
        assert_eq!(instance_header(&InstanceId::new("api-1")), "api-1");
    }

    #[test]
    fn builder_keeps_settings() {
        let layer = HttpTelemetryLayer::new(InstanceId::new("a")).with_response_event(Level::INFO);
        assert_eq!(layer.shared.response_level, Some(Level::INFO));
        assert!(layer.shared.metrics.is_none());
    }
}
