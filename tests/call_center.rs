//! The call-center example as a user runs it: real processes, real HTTP, a real Redis shared by
//! two instances, SIGTERM at the end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::call_center::*;
use support::redis_scenarios::*;
use welcomedly_testkit::RedisServer;

#[test]
fn embedded_defaults_serve_the_contract_and_exit_zero_on_sigterm() {
    let app = Instance::start(&[("WELCOMEDLY_INSTANCE_ID", "cc-1".to_owned())]);

    let ping = app.request("GET", "/api/ping", None);
    assert_eq!(ping.status, 200);
    assert_eq!(ping.body, r#"{"pong":true}"#);
    assert_eq!(ping.header("x-instance-id"), Some("cc-1"));
    assert!(ping.header("x-request-id").is_some_and(|id| id.len() >= 16));
    assert_eq!(ping.header("ratelimit-policy"), Some(r#""api";q=200;w=60"#));

    let health = app.request("GET", "/health", None);
    assert_eq!(health.status, 200);
    let json: serde_json::Value = serde_json::from_str(&health.body).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["instance_id"], "cc-1");
    assert_eq!(app.request("GET", "/health/live", None).status, 200);
    assert_eq!(app.request("GET", "/health/ready", None).status, 200);

    let metrics = app.request("GET", "/metrics", None);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains(r#"http_route="/api/ping""#),
        "{}",
        metrics.body
    );
    // A scanner's random paths are one series, not one per path.
    for i in 0..5 {
        assert_eq!(
            app.request("GET", &format!("/wp-admin/{i}.php"), None)
                .status,
            404
        );
    }
    let metrics = app.request("GET", "/metrics", None).body;
    assert!(!metrics.contains("wp-admin"));

    // The right password is never limited; five wrong ones are, then even the right one waits.
    let good = r#"{"username":"agent","password":"welcomedly-demo"}"#;
    let bad = r#"{"username":"agent","password":"nope"}"#;
    for _ in 0..8 {
        assert_eq!(app.request("POST", "/auth/login", Some(good)).status, 200);
    }
    for _ in 0..5 {
        assert_eq!(app.request("POST", "/auth/login", Some(bad)).status, 401);
    }
    let limited = app.request("POST", "/auth/login", Some(good));
    assert_eq!(limited.status, 429);
    assert_eq!(
        limited.header("content-type"),
        Some("application/problem+json")
    );
    let wait: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=12).contains(&wait), "retry-after {wait}");
    assert_eq!(limited.header("x-instance-id"), Some("cc-1"));

    assert!(app.terminate().success());
}

#[test]
fn two_instances_share_the_login_limit_through_redis() {
    let redis = RedisServer::start().unwrap();
    two_instances_share_the_login_limit(&single(&redis));
}

#[test]
fn anonymous_limits_are_cluster_wide_with_local_first_shares() {
    let redis = RedisServer::start().unwrap();
    anonymous_limits_are_cluster_wide_and_cost_redis_nothing(&single(&redis));
}

/// Redis on one node.
fn single(redis: &RedisServer) -> Topology<'_> {
    Topology {
        name: "single",
        env: vec![("REDIS_URL", redis.url())],
        command: Box::new(|args| redis.command(args).unwrap()),
    }
}

/// Every error the example returns is problem+json with type, title, status and detail.
#[test]
fn every_error_is_problem_json() {
    let app = Instance::start(&[]);
    let cases = [
        app.request("GET", "/no/such/route", None),
        app.request("GET", "/auth/login", None),
        app.request("POST", "/auth/login", Some("{not json")),
        app.request("POST", "/auth/login", Some(r#"{"username":"agent"}"#)),
        app.request_with(
            "POST",
            "/auth/login",
            &[],
            r#"{"username":"a","password":"b"}"#,
        ),
        app.request(
            "POST",
            "/auth/login",
            Some(r#"{"username":"x","password":"y"}"#),
        ),
    ];
    let statuses: Vec<u16> = cases.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [404, 405, 400, 422, 415, 401]);
    for r in &cases {
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{} {}",
            r.status,
            r.body
        );
        let p: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(p["status"], r.status, "{}", r.body);
        assert!(
            p["type"].is_string() && p["title"].is_string(),
            "{}",
            r.body
        );
        assert!(
            p["detail"].as_str().is_some_and(|d| d.len() > 20),
            "{}",
            r.body
        );
    }
    assert!(app.terminate().success());
}

/// Unknown paths are limited by the general policy (100/min), as the seeds' NGINX did.
#[test]
fn unmatched_paths_are_rate_limited_but_health_is_not() {
    let app = Instance::start(&[]);
    let statuses: Vec<u16> = (0..110)
        .map(|i| app.request("GET", &format!("/scan/{i}"), None).status)
        .collect();
    assert!(statuses[..100].iter().all(|s| *s == 404), "{statuses:?}");
    assert!(statuses[100..].iter().all(|s| *s == 429), "{statuses:?}");
    for _ in 0..120 {
        assert_eq!(app.request("GET", "/health/ready", None).status, 200);
    }
    assert_eq!(app.request("GET", "/metrics", None).status, 200);
    assert!(app.terminate().success());
}

/// Behind a trusted proxy that writes X-Forwarded-For, a client's own `Forwarded` header does
/// not move its address: the review's bypass of the login limit.
#[test]
fn a_forged_forwarded_header_does_not_bypass_the_login_limit() {
    let app = Instance::start(&[("TRUSTED_PROXIES", "127.0.0.1".to_owned())]);
    let bad = r#"{"username":"agent","password":"nope"}"#;
    let statuses: Vec<u16> = (0..8)
        .map(|i| {
            let forged = format!("for=198.51.100.{i}");
            app.request_with(
                "POST",
                "/auth/login",
                &[
                    ("content-type", "application/json"),
                    ("x-forwarded-for", "203.0.113.5"),
                    ("forwarded", &forged),
                ],
                bad,
            )
            .status
        })
        .collect();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    // A different client behind the same proxy is not affected.
    let other = app.request_with(
        "POST",
        "/auth/login",
        &[
            ("content-type", "application/json"),
            ("x-forwarded-for", "203.0.113.6"),
        ],
        bad,
    );
    assert_eq!(other.status, 401);
    assert!(app.terminate().success());
}

/// Uploads exist, are size capped (413 as problem+json) and limited to 3 per minute.
#[test]
fn uploads_are_capped_and_limited() {
    let app = Instance::start(&[]);
    let octets = [("content-type", "application/octet-stream")];
    let big = "x".repeat(1024 * 1024 + 1);
    let too_big = app.request_with("POST", "/api/upload", &octets, &big);
    assert_eq!(too_big.status, 413, "{}", too_big.body);
    assert_eq!(
        too_big.header("content-type"),
        Some("application/problem+json")
    );
    let ok = app.request_with("POST", "/api/upload", &octets, "hello");
    assert_eq!(ok.status, 201);
    assert_eq!(ok.body, r#"{"bytes":5}"#);
    let ok = app.request_with("POST", "/api/upload", &octets, "hello");
    assert_eq!(ok.status, 201);
    let limited = app.request_with("POST", "/api/upload", &octets, "hello");
    assert_eq!(limited.status, 429);
    assert_eq!(
        limited.header("ratelimit-policy"),
        Some(r#""upload";q=3;w=60"#)
    );
    assert!(app.terminate().success());
}

/// One JSON access-log line per request, with the request's ids; off with
/// WELCOMEDLY_ACCESS_LOG=off. Failed logins log the client's user name capped.
#[test]
fn access_log_lines_carry_the_request_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("on.log");
    let app = Instance::start_logging(&[("RUST_LOG", "info".to_owned())], Some(&path));
    let ping = app.request_with("GET", "/api/ping", &[("x-request-id", "req-abc-123")], "");
    assert_eq!(ping.status, 200);
    let long_name = "A".repeat(5000);
    let bad = format!(r#"{{"username":"{long_name}","password":"nope"}}"#);
    assert_eq!(app.request("POST", "/auth/login", Some(&bad)).status, 401);
    assert!(app.terminate().success());
    let log = std::fs::read_to_string(path).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let text = |v: &serde_json::Value| v.to_string();
    let access = lines
        .iter()
        .find(|l| text(l).contains("request completed") && text(l).contains("req-abc-123"))
        .unwrap_or_else(|| panic!("no access-log line for the ping in:\n{log}"));
    let access = text(access);
    for needle in ["/api/ping", "GET", "200", "latency_ms", "instance_id"] {
        assert!(access.contains(needle), "{needle} missing in {access}");
    }
    assert!(
        !log.contains(&"A".repeat(100)),
        "an uncapped user name reached the log"
    );
    assert!(log.contains("login refused"));

    let path = dir.path().join("off.log");
    let quiet = Instance::start_logging(
        &[
            ("RUST_LOG", "info".to_owned()),
            ("WELCOMEDLY_ACCESS_LOG", "off".to_owned()),
        ],
        Some(&path),
    );
    assert_eq!(quiet.request("GET", "/api/ping", None).status, 200);
    assert!(quiet.terminate().success());
    let log = std::fs::read_to_string(path).unwrap();
    assert!(!log.contains("request completed"), "{log}");
}

/// A bad REDIS_URL fails the start with a message that does not echo its password.
#[test]
fn a_rejected_redis_url_is_reported_without_its_password() {
    let out = Command::new(example_binary())
        .env_clear()
        .env("PORT", "1")
        .env("RUST_LOG", "warn")
        .env("REDIS_URL", "redis://:hunter2@cache:notaport/")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stderr.contains("redis://:***@cache:notaport/"), "{stderr}");
    assert!(
        !stderr.contains("hunter2") && !stdout.contains("hunter2"),
        "{stderr}{stdout}"
    );
}

#[test]
fn seeded_flags_are_evaluated_per_user_gate_a_route_and_the_kill_switch_turns_it_off() {
    // Development mode: `x-user-id` names anonymous callers, so the rollout can be sampled
    // over many made-up users (only two can log in).
    let app = Instance::start(&[
        ("WELCOMEDLY_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("WELCOMEDLY_DEV_IDENTITY_HEADER", "true".to_owned()),
    ]);
    let flags = app.request_with("GET", "/api/flags", &[("x-user-id", "supervisor")], "");
    assert_eq!(flags.status, 200);
    let json: serde_json::Value = serde_json::from_str(&flags.body).unwrap();
    assert_eq!(json["flags"]["campaign-stats"]["value"], true);
    assert_eq!(json["flags"]["campaign-stats"]["reason"], "TARGETING_MATCH");
    assert_eq!(json["flags"]["board-theme"]["value"], "light");

    // The 50 % rollout: some users get the feature, the others not.
    let values: Vec<bool> = (0..40)
        .map(|i| {
            let r = app.request_with(
                "GET",
                "/api/flags",
                &[("x-user-id", &format!("agent-{i}"))],
                "",
            );
            let json: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            json["flags"]["campaign-stats"]["value"].as_bool().unwrap()
        })
        .collect();
    let on = values.iter().filter(|v| **v).count();
    assert!((8..=32).contains(&on), "{values:?}");

    // The flag gates the route for the logged-in supervisor (targeted).
    let supervisor = log_in(&app, "supervisor");
    let stats = app.request_with("GET", "/api/stats", &[("cookie", &supervisor)], "");
    assert_eq!(stats.status, 200, "{}", stats.body);

    // The admin API needs the token.
    let r = app.request("GET", "/admin/flags", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));

    kill_stats(&app);
    wait_for_status(&app, "/api/stats", &supervisor, 404, Duration::from_secs(2));
    let gated = app.request_with("GET", "/api/stats", &[("cookie", &supervisor)], "");
    assert_eq!(
        gated.header("content-type"),
        Some("application/problem+json")
    );
    assert!(app.terminate().success());
}

#[test]
fn without_an_admin_token_there_is_no_admin_api() {
    let app = Instance::start(&[]);
    let r = app.request_with("GET", "/admin/flags", &[("authorization", "Bearer x")], "");
    assert_eq!(r.status, 404);
    assert!(app.terminate().success());
}

#[test]
fn ofrep_evaluates_the_seeded_flags_and_a_token_closes_it() {
    let app = Instance::start(&[("WELCOMEDLY_ADMIN_TOKEN", ADMIN_TOKEN.to_owned())]);
    let json = [("content-type", "application/json")];
    let supervisor = r#"{"context": {"targetingKey": "supervisor"}}"#;
    let one = app.request_with(
        "POST",
        "/ofrep/v1/evaluate/flags/campaign-stats",
        &json,
        supervisor,
    );
    assert_eq!(one.status, 200, "{}", one.body);
    let body: serde_json::Value = serde_json::from_str(&one.body).unwrap();
    assert_eq!(body["value"], true);
    assert_eq!(body["reason"], "TARGETING_MATCH");

    let bulk = app.request_with("POST", "/ofrep/v1/evaluate/flags", &json, supervisor);
    assert_eq!(bulk.status, 200, "{}", bulk.body);
    let tag = bulk.header("etag").unwrap().to_owned();
    let body: serde_json::Value = serde_json::from_str(&bulk.body).unwrap();
    let keys: Vec<&str> = body["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["board-theme", "campaign-stats", "new-checkout"]);
    let cached = app.request_with(
        "POST",
        "/ofrep/v1/evaluate/flags",
        &[
            ("content-type", "application/json"),
            ("if-none-match", &tag),
        ],
        supervisor,
    );
    assert_eq!(cached.status, 304);

    // The kill switch: a new tag, and the flag defers to the caller's default.
    kill_stats(&app);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let changed = loop {
        let r = app.request_with(
            "POST",
            "/ofrep/v1/evaluate/flags",
            &[
                ("content-type", "application/json"),
                ("if-none-match", &tag),
            ],
            supervisor,
        );
        if r.status == 200 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        changed.status, 200,
        "the kill switch did not change the bulk result"
    );
    let body: serde_json::Value = serde_json::from_str(&changed.body).unwrap();
    assert_eq!(
        body["flags"][1],
        serde_json::json!({ "key": "campaign-stats", "reason": "DISABLED" })
    );
    let unknown = app.request_with("POST", "/ofrep/v1/evaluate/flags/nope", &json, "");
    assert_eq!(unknown.status, 404);
    assert!(app.terminate().success());

    // With WELCOMEDLY_OFREP_TOKEN, a key is needed (and the admin token is not one).
    let token = "ofrep-token-0123456789abcdef";
    let app = Instance::start(&[
        ("WELCOMEDLY_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("WELCOMEDLY_OFREP_TOKEN", token.to_owned()),
    ]);
    let path = "/ofrep/v1/evaluate/flags";
    assert_eq!(app.request_with("POST", path, &json, "").status, 401);
    let admin = format!("Bearer {ADMIN_TOKEN}");
    assert_eq!(
        app.request_with("POST", path, &[("authorization", &admin)], "")
            .status,
        401
    );
    assert_eq!(
        app.request_with("POST", path, &[("x-api-key", token)], "")
            .status,
        200
    );
    assert!(app.terminate().success());
}

/// A kill switch thrown on one instance reaches the other through Redis at once.
#[test]
fn a_kill_switch_on_one_instance_reaches_the_other_through_redis() {
    let redis = RedisServer::start().unwrap();
    kill_switch_reaches_the_other_instance(&single(&redis));
}

#[test]
fn sessions_status_changes_and_events_on_the_embedded_default() {
    let app = Instance::start(&[]);
    assert_eq!(app.request("GET", "/api/me", None).status, 401);
    let cookie = log_in(&app, "agent");
    let me = app.request_with("GET", "/api/me", &[("cookie", &cookie)], "");
    assert_eq!(me.status, 200, "{}", me.body);
    assert!(me.body.contains(r#""user":"agent""#));

    let set = |status: &str| {
        app.request_with(
            "PUT",
            "/api/agents/me/status",
            &[("cookie", &cookie), ("content-type", "application/json")],
            &format!(r#"{{"status":"{status}"}}"#),
        )
    };
    assert_eq!(set("sleeping").status, 422);
    let event = first_event(&app, &cookie, Duration::from_secs(5), || {
        assert_eq!(set("on_call").status, 200);
    });
    assert!(event.contains(r#""status":"on_call""#), "{event}");
    // The board is for logged-in users only.
    assert_eq!(app.request("GET", "/api/agents", None).status, 401);
    assert_eq!(app.request("GET", "/api/events", None).status, 401);
    let agents = app.request_with("GET", "/api/agents", &[("cookie", &cookie)], "");
    let json: serde_json::Value = serde_json::from_str(&agents.body).unwrap();
    let agent = json["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == "agent")
        .unwrap();
    assert_eq!(agent["status"], "on_call");

    // Logging out ends the session.
    let out = app.request_with("POST", "/auth/logout", &[("cookie", &cookie)], "");
    assert_eq!(out.status, 200);
    assert_eq!(
        app.request_with("GET", "/api/me", &[("cookie", &cookie)], "")
            .status,
        401
    );
    assert!(app.terminate().success());
}

/// No affinity: log in on A, be logged in on B; a status change on A reaches B's event stream;
/// log out everywhere on B ends the session on A at once.
#[test]
fn sessions_and_events_are_shared_by_instances_through_redis() {
    let redis = RedisServer::start().unwrap();
    sessions_and_events_are_shared(&single(&redis));
}

#[test]
fn a_user_holds_at_most_eight_event_streams_per_instance() {
    let app = Instance::start(&[]);
    let agent = log_in(&app, "agent");
    let held: Vec<TcpStream> = (0..8)
        .map(|_| {
            let (s, head) = open_stream(&app, &agent);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            s
        })
        .collect();
    let (_, head) = open_stream(&app, &agent);
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert!(head.contains("application/problem+json"), "{head}");
    // Another user is not affected.
    let supervisor = log_in(&app, "supervisor");
    let (_, head) = open_stream(&app, &supervisor);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(held);
    assert!(app.terminate().success());
}

/// An instance started after a change rebuilds its board from the bus's retained history.
#[test]
fn an_instance_started_later_shows_the_statuses_set_before_it_started() {
    let redis = RedisServer::start().unwrap();
    an_instance_started_later_sees_earlier_statuses(&single(&redis));
}

#[test]
fn campaigns_on_the_embedded_sqlite() {
    let app = Instance::start(&[]);
    let cookie = log_in(&app, "supervisor");
    let with = [
        ("cookie", cookie.as_str()),
        ("content-type", "application/json"),
    ];
    let created = app.request_with(
        "POST",
        "/api/campaigns",
        &with,
        r#"{"name":"spring","status":"paused"}"#,
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let c: serde_json::Value = serde_json::from_str(&created.body).unwrap();
    assert_eq!(c["status"], "paused");
    let one = app.request_with("GET", &format!("/api/campaigns/{}", c["id"]), &with, "");
    assert_eq!(one.status, 200);
    assert!(one.body.contains("spring"));
    let list = app.request_with("GET", "/api/campaigns", &with, "");
    assert!(list.body.contains("spring"), "{}", list.body);
    let bad = app.request_with(
        "POST",
        "/api/campaigns",
        &with,
        r#"{"name":"x","status":"lost"}"#,
    );
    assert_eq!(bad.status, 422);
    assert_eq!(
        app.request_with("GET", "/api/campaigns/999", &with, "")
            .status,
        404
    );
    assert!(app.terminate().success());
}

/// Two instances over a primary and a replica that lags by a second: a client that created a
/// campaign on A sees it at once on B (its read-your-writes cookie), while reads still go to
/// the replica when they can.
#[test]
fn campaigns_read_your_writes_across_instances_over_a_lagging_replica() {
    let pg = welcomedly_testkit::PgCluster::start(1).unwrap();
    pg.set_replay_delay(0, Duration::from_secs(1)).unwrap();
    let envs = |id: &str| {
        vec![
            ("DATABASE_URL", pg.primary_url()),
            ("DATABASE_REPLICA_URLS", pg.replica_urls().join(",")),
            ("WELCOMEDLY_INSTANCE_ID", id.to_owned()),
            (
                "WELCOMEDLY_CONSISTENCY_SECRET",
                "0123456789abcdef-consistency".to_owned(),
            ),
            ("DATABASE_MAX_LAG_MS", "5000".to_owned()),
        ]
    };
    let a = Instance::start(&envs("cc-a"));
    let b = Instance::start(&envs("cc-b"));
    // No Redis: each instance keeps its own sessions, so the client logs in on both.
    let on_a = log_in(&a, "supervisor");
    let on_b = log_in(&b, "supervisor");
    for i in 0..10 {
        let name = format!("campaign-{i}");
        let created = a.request_with(
            "POST",
            "/api/campaigns",
            &[("cookie", &on_a), ("content-type", "application/json")],
            &format!(r#"{{"name":"{name}"}}"#),
        );
        assert_eq!(created.status, 201, "{}", created.body);
        let rw = cookie_named(&created, "wd_rw").expect("a read-your-writes cookie");
        let cookie = format!("{on_b}; {rw}");
        let list = b.request_with("GET", "/api/campaigns", &[("cookie", &cookie)], "");
        assert_eq!(list.status, 200, "{}", list.body);
        assert!(
            list.body.contains(&name),
            "B served a state without the client's write: {}",
            list.body
        );
    }
    let health: serde_json::Value =
        serde_json::from_str(&b.request("GET", "/health", None).body).unwrap();
    assert_eq!(
        health["checks"]["db.primary"]["status"], "healthy",
        "{health}"
    );
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

/// Two instances start at once against an empty database whose replica lags by 2 s: the
/// migrations run once, both start, and no read of the new table fails from the first request
/// on (the schema floor keeps reads off the replica until it has replayed the schema).
#[test]
fn campaigns_on_an_empty_database_fail_no_read_over_a_lagging_replica() {
    let pg = welcomedly_testkit::PgCluster::start(1).unwrap();
    pg.set_replay_delay(0, Duration::from_secs(2)).unwrap();
    let envs = |id: &str| {
        vec![
            ("DATABASE_URL", pg.primary_url()),
            ("DATABASE_REPLICA_URLS", pg.replica_urls().join(",")),
            ("WELCOMEDLY_INSTANCE_ID", id.to_owned()),
            (
                "WELCOMEDLY_CONSISTENCY_SECRET",
                "0123456789abcdef-consistency".to_owned(),
            ),
        ]
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Instance::start(&envs("cc-a")));
        let b = s.spawn(|| Instance::start(&envs("cc-b")));
        (a.join().unwrap(), b.join().unwrap())
    });
    let ran = pg
        .psql(
            welcomedly_testkit::Node::Primary,
            "SELECT count(*) FROM _sqlx_migrations",
        )
        .unwrap();
    assert_eq!(ran, "1");
    let on_a = log_in(&a, "agent");
    let on_b = log_in(&b, "agent");
    let mut failed = Vec::new();
    let mut reads = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        for (app, cookie) in [(&a, &on_a), (&b, &on_b)] {
            let list = app.request_with("GET", "/api/campaigns", &[("cookie", cookie)], "");
            reads += 1;
            if list.status != 200 {
                failed.push(format!("{} {}", list.status, list.body));
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(
        failed.is_empty(),
        "{} of {reads} reads failed: {failed:?}",
        failed.len()
    );
    eprintln!("empty database, replica 2 s behind, 2 instances: 0 of {reads} reads failed");
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}
