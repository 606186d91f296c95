//! The `/metrics` endpoint: a tower service (and, with the `axum` feature, a router) answering
//! with the Prometheus text exposition of a [`Metrics`].
//!
//! ```
//! use tower::ServiceExt;
//! use welcomedly_core::telemetry::Metrics;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let metrics = Metrics::new()?;
//! let response = metrics.service().oneshot(http::Request::new(())).await?;
//! assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4");
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tower::Service;

use super::metrics::Metrics;

/// Content type of the Prometheus text exposition format.
const TEXT_FORMAT: HeaderValue = HeaderValue::from_static("text/plain; version=0.0.4");

/// A tower service that answers every request with the Prometheus text exposition of its
/// [`Metrics`]; mount it at `/metrics`. Built by [`Metrics::service`].
#[derive(Clone, Debug)]
pub struct MetricsService {
    metrics: Metrics,
}

impl<B> Service<Request<B>> for MetricsService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        ready(Ok(render(&self.metrics)))
    }
}

fn render(metrics: &Metrics) -> Response<Full<Bytes>> {
    match metrics.encode() {
        Ok(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(CONTENT_TYPE, TEXT_FORMAT);
            response
        }
        Err(error) => {
            tracing::error!(%error, "could not encode the Prometheus exposition");
            let mut response = Response::new(Full::new(Bytes::from_static(
                b"metrics could not be encoded; see the server log\n",
            )));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        }
    }
}

impl Metrics {
    /// The `/metrics` endpoint as a tower service.
    pub fn service(&self) -> MetricsService {
        MetricsService {
            metrics: self.clone(),
        }
    }

    /// An axum router serving `GET /metrics`, to merge into the application's router.
    ///
    /// ```
    /// use axum::Router;
    /// use welcomedly_core::telemetry::Metrics;
    ///
    /// let metrics = Metrics::new().unwrap();
    /// let app: Router = Router::new().merge(metrics.router());
    /// ```
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn router<S>(&self) -> axum::Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        axum::Router::new().route_service("/metrics", axum::routing::get_service(self.service()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn serves_the_text_exposition() {
        let metrics = Metrics::new().unwrap();
        let response = metrics.service().oneshot(Request::new(())).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "text/plain; version=0.0.4"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = std::str::from_utf8(&body).unwrap();
        assert!(
            text.contains("# TYPE process_uptime_seconds gauge"),
            "{text}"
        );
    }
}
