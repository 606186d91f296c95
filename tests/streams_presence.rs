//! Event streams that end with their session, `Last-Event-ID` past the end of the topic, and
//! presence that follows connections: the call-center example as processes (debug builds, so an
//! arithmetic overflow would panic), two instances sharing a real Redis.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use support::call_center::*;
use welcomedly_testkit::{Nginx, NginxConfig, RedisServer};

/// The SSE heartbeat the instances run with: a stream ends at most this long after its session
/// ended elsewhere.
const HEARTBEAT_MS: u64 = 500;
/// The membership timeout the instances run with.
const MEMBER_TIMEOUT_MS: u64 = 1500;

fn clustered(redis: &RedisServer, id: &str) -> Instance {
    Instance::start(&[
        ("REDIS_URL", redis.url()),
        ("WELCOMEDLY_INSTANCE_ID", id.to_owned()),
        ("WELCOMEDLY_SSE_HEARTBEAT_MS", HEARTBEAT_MS.to_string()),
        ("WELCOMEDLY_HEARTBEAT_MS", "300".to_owned()),
        (
            "WELCOMEDLY_MEMBER_TIMEOUT_MS",
            MEMBER_TIMEOUT_MS.to_string(),
        ),
    ])
}

/// An open `GET /api/events` and everything read from it so far.
struct Stream {
    socket: TcpStream,
    text: String,
    ended: bool,
}

impl Stream {
    fn open(app: &Instance, cookie: &str, last_event_id: Option<&str>) -> Stream {
        Self::open_on(app.port, cookie, last_event_id)
    }

    /// Opens the stream on `port` (an instance, or a proxy in front of it).
    fn open_on(port: u16, cookie: &str, last_event_id: Option<&str>) -> Stream {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let resume = last_event_id
            .map(|id| format!("last-event-id: {id}\r\n"))
            .unwrap_or_default();
        write!(
            socket,
            "GET /api/events HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\ncookie: {cookie}\r\n{resume}\r\n"
        )
        .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut s = Stream {
            socket,
            text: String::new(),
            ended: false,
        };
        s.until("the response head", Duration::from_secs(5), |t| {
            t.contains("\r\n\r\n")
        });
        assert!(s.text.starts_with("HTTP/1.1 200"), "{}", s.text);
        s
    }

    /// Reads until `done(text so far)` or the end of the stream; panics after `within`.
    fn until(&mut self, what: &str, within: Duration, done: impl Fn(&str) -> bool) -> Duration {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            if done(&self.text) {
                return start.elapsed();
            }
            assert!(!self.ended, "the stream ended before {what}: {}", self.text);
            assert!(
                start.elapsed() < within,
                "not within {within:?}: {what}: {}",
                self.text
            );
            match self.socket.read(&mut buf) {
                Ok(0) => self.ended = true,
                Ok(n) => self.text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                // A reset is an end too (the server closed a connection with unread input).
                Err(_) => self.ended = true,
            }
        }
    }

    /// Reads until the server ends the stream (the last chunk of the response, or the
    /// connection closed); how long that took.
    fn until_end(&mut self, what: &str, within: Duration) -> Duration {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while !self.ended && !self.text.ends_with("\r\n0\r\n\r\n") {
            assert!(
                start.elapsed() < within,
                "the stream is still open after {within:?}: {what}: {}",
                self.text
            );
            match self.socket.read(&mut buf) {
                Ok(0) => self.ended = true,
                Ok(n) => self.text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => self.ended = true,
            }
        }
        start.elapsed()
    }

    /// Closes the connection the way a closed browser tab does.
    fn close(self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

fn set_status(app: &Instance, cookie: &str, status: &str) {
    let r = app.request_with(
        "PUT",
        "/api/agents/me/status",
        &[("cookie", cookie), ("content-type", "application/json")],
        &format!(r#"{{"status":"{status}"}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

/// `online` of `agent` in `GET /api/agents` on `app`.
fn online(app: &Instance, cookie: &str, agent: &str) -> bool {
    let r = app.request_with("GET", "/api/agents", &[("cookie", cookie)], "");
    assert_eq!(r.status, 200, "{}", r.body);
    let json: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    json["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == agent)
        .unwrap()["online"]
        == true
}

/// Polls `online` until it is `want`; how long that took.
fn until_online(
    app: &Instance,
    cookie: &str,
    agent: &str,
    want: bool,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        if online(app, cookie, agent) == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{agent} not {} within {within:?}",
            if want { "online" } else { "offline" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn streams_end_with_their_session_and_free_their_slots() {
    let redis = RedisServer::start().unwrap();
    let a = clustered(&redis, "streams-a");
    let b = clustered(&redis, "streams-b");
    let agent = log_in(&a, "agent");
    let supervisor = log_in(&b, "supervisor");

    // The agent fills all 8 of their slots on B.
    let mut streams: Vec<Stream> = (0..8).map(|_| Stream::open(&b, &agent, None)).collect();
    for s in &mut streams {
        s.until("hello", Duration::from_secs(5), |t| {
            t.contains("event: hello")
        });
    }
    let (_, head) = open_stream(&b, &agent);
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");

    // Log out everywhere on the OTHER instance: every stream on B ends within a heartbeat
    // (plus the time to notice), after a last `session_ended` event.
    let out = a.request_with(
        "POST",
        "/auth/logout?everywhere=true",
        &[("cookie", &agent)],
        "",
    );
    assert_eq!(out.status, 200, "{}", out.body);
    let mut slowest = Duration::ZERO;
    for s in &mut streams {
        slowest = slowest.max(s.until_end(
            "logged out everywhere on A",
            Duration::from_millis(HEARTBEAT_MS * 2 + 1000),
        ));
        assert!(s.text.contains("event: session_ended"), "{}", s.text);
    }
    println!(
        "streams on B ended {slowest:?} after log out everywhere on A (heartbeat {HEARTBEAT_MS} ms)"
    );
    // The next status change reaches nobody through them (they are closed), and their slots
    // are free: a new login opens 8 streams again.
    set_status(&b, &supervisor, "on_call");
    let again = log_in(&b, "agent");
    let held: Vec<Stream> = (0..8).map(|_| Stream::open(&b, &again, None)).collect();

    // A plain logout on the same instance ends that session's streams at once.
    let out = b.request_with("POST", "/auth/logout", &[("cookie", &again)], "");
    assert_eq!(out.status, 200, "{}", out.body);
    for mut s in held {
        let took = s.until_end("logged out on B", Duration::from_millis(HEARTBEAT_MS));
        assert!(
            s.text.contains("event: session_ended"),
            "{took:?} {}",
            s.text
        );
    }
    assert_eq!(
        b.request_with("GET", "/api/me", &[("cookie", &again)], "")
            .status,
        401
    );
    // A stream opened with the ended session is refused.
    let (_, head) = open_stream(&b, &again);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

#[test]
fn a_last_event_id_past_the_end_gets_a_notice_then_live_events() {
    // The embedded default in a debug build: `u64::MAX + 1` would panic the connection task.
    let app = Instance::start(&[]);
    let agent = log_in(&app, "agent");
    // A real offset: the id of a status change.
    let mut s = Stream::open(&app, &agent, None);
    s.until("hello", Duration::from_secs(5), |t| {
        t.contains("event: hello")
    });
    set_status(&app, &agent, "available");
    s.until("an event id", Duration::from_secs(5), |t| {
        t.lines().any(|l| l.starts_with("id: "))
    });
    let id = s
        .text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap()
        .trim()
        .to_owned();
    s.close();
    let (stream_id, rest) = id.split_once('.').unwrap();
    let (epoch, _) = rest.split_once('.').unwrap();

    for (what, offset) in [
        (
            "sequence u64::MAX",
            format!("{stream_id}.{epoch}.{}", u64::MAX),
        ),
        (
            "sequence u64::MAX from the start",
            format!("0-0.{epoch}.{}", u64::MAX),
        ),
        ("an id past the tip", format!("99999999999999-0.{epoch}.1")),
    ] {
        let mut s = Stream::open(&app, &agent, Some(&offset));
        s.until(what, Duration::from_secs(5), |t| {
            t.contains("event: gap\ndata: {\"reason\":\"past_the_end\"}")
        });
        set_status(&app, &agent, "on_call");
        s.until(what, Duration::from_secs(5), |t| {
            t.contains(r#""status":"on_call""#)
        });
        assert!(
            !s.text.contains(r#""status":"available""#),
            "{what}: the history is not replayed: {}",
            s.text
        );
        s.close();
        set_status(&app, &agent, "paused");
    }
    // The instance is fine: its stream tasks did not panic.
    assert_eq!(app.request("GET", "/health/live", None).status, 200);
    assert!(app.terminate().success());
}

#[test]
fn presence_follows_open_streams_across_tabs_and_instances() {
    let redis = RedisServer::start().unwrap();
    let a = clustered(&redis, "presence-a");
    let b = clustered(&redis, "presence-b");
    let agent = log_in(&a, "agent");
    let supervisor = log_in(&b, "supervisor");
    // The supervisor's board on B: presence is pushed to it.
    let mut board = Stream::open(&b, &supervisor, None);
    board.until("hello", Duration::from_secs(5), |t| {
        t.contains("event: hello")
    });
    assert!(!online(&b, &supervisor, "agent"), "no stream, no presence");

    // One tab on A, no status change: online, on both instances, and pushed to the board.
    let tab1 = Stream::open(&a, &agent, None);
    until_online(&b, &supervisor, "agent", true, Duration::from_secs(2));
    assert!(online(&a, &agent, "agent"));
    let joined_a =
        r#"event: presence\ndata: {"agent":"agent","instance":"presence-a","online":true}"#;
    board.until("the join pushed", Duration::from_secs(2), |t| {
        t.contains(&joined_a.replace("\\n", "\n"))
    });

    // A second tab on A and a third on B: closing two of three keeps the agent online.
    let tab2 = Stream::open(&a, &agent, None);
    let tab3 = Stream::open(&b, &agent, None);
    board.until("the join on B pushed", Duration::from_secs(2), |t| {
        t.contains(r#""instance":"presence-b","online":true"#)
    });
    tab1.close();
    tab3.close();
    board.until("B's leave pushed", Duration::from_secs(2), |t| {
        t.contains(r#""instance":"presence-b","online":false"#)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        online(&b, &supervisor, "agent"),
        "one tab is still open on A"
    );
    assert!(
        !board
            .text
            .contains(r#""instance":"presence-a","online":false"#),
        "A still holds a tab: {}",
        board.text
    );

    // Closing the last one: offline within 2 s, pushed to the board.
    tab2.close();
    let took = until_online(&b, &supervisor, "agent", false, Duration::from_secs(2));
    board.until("the leave pushed", Duration::from_secs(2), |t| {
        t.contains(r#""instance":"presence-a","online":false"#)
    });
    println!("offline {took:?} after the last stream closed");
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

#[test]
fn presence_on_the_embedded_default_follows_streams_too() {
    let app = Instance::start(&[]);
    let agent = log_in(&app, "agent");
    let supervisor = log_in(&app, "supervisor");
    let mut board = Stream::open(&app, &supervisor, None);
    board.until("hello", Duration::from_secs(5), |t| {
        t.contains("event: hello")
    });
    assert!(!online(&app, &supervisor, "agent"));
    let tab = Stream::open(&app, &agent, None);
    until_online(&app, &supervisor, "agent", true, Duration::from_secs(2));
    board.until("the join pushed", Duration::from_secs(2), |t| {
        t.contains(r#"event: presence"#) && t.contains(r#""agent":"agent""#)
    });
    tab.close();
    until_online(&app, &supervisor, "agent", false, Duration::from_secs(2));
    board.until("the leave pushed", Duration::from_secs(2), |t| {
        t.contains(r#""online":false"#)
    });
    assert!(app.terminate().success());
}

#[test]
fn a_killed_instance_takes_its_agents_offline_within_the_membership_timeout() {
    let redis = RedisServer::start().unwrap();
    let mut a = clustered(&redis, "doomed-a");
    let b = clustered(&redis, "survivor-b");
    let agent = log_in(&a, "agent");
    let supervisor = log_in(&b, "supervisor");
    let mut board = Stream::open(&b, &supervisor, None);
    board.until("hello", Duration::from_secs(5), |t| {
        t.contains("event: hello")
    });
    let _tab = Stream::open(&a, &agent, None);
    until_online(&b, &supervisor, "agent", true, Duration::from_secs(2));

    // SIGKILL: no leave, no goodbye; the agent's stream socket stays open on the test's side.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    until_online(
        &b,
        &supervisor,
        "agent",
        false,
        Duration::from_millis(MEMBER_TIMEOUT_MS + 500),
    );
    println!(
        "offline {:?} after SIGKILL (timeout {MEMBER_TIMEOUT_MS} ms)",
        killed.elapsed()
    );
    // The survivor that reaped A tells the boards.
    board.until("the reaped presence pushed", Duration::from_secs(3), |t| {
        t.contains(r#""instance":"doomed-a","online":false"#)
    });
    assert!(b.terminate().success());
}

#[test]
fn behind_nginx_a_closed_client_connection_takes_the_agent_offline_at_once() {
    let app = Instance::start(&[]);
    let nginx = Nginx::start(
        &NginxConfig::least_conn(&[app.port])
            .keepalive(16)
            .buffering(false)
            .read_timeout(Duration::from_secs(3600)),
    )
    .unwrap();
    let agent = log_in(&app, "agent");
    let supervisor = log_in(&app, "supervisor");
    let mut tab = Stream::open_on(nginx.port(), &agent, None);
    tab.until("hello", Duration::from_secs(5), |t| {
        t.contains("event: hello")
    });
    until_online(&app, &supervisor, "agent", true, Duration::from_secs(2));
    // The browser goes away: NGINX sees its connection close and closes the upstream one,
    // which the instance notices without writing to it.
    tab.close();
    let took = until_online(&app, &supervisor, "agent", false, Duration::from_secs(2));
    println!("behind NGINX: offline {took:?} after the client closed its connection");
    assert!(app.terminate().success());
}
