//! The "http stack": a bare service beside the same service behind welcomedly-core's fused
//! telemetry layer (request id + request span + metrics + instance id) and beside tower-http's
//! request-id and trace layers (the hand-rolled glue it replaces).
//!
//! Every variant runs under three subscribers:
//! - `[fmt json]`: the global default, tracing-subscriber's stock `fmt::layer().json()` with an
//!   "info" filter, the usual hand-rolled setup;
//! - `[deployed, OTLP]`: what `Telemetry::init` installs with an OTLP endpoint (our JSON format,
//!   the OpenTelemetry layer, "info" filter), its tracer provider without the exporter so that
//!   nothing leaves the process;
//! - `[deployed, no OTLP]`: what `Telemetry::init` installs without one (no OpenTelemetry layer;
//!   the HTTP layer makes the trace ids).
//!
//! The deployed ones are scoped to the timed block with `tracing::dispatcher::with_default`
//! because a global default can be set only once.
//!
//! After the criterion group, the same variants run interleaved in short slices within one
//! process (see `crate::interleaved`), one table per subscriber: steadier ratios on a noisy box.
//!
//! The `incoming ids` variants send `x-request-id` and a W3C `traceparent`, as requests behind a
//! gateway do; the others send neither, so the layer generates the id and starts a trace.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, Throughput};
use http::{HeaderName, Request};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower::{Service, ServiceExt};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultMakeSpan, TraceLayer};
use tracing::instrument::WithSubscriber;
use tracing::{Dispatch, Level};
use welcomedly_core::InstanceId;
use welcomedly_core::telemetry::{HttpTelemetryLayer, Metrics, Telemetry};

fn router() -> Router {
    Router::new().route("/api/agents/{id}", get(|| async { "agent" }))
}

fn request(incoming_ids: bool) -> Request<Body> {
    let builder = Request::get("/api/agents/7");
    let builder = if incoming_ids {
        builder
            .header("x-request-id", "7f2c1a9e-3b4d-4e5f-8a6b-9c0d1e2f3a4b")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
    } else {
        builder
    };
    builder.body(Body::empty()).unwrap()
}

async fn drive(svc: &mut Router, iters: u64, incoming_ids: bool) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let req = request(incoming_ids);
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

/// A subscriber like a hand-rolled service's: INFO and above, stock JSON to a sink, so spans are
/// really recorded.
fn install_fmt_json_subscriber() {
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

/// The variants: (name, app, whether the request carries `x-request-id` and `traceparent`).
fn variants(metrics: &Metrics) -> Vec<(&'static str, Router, bool)> {
    let id = InstanceId::new("bench-1");
    let welcomedly = || HttpTelemetryLayer::new(id.clone()).with_metrics(metrics.http());
    let x_request_id = HeaderName::from_static("x-request-id");
    let tower_http = || {
        router()
            .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(DefaultMakeSpan::new().level(Level::INFO)),
            )
            .layer(SetRequestIdLayer::new(
                x_request_id.clone(),
                MakeRequestUuid,
            ))
    };
    vec![
        ("bare", router(), false),
        (
            "welcomedly telemetry (id + span + metrics + instance id)",
            router().layer(welcomedly()),
            false,
        ),
        (
            "welcomedly telemetry without metrics (id + span + instance id)",
            router().layer(HttpTelemetryLayer::new(id.clone())),
            false,
        ),
        (
            "tower-http request-id + trace (INFO span)",
            tower_http(),
            false,
        ),
        (
            "welcomedly telemetry, incoming ids",
            router().layer(welcomedly()),
            true,
        ),
        (
            "tower-http request-id + trace, incoming ids",
            tower_http(),
            true,
        ),
    ]
}

/// The subscriber `Telemetry::init` installs, logging to a sink: with an OTLP endpoint (spans to
/// `provider`, which has no exporter) or without.
fn deployed_dispatch(provider: Option<&SdkTracerProvider>) -> Dispatch {
    let telemetry = Telemetry::new("bench").instance_id(InstanceId::new("bench-1"));
    match provider {
        Some(provider) => telemetry.dispatch(std::io::sink, provider),
        None => telemetry.dispatch_without_export(std::io::sink),
    }
    .unwrap()
}

/// With `OVERHEAD_CALLGRIND=<variant index>` (see [`variants`]) the bench only drives that
/// variant under the `[deployed, OTLP]` subscriber (`[deployed, no OTLP]` with
/// `OVERHEAD_CALLGRIND_NO_OTLP=1`), [`CALLGRIND_REQUESTS`] times inside [`callgrind_requests`],
/// then exits: for counting instructions per request, repeatably on a noisy box:
///
/// ```text
/// OVERHEAD_CALLGRIND=1 valgrind --tool=callgrind --toggle-collect='*callgrind_requests*' \
///     target/release/deps/overhead-<hash> --bench
/// ```
///
/// Instructions per request = the total `Ir` / `CALLGRIND_REQUESTS`.
fn callgrind_mode() {
    let Ok(index) = std::env::var("OVERHEAD_CALLGRIND") else {
        return;
    };
    let index: usize = index
        .parse()
        .expect("OVERHEAD_CALLGRIND takes a variant index");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder().build();
    let otlp = std::env::var_os("OVERHEAD_CALLGRIND_NO_OTLP").is_none();
    let dispatch = deployed_dispatch(otlp.then_some(&provider));
    let metrics = Metrics::new().unwrap();
    let (name, app, incoming_ids) = variants(&metrics).swap_remove(index);
    let mut svc = app.with_state::<()>(());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        // Warm up: callsite interest, metric series, thread-locals, allocator pools.
        rt.block_on(drive(&mut svc, 1000, incoming_ids));
        callgrind_requests(&rt, &mut svc, incoming_ids);
    });
    let subscriber = if otlp { "OTLP" } else { "no OTLP" };
    eprintln!("callgrind: {CALLGRIND_REQUESTS} requests of {name:?} [deployed, {subscriber}]");
    std::process::exit(0);
}

const CALLGRIND_REQUESTS: u64 = 2000;

#[inline(never)]
fn callgrind_requests(rt: &tokio::runtime::Runtime, svc: &mut Router, incoming_ids: bool) {
    black_box(rt.block_on(drive(svc, CALLGRIND_REQUESTS, incoming_ids)));
}

pub(crate) fn bench(c: &mut Criterion) {
    callgrind_mode();
    install_fmt_json_subscriber();
    // As `Telemetry::init` does; only the `incoming ids` variants carry a `traceparent`.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder().build();
    let subscribers: [(&str, Option<Dispatch>); 3] = [
        ("fmt json", None),
        ("deployed, OTLP", Some(deployed_dispatch(Some(&provider)))),
        ("deployed, no OTLP", Some(deployed_dispatch(None))),
    ];

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = Metrics::new().unwrap();
    let mut g = c.benchmark_group("http_stack");
    g.throughput(Throughput::Elements(1));
    for (subscriber, dispatch) in &subscribers {
        for (name, app, incoming_ids) in variants(&metrics) {
            let svc = app.with_state::<()>(());
            g.bench_function(format!("{name} [{subscriber}]"), |b| {
                b.iter_custom(|iters| {
                    let mut svc = svc.clone();
                    let mut run = || rt.block_on(drive(&mut svc, iters, incoming_ids));
                    match dispatch {
                        Some(dispatch) => tracing::dispatcher::with_default(dispatch, run),
                        None => run(),
                    }
                })
            });
        }
    }
    g.finish();

    for (subscriber, dispatch) in &subscribers {
        let table: Vec<crate::Variant<'_>> = variants(&metrics)
            .into_iter()
            .map(|(name, app, incoming_ids)| -> crate::Variant<'_> {
                let svc = app.with_state::<()>(());
                let dispatch = dispatch.clone();
                let run = move |iters| {
                    let mut svc = svc.clone();
                    let drive = async move { drive(&mut svc, iters, incoming_ids).await };
                    match &dispatch {
                        Some(dispatch) => Box::pin(drive.with_subscriber(dispatch.clone()))
                            as Pin<Box<dyn Future<Output = Duration>>>,
                        None => Box::pin(drive),
                    }
                };
                (name, Box::new(run))
            })
            .collect();
        crate::interleaved(&format!("http_stack [{subscriber}]"), &rt, &table, 200);
    }
}
