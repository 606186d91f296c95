//! Membership and presence against a real `redis-server`, several instances (each with its own
//! connection) in one test: join and list, leave at drain, an instance that stops heartbeating
//! (dropped without leaving, and a real child process killed with SIGKILL), presence without
//! ghosts, the rate limiter's live-instance count, Redis killed and restarted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use welcomedly_cluster::membership::{
    Membership, MembershipConfig, PresenceCause, PresenceChange, PresenceDiff,
};
use welcomedly_cluster::rate_limit::LiveInstances;
use welcomedly_core::InstanceId;
use welcomedly_core::drain::{Drain, DrainConfig};
use welcomedly_core::health::{CheckOutcome, HealthCheck, HealthRegistry};
use welcomedly_redis::{Backoff, Link, LinkConfig};
use welcomedly_testkit::RedisServer;

const INTERVAL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_millis(400);
/// What a vanishing may take beyond the timeout: the survivors' listing is exact at the
/// timeout (it filters by Redis time); this is polling and scheduling slack on a busy box.
const SLACK: Duration = Duration::from_millis(250);

fn config() -> MembershipConfig {
    let mut c = MembershipConfig::default();
    c.heartbeat_interval = INTERVAL;
    c.timeout = TIMEOUT;
    c.budget = Duration::from_millis(100);
    c
}

/// A link of its own per instance (as separate processes have), reconnecting quickly.
async fn link(url: &str) -> Link {
    let mut c = LinkConfig::new(url);
    c.backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(200));
    c.min_outage = Duration::from_millis(50);
    Link::connect(c).await.unwrap()
}

async fn instance(redis: &RedisServer, id: &str) -> Membership {
    instance_with(&link(&redis.url()).await, config(), id).await
}

async fn instance_with(link: &Link, config: MembershipConfig, id: &str) -> Membership {
    let config = config.with_metadata("addr", format!("127.0.0.1:{}", 3000 + id.len()));
    let m = Membership::new(link, config, InstanceId::new(id))
        .await
        .unwrap();
    assert!(
        !m.is_degraded(),
        "{id} should heartbeat into a running Redis"
    );
    m
}

/// Polls `probe` until it returns `Some`, failing after `within`.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn ids(m: &Membership) -> Vec<String> {
    m.members()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect()
}

fn drain(rx: &mut broadcast::Receiver<PresenceDiff>) -> Vec<PresenceDiff> {
    let mut out = Vec::new();
    while let Ok(d) = rx.try_recv() {
        out.push(d);
    }
    out
}

#[tokio::test]
async fn members_join_and_are_listed_with_their_metadata() {
    let redis = RedisServer::start().unwrap();
    let a = instance(&redis, "a").await;
    let b = instance(&redis, "bb").await;
    let c = instance(&redis, "ccc").await;
    // Listed as soon as build returns (the first heartbeat is part of it).
    for m in [&a, &b, &c] {
        assert_eq!(ids(m).await, ["a", "bb", "ccc"]);
    }
    let members = a.members().await.unwrap();
    assert_eq!(members[1].metadata["addr"], "127.0.0.1:3002");
    // Heartbeats are stamped with Redis's clock, not the instances'.
    let time = redis.command(&["TIME"]).unwrap();
    let secs: u64 = time.split_whitespace().next().unwrap().parse().unwrap();
    for m in &members {
        let beat = m.last_heartbeat_ms / 1000;
        assert!(beat <= secs && secs - beat <= 1, "{beat} vs Redis {secs}");
    }
    for m in &members {
        assert!(m.last_heartbeat_ms > 0 && m.expires_at_ms > m.last_heartbeat_ms);
        assert_eq!(
            m.expires_at_ms - m.last_heartbeat_ms,
            TIMEOUT.as_millis() as u64
        );
        assert!(m.started_at_ms > 0);
    }
    // Heartbeats keep them listed well past the timeout.
    tokio::time::sleep(TIMEOUT * 2).await;
    assert_eq!(ids(&b).await, ["a", "bb", "ccc"]);
    assert!(a.heartbeats() >= 5, "heartbeats: {}", a.heartbeats());
    // The rate limiter's fallback divisor follows the live count.
    let limiter = LiveInstances::new(1);
    a.feed(&limiter);
    assert_eq!(limiter.get(), 3);
    assert_eq!(a.live_instances().get(), 3);
    assert_eq!(a.check().await, CheckOutcome::Healthy);
}

#[tokio::test]
async fn presence_is_refcounted_and_listed_cluster_wide() {
    let redis = RedisServer::start().unwrap();
    let a = instance(&redis, "a").await;
    let b = instance(&redis, "b").await;
    let mut diffs = a.presence_diffs();
    let tab1 = a.join("agent:1").unwrap();
    let tab2 = a.join("agent:1").unwrap();
    let on_b = b.join("agent:1").unwrap();
    let _other = b.join("agent:2").unwrap();
    assert_eq!(a.local_presence(), [("agent:1".to_owned(), 2)]);
    // Written to Redis right away (the heartbeat task is woken), not at the next heartbeat.
    let view = eventually(INTERVAL / 2, "presences written", || async {
        let p = b.cluster_presence().await.unwrap();
        (p.len() == 2 && p.instances_of("agent:1").count() == 2).then_some(p)
    })
    .await;
    assert_eq!(view.instances_of("agent:1").collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(view.keys().collect::<Vec<_>>(), ["agent:1", "agent:2"]);
    let got = drain(&mut diffs);
    assert_eq!(got.len(), 1, "one Joined for two connections: {got:?}");
    assert_eq!(
        (got[0].change, got[0].cause, got[0].instance.as_str()),
        (PresenceChange::Joined, PresenceCause::Connected, "a")
    );
    // One tab closes: still present. The last closes: gone from a, still on b.
    drop(tab1);
    tokio::time::sleep(INTERVAL / 2).await;
    assert!(drain(&mut diffs).is_empty());
    assert_eq!(
        b.cluster_presence()
            .await
            .unwrap()
            .instances_of("agent:1")
            .count(),
        2
    );
    drop(tab2);
    let got = drain(&mut diffs);
    assert_eq!(
        (got[0].change, got[0].cause),
        (PresenceChange::Left, PresenceCause::Disconnected)
    );
    eventually(INTERVAL / 2, "agent:1 left a", || async {
        let p = b.cluster_presence().await.unwrap();
        (p.instances_of("agent:1").collect::<Vec<_>>() == ["b"]).then_some(())
    })
    .await;
    drop(on_b);
    // Listing never walks the keyspace.
    let stats = redis.command(&["INFO", "commandstats"]).unwrap();
    assert!(
        !stats.contains("cmdstat_scan") && !stats.contains("cmdstat_keys"),
        "{stats}"
    );
    // App-chosen keys are bounded.
    let e = a.join("x".repeat(10_000)).unwrap_err();
    assert!(e.to_string().contains("presence key"), "{e}");
}

// Multi-threaded, so a heartbeat can be in flight on another thread while leave() runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_on_drain_is_immediate() {
    let redis = RedisServer::start().unwrap();
    let a = instance(&redis, "a").await;
    let b = instance(&redis, "b").await;
    let c = instance(&redis, "c").await;
    let live = LiveInstances::new(1);
    a.feed(&live);
    eventually(INTERVAL * 3, "live count 3", || async {
        (live.get() == 3).then_some(())
    })
    .await;
    let _g = c.join("agent:7").unwrap();
    eventually(INTERVAL, "agent:7 listed", || async {
        a.cluster_presence()
            .await
            .unwrap()
            .contains("agent:7")
            .then_some(())
    })
    .await;
    let mut diffs = c.presence_diffs();
    c.leave().await.unwrap();
    // Gone from every view at once, no waiting for a timeout.
    assert_eq!(ids(&a).await, ["a", "b"]);
    assert_eq!(ids(&b).await, ["a", "b"]);
    assert!(!a.cluster_presence().await.unwrap().contains("agent:7"));
    let got = drain(&mut diffs);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].change, got[0].cause, got[0].key.as_str()),
        (PresenceChange::Left, PresenceCause::InstanceLeft, "agent:7")
    );
    // It stays gone (no late heartbeat re-adds it), and the live count follows.
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(ids(&a).await, ["a", "b"]);
    assert_eq!(live.get(), 2);
    assert!(c.join("agent:8").is_err(), "no presence after leaving");
    c.leave().await.unwrap(); // idempotent
    assert!(matches!(c.check().await, CheckOutcome::Degraded(_)));
}

#[tokio::test]
async fn the_drain_signal_makes_an_instance_leave_at_once() {
    let redis = RedisServer::start().unwrap();
    let a = instance(&redis, "a").await;
    let b = instance(&redis, "b").await;
    let registry = HealthRegistry::new(InstanceId::new("b"), "1", Duration::from_secs(1));
    // A long grace period: b must leave when draining starts, not when the server stops.
    let drain = Drain::new(
        registry.clone(),
        DrainConfig::new(Duration::from_secs(5), Duration::from_secs(1)),
    );
    b.leave_when_draining(drain.signal()).unwrap();
    let (sigterm, shutdown) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(drain.run(
        async move {
            let _ = shutdown.await;
        },
        |stop| async move {
            stop.await;
            Ok(())
        },
    ));
    assert_eq!(ids(&a).await, ["a", "b"]);
    sigterm.send(()).unwrap();
    let started = Instant::now();
    eventually(INTERVAL, "b gone at drain", || async {
        (ids(&a).await == ["a"]).then_some(())
    })
    .await;
    assert!(registry.is_draining());
    assert!(!server.is_finished(), "still in its grace period");
    println!("left {:?} after the drain signal", started.elapsed());
    server.abort();
}

#[tokio::test]
async fn an_instance_that_stops_heartbeating_vanishes_with_its_presences() {
    let redis = RedisServer::start().unwrap();
    let a = instance(&redis, "a").await;
    let b = instance(&redis, "b").await;
    let c = instance(&redis, "c").await;
    let live = LiveInstances::new(1);
    b.feed(&live);
    let guard = c.join("agent:7").unwrap();
    eventually(INTERVAL, "agent:7 listed", || async {
        a.cluster_presence()
            .await
            .unwrap()
            .contains("agent:7")
            .then_some(())
    })
    .await;
    let (mut on_a, mut on_b) = (a.presence_diffs(), b.presence_diffs());
    // A crash: the membership is gone without leave() (its guard outlives it, as a connection
    // the process never closed).
    drop(c);
    let killed = Instant::now();
    eventually(TIMEOUT + SLACK, "c gone from members", || async {
        (ids(&a).await == ["a", "b"]).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(took >= TIMEOUT - INTERVAL * 2, "gone too soon: {took:?}");
    // Its presences vanish with it: the cluster view is built from live members only.
    let view = a.cluster_presence().await.unwrap();
    assert!(!view.contains("agent:7"), "ghost presence: {view:?}");
    // A survivor reaps it at its next heartbeat and announces its presences, once.
    eventually(INTERVAL * 3, "c reaped", || async {
        (a.reaped() + b.reaped() == 1).then_some(())
    })
    .await;
    let mut got = drain(&mut on_a);
    got.extend(drain(&mut on_b));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (
            got[0].change,
            got[0].cause,
            got[0].instance.as_str(),
            got[0].key.as_str()
        ),
        (
            PresenceChange::Left,
            PresenceCause::InstanceDied,
            "c",
            "agent:7"
        )
    );
    assert_eq!(
        redis
            .command(&["EXISTS", "{wd:members}:presence:c"])
            .unwrap(),
        "0"
    );
    eventually(INTERVAL * 3, "live count 2", || async {
        (live.get() == 2).then_some(())
    })
    .await;
    drop(guard); // a guard outliving its membership is harmless
    println!("dropped instance vanished from members after {took:?}");
}

/// The child side of `a_sigkilled_process_vanishes_within_the_timeout`: runs only when that
/// test starts this binary with `WD_MEMBERSHIP_CHILD_URL` set.
#[tokio::test]
#[ignore = "run as a child process by a_sigkilled_process_vanishes_within_the_timeout"]
async fn child_instance() {
    let Ok(url) = std::env::var("WD_MEMBERSHIP_CHILD_URL") else {
        return;
    };
    let config = if std::env::var_os("WD_MEMBERSHIP_CHILD_DEFAULTS").is_some() {
        MembershipConfig::default()
    } else {
        config()
    };
    let link = Link::connect(LinkConfig::new(url)).await.unwrap();
    let m = Membership::new(&link, config, InstanceId::new("child"))
        .await
        .unwrap();
    let _g = m.join("agent:child").unwrap();
    // Heartbeat until killed.
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test]
async fn a_sigkilled_process_vanishes_within_the_timeout() {
    sigkilled_child(TIMEOUT, false).await;
}

/// The same with the default settings (heartbeat every 1 s, dead after 3 s).
#[tokio::test]
async fn a_sigkilled_process_vanishes_within_the_default_3_s() {
    sigkilled_child(Duration::from_secs(3), true).await;
}

async fn sigkilled_child(timeout: Duration, defaults: bool) {
    let redis = RedisServer::start().unwrap();
    let a = instance(&redis, "a").await;
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "child_instance", "--ignored", "--nocapture"])
        .env("WD_MEMBERSHIP_CHILD_URL", redis.url())
        .stdout(std::process::Stdio::null());
    if defaults {
        command.env("WD_MEMBERSHIP_CHILD_DEFAULTS", "1");
    }
    let mut child = command.spawn().unwrap();
    eventually(
        Duration::from_secs(20),
        "child listed with its presence",
        || async {
            let p = a.cluster_presence().await.ok()?;
            p.contains("agent:child").then_some(())
        },
    )
    .await;
    assert_eq!(ids(&a).await, ["a", "child"]);
    let mut diffs = a.presence_diffs();
    child.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    child.wait().unwrap();
    eventually(timeout + SLACK, "child gone", || async {
        (ids(&a).await == ["a"]).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(took >= timeout.mul_f64(0.5), "gone too soon: {took:?}");
    assert!(!a.cluster_presence().await.unwrap().contains("agent:child"));
    let d = tokio::time::timeout(INTERVAL * 3, diffs.recv())
        .await
        .expect("the child's presence should be announced gone")
        .unwrap();
    assert_eq!(
        (d.change, d.cause, d.key.as_str()),
        (
            PresenceChange::Left,
            PresenceCause::InstanceDied,
            "agent:child"
        )
    );
    assert_eq!(a.live_instances().get(), 1);
    println!("SIGKILLed process (timeout {timeout:?}) vanished from members after {took:?}");
}

#[tokio::test]
async fn redis_killed_degrades_health_and_a_restart_brings_members_back() {
    let redis = RedisServer::start().unwrap();
    let a = instance(&redis, "a").await;
    let b = instance(&redis, "b").await;
    let _agent = b.join("agent:3").unwrap();
    eventually(INTERVAL, "agent:3 listed", || async {
        a.cluster_presence()
            .await
            .unwrap()
            .contains("agent:3")
            .then_some(())
    })
    .await;
    let mut diffs = b.presence_diffs();
    redis.kill().unwrap();
    // Degraded within a heartbeat or two, never a panic.
    let reason = eventually(
        INTERVAL * 3 + Duration::from_millis(200),
        "a and b degraded",
        || async {
            match (a.check().await, b.check().await) {
                (CheckOutcome::Degraded(_), CheckOutcome::Degraded(reason)) => Some(reason),
                _ => None,
            }
        },
    )
    .await;
    assert!(reason.contains("cannot heartbeat"), "{reason}");
    // Listing fails fast, within the budget, with an error that says what to do.
    let started = Instant::now();
    let e = a.members().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(e.is_redis(), "{e}");
    // Presence keeps working locally while Redis is down.
    let _late = b.join("agent:4").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart().unwrap();
    // The data set starts empty: heartbeats resume, members reappear, presences are rewritten.
    eventually(
        Duration::from_secs(3),
        "members back with presences",
        || async {
            let m = a.members().await.ok()?;
            let p = a.cluster_presence().await.ok()?;
            (m.len() == 2 && p.contains("agent:3") && p.contains("agent:4")).then_some(())
        },
    )
    .await;
    eventually(Duration::from_secs(1), "healthy again", || async {
        (a.check().await == CheckOutcome::Healthy && b.check().await == CheckOutcome::Healthy)
            .then_some(())
    })
    .await;
    assert!(a.link().stats().connections >= 2 && a.failures() > 0);
    // b was lost by Redis and is back with its presences: announced as a rejoin.
    let got = drain(&mut diffs);
    assert!(
        got.iter()
            .any(|d| d.cause == PresenceCause::InstanceRejoined && d.key == "agent:3"),
        "{got:?}"
    );
    eventually(INTERVAL * 3, "live count 2 again", || async {
        (a.live_instances().get() == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_redis_that_refuses_the_calls_is_reported_and_recovered_from() {
    let redis = RedisServer::start().unwrap();
    let a = instance(&redis, "a").await;
    // Something else overwrote the members key with a string: every call is refused.
    redis.command(&["DEL", "{wd:members}:members"]).unwrap();
    redis
        .command(&["SET", "{wd:members}:members", "not a sorted set"])
        .unwrap();
    let e = a.members().await.unwrap_err();
    assert!(
        e.is_redis() && e.to_string().contains("nothing else writes keys"),
        "{e}"
    );
    eventually(INTERVAL * 3, "degraded", || async {
        matches!(a.check().await, CheckOutcome::Degraded(_)).then_some(())
    })
    .await;
    redis.command(&["DEL", "{wd:members}:members"]).unwrap();
    eventually(Duration::from_secs(2), "listed again", || async {
        (a.members().await.ok()?.len() == 1 && !a.is_degraded()).then_some(())
    })
    .await;
}

/// Membership on a link with the default reconnect settings (backoff up to 2 s), so a call
/// after a long outage is only served at once if it asks the link for a connection.
async fn default_link_instance(redis: &RedisServer, id: &str, budget: Duration) -> Membership {
    let link = Link::connect(LinkConfig::new(redis.url())).await.unwrap();
    let mut c = config();
    c.budget = budget;
    instance_with(&link, c, id).await
}

/// Redis SIGKILLed, nobody calls for a while (the link's backoff grows), Redis restarted on the
/// same port: the first listing after Redis answers succeeds, and the instance is listed again
/// within a heartbeat interval (Redis lost everything).
#[tokio::test]
async fn after_redis_restarts_the_first_call_succeeds_and_the_instance_is_listed_again() {
    let redis = RedisServer::start().unwrap();
    let a = default_link_instance(&redis, "a", Duration::from_millis(250)).await;
    assert_eq!(ids(&a).await, ["a"]);
    redis.kill().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart().unwrap(); // returns once Redis answers
    let first = a.members().await;
    assert!(
        first.is_ok(),
        "the first listing after Redis answers again: {first:?}"
    );
    // Within a heartbeat interval (and slack): the others never see it gone for a timeout.
    eventually(INTERVAL * 3 + SLACK, "a listed again", || async {
        let members = a.members().await.ok()?;
        (members.len() == 1).then_some(())
    })
    .await;
    eventually(INTERVAL * 3, "healthy again", || async {
        (a.check().await == CheckOutcome::Healthy).then_some(())
    })
    .await;
}

/// While Redis is down (SIGKILL) and while it is frozen (SIGSTOP), no call waits past its
/// budget (generous slack: this is behaviour, not a benchmark), leaving included.
#[tokio::test]
async fn no_call_waits_past_its_budget_while_redis_is_down_or_frozen() {
    let redis = RedisServer::start().unwrap();
    let budget = Duration::from_millis(100);
    let a = default_link_instance(&redis, "a", budget).await;
    let b = default_link_instance(&redis, "b", budget).await;
    let bound = budget + Duration::from_millis(200);
    let timed = |what: &'static str, took: Duration| {
        assert!(
            took < bound,
            "{what} took {took:?} with a {budget:?} budget"
        );
    };
    redis.kill().unwrap();
    for _ in 0..5 {
        let t = Instant::now();
        assert!(a.members().await.is_err());
        timed("members() while Redis is down", t.elapsed());
        let t = Instant::now();
        assert!(a.cluster_presence().await.is_err());
        timed("cluster_presence() while Redis is down", t.elapsed());
    }
    redis.restart().unwrap();
    eventually(Duration::from_secs(3), "both listed again", || async {
        let members = a.members().await.ok()?;
        (members.len() == 2).then_some(())
    })
    .await;
    redis.pause().unwrap();
    for _ in 0..5 {
        let t = Instant::now();
        assert!(a.members().await.is_err());
        timed("members() while Redis is frozen", t.elapsed());
    }
    let t = Instant::now();
    assert!(b.leave().await.is_err());
    timed("leave() while Redis is frozen", t.elapsed());
    redis.resume().unwrap();
    // b's heartbeat stopped: the others drop it after the timeout, as after a crash.
    eventually(TIMEOUT + Duration::from_secs(2), "b dropped", || async {
        let members = a.members().await.ok()?;
        (members.len() == 1 && members[0].id == "a").then_some(())
    })
    .await;
}

/// `CLIENT KILL` of the link's connection: the next call succeeds, heartbeats go on.
#[tokio::test]
async fn client_kill_of_the_connection_is_survived() {
    let redis = RedisServer::start().unwrap();
    let a = default_link_instance(&redis, "a", Duration::from_millis(250)).await;
    let _g = a.join("agent:9").unwrap();
    eventually(INTERVAL * 3, "agent:9 written", || async {
        a.cluster_presence()
            .await
            .ok()?
            .contains("agent:9")
            .then_some(())
    })
    .await;
    let before = a.link().stats().connections;
    let killed = redis
        .command(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
        .unwrap();
    assert!(killed.parse::<u32>().unwrap() >= 1, "killed {killed}");
    let first = a.members().await;
    assert!(first.is_ok(), "the first call after CLIENT KILL: {first:?}");
    tokio::time::sleep(INTERVAL * 3).await;
    assert!(!a.is_degraded(), "heartbeats go on after CLIENT KILL");
    assert_eq!(ids(&a).await, ["a"]);
    assert!(a.cluster_presence().await.unwrap().contains("agent:9"));
    assert_eq!(a.link().stats().connections, before + 1, "one reconnect");
}
