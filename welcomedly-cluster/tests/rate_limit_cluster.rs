//! The cluster-wide rate limit against a real `redis-server`: shared accuracy across instances,
//! Redis killed under load, Redis restarted, frozen and its connection killed, script cache
//! flushed, failure modes. Each backend runs on a link of its own, as separate instances do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use tower::{Service, ServiceExt, service_fn};
use welcomedly_cluster::rate_limit::{RedisBackend, RedisRateLimitConfig};
use welcomedly_core::client_ip::ClientIp;
use welcomedly_core::rate_limit::backend::{Check, DecisionSource, Key, RateLimitBackend};
use welcomedly_core::rate_limit::{
    FailureMode, KeySource, LocalBackend, Policy, Quota, RateLimitLayer, ResponseBody,
};
use welcomedly_redis::{Backoff, Link, LinkConfig};
mod rate_limit_support;
use rate_limit_support::evalsha_calls;
use welcomedly_testkit::RedisServer;

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

/// A link reconnecting quickly (first retry after 50 ms), other settings as given by `tune`.
async fn link_with(redis: &RedisServer, tune: impl FnOnce(&mut LinkConfig)) -> Link {
    let mut c = LinkConfig::new(redis.url());
    c.backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
    tune(&mut c);
    Link::connect(c).await.unwrap()
}

fn limiter_config(budget: Duration, instances: u32) -> RedisRateLimitConfig {
    let mut config = RedisRateLimitConfig::default();
    config.budget = budget;
    config.instances = instances;
    config
}

async fn backend(redis: &RedisServer, budget: Duration, instances: u32) -> RedisBackend {
    let link = link_with(redis, |_| {}).await;
    let b = RedisBackend::new(&link, limiter_config(budget, instances))
        .await
        .unwrap();
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
    let mut layers = Vec::new();
    let mut local = Vec::new();
    let names = backend(&redis, Duration::from_millis(500), 3).await;
    for _ in 0..3 {
        let l = RateLimitLayer::builder()
            .backend(backend(&redis, Duration::from_millis(500), 3).await)
            .policy(policy(FailureMode::LocalFallback))
            .build()
            .unwrap();
        shared.push(app(&l));
        layers.push(l);
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
    let name = names.key_name(
        &layers[0].policies()[0],
        &Key::Ip("198.51.100.7".parse().unwrap()),
    );
    let keys = redis.command(&["KEYS", "wd:rl:*"]).unwrap();
    assert!(keys.contains(&name), "{keys}");
    let ttl: i64 = redis.command(&["PTTL", &name]).unwrap().parse().unwrap();
    assert!(ttl > 55_000 && ttl <= 60_000, "ttl {ttl}");
}

/// Kill Redis under load: no 5xx, no request waits much past the budget, the fallback holds
/// limit / instances; restart Redis: back to the shared limit by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_falls_back_then_recovers() {
    let redis = RedisServer::start().unwrap();
    let budget = Duration::from_millis(50);
    let b = backend(&redis, budget, 3).await;
    let metrics = welcomedly_core::telemetry::Metrics::new().unwrap();
    b.register_metrics(metrics.meter());
    let gauge = |name: &str| -> String {
        let text = metrics.encode().unwrap();
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
            .unwrap_or_else(|| panic!("{name} is not exported: {text}"))
    };
    assert_eq!(gauge("welcomedly_rate_limit_backend_degraded"), "0");
    assert_eq!(gauge("welcomedly_rate_limit_live_instances"), "3");
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
    assert_eq!(gauge("welcomedly_rate_limit_backend_degraded"), "1");
    assert_ne!(gauge("welcomedly_rate_limit_backend_failures_total"), "0");
    // The outage is the link's health check's to report (`redis`); the backend has none.
    {
        use welcomedly_core::health::{CheckOutcome, HealthCheck};
        assert!(matches!(b.link().check().await, CheckOutcome::Degraded(_)));
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
        assert_eq!(b.link().check().await, CheckOutcome::Healthy);
    }
    assert_eq!(gauge("welcomedly_rate_limit_backend_degraded"), "0");
    // Shared again: the full burst of 30 for a new client, in Redis.
    let mut admitted = 0;
    for _ in 0..40 {
        if send(&svc, "192.0.2.201").await == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 30);
    let name = b.key_name(
        &layer.policies()[0],
        &Key::Ip("192.0.2.201".parse().unwrap()),
    );
    assert_eq!(redis.command(&["EXISTS", &name]).unwrap(), "1");
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

/// A login answering 401 slowly; `reached` counts the requests that got past the limiter.
fn slow_login<B: RateLimitBackend>(
    layer: &RateLimitLayer<B>,
    reached: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
) -> impl Service<Request<String>, Response = Res, Error = Infallible, Future: Send>
+ Clone
+ Send
+ use<B> {
    tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(move |_req: Request<String>| {
            let (reached, gate) = (reached.clone(), gate.clone());
            async move {
                reached.fetch_add(1, Ordering::SeqCst);
                let _permit = gate.acquire().await;
                let mut r = Response::new(String::new());
                *r.status_mut() = StatusCode::UNAUTHORIZED;
                Ok::<_, Infallible>(r)
            }
        }))
}

fn login_policy(per_minute: u32) -> Policy {
    Policy::new("login", Quota::per_minute(per_minute))
        .charge_only_statuses([StatusCode::UNAUTHORIZED])
}

/// The bypass found in review, through Redis: 40 failed logins in flight together, 5 allowed,
/// two instances. Reserve at admission: at most the burst reaches the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_slow_logins_across_instances_admit_at_most_the_burst() {
    let redis = RedisServer::start().unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut instances = Vec::new();
    for _ in 0..2 {
        let layer = RateLimitLayer::builder()
            .backend(backend(&redis, Duration::from_millis(500), 2).await)
            .policy(login_policy(5))
            .build()
            .unwrap();
        instances.push(slow_login(&layer, reached.clone(), gate.clone()));
    }
    let mut tasks = Vec::new();
    for i in 0..40 {
        let svc = instances[i % 2].clone();
        tasks.push(tokio::spawn(svc.oneshot(req("192.0.2.50"))));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while tasks.iter().filter(|t| t.is_finished()).count() < 35 {
        assert!(Instant::now() < deadline, "the rejections never came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every request has been decided: 35 answered, the others hold the handler.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(reached.load(Ordering::SeqCst), 5);
    gate.add_permits(40);
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().unwrap().status());
    }
    let count = |s: StatusCode| statuses.iter().filter(|x| **x == s).count();
    assert_eq!(count(StatusCode::UNAUTHORIZED), 5);
    assert_eq!(count(StatusCode::TOO_MANY_REQUESTS), 35);
}

/// Reserved at admission, refunded in Redis when the response is not a charged status.
#[tokio::test]
async fn refunds_reach_redis() {
    let redis = RedisServer::start().unwrap();
    let b = backend(&redis, Duration::from_millis(500), 1).await;
    let layer = RateLimitLayer::builder()
        .backend(b.clone())
        .policy(login_policy(2))
        .build()
        .unwrap();
    let ok = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let name = b.key_name(&layer.policies()[0], &Key::Ip("192.0.2.9".parse().unwrap()));
    for _ in 0..20 {
        let s = ok.clone().oneshot(req("192.0.2.9")).await.unwrap().status();
        assert_eq!(s, StatusCode::OK);
        // The refund is sent in the background: wait until Redis has it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while redis.command(&["EXISTS", &name]).unwrap() != "0" {
            assert!(Instant::now() < deadline, "the refund never reached Redis");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// 105 failed logins of one client, 5 allowed: Redis is asked about 6 of them, not 105.
#[tokio::test]
async fn a_client_redis_rejected_costs_redis_nothing_until_its_retry_time() {
    let redis = RedisServer::start().unwrap();
    let layer = RateLimitLayer::builder()
        .backend(backend(&redis, Duration::from_millis(500), 1).await)
        .policy(login_policy(5))
        .build()
        .unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(1000));
    let svc = slow_login(&layer, reached.clone(), gate);
    let before = evalsha_calls(&redis);
    let mut limited = 0;
    for _ in 0..105 {
        let res = svc.clone().oneshot(req("192.0.2.77")).await.unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
            let retry: u64 = res.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=12).contains(&retry), "retry-after {retry}");
        }
    }
    assert_eq!(limited, 100);
    assert_eq!(reached.load(Ordering::SeqCst), 5);
    let calls = evalsha_calls(&redis) - before;
    assert_eq!(calls, 6, "script calls for 105 requests");
    // Another client is not affected.
    let res = svc.clone().oneshot(req("192.0.2.78")).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

/// Client keys never reach Redis as text: a 4 KB API key is a 32-digit digest in the key name.
#[tokio::test]
async fn header_keys_are_digested_in_redis() {
    let redis = RedisServer::start().unwrap();
    let mut config = RedisRateLimitConfig::default();
    config.key_secret = Some("deployment secret".to_owned());
    let link = link_with(&redis, |_| {}).await;
    let layer = RateLimitLayer::builder()
        .backend(RedisBackend::new(&link, config).await.unwrap())
        .policy(
            Policy::new("api", Quota::per_minute(10)).key(KeySource::Header(
                http::HeaderName::from_static("x-api-key"),
            )),
        )
        .build()
        .unwrap();
    let svc = app(&layer);
    let secret = format!("sk_live_{}", "x".repeat(4000));
    for key in [secret.as_str(), "sk_live_short"] {
        let mut r = req("192.0.2.1");
        r.headers_mut().insert("x-api-key", key.parse().unwrap());
        assert_eq!(
            svc.clone().oneshot(r).await.unwrap().status(),
            StatusCode::OK
        );
    }
    let keys = redis.command(&["KEYS", "*"]).unwrap();
    assert!(!keys.contains("sk_live"), "{keys}");
    let names: Vec<&str> = keys.split_whitespace().collect();
    assert_eq!(names.len(), 2, "{keys}");
    for name in names {
        assert_eq!(name.len(), "wd:rl:{}:api".len() + 32, "{name}");
    }
}

/// A slow but live Redis (60 ms pauses against a 20 ms budget) under load: each slow answer
/// decides its own requests locally, but the connection is not dropped and re-made at every
/// pause, and the backend stays usable throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_is_not_reconnected_at_every_pause() {
    let redis = RedisServer::start().unwrap();
    let link = link_with(&redis, |c| c.failure_threshold = 1_000).await;
    let b = RedisBackend::new(&link, limiter_config(Duration::from_millis(20), 1))
        .await
        .unwrap();
    let layer = RateLimitLayer::builder()
        .backend(b.clone())
        .policy(Policy::new("api", Quota::per_minute(1_000_000)).path_prefix("/api"))
        .build()
        .unwrap();
    let svc = app(&layer);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..16 {
        let (svc, stop) = (svc.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let s = send(&svc, &format!("198.51.100.{}", (w * 16 + n) % 250)).await;
                assert_eq!(s, StatusCode::OK);
                n += 1;
            }
        }));
    }
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        redis.command(&["CLIENT", "PAUSE", "60"]).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert!(
        b.failures() >= 10,
        "the pauses were noticed: {}",
        b.failures()
    );
    assert_eq!(
        b.link().stats().connections,
        1,
        "no reconnect below the threshold"
    );
    assert!(!b.is_degraded());
}

/// Past the threshold the connection is dropped once, the backend stays on the fallback for
/// the link's `min_outage`, reconnects by itself, and concurrent late failures of the old connection
/// never drop the new one (the generation check): it ends connected, not stuck on the fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_past_the_threshold_reconnect_once_and_never_strand_the_backend() {
    let redis = RedisServer::start().unwrap();
    let link = link_with(&redis, |c| {
        c.failure_threshold = 3;
        c.min_outage = Duration::from_millis(100);
        c.backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    })
    .await;
    let b = RedisBackend::new(&link, limiter_config(Duration::from_millis(25), 1))
        .await
        .unwrap();
    let layer = RateLimitLayer::builder()
        .backend(b.clone())
        .policy(Policy::new("api", Quota::per_minute(1_000_000)).path_prefix("/api"))
        .build()
        .unwrap();
    let svc = app(&layer);
    for round in 0..5 {
        // Many requests in flight when Redis pauses: all time out together on one connection.
        let mut tasks = Vec::new();
        for i in 0..64 {
            let svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                send(&svc, &format!("198.51.100.{i}")).await
            }));
        }
        redis.command(&["CLIENT", "PAUSE", "100"]).unwrap();
        for t in tasks {
            assert_eq!(t.await.unwrap(), StatusCode::OK);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.is_degraded() {
            assert!(
                Instant::now() < deadline,
                "round {round}: stuck on the fallback"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for i in 0..32 {
            assert_eq!(send(&svc, &format!("192.0.2.{i}")).await, StatusCode::OK);
        }
    }
    // One connection per pause at most, not one per failed request.
    let connections = b.link().stats().connections;
    assert!(connections <= 6, "{connections} connections");
}

/// `READONLY` (a replica after a failover) replaces the connection at once; `WRONGTYPE` (a key
/// clash) is a server error: the request is decided per failure mode, the connection stays.
#[tokio::test]
async fn server_errors_are_told_apart_from_transport_errors() {
    let redis = RedisServer::start().unwrap();
    let b = backend(&redis, Duration::from_millis(500), 1).await;
    let layer = RateLimitLayer::builder()
        .backend(b.clone())
        .policy(policy(FailureMode::FailOpen))
        .build()
        .unwrap();
    let svc = app(&layer);
    // Someone else's data under our key: the script's GET fails with WRONGTYPE.
    let name = b.key_name(&layer.policies()[0], &Key::Ip("192.0.2.1".parse().unwrap()));
    redis.command(&["HSET", &name, "f", "v"]).unwrap();
    for _ in 0..10 {
        assert_eq!(send(&svc, "192.0.2.1").await, StatusCode::OK);
    }
    assert_eq!(b.server_errors(), 10);
    assert!(!b.is_degraded());
    assert_eq!(b.link().stats().connections, 1);
    assert_eq!(layer.stats()[0].store_errors, 10);
    // Other clients are served by Redis meanwhile.
    for _ in 0..30 {
        assert_eq!(send(&svc, "192.0.2.2").await, StatusCode::OK);
    }
    assert_eq!(send(&svc, "192.0.2.2").await, StatusCode::TOO_MANY_REQUESTS);

    // Redis turned into a replica (as after a failover): READONLY on the script's SET.
    let other = RedisServer::start().unwrap();
    redis
        .command(&["REPLICAOF", "127.0.0.1", &other.port().to_string()])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b.is_degraded() {
        assert!(
            Instant::now() < deadline,
            "READONLY did not replace the connection"
        );
        let _ = send(&svc, "192.0.2.3").await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    redis.command(&["REPLICAOF", "NO", "ONE"]).unwrap();
}

/// Who decided one fresh request of `ip` under the layer's first policy, and how long it took.
async fn decide(
    b: &RedisBackend,
    layer: &RateLimitLayer<RedisBackend>,
    ip: &str,
) -> (DecisionSource, Duration) {
    let key = Key::Ip(ip.parse().unwrap());
    let check = Check {
        policy: &layer.policies()[0],
        key: &key,
        charge: true,
    };
    let t = Instant::now();
    let decisions = b.acquire(&[check]).await.unwrap();
    (decisions[0].source, t.elapsed())
}

/// A backend on a link with the default reconnect settings (backoff up to 2 s): after a long
/// outage the link's own next attempt may be seconds away, so only a request that asks the link
/// for a connection is decided in Redis at once.
async fn default_link_backend(
    redis: &RedisServer,
    budget: Duration,
) -> (RedisBackend, RateLimitLayer<RedisBackend>) {
    let link = Link::connect(LinkConfig::new(redis.url())).await.unwrap();
    let b = RedisBackend::new(&link, limiter_config(budget, 2))
        .await
        .unwrap();
    let layer = RateLimitLayer::builder()
        .backend(b.clone())
        .policy(policy(FailureMode::LocalFallback))
        .build()
        .unwrap();
    (b, layer)
}

/// Redis SIGKILLed: every decision is the fallback's, none past its budget; nobody asks for a
/// while; Redis restarted on the same port: the first decision after Redis answers is made in
/// Redis (not by the fallback), and the ones after it too.
#[tokio::test]
async fn after_redis_restarts_the_first_decision_is_made_in_redis() {
    let redis = RedisServer::start().unwrap();
    // Generous, so a loaded machine's slow reconnect does not decide the test; the bound below
    // is what matters.
    let budget = Duration::from_millis(250);
    let (b, layer) = default_link_backend(&redis, budget).await;
    assert_eq!(
        decide(&b, &layer, "192.0.2.1").await.0,
        DecisionSource::Store
    );
    redis.kill().unwrap();
    for i in 0..20 {
        let (source, took) = decide(&b, &layer, &format!("192.0.2.{}", 10 + i)).await;
        assert_eq!(source, DecisionSource::Fallback, "request {i} while down");
        assert!(
            took < budget + Duration::from_millis(200),
            "a decision took {took:?} with a {budget:?} budget while Redis was down"
        );
    }
    assert!(b.is_degraded());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart().unwrap(); // returns once Redis answers
    let (source, took) = decide(&b, &layer, "192.0.2.1").await;
    assert_eq!(
        source,
        DecisionSource::Store,
        "the first decision after Redis answers again (took {took:?})"
    );
    assert!(!b.is_degraded());
    for i in 0..10 {
        assert_eq!(
            decide(&b, &layer, &format!("192.0.2.{}", 100 + i)).await.0,
            DecisionSource::Store
        );
    }
    let name = b.key_name(&layer.policies()[0], &Key::Ip("192.0.2.1".parse().unwrap()));
    assert_eq!(redis.command(&["EXISTS", &name]).unwrap(), "1");
}

/// Redis frozen (SIGSTOP): the connection stays open but nothing answers. No decision waits past
/// its budget (the slack is generous: behaviour, not a benchmark), every one is the fallback's;
/// once Redis runs again, decisions return to Redis by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_decision_waits_past_its_budget_while_redis_is_frozen() {
    let redis = RedisServer::start().unwrap();
    let budget = Duration::from_millis(50);
    let (b, layer) = default_link_backend(&redis, budget).await;
    let svc = app(&layer);
    assert_eq!(
        decide(&b, &layer, "192.0.2.1").await.0,
        DecisionSource::Store
    );
    redis.pause().unwrap();
    let started = Instant::now();
    let mut i = 0u32;
    // Long enough to cross the link's threshold, its minimum outage and a hung reconnect.
    while started.elapsed() < Duration::from_millis(1500) {
        let (source, took) = decide(&b, &layer, &format!("198.51.100.{}", i % 200)).await;
        assert_ne!(source, DecisionSource::Store, "Redis is frozen");
        assert!(
            took < budget + Duration::from_millis(200),
            "a decision took {took:?} with a {budget:?} budget while Redis was frozen"
        );
        let t = Instant::now();
        // Admitted on the fallback's share, or refused once that share is spent: never an error.
        let status = send(&svc, "203.0.113.9").await;
        assert!(
            status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS,
            "{status}"
        );
        let took = t.elapsed();
        assert!(
            took < budget + Duration::from_millis(200),
            "a request took {took:?} with a {budget:?} budget while Redis was frozen"
        );
        i += 1;
    }
    redis.resume().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if decide(&b, &layer, "192.0.2.2").await.0 == DecisionSource::Store {
            break;
        }
        assert!(Instant::now() < deadline, "never back on Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!b.is_degraded());
}

/// `CLIENT KILL` of the backend's connection: the link notices the close by itself (no request
/// needed) and reconnects once; the next decision is Redis's.
#[tokio::test]
async fn client_kill_of_the_connection_is_survived() {
    let redis = RedisServer::start().unwrap();
    let (b, layer) = default_link_backend(&redis, Duration::from_millis(250)).await;
    assert_eq!(
        decide(&b, &layer, "192.0.2.1").await.0,
        DecisionSource::Store
    );
    let killed = redis
        .command(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
        .unwrap();
    assert!(killed.parse::<u32>().unwrap() >= 1, "killed {killed}");
    // No request meanwhile: the close is noticed when it happens, not by the next request.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !(b.link().stats().closed == 1 && b.link().is_connected()) {
        assert!(
            Instant::now() < deadline,
            "the close was not noticed: {:?}",
            b.link().stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        decide(&b, &layer, "192.0.2.1").await.0,
        DecisionSource::Store,
        "the first decision after CLIENT KILL"
    );
    assert_eq!(b.link().stats().connections, 2, "one reconnect");
    assert_eq!(b.failures(), 0, "no request failed");
}

/// A layer of two policies on `/api`: `ip` (per client address, `ip_limit` a minute) and `key`
/// (per `x-api-key`, `key_limit` a minute), on a backend that remembers no rejection (so every
/// request reaches Redis).
async fn ip_and_api_key_layer(
    redis: &RedisServer,
    ip_limit: u32,
    key_limit: u32,
) -> (RedisBackend, RateLimitLayer<RedisBackend>) {
    let link = link_with(redis, |_| {}).await;
    let mut config = limiter_config(Duration::from_millis(500), 1);
    config.remembered_rejections = 0;
    let b = RedisBackend::new(&link, config).await.unwrap();
    let layer = RateLimitLayer::builder()
        .backend(b.clone())
        .policy(Policy::new("ip", Quota::per_minute(ip_limit)).path_prefix("/api"))
        .policy(
            Policy::new("key", Quota::per_minute(key_limit))
                .path_prefix("/api")
                .key(KeySource::Header(http::HeaderName::from_static(
                    "x-api-key",
                ))),
        )
        .build()
        .unwrap();
    (b, layer)
}

fn req_with_key(ip: &str, key: &str) -> Request<String> {
    let mut r = req(ip);
    r.headers_mut().insert("x-api-key", key.parse().unwrap());
    r
}

/// The Redis key names of the `ip` and `key` policies for one request, asserted to live in
/// different Redis Cluster slots (what the tests below are about).
fn names_in_two_slots(
    b: &RedisBackend,
    layer: &RateLimitLayer<RedisBackend>,
    ip: &str,
    api_key: &str,
) -> (String, String) {
    let ip_name = b.key_name(&layer.policies()[0], &Key::Ip(ip.parse().unwrap()));
    let key_name = b.key_name(&layer.policies()[1], &Key::Header(api_key.parse().unwrap()));
    assert_ne!(
        welcomedly_redis::key_slot(ip_name.as_bytes()),
        welcomedly_redis::key_slot(key_name.as_bytes()),
        "the test needs keys in two slots"
    );
    (ip_name, key_name)
}

/// Checks whose keys live in two Redis Cluster slots are decided by one script call per slot
/// (no CROSSSLOT on a cluster); checks sharing a slot stay one call.
#[tokio::test]
async fn checks_are_grouped_by_slot_one_call_each() {
    let redis = RedisServer::start().unwrap();
    let (b, layer) = ip_and_api_key_layer(&redis, 100, 100).await;
    names_in_two_slots(&b, &layer, "192.0.2.60", "k-one");
    let svc = app(&layer);
    let before = evalsha_calls(&redis);
    for _ in 0..5 {
        let r = svc.clone().oneshot(req_with_key("192.0.2.60", "k-one"));
        assert_eq!(r.await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        evalsha_calls(&redis) - before,
        10,
        "two slots: two calls a request"
    );

    // Two policies keyed by the client address: one slot, one call.
    let link = link_with(&redis, |_| {}).await;
    let same = RateLimitLayer::builder()
        .backend(
            RedisBackend::new(&link, limiter_config(Duration::from_millis(500), 1))
                .await
                .unwrap(),
        )
        .policy(Policy::new("a", Quota::per_minute(100)).path_prefix("/api"))
        .policy(Policy::new("b", Quota::per_minute(100)).path_prefix("/api"))
        .build()
        .unwrap();
    let svc = app(&same);
    let before = evalsha_calls(&redis);
    for _ in 0..5 {
        assert_eq!(send(&svc, "192.0.2.61").await, StatusCode::OK);
    }
    assert_eq!(
        evalsha_calls(&redis) - before,
        5,
        "one slot: one call a request"
    );
}

/// A request the `key` policy rejects in one slot while the `ip` policy admitted it in another
/// consumes nothing of `ip`: its charge is given back before the 429 is answered.
#[tokio::test]
async fn a_request_rejected_in_one_slot_consumes_nothing_in_another() {
    let redis = RedisServer::start().unwrap();
    let (b, layer) = ip_and_api_key_layer(&redis, 3, 1).await;
    let ip = "192.0.2.62";
    let (ip_name, _) = names_in_two_slots(&b, &layer, ip, "k-spent");
    let svc = app(&layer);
    let status = |key: &'static str| {
        let svc = svc.clone();
        async move { svc.oneshot(req_with_key(ip, key)).await.unwrap().status() }
    };
    assert_eq!(status("k-spent").await, StatusCode::OK);
    let tat_after_one = redis.command(&["GET", &ip_name]).unwrap();
    // Ten requests `key` rejects: `ip` admits each, and each charge is refunded.
    for _ in 0..10 {
        assert_eq!(status("k-spent").await, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            redis.command(&["GET", &ip_name]).unwrap(),
            tat_after_one,
            "the ip policy's state moved for a rejected request"
        );
    }
    // `ip` still has two of its three: fresh API keys pass twice, then `ip` rejects.
    for key in ["k-fresh-1", "k-fresh-2"] {
        names_in_two_slots(&b, &layer, ip, key);
        assert_eq!(status(key).await, StatusCode::OK, "{key}");
    }
    assert_eq!(status("k-fresh-3").await, StatusCode::TOO_MANY_REQUESTS);
}

/// A slot whose call fails (here Redis refuses it: the key holds a hash) decides the request
/// per failure mode, and what the other slot charged is given back.
#[tokio::test]
async fn a_slot_that_fails_leaves_the_other_slots_uncharged() {
    let redis = RedisServer::start().unwrap();
    let (b, layer) = ip_and_api_key_layer(&redis, 3, 100).await;
    let ip = "192.0.2.63";
    let (ip_name, key_name) = names_in_two_slots(&b, &layer, ip, "k-broken");
    redis.command(&["HSET", &key_name, "not", "a tat"]).unwrap();
    let svc = app(&layer);
    let before = b.server_errors();
    let res = svc
        .clone()
        .oneshot(req_with_key(ip, "k-broken"))
        .await
        .unwrap();
    // Decided by the local fallback (the default failure mode), which admits it.
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(b.server_errors() - before, 1);
    assert_eq!(
        redis.command(&["EXISTS", &ip_name]).unwrap(),
        "0",
        "the ip policy kept the charge of a request Redis did not decide"
    );
}
