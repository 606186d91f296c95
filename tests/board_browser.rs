//! The live agent board in a real browser: headless Chromium driven through WebDriver
//! (chromedriver + fantoccini), two `call_center` processes sharing one real Redis and a real
//! PostgreSQL primary with a streaming replica.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`bash .ci/test` installs them).
//! `UPDATE_SCREENSHOTS=1` also writes the screenshots to `docs/board.png` and
//! `docs/board-rollout.png` (the README's pictures); they are always written to `target/`.
//! The guarded-rollout panel is driven with two instances on one Redis (no PostgreSQL).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use welcomedly_testkit::{PgCluster, RedisServer, free_port};

const PASSWORD: &str = "board-test-password";
const ADMIN_TOKEN: &str = "board-test-admin-token";

fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    profile_dir.join("examples").join("call_center")
}

/// A child process killed (and reaped) on drop, so a failing test leaves nothing behind.
struct Process {
    child: Child,
    port: u16,
}

impl Process {
    fn wait_listening(mut self, what: &str) -> Self {
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{what} exited during start-up ({status})");
            }
            assert!(Instant::now() < deadline, "{what} did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        self
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn instance(name: &str, redis: &RedisServer, pg: &PgCluster) -> Process {
    instance_with(name, redis, Some(pg), &[])
}

/// An instance on `redis`, on `pg` or (none) the embedded SQLite, with `extra` variables.
fn instance_with(
    name: &str,
    redis: &RedisServer,
    pg: Option<&PgCluster>,
    extra: &[(&str, &str)],
) -> Process {
    let port = free_port().unwrap();
    let mut cmd = Command::new(example_binary());
    cmd.env_clear()
        .env("PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .env("REDIS_URL", redis.url())
        .env("WELCOMEDLY_INSTANCE_ID", name)
        .env("WELCOMEDLY_DEMO_PASSWORD", PASSWORD)
        .env("WELCOMEDLY_ADMIN_TOKEN", ADMIN_TOKEN)
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(pg) = pg {
        cmd.env("DATABASE_URL", pg.primary_url())
            .env("DATABASE_REPLICA_URLS", pg.replica_urls().join(","))
            .env(
                "WELCOMEDLY_CONSISTENCY_SECRET",
                "board-test-consistency-secret",
            );
    }
    let child = cmd
        .spawn()
        .expect("the example binary is built by cargo test");
    Process { child, port }.wait_listening(&format!("instance {name}"))
}

fn chromedriver() -> Process {
    let path = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| which("chromedriver"))
        .unwrap_or_else(|| {
            panic!(
                "chromedriver is not installed: the board's browser test needs Chromium and its \
                 WebDriver (Debian: apt-get install -y chromium chromium-driver; `bash .ci/test` \
                 does it)"
            )
        });
    let port = free_port().unwrap();
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    Process { child, port }.wait_listening("chromedriver")
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.exists())
    })
}

/// A fresh headless Chromium (its own profile: its own cookies) through chromedriver.
async fn browser(driver: &Process) -> Client {
    let mut caps = serde_json::Map::new();
    let mut chrome = json!({
        "args": [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1100,1250",
        ]
    });
    if Path::new("/usr/bin/chromium").exists() {
        chrome["binary"] = json!("/usr/bin/chromium");
    }
    caps.insert("goog:chromeOptions".into(), chrome);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session (is `chromium` installed?)")
}

async fn text(page: &Client, css: &str) -> String {
    page.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls `check` every 25 ms until it holds; the time it took, or a panic naming `what`.
async fn until<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn row_attr(page: &Client, agent: &str, attr: &str) -> Option<String> {
    let row = page
        .find(Locator::Css(&format!(r#"tr[data-agent="{agent}"]"#)))
        .await
        .ok()?;
    row.attr(attr).await.ok().flatten()
}

async fn row_cell(page: &Client, agent: &str, cell: &str) -> String {
    match page
        .find(Locator::Css(&format!(
            r#"tr[data-agent="{agent}"] .{cell}"#
        )))
        .await
    {
        Ok(el) => el.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn log_in(page: &Client, base: &str, user: &str) {
    page.goto(&format!("{base}/")).await.unwrap();
    page.wait()
        .for_element(Locator::Css("#username"))
        .await
        .unwrap();
    until("the login form shows", Duration::from_secs(5), || async {
        page.find(Locator::Css("#login"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap()
    })
    .await;
    // Typed, then submitted with Enter: the form works from the keyboard.
    page.find(Locator::Css("#username"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    page.find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(&format!("{PASSWORD}\u{E007}"))
        .await
        .unwrap();
    until(
        &format!("{user} is logged in"),
        Duration::from_secs(10),
        || async { text(page, "#me").await == user },
    )
    .await;
}

async fn stream_is_live_on(page: &Client, instance: &str) -> bool {
    text(page, "#stream-state").await == "live" && text(page, "#stream-instance").await == instance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_shows_an_agents_change_made_on_another_instance_live_and_survives_its_death() {
    let redis = RedisServer::start().unwrap();
    let pg = PgCluster::start(1).unwrap();
    let mut a = instance("instance-a", &redis, &pg);
    let b = instance("instance-b", &redis, &pg);
    let driver = chromedriver();
    // `localhost`, not 127.0.0.1: browsers keep `Secure` session cookies on http://localhost.
    let (url_a, url_b) = (
        format!("http://localhost:{}", a.port),
        format!("http://localhost:{}", b.port),
    );
    let agent = browser(&driver).await;
    let supervisor = browser(&driver).await;

    log_in(&agent, &url_a, "agent").await;
    log_in(&supervisor, &url_b, "supervisor").await;

    // Each page names the instance that served it and the one that holds its stream.
    assert_eq!(text(&agent, "#page-instance").await, "instance-a");
    assert_eq!(text(&supervisor, "#page-instance").await, "instance-b");
    until("both streams are live", Duration::from_secs(10), || async {
        stream_is_live_on(&agent, "instance-a").await
            && stream_is_live_on(&supervisor, "instance-b").await
    })
    .await;

    // Presence is who is connected, pushed to the pages (no polling): the agent's open page
    // makes them online before any status change, and leaving the page takes them away
    // within 2 s.
    let presence_on_b = || async { row_cell(&supervisor, "agent", "presence").await };
    until(
        "B's page shows the agent online",
        Duration::from_secs(2),
        || async { presence_on_b().await == "online" },
    )
    .await;
    // The agent leaves the page.
    agent.goto("about:blank").await.unwrap();
    let took = until(
        "B's page shows the agent away",
        Duration::from_secs(2),
        || async { presence_on_b().await == "away" },
    )
    .await;
    println!("the agent's page closed → away on B's page: {took:?}");
    agent.goto(&format!("{url_a}/")).await.unwrap();
    until(
        "the agent's page is back with a live stream",
        Duration::from_secs(10),
        || async { stream_is_live_on(&agent, "instance-a").await },
    )
    .await;
    until(
        "B's page shows the agent online again",
        Duration::from_secs(2),
        || async { presence_on_b().await == "online" },
    )
    .await;

    // Accessible: a language, every control labelled, nothing fetched from elsewhere.
    let audit = supervisor
        .execute(
            r#"return {
                lang: document.documentElement.lang,
                unlabelled: [...document.querySelectorAll('input, select, textarea')]
                    .filter(i => i.labels.length === 0 && !i.getAttribute('aria-label')).length,
                foreign: performance.getEntriesByType('resource')
                    .map(e => e.name).filter(n => !n.startsWith(location.origin)),
            };"#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(audit["lang"], "en", "{audit}");
    assert_eq!(audit["unlabelled"], 0, "{audit}");
    assert_eq!(audit["foreign"], json!([]), "{audit}");

    // A flag flipped through the admin API on instance A re-renders the page served and
    // streamed by instance B: the store pushes the change to B, B's stream sends a `flags`
    // event, the page reads its flags again through OFREP bulk and turns dark.
    let dark = || async {
        supervisor
            .execute("return document.body.classList.contains('dark');", vec![])
            .await
            .unwrap()
            == json!(true)
    };
    assert!(!dark().await, "the seeded theme is light");
    let (status, raw) = admin_put(
        a.port,
        "/admin/flags/board-theme",
        r#"{"variants": {"light": "light", "dark": "dark"}, "fallthrough": {"variant": "dark"}}"#,
    );
    assert_eq!(status, 200, "{raw}");
    let took = until(
        "B's page turns dark after the flag flip on A",
        Duration::from_secs(5),
        || async { dark().await },
    )
    .await;
    println!("board-theme flipped on A → B's page re-rendered: {took:?}");

    // The supervisor view: campaigns through the DB router, and the flag-gated statistics
    // (`campaign-stats` targets `supervisor`).
    until(
        "the supervisor view shows",
        Duration::from_secs(5),
        || async {
            supervisor
                .find(Locator::Css("#stats"))
                .await
                .unwrap()
                .is_displayed()
                .await
                .unwrap()
        },
    )
    .await;
    assert!(
        !agent
            .find(Locator::Css("#supervisor"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap(),
        "an agent does not get the supervisor view"
    );
    supervisor
        .find(Locator::Css("#campaign-name"))
        .await
        .unwrap()
        .send_keys("Spring renewals\u{E007}")
        .await
        .unwrap();
    until(
        "the new campaign is listed",
        Duration::from_secs(5),
        || async {
            text(&supervisor, "#campaigns")
                .await
                .contains("Spring renewals (active)")
        },
    )
    .await;
    // The gated statistics count it (read-your-writes: whichever node answers).
    until(
        "the statistics count it",
        Duration::from_secs(5),
        || async { text(&supervisor, "#stats-detail").await == "1 campaign: 1 active" },
    )
    .await;

    // The agent goes on a call on A, from the keyboard (space selects the focused radio);
    // the supervisor's page on B shows it within a second.
    agent
        .find(Locator::Css(r#"input[name="status"][value="on_call"]"#))
        .await
        .unwrap()
        .send_keys(" ")
        .await
        .unwrap();
    let took = until(
        "B's page shows the agent on a call",
        Duration::from_secs(1),
        || async {
            row_attr(&supervisor, "agent", "data-status")
                .await
                .as_deref()
                == Some("on_call")
        },
    )
    .await;
    println!("A → Redis → B → SSE → B's page: {took:?}");
    assert_eq!(
        row_cell(&supervisor, "agent", "instance").await,
        "instance-a"
    );
    assert_eq!(row_cell(&supervisor, "agent", "presence").await, "online");

    let shot = supervisor.screenshot().await.unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(root.join("target")).unwrap();
    std::fs::write(root.join("target").join("board.png"), &shot).unwrap();
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::write(root.join("docs").join("board.png"), &shot).unwrap();
    }

    // Instance A dies. The page on B keeps working: its stream stays live, its own changes
    // still go round the bus, and the agent's presence (held by A) goes away — no ghost.
    a.kill();
    supervisor
        .find(Locator::Css(r#"input[name="status"][value="available"]"#))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        "B's page shows the supervisor's own change",
        Duration::from_secs(5),
        || async {
            row_attr(&supervisor, "supervisor", "data-status")
                .await
                .as_deref()
                == Some("available")
        },
    )
    .await;
    until(
        "the agent's presence left with A",
        Duration::from_secs(15),
        || async { row_cell(&supervisor, "agent", "presence").await == "away" },
    )
    .await;
    assert!(stream_is_live_on(&supervisor, "instance-b").await);
    // The last status the agent set is still shown: it is the agent's, not the instance's.
    assert_eq!(
        row_attr(&supervisor, "agent", "data-status")
            .await
            .as_deref(),
        Some("on_call")
    );
    // The agent's page notices that its instance is gone.
    until(
        "A's page says its stream is down",
        Duration::from_secs(10),
        || async { text(&agent, "#stream-state").await != "live" },
    )
    .await;

    agent.close().await.unwrap();
    supervisor.close().await.unwrap();
    drop(b);
}

/// One HTTP/1.1 request on a fresh connection; the status, the `set-cookie` session and body.
fn http(port: u16, method: &str, path: &str, cookie: Option<&str>, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(c) = cookie {
        head.push_str(&format!("cookie: {c}\r\n"));
    }
    write!(s, "{head}\r\n{body}").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    (status, raw)
}

/// `PUT` on the flags admin API (bearer token, `If-Match: *`): the status and the raw answer.
fn admin_put(port: u16, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\nauthorization: Bearer {ADMIN_TOKEN}\r\nif-match: *\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    (status, raw)
}

fn session_cookie(raw: &str) -> String {
    raw.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.trim().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("__Host-wd_session="))
        .expect("a session cookie")
}

/// Behind NGINX, the instance holding the page's stream dies: the browser reconnects through
/// NGINX to the other instance and the board catches up on what changed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_the_board_survives_the_death_of_the_instance_holding_its_stream() {
    use welcomedly_testkit::{Nginx, NginxConfig};
    let redis = RedisServer::start().unwrap();
    let pg = PgCluster::start(1).unwrap();
    let mut instances = [
        ("instance-a", instance("instance-a", &redis, &pg)),
        ("instance-b", instance("instance-b", &redis, &pg)),
    ];
    let ports: Vec<u16> = instances.iter().map(|(_, p)| p.port).collect();
    let nginx = Nginx::start(
        &NginxConfig::least_conn(&ports)
            .keepalive(16)
            .max_fails(1)
            .fail_timeout(Duration::from_secs(2))
            .forwarded_for()
            .buffering(false)
            .read_timeout(Duration::from_secs(3600)),
    )
    .unwrap();
    let driver = chromedriver();
    let supervisor = browser(&driver).await;
    log_in(
        &supervisor,
        &format!("http://localhost:{}", nginx.port()),
        "supervisor",
    )
    .await;
    until("the stream is live", Duration::from_secs(10), || async {
        text(&supervisor, "#stream-state").await == "live"
    })
    .await;
    let holder = text(&supervisor, "#stream-instance").await;
    let (survivor_name, survivor_port) = instances
        .iter()
        .find(|(name, _)| *name != holder)
        .map(|(name, p)| (*name, p.port))
        .unwrap();

    // The agent works through NGINX too (no browser needed for that side).
    let login = format!(r#"{{"username":"agent","password":"{PASSWORD}"}}"#);
    let (status, raw) = http(nginx.port(), "POST", "/auth/login", None, &login);
    assert_eq!(status, 200, "{raw}");
    let agent = session_cookie(&raw);
    let set = |port: u16, state: &str| {
        let (status, raw) = http(
            port,
            "PUT",
            "/api/agents/me/status",
            Some(&agent),
            &format!(r#"{{"status":"{state}"}}"#),
        );
        assert_eq!(status, 200, "{raw}");
    };
    set(nginx.port(), "on_break");
    until(
        "the page shows the break",
        Duration::from_secs(2),
        || async {
            row_attr(&supervisor, "agent", "data-status")
                .await
                .as_deref()
                == Some("on_break")
        },
    )
    .await;

    // The instance holding the stream dies; a change is made while the browser reconnects.
    instances
        .iter_mut()
        .find(|(name, _)| *name == holder)
        .unwrap()
        .1
        .kill();
    set(survivor_port, "in_training");
    let took = until(
        "the page reconnected to the survivor and caught up",
        Duration::from_secs(15),
        || async {
            stream_is_live_on(&supervisor, survivor_name).await
                && row_attr(&supervisor, "agent", "data-status")
                    .await
                    .as_deref()
                    == Some("in_training")
        },
    )
    .await;
    println!("{holder} killed: the page streams from {survivor_name} and caught up in {took:?}");
    // And it keeps working through NGINX: the supervisor's own change goes round.
    supervisor
        .find(Locator::Css(r#"input[name="status"][value="available"]"#))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        "the supervisor's change shows",
        Duration::from_secs(5),
        || async {
            row_attr(&supervisor, "supervisor", "data-status")
                .await
                .as_deref()
                == Some("available")
        },
    )
    .await;
    supervisor.close().await.unwrap();
}

/// `POST` on the rollout admin API (bearer token): the status and the raw answer.
fn admin_post(port: u16, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    (status, raw)
}

/// Anonymous `GET /api/checkout` on every port in turn, from a thread, until the flag is set.
fn checkout_traffic(
    ports: Vec<u16>,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<u64>,
) {
    use std::sync::atomic::Ordering;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut sent = 0;
        while !s.load(Ordering::Relaxed) {
            for port in &ports {
                for _ in 0..10 {
                    let (status, raw) = http(*port, "GET", "/api/checkout", None, "");
                    assert!(status == 200 || status == 500, "{raw}");
                    sent += 1;
                }
            }
        }
        sent
    });
    (stop, handle)
}

/// The rollout panel's article for `new-checkout`: its `data-state` and `data-stage`.
async fn panel(page: &Client) -> Option<(String, String)> {
    let article = page
        .find(Locator::Css(r#"article.rollout[data-flag="new-checkout"]"#))
        .await
        .ok()?;
    let state = article.attr("data-state").await.ok().flatten()?;
    let stage = article.attr("data-stage").await.ok().flatten()?;
    Some((state, stage))
}

/// The board served by one instance follows a guarded rollout started through the admin API
/// of another: the panel shows the stage advancing (5 % → … → 100 %), the arms side by side
/// with live counts, and finally the completed state with its last decision; with the demo
/// fault on (20 % of the new path fails), the rolled-back state and its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_shows_a_rollout_advance_on_another_instance_and_complete_or_roll_back() {
    let driver = chromedriver();
    for (fault, want) in [("", "completed"), ("errors=0.2", "rolled_back")] {
        let redis = RedisServer::start().unwrap();
        let extra = [
            ("WELCOMEDLY_API_PER_MINUTE", "1000000"),
            ("WELCOMEDLY_DEMO_FAULT", fault),
        ];
        let a = instance_with("instance-a", &redis, None, &extra);
        let b = instance_with("instance-b", &redis, None, &extra);
        let page = browser(&driver).await;
        let url_b = format!("http://localhost:{}", b.port);
        log_in(&page, &url_b, "supervisor").await;
        until("the stream is live", Duration::from_secs(10), || async {
            stream_is_live_on(&page, "instance-b").await
        })
        .await;
        // No rollout yet: no panel.
        assert!(
            !page
                .find(Locator::Css("#rollouts"))
                .await
                .unwrap()
                .is_displayed()
                .await
                .unwrap(),
            "the rollout panel shows before any rollout"
        );

        // Started on A, three stages; the page on B shows the first one at once.
        let plan = r#"{"stages": [
            {"percent": 5, "minDurationSecs": 4, "minSamples": 30},
            {"percent": 25, "minDurationSecs": 4, "minSamples": 30},
            {"percent": 100}]}"#;
        let (status, raw) = admin_post(a.port, "/admin/rollouts/new-checkout", plan);
        assert_eq!(status, 201, "{raw}");
        let took = until(
            "B's page shows the rollout at its first stage",
            Duration::from_secs(5),
            || async { panel(&page).await == Some(("running".into(), "0".into())) },
        )
        .await;
        println!("rollout started on A → panel on B's page: {took:?}");
        assert_eq!(
            text(&page, r#"article[data-flag="new-checkout"] ol.stages"#).await,
            "5 %\n25 %\n100 %"
        );
        assert!(
            text(&page, r#"article[data-flag="new-checkout"] p.decision"#)
                .await
                .starts_with("Last decision: start in stage 1 (now 5 %) by admin"),
        );

        // Traffic on both instances: the stages advance, the arms count.
        let (stop, traffic) = checkout_traffic(vec![a.port, b.port]);
        let mut seen = Vec::new();
        let mut counted = false;
        let mut froze = false;
        let started = Instant::now();
        loop {
            if let Some(p) = panel(&page).await {
                if seen.last() != Some(&p) {
                    seen.push(p.clone());
                }
                if p.0 == want {
                    break;
                }
                if !counted && p.0 == "running" {
                    let n = text(
                        &page,
                        r#"article[data-flag="new-checkout"] tr.requests td.treatment"#,
                    )
                    .await;
                    counted = n.parse::<u64>().is_ok_and(|n| n > 0);
                    if counted {
                        let shot = page.screenshot().await.unwrap();
                        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
                        std::fs::create_dir_all(root.join("target")).unwrap();
                        std::fs::write(root.join("target").join("board-rollout.png"), &shot)
                            .unwrap();
                        if std::env::var_os("UPDATE_SCREENSHOTS").is_some() && want == "completed" {
                            std::fs::create_dir_all(root.join("docs")).unwrap();
                            std::fs::write(root.join("docs").join("board-rollout.png"), &shot)
                                .unwrap();
                        }
                    }
                }
                // Healthy run, second stage: Redis stops answering. The page (its stream
                // still open on B) shows the rollout frozen with why, then running again.
                if want == "completed" && !froze && p == ("running".into(), "1".into()) {
                    froze = true;
                    redis.pause().unwrap();
                    let took = until(
                        "B's page shows the rollout frozen",
                        Duration::from_secs(10),
                        || async { panel(&page).await.is_some_and(|p| p.0 == "frozen") },
                    )
                    .await;
                    println!("Redis paused → frozen on B's page: {took:?}");
                    seen.push(("frozen".into(), "1".into()));
                    let why =
                        text(&page, r#"article[data-flag="new-checkout"] p.frozen-why"#).await;
                    assert!(why.starts_with("Frozen: nothing is decided"), "{why}");
                    assert_eq!(
                        text(&page, r#"article[data-flag="new-checkout"] .badge"#).await,
                        "frozen"
                    );
                    redis.resume().unwrap();
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "B's page never showed {want}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = traffic.join().unwrap();
        println!(
            "{want} on B's page after {:?} and {sent} checkouts: {seen:?}",
            started.elapsed()
        );
        assert!(counted, "the panel never showed the treatment's requests");
        let decision = text(&page, r#"article[data-flag="new-checkout"] p.decision"#).await;
        let stages = page
            .execute(
                r#"return [...document.querySelectorAll('article[data-flag="new-checkout"] ol.stages li')]
                    .map(li => li.className);"#,
                vec![],
            )
            .await
            .unwrap();
        if want == "completed" {
            assert!(
                seen.contains(&("running".into(), "1".into())),
                "the page never showed the second stage: {seen:?}"
            );
            assert!(froze, "{seen:?}");
            assert!(
                decision.starts_with("Last decision: complete"),
                "{decision}"
            );
            assert_eq!(stages, json!(["done", "done", "done"]));
            assert_eq!(
                text(&page, r#"article[data-flag="new-checkout"] .badge"#).await,
                "completed"
            );
        } else {
            assert!(
                decision.starts_with("Last decision: rollback"),
                "{decision}"
            );
            assert!(decision.contains("a regression: errorRatio"), "{decision}");
            // Stopped at the stage it was rolled back in, the ones before it passed.
            let at: usize = seen.last().unwrap().1.parse().unwrap();
            let mut expected = vec!["done"; at];
            expected.push("stopped");
            expected.resize(3, "");
            assert_eq!(stages, json!(expected), "{seen:?}");
            assert_eq!(
                text(&page, r#"article[data-flag="new-checkout"] .badge"#).await,
                "rolled back"
            );
        }
        let shot = page.screenshot().await.unwrap();
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        std::fs::create_dir_all(root.join("target")).unwrap();
        std::fs::write(
            root.join("target")
                .join(format!("board-rollout-{want}.png")),
            &shot,
        )
        .unwrap();
        page.close().await.unwrap();
        drop((a, b));
    }
}
