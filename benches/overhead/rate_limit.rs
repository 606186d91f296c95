//! Rate limiting: bare service, our layer (admitted, 429), tower_governor (admitted, 429), keyed
//! checks with 1 and 1,000,000 live keys, the Redis backend beside a plain Redis round trip.

use std::convert::Infallible;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use criterion::{Criterion, Throughput};
use http::{Request, StatusCode};
use tower::{Service, ServiceExt};
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::PeerIpKeyExtractor;
use welcomedly_core::client_ip::ClientIp;
use welcomedly_core::rate_limit::{HeaderMode, LocalBackend, Policy, Quota, RateLimitLayer};

fn router() -> Router {
    Router::new().route("/api/ping", get(|| async { "pong" }))
}

fn request(ip: IpAddr) -> Request<Body> {
    let mut req = Request::get("/api/ping").body(Body::empty()).unwrap();
    // Both layers' key sources: ours reads ClientIp, tower_governor's the peer address.
    req.extensions_mut().insert(ClientIp(ip));
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(ip, 40000)));
    req
}

fn ours(quota: Quota, max_keys: usize) -> Router {
    ours_with(quota, max_keys, HeaderMode::Always)
}

fn ours_with(quota: Quota, max_keys: usize, headers: HeaderMode) -> Router {
    let layer = RateLimitLayer::builder()
        .backend(LocalBackend::new())
        .headers(headers)
        .policy(Policy::new("api", quota).max_keys(max_keys))
        .build()
        .unwrap();
    router().layer(layer)
}

fn governor(per: Duration, burst: u32) -> Router {
    let config = GovernorConfigBuilder::default()
        .period(per)
        .burst_size(burst)
        .key_extractor(PeerIpKeyExtractor)
        .use_headers()
        .finish()
        .unwrap();
    router().layer(GovernorLayer::new(Arc::new(config)))
}

/// Drives `svc` in-process: `ready().call()` on a router whose routes are already finalised.
async fn drive<S>(
    svc: &mut S,
    iters: u64,
    ip: impl Fn(u64) -> IpAddr,
    expect: StatusCode,
) -> Duration
where
    S: Service<Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    let start = Instant::now();
    for i in 0..iters {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(request(ip(i)))
            .await
            .unwrap();
        debug_assert_eq!(res.status(), expect);
        black_box(res);
    }
    start.elapsed()
}

pub(crate) fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let one = |_| IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    // Never exhausted by one key at this pace (1 ns per request, a burst of 1000), and small
    // enough for the precomputed `RateLimit` values, as real quotas are.
    let generous = Quota::per_second(1_000_000_000).with_burst(1000);

    let mut g = c.benchmark_group("rate_limit");
    g.throughput(Throughput::Elements(1));
    let variants: Vec<(&str, Router, StatusCode)> = vec![
        ("bare", router(), StatusCode::OK),
        // What axum's `Router::layer` itself costs (a boxed, cloned route per request), so the
        // layers below can be read against it.
        (
            "bare + no-op layer",
            router().layer(tower::layer::util::Identity::new()),
            StatusCode::OK,
        ),
        (
            "welcomedly admitted",
            ours(generous, 100_000),
            StatusCode::OK,
        ),
        (
            "welcomedly admitted, headers off",
            ours_with(generous, 100_000, HeaderMode::Never),
            StatusCode::OK,
        ),
        (
            "welcomedly 429",
            ours(Quota::per_hour(1), 100_000),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        (
            "tower_governor admitted",
            governor(Duration::from_nanos(1), u32::MAX),
            StatusCode::OK,
        ),
        (
            "tower_governor 429",
            governor(Duration::from_secs(3600), 1),
            StatusCode::TOO_MANY_REQUESTS,
        ),
    ];
    let mut table: Vec<crate::Variant<'_>> = Vec::new();
    for (name, app, expect) in variants {
        // What `into_make_service` does: finalise the routes once, not on every call.
        let mut svc = app.with_state::<()>(());
        // Use the one token of the 429 variants up front.
        rt.block_on(async {
            let _ = ServiceExt::<Request<Body>>::ready(&mut svc)
                .await
                .unwrap()
                .call(request(one(0)))
                .await;
        });
        g.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let mut svc = svc.clone();
                async move { drive(&mut svc, iters, one, expect).await }
            })
        });
        table.push((
            name,
            Box::new(move |iters| {
                let mut svc = svc.clone();
                Box::pin(async move { drive(&mut svc, iters, one, expect).await })
            }),
        ));
    }

    // A keyed check whose store holds 1 live key or 1,000,000 (each request a different one of
    // them, so the lookups miss the CPU caches as they would under a real crowd).
    for keys in [1u32, 1_000_000] {
        let mut svc = ours(Quota::per_hour(1_000_000), keys as usize + 1).with_state::<()>(());
        let ip = move |i: u64| IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + (i as u32 % keys)));
        rt.block_on(async {
            drive(&mut svc, u64::from(keys), ip, StatusCode::OK).await;
        });
        g.bench_function(format!("welcomedly admitted, {keys} live keys"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let mut svc = svc.clone();
                async move { drive(&mut svc, iters, ip, StatusCode::OK).await }
            })
        });
    }
    g.finish();
    crate::interleaved("rate_limit (axum router)", &rt, &table, 1000);

    redis_group(c, &rt);
}

fn redis_group(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    use std::future::Future;
    use std::pin::Pin;
    type Call = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()>>>>;

    let redis = match welcomedly_testkit::RedisServer::start() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rate_limit_redis skipped: {e}");
            return;
        }
    };
    let url = redis.url();
    let conn = rt.block_on(async {
        let client = redis::Client::open(url.as_str()).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    });
    let svc = redis_router(rt, &url, Mode::Plain);
    let leased_svc = redis_router(rt, &url, Mode::Leased);
    let local_first_svc = redis_router(rt, &url, Mode::LocalFirst);
    let script = std::rc::Rc::new(redis::Script::new(
        welcomedly_cluster::rate_limit::ACQUIRE_SCRIPT,
    ));

    let ping: Call = {
        let conn = conn.clone();
        Box::new(move || {
            let mut conn = conn.clone();
            Box::pin(async move {
                let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
                black_box(pong);
            })
        })
    };
    // The same script call the backend makes, straight through redis-rs: the floor for the layer.
    let raw: Call = {
        let conn = conn.clone();
        Box::new(move || {
            let (mut conn, script) = (conn.clone(), script.clone());
            Box::pin(async move {
                let v: Vec<i64> = script
                    .key("wd:rl:{bench}:api")
                    .arg(1000u64)
                    .arg(1_000_000_000u64)
                    .arg(1u64)
                    .arg(0u64)
                    .invoke_async(&mut conn)
                    .await
                    .unwrap();
                black_box(v);
            })
        })
    };
    let sequential = |svc: &Router| -> Call {
        let svc = svc.clone();
        Box::new(move || {
            let mut svc = svc.clone();
            Box::pin(async move {
                drive(&mut svc, 1, hot_ip, StatusCode::OK).await;
            })
        })
    };
    // Anonymous traffic: every request from a new client address (the whole-stack bench's).
    let distinct = |svc: &Router| -> Call {
        let svc = svc.clone();
        let next = std::rc::Rc::new(std::cell::Cell::new(0u32));
        Box::new(move || {
            let mut svc = svc.clone();
            let n = next.get();
            next.set(n.wrapping_add(1));
            Box::pin(async move {
                drive(
                    &mut svc,
                    1,
                    |_| IpAddr::V4(Ipv4Addr::from(0x0B00_0000 + n)),
                    StatusCode::OK,
                )
                .await;
            })
        })
    };
    let ours = sequential(&svc);
    let leased = sequential(&leased_svc);
    let variants: [(&str, Call); 6] = [
        ("redis PING round trip", ping),
        ("raw EVALSHA of the rate-limit script", raw),
        ("welcomedly redis backend, per request", ours),
        (
            "welcomedly redis backend, hot key leased, per request",
            leased,
        ),
        (
            "welcomedly redis backend, distinct keys, per request",
            distinct(&svc),
        ),
        (
            "welcomedly redis backend, distinct keys, local-first",
            distinct(&local_first_svc),
        ),
    ];

    let mut g = c.benchmark_group("rate_limit_redis");
    g.throughput(Throughput::Elements(1));
    for (name, call) in &variants {
        g.bench_function(*name, |b| b.to_async(rt).iter(call));
    }
    g.finish();

    // One hot key, 64 requests at once (a busy user behind one instance): coalesced script
    // calls (the default) against a leased policy. Time per request = the time shown / 64.
    let concurrent = |svc: &Router| -> Call {
        let svc = svc.clone();
        Box::new(move || {
            let svc = svc.clone();
            Box::pin(async move {
                let all = (0..HOT_CONCURRENCY).map(|_| {
                    let mut svc = svc.clone();
                    async move { drive(&mut svc, 1, hot_ip, StatusCode::OK).await }
                });
                black_box(futures_util::future::join_all(all).await);
            })
        })
    };
    let hot: [(&str, Call); 2] = [
        ("redis hot key coalesced", concurrent(&svc)),
        ("redis hot key leased", concurrent(&leased_svc)),
    ];
    let mut g = c.benchmark_group("rate_limit_redis_hot_key");
    g.throughput(Throughput::Elements(HOT_CONCURRENCY));
    for (name, call) in &hot {
        g.bench_function(*name, |b| b.to_async(rt).iter(call));
    }
    g.finish();

    // Criterion's medians of separate runs drift with the box's load; alternating the variants
    // in short slices within one process and comparing percentiles is steadier.
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    rt.block_on(async {
        for _ in 0..200 {
            for (i, (_, call)) in variants.iter().enumerate() {
                for _ in 0..25 {
                    let t = Instant::now();
                    call().await;
                    samples[i].push(t.elapsed());
                }
            }
        }
    });
    eprintln!("\nrate_limit_redis, interleaved (5000 calls each): p10 / p50 / p90");
    for ((name, _), s) in variants.iter().zip(&mut samples) {
        s.sort();
        let p = |q: usize| s[s.len() * q / 100];
        eprintln!(
            "  {name:<40} {:>9.1?} {:>9.1?} {:>9.1?}",
            p(10),
            p(50),
            p(90)
        );
    }
    drop(redis);
}

/// Requests at once in the hot-key group.
const HOT_CONCURRENCY: u64 = 64;

fn hot_ip(_: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))
}

/// How the bench's Redis backend shares the `api` policy.
#[derive(Clone, Copy)]
enum Mode {
    /// Every request decided in Redis (coalesced).
    Plain,
    /// Leased local shares of hot keys.
    Leased,
    /// Local-first shares of every key.
    LocalFirst,
}

/// The `api` policy (never exhausted at a bench's pace) on the Redis backend at `url`, shared
/// as `mode` says.
fn redis_router(rt: &tokio::runtime::Runtime, url: &str, mode: Mode) -> Router {
    use welcomedly_cluster::rate_limit::{RedisBackend, RedisRateLimitConfig};
    let backend = rt.block_on(async {
        let link = welcomedly_redis::Link::connect(welcomedly_redis::LinkConfig::new(url))
            .await
            .unwrap();
        let mut config = RedisRateLimitConfig::default();
        config.budget = Duration::from_secs(1);
        match mode {
            Mode::Plain => {}
            Mode::Leased => config = config.lease("api"),
            Mode::LocalFirst => config = config.local_first("api"),
        }
        RedisBackend::new(&link, config).await.unwrap()
    });
    let layer = RateLimitLayer::builder()
        .backend(backend)
        .policy(Policy::new(
            "api",
            Quota::per_second(1_000_000_000).with_burst(1_000_000_000),
        ))
        .build()
        .unwrap();
    router().layer(layer).with_state::<()>(())
}

/// With `OVERHEAD_CALLGRIND_RL=coalesced` (or `leased`; or `distinct` / `local-first` for a new
/// client address per request, without and with local-first shares) the bench only drives one hot key's
/// requests through the Redis backend (a `redis-server` of its own), [`CALLGRIND_RL_REQUESTS`]
/// times inside [`callgrind_rl_requests`] after a warm-up, then exits: for counting the app's
/// instructions per request (Redis's are not counted), with and without a lease:
///
/// ```text
/// OVERHEAD_CALLGRIND_RL=leased valgrind --tool=callgrind \
///     --toggle-collect='*callgrind_rl_requests*' target/release/deps/overhead-<hash> --bench
/// ```
///
/// Instructions per request = the total `Ir` / `CALLGRIND_RL_REQUESTS`.
pub(crate) fn callgrind_mode() {
    let Ok(variant) = std::env::var("OVERHEAD_CALLGRIND_RL") else {
        return;
    };
    // `distinct`: anonymous traffic, a new client address per request (local-first shares).
    let (mode, key): (Mode, fn(u64) -> IpAddr) = match variant.as_str() {
        "leased" => (Mode::Leased, hot_ip),
        "coalesced" => (Mode::Plain, hot_ip),
        "distinct" => (Mode::Plain, distinct_ip),
        "local-first" => (Mode::LocalFirst, distinct_ip),
        other => panic!(
            "OVERHEAD_CALLGRIND_RL takes coalesced, leased, distinct or local-first, not {other:?}"
        ),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = welcomedly_testkit::RedisServer::start().unwrap();
    let mut svc = redis_router(&rt, &redis.url(), mode);
    // Warm up: the connection, the script cache, the first lease, allocator pools.
    rt.block_on(drive(
        &mut svc,
        1000,
        |i| key(i + 1_000_000),
        StatusCode::OK,
    ));
    callgrind_rl_requests(&rt, &mut svc, key);
    eprintln!("callgrind: {CALLGRIND_RL_REQUESTS} requests, {variant}");
    drop(redis);
    std::process::exit(0);
}

const CALLGRIND_RL_REQUESTS: u64 = 2000;

#[inline(never)]
fn callgrind_rl_requests(rt: &tokio::runtime::Runtime, svc: &mut Router, key: fn(u64) -> IpAddr) {
    black_box(rt.block_on(drive(svc, CALLGRIND_RL_REQUESTS, key, StatusCode::OK)));
}

fn distinct_ip(i: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0C00_0000u32.wrapping_add(i as u32)))
}

/// The layer alone, on a plain tower service (no axum router around it): what the layer itself
/// costs per request.
pub(crate) fn bench_tower(c: &mut Criterion) {
    use http_body_util::Full;
    type B = Full<bytes::Bytes>;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A response as a handler makes it, with a content type: the layer's headers join an
    // existing header map instead of allocating a new one.
    let inner = tower::service_fn(|_req: Request<B>| async {
        let mut res = http::Response::new(B::from("pong"));
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok::<_, Infallible>(res)
    });
    let layer = |headers: HeaderMode, quota: Quota| {
        RateLimitLayer::builder()
            .backend(LocalBackend::new())
            .headers(headers)
            .policy(Policy::new("api", quota))
            .build()
            .unwrap()
    };
    let generous = Quota::per_second(1_000_000_000).with_burst(1000);
    // Too many distinct `RateLimit` values to precompute: each response formats its own.
    let huge = Quota::per_second(1_000_000_000).with_burst(1_000_000_000);
    let req = || {
        let mut req = Request::get("/api/ping").body(B::default()).unwrap();
        req.extensions_mut()
            .insert(ClientIp(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))));
        req
    };
    let mut g = c.benchmark_group("rate_limit_tower");
    g.throughput(Throughput::Elements(1));
    let mut table: Vec<crate::Variant<'_>> = Vec::new();
    macro_rules! run {
        ($name:expr, $svc:expr) => {{
            let svc = $svc;
            let timed = svc.clone();
            table.push((
                $name,
                Box::new(move |iters| {
                    let mut svc = timed.clone();
                    Box::pin(async move {
                        let start = Instant::now();
                        for _ in 0..iters {
                            let res = svc.ready().await.unwrap().call(req()).await.unwrap();
                            black_box(res);
                        }
                        start.elapsed()
                    })
                }),
            ));
            g.bench_function($name, |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let mut svc = svc.clone();
                    async move {
                        let start = Instant::now();
                        for _ in 0..iters {
                            let res = svc.ready().await.unwrap().call(req()).await.unwrap();
                            black_box(res);
                        }
                        start.elapsed()
                    }
                })
            });
        }};
    }
    run!("bare", inner);
    run!(
        "welcomedly admitted",
        tower::ServiceBuilder::new()
            .layer(layer(HeaderMode::Always, generous))
            .service(inner)
    );
    run!(
        "welcomedly admitted, burst 10^9 (RateLimit formatted)",
        tower::ServiceBuilder::new()
            .layer(layer(HeaderMode::Always, huge))
            .service(inner)
    );
    run!(
        "welcomedly admitted, headers off",
        tower::ServiceBuilder::new()
            .layer(layer(HeaderMode::Never, generous))
            .service(inner)
    );
    let limited = tower::ServiceBuilder::new()
        .layer(layer(HeaderMode::Always, Quota::per_hour(1)))
        .service(inner);
    rt.block_on(async {
        let _ = limited.clone().oneshot(req()).await;
    });
    run!("welcomedly 429", limited);
    g.finish();
    crate::interleaved("rate_limit_tower (plain tower service)", &rt, &table, 1000);
}
