//! Health registry and endpoints: timeouts and concurrency on virtual time, the readiness rules,
//! and what each endpoint answers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::join_all;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use serde_json::Value;
use tokio::time::Instant;
use tower::ServiceExt as _;
use welcomedly_core::InstanceId;
use welcomedly_core::health::{
    Affects, CheckOutcome, CheckStatus, HealthRegistry, HealthService, Status, check_fn,
};

fn registry() -> HealthRegistry {
    HealthRegistry::new(InstanceId::new("api-7"), "9.9.9", Duration::from_secs(2))
}

fn healthy() -> impl welcomedly_core::health::HealthCheck {
    check_fn(|| async { CheckOutcome::Healthy })
}

fn sleeping(d: Duration) -> impl welcomedly_core::health::HealthCheck {
    check_fn(move || async move {
        tokio::time::sleep(d).await;
        CheckOutcome::Healthy
    })
}

/// A check that counts its runs and answers `outcome`.
fn counting(
    outcome: CheckOutcome,
) -> (impl welcomedly_core::health::HealthCheck, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let check = check_fn(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        let outcome = outcome.clone();
        async move { outcome }
    });
    (check, runs)
}

/// A check that counts its runs and answers healthy after `d` (virtual time in these tests).
fn counting_sleeping(d: Duration) -> (impl welcomedly_core::health::HealthCheck, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let check = check_fn(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(d).await;
            CheckOutcome::Healthy
        }
    });
    (check, runs)
}

async fn get(registry: &HealthRegistry, path: &str) -> (StatusCode, HeaderMap, Value) {
    call(registry, Method::GET, path).await
}

async fn call(
    registry: &HealthRegistry,
    method: Method,
    path: &str,
) -> (StatusCode, HeaderMap, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = HealthService::new(registry.clone())
        .oneshot(req)
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, json)
}

#[tokio::test(start_paused = true)]
async fn a_check_slower_than_its_timeout_is_unhealthy_after_the_timeout() {
    let registry = registry();
    registry.register_with_timeout(
        "redis",
        sleeping(Duration::from_secs(60)),
        Affects::Readiness,
        Duration::from_millis(200),
    );

    let started = Instant::now();
    let report = registry.report().await;
    let took = started.elapsed();

    let redis = report.check("redis").unwrap();
    assert_eq!(redis.status(), CheckStatus::Unhealthy);
    assert_eq!(redis.error(), Some("timed out after 200 ms"));
    assert!(
        redis.latency() >= Duration::from_millis(200)
            && redis.latency() < Duration::from_millis(210),
        "latency {:?} should be the timeout",
        redis.latency()
    );
    assert!(took < Duration::from_millis(210), "report took {took:?}");
    assert_eq!(report.status(), Status::Unavailable);
    assert!(!report.is_ready());
}

#[tokio::test(start_paused = true)]
async fn the_default_timeout_applies_without_an_override() {
    let registry = registry(); // default 2 s
    registry.register("slow", sleeping(Duration::from_secs(3)), Affects::Nothing);
    registry.register_with_timeout(
        "patient",
        sleeping(Duration::from_secs(3)),
        Affects::Nothing,
        Duration::from_secs(5),
    );

    let report = registry.report().await;
    assert_eq!(
        report.check("slow").unwrap().error(),
        Some("timed out after 2000 ms")
    );
    assert_eq!(
        report.check("patient").unwrap().status(),
        CheckStatus::Healthy
    );
}

#[tokio::test(start_paused = true)]
async fn checks_run_concurrently() {
    let registry = registry();
    registry.register("a", sleeping(Duration::from_secs(1)), Affects::Readiness);
    registry.register("b", sleeping(Duration::from_secs(1)), Affects::Readiness);

    let started = Instant::now();
    let report = registry.report().await;
    let took = started.elapsed();

    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1100),
        "two 1 s checks took {took:?}: they must run side by side"
    );
    assert_eq!(report.status(), Status::Ok);
    assert_eq!(report.checks().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn degraded_does_not_fail_readiness() {
    let registry = registry();
    registry.register("db", healthy(), Affects::Readiness);
    registry.register(
        "rate_limiter",
        check_fn(|| async { CheckOutcome::degraded("redis unreachable: local limits") }),
        Affects::Readiness,
    );

    let (status, _, body) = get(&registry, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["rate_limiter"]["status"], "degraded");
    assert_eq!(
        body["checks"]["rate_limiter"]["error"],
        "redis unreachable: local limits"
    );

    let (status, _, body) = get(&registry, "/health/ready").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ready"], true);
    assert_eq!(body["status"], "degraded");
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_check_that_does_not_affect_readiness_leaves_the_instance_ready() {
    let registry = registry();
    registry.register("primary", healthy(), Affects::Readiness);
    let (replica, replica_runs) = counting(CheckOutcome::unhealthy("connection refused"));
    registry.register("replica-1", replica, Affects::Nothing);

    let (status, _, body) = get(&registry, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["replica-1"]["status"], "unhealthy");
    assert_eq!(body["checks"]["replica-1"]["error"], "connection refused");
    assert_eq!(replica_runs.load(Ordering::SeqCst), 1);

    let (status, _, body) = get(&registry, "/health/ready").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["failing"], serde_json::json!({}));
    assert_eq!(
        replica_runs.load(Ordering::SeqCst),
        1,
        "/health/ready must run only the readiness checks"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_readiness_check_fails_health_and_ready_and_names_the_failure() {
    let registry = registry();
    registry.register(
        "primary",
        check_fn(|| async { CheckOutcome::unhealthy("timeout connecting") }),
        Affects::Readiness,
    );
    registry.register("redis", healthy(), Affects::Readiness);

    let (status, _, body) = get(&registry, "/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "unavailable");

    let (status, _, body) = get(&registry, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["ready"], false);
    assert_eq!(body["status"], "unavailable");
    assert_eq!(
        body["failing"],
        serde_json::json!({"primary": "timeout connecting"})
    );
}

#[tokio::test(start_paused = true)]
async fn draining_fails_readiness_but_live_stays_ok() {
    let registry = registry();
    registry.register("db", healthy(), Affects::Readiness);
    let (check, runs) = counting(CheckOutcome::Healthy);
    registry.register("counted", check, Affects::Readiness);

    registry.start_draining();
    assert!(registry.is_draining());

    let (status, _, body) = get(&registry, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "draining");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "a draining instance need not ask its dependencies"
    );

    let (status, _, body) = get(&registry, "/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "draining");
    assert_eq!(body["checks"]["db"]["status"], "healthy");

    let (status, _, body) = get(&registry, "/health/live").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"status": "ok"}));
}

#[tokio::test(start_paused = true)]
async fn live_never_runs_a_check() {
    let registry = registry();
    let (check, runs) = counting(CheckOutcome::unhealthy("redis is down"));
    registry.register("redis", check, Affects::Readiness);
    registry.register(
        "hangs",
        sleeping(Duration::from_secs(3600)),
        Affects::Readiness,
    );

    let started = Instant::now();
    let (status, _, body) = get(&registry, "/health/live").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"status": "ok"}));
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn the_report_has_the_documented_shape() {
    let registry = registry();
    registry.register(
        "db",
        sleeping(Duration::from_millis(40)),
        Affects::Readiness,
    );
    tokio::time::advance(Duration::from_secs(5)).await;

    let (status, headers, body) = get(&registry, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["instance_id"], "api-7");
    assert_eq!(body["version"], "9.9.9");
    assert_eq!(body["uptime_s"], 5);
    let db = body["checks"]["db"].as_object().unwrap();
    assert_eq!(db["status"], "healthy");
    let latency = db["latency_ms"].as_f64().unwrap();
    assert!((40.0..45.0).contains(&latency), "latency_ms {latency}");
    assert!(
        !db.contains_key("error"),
        "a healthy check has no error field: {db:?}"
    );
}

#[tokio::test]
async fn every_endpoint_forbids_caching() {
    let registry = registry();
    for path in ["/health", "/health/live", "/health/ready"] {
        let (status, headers, _) = get(&registry, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(headers["cache-control"], "no-store", "{path}");
    }
}

#[tokio::test]
async fn other_paths_and_methods_are_refused() {
    let registry = registry();
    let (status, _, _) = get(&registry, "/healthz").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, headers, _) = call(&registry, Method::POST, "/health").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET, HEAD");

    let (status, _, _) = call(&registry, Method::HEAD, "/health/ready").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn concurrent_reports_share_one_run_and_a_later_report_runs_again() {
    let registry = registry();
    let (check, runs) = counting_sleeping(Duration::from_secs(1));
    registry.register("db", check, Affects::Readiness);

    let reports = join_all((0..50).map(|_| registry.report())).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "50 concurrent reports");
    assert!(reports.iter().all(|r| r.status() == Status::Ok));

    // Single flight, not a cache: once the run is over, the next call probes again.
    assert_eq!(registry.report().await.status(), Status::Ok);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_readiness_calls_share_one_run_through_every_clone() {
    let registry = registry();
    let (check, runs) = counting_sleeping(Duration::from_secs(1));
    registry.register("db", check, Affects::Readiness);

    let clones: Vec<_> = (0..50).map(|_| registry.clone()).collect();
    let answers = join_all(clones.iter().map(HealthRegistry::readiness)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "50 concurrent readiness calls"
    );
    assert!(answers.iter().all(|r| r.is_ready()));

    assert!(registry.readiness().await.is_ready());
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_http_requests_share_one_run() {
    let registry = registry();
    let (check, runs) = counting_sleeping(Duration::from_secs(1));
    registry.register("db", check, Affects::Readiness);

    let answers = join_all((0..20).map(|_| get(&registry, "/health"))).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(
        answers
            .iter()
            .all(|(status, _, _)| *status == StatusCode::OK)
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_caller_that_started_a_run_does_not_starve_the_others() {
    let registry = registry();
    let (check, runs) = counting_sleeping(Duration::from_secs(1));
    registry.register("db", check, Affects::Readiness);

    // The first caller starts the run, then its client hangs up.
    let mut first = Box::pin(registry.report());
    assert!(first.as_mut().now_or_never().is_none());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let mut others: Vec<_> = (0..10).map(|_| Box::pin(registry.report())).collect();
    for other in &mut others {
        assert!(other.as_mut().now_or_never().is_none());
    }
    drop(first);

    // Bounded so that a starved waiter fails the test instead of hanging it.
    let reports = tokio::time::timeout(Duration::from_secs(60), join_all(others))
        .await
        .expect("the remaining callers must get the result of the run");
    assert!(reports.iter().all(|r| r.status() == Status::Ok));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the others joined the same run"
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_abandoned_by_every_caller_is_not_resumed_by_the_next_one() {
    let registry = registry(); // default timeout 2 s
    let (check, runs) = counting_sleeping(Duration::from_secs(1));
    registry.register("db", check, Affects::Readiness);

    let mut only = Box::pin(registry.report());
    assert!(only.as_mut().now_or_never().is_none());
    drop(only);
    tokio::time::advance(Duration::from_secs(10)).await;

    // Resuming the abandoned run would report its long-expired timeout.
    let report = registry.report().await;
    assert_eq!(report.check("db").unwrap().status(), CheckStatus::Healthy);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn draining_turns_readiness_unavailable_at_once_while_a_run_is_in_flight() {
    let registry = registry();
    let (check, runs) = counting_sleeping(Duration::from_secs(3600));
    registry.register_with_timeout("db", check, Affects::Readiness, Duration::from_secs(7200));

    let mut waiting: Vec<_> = (0..5).map(|_| Box::pin(registry.readiness())).collect();
    for call in &mut waiting {
        assert!(call.as_mut().now_or_never().is_none());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    registry.start_draining();

    // Virtual time: one second is far less than the hour the run still needs.
    let answers = tokio::time::timeout(Duration::from_secs(1), join_all(waiting))
        .await
        .expect("the calls waiting on the run answer as soon as draining starts");
    assert!(
        answers
            .iter()
            .all(|r| r.status() == Status::Draining && !r.is_ready())
    );
    let fresh = tokio::time::timeout(Duration::from_secs(1), registry.readiness())
        .await
        .expect("a new call must not join the run");
    assert_eq!(fresh.status(), Status::Draining);
    let (status, _, body) =
        tokio::time::timeout(Duration::from_secs(1), get(&registry, "/health/ready"))
            .await
            .expect("/health/ready must not join the run");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "draining");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A check whose `check()` panics before it returns a future (not only while polled).
struct PanicsOnCall;

impl welcomedly_core::health::HealthCheck for PanicsOnCall {
    fn check(&self) -> welcomedly_core::health::CheckFuture<'_> {
        panic!("no connection pool");
    }
}

fn panicking_registry() -> HealthRegistry {
    let registry = registry();
    registry.register(
        "buggy",
        check_fn(|| async {
            #[allow(clippy::unnecessary_literal_unwrap)]
            None::<()>.expect("a bug in a check");
            CheckOutcome::Healthy
        }),
        Affects::Readiness,
    );
    registry.register(
        "literal",
        check_fn(|| async { panic!("static text") }),
        Affects::Nothing,
    );
    registry.register("on_call", PanicsOnCall, Affects::Nothing);
    registry.register(
        "opaque",
        check_fn(|| async { std::panic::panic_any(42_u32) }),
        Affects::Nothing,
    );
    registry.register("db", healthy(), Affects::Readiness);
    registry
}

#[tokio::test]
async fn a_panicking_check_is_unhealthy_and_the_others_are_still_reported() {
    let registry = panicking_registry();

    let report = registry.report().await;
    let error = |name: &str| {
        let check = report.check(name).unwrap();
        assert_eq!(check.status(), CheckStatus::Unhealthy, "{name}");
        check.error().unwrap().to_owned()
    };
    assert_eq!(error("buggy"), "the check panicked: a bug in a check");
    assert_eq!(error("literal"), "the check panicked: static text");
    assert_eq!(error("on_call"), "the check panicked: no connection pool");
    assert_eq!(error("opaque"), "the check panicked");
    assert_eq!(report.check("db").unwrap().status(), CheckStatus::Healthy);
    assert_eq!(report.checks().len(), 5);
    assert_eq!(report.status(), Status::Unavailable);

    let (status, _, body) = get(&registry, "/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "unavailable");
    assert_eq!(
        body["checks"]["buggy"]["error"],
        "the check panicked: a bug in a check"
    );
    assert_eq!(body["checks"]["db"]["status"], "healthy");

    let (status, _, body) = get(&registry, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body["failing"],
        serde_json::json!({"buggy": "the check panicked: a bug in a check"})
    );
}

#[tokio::test(start_paused = true)]
async fn a_check_that_panics_late_is_still_bounded_by_its_timeout() {
    let registry = registry();
    registry.register_with_timeout(
        "late",
        check_fn(|| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            panic!("never reached");
        }),
        Affects::Readiness,
        Duration::from_millis(300),
    );

    let report = registry.report().await;
    assert_eq!(
        report.check("late").unwrap().error(),
        Some("timed out after 300 ms")
    );
}

#[tokio::test]
async fn registering_a_name_again_replaces_the_check_and_deregister_removes_it() {
    let registry = registry();
    registry.register(
        "redis",
        check_fn(|| async { CheckOutcome::unhealthy("down") }),
        Affects::Readiness,
    );
    registry.register("redis", healthy(), Affects::Readiness);

    let report = registry.report().await;
    assert_eq!(report.checks().len(), 1);
    assert_eq!(report.status(), Status::Ok);

    assert!(registry.deregister("redis"));
    assert!(!registry.deregister("redis"));
    assert!(registry.report().await.checks().is_empty());
}

#[test]
fn from_result_keeps_the_source_chain() {
    let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
    let outer = std::io::Error::other(Wrapped(inner));
    let outcome = CheckOutcome::from_result::<(), _>(Err(outer));
    assert_eq!(
        outcome,
        CheckOutcome::unhealthy("ping failed: connection refused")
    );
    assert_eq!(
        CheckOutcome::from_result::<_, std::io::Error>(Ok(1)),
        CheckOutcome::Healthy
    );
}

#[derive(Debug)]
struct Wrapped(std::io::Error);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ping failed")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<HealthRegistry>();
    assert_send_sync::<HealthService>();
    assert_send::<welcomedly_core::health::ResponseFuture>();
    assert_send_sync::<welcomedly_core::health::HealthReport>();
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn the_axum_router_answers_with_a_body_when_a_check_panics() {
    let app: axum::Router = welcomedly_core::health::router(panicking_registry());

    let req = Request::get("/health")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["buggy"]["status"], "unhealthy");
    assert_eq!(
        body["checks"]["buggy"]["error"],
        "the check panicked: a bug in a check"
    );
    assert_eq!(body["checks"]["db"]["status"], "healthy");

    let req = Request::get("/health/ready")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["ready"], false);
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn the_axum_router_serves_the_three_paths() {
    #[derive(Clone)]
    struct AppState;

    let registry = registry();
    registry.register("db", healthy(), Affects::Readiness);
    let app: axum::Router = axum::Router::new()
        .route("/api/ping", axum::routing::get(|| async { "pong" }))
        .merge(welcomedly_core::health::router::<AppState>(
            registry.clone(),
        ))
        .with_state(AppState);

    for (path, expected) in [
        ("/health", StatusCode::OK),
        ("/health/live", StatusCode::OK),
        ("/health/ready", StatusCode::OK),
        ("/api/ping", StatusCode::OK),
    ] {
        let req = Request::get(path).body(axum::body::Body::empty()).unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), expected, "{path}");
    }

    registry.start_draining();
    let req = Request::get("/health/ready")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["cache-control"], "no-store");
}
