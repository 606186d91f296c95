//! Sessions: bare router, our layer and tower-sessions 0.14 (memory stores) side by side —
//! request without a cookie, request reading one value, request writing one value — then our
//! Redis store beside a bare Redis round trip.
//!
//! Measured 2026-12-01 on the 2-core VM (interleaved p50, ns per request, overhead over the bare
//! router at 582 ns; a no-op layer costs +85 by axum's boxing alone): no cookie welcomedly +321
//! / tower-sessions +912; cookie, untouched +545 / +1392 (building the cookie header is in the
//! loop); read one value +941 / +2128; write one value +1408 / +3535. Redis (µs, p10 / p50): PING
//! 19.6 / 20.0, HGETALL 21.7 / 21.9, the raw load script 27.1 / 27.9, an authed read through the
//! layer 32.8 / 33.6, a write (load + write) 64.3 / 65.8.
//!
//! With the session cache (2026-12-07, same VM under a load average of ~12 from parallel
//! builds; interleaved p10 / p50 / p90, µs): an authed read answered from the cache 3.0 / 3.1 /
//! 3.4 against 35.0 / 36.1 / 52.5 uncached (one `EVALSHA`), no cookie 1.0 / 1.0 / 1.2, a PING
//! round trip 20.0 / 20.4 / 22.7.
//!
//! tower-sessions-redis-store 0.16 (on fred) is not benched: it would add the whole fred client
//! to the dev build for one row; its costs are the figures (one GET per authed read,
//! two round trips once the idle expiry slides).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use criterion::{Criterion, Throughput};
use http::{Request, StatusCode, header};
use tower::{Service, ServiceExt};
use welcomedly_cluster::session::{
    RedisSessionConfig, Session, SessionConfig, SessionLayer, SessionStore,
};

type Svc = axum::routing::RouterIntoService<Body>;

fn ours_router(layer: SessionLayer) -> Router {
    let counter = Arc::new(AtomicU64::new(0));
    Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route(
            "/seed",
            get(|s: Session| async move {
                s.insert("user", "alice").await.unwrap();
                "ok"
            }),
        )
        .route(
            "/read",
            get(|s: Session| async move { s.get::<String>("user").await.unwrap().unwrap() }),
        )
        .route(
            "/write",
            get(move |s: Session| {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                async move {
                    s.insert("n", &n).await.unwrap();
                    "ok"
                }
            }),
        )
        .layer(layer)
}

fn peer_router() -> Router {
    use tower_sessions::{MemoryStore, SessionManagerLayer};
    let counter = Arc::new(AtomicU64::new(0));
    Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route(
            "/seed",
            get(
                |Extension(s): Extension<tower_sessions::Session>| async move {
                    s.insert("user", "alice").await.unwrap();
                    "ok"
                },
            ),
        )
        .route(
            "/read",
            get(
                |Extension(s): Extension<tower_sessions::Session>| async move {
                    s.get::<String>("user").await.unwrap().unwrap()
                },
            ),
        )
        .route(
            "/write",
            get(move |Extension(s): Extension<tower_sessions::Session>| {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                async move {
                    s.insert("n", n).await.unwrap();
                    "ok"
                }
            }),
        )
        .layer(SessionManagerLayer::new(MemoryStore::default()).with_secure(false))
}

fn request(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut req = Request::get(path);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    req.body(Body::empty()).unwrap()
}

async fn call(svc: &mut Svc, path: &str, cookie: Option<&str>) -> http::Response<Body> {
    ServiceExt::<Request<Body>>::ready(svc)
        .await
        .unwrap()
        .call(request(path, cookie))
        .await
        .unwrap()
}

/// A session cookie (`name=value`) with `user` set, made through `/seed`.
async fn seed(svc: &mut Svc) -> String {
    let res = call(svc, "/seed", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = res.headers()[header::SET_COOKIE].to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

async fn drive(svc: &mut Svc, iters: u64, path: &str, cookie: Option<&str>) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let res = call(svc, path, cookie).await;
        debug_assert_eq!(res.status(), StatusCode::OK);
        black_box(res);
    }
    start.elapsed()
}

pub(crate) fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ours_layer = SessionLayer::new(SessionStore::memory(), SessionConfig::default()).unwrap();
    let bare: Svc = Router::new()
        .route("/ping", get(|| async { "pong" }))
        .with_state::<()>(())
        .into_service();
    // What axum charges any layer (its per-layer boxing), to tell ours apart from it.
    let noop: Svc = Router::new()
        .route("/ping", get(|| async { "pong" }))
        .layer(tower::layer::util::Identity::new())
        .with_state::<()>(())
        .into_service();
    let mut ours: Svc = ours_router(ours_layer).with_state::<()>(()).into_service();
    let mut peer: Svc = peer_router().with_state::<()>(()).into_service();
    let (ours_cookie, peer_cookie) =
        rt.block_on(async { (seed(&mut ours).await, seed(&mut peer).await) });
    let ours_cookie: &'static str = Box::leak(ours_cookie.into_boxed_str());
    let peer_cookie: &'static str = Box::leak(peer_cookie.into_boxed_str());

    let variants: Vec<(&str, Svc, &str, Option<&'static str>)> = vec![
        ("bare router, no cookie", bare, "/ping", None),
        ("bare router + no-op layer", noop, "/ping", None),
        ("welcomedly memory, no cookie", ours.clone(), "/ping", None),
        (
            "tower-sessions memory, no cookie",
            peer.clone(),
            "/ping",
            None,
        ),
        (
            "welcomedly memory, cookie, untouched",
            ours.clone(),
            "/ping",
            Some(ours_cookie),
        ),
        (
            "tower-sessions memory, cookie, untouched",
            peer.clone(),
            "/ping",
            Some(peer_cookie),
        ),
        (
            "welcomedly memory, read one value",
            ours.clone(),
            "/read",
            Some(ours_cookie),
        ),
        (
            "tower-sessions memory, read one value",
            peer.clone(),
            "/read",
            Some(peer_cookie),
        ),
        (
            "welcomedly memory, write one value",
            ours,
            "/write",
            Some(ours_cookie),
        ),
        (
            "tower-sessions memory, write one value",
            peer,
            "/write",
            Some(peer_cookie),
        ),
    ];

    let mut g = c.benchmark_group("sessions");
    g.throughput(Throughput::Elements(1));
    let mut table: Vec<crate::Variant<'_>> = Vec::new();
    for (name, svc, path, cookie) in variants {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let mut svc = svc.clone();
                async move { drive(&mut svc, iters, path, cookie).await }
            })
        });
        table.push((
            name,
            Box::new(move |iters| {
                let mut svc = svc.clone();
                Box::pin(async move { drive(&mut svc, iters, path, cookie).await })
            }),
        ));
    }
    g.finish();
    crate::interleaved("sessions (axum router, memory stores)", &rt, &table, 500);

    redis_group(c, &rt);
}

fn redis_group(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    use std::future::Future;
    use std::pin::Pin;

    type Call = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()>>>>;

    let redis = match welcomedly_testkit::RedisServer::start() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sessions_redis skipped: {e}");
            return;
        }
    };
    let url = redis.url();
    // Two instances on one Redis: without the session cache (every read a round trip) and
    // with it (a read of a cached session is answered from memory).
    let (conn, store, cached_store) = rt.block_on(async {
        let client = redis::Client::open(url.as_str()).unwrap();
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        let store = |cache_entries: usize| {
            let url = url.clone();
            async move {
                let link = welcomedly_redis::Link::connect(welcomedly_redis::LinkConfig::new(url))
                    .await
                    .unwrap();
                let mut config = RedisSessionConfig::default();
                config.budget = Duration::from_secs(1);
                config.cache_entries = cache_entries;
                welcomedly_cluster::session::RedisSessionStore::new(&link, config)
                    .await
                    .unwrap()
            }
        };
        (conn, store(0).await, store(10_000).await)
    });
    let store_key = store.clone();
    let layer = SessionLayer::new(store, SessionConfig::default()).unwrap();
    let mut svc: Svc = ours_router(layer).with_state::<()>(()).into_service();
    let cookie: &'static str = Box::leak(rt.block_on(seed(&mut svc)).into_boxed_str());
    let cached_stats = cached_store.clone();
    let cached_layer = SessionLayer::new(cached_store, SessionConfig::default()).unwrap();
    let mut cached_svc: Svc = ours_router(cached_layer)
        .with_state::<()>(())
        .into_service();
    let cached_cookie: &'static str = rt.block_on(async {
        while !cached_stats.cache_is_tracking() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Box::leak(seed(&mut cached_svc).await.into_boxed_str())
    });

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
    // The same script our load sends, on the seeded session's key, without the layer.
    let key = store_key.key_of(cookie.split_once('=').unwrap().1).unwrap();
    let key: &'static str = Box::leak(key.into_boxed_str());
    let script = std::rc::Rc::new(redis::Script::new(welcomedly_cluster::session::LOAD_SCRIPT));
    let raw_load: Call = {
        let conn = conn.clone();
        Box::new(move || {
            let (mut conn, script) = (conn.clone(), script.clone());
            Box::pin(async move {
                let v: Option<Vec<String>> = script
                    .key(key)
                    .arg(1_800_000u64)
                    .arg(1u64)
                    .invoke_async(&mut conn)
                    .await
                    .unwrap();
                black_box(v);
            })
        })
    };
    let hgetall: Call = {
        let conn = conn.clone();
        Box::new(move || {
            let mut conn = conn.clone();
            Box::pin(async move {
                let v: Vec<String> = redis::cmd("HGETALL")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                black_box(v);
            })
        })
    };
    let route = |svc: &Svc, path: &'static str, cookie: Option<&'static str>| -> Call {
        let svc = svc.clone();
        Box::new(move || {
            let mut svc = svc.clone();
            Box::pin(async move {
                drive(&mut svc, 1, path, cookie).await;
            })
        })
    };
    let variants: [(&str, Call); 7] = [
        ("redis PING round trip", ping),
        ("redis HGETALL of the session", hgetall),
        ("raw EVALSHA of the session load script", raw_load),
        ("welcomedly redis, no cookie", route(&svc, "/ping", None)),
        (
            "welcomedly redis, read one value",
            route(&svc, "/read", Some(cookie)),
        ),
        (
            "welcomedly redis, read one value, cached",
            route(&cached_svc, "/read", Some(cached_cookie)),
        ),
        (
            "welcomedly redis, write one value",
            route(&svc, "/write", Some(cookie)),
        ),
    ];

    let mut g = c.benchmark_group("sessions_redis");
    g.throughput(Throughput::Elements(1));
    for (name, call) in &variants {
        g.bench_function(*name, |b| b.to_async(rt).iter(call));
    }
    g.finish();

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
    eprintln!("\nsessions_redis, interleaved (5000 calls each): p10 / p50 / p90");
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
    eprintln!("  session cache: {:?}", cached_stats.cache_stats());
    drop(redis);
}
