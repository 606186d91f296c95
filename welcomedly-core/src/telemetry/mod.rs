//! Telemetry: JSON logs with request and trace ids, OpenTelemetry traces, Prometheus metrics and
//! one fused HTTP layer that ties them to every request.
//!
//! - [`Telemetry`] installs, in one call, the `tracing` subscriber (env filter, JSON or pretty
//!   logs), OpenTelemetry spans through `tracing-opentelemetry` exported over OTLP/HTTP when an
//!   endpoint is configured (without one no span is built: the HTTP layer makes the trace ids
//!   itself), the W3C TraceContext propagator and a meter provider exported to Prometheus. Its
//!   [`TelemetryGuard`] flushes on drop.
//! - [`HttpTelemetryLayer`] gives each request an id ([`RequestId`], from a well-formed
//!   `x-request-id` or generated), a `request` span parented to the incoming `traceparent`, the
//!   `http.server.request.duration` histogram by method, route template and status, and the
//!   `x-request-id` / `x-instance-id` response headers.
//! - [`Metrics`] serves the Prometheus text exposition ([`Metrics::service`], or
//!   `Metrics::router` with the `axum` feature).
//!
//! A JSON log line written inside a request looks like (wrapped here):
//!
//! ```text
//! {"timestamp":"2026-11-25T10:00:00.000000Z","level":"INFO","target":"app",
//!  "message":"user loaded","user":42,"spans":[{"name":"request","method":"GET",
//!  "route":"/users/{id}","request_id":"5f0c…","instance_id":"api-1","trace_id":"4bf92f35…",
//!  "span_id":"00f067aa…"}]}
//! ```
//!
//! # Example
//!
//! In `main`, `Telemetry::from_config(&config).init()?` sets everything up; the layer and the
//! `/metrics` service can also be built without touching any global state, as here:
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use welcomedly_core::InstanceId;
//! use welcomedly_core::telemetry::{HttpTelemetryLayer, Metrics, RequestId, RouteLabel};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let metrics = Metrics::new()?;
//! let app = ServiceBuilder::new()
//!     .layer(HttpTelemetryLayer::new(InstanceId::new("api-1")).with_metrics(metrics.http()))
//!     .service(service_fn(|req: Request<()>| async move {
//!         let id = req.extensions().get::<RequestId>().map(RequestId::to_string);
//!         Ok::<_, Infallible>(Response::new(id.unwrap_or_default()))
//!     }));
//!
//! let mut request = Request::get("/users/7").header("x-request-id", "abc-123").body(())?;
//! request.extensions_mut().insert(RouteLabel::from_static("/users/{id}"));
//! let response = app.oneshot(request).await?;
//! assert_eq!(response.headers()["x-request-id"], "abc-123");
//! assert_eq!(response.headers()["x-instance-id"], "api-1");
//! assert_eq!(response.body(), "abc-123");
//! assert!(metrics.encode()?.contains(r#"http_route="/users/{id}""#));
//! # Ok(())
//! # }
//! ```

mod error;
mod exposition;
mod future;
mod json;
mod layer;
mod metrics;
mod request_id;
mod route;
mod service;
mod setup;
mod trace_ids;

pub use error::TelemetryError;
pub use exposition::MetricsService;
pub use future::ResponseFuture;
pub use layer::{HttpTelemetryLayer, INSTANCE_ID_HEADER};
pub use metrics::{
    DURATION_BUCKETS, HTTP_SERVER_REQUEST_DURATION, HttpMetrics, Metrics, MetricsBuilder,
};
pub use request_id::{MAX_REQUEST_ID_LEN, REQUEST_ID_HEADER, RequestId};
pub use route::{RouteLabel, UNMATCHED_ROUTE};
pub use service::HttpTelemetry;
pub use setup::{Telemetry, TelemetryGuard};

#[cfg(test)]
mod tests {
    use super::*;

    // The layer, its service, future and the metrics types cross threads in every server.
    #[allow(dead_code)]
    fn assert_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<HttpTelemetryLayer>();
        check::<
            HttpTelemetry<
                tower::util::BoxCloneSyncService<http::Request<()>, http::Response<()>, ()>,
            >,
        >();
        check::<ResponseFuture<std::future::Ready<Result<http::Response<()>, ()>>>>();
        check::<Metrics>();
        check::<MetricsService>();
        check::<HttpMetrics>();
        check::<TelemetryError>();
        check::<TelemetryGuard>();
    }
}
