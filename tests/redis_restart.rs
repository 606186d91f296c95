//! The call-center example on a real Redis that is stopped and started again: the first login
//! on every instance after Redis answers succeeds (the session store runs on the shared link,
//! which notices the closed connection when it closes and reconnects in the background), and
//! the connections each instance holds (`CLIENT LIST`).
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
