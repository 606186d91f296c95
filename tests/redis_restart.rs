//! The call-center example on a real Redis that is stopped and started again: the first login
//! on every instance after Redis answers succeeds (the session store runs on the shared link,
//! which notices the closed connection when it closes and reconnects in the background), and
//! the connections each instance holds (`CLIENT LIST`); and after a crash, the first request of
//! every Redis-backed component on every instance succeeds.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use support::call_center::*;
use welcomedly_testkit::RedisServer;

const GOOD: &str = r#"{"username":"agent","password":"welcomedly-demo"}"#;

/// Client connections Redis holds, the `CLIENT LIST` connection itself excluded.
fn connections(redis: &RedisServer) -> usize {
    redis
        .command(&["CLIENT", "LIST"])
        .unwrap()
        .lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .count()
}

#[test]
fn after_redis_restarts_the_first_login_on_every_instance_succeeds() {
    let redis = RedisServer::start().unwrap();
    let envs = |id: &str| {
        vec![
            ("REDIS_URL", redis.url()),
            ("WELCOMEDLY_INSTANCES", "2".to_owned()),
            ("WELCOMEDLY_INSTANCE_ID", id.to_owned()),
        ]
    };
    let a = Instance::start(&envs("cc-a"));
    let one = connections(&redis);
    let b = Instance::start(&envs("cc-b"));
    for app in [&a, &b] {
        let r = app.request("POST", "/auth/login", Some(GOOD));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let two = connections(&redis);
    eprintln!("Redis connections: one instance {one}, two instances {two}");
    // The link's multiplexed connection, its one pub/sub connection, one dedicated
    // connection for the board's durable stream reader (`XREAD BLOCK`), and the session
    // cache's tracking connection (RESP3 invalidation pushes). Before the link: 8.
    assert_eq!(one, 4, "connections of one instance");
    assert_eq!(two, 2 * one, "connections of two instances");

    redis.stop().unwrap();
    // Nobody calls while Redis is down: the instances must notice the close by themselves.
    std::thread::sleep(Duration::from_millis(300));
    redis.restart().unwrap(); // returns once Redis answers

    for app in [&a, &b] {
        let r = app.request("POST", "/auth/login", Some(GOOD));
        assert_eq!(
            r.status,
            200,
            "the first login on {} after Redis answers again: {}",
            r.header("x-instance-id").unwrap_or("?"),
            r.body
        );
    }
    let health: serde_json::Value =
        serde_json::from_str(&a.request("GET", "/health", None).body).unwrap();
    assert_eq!(health["checks"]["redis"]["status"], "healthy", "{health}");
    assert!(health["checks"].get("sessions").is_none(), "{health}");
    let metrics = a.request("GET", "/metrics", None).body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("welcomedly_redis_connected") && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains("welcomedly_redis_connections_total"),
        "{metrics}"
    );
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

const ADMIN_TOKEN: &str = "restart-test-admin-token";

/// The `r` (remaining) of the `api` policy's `RateLimit` header.
fn remaining(r: &Response) -> u64 {
    let value = r
        .header("ratelimit")
        .unwrap_or_else(|| panic!("no RateLimit header: {:?}", r.headers));
    value
        .split(';')
        .find_map(|p| p.trim().strip_prefix("r="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no r= in RateLimit: {value}"))
}

/// Polls `f` every 20 ms until it holds or `within` has passed.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Redis SIGKILLed and started again on the same port (empty, as after a crash without
/// persistence): from the moment it answers, the first request of every kind on every instance
/// succeeds — the limiter decides in Redis again (the count is shared across instances), a login
/// writes its session, a status change reaches the other instance through the bus, a flag
/// written on one instance reaches the other. Nothing calls while Redis is down: each instance
/// must notice by itself.
#[test]
fn after_a_redis_crash_the_first_request_of_every_component_succeeds_on_every_instance() {
    let redis = RedisServer::start().unwrap();
    let envs = |id: &str| {
        vec![
            ("REDIS_URL", redis.url()),
            ("WELCOMEDLY_INSTANCE_ID", id.to_owned()),
            ("TRUSTED_PROXIES", "127.0.0.1".to_owned()),
            ("WELCOMEDLY_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ]
    };
    let a = Instance::start(&envs("cc-a"));
    let b = Instance::start(&envs("cc-b"));
    let auth = format!("Bearer {ADMIN_TOKEN}");
    // A flag definition to write back after the crash (the crash empties Redis).
    let seeded = a.request_with(
        "GET",
        "/admin/flags/campaign-stats",
        &[("authorization", &auth)],
        "",
    );
    assert_eq!(seeded.status, 200, "{}", seeded.body);
    for app in [&a, &b] {
        let r = app.request("POST", "/auth/login", Some(GOOD));
        assert_eq!(r.status, 200, "{}", r.body);
    }

    // The `api` limit takes local-first shares (200 a minute: 3 per instance and client, spent
    // in memory): each client spends its share here first, so its next request needs Redis.
    let clients = [(&a, "198.51.100.77"), (&b, "198.51.100.78")];
    for (app, client) in clients {
        for _ in 0..3 {
            let r = app.request_with("GET", "/api/ping", &[("x-forwarded-for", client)], "");
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }

    redis.kill().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    redis.restart().unwrap(); // returns once Redis answers

    // The limiter: each instance's first request is decided in Redis, not by the local
    // fallback. The crash emptied Redis, so the client's key in Redis now exists only if
    // Redis decided; and the pool (200 less the instances' shares: 194, or 197 while an
    // instance counts itself alone) leaves 193 or 196, where the fallback (200 / 2 live
    // instances) would leave 99.
    for (app, client) in clients {
        let r = app.request_with("GET", "/api/ping", &[("x-forwarded-for", client)], "");
        assert_eq!(
            r.status,
            200,
            "the first ping on {:?}: {}",
            r.header("x-instance-id"),
            r.body
        );
        assert!(
            [193, 196].contains(&remaining(&r)),
            "the first request on {:?} after the crash was not decided in Redis: {:?}",
            r.header("x-instance-id"),
            r.header("ratelimit")
        );
    }
    let limiter_keys = redis.command(&["KEYS", "wd:rl:*"]).unwrap();
    assert_eq!(
        limiter_keys.lines().filter(|l| l.contains(":api")).count(),
        2,
        "one pool key per client in Redis: {limiter_keys}"
    );

    // Sessions: the first login on each instance.
    let cookie_a = session_cookie(&{
        let r = a.request("POST", "/auth/login", Some(GOOD));
        assert_eq!(r.status, 200, "the first login on a: {}", r.body);
        r
    });
    let r = b.request("POST", "/auth/login", Some(GOOD));
    assert_eq!(r.status, 200, "the first login on b: {}", r.body);

    // The bus: a status change on a reaches b's board.
    let set = a.request_with(
        "PUT",
        "/api/agents/me/status",
        &[("cookie", &cookie_a), ("content-type", "application/json")],
        r#"{"status":"on_call"}"#,
    );
    assert_eq!(
        set.status, 200,
        "the first status change on a: {}",
        set.body
    );
    assert!(
        eventually(Duration::from_secs(3), || {
            let board = b.request_with("GET", "/api/agents", &[("cookie", &cookie_a)], "");
            board.status == 200 && board.body.contains(r#""status":"on_call""#)
        }),
        "b never saw a's status change: {}",
        b.request_with("GET", "/api/agents", &[("cookie", &cookie_a)], "")
            .body
    );

    // Flags: a flag written through a's admin API after the crash reaches b.
    let put = a.request_with(
        "PUT",
        "/admin/flags/after-the-crash",
        &[
            ("authorization", &auth),
            ("if-none-match", "*"),
            ("content-type", "application/json"),
        ],
        &seeded.body,
    );
    assert!(
        put.status == 200 || put.status == 201,
        "the first flag write on a: {} {}",
        put.status,
        put.body
    );
    assert!(
        eventually(Duration::from_secs(3), || {
            b.request("GET", "/api/flags", None)
                .body
                .contains("after-the-crash")
        }),
        "b never saw the flag written on a: {}",
        b.request("GET", "/api/flags", None).body
    );

    let health: serde_json::Value =
        serde_json::from_str(&b.request("GET", "/health", None).body).unwrap();
    assert_eq!(health["checks"]["redis"]["status"], "healthy", "{health}");
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}
