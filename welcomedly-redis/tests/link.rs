//! The link against a real `redis-server` (welcomedly-testkit): slow answers, outages under
//! concurrent callers, a killed connection, a crashed and restarted Redis, a frozen Redis.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use welcomedly_redis::redis;
use welcomedly_redis::{Link, LinkConfig, LinkState, Retry};
use welcomedly_testkit::RedisServer;

fn config(redis: &RedisServer) -> LinkConfig {
    let mut c = LinkConfig::new(redis.url());
    c.budget = Duration::from_millis(50);
    c
}

async fn ping(link: &Link, retry: Retry) -> Result<String, welcomedly_redis::Error> {
    link.query(&redis::cmd("PING"), retry).await
}

/// Polls `cond` every 10 ms for up to 5 s (a bound for a hung test, not a speed check).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 5 s: {what}");
}

/// The link's client connections as Redis lists them (the testkit's own `CLIENT LIST`
/// connection excluded).
fn link_clients(redis: &RedisServer) -> usize {
    let list = redis.command(&["CLIENT", "LIST"]).unwrap();
    list.lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_below_the_threshold_keeps_the_connection() {
    let redis = RedisServer::start().unwrap();
    let link = Link::connect(config(&redis)).await.unwrap();
    assert_eq!(link.stats().connections, 1);

    // Answers slower than the budget, fewer in a row than the threshold (3): those calls
    // fail, the connection stays. (`CLIENT PAUSE`: a slow but live Redis; the testkit's
    // server refuses `DEBUG SLEEP`.)
    for _ in 0..2 {
        redis.command(&["CLIENT", "PAUSE", "120"]).unwrap();
        let slow = ping(&link, Retry::Once).await.unwrap_err();
        assert!(slow.is_budget(), "{slow:?}");
        assert!(link.is_connected());
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Once Redis answers again the same connection serves.
        assert_eq!(ping(&link, Retry::Never).await.unwrap(), "PONG");
    }
    let s = link.stats();
    assert_eq!(s.connections, 1, "{s:?}");
    assert_eq!(s.budget_overruns, 2, "{s:?}");
    assert_eq!(link_clients(&redis), 1);
}

/// Redis busy but answering: a queue of calls each taking ~10 ms of Redis time, so the later
/// ones run past a 25 ms budget while an earlier one is answered. Those calls fail on their
/// budget, but the connection is not counted as failing (it answers) and is kept: dropping it
/// under load would fail every call during the reconnect (seen as 503s in the whole-stack
/// bench before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_budget_while_others_are_answered_keep_the_connection() {
    let redis = RedisServer::start().unwrap();
    let link = Link::connect(config(&redis)).await.unwrap();
    // Busy for 10 ms inside Redis (a script may call TIME).
    let busy = redis::Script::new(
        "local s = redis.call('TIME') local t0 = s[1] * 1000000 + s[2] \
         repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - t0 >= 10000 return 1",
    );
    link.preload(&busy).await.unwrap();
    let call = |budget: Duration| {
        let (link, busy) = (link.clone(), busy.clone());
        tokio::spawn(async move {
            link.call_within(budget, Retry::Never, |mut conn| {
                let busy = busy.clone();
                async move { busy.invoke_async::<_, i64>(&mut conn).await }
            })
            .await
        })
    };
    // The first call waits as long as it takes and is read by Redis alone: its answer comes
    // while the others wait (Redis answers a batch of pipelined calls only after running all
    // of them, so they are sent a moment later, as requests arrive in production).
    let mut calls = vec![call(Duration::from_secs(2))];
    tokio::time::sleep(Duration::from_millis(2)).await;
    calls.extend((0..19).map(|_| call(Duration::from_millis(25))));
    for call in calls {
        let _ = call.await.unwrap();
    }
    let s = link.stats();
    assert!(
        s.budget_overruns >= 3,
        "not enough calls ran past the budget: {s:?}"
    );
    assert_eq!(
        s.transport_failures, 0,
        "slow calls counted as failures: {s:?}"
    );
    assert!(link.is_connected(), "{s:?}");
    // Once Redis has worked through the queue (20 x 10 ms), the same connection serves.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ping(&link, Retry::Never).await.unwrap(), "PONG");
    assert_eq!(link.stats().connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reconnect_per_outage_under_64_concurrent_callers() {
    let redis = Arc::new(RedisServer::start().unwrap());
    // A budget with headroom: right after Redis resumes, 64 callers land on the new connection
    // at once on a loaded 2-core box, and a 50 ms budget could see three slow answers in a row
    // there and drop a connection that is fine (seen once in a clean CI run). The pause still
    // overruns it, so the outage is still seen and ends in exactly one reconnect.
    let mut c = config(&redis);
    c.budget = Duration::from_millis(250);
    let link = Link::connect(c).await.unwrap();
    redis.pause().unwrap();

    // 64 callers keep calling through the outage.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..64)
        .map(|_| {
            let link = link.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut ok = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if ping(&link, Retry::Once).await.is_ok() {
                        ok += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                ok
            })
        })
        .collect();
    eventually("the frozen connection is dropped", || !link.is_connected()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.resume().unwrap();
    eventually("the link is connected again", || link.is_connected()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut succeeded = 0;
    for c in callers {
        succeeded += c.await.unwrap();
    }
    assert!(succeeded > 0);
    let s = link.stats();
    assert_eq!(s.connections, 2, "one reconnect for the outage: {s:?}");
    assert_eq!(link_clients(&redis), 1, "no connection left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connection_is_noticed_without_a_call_and_the_next_call_succeeds() {
    let redis = RedisServer::start().unwrap();
    let link = Link::connect(config(&redis)).await.unwrap();
    assert_eq!(
        redis
            .command(&["CLIENT", "KILL", "TYPE", "normal"])
            .unwrap(),
        "1"
    );

    // No call is made: the reader task's end is what notices, and the link reconnects by
    // itself.
    eventually("the link noticed the close and reconnected", || {
        let s = link.stats();
        s.closed == 1 && s.connections == 2 && link.is_connected()
    })
    .await;
    let before = link.stats();
    assert_eq!(before.transport_failures, 0, "{before:?}");
    assert_eq!(ping(&link, Retry::Never).await.unwrap(), "PONG");
    assert_eq!(link.stats().connections, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_and_restart_the_first_call_succeeds() {
    let redis = RedisServer::start().unwrap();
    let mut c = config(&redis);
    // A long backoff: the supervisor is asleep when Redis comes back, so only a caller's
    // demand can explain a first call that succeeds.
    c.backoff = welcomedly_redis::Backoff::new(Duration::from_secs(5), Duration::from_secs(5));
    let link = Link::connect(c).await.unwrap();
    redis.kill().unwrap();
    eventually("the crash is noticed", || !link.is_connected()).await;
    // Calls while Redis is down fail, each within its budget.
    let e = ping(&link, Retry::Once).await.unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;

    redis.restart().unwrap(); // returns once Redis answers
    assert_eq!(ping(&link, Retry::Never).await.unwrap(), "PONG");
    let s = link.stats();
    assert_eq!(s.connections, 2, "{s:?}");
}

/// On a current-thread runtime the link's tasks do not run while the test blocks on the
/// restart, so the next call meets the dead connection itself: a call marked safe is run again
/// on the new connection, one that is not is not.
#[tokio::test]
async fn a_safe_call_on_a_connection_that_died_unnoticed_is_retried_on_the_new_one() {
    let redis = RedisServer::start().unwrap();
    let link = Link::connect(config(&redis)).await.unwrap();
    redis.kill().unwrap();
    redis.restart().unwrap();
    assert_eq!(ping(&link, Retry::Once).await.unwrap(), "PONG");
    assert_eq!(link.stats().retries, 1);

    redis.kill().unwrap();
    redis.restart().unwrap();
    let e = link
        .query::<i64>(redis::cmd("INCR").arg("n"), Retry::Never)
        .await
        .unwrap_err();
    assert!(e.is_transport(), "{e:?}");
    assert_eq!(link.stats().retries, 1);
    // The dead connection was dropped by that failure, not after a threshold.
    assert_eq!(ping(&link, Retry::Never).await.unwrap(), "PONG");
    assert_eq!(link.stats().connections, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_frozen_redis_fail_within_the_budget() {
    let redis = RedisServer::start().unwrap();
    let link = Link::connect(config(&redis)).await.unwrap();
    redis.pause().unwrap();
    for _ in 0..6 {
        let started = std::time::Instant::now();
        let e = ping(&link, Retry::Once).await.unwrap_err();
        // The budget is 50 ms; the margin is for a loaded test machine, not a speed check.
        assert!(
            started.elapsed() < Duration::from_millis(50 + 200),
            "waited {:?}",
            started.elapsed()
        );
        assert!(e.is_budget() || e.is_not_connected(), "{e:?}");
    }
    assert!(matches!(
        link.state(),
        LinkState::HoldingOff | LinkState::Connecting
    ));
    redis.resume().unwrap();
    eventually("the link reconnects after the freeze", || {
        link.is_connected()
    })
    .await;
    assert_eq!(ping(&link, Retry::Never).await.unwrap(), "PONG");
}

/// Many calls that all run out of budget at one instant (the process was not scheduled, or
/// Redis stalled for a moment) are one event, not a dead connection: the failures must span
/// at least one budget before the threshold drops it. After a short freeze the same
/// connection serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_calls_timing_out_at_one_instant_keeps_the_connection() {
    let redis = RedisServer::start().unwrap();
    let link = Link::connect(config(&redis)).await.unwrap();
    redis.pause().unwrap();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let link = link.clone();
            tokio::spawn(async move { ping(&link, Retry::Never).await })
        })
        .collect();
    for call in calls {
        let e = call.await.unwrap().unwrap_err();
        assert!(e.is_budget(), "{e:?}");
    }
    redis.resume().unwrap();
    assert!(link.is_connected(), "{:?}", link.stats());
    assert_eq!(ping(&link, Retry::Never).await.unwrap(), "PONG");
    let s = link.stats();
    assert_eq!(s.connections, 1, "{s:?}");
    assert_eq!(s.budget_overruns, 10, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_keep_the_connection_and_scripts_survive_a_restart() {
    let redis = RedisServer::start().unwrap();
    let link = Link::connect(config(&redis)).await.unwrap();
    redis.command(&["SET", "k", "text"]).unwrap();
    for _ in 0..5 {
        let e = link
            .query::<i64>(redis::cmd("INCR").arg("k"), Retry::Once)
            .await
            .unwrap_err();
        assert!(e.is_server(), "{e:?}");
    }
    assert_eq!(link.stats().connections, 1);

    let script = redis::Script::new("return redis.call('INCR', KEYS[1])");
    link.preload(&script).await.unwrap();
    redis.kill().unwrap();
    redis.restart().unwrap();
    let n: i64 = link.invoke(&script.key("n"), Retry::Never).await.unwrap();
    assert_eq!(n, 1);
    // The script was loaded when the new connection was made: the first EVALSHA did not meet
    // NOSCRIPT.
    let stats = redis.command(&["INFO", "commandstats"]).unwrap();
    let evalsha = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .unwrap_or_else(|| panic!("no EVALSHA ran: {stats}"));
    assert!(evalsha.contains("calls=1,"), "{evalsha}");
    assert!(evalsha.contains("failed_calls=0"), "{evalsha}");
}

#[tokio::test]
async fn an_unreachable_redis_is_not_a_build_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let link = Link::connect(LinkConfig::new(format!(
        "redis://:hunter2@127.0.0.1:{port}/"
    )))
    .await
    .unwrap();
    assert!(!link.is_connected());
    let e = ping(&link, Retry::Once).await.unwrap_err();
    assert!(e.is_not_connected(), "{e:?}");
    assert!(!format!("{link:?}").contains("hunter2"));
    let bad = Link::connect(LinkConfig::new("redis://:hunter2@cache:notaport/"))
        .await
        .unwrap_err();
    assert!(bad.is_config());
    assert!(!bad.to_string().contains("hunter2"), "{bad}");
}

#[test]
fn the_public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Link>();
    send_sync::<LinkConfig>();
    send_sync::<welcomedly_redis::Error>();
}
