//! The call-center example on Sentinel and on a Redis Cluster: the Redis scenarios of
//! `tests/call_center.rs` run unchanged (`tests/support/redis_scenarios.rs`), then a fault per
//! topology — SIGKILL of the master holding a logged-in user's session (Cluster), of the primary
//! (Sentinel) — while requests flow through two instances: how many fail (503), the worst
//! latency, the time until all succeed again, and the user is still logged in afterwards.
//!
//! Build the example first (`cargo build --all-features --example call_center`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::call_center::*;
use support::redis_scenarios::*;
use welcomedly_testkit::{RedisCluster, RedisClusterConfig, RedisSentinel};

/// A Redis Cluster as the instances see it: the seed nodes; commands go to the key's master.
fn cluster(cluster: &RedisCluster) -> Topology<'_> {
    Topology {
        name: "cluster",
        env: vec![("REDIS_CLUSTER_NODES", cluster.seed_urls().join(","))],
        command: Box::new(|args| {
            let node = cluster.node_for(args[1].as_bytes()).unwrap();
            cluster.command_on(node, args).unwrap()
        }),
    }
}

/// Sentinel as the instances see it: the sentinels and the master's name; commands go to the
/// primary the sentinels name.
fn sentinel(sentinel: &RedisSentinel) -> Topology<'_> {
    Topology {
        name: "sentinel",
        env: vec![
            ("REDIS_SENTINELS", sentinel.sentinel_addrs().join(",")),
            ("REDIS_SENTINEL_MASTER", sentinel.master_name().to_owned()),
        ],
        command: Box::new(|args| {
            let primary = sentinel.primary().unwrap();
            sentinel.command_on(primary, args).unwrap()
        }),
    }
}

/// Every scenario on one deployment, the kill switch before the login limit (which locks
/// `supervisor` out).
fn all_scenarios(redis: &Topology<'_>) {
    let started = Instant::now();
    kill_switch_reaches_the_other_instance(redis);
    two_instances_share_the_login_limit(redis);
    sessions_and_events_are_shared(redis);
    an_instance_started_later_sees_earlier_statuses(redis);
    eprintln!(
        "{}: the four scenarios took {:?}",
        redis.name,
        started.elapsed()
    );
}

#[test]
fn the_redis_scenarios_pass_on_a_redis_cluster() {
    // 3 masters, no replicas: no fault here, and it starts faster.
    let redis = RedisClusterConfig::default()
        .replicas_per_master(0)
        .start()
        .unwrap();
    eprintln!("cluster ready in {:?}", redis.started_in());
    all_scenarios(&cluster(&redis));
}

#[test]
fn the_redis_scenarios_pass_on_sentinel() {
    let redis = RedisSentinel::start().unwrap();
    eprintln!("sentinel ready in {:?}", redis.started_in());
    all_scenarios(&sentinel(&redis));
}

/// The `INFO replication` field `name` of the node at `port`, as a number.
fn replication_field(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in INFO replication: {info}"))
}

/// Waits until the replica has applied everything the master wrote so far, so the session just
/// written survives the master's death (Redis replicates asynchronously: a write not yet
/// replicated is lost in a failover, which is what the issue's `WAIT` discussion is about).
fn wait_replicated(info_of: impl Fn(bool) -> String) {
    let target = replication_field(&info_of(true), "master_repl_offset");
    let deadline = Instant::now() + Duration::from_secs(5);
    while replication_field(&info_of(false), "slave_repl_offset") < target {
        assert!(
            Instant::now() < deadline,
            "the replica did not catch up with offset {target}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The variables of an instance under the fault load: its id, and an API limit the load (two
/// clients, one request every ≈ 10 ms each, for several seconds) stays far below — the default
/// 200 a minute would answer 429s that hide the fault's 503s.
fn load_env(topology: &Topology<'_>, id: &'static str) -> Vec<(&'static str, String)> {
    topology.env_with(&[
        ("WELCOMEDLY_INSTANCE_ID", id),
        ("WELCOMEDLY_API_PER_MINUTE", "100000"),
    ])
}

/// What the load saw around a fault.
struct FaultFigures {
    requests: usize,
    failed: usize,
    statuses: BTreeMap<u16, usize>,
    worst: Duration,
    /// The slowest request that failed (zero when none failed).
    worst_failed: Duration,
    /// The slowest request before the fault.
    worst_before: Duration,
    /// From the fault until the last failed request ended (zero when none failed).
    back_after: Duration,
    fault_took: Duration,
}

/// `GET /api/me` with `cookie` in a loop on each instance (one thread each) while `fault` runs;
/// goes on until requests have succeeded for 1 s after the fault (or its last failure), at
/// most 30 s.
fn load_through(
    instances: [&Instance; 2],
    cookie: &str,
    fault: impl FnOnce() -> Duration,
) -> FaultFigures {
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let (samples, fault_at, fault_took) = std::thread::scope(|scope| {
        let workers: Vec<_> = instances
            .iter()
            .map(|app| {
                let stop = &stop;
                scope.spawn(move || {
                    // (ended at since t0, latency, status)
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        let r = app.request_with("GET", "/api/me", &[("cookie", cookie)], "");
                        seen.push((t0.elapsed(), start.elapsed(), r.status));
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    seen
                })
            })
            .collect();
        // Steady traffic first.
        std::thread::sleep(Duration::from_millis(300));
        let fault_at = t0.elapsed();
        let fault_took = fault();
        // Then until 1 s without a failure, or 30 s.
        let deadline = Instant::now() + Duration::from_secs(30);
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        let mut samples: Vec<(Duration, Duration, u16)> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        // Carry on while the last second still had failures.
        while samples
            .iter()
            .any(|s| s.2 != 200 && s.0 + Duration::from_secs(1) > t0.elapsed())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
            for app in instances {
                let start = Instant::now();
                let r = app.request_with("GET", "/api/me", &[("cookie", cookie)], "");
                samples.push((t0.elapsed(), start.elapsed(), r.status));
            }
        }
        (samples, fault_at, fault_took)
    });
    let mut statuses = BTreeMap::new();
    for s in &samples {
        *statuses.entry(s.2).or_insert(0) += 1;
    }
    let last_failure = samples
        .iter()
        .filter(|s| s.2 != 200)
        .map(|s| s.0)
        .max()
        .unwrap_or(fault_at);
    FaultFigures {
        requests: samples.len(),
        failed: samples.iter().filter(|s| s.2 != 200).count(),
        statuses,
        worst: samples.iter().map(|s| s.1).max().unwrap_or_default(),
        worst_failed: samples
            .iter()
            .filter(|s| s.2 != 200)
            .map(|s| s.1)
            .max()
            .unwrap_or_default(),
        worst_before: samples
            .iter()
            .filter(|s| s.0 < fault_at)
            .map(|s| s.1)
            .max()
            .unwrap_or_default(),
        back_after: last_failure.saturating_sub(fault_at),
        fault_took,
    }
}

/// What every fault scenario checks of the figures and of the session afterwards.
fn check_after_fault(name: &str, figures: &FaultFigures, instances: [&Instance; 2], cookie: &str) {
    eprintln!(
        "{name}: {} requests, {} failed ({:?}), worst latency {:?} (of a failed one {:?}, before the fault {:?}), all succeed again {:?} after the fault (the fault itself took {:?})",
        figures.requests,
        figures.failed,
        figures.statuses,
        figures.worst,
        figures.worst_failed,
        figures.worst_before,
        figures.back_after,
        figures.fault_took
    );
    // A failed request is a 503 (Redis unavailable, retry), never a 401 (the session lost) or
    // a 500.
    for status in figures.statuses.keys() {
        assert!(
            [200, 503].contains(status),
            "{name}: status {status} seen: {:?}",
            figures.statuses
        );
    }
    // Still logged in, on both instances.
    for app in instances {
        let me = app.request_with("GET", "/api/me", &[("cookie", cookie)], "");
        assert_eq!(me.status, 200, "{name}: {}", me.body);
        assert!(me.body.contains(r#""user":"agent""#), "{}", me.body);
    }
}

/// The slot of a logged-in user's session migrated to another master, then `CLUSTER FAILOVER`
/// and SIGKILL of the master holding it, requests flowing through two instances: only 503s
/// while the slot has no master, then every request succeeds and the session, replicated before
/// the kill, is still there.
#[test]
fn a_session_slot_migrated_failed_over_and_its_master_killed_on_a_redis_cluster() {
    let redis = RedisCluster::start().unwrap();
    let topology = cluster(&redis);
    let a = Instance::start(&load_env(&topology, "cc-a"));
    let b = Instance::start(&load_env(&topology, "cc-b"));
    let cookie = log_in(&a, "agent");

    // The session's key: the only `wd:s:{<digest>}` on the masters (the user index is `wd:s:u:{…}`).
    let masters: Vec<u16> = redis
        .nodes()
        .unwrap()
        .iter()
        .filter(|n| n.master.is_none() && n.running && !n.slots.is_empty())
        .map(|n| n.port)
        .collect();
    assert_eq!(masters.len(), 3, "{masters:?}");
    let keys: Vec<String> = masters
        .iter()
        .flat_map(|&port| {
            redis
                .command_on(port, &["KEYS", "wd:s:{*"])
                .unwrap()
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(keys.len(), 1, "session keys: {keys:?}");
    let slot = RedisCluster::slot_of(keys[0].as_bytes());

    // The session's slot moves to another master, key by key (`ASK` meanwhile).
    let from = redis.master_for_slot(slot).unwrap();
    let to = *masters.iter().find(|&&m| m != from).unwrap();
    let figures = load_through([&a, &b], &cookie, || {
        let started = Instant::now();
        redis.migrate_slot(slot, to).unwrap();
        started.elapsed()
    });
    check_after_fault(
        &format!("cluster, migration of slot {slot} from {from} to {to}"),
        &figures,
        [&a, &b],
        &cookie,
    );
    assert_eq!(redis.node_for(keys[0].as_bytes()).unwrap(), to);

    let master = redis.master_for_slot(slot).unwrap();
    let replica = redis.replicas_of(master).unwrap()[0];

    // A graceful failover first (`CLUSTER FAILOVER`: no write lost), then a crash of the new
    // master, which is the old one's replica again.
    let figures = load_through([&a, &b], &cookie, || {
        let f = redis.failover(slot).unwrap();
        assert_eq!((f.from, f.to), (master, replica));
        f.took
    });
    check_after_fault(
        &format!("cluster, failover of slot {slot}"),
        &figures,
        [&a, &b],
        &cookie,
    );

    let (master, replica) = (replica, master);
    wait_replicated(|on_master| {
        let port = if on_master { master } else { replica };
        redis.command_on(port, &["INFO", "replication"]).unwrap()
    });
    let figures = load_through([&a, &b], &cookie, || {
        let f = redis.kill_master(slot).unwrap();
        assert_eq!((f.from, f.to), (master, replica));
        f.took
    });
    check_after_fault(
        &format!("cluster, kill-master of slot {slot}"),
        &figures,
        [&a, &b],
        &cookie,
    );
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

/// SIGKILL of the Sentinel primary, requests flowing through two instances: the link follows
/// the promoted replica, failed requests are 503s, and the replicated session survives.
#[test]
fn the_primary_killed_on_sentinel() {
    let redis = RedisSentinel::start().unwrap();
    let topology = sentinel(&redis);
    let a = Instance::start(&load_env(&topology, "cc-a"));
    let b = Instance::start(&load_env(&topology, "cc-b"));
    let cookie = log_in(&a, "agent");

    let primary = redis.primary().unwrap();
    let replica = *redis.data_ports().iter().find(|p| **p != primary).unwrap();
    wait_replicated(|on_primary| {
        let port = if on_primary { primary } else { replica };
        redis.command_on(port, &["INFO", "replication"]).unwrap()
    });

    let figures = load_through([&a, &b], &cookie, || {
        let f = redis.kill_primary().unwrap();
        assert_eq!((f.from, f.to), (primary, replica));
        f.took
    });
    check_after_fault("sentinel, kill-primary", &figures, [&a, &b], &cookie);
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

/// `SENTINEL FAILOVER` under load (no write lost: the replica is promoted once in sync), then
/// "log out everywhere" right after it: both sessions end on both instances, and their keys
/// are gone from the *new* primary — a logout written to the old one, which stays a master
/// until the sentinels demote it (≈ 10 s), would be undone by that demotion.
#[test]
fn a_sentinel_failover_under_load_then_log_out_everywhere() {
    let redis = RedisSentinel::start().unwrap();
    let topology = sentinel(&redis);
    let a = Instance::start(&load_env(&topology, "cc-a"));
    let b = Instance::start(&load_env(&topology, "cc-b"));
    let cookie = log_in(&a, "agent");
    let second = log_in(&b, "agent");

    let primary = redis.primary().unwrap();
    let replica = *redis.data_ports().iter().find(|p| **p != primary).unwrap();
    let keys: Vec<String> = redis
        .command_on(primary, &["KEYS", "wd:s:{*"])
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(keys.len(), 2, "session keys: {keys:?}");
    wait_replicated(|on_primary| {
        let port = if on_primary { primary } else { replica };
        redis.command_on(port, &["INFO", "replication"]).unwrap()
    });

    let figures = load_through([&a, &b], &cookie, || {
        let f = redis.failover().unwrap();
        assert_eq!((f.from, f.to), (primary, replica));
        f.took
    });
    check_after_fault("sentinel, SENTINEL FAILOVER", &figures, [&a, &b], &cookie);

    let out = b.request_with(
        "POST",
        "/auth/logout?everywhere=true",
        &[("cookie", &cookie)],
        "",
    );
    assert_eq!(out.status, 200, "{}", out.body);
    for app in [&a, &b] {
        for c in [&cookie, &second] {
            let me = app.request_with("GET", "/api/me", &[("cookie", c)], "");
            assert_eq!(me.status, 401, "{}", me.body);
        }
    }
    for key in &keys {
        assert_eq!(
            redis.command_on(replica, &["EXISTS", key]).unwrap(),
            "0",
            "session {key} still on the new primary {replica} after log out everywhere"
        );
    }
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}
