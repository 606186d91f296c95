//! The call-center scenarios that run through Redis, written once and run on every topology:
//! on one node (`tests/call_center.rs`), on Sentinel and on a Redis Cluster
//! (`tests/call_center_topologies.rs`). Each takes the [`Topology`] — the variables that point an
//! instance at Redis, and a way to run a command on the node holding a key — so the same
//! assertions hold whatever is behind the link.
//!
//! On a shared deployment, run [`kill_switch_reaches_the_other_instance`] before
//! [`two_instances_share_the_login_limit`]: the limit leaves `supervisor` locked out for a while,
//! and the kill switch logs `supervisor` in.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use super::call_center::*;

/// The admin token the flag scenario gives its instances.
pub const ADMIN_TOKEN: &str = "0123456789abcdef-admin";

/// Runs a command on the node that holds its key and returns the reply as text.
pub type RunCommand<'a> = Box<dyn Fn(&[&str]) -> String + 'a>;

/// Where Redis is, as the instances and the test see it.
pub struct Topology<'a> {
    /// A name for messages: `single`, `sentinel`, `cluster`.
    pub name: &'static str,
    /// The variables that point an instance at Redis (`REDIS_URL`, or `REDIS_SENTINELS` and
    /// `REDIS_SENTINEL_MASTER`, or `REDIS_CLUSTER_NODES`).
    pub env: Vec<(&'static str, String)>,
    /// Runs a command on the node that holds the key (the command's second word).
    pub command: RunCommand<'a>,
}

impl Topology<'_> {
    /// The Redis variables plus `extra`.
    pub fn env_with(&self, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let mut env = self.env.clone();
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        env
    }
}

/// Two instances share the failed-login limit: five failures in total, not five each.
pub fn two_instances_share_the_login_limit(redis: &Topology<'_>) {
    let envs = |id: &str| {
        redis.env_with(&[
            ("WELCOMEDLY_INSTANCES", "2"),
            ("WELCOMEDLY_INSTANCE_ID", id),
        ])
    };
    let a = Instance::start(&envs("cc-a"));
    let b = Instance::start(&envs("cc-b"));
    let bad = r#"{"username":"supervisor","password":"nope"}"#;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let app = if i % 2 == 0 { &a } else { &b };
        statuses.push(app.request("POST", "/auth/login", Some(bad)).status);
        // Reserved at admission in Redis; nothing to wait for, but keep the pace of a client.
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 401, 401, 429, 429, 429],
        "on {}",
        redis.name
    );
    let health: serde_json::Value =
        serde_json::from_str(&a.request("GET", "/health", None).body).unwrap();
    // The limiter runs on the link: `/health` names Redis once (`redis`), no `rate_limit` check.
    assert_eq!(health["checks"]["redis"]["status"], "healthy", "{health}");
    assert!(health["checks"].get("rate_limit").is_none(), "{health}");
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

/// Polls `GET path` with the session `cookie` until it answers `status`, up to `within`;
/// returns the time taken.
pub fn wait_for_status(
    app: &Instance,
    path: &str,
    cookie: &str,
    status: u16,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let r = app.request_with("GET", path, &[("cookie", cookie)], "");
        if r.status == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{path} still answers {} ({})",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Turns the `campaign-stats` kill switch off through `app`'s admin API.
pub fn kill_stats(app: &Instance) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let flag = app.request_with(
        "GET",
        "/admin/flags/campaign-stats",
        &[("authorization", &auth)],
        "",
    );
    assert_eq!(flag.status, 200, "{}", flag.body);
    let etag = flag.header("etag").unwrap().to_owned();
    let mut def: serde_json::Value = serde_json::from_str(&flag.body).unwrap();
    def["enabled"] = serde_json::Value::Bool(false);
    let put = app.request_with(
        "PUT",
        "/admin/flags/campaign-stats",
        &[
            ("authorization", &auth),
            ("if-match", &etag),
            ("content-type", "application/json"),
        ],
        &def.to_string(),
    );
    assert_eq!(put.status, 200, "{}", put.body);
}

/// A kill switch thrown on one instance reaches the other through Redis at once; flags and
/// membership are healthy and membership lists both instances.
pub fn kill_switch_reaches_the_other_instance(redis: &Topology<'_>) {
    let envs = |id: &str| {
        redis.env_with(&[
            ("WELCOMEDLY_INSTANCES", "2"),
            ("WELCOMEDLY_INSTANCE_ID", id),
            ("WELCOMEDLY_ADMIN_TOKEN", ADMIN_TOKEN),
        ])
    };
    let a = Instance::start(&envs("cc-a"));
    let b = Instance::start(&envs("cc-b"));
    // Sessions are in Redis: logged in on A, known on B.
    let supervisor = log_in(&a, "supervisor");
    assert_eq!(
        b.request_with("GET", "/api/stats", &[("cookie", &supervisor)], "")
            .status,
        200
    );
    kill_stats(&a);
    let took = wait_for_status(&b, "/api/stats", &supervisor, 404, Duration::from_secs(1));
    eprintln!(
        "{}: kill switch reached the other instance after {took:?}",
        redis.name
    );
    let health: serde_json::Value =
        serde_json::from_str(&b.request("GET", "/health", None).body).unwrap();
    assert_eq!(health["checks"]["flags"]["status"], "healthy", "{health}");
    assert_eq!(
        health["checks"]["membership"]["status"], "healthy",
        "{health}"
    );
    // Membership sees both instances.
    let members: Vec<String> = (redis.command)(&["ZRANGE", "{wd:members}:members", "0", "-1"])
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(members.iter().any(|m| m.contains("cc-a")), "{members:?}");
    assert!(members.iter().any(|m| m.contains("cc-b")), "{members:?}");
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

/// The `agent` entry of `GET /api/agents` on `app`.
fn agent_on_board(app: &Instance, cookie: &str) -> serde_json::Value {
    let r = app.request_with("GET", "/api/agents", &[("cookie", cookie)], "");
    let json: serde_json::Value = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("GET /api/agents: {} {}: {e}", r.status, r.body));
    json["agents"]
        .as_array()
        .unwrap_or_else(|| panic!("GET /api/agents: {} {}", r.status, r.body))
        .iter()
        .find(|x| x["agent"] == "agent")
        .unwrap()
        .clone()
}

/// No affinity: log in on A, be logged in on B; a status change on A reaches B's event stream;
/// log out everywhere on B ends the session on A at once.
pub fn sessions_and_events_are_shared(redis: &Topology<'_>) {
    let envs = |id: &str| redis.env_with(&[("WELCOMEDLY_INSTANCE_ID", id)]);
    let a = Instance::start(&envs("cc-a"));
    let b = Instance::start(&envs("cc-b"));
    let cookie = log_in(&a, "agent");
    let me = b.request_with("GET", "/api/me", &[("cookie", &cookie)], "");
    assert_eq!(me.status, 200, "{}", me.body);
    assert!(me.body.contains(r#""served_by":"cc-b""#), "{}", me.body);

    let event = first_event(&b, &cookie, Duration::from_secs(5), || {
        let r = a.request_with(
            "PUT",
            "/api/agents/me/status",
            &[("cookie", &cookie), ("content-type", "application/json")],
            r#"{"status":"available"}"#,
        );
        assert_eq!(r.status, 200, "{}", r.body);
    });
    assert!(event.contains(r#""instance":"cc-a""#), "{event}");
    // B's board has it, and the agent, whose stream is open on A, is present cluster-wide
    // (presence follows open streams, not status changes).
    let (_held, head) = open_stream(&a, &cookie);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let agent = agent_on_board(&b, &cookie);
        if agent["status"] == "available" && agent["online"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "on {}: {agent}", redis.name);
        std::thread::sleep(Duration::from_millis(20));
    }

    let second = log_in(&a, "agent");
    let out = b.request_with(
        "POST",
        "/auth/logout?everywhere=true",
        &[("cookie", &cookie)],
        "",
    );
    assert_eq!(out.status, 200, "{}", out.body);
    for c in [&cookie, &second] {
        assert_eq!(
            a.request_with("GET", "/api/me", &[("cookie", c)], "")
                .status,
            401,
            "on {}",
            redis.name
        );
    }
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

/// An instance started after a change rebuilds its board from the bus's retained history.
pub fn an_instance_started_later_sees_earlier_statuses(redis: &Topology<'_>) {
    let a = Instance::start(&redis.env);
    let cookie = log_in(&a, "agent");
    let r = a.request_with(
        "PUT",
        "/api/agents/me/status",
        &[("cookie", &cookie), ("content-type", "application/json")],
        r#"{"status":"in_training"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);

    let late = Instance::start(&redis.env);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let agent = agent_on_board(&late, &cookie);
        if agent["status"] == "in_training" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "on {}: the late instance shows {agent}",
            redis.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(late.terminate().success());
    assert!(a.terminate().success());
}

/// Waits until `app`'s limiter counts `n` live instances (membership has fed it), up to 10 s.
pub fn wait_for_live_instances(app: &Instance, n: u32) {
    let value = format!(" {n}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = app.request("GET", "/metrics", None).body;
        if metrics
            .lines()
            .any(|l| l.starts_with("welcomedly_rate_limit_live_instances") && l.ends_with(&value))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the limiter never counted {n} live instances"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `general` limit (100 a minute per address) is cluster-wide with local-first shares: one
/// address alternating between two instances is admitted exactly 100 requests, not 100 per
/// instance and not 101; distinct anonymous addresses (behind a trusted proxy) are admitted
/// from the instances' shares without a single Redis script call.
pub fn anonymous_limits_are_cluster_wide_and_cost_redis_nothing(redis: &Topology<'_>) {
    // Every decision in Redis writes the key's state (`wd:rl:{<digest>}:<policy>`, living a
    // minute); a request admitted from a share writes nothing.
    let limiter_keys = || {
        let keys = (redis.command)(&["KEYS", "wd:rl:*"]);
        keys.lines().filter(|l| l.contains("wd:rl:")).count()
    };
    let envs = |id: &str| {
        redis.env_with(&[
            ("WELCOMEDLY_INSTANCES", "2"),
            ("WELCOMEDLY_INSTANCE_ID", id),
            ("TRUSTED_PROXIES", "127.0.0.1"),
        ])
    };
    let a = Instance::start(&envs("cc-a"));
    let b = Instance::start(&envs("cc-b"));
    wait_for_live_instances(&a, 2);
    wait_for_live_instances(&b, 2);
    assert_eq!(limiter_keys(), 0);
    for i in 0..60u32 {
        let app = if i % 2 == 0 { &a } else { &b };
        let xff = format!("198.51.{}.{}", i / 250, i % 250 + 1);
        let r = app.request_with("GET", "/api/ping", &[("x-forwarded-for", &xff)], "");
        assert_eq!(r.status, 200, "request {i} on {}", redis.name);
    }
    assert_eq!(
        limiter_keys(),
        0,
        "distinct addresses were decided in Redis on {}",
        redis.name
    );
    let from_shares = |app: &Instance| {
        let metrics = app.request("GET", "/metrics", None).body;
        metrics
            .lines()
            .find(|l| l.starts_with("welcomedly_rate_limit_local_share_requests"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(from_shares(&a) + from_shares(&b), 60, "on {}", redis.name);
    let statuses: Vec<u16> = (0..110)
        .map(|i| {
            let app = if i % 2 == 0 { &a } else { &b };
            app.request("GET", &format!("/scan/{i}"), None).status
        })
        .collect();
    assert!(
        statuses[..100].iter().all(|s| *s == 404),
        "on {}: {statuses:?}",
        redis.name
    );
    assert!(
        statuses[100..].iter().all(|s| *s == 429),
        "on {}: {statuses:?}",
        redis.name
    );
    // The one address's pool is in Redis (and the count above sees keys when there are some).
    assert!(limiter_keys() >= 1, "on {}", redis.name);
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}
