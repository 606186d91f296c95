//! Shared by the tests of the call center's guarded rollouts (`tests/rollout_demo.rs`,
//! `tests/rollout_board.rs`, `tests/rollout_fleet.rs`): instances that share a Redis, the admin
//! API's rollout routes, anonymous checkouts on a raw connection.
// Each test crate that includes this uses only some of it; unwrap and panics are allowed by
// the including crate's own `#![allow]`.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use welcomedly_testkit::RedisServer;

use super::call_center::{Instance, Response};
use super::redis_scenarios::ADMIN_TOKEN;

/// The admin route of the `new-checkout` rollout.
pub const FLAG_PATH: &str = "/admin/rollouts/new-checkout";

/// Two instances on `redis` with `fault` on their new checkout path (`WELCOMEDLY_DEMO_FAULT`),
/// the admin token set and the API limit out of the way.
pub fn instances(redis: &RedisServer, fault: &str) -> Vec<Instance> {
    (0..2)
        .map(|_| {
            Instance::start(&[
                ("REDIS_URL", redis.url()),
                ("WELCOMEDLY_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
                ("WELCOMEDLY_API_PER_MINUTE", "1000000".to_owned()),
                ("WELCOMEDLY_DEMO_FAULT", fault.to_owned()),
            ])
        })
        .collect()
}

/// A request to `app`'s admin API, with the admin token and a JSON body.
pub fn admin(app: &Instance, method: &str, path: &str, body: &str) -> Response {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    app.request_with(
        method,
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
}

/// Starts the rollout of `new-checkout` with `plan` through `app`: it must answer 201.
pub fn start_rollout(app: &Instance, plan: &str) {
    let r = admin(app, "POST", FLAG_PATH, plan);
    assert_eq!(r.status, 201, "{}", r.body);
}

/// `GET path` on `port` on a fresh connection: the status and body, `None` when the connection
/// failed.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.get(9..12)?.parse().ok()?;
    Some((status, body.to_owned()))
}
