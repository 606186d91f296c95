//! The session cache against a real `redis-server` (server-assisted client-side caching,
//! `CLIENT TRACKING on BCAST`): two instances, each with its own store, link and tracking
//! connection. A cached read costs no Redis call; a logout on one instance ends the session
//! on the other through the invalidation push; the tracking connection killed (`CLIENT KILL`)
//! empties the cache at once and a revoked session is never served; the idle expiry is slid
//! only once a quarter of it has passed.
//!
//! Waits here are for a condition (a counter moved), never a fixed sleep: the push is read by
//! the instance's connection task, which a test on one thread runs only when the test awaits.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use support::{Instance, log_in, send, session_routes, tuned};
use welcomedly_cluster::session::{
    RedisSessionConfig, RedisSessionStore, SessionCacheStats, SessionConfig, SessionLayer,
};
use welcomedly_redis::{Link, LinkConfig};
use welcomedly_testkit::{RedisSentinel, RedisServer};

async fn instance(redis: &RedisServer, store_config: RedisSessionConfig) -> Instance {
    instance_on(LinkConfig::new(redis.url()), store_config).await
}

async fn instance_on(link_config: LinkConfig, store_config: RedisSessionConfig) -> Instance {
    let link = Link::connect(tuned(link_config)).await.unwrap();
    let mut store_config = store_config;
    store_config.budget = Duration::from_millis(300);
    let store = RedisSessionStore::new(&link, store_config).await.unwrap();
    let mut config = SessionConfig::default();
    config.idle_timeout = Duration::from_secs(600);
    let layer = SessionLayer::new(store.clone(), config).unwrap();
    let app = session_routes().layer(layer.clone()).with_state(());
    Instance { app, store, layer }
}

async fn cached(redis: &RedisServer) -> Instance {
    let i = instance(redis, RedisSessionConfig::default()).await;
    until("the tracking connection is up", || {
        i.store.cache_is_tracking()
    })
    .await;
    i
}

async fn me_of(i: &Instance, cookie: &str) -> (StatusCode, String) {
    let a = send(i, "GET", "/me", Some(cookie)).await;
    (a.status, a.body)
}

/// Waits (awaiting, so the instances' connection tasks run) until `done`, at most 5 s.
async fn until(what: &str, done: impl Fn() -> bool) {
    until_within(what, Duration::from_secs(5), done).await;
}

async fn until_within(what: &str, within: Duration, done: impl Fn() -> bool) {
    let give_up = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "gave up waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn evalsha_calls(redis: &RedisServer) -> u64 {
    let info = redis.command(&["INFO", "commandstats"]).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .and_then(|s| s.split(',').find_map(|f| f.strip_prefix("calls=")))
        .map_or(0, |n| n.parse().unwrap())
}

/// Reads `/me` with `cookie` on `i` until a read is a cache hit, at most 50 times (the first
/// read may race the login's own push and not be kept); `never` is the failure's message.
async fn read_until_cached(i: &Instance, cookie: &str, never: &str) {
    let mut tries = 0;
    loop {
        let hits = stats(i).hits;
        assert_eq!(me_of(i, cookie).await.0, StatusCode::OK);
        if stats(i).hits > hits {
            break;
        }
        tries += 1;
        assert!(tries < 50, "{never}");
    }
}

fn stats(i: &Instance) -> SessionCacheStats {
    i.store.cache_stats()
}

#[tokio::test]
async fn a_cached_read_costs_no_redis_call_and_a_logout_elsewhere_ends_it_through_the_push() {
    let redis = RedisServer::start().unwrap();
    let a = cached(&redis).await;
    let b = cached(&redis).await;
    let cookie = log_in(&a, "alice").await;
    assert_eq!(
        me_of(&b, &cookie).await,
        (StatusCode::OK, "alice".to_owned())
    );
    // Cached on B now: the next reads cost Redis nothing.
    let before = evalsha_calls(&redis);
    for _ in 0..5 {
        assert_eq!(me_of(&b, &cookie).await.0, StatusCode::OK);
    }
    assert_eq!(evalsha_calls(&redis), before, "cached reads call Redis");
    assert!(stats(&b).hits >= 5, "{:?}", stats(&b));

    // A value written on A drops B's copy: B reads the new value.
    let invalidated = stats(&b).invalidations;
    assert_eq!(
        send(&a, "PUT", "/set?k=theme&v=dark", Some(&cookie))
            .await
            .status,
        StatusCode::OK
    );
    until("B drops the changed session", || {
        stats(&b).invalidations > invalidated
    })
    .await;
    assert_eq!(
        send(&b, "GET", "/get?k=theme", Some(&cookie)).await.body,
        "dark"
    );

    // Cached again on B, then a logout on A.
    me_of(&b, &cookie).await;
    let hits = stats(&b).hits;
    me_of(&b, &cookie).await;
    assert_eq!(stats(&b).hits, hits + 1, "cached again");
    let invalidated = stats(&b).invalidations;
    assert_eq!(
        send(&a, "POST", "/logout", Some(&cookie)).await.status,
        StatusCode::OK
    );
    until("B gets the logout's push", || {
        stats(&b).invalidations > invalidated
    })
    .await;
    assert_eq!(me_of(&b, &cookie).await.0, StatusCode::UNAUTHORIZED);
    // And on A at once, without waiting for its own push (it dropped its copy itself).
    assert_eq!(me_of(&a, &cookie).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_request_sent_after_a_logout_answered_elsewhere_never_finds_the_session_cached() {
    let redis = RedisServer::start().unwrap();
    let a = cached(&redis).await;
    let b = cached(&redis).await;
    for round in 0..20 {
        let cookie = log_in(&a, "frank").await;
        // Cached on B (the first read may race the login's own push and not be kept).
        read_until_cached(&b, &cookie, &format!("round {round}: never cached")).await;
        assert_eq!(
            send(&a, "POST", "/logout", Some(&cookie)).await.status,
            StatusCode::OK
        );
        // No wait: the very next request on B.
        assert_eq!(
            me_of(&b, &cookie).await.0,
            StatusCode::UNAUTHORIZED,
            "round {round}: B served a session logged out on A"
        );
    }
}

#[tokio::test]
async fn log_out_everywhere_on_one_instance_ends_every_cached_session_on_the_other() {
    let redis = RedisServer::start().unwrap();
    let a = cached(&redis).await;
    let b = cached(&redis).await;
    let first = log_in(&a, "bob").await;
    let second = log_in(&b, "bob").await;
    for cookie in [&first, &second] {
        me_of(&b, cookie).await;
        me_of(&b, cookie).await;
    }
    assert!(stats(&b).hits >= 2);
    let invalidated = stats(&b).invalidations;
    assert_eq!(
        send(&a, "POST", "/logout-everywhere", Some(&first))
            .await
            .body,
        "2"
    );
    until("B gets both pushes", || {
        stats(&b).invalidations >= invalidated + 2
    })
    .await;
    for cookie in [&first, &second] {
        assert_eq!(me_of(&b, cookie).await.0, StatusCode::UNAUTHORIZED);
    }
}

/// The tracking connection's id and address, from `CLIENT LIST` (the one with tracking on).
fn tracking_clients(redis: &RedisServer) -> Vec<String> {
    redis
        .command(&["CLIENT", "LIST"])
        .unwrap()
        .lines()
        .filter(|l| {
            l.contains("resp=3")
                && l.split_whitespace()
                    .any(|f| f.starts_with("flags=") && f.contains('t'))
        })
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn a_killed_tracking_connection_empties_the_cache_at_once_and_no_revoked_session_is_served() {
    let redis = RedisServer::start().unwrap();
    let a = instance(&redis, {
        // A plain instance: no tracking connection of its own in the way of `CLIENT LIST`.
        let mut c = RedisSessionConfig::default();
        c.cache_entries = 0;
        c
    })
    .await;
    let b = cached(&redis).await;
    let cookie = log_in(&a, "carol").await;
    me_of(&b, &cookie).await;
    me_of(&b, &cookie).await;
    assert!(stats(&b).hits >= 1);
    assert_eq!(stats(&b).entries, 1);

    let ids = tracking_clients(&redis);
    assert_eq!(ids.len(), 1, "B's one tracking connection: {ids:?}");
    let flushes = stats(&b).flushes;
    redis.command(&["CLIENT", "KILL", "ID", &ids[0]]).unwrap();
    // Noticed when it dies (the connection's end is pushed), not at the next ping (1 s).
    until_within("B notices the loss", Duration::from_millis(500), || {
        stats(&b).flushes > flushes
    })
    .await;
    assert_eq!(stats(&b).entries, 0, "emptied");

    // Revoked while B is re-tracking (or just after): never served from memory.
    assert_eq!(
        send(&a, "POST", "/logout", Some(&cookie)).await.status,
        StatusCode::OK
    );
    assert_eq!(me_of(&b, &cookie).await.0, StatusCode::UNAUTHORIZED);

    // Tracking comes back on its own; the cache works again.
    until("B tracks again", || b.store.cache_is_tracking()).await;
    assert_eq!(tracking_clients(&redis).len(), 1);
    let other = log_in(&a, "carol").await;
    me_of(&b, &other).await;
    let hits = stats(&b).hits;
    assert_eq!(me_of(&b, &other).await.0, StatusCode::OK);
    assert_eq!(stats(&b).hits, hits + 1);
}

#[tokio::test]
async fn a_read_slides_the_idle_expiry_only_once_a_quarter_of_it_has_passed() {
    let redis = RedisServer::start().unwrap();
    // Without the cache: every read reaches the script.
    let a = instance(&redis, {
        let mut c = RedisSessionConfig::default();
        c.cache_entries = 0;
        c
    })
    .await;
    let cookie = log_in(&a, "dave").await;
    let key = a.store.key_of(cookie.split_once('=').unwrap().1).unwrap();
    let pttl =
        |redis: &RedisServer| -> i64 { redis.command(&["PTTL", &key]).unwrap().parse().unwrap() };
    // 10 s of 600 passed: no write.
    redis.command(&["PEXPIRE", &key, "590000"]).unwrap();
    assert_eq!(me_of(&a, &cookie).await.0, StatusCode::OK);
    assert!(pttl(&redis) <= 590_000, "slid too early: {}", pttl(&redis));
    // 200 s of 600 passed: slid back to 600.
    redis.command(&["PEXPIRE", &key, "400000"]).unwrap();
    assert_eq!(me_of(&a, &cookie).await.0, StatusCode::OK);
    assert!(pttl(&redis) > 590_000, "not slid: {}", pttl(&redis));
}

#[tokio::test]
async fn a_refresh_due_goes_to_redis_and_slides() {
    let redis = RedisServer::start().unwrap();
    let a = cached(&redis).await;
    let cookie = log_in(&a, "erin").await;
    let key = a.store.key_of(cookie.split_once('=').unwrap().1).unwrap();
    me_of(&a, &cookie).await;
    // 200 s of 600 passed (the PEXPIRE is a write: its push drops A's copy too).
    let invalidated = stats(&a).invalidations;
    redis.command(&["PEXPIRE", &key, "400000"]).unwrap();
    until("A gets the push", || stats(&a).invalidations > invalidated).await;
    let before = evalsha_calls(&redis);
    assert_eq!(me_of(&a, &cookie).await.0, StatusCode::OK);
    assert_eq!(evalsha_calls(&redis), before + 1);
    let ttl: i64 = redis.command(&["PTTL", &key]).unwrap().parse().unwrap();
    assert!(ttl > 590_000, "slid: {ttl}");
}

/// A cached read, then `SENTINEL FAILOVER`: the old primary stays up (a master with its data
/// for about 10 s, so the tracking connection on it is not closed and gets no push for writes
/// on the new primary). Once the links follow the new primary, the entry B cached from the old
/// one is never used: a logout on the new primary is seen on B at once; B tracks the new
/// primary and caches again.
#[tokio::test]
async fn after_a_sentinel_failover_nothing_cached_from_the_old_primary_is_served() {
    let group = RedisSentinel::start().unwrap();
    let link = || LinkConfig::sentinel(group.sentinel_addrs(), group.master_name(), "redis://");
    let a = instance_on(link(), RedisSessionConfig::default()).await;
    let b = instance_on(link(), RedisSessionConfig::default()).await;
    until("A tracks", || a.store.cache_is_tracking()).await;
    until("B tracks", || b.store.cache_is_tracking()).await;
    let cookie = log_in(&a, "grace").await;
    read_until_cached(&b, &cookie, "never cached").await;
    let generation = |i: &Instance| i.store.link().connection_generation();
    let (ga, gb) = (generation(&a), generation(&b));
    let (_, group) = tokio::task::spawn_blocking(move || group.failover().map(|f| (f, group)))
        .await
        .unwrap()
        .unwrap();
    until("both links follow the new primary", || {
        generation(&a).is_some_and(|g| Some(g) != ga)
            && generation(&b).is_some_and(|g| Some(g) != gb)
    })
    .await;
    // The old primary still runs, B's tracking connection on it may still be up: B must not
    // answer from what it cached there.
    let out = send(&a, "POST", "/logout", Some(&cookie)).await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.body);
    let mut status = me_of(&b, &cookie).await.0;
    while status == StatusCode::SERVICE_UNAVAILABLE {
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = me_of(&b, &cookie).await.0;
    }
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "B served a session cached on the old primary"
    );

    // B re-tracks on the new primary, and its pushes work there.
    until("B tracks the new primary", || b.store.cache_is_tracking()).await;
    let other = log_in(&a, "grace").await;
    read_until_cached(&b, &other, "never cached after the failover").await;
    assert_eq!(
        send(&a, "POST", "/logout", Some(&other)).await.status,
        StatusCode::OK
    );
    assert_eq!(me_of(&b, &other).await.0, StatusCode::UNAUTHORIZED);
    drop(group);
}
