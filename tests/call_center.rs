//! The call-center example as a user runs it: real processes, real HTTP, a real Redis shared by
//! two instances, SIGTERM at the end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use welcomedly_test_support::RedisServer;

/// `cargo test` builds the examples next to the test binaries: target/<profile>/examples/.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    profile_dir.join("examples").join("call_center")
}

struct Instance {
    child: Child,
    port: u16,
}

impl Instance {
    fn start(envs: &[(&str, String)]) -> Instance {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new(example_binary());
        cmd.env_clear()
            .env("PORT", port.to_string())
            .env("RUST_LOG", "warn")
            .env("WELCOMEDLY_DRAIN_GRACE_MS", "300")
            .env("WELCOMEDLY_DRAIN_DEADLINE_MS", "2000")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .expect("the example binary is built by cargo test");
        let instance = Instance { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the example did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        instance
    }

    fn request(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = body.unwrap_or("");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap()[9..12].parse().unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Response {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the example did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

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
    let envs = |id: &str| {
        vec![
            ("REDIS_URL", redis.url()),
            ("WELCOMEDLY_INSTANCES", "2".to_owned()),
            ("WELCOMEDLY_INSTANCE_ID", id.to_owned()),
        ]
    };
    let a = Instance::start(&envs("cc-a"));
    let b = Instance::start(&envs("cc-b"));
    let bad = r#"{"username":"supervisor","password":"nope"}"#;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let app = if i % 2 == 0 { &a } else { &b };
        statuses.push(app.request("POST", "/auth/login", Some(bad)).status);
        // The 401 is charged after the response, in the background: let it land.
        std::thread::sleep(Duration::from_millis(30));
    }
    // Five failures in total across both instances, not five each.
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    let health: serde_json::Value =
        serde_json::from_str(&a.request("GET", "/health", None).body).unwrap();
    assert_eq!(health["checks"]["rate_limit"]["status"], "healthy");
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}
