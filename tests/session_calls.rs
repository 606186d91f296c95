//! What a logged-in browser's requests cost the session store, counted by a real Redis (its
//! slow log at threshold 0 records every command): `/api/ping` and the board's page and
//! assets, sent with the session cookie, name no session key; `/api/me` does (the control:
//! the count can see a session load).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use support::call_center::*;
use welcomedly_testkit::{RedisServer, Reply};

/// Commands Redis ran since the last `SLOWLOG RESET` that name a session key (`wd:s:…`),
/// the commands a script ran included.
fn session_commands(redis: &RedisServer) -> Vec<String> {
    let Reply::Array(entries) = redis.query(&["SLOWLOG", "GET", "-1"]).unwrap() else {
        panic!("SLOWLOG GET answered something else than an array");
    };
    entries
        .iter()
        .filter_map(|e| match e {
            Reply::Array(fields) => match fields.get(3) {
                Some(Reply::Array(args)) => {
                    let args: Vec<String> = args.iter().map(Reply::to_text).collect();
                    args.iter()
                        .any(|a| a.starts_with("wd:s:"))
                        .then(|| args.join(" "))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn requests_that_never_read_the_session_make_no_session_call() {
    let redis = RedisServer::start().unwrap();
    let app = Instance::start(&[
        ("REDIS_URL", redis.url()),
        ("WELCOMEDLY_INSTANCES", "1".to_owned()),
    ]);
    let cookie = log_in(&app, "agent");
    redis
        .command(&["CONFIG", "SET", "slowlog-log-slower-than", "0"])
        .unwrap();
    redis
        .command(&["CONFIG", "SET", "slowlog-max-len", "100000"])
        .unwrap();
    redis.command(&["SLOWLOG", "RESET"]).unwrap();
    for path in ["/api/ping", "/", "/board.css", "/board.js"] {
        let r = app.request_with("GET", path, &[("cookie", &cookie)], "");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(
            r.header("set-cookie").is_none(),
            "{path} touched the session"
        );
    }
    let calls = session_commands(&redis);
    assert!(calls.is_empty(), "session calls: {calls:#?}");

    // The control: a route that reads the session loads it, and the count sees it.
    let r = app.request_with("GET", "/api/me", &[("cookie", &cookie)], "");
    assert_eq!(r.status, 200, "{}", r.body);
    // (The slow log also lists the script's own HGETALL and PEXPIRE: count the calls.)
    let calls = session_commands(&redis);
    let scripts = calls.iter().filter(|c| c.starts_with("EVAL")).count();
    assert_eq!(scripts, 1, "one load for /api/me: {calls:#?}");
}
