//! Issue 20, "the same outage also locks users out": correct logins through a Redis outage and
//! restart, against the call-center example run as processes on a real Redis (and the Redis
//! rate-limit backend directly).
//!
//! Every client address is set with `X-Forwarded-For` from a trusted proxy (127.0.0.1).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use support::call_center::*;
use tower::{ServiceExt, service_fn};
use welcomedly_cluster::rate_limit::{RedisBackend, RedisRateLimitConfig};
use welcomedly_core::client_ip::ClientIp;
use welcomedly_core::rate_limit::{Policy, Quota, RateLimitLayer};
use welcomedly_redis::{Backoff, Link, LinkConfig};
use welcomedly_testkit::RedisServer;

const PASSWORD: &str = "welcomedly-demo";

fn login_from(app: &Instance, address: &str, user: &str, password: &str) -> Response<()> {
    let body = format!(r#"{{"username":"{user}","password":"{password}"}}"#);
    let r = app.request_with(
        "POST",
        "/auth/login",
        &[
            ("content-type", "application/json"),
            ("x-forwarded-for", address),
        ],
        &body,
    );
    Response::builder().status(r.status).body(()).unwrap()
}

fn status(app: &Instance, address: &str, user: &str, password: &str) -> u16 {
    login_from(app, address, user, password).status().as_u16()
}

/// Whether the instance's rate limits are decided in Redis again (the limiter's gauge at
/// `/metrics`; `/health` names Redis once, as the link's `redis` check).
fn rate_limits_on_redis(app: &Instance) -> bool {
    app.request("GET", "/metrics", None)
        .body
        .lines()
        .any(|l| l.starts_with("welcomedly_rate_limit_backend_degraded") && l.ends_with(" 0"))
}

/// Three instances of the example on `redis`, as `cargo run --example cluster` runs them, once
/// each has seen the others' heartbeats (membership), so each instance's fallback takes a
/// third of every limit.
fn cluster(redis: &RedisServer) -> Vec<Instance> {
    let apps: Vec<Instance> = ["cc-a", "cc-b", "cc-c"]
        .iter()
        .map(|id| {
            Instance::start(&[
                ("REDIS_URL", redis.url()),
                ("WELCOMEDLY_INSTANCE_ID", (*id).to_owned()),
                ("WELCOMEDLY_INSTANCES", "3".to_owned()),
                ("TRUSTED_PROXIES", "127.0.0.1/32".to_owned()),
                ("WELCOMEDLY_SESSION_SECURE", "false".to_owned()),
            ])
        })
        .collect();
    for app in &apps {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !app
            .request("GET", "/metrics", None)
            .body
            .lines()
            .any(|l| l.starts_with("welcomedly_rate_limit_live_instances") && l.ends_with(" 3"))
        {
            assert!(
                Instant::now() < deadline,
                "membership never saw 3 instances"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    apps
}

/// Redis killed, then restarted: correct logins from one address on every instance are answered
/// 503 (no session can be stored) or 200, never 429; once Redis answers again every instance logs
/// the user in; the 503s spent none of the login budgets (the per-address budget of 20 logins a
/// minute still has room for the wrong passwords below, and the failed-login budget is whole: 5
/// wrong passwords are answered 401 before the first 429).
///
/// Before the fix: 503, then 429 for the rest of the outage and after it (the fallback's
/// reservation of the failed-login budget, refunded to the wrong store).
#[test]
fn correct_logins_are_never_refused_through_a_redis_restart() {
    let redis = RedisServer::start().unwrap();
    let apps = cluster(&redis);
    let ip = "198.51.100.20";
    for app in &apps {
        assert_eq!(status(app, ip, "agent", PASSWORD), 200);
    }
    redis.kill().unwrap();
    // Every instance, several times (more than the fallback's local share of every login
    // budget), one after the other, as a user retrying would.
    let mut during = Vec::new();
    for _ in 0..8 {
        for app in &apps {
            during.push(status(app, ip, "agent", PASSWORD));
        }
    }
    assert!(
        during.iter().all(|s| *s == 503),
        "correct logins while Redis is down: {during:?}"
    );
    redis.restart().unwrap();
    let restarted = Instant::now();
    let mut after = Vec::new();
    for app in &apps {
        loop {
            let s = status(app, ip, "agent", PASSWORD);
            after.push(s);
            if s == 200 {
                break;
            }
            assert_ne!(
                s, 429,
                "a correct login refused after the restart: {after:?}"
            );
            assert!(
                restarted.elapsed() < Duration::from_secs(20),
                "no successful login within 20 s of the restart: {after:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Every limiter back on Redis (its reconnect backs off a few seconds; until then each
    // instance decides on its local share, where a third of the failed-login budget is left).
    for app in &apps {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !rate_limits_on_redis(app) {
            assert!(
                Instant::now() < deadline,
                "the limiter never returned to Redis"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // The failed-login budget (5 a minute per address and account) is whole, and holds.
    let wrong: Vec<u16> = (0..6)
        .map(|i| status(&apps[i % 3], ip, "agent", "wrong"))
        .collect();
    assert_eq!(wrong, [401, 401, 401, 401, 401, 429], "after {after:?}");
    // Still the right password works from there for the other account.
    assert_eq!(status(&apps[0], ip, "supervisor", PASSWORD), 200);
}

/// While Redis is down, the failed-login limit still holds on each instance (its local share),
/// a double click of a correct login is not refused (before: the share of 5 failures over 3
/// instances was 1, held by the first click's reservation), and correct logins from another address, answered 503 as no session can be stored, spend
/// nothing (before: the 503s were charged to the per-address login budget, 429 from the 7th).
#[test]
fn the_failed_login_limit_holds_during_the_outage() {
    let redis = RedisServer::start().unwrap();
    let apps = cluster(&redis);
    redis.kill().unwrap();
    let ip = "198.51.100.30";
    let wrong: Vec<u16> = (0..4)
        .map(|_| status(&apps[0], ip, "agent", "wrong"))
        .collect();
    assert_eq!(wrong[0], 401, "{wrong:?}");
    assert!(
        wrong.contains(&429),
        "no limit during the outage: {wrong:?}"
    );
    // A double click: two correct logins at once from a third address, on one instance. Each
    // holds a reservation of the failed-login budget while its password is checked; the local
    // share of that budget (5 / 3 instances) must hold both.
    let clicks = std::sync::Barrier::new(2);
    let both: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    clicks.wait();
                    status(&apps[0], "198.51.100.32", "supervisor", PASSWORD)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(both, [503, 503], "a double click during the outage");
    // Another address, the right password, retried more often than the local share of the
    // per-address login budget (20 / 3): never refused, as no session could be stored (503).
    let correct: Vec<u16> = (0..8)
        .map(|_| status(&apps[0], "198.51.100.31", "agent", PASSWORD))
        .collect();
    assert_eq!(correct, [503; 8]);
    // The wrong passwords are still refused.
    assert_eq!(status(&apps[0], ip, "agent", "wrong"), 429);
    redis.restart().unwrap();
}

/// A request admitted by the local fallback while Redis was down, and answered after Redis came
/// back, gives its reservation back to the fallback that charged it (before: to Redis, where
/// nothing was charged, so the fallback's share stayed spent and the next outage refused the
/// client). Checked on the backend directly: one failed-login policy of burst 1 on the
/// fallback.
#[tokio::test]
async fn a_reservation_is_refunded_where_it_was_charged() {
    let redis = RedisServer::start().unwrap();
    let mut link = LinkConfig::new(redis.url());
    link.min_outage = Duration::from_millis(50);
    link.backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(100));
    link.failure_threshold = 1;
    let link = Link::connect(link).await.unwrap();
    let mut config = RedisRateLimitConfig::default();
    config.budget = Duration::from_millis(300);
    let backend = RedisBackend::new(&link, config).await.unwrap();
    let layer = RateLimitLayer::builder()
        .backend(backend.clone())
        .policy(
            Policy::new("login-failures", Quota::per_minute(1))
                .charge_only_statuses([StatusCode::UNAUTHORIZED]),
        )
        .build()
        .unwrap();
    // The status the service answers next; the service waits until told, so Redis can come back
    // while a request is in flight.
    let next = Arc::new(AtomicU16::new(200));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let svc = {
        let (next, gate) = (next.clone(), gate.clone());
        tower::ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(move |_req: Request<String>| {
                let (next, gate) = (next.clone(), gate.clone());
                async move {
                    gate.acquire().await.unwrap().forget();
                    let mut res = Response::new(String::new());
                    *res.status_mut() = StatusCode::from_u16(next.load(Ordering::SeqCst)).unwrap();
                    Ok::<_, Infallible>(res)
                }
            }))
    };
    let req = || {
        let mut r = Request::post("/auth/login").body(String::new()).unwrap();
        r.extensions_mut()
            .insert(ClientIp("192.0.2.44".parse().unwrap()));
        r
    };
    redis.kill().unwrap();
    // Until the backend has noticed the outage, requests fail on the dead connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !backend.is_degraded() {
        assert!(Instant::now() < deadline, "the outage was never noticed");
        gate.add_permits(1);
        let _ = svc.clone().oneshot(req()).await.unwrap();
    }
    // Charged on the fallback, answered (503) once Redis is back.
    next.store(503, Ordering::SeqCst);
    let in_flight = tokio::spawn(svc.clone().oneshot(req()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend.is_degraded() {
        assert!(Instant::now() < deadline, "Redis never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.add_permits(1);
    assert_eq!(in_flight.await.unwrap().unwrap().status(), 503);
    // The next outage: the fallback's share (one request) must be whole again.
    redis.kill().unwrap();
    next.store(200, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        gate.add_permits(1);
        let s = svc.clone().oneshot(req()).await.unwrap().status();
        assert_ne!(
            s,
            StatusCode::TOO_MANY_REQUESTS,
            "the fallback kept a reservation that was refunded to Redis"
        );
        if backend.is_degraded() {
            break;
        }
        assert!(Instant::now() < deadline, "the outage was never noticed");
    }
    gate.add_permits(1);
    let s = svc.clone().oneshot(req()).await.unwrap().status();
    assert_eq!(s, StatusCode::OK, "refused on the fallback");
}
