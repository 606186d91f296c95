//! Integration tests of `welcomedly_core::telemetry`: request ids, instance header, JSON log
//! lines joined to traces, Prometheus metrics by route template, and global setup.
//!
//! Run with `cargo test -p welcomedly-core --all-features --test telemetry`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use http::{HeaderValue, Request, Response, StatusCode};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use serde_json::Value;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tracing::Level;
use welcomedly_core::InstanceId;
use welcomedly_core::config::LogFormat;
use welcomedly_core::telemetry::{
    HttpTelemetryLayer, Metrics, REQUEST_ID_HEADER, RequestId, RouteLabel, Telemetry,
};

/// A service answering 200 with the request id it saw in the extensions and in the header,
/// or 500 for `/fail`; it logs one event inside the request span.
fn app(
    layer: HttpTelemetryLayer,
) -> impl Service<Request<()>, Response = Response<String>, Error = Infallible> + Clone {
    ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|req: Request<()>| async move {
            tracing::info!(user = 42, "user loaded");
            let extension = req.extensions().get::<RequestId>().unwrap().to_string();
            let header = req.headers()[REQUEST_ID_HEADER]
                .to_str()
                .unwrap()
                .to_owned();
            assert_eq!(extension, header, "handlers see one id");
            let mut response = Response::new(extension);
            if req.uri().path() == "/fail" {
                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            Ok::<_, Infallible>(response)
        }))
}

fn layer() -> HttpTelemetryLayer {
    HttpTelemetryLayer::new(InstanceId::new("api-7"))
}

async fn send(
    service: impl Service<Request<()>, Response = Response<String>, Error = Infallible>,
    request_id: Option<&[u8]>,
) -> Response<String> {
    let mut request = Request::get("/users/1").body(()).unwrap();
    if let Some(id) = request_id {
        request
            .headers_mut()
            .insert(REQUEST_ID_HEADER, HeaderValue::from_bytes(id).unwrap());
    }
    service.oneshot(request).await.unwrap()
}

fn response_id(response: &Response<String>) -> &str {
    response.headers()[REQUEST_ID_HEADER].to_str().unwrap()
}

#[tokio::test]
async fn a_well_formed_request_id_is_kept_and_echoed() {
    let longest = "~".repeat(128);
    for id in ["abc-123", "!", longest.as_str()] {
        let response = send(app(layer()), Some(id.as_bytes())).await;
        assert_eq!(response_id(&response), id);
        assert_eq!(response.body(), id, "the handler saw the client's id");
    }
}

#[tokio::test]
async fn a_malformed_request_id_is_replaced_and_the_new_one_echoed() {
    let too_long = "a".repeat(129);
    let cases: [&[u8]; 5] = [too_long.as_bytes(), b"a b", b"a\tb", b"", b"caf\xc3\xa9"];
    for id in cases {
        let response = send(app(layer()), Some(id)).await;
        let echoed = response_id(&response);
        assert_ne!(echoed.as_bytes(), id);
        assert_eq!(echoed.len(), 36, "a UUID: {echoed}");
        assert_eq!(response.body(), echoed, "the handler saw the replacement");
    }
    let a = send(app(layer()), None).await;
    let b = send(app(layer()), None).await;
    assert_ne!(response_id(&a), response_id(&b));
}

#[tokio::test]
async fn every_response_names_the_instance() {
    for path in ["/users/1", "/fail"] {
        let request = Request::get(path).body(()).unwrap();
        let response = app(layer()).oneshot(request).await.unwrap();
        assert_eq!(response.headers()["x-instance-id"], "api-7", "{path}");
        assert!(response.headers().contains_key(REQUEST_ID_HEADER));
    }
}

/// A `MakeWriter` collecting log lines in memory.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }
}

/// Runs `request` through the layer with a JSON-logging subscriber (built exactly as
/// `Telemetry::init` builds it, but not installed globally) and returns the log lines.
fn logged(request: Request<()>, layer: HttpTelemetryLayer) -> (Response<String>, Vec<Value>) {
    logged_to(request, layer, &SdkTracerProvider::builder().build()) // no exporter
}

/// [`logged`], with spans going to `provider`.
fn logged_to(
    request: Request<()>,
    layer: HttpTelemetryLayer,
    provider: &SdkTracerProvider,
) -> (Response<String>, Vec<Value>) {
    keep_interest_dynamic();
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let dispatch = Telemetry::new("test")
        .log_format(LogFormat::Json)
        .log_filter("info")
        .dispatch(move || writer.clone(), provider)
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let response = tracing::dispatcher::with_default(&dispatch, || {
        runtime.block_on(app(layer).oneshot(request)).unwrap()
    });
    (response, buffer.lines())
}

/// While exactly one dispatcher exists, tracing computes a callsite's interest from the default
/// dispatcher of whichever thread hits it first: a test thread without a subscriber would cache
/// "never" for the handler's event and a test logging it would lose it. A second, idle
/// dispatcher alive for the whole process makes tracing consult every dispatcher.
fn keep_interest_dynamic() {
    static SECOND_DISPATCHER: OnceLock<tracing::Dispatch> = OnceLock::new();
    SECOND_DISPATCHER
        .get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
}

fn event<'a>(lines: &'a [Value], message: &str) -> &'a Value {
    lines
        .iter()
        .find(|line| line["message"] == message)
        .unwrap_or_else(|| panic!("no {message:?} in {lines:#?}"))
}

#[test]
fn json_log_lines_carry_request_and_instance_ids() {
    let request = Request::get("/users/9")
        .header("x-request-id", "req-42")
        .body(())
        .unwrap();
    let (_, lines) = logged(request, layer().with_response_event(Level::INFO));

    let line = event(&lines, "user loaded");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["user"], 42);
    assert!(
        line["timestamp"].is_string() && line["target"].is_string(),
        "{line}"
    );
    let span = &line["spans"][0];
    assert_eq!(span["name"], "request");
    assert_eq!(span["request_id"], "req-42");
    assert_eq!(span["instance_id"], "api-7");
    assert_eq!(span["method"], "GET");
    assert_eq!(span["route"], "unmatched", "no router labelled it");
    // With the OpenTelemetry layer present a trace is always active, even without a parent.
    assert_eq!(span["trace_id"].as_str().unwrap().len(), 32, "{span}");

    let done = event(&lines, "request completed");
    assert_eq!(done["status"], 200);
    assert!(done["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(done["spans"][0]["status"], 200, "recorded on the span too");
}

#[test]
fn the_trace_id_of_an_incoming_traceparent_is_on_every_line() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span = "00f067aa0ba902b7";
    let request = Request::get("/users/9")
        .header("traceparent", format!("00-{trace_id}-{parent_span}-01"))
        .body(())
        .unwrap();
    let (response, lines) = logged(request, layer());
    assert_eq!(response.status(), StatusCode::OK);

    let span = &event(&lines, "user loaded")["spans"][0];
    assert_eq!(span["trace_id"], trace_id);
    let span_id = span["span_id"].as_str().unwrap();
    assert_eq!(span_id.len(), 16);
    assert_ne!(
        span_id, parent_span,
        "the server span is a child of the caller's span"
    );
}

#[test]
fn a_malformed_traceparent_starts_a_new_trace() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let request = Request::get("/")
        .header("traceparent", "00-ZZZ-00f067aa0ba902b7-01")
        .body(())
        .unwrap();
    let (_, lines) = logged(request, layer());
    let trace_id = event(&lines, "user loaded")["spans"][0]["trace_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(trace_id.len(), 32);
    assert_ne!(trace_id, "0".repeat(32));
}

/// Keeps the spans exported to it.
#[derive(Clone, Debug, Default)]
struct Spans(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Spans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

/// The attributes of the one exported `request` span, by key.
fn request_span_attributes(spans: &Spans) -> Vec<(String, opentelemetry::Value)> {
    let spans = spans.0.lock().unwrap();
    let request: Vec<_> = spans.iter().filter(|s| s.name == "request").collect();
    assert_eq!(request.len(), 1, "{spans:#?}");
    request[0]
        .attributes
        .iter()
        .map(|kv| (kv.key.to_string(), kv.value.clone()))
        .collect()
}

#[test]
fn the_exported_span_carries_status_and_latency_with_or_without_the_response_event() {
    for response_event in [false, true] {
        let spans = Spans::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let layer = if response_event {
            layer().with_response_event(Level::INFO)
        } else {
            layer()
        };
        let request = Request::get("/fail").body(()).unwrap();
        let (response, lines) = logged_to(request, layer, &provider);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let attributes = request_span_attributes(&spans);
        let get = |key: &str| {
            attributes
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no {key} in {attributes:?}"))
        };
        assert_eq!(get("status"), opentelemetry::Value::I64(500));
        assert!(matches!(get("latency_ms"), opentelemetry::Value::F64(ms) if ms >= 0.0));
        assert_eq!(get("request_id").as_str(), response_id(&response));
        // The span's ids on the log lines are the exported span's.
        let exported = spans.0.lock().unwrap()[0].span_context.clone();
        let logged = &event(&lines, "user loaded")["spans"][0];
        assert_eq!(logged["trace_id"], exported.trace_id().to_string());
        assert_eq!(logged["span_id"], exported.span_id().to_string());
    }
}

fn duration_lines<'a>(text: &'a str, suffix: &str) -> Vec<&'a str> {
    let prefix = format!("http_server_request_duration_seconds_{suffix}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && !l.contains(r#"http_route="/metrics""#))
        .collect()
}

#[tokio::test]
async fn a_route_label_extension_names_the_series() {
    let metrics = Metrics::new().unwrap();
    let service = app(layer().with_metrics(metrics.http()));
    let mut request = Request::post("/users/5").body(()).unwrap();
    request
        .extensions_mut()
        .insert(RouteLabel::new("/users/{id}"));
    service.oneshot(request).await.unwrap();
    let text = metrics.encode().unwrap();
    let counts = duration_lines(&text, "count");
    assert_eq!(counts.len(), 1, "{text}");
    let line = counts[0];
    assert!(line.contains(r#"http_route="/users/{id}""#), "{line}");
    assert!(line.contains(r#"http_request_method="POST""#), "{line}");
    assert!(
        line.contains(r#"http_response_status_code="200""#),
        "{line}"
    );
    assert!(line.ends_with(" 1"), "{line}");
}

#[cfg(feature = "axum")]
mod axum_router {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;

    fn router(metrics: &Metrics) -> Router {
        Router::new()
            .route("/users/{id}", get(|| async { "user" }))
            .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
            .merge(metrics.router())
            // Last: a router merged after `layer` would bring its own, unlayered fallback.
            .layer(layer().with_metrics(metrics.http()))
            .with_state(())
    }

    async fn get_path(router: &Router, path: &str) -> Response<Body> {
        let request = Request::get(path).body(Body::empty()).unwrap();
        router.clone().oneshot(request).await.unwrap()
    }

    async fn scrape(router: &Router) -> String {
        let response = get_path(router, "/metrics").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; version=0.0.4"
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_matched_route_template_is_the_label() {
        let metrics = Metrics::new().unwrap();
        let router = router(&metrics);
        let response = get_path(&router, "/users/42").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-instance-id"], "api-7");
        let text = scrape(&router).await;
        let buckets = duration_lines(&text, "bucket");
        assert!(
            buckets
                .iter()
                .any(|l| l.contains(r#"http_route="/users/{id}""#) && l.contains("le=\"+Inf\"")),
            "{text}"
        );
        assert!(!text.contains("/users/42"), "never the raw path: {text}");
    }

    #[tokio::test]
    async fn unmatched_paths_collapse_into_one_series() {
        let metrics = Metrics::new().unwrap();
        let router = router(&metrics);
        for _ in 0..100 {
            let path = format!("/scan/{}", uuid::Uuid::new_v4());
            let response = get_path(&router, &path).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND);
            assert_eq!(response.headers()["x-instance-id"], "api-7", "404s too");
            assert!(response.headers().contains_key("x-request-id"));
        }
        let text = scrape(&router).await;
        let counts = duration_lines(&text, "count");
        assert_eq!(counts.len(), 1, "one series: {counts:#?}");
        assert!(
            counts[0].contains(r#"http_route="unmatched""#),
            "{}",
            counts[0]
        );
        assert!(counts[0].contains(r#"http_response_status_code="404""#));
        assert!(counts[0].ends_with(" 100"), "{}", counts[0]);
        assert!(!text.contains("/scan/"), "{text}");
    }

    #[tokio::test]
    async fn server_errors_are_counted_and_stamped() {
        let metrics = Metrics::new().unwrap();
        let router = router(&metrics);
        let response = get_path(&router, "/fail").await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["x-instance-id"], "api-7");
        let text = scrape(&router).await;
        assert!(
            duration_lines(&text, "count")
                .iter()
                .any(|l| l.contains(r#"http_route="/fail""#)
                    && l.contains(r#"http_response_status_code="500""#)),
            "{text}"
        );
    }
}

const INIT_CHILD: &str = "WELCOMEDLY_TELEMETRY_INIT_CHILD";

/// `Telemetry::init` changes process-wide state that would race with the scoped subscribers of
/// the other tests, so it runs in a child process: this test binary, filtered to
/// [`init_in_a_fresh_process`].
#[test]
fn init_installs_once_and_refuses_a_second_time() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["init_in_a_fresh_process", "--exact", "--nocapture"])
        .env(INIT_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran the test: {stdout}"
    );
    // The JSON subscriber was installed on stdout: the child's warning is one JSON line.
    let line = stdout
        .lines()
        .find(|l| l.contains("from the child"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let line: Value = serde_json::from_str(line.trim_start_matches(|c| c != '{')).unwrap();
    assert_eq!(line["level"], "WARN");
}

#[test]
fn init_in_a_fresh_process() {
    if std::env::var_os(INIT_CHILD).is_none() {
        return; // only meaningful in the child process
    }
    let guard = Telemetry::new("init-test")
        .instance_id(InstanceId::new("child-1"))
        .log_filter("warn")
        .init()
        .unwrap();
    assert_eq!(guard.instance_id().as_str(), "child-1");
    let text = guard.metrics().encode().unwrap();
    assert!(text.contains(r#"service_instance_id="child-1""#), "{text}");
    assert!(text.contains(r#"service_name="init-test""#), "{text}");
    tracing::warn!("from the child");
    tracing::info!("filtered out");
    let err = Telemetry::new("init-test").init().unwrap_err();
    assert!(err.is_already_initialized(), "{err}");
    drop(guard);
}

#[test]
fn pretty_log_lines_carry_the_trace_id_too() {
    // The JSON format takes the ids straight into its span fields; any other format gets them
    // recorded on the span.
    keep_interest_dynamic();
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let provider = SdkTracerProvider::builder().build();
    let dispatch = Telemetry::new("test")
        .log_format(LogFormat::Pretty)
        .dispatch(move || writer.clone(), &provider)
        .unwrap();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let request = Request::get("/users/1")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .body(())
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        runtime.block_on(app(layer()).oneshot(request)).unwrap()
    });
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("user loaded"), "{text}");
    assert!(text.contains(trace_id), "{text}");
}

#[test]
fn the_exported_span_does_not_repeat_its_ids_as_attributes() {
    let spans = Spans::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    logged_to(Request::get("/").body(()).unwrap(), layer(), &provider);
    let attributes = request_span_attributes(&spans);
    let keys: Vec<_> = attributes.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        !keys.contains(&"trace_id") && !keys.contains(&"span_id"),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"request_id") && keys.contains(&"route"),
        "{keys:?}"
    );
}

/// Runs `request` under the subscriber `Telemetry::init` installs without an OTLP endpoint;
/// returns the log lines and the `traceparent` the handler would send downstream.
fn logged_without_export(request: Request<()>) -> (Vec<Value>, String) {
    keep_interest_dynamic();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let dispatch = Telemetry::new("test")
        .dispatch_without_export(move || writer.clone())
        .unwrap();
    let service =
        ServiceBuilder::new()
            .layer(layer())
            .service(service_fn(|_req: Request<()>| async move {
                tracing::info!("user loaded");
                // What an HTTP client propagating the current context would send.
                let mut outgoing = std::collections::HashMap::new();
                opentelemetry::global::get_text_map_propagator(|propagator| {
                    propagator.inject_context(&opentelemetry::Context::current(), &mut outgoing)
                });
                let traceparent = outgoing.remove("traceparent").unwrap_or_default();
                Ok::<_, Infallible>(Response::new(traceparent))
            }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let response = tracing::dispatcher::with_default(&dispatch, || {
        runtime.block_on(service.oneshot(request)).unwrap()
    });
    (buffer.lines(), response.into_body())
}

#[test]
fn without_export_log_lines_still_carry_trace_and_span_ids() {
    let (lines, outgoing) = logged_without_export(Request::get("/").body(()).unwrap());
    let span = &event(&lines, "user loaded")["spans"][0];
    let trace_id = span["trace_id"].as_str().unwrap();
    let span_id = span["span_id"].as_str().unwrap();
    assert_eq!((trace_id.len(), span_id.len()), (32, 16), "{span}");
    assert_ne!(trace_id, "0".repeat(32));
    assert_eq!(span["request_id"].as_str().unwrap().len(), 36);
    // A root request starts a sampled trace, as the SDK's default sampler would.
    assert_eq!(outgoing, format!("00-{trace_id}-{span_id}-01"));

    let (again, _) = logged_without_export(Request::get("/").body(()).unwrap());
    assert_ne!(
        event(&again, "user loaded")["spans"][0]["trace_id"],
        trace_id
    );
}

#[test]
fn without_export_an_incoming_traceparent_still_parents() {
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span = "00f067aa0ba902b7";
    let request = Request::get("/")
        .header("traceparent", format!("00-{trace_id}-{parent_span}-01"))
        .body(())
        .unwrap();
    let (lines, outgoing) = logged_without_export(request);
    let span = &event(&lines, "user loaded")["spans"][0];
    assert_eq!(span["trace_id"], trace_id);
    let span_id = span["span_id"].as_str().unwrap();
    assert_ne!(span_id, parent_span, "the request has a span of its own");
    assert_eq!(outgoing, format!("00-{trace_id}-{span_id}-01"));
}

#[test]
fn without_export_the_response_event_has_status_and_latency() {
    keep_interest_dynamic();
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let dispatch = Telemetry::new("test")
        .dispatch_without_export(move || writer.clone())
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let request = Request::get("/fail").body(()).unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        runtime
            .block_on(app(layer().with_response_event(Level::INFO)).oneshot(request))
            .unwrap()
    });
    let lines = buffer.lines();
    let done = event(&lines, "request completed");
    assert_eq!(done["status"], 500);
    assert_eq!(done["spans"][0]["status"], 500);
    assert_eq!(done["spans"][0]["trace_id"].as_str().unwrap().len(), 32);
}
