//! The cluster-wide rate limit against a real `redis-server`: shared accuracy across instances,
//! Redis killed under load, Redis restarted, script cache flushed, failure modes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::convert::Infallible;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use tower::{Service, ServiceExt, service_fn};
use welcomedly_cluster::rate_limit::{RedisBackend, RedisRateLimitConfig};
use welcomedly_core::client_ip::ClientIp;
use welcomedly_core::rate_limit::{
    FailureMode, LocalBackend, Policy, Quota, RateLimitBackend, RateLimitLayer, ResponseBody,
};
use welcomedly_test_support::RedisServer;

type Res = Response<ResponseBody<String>>;

fn app<B: RateLimitBackend>(
    layer: &RateLimitLayer<B>,
) -> impl Service<Request<String>, Response = Res, Error = Infallible, Future: Send>
+ Clone
+ Send
+ use<B> {
    tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        }))
}

fn req(ip: &str) -> Request<String> {
    let mut r = Request::get("/api/calls").body(String::new()).unwrap();
    r.extensions_mut().insert(ClientIp(ip.parse().unwrap()));
    r
}

async fn send<S>(s: &S, ip: &str) -> StatusCode
where
    S: Service<Request<String>, Response = Res, Error = Infallible, Future: Send> + Clone,
{
    s.clone().oneshot(req(ip)).await.unwrap().status()
}

async fn backend(redis: &RedisServer, budget: Duration, instances: u32) -> RedisBackend {
    let mut config = RedisRateLimitConfig::new(redis.url());
    config.budget = budget;
    config.instances = instances;
    config.reconnect_interval = Duration::from_millis(50);
    let b = config.build().await.unwrap();
    assert!(
        !b.is_degraded(),
        "the backend should connect to a running Redis"
    );
    b
}

fn policy(mode: FailureMode) -> Policy {
    Policy::new("api", Quota::per_minute(30).with_burst(30))
        .path_prefix("/api")
        .on_store_failure(mode)
}

/// Three instances, round-robin: together they admit the burst once, not three times.
#[tokio::test]
async fn three_instances_share_one_limit() {
    let redis = RedisServer::start().unwrap();
    let mut shared = Vec::new();
    let mut local = Vec::new();
    for _ in 0..3 {
        let l = RateLimitLayer::builder()
            .backend(backend(&redis, Duration::from_millis(500), 3).await)
            .policy(policy(FailureMode::LocalFallback))
            .build()
            .unwrap();
        shared.push(app(&l));
        let l = RateLimitLayer::builder()
            .backend(LocalBackend::new())
            .policy(policy(FailureMode::LocalFallback))
            .build()
            .unwrap();
        local.push(app(&l));
    }
    let (mut ok_shared, mut ok_local) = (0, 0);
    for i in 0..120 {
        if send(&shared[i % 3], "198.51.100.7").await == StatusCode::OK {
            ok_shared += 1;
        }
        if send(&local[i % 3], "198.51.100.7").await == StatusCode::OK {
            ok_local += 1;
        }
    }
    // 30 burst, plus at most one more refilled during the test's own run time (2 s per request).
    assert!(
        (30..=31).contains(&ok_shared),
        "shared admitted {ok_shared}"
    );
    // The per-instance design admits three times as much: what this crate exists to prevent.
    assert!(ok_local >= 90, "per-instance admitted {ok_local}");
    // The keys live in Redis, hash-tagged by client key, with a TTL of the reset time.
    let keys = redis.command(&["KEYS", "wd:rl:*"]).unwrap();
    assert!(keys.contains("wd:rl:{ip:198.51.100.7}:api"), "{keys}");
    let ttl: i64 = redis
        .command(&["PTTL", "wd:rl:{ip:198.51.100.7}:api"])
        .unwrap()
        .parse()
        .unwrap();
    assert!(ttl > 55_000 && ttl <= 60_000, "ttl {ttl}");
}

/// Kill Redis under load: no 5xx, no request waits much past the budget, the fallback holds
/// limit / instances; restart Redis: back to the shared limit by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_falls_back_then_recovers() {
    let redis = RedisServer::start().unwrap();
    let budget = Duration::from_millis(50);
    let b = backend(&redis, budget, 3).await;
    let layer = RateLimitLayer::builder()
        .backend(b.clone())
        .policy(policy(FailureMode::LocalFallback))
        .build()
        .unwrap();
    let svc = app(&layer);

    let load = {
        let svc = svc.clone();
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut statuses = Vec::new();
            let start = Instant::now();
            let mut i = 0u32;
            while start.elapsed() < Duration::from_millis(1500) {
                let t = Instant::now();
                let ip = format!("203.0.113.{}", i % 200);
                statuses.push(send(&svc, &ip).await);
                worst = worst.max(t.elapsed());
                i += 1;
            }
            (worst, statuses)
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    redis.kill().unwrap();
    let (worst, statuses) = load.await.unwrap();
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS)
    );
    assert!(
        worst < budget + Duration::from_millis(250),
        "a request waited {worst:?} with a {budget:?} budget"
    );
    assert!(b.is_degraded());
    assert!(b.failures() >= 1);
    {
        use welcomedly_core::health::{CheckOutcome, HealthCheck};
        assert!(matches!(b.check().await, CheckOutcome::Degraded(_)));
    }

    // While Redis is down each instance admits its share: 30 / 3 = 10 for a fresh client.
    let mut admitted = 0;
    for _ in 0..40 {
        if send(&svc, "192.0.2.200").await == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10, "fallback share");
    let stats = &layer.stats()[0];
    assert!(stats.fallbacks >= 40, "{stats:?}");

    redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.is_degraded() {
        assert!(
            Instant::now() < deadline,
            "the backend did not return to Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    {
        use welcomedly_core::health::{CheckOutcome, HealthCheck};
        assert_eq!(b.check().await, CheckOutcome::Healthy);
    }
    // Shared again: the full burst of 30 for a new client, in Redis.
    let mut admitted = 0;
    for _ in 0..40 {
        if send(&svc, "192.0.2.201").await == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 30);
    assert_eq!(
        redis
            .command(&["EXISTS", "wd:rl:{ip:192.0.2.201}:api"])
            .unwrap(),
        "1"
    );
}

#[tokio::test]
async fn failure_modes_apply_per_policy_while_redis_is_down() {
    let redis = RedisServer::start().unwrap();
    let b = backend(&redis, Duration::from_millis(50), 1).await;
    let open = RateLimitLayer::builder()
        .backend(b.clone())
        .policy(policy(FailureMode::FailOpen))
        .build()
        .unwrap();
    let b2 = backend(&redis, Duration::from_millis(50), 1).await;
    let closed = RateLimitLayer::builder()
        .backend(b2.clone())
        .policy(policy(FailureMode::FailClosed))
        .build()
        .unwrap();
    redis.kill().unwrap();
    let (open_svc, closed_svc) = (app(&open), app(&closed));
    for _ in 0..50 {
        let res = open_svc.clone().oneshot(req("192.0.2.1")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        // Nothing is known about the quota while failing open: no misleading r=0.
        assert!(res.headers().get("ratelimit").is_none());
        let res = closed_svc.clone().oneshot(req("192.0.2.1")).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()["retry-after"], "1");
    }
    assert!(open.stats()[0].store_errors >= 50);
}

#[tokio::test]
async fn one_backend_serves_one_layer() {
    let redis = RedisServer::start().unwrap();
    let b = backend(&redis, Duration::from_millis(500), 1).await;
    let _first = RateLimitLayer::builder()
        .backend(b.clone())
        .policy(policy(FailureMode::LocalFallback))
        .build()
        .unwrap();
    let e = RateLimitLayer::builder()
        .backend(b)
        .policy(policy(FailureMode::LocalFallback))
        .build()
        .unwrap_err();
    let why = std::error::Error::source(&e).unwrap().to_string();
    assert!(why.contains("one backend per layer"), "{why}");
}

#[tokio::test]
async fn a_flushed_script_cache_is_reloaded() {
    let redis = RedisServer::start().unwrap();
    let b = backend(&redis, Duration::from_millis(500), 1).await;
    let layer = RateLimitLayer::builder()
        .backend(b.clone())
        .policy(policy(FailureMode::FailClosed))
        .build()
        .unwrap();
    let svc = app(&layer);
    assert_eq!(send(&svc, "192.0.2.1").await, StatusCode::OK);
    redis.command(&["SCRIPT", "FLUSH"]).unwrap();
    for _ in 0..29 {
        assert_eq!(send(&svc, "192.0.2.1").await, StatusCode::OK);
    }
    assert_eq!(send(&svc, "192.0.2.1").await, StatusCode::TOO_MANY_REQUESTS);
    assert!(!b.is_degraded());
    assert_eq!(layer.stats()[0].store_errors, 0);
}

#[tokio::test]
async fn deferred_charges_reach_redis() {
    let redis = RedisServer::start().unwrap();
    let b = backend(&redis, Duration::from_millis(500), 1).await;
    let layer = RateLimitLayer::builder()
        .backend(b)
        .policy(
            Policy::new("login", Quota::per_minute(2))
                .charge_only_statuses([StatusCode::UNAUTHORIZED]),
        )
        .build()
        .unwrap();
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_req: Request<String>| async {
            let mut r = Response::new(String::new());
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            Ok::<_, Infallible>(r)
        }));
    for _ in 0..2 {
        let s = svc
            .clone()
            .oneshot(req("192.0.2.9"))
            .await
            .unwrap()
            .status();
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // The charges are sent in the background: wait until Redis has them.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = svc
            .clone()
            .oneshot(req("192.0.2.9"))
            .await
            .unwrap()
            .status();
        if s == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert!(Instant::now() < deadline, "the 401s were never charged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
