//! The operations kit in `ops/` against the real thing:
//!
//! - every metric the Grafana dashboard and the alert rules query is one the `call_center`
//!   example really exports, read from `/metrics` of an instance on Redis and a PostgreSQL
//!   primary + replica after its features were exercised;
//! - `promtool` accepts the rules and the scrape config, and the rules' unit tests pass;
//! - `nginx -t` accepts the NGINX config, and the same config (ports swapped for the test's)
//!   proxies to the instance: request ids pass through, `/metrics` is closed, events stream.
//!
//! Needs `redis-server`, PostgreSQL, `nginx` and `promtool` (`.ci/test` installs them when run
//! as root; Debian: `apt-get install -y --no-install-recommends prometheus` for `promtool`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use welcomedly_testkit::{PgCluster, RedisServer, free_port};

const ADMIN_TOKEN: &str = "0123456789abcdef-admin";
const PASSWORD: &str = "ops-test-demo-password";

fn ops_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ops").join(path)
}

fn read_ops_file(path: &str) -> String {
    let path = ops_file(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ------------------------------------------------------------------ PromQL metric names

/// PromQL functions, aggregation operators, keywords and literals: identifiers that are not
/// metric names.
const NOT_METRICS: &[&str] = &[
    // aggregation operators
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    // binary operators, modifiers and grouping
    "and",
    "or",
    "unless",
    "atan2",
    "bool",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "start",
    "end",
    // literals
    "inf",
    "nan",
    // functions (followed by `(` anyway, listed for clarity)
    "abs",
    "absent",
    "absent_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_quantile",
    "histogram_count",
    "histogram_sum",
    "histogram_fraction",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "ln",
    "log2",
    "log10",
    "minute",
    "month",
    "predict_linear",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "time",
    "timestamp",
    "vector",
    "year",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
    "present_over_time",
];

/// Grouping keywords whose parenthesised list holds label names, not series.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: identifiers outside strings, label matchers
/// (`{…}`), ranges (`[…]`) and grouping label lists, that are neither functions nor keywords.
/// Grafana variables (`$instance`, `$__rate_interval`) are skipped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    // Skips to just after the `close` matching the opener at `i`, stepping over strings.
    let skip_group = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => i = skip_string(&chars, i),
                c if c == open => {
                    depth += 1;
                    i += 1;
                }
                c if c == close => {
                    depth -= 1;
                    i += 1;
                    if depth == 0 {
                        return i;
                    }
                }
                _ => i += 1,
            }
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '#' {
            // A comment runs to the end of the line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '$' {
            i += 1;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (0.95, 1e3, 5m).
            while i < chars.len() && (ident_char(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let called = chars.get(next) == Some(&'(');
            if called && LABEL_LISTS.contains(&word.as_str()) {
                i = skip_group(next, '(', ')');
            } else if !called && !NOT_METRICS.contains(&word.to_ascii_lowercase().as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index just after the string literal opening at `i` (backslash escapes honoured except in
/// raw backtick strings).
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() {
        if chars[j] == '\\' && quote != '`' {
            j += 2;
            continue;
        }
        if chars[j] == quote {
            return j + 1;
        }
        j += 1;
    }
    j
}

#[test]
fn promql_metric_names_are_told_from_functions_labels_and_strings() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (instance, le) (rate(http_server_request_duration_seconds_bucket{job=~"$job", http_route!="/api/{id}", x='a b'}[$__rate_interval])))
           / on(instance) group_left(node) max without (tier) (welcomedly_db_healthy)
           > 1e3 and up offset 5m or absent(welcomedly_flags_version) unless bool vector(1)
           # a comment naming not_a_metric
           + sum(rate(welcomedly_bus_published_total[5m:1m])) * -Inf"#,
    );
    let want: BTreeSet<String> = [
        "http_server_request_duration_seconds_bucket",
        "welcomedly_db_healthy",
        "up",
        "welcomedly_flags_version",
        "welcomedly_bus_published_total",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(names, want);
}

/// Every `"expr"` string anywhere in the dashboard JSON.
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = read_ops_file("grafana/welcomedly.json");
    let json: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("ops/grafana/welcomedly.json is not JSON: {e}"));
    let mut out = Vec::new();
    walk(&json, &mut out);
    out
}

/// Every `expr:` of the rule file: a plain scalar on its line, or a `|` / `>` block (the
/// following lines indented deeper than the key).
fn alert_exprs() -> Vec<String> {
    let text = read_ops_file("prometheus/alerts.yml");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        i += 1;
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let mut block = String::new();
            while i < lines.len() {
                let l = lines[i];
                let deeper = l.len() - l.trim_start().len() > indent;
                if !(deeper || l.trim().is_empty()) {
                    break;
                }
                block.push_str(l.trim());
                block.push('\n');
                i += 1;
            }
            out.push(block);
        } else {
            out.push(value.trim_matches(|c| c == '\'' || c == '"').to_owned());
        }
    }
    out
}

/// The sample names of a text exposition (`name{labels} value` / `name value`).
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The value of the first sample of `name` whose labels include every one of `labels`
/// (`key="value"`).
fn sample(exposition: &str, name: &str, labels: &[&str]) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn every_alert_has_a_for_a_severity_and_what_to_do() {
    let text = read_ops_file("prometheus/alerts.yml");
    let rules: Vec<&str> = text.split("- alert:").skip(1).collect();
    assert!(rules.len() >= 9, "{} alert rules", rules.len());
    for rule in rules {
        let name = rule.split_whitespace().next().unwrap_or_default();
        for key in ["expr:", "for:", "severity:", "summary:", "description:"] {
            assert!(rule.contains(key), "alert {name} has no {key}");
        }
    }
}

// ------------------------------------------------------------------ the instance

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
        let port = free_port().unwrap();
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
            .expect("the example binary is built by cargo build --examples");
        let mut instance = Instance { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = instance.child.try_wait().unwrap() {
                panic!("the example exited during start-up ({status})");
            }
            assert!(
                Instant::now() < deadline,
                "the example did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        instance
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

    /// `name=value` of the cookie `name` the response sets.
    fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .map(|(_, v)| v.split(';').next().unwrap_or_default().to_owned())
            .find(|c| c.starts_with(&format!("{name}=")))
    }
}

/// One HTTP/1.1 request on its own connection to `127.0.0.1:port`.
fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    write!(s, "{head}content-length: {}\r\n\r\n{body}", body.len()).unwrap();
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

const JSON: (&str, &str) = ("content-type", "application/json");

/// Opens `GET /api/events` on `port`, runs `trigger` once the response head arrived, and
/// returns the response head and the first `data:` line naming an agent.
fn first_event(port: u16, cookie: &str, trigger: impl FnOnce()) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    write!(
        s,
        "GET /api/events HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\ncookie: {cookie}\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    let mut trigger = Some(trigger);
    loop {
        match s.read(&mut buf) {
            Ok(0) => panic!("the event stream ended: {}", String::from_utf8_lossy(&raw)),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, _)) = text.split_once("\r\n\r\n") {
            if let Some(t) = trigger.take() {
                t();
            }
            // A status change (the `hello` and `presence` events name agents too).
            if let Some(line) = text
                .lines()
                .find(|l| l.starts_with("data:") && l.contains(r#""status":"#))
            {
                return (head.to_owned(), line.to_owned());
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no event within 5 s: {text}"
        );
    }
}

/// Drives every feature the dashboard has a panel for, so each of their series exists; returns
/// the session cookie of the logged-in agent.
fn exercise(port: u16) -> String {
    let login = format!(r#"{{"username":"agent","password":"{PASSWORD}"}}"#);
    let r = request(port, "POST", "/auth/login", &[JSON], &login);
    assert_eq!(r.status, 200, "{}", r.body);
    let session = r.cookie("__Host-wd_session").expect("a session cookie");
    let me = request(port, "GET", "/api/me", &[("cookie", &session)], "");
    assert_eq!(me.status, 200, "{}", me.body);

    // A status change, seen on the event stream.
    let (_, event) = first_event(port, &session, || {
        let r = request(
            port,
            "PUT",
            "/api/agents/me/status",
            &[("cookie", &session), JSON],
            r#"{"status":"on_call"}"#,
        );
        assert_eq!(r.status, 200, "{}", r.body);
    });
    assert!(event.contains("on_call"), "{event}");
    let agents = request(port, "GET", "/api/agents", &[("cookie", &session)], "");
    assert_eq!(agents.status, 200, "{}", agents.body);

    // Campaigns through the DB router (a supervisor writes): a write, then a read that must
    // see it.
    let login = format!(r#"{{"username":"supervisor","password":"{PASSWORD}"}}"#);
    let r = request(port, "POST", "/auth/login", &[JSON], &login);
    assert_eq!(r.status, 200, "{}", r.body);
    let supervisor = r.cookie("__Host-wd_session").expect("a session cookie");
    let created = request(
        port,
        "POST",
        "/api/campaigns",
        &[("cookie", &supervisor), JSON],
        r#"{"name":"ops-spring"}"#,
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let rw = created.cookie("wd_rw").expect("a read-your-writes cookie");
    let both = format!("{supervisor}; {rw}");
    let list = request(port, "GET", "/api/campaigns", &[("cookie", &both)], "");
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(list.body.contains("ops-spring"), "{}", list.body);
    let list = request(port, "GET", "/api/campaigns", &[("cookie", &session)], "");
    assert_eq!(list.status, 200, "{}", list.body);

    // Flags: an evaluation and an admin write.
    let flags = request(port, "GET", "/api/flags", &[("cookie", &supervisor)], "");
    assert_eq!(flags.status, 200, "{}", flags.body);
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let flag = request(
        port,
        "GET",
        "/admin/flags/campaign-stats",
        &[("authorization", &auth)],
        "",
    );
    assert_eq!(flag.status, 200, "{}", flag.body);
    let etag = flag.header("etag").unwrap().to_owned();
    let mut def: serde_json::Value = serde_json::from_str(&flag.body).unwrap();
    def["enabled"] = serde_json::Value::Bool(false);
    let put = request(
        port,
        "PUT",
        "/admin/flags/campaign-stats",
        &[("authorization", &auth), ("if-match", &etag), JSON],
        &def.to_string(),
    );
    assert_eq!(put.status, 200, "{}", put.body);

    // Failed logins until the login policy limits.
    let bad = r#"{"username":"agent","password":"nope"}"#;
    let statuses: Vec<u16> = (0..6)
        .map(|_| request(port, "POST", "/auth/login", &[JSON], bad).status)
        .collect();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
    session
}

#[test]
fn every_metric_the_dashboard_and_the_alerts_query_is_exported() {
    let dashboard: BTreeSet<String> = dashboard_exprs()
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    let alerts: BTreeSet<String> = alert_exprs().iter().flat_map(|e| metric_names(e)).collect();
    // The files are what they claim: many panels, one expression per alert at least.
    assert!(dashboard.len() >= 30, "dashboard queries {dashboard:?}");
    assert!(
        alert_exprs().len() >= 9,
        "alert expressions {:?}",
        alert_exprs()
    );

    let redis = RedisServer::start().unwrap();
    let pg = PgCluster::start(1).unwrap();
    let app = Instance::start(&[
        ("REDIS_URL", redis.url()),
        ("DATABASE_URL", pg.primary_url()),
        ("DATABASE_REPLICA_URLS", pg.replica_urls().join(",")),
        (
            "WELCOMEDLY_CONSISTENCY_SECRET",
            "0123456789abcdef-consistency".to_owned(),
        ),
        ("WELCOMEDLY_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("WELCOMEDLY_DEMO_PASSWORD", PASSWORD.to_owned()),
        ("WELCOMEDLY_INSTANCE_ID", "ops-1".to_owned()),
        ("TRUSTED_PROXIES", "127.0.0.1".to_owned()),
    ]);
    let session = exercise(app.port);

    let metrics = request(app.port, "GET", "/metrics", &[], "");
    assert_eq!(metrics.status, 200);
    let exposition = metrics.body;
    let exposed = exposed_names(&exposition);
    // Prometheus writes `up` itself, per scrape target.
    let from_prometheus = ["up"];
    let missing = |used: &BTreeSet<String>| -> Vec<String> {
        used.iter()
            .filter(|n| !exposed.contains(*n) && !from_prometheus.contains(&n.as_str()))
            .cloned()
            .collect()
    };
    let (in_dashboard, in_alerts) = (missing(&dashboard), missing(&alerts));
    assert!(
        in_dashboard.is_empty() && in_alerts.is_empty(),
        "metrics queried but not exported at /metrics:\n  ops/grafana/welcomedly.json: {in_dashboard:?}\n  ops/prometheus/alerts.yml: {in_alerts:?}\nexported: {exposed:?}"
    );

    // And they carry what was just done.
    let at_least = |name: &str, labels: &[&str], min: f64| {
        let v = sample(&exposition, name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{exposition}"));
        assert!(v >= min, "{name} {labels:?} = {v}, expected at least {min}");
    };
    at_least(
        "welcomedly_rate_limit_requests_total",
        &[r#"policy="login-failures""#, r#"outcome="limited""#],
        1.0,
    );
    at_least("welcomedly_bus_published_total", &[], 1.0);
    at_least("welcomedly_bus_subscribers", &[r#"tier="durable""#], 1.0);
    at_least("welcomedly_session_writes_total", &[], 1.0);
    at_least("welcomedly_session_loads_total", &[], 1.0);
    at_least("welcomedly_db_healthy", &[r#"node="primary""#], 1.0);
    at_least("welcomedly_db_healthy", &[r#"node="replica 0""#], 1.0);
    at_least("welcomedly_flags_version", &[], 1.0);
    at_least(
        "http_server_request_duration_seconds_count",
        &[
            r#"http_route="/api/campaigns""#,
            r#"http_response_status_code="201""#,
        ],
        1.0,
    );

    nginx_config_proxies_to(&app, &session);
}

// ------------------------------------------------------------------ NGINX

fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nginx"))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed (on PATH or /usr/sbin/nginx): apt-get install -y nginx (.ci/test does it when run as root)"
            )
        })
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `nginx -t` on `conf` with its prefix (logs/, temp dirs) in `dir`.
fn nginx_test(conf: &Path, dir: &Path) -> Output {
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    Command::new(nginx_binary())
        .arg("-t")
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("logs/error.log"))
        .arg("-c")
        .arg(conf)
        .output()
        .unwrap()
}

#[test]
fn nginx_accepts_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = nginx_test(&ops_file("nginx/welcomedly.conf"), dir.path());
    assert!(out.status.success(), "nginx -t failed: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("test is successful"), "{}", describe(&out));
}

/// A running NGINX (one process) that is killed when dropped.
struct RunningNginx(Child);

impl Drop for RunningNginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shipped config, with the listen port and the three upstreams swapped for the test's,
/// in front of `app`.
fn nginx_config_proxies_to(app: &Instance, session: &str) {
    let shipped = read_ops_file("nginx/welcomedly.conf");
    let port = free_port().unwrap();
    let mut conf = shipped.replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
    for upstream in ["127.0.0.1:3001", "127.0.0.1:3002", "127.0.0.1:3003"] {
        let line = format!("server {upstream} ");
        assert!(conf.contains(&line), "no `{line}` in the shipped config");
        conf = conf.replace(&line, &format!("server 127.0.0.1:{} ", app.port));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let out = nginx_test(&path, dir.path());
    assert!(out.status.success(), "nginx -t failed: {}", describe(&out));
    let child = Command::new(nginx_binary())
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("logs/error.log"))
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off; master_process off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _nginx = RunningNginx(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }

    let ping = request(
        port,
        "GET",
        "/api/ping",
        &[("x-request-id", "ops-req-42")],
        "",
    );
    assert_eq!(ping.status, 200, "{}", ping.body);
    assert_eq!(ping.header("x-request-id"), Some("ops-req-42"));
    assert_eq!(ping.header("x-instance-id"), Some("ops-1"));
    // Without one, NGINX makes the id, and the instance answers with it.
    let made = request(port, "GET", "/api/ping", &[], "");
    let id = made.header("x-request-id").unwrap().to_owned();
    assert_eq!(id.len(), 32, "NGINX's $request_id: {id}");
    let log = std::fs::read_to_string(dir.path().join("logs/access.log")).unwrap();
    assert!(
        log.contains("request_id=ops-req-42") && log.contains(&format!("request_id={id}")),
        "{log}"
    );

    assert_eq!(request(port, "GET", "/metrics", &[], "").status, 403);
    // The event stream passes unbuffered: an event published after the stream opened arrives.
    let (head, event) = first_event(port, session, || {
        let r = request(
            port,
            "PUT",
            "/api/agents/me/status",
            &[("cookie", session), JSON],
            r#"{"status":"available"}"#,
        );
        assert_eq!(r.status, 200, "{}", r.body);
    });
    assert!(head.contains("text/event-stream"), "{head}");
    assert!(event.contains("available"), "{event}");
}

// ------------------------------------------------------------------ promtool

fn promtool() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from("/usr/bin/promtool")).filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "promtool is not installed: apt-get install -y --no-install-recommends prometheus (.ci/test does it when run as root)"
            )
        })
}

fn run_promtool(args: &[&str], file: &str) -> Output {
    let out = Command::new(promtool())
        .args(args)
        .arg(ops_file(file))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {} ops/{file} failed: {}",
        args.join(" "),
        describe(&out)
    );
    out
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let check = run_promtool(&["check", "rules"], "prometheus/alerts.yml");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains("SUCCESS: 10 rules found"),
        "{}",
        describe(&check)
    );
    let test = run_promtool(&["test", "rules"], "prometheus/alerts_test.yml");
    assert!(
        String::from_utf8_lossy(&test.stdout).contains("SUCCESS"),
        "{}",
        describe(&test)
    );
    run_promtool(&["check", "config"], "prometheus/prometheus.yml");
}

/// The rules' unit tests cover every alert: each is tested firing and not firing.
#[test]
fn the_rule_tests_cover_every_alert() {
    let rules = read_ops_file("prometheus/alerts.yml");
    let tests = read_ops_file("prometheus/alerts_test.yml");
    let names: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(names.len() >= 9, "{names:?}");
    // Each `alertname: X` line opens one check; the next `exp_alerts` says whether it fires.
    let checks: Vec<(&str, bool)> = tests
        .split("alertname:")
        .skip(1)
        .map(|chunk| {
            let name = chunk.split_whitespace().next().unwrap_or_default();
            let fires = !chunk
                .lines()
                .find(|l| l.trim_start().starts_with("exp_alerts:"))
                .is_some_and(|l| l.trim_end().ends_with("[]"));
            (name, fires)
        })
        .collect();
    for name in names {
        for fires in [true, false] {
            assert!(
                checks.contains(&(name, fires)),
                "alerts_test.yml has no check that {name} {}",
                if fires { "fires" } else { "does not fire" }
            );
        }
    }
}
