//! [`HealthService`]: the three health endpoints as one framework-agnostic tower service.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use super::HealthRegistry;

/// Path of the full report.
pub const HEALTH_PATH: &str = "/health";
/// Path of the liveness probe.
pub const LIVE_PATH: &str = "/health/live";
/// Path of the readiness probe.
pub const READY_PATH: &str = "/health/ready";

/// The body of `/health/live`: the process answers, nothing else is asked.
const LIVE_BODY: &[u8] = br#"{"status":"ok"}"#;

/// A tower service answering `GET`/`HEAD` on [`HEALTH_PATH`], [`LIVE_PATH`] and [`READY_PATH`]
/// (404 on other paths, 405 on other methods). Responses are JSON with `Cache-Control: no-store`.
///
/// - `/health`: the [`HealthReport`](super::HealthReport) of every check; 200 when ready, else 503.
/// - `/health/live`: always 200 `{"status":"ok"}`; runs no check, so a dependency outage can never
///   make an orchestrator restart every instance.
/// - `/health/ready`: runs the readiness checks only (none while draining);
///   [`ReadinessReport`](super::ReadinessReport), 200 or 503.
///
/// ```
/// use std::time::Duration;
/// use http::{Request, StatusCode};
/// use http_body_util::Empty;
/// use tower::ServiceExt as _;
/// use welcomedly_core::health::{HealthRegistry, HealthService};
/// use welcomedly_core::InstanceId;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let registry = HealthRegistry::new(InstanceId::new("api-1"), "1.0.0", Duration::from_secs(2));
/// let service = HealthService::new(registry.clone());
///
/// registry.start_draining();
/// let req = Request::get("/health/ready").body(Empty::<bytes::Bytes>::new()).unwrap();
/// assert_eq!(service.clone().oneshot(req).await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
/// let req = Request::get("/health/live").body(Empty::<bytes::Bytes>::new()).unwrap();
/// assert_eq!(service.oneshot(req).await.unwrap().status(), StatusCode::OK);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HealthService {
    registry: HealthRegistry,
}

impl HealthService {
    /// Serve the health endpoints of `registry`.
    pub fn new(registry: HealthRegistry) -> Self {
        Self { registry }
    }
}

impl<B> tower::Service<Request<B>> for HealthService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let registry = self.registry.clone();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        ResponseFuture {
            inner: Box::pin(async move { respond(&registry, &method, &path).await }),
        }
    }
}

/// Response future of [`HealthService`].
pub struct ResponseFuture {
    // Boxed: health is not a hot path, and the report future is an opaque `async` block.
    inner: Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Full<Bytes>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx).map(Ok)
    }
}

async fn respond(registry: &HealthRegistry, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let probe = match path {
        HEALTH_PATH => Probe::Health,
        LIVE_PATH => Probe::Live,
        READY_PATH => Probe::Ready,
        _ => {
            return plain(
                StatusCode::NOT_FOUND,
                "not found: the health endpoints are /health, /health/live and /health/ready\n",
            );
        }
    };
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: health endpoints answer GET and HEAD\n",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match probe {
        Probe::Live => json(StatusCode::OK, Ok(Bytes::from_static(LIVE_BODY))),
        Probe::Health => {
            let report = registry.report().await;
            json(ready_status(report.is_ready()), to_json(&report))
        }
        Probe::Ready => {
            let report = registry.readiness().await;
            json(ready_status(report.is_ready()), to_json(&report))
        }
    }
}

enum Probe {
    Health,
    Live,
    Ready,
}

fn ready_status(ready: bool) -> StatusCode {
    if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn to_json(value: &impl Serialize) -> Result<Bytes, serde_json::Error> {
    serde_json::to_vec(value).map(Bytes::from)
}

fn json(status: StatusCode, body: Result<Bytes, serde_json::Error>) -> Response<Full<Bytes>> {
    match body {
        Ok(body) => with_headers(status, "application/json", body),
        // Unreachable with the report types (string keys, finite numbers), but an I/O-path
        // failure must be an answer, not a panic.
        Err(_) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "health report could not be serialized; this is a bug in welcomedly-core\n",
        ),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    with_headers(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
    )
}

fn with_headers(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // A cached health answer is a wrong health answer.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
