//! The "http stack": a bare service beside the same service behind welcomedly-core's fused
//! telemetry layer (request id + request span + metrics + instance id) and beside tower-http's
//! request-id and trace layers (the hand-rolled glue it replaces).

use std::hint::black_box;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, Throughput};
use http::{HeaderName, Request};
use tower::{Service, ServiceExt};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultMakeSpan, TraceLayer};
use tracing::Level;
use welcomedly_core::InstanceId;
use welcomedly_core::telemetry::{HttpTelemetryLayer, Metrics};

fn router() -> Router {
    Router::new().route("/api/agents/{id}", get(|| async { "agent" }))
}

async fn drive(svc: &mut Router, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let req = Request::get("/api/agents/7").body(Body::empty()).unwrap();
        let res = ServiceExt::<Request<Body>>::ready(svc)
            .await
            .unwrap()
            .call(req)
            .await
            .unwrap();
        black_box(res);
    }
    start.elapsed()
}

/// A subscriber like a service's: INFO and above, JSON to a sink, so spans are really recorded.
fn install_subscriber() {
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::sink),
        );
    let _ = tracing::subscriber::set_global_default(subscriber);
}

pub(crate) fn bench(c: &mut Criterion) {
    install_subscriber();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = Metrics::new().unwrap();
    let id = InstanceId::new("bench-1");
    let x_request_id = HeaderName::from_static("x-request-id");
    let variants: Vec<(&str, Router)> = vec![
        ("bare", router()),
        (
            "welcomedly telemetry (id + span + metrics + instance id)",
            router().layer(HttpTelemetryLayer::new(id.clone()).with_metrics(metrics.http())),
        ),
        (
            "welcomedly telemetry without metrics (id + span + instance id)",
            router().layer(HttpTelemetryLayer::new(id)),
        ),
        (
            "tower-http request-id + trace (INFO span)",
            router()
                .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(DefaultMakeSpan::new().level(Level::INFO)),
                )
                .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid)),
        ),
    ];
    let mut g = c.benchmark_group("http_stack");
    g.throughput(Throughput::Elements(1));
    for (name, app) in variants {
        let svc = app.with_state::<()>(());
        g.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let mut svc = svc.clone();
                async move { drive(&mut svc, iters).await }
            })
        });
    }
    g.finish();
}
