//! The board's read-only view of guarded rollouts over HTTP: `GET /api/rollouts` (behind the
//! session) and the `rollout` events of `GET /api/events`, on two instances sharing one real
//! Redis. A rollout started through the admin API on one instance shows on the other, its
//! stages advance under checkout traffic, and the stream sends the view at most once a second
//! and only when it changed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::call_center::*;
use support::rollouts::{get, instances, start_rollout};
use welcomedly_testkit::RedisServer;

const PLAN: &str = r#"{"stages": [
    {"percent": 20, "minDurationSecs": 4, "minSamples": 60},
    {"percent": 60, "minDurationSecs": 4, "minSamples": 60},
    {"percent": 100}]}"#;

fn rollouts(app: &Instance, cookie: &str) -> Value {
    let r = app.request_with("GET", "/api/rollouts", &[("cookie", cookie)], "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    serde_json::from_str(&r.body).unwrap()
}

/// The `rollout` events of one open stream, with when each arrived.
type Events = Arc<Mutex<Vec<(Instant, Value)>>>;

/// Reads `rollout` events from the stream until it closes or the test ends.
fn collect_rollout_events(mut stream: std::net::TcpStream) -> Events {
    let events: Events = Arc::default();
    let out = events.clone();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    std::thread::spawn(move || {
        let mut pending = String::new();
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => pending.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(_) => return,
            }
            // One SSE event per chunk: "event: rollout\ndata: {...}\n\n".
            while let Some(start) = pending.find("event: rollout\ndata: ") {
                let rest = &pending[start + "event: rollout\ndata: ".len()..];
                let Some(end) = rest.find('\n') else { break };
                let data: Value = serde_json::from_str(&rest[..end])
                    .unwrap_or_else(|e| panic!("a rollout event is not JSON ({e}): {rest}"));
                out.lock().unwrap().push((Instant::now(), data));
                let consumed = start + "event: rollout\ndata: ".len() + end;
                pending.drain(..consumed);
            }
        }
    });
    events
}

/// Anonymous checkouts on every instance, from a thread, until the returned flag is set.
fn drive_checkouts(ports: Vec<u16>) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut sent = 0;
        while !s.load(Ordering::Relaxed) {
            for port in &ports {
                for _ in 0..10 {
                    let status = get(*port, "/api/checkout").unwrap().0;
                    assert!(status == 200 || status == 500, "checkout answered {status}");
                    sent += 1;
                }
            }
        }
        sent
    });
    (stop, handle)
}

fn the_rollout(view: &Value) -> Option<&Value> {
    view["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["flag"] == "new-checkout")
}

#[test]
fn the_board_view_needs_a_login_and_follows_a_rollout_started_on_another_instance() {
    let redis = RedisServer::start().unwrap();
    let apps = instances(&redis, "");
    let (a, b) = (&apps[0], &apps[1]);

    // Behind the session: 401 (problem+json) without a login.
    let anonymous = b.request("GET", "/api/rollouts", None);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(
        anonymous.header("content-type"),
        Some("application/problem+json")
    );
    let forged = b.request_with(
        "GET",
        "/api/rollouts",
        &[("cookie", "__Host-wd_session=forged")],
        "",
    );
    assert_eq!(forged.status, 401, "{}", forged.body);

    // Any logged-in user reads it; nothing runs yet.
    let cookie = log_in(b, "agent");
    assert_eq!(rollouts(b, &cookie), serde_json::json!({"rollouts": []}));

    // B's stream, open before the rollout starts.
    let (stream, head) = open_stream(b, &cookie);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let events = collect_rollout_events(stream);
    let opened = Instant::now();

    // Started on A: B's view shows it at its first stage, with the start decision.
    start_rollout(a, PLAN);
    let view = rollouts(b, &cookie);
    let r = the_rollout(&view).unwrap_or_else(|| panic!("not on B: {view:#}"));
    assert_eq!(r["state"], "running", "{r:#}");
    assert_eq!(r["stage"], 0);
    assert_eq!(r["percent"], 20.0);
    assert_eq!(r["stages"], serde_json::json!([20.0, 60.0, 100.0]));
    assert_eq!(r["lastDecision"]["action"], "start");
    assert_eq!(r["lastDecision"]["reason"], "started by admin");
    for arm in ["control", "treatment"] {
        for field in ["requests", "errors", "errorRatio", "latencyQuantile"] {
            assert!(r["arms"][arm][field].is_number(), "{arm}.{field}: {r:#}");
        }
    }
    // The board's view, not the admin status: no plan, no history.
    assert!(
        r.get("plan").is_none() && r.get("decisions").is_none(),
        "{r:#}"
    );

    // Traffic on both instances: the stages advance and the rollout completes; B's stream
    // says so (the decisions were taken by whichever instance holds the lease).
    let (stop, traffic) = drive_checkouts(vec![a.port, b.port]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done = events
            .lock()
            .unwrap()
            .iter()
            .any(|(_, v)| the_rollout(v).is_some_and(|r| r["state"] == "completed"));
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B's stream never said completed: {:#?}",
            events.lock().unwrap().last()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.join().unwrap();
    let finished = Instant::now();
    let seen: Vec<(Instant, Value)> = events.lock().unwrap().clone();
    println!(
        "{} rollout events on B's stream over {:?}, {sent} checkouts",
        seen.len(),
        finished - opened
    );

    for (at, v) in &seen {
        println!("{:?} {}", *at - opened, v);
    }
    // The stream showed the stages advancing, in order, with live arm counts.
    let stages: Vec<(String, u64)> = seen
        .iter()
        .filter_map(|(_, v)| the_rollout(v))
        .map(|r| {
            (
                r["state"].as_str().unwrap().to_owned(),
                r["stage"].as_u64().unwrap(),
            )
        })
        .collect();
    let running: Vec<u64> = stages
        .iter()
        .filter(|(s, _)| s == "running")
        .map(|(_, n)| *n)
        .collect();
    assert!(
        running.windows(2).all(|w| w[0] <= w[1]),
        "stages went back: {stages:?}"
    );
    assert!(
        running.contains(&0) && running.contains(&1),
        "B's stream did not show stage 0 then stage 1: {stages:?}"
    );
    assert!(
        seen.iter().filter_map(|(_, v)| the_rollout(v)).any(|r| {
            r["state"] == "running" && r["arms"]["treatment"]["requests"].as_u64() > Some(0)
        }),
        "no event showed the treatment's requests"
    );
    let last = the_rollout(&seen.last().unwrap().1).unwrap();
    assert_eq!(last["lastDecision"]["action"], "complete", "{last:#}");
    assert!(
        last["lastDecision"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("every stage passed: errorRatio "),
        "{last:#}"
    );

    // Bounded: at most one event a second (plus the first), and each one a change.
    let span = (finished - opened).as_secs_f64();
    assert!(
        (seen.len() as f64) <= span + 1.0,
        "{} events in {span:.1} s",
        seen.len()
    );
    assert!(
        seen.windows(2).all(|w| w[0].1 != w[1].1),
        "an event repeated the view before it"
    );

    // Nothing changes any more: no more events.
    let before = seen.len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        events.lock().unwrap().len(),
        before,
        "events after the rollout completed: {:#?}",
        events.lock().unwrap().last()
    );
    // And the view (read again on any instance) still shows the completed rollout.
    let cookie_a = log_in(a, "supervisor");
    let view = rollouts(a, &cookie_a);
    assert_eq!(the_rollout(&view).unwrap()["state"], "completed");

    for app in apps {
        assert!(app.terminate().success());
    }
}
