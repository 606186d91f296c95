//! The link on a real Redis Cluster (welcomedly-testkit's `RedisCluster`, 3 masters): calls to
//! keys on every shard, `NOSCRIPT` after `SCRIPT FLUSH`, a graceful failover, a SIGKILLed
//! master, a paused master, a slot migration (`ASK`), pub/sub and dedicated connections.
//!
//! The fault tests run a steady stream of calls through the fault and print, per fault: calls
//! failed, worst latency, and the time from the fault until calls succeed again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use welcomedly_redis::redis::{self, Script};
use welcomedly_redis::{Delivery, Link, LinkConfig, Retry};
use welcomedly_testkit::{RedisCluster, RedisClusterConfig};

const BUDGET: Duration = Duration::from_millis(100);

/// How much longer than its budget a call may take on this shared 2-core machine before the
/// test calls it unbounded (a scheduling margin, not a speed claim).
const SLACK: Duration = Duration::from_millis(400);

fn config(cluster: &RedisCluster) -> LinkConfig {
    let mut c = LinkConfig::cluster(cluster.seed_urls());
    c.budget = BUDGET;
    c
}

/// One key per master, each on a different master.
fn key_per_master(cluster: &RedisCluster) -> Vec<String> {
    let mut keys: Vec<(u16, String)> = Vec::new();
    for i in 0.. {
        let key = format!("k{i}");
        let node = cluster.node_for(key.as_bytes()).unwrap();
        if !keys.iter().any(|(n, _)| *n == node) {
            keys.push((node, key));
        }
        let masters = cluster.config().masters;
        if keys.len() == masters {
            break;
        }
    }
    keys.into_iter().map(|(_, k)| k).collect()
}

/// A key served by a master other than `node`.
fn key_not_on(cluster: &RedisCluster, node: u16) -> String {
    (0..)
        .map(|i| format!("other{i}"))
        .find(|k| cluster.node_for(k.as_bytes()).unwrap() != node)
        .unwrap()
}

/// Polls `cond` every 20 ms for up to 15 s (a bound for a hung test, not a speed check).
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..750 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within 15 s: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reach_keys_on_every_shard() {
    let cluster = RedisClusterConfig::default()
        .replicas_per_master(0)
        .start()
        .unwrap();
    let link = Link::connect(config(&cluster)).await.unwrap();
    assert!(link.is_connected());
    let keys = key_per_master(&cluster);
    assert_eq!(keys.len(), 3);
    let script = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    for key in &keys {
        let () = link
            .query(redis::cmd("SET").arg(key).arg("v"), Retry::Once)
            .await
            .unwrap();
        let v: String = link
            .query(redis::cmd("GET").arg(key), Retry::Once)
            .await
            .unwrap();
        assert_eq!(v, "v");
        // Stored on the key's master, not somewhere else.
        let node = cluster.node_for(key.as_bytes()).unwrap();
        let there = cluster.command_on(node, &["GET", key]).unwrap();
        assert_eq!(there, "v");
        // A script on the key's node; a pipeline of keys in one slot.
        let counter = format!("{{{key}}}:n");
        let n: i64 = link
            .invoke(script.key(&counter).arg(5), Retry::Never)
            .await
            .unwrap();
        assert_eq!(n, 5);
        let (a, b): (i64, String) = link
            .query_pipe(
                redis::pipe().cmd("INCR").arg(&counter).cmd("GET").arg(key),
                Retry::Never,
            )
            .await
            .unwrap();
        assert_eq!((a, b.as_str()), (6, "v"));
    }
    // PING answers from one node (redis-rs would ask every primary).
    let pong: String = link.query(&redis::cmd("PING"), Retry::Once).await.unwrap();
    assert_eq!(pong, "PONG");
    let s = link.stats();
    assert_eq!(
        (s.connections, s.transport_failures, s.replace_failures),
        (1, 0, 0),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_names_the_cluster_and_dedicated_connections_reach_the_keys_node() {
    let cluster = RedisClusterConfig::default()
        .replicas_per_master(0)
        .start()
        .unwrap();
    let nodes = cluster.seed_urls().join(",");
    let mut env =
        welcomedly_core::config::EnvReader::from_pairs(&[("REDIS_CLUSTER_NODES", &nodes)]);
    let config = LinkConfig::read(&mut env);
    let config = env.finish(config).unwrap().unwrap();
    assert!(config.topology.is_cluster());
    let link = Link::connect(config).await.unwrap();
    for key in key_per_master(&cluster) {
        // A blocking pop on the key's node, while the shared connection pushes to it.
        let mut conn = link.dedicated_for(key.as_bytes()).await.unwrap();
        let pop = {
            let key = key.clone();
            tokio::spawn(async move {
                redis::cmd("BLPOP")
                    .arg(&key)
                    .arg(5)
                    .query_async::<Option<(String, String)>>(&mut conn)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _: i64 = link
            .query(redis::cmd("RPUSH").arg(&key).arg("job"), Retry::Never)
            .await
            .unwrap();
        let popped = tokio::time::timeout(Duration::from_secs(5), pop)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(popped, Some((key.clone(), "job".to_owned())));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noscript_after_script_flush_is_answered_on_the_keys_node_only() {
    let cluster = RedisClusterConfig::default()
        .replicas_per_master(0)
        .start()
        .unwrap();
    let link = Link::connect(config(&cluster)).await.unwrap();
    let script = Script::new("return redis.call('INCR', KEYS[1])");
    link.preload(&script).await.unwrap();
    let keys = key_per_master(&cluster);
    let key = &keys[0];
    let node = cluster.node_for(key.as_bytes()).unwrap();
    let n: i64 = link.invoke(&script.key(key), Retry::Never).await.unwrap();
    assert_eq!(n, 1);
    // Never loaded on every node: only the key's node ran it (EVAL caches it there).
    let loaded_on = |port: u16| {
        cluster
            .command_on(port, &["SCRIPT", "EXISTS", script.get_hash()])
            .unwrap()
            .contains('1')
    };
    assert!(loaded_on(node));
    for other in cluster.ports().into_iter().filter(|p| *p != node) {
        assert!(!loaded_on(other), "loaded on 127.0.0.1:{other} too");
    }
    cluster.command_on(node, &["SCRIPT", "FLUSH"]).unwrap();
    assert!(!loaded_on(node));
    // The next call succeeds: NOSCRIPT, then EVAL with the same key.
    let n: i64 = link.invoke(&script.key(key), Retry::Never).await.unwrap();
    assert_eq!(n, 2, "ran once");
    assert!(loaded_on(node));
    // A component's own closure (redis-rs' invoke_async, which loads on NOSCRIPT) too.
    cluster.command_on(node, &["SCRIPT", "FLUSH"]).unwrap();
    let n: i64 = link
        .call(Retry::Never, |mut c| {
            let invocation = script.key(key);
            async move { invocation.invoke_async(&mut c).await }
        })
        .await
        .unwrap();
    assert_eq!(n, 3);
    // A script the link never saw: loaded through the closure, kept by the link.
    let fresh = Script::new("return redis.call('INCRBY', KEYS[1], 10)");
    let n: i64 = link
        .call(Retry::Never, |mut c| {
            let invocation = fresh.key(key);
            async move { invocation.invoke_async(&mut c).await }
        })
        .await
        .unwrap();
    assert_eq!(n, 13);
    for other in cluster.ports().into_iter().filter(|p| *p != node) {
        assert!(
            !cluster
                .command_on(other, &["SCRIPT", "EXISTS", fresh.get_hash()])
                .unwrap()
                .contains('1'),
            "loaded on 127.0.0.1:{other} too"
        );
    }
    let s = link.stats();
    assert_eq!(s.connections, 1, "{s:?}");
}

/// What a stream of calls saw through a fault.
#[derive(Debug, Default)]
struct Run {
    calls: usize,
    failed: usize,
    /// Failures other than a call past its budget (an error from the cluster: `CLUSTERDOWN`,
    /// a dead node).
    errors: usize,
    worst: Duration,
    /// From the fault until the first success after the last failure.
    recovered_after: Option<Duration>,
}

/// Runs calls on `key` back to back (one every 5 ms) from now until `stop`, and reports what
/// they saw relative to `fault_at` (set by the fault).
async fn calls_through(
    link: Link,
    key: String,
    stop: Arc<AtomicBool>,
    fault_at: Arc<std::sync::Mutex<Option<Instant>>>,
) -> Run {
    let script = Script::new("return redis.call('INCR', KEYS[1])");
    let mut run = Run::default();
    let mut last_failure: Option<Instant> = None;
    let mut recovered: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        let started = Instant::now();
        let result: Result<i64, _> = link.invoke(&script.key(&key), Retry::Never).await;
        let took = started.elapsed();
        run.calls += 1;
        run.worst = run.worst.max(took);
        match result {
            Ok(_) => {
                if last_failure.is_some() && recovered.is_none() {
                    recovered = Some(Instant::now());
                }
            }
            Err(e) => {
                assert!(e.is_unavailable(), "{e:?}");
                run.failed += 1;
                if !e.is_budget() {
                    run.errors += 1;
                }
                last_failure = Some(Instant::now());
                recovered = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fault = *fault_at.lock().unwrap();
    run.recovered_after = match (fault, recovered) {
        (Some(f), Some(r)) => Some(r.saturating_duration_since(f)),
        _ => None,
    };
    run
}

/// Runs `fault` (blocking: a testkit control) while calls on `key` go on, then calls for
/// `after` more, and returns what the calls saw.
async fn through_fault(
    link: &Link,
    key: &str,
    after: Duration,
    fault: impl FnOnce() + Send + 'static,
) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let fault_at = Arc::new(std::sync::Mutex::new(None));
    let calls = tokio::spawn(calls_through(
        link.clone(),
        key.to_owned(),
        stop.clone(),
        fault_at.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    *fault_at.lock().unwrap() = Some(Instant::now());
    tokio::task::spawn_blocking(fault).await.unwrap();
    tokio::time::sleep(after).await;
    stop.store(true, Ordering::Release);
    calls.await.unwrap()
}

fn assert_bounded(what: &str, run: &Run) {
    println!("{what}: {run:?}");
    assert!(
        run.worst <= BUDGET + SLACK,
        "{what}: a call took {:?}, past its {BUDGET:?} budget",
        run.worst
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_failover_of_the_keys_shard() {
    let cluster = Arc::new(RedisCluster::start().unwrap());
    let link = Link::connect(config(&cluster)).await.unwrap();
    let key = key_per_master(&cluster).remove(0);
    let slot = RedisCluster::slot_of(key.as_bytes());
    let c = cluster.clone();
    let run = through_fault(&link, &key, Duration::from_millis(500), move || {
        let f = c.failover(slot).unwrap();
        println!("CLUSTER FAILOVER settled in {:?}", f.took);
    })
    .await;
    assert_bounded("CLUSTER FAILOVER", &run);
    // Calls succeed on the promoted master, through the same cluster connection.
    let n: i64 = link
        .query(redis::cmd("INCR").arg(&key), Retry::Never)
        .await
        .unwrap();
    assert!(n >= 1);
    assert_eq!(link.stats().connections, 1, "{:?}", link.stats());
}

/// SIGKILL of a key's master while calls go on to that key and to a key on another shard.
async fn killed_master(full_coverage: bool) {
    let cluster = Arc::new(
        RedisClusterConfig::default()
            .require_full_coverage(full_coverage)
            .start()
            .unwrap(),
    );
    let link = Link::connect(config(&cluster)).await.unwrap();
    let key = key_per_master(&cluster).remove(0);
    let slot = RedisCluster::slot_of(key.as_bytes());
    let other_key = key_not_on(&cluster, cluster.node_for(key.as_bytes()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let fault_at = Arc::new(std::sync::Mutex::new(None));
    let other_calls = tokio::spawn(calls_through(
        link.clone(),
        other_key,
        stop.clone(),
        fault_at.clone(),
    ));
    let c = cluster.clone();
    let killed_at = fault_at.clone();
    let run = through_fault(&link, &key, Duration::from_millis(1000), move || {
        *killed_at.lock().unwrap() = Some(Instant::now());
        let f = c.kill_master(slot).unwrap();
        println!("SIGKILL of the master: replica promoted in {:?}", f.took);
    })
    .await;
    stop.store(true, Ordering::Release);
    let other = other_calls.await.unwrap();
    assert_bounded("SIGKILL of the key's master: calls to its key", &run);
    assert_bounded(
        &format!("SIGKILL of another shard's master (full coverage {full_coverage}): calls"),
        &other,
    );
    assert!(run.recovered_after.is_some() || run.failed == 0, "{run:?}");
    let n: i64 = link
        .query(redis::cmd("INCR").arg(&key), Retry::Never)
        .await
        .unwrap();
    assert!(n >= 1);
    if !full_coverage {
        // The other shards keep serving while one master is replaced: no error from them (a
        // call past its budget on this shared machine aside).
        assert_eq!(other.errors, 0, "{other:?}");
    }
    // No reconnect storm: the cluster connection was kept (redis-rs reconnected the node),
    // or replaced once if it had not followed the promotion when the topology watch looked.
    let s = link.stats();
    println!("{s:?}");
    assert!(s.connections <= 2, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_calls_fast_then_they_succeed() {
    killed_master(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_full_coverage_a_killed_master_leaves_other_shards_serving() {
    killed_master(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_master_does_not_slow_calls_to_other_shards() {
    let cluster = Arc::new(RedisCluster::start().unwrap());
    let link = Link::connect(config(&cluster)).await.unwrap();
    let frozen_key = key_per_master(&cluster).remove(0);
    let frozen = cluster.node_for(frozen_key.as_bytes()).unwrap();
    let healthy_key = key_not_on(&cluster, frozen);
    let c = cluster.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let fault_at = Arc::new(std::sync::Mutex::new(None));
    let frozen_calls = tokio::spawn(calls_through(
        link.clone(),
        frozen_key.clone(),
        stop.clone(),
        fault_at.clone(),
    ));
    let paused_at = fault_at.clone();
    let run = through_fault(&link, &healthy_key, Duration::from_millis(300), move || {
        *paused_at.lock().unwrap() = Some(Instant::now());
        c.pause(frozen).unwrap();
        std::thread::sleep(Duration::from_millis(800));
    })
    .await;
    assert_bounded(
        "calls to a healthy shard while another master is paused",
        &run,
    );
    // Not one error from the cluster, and hardly a call past its budget (a stall behind the
    // frozen node would fail most of them; a loaded test machine may delay one or two).
    assert_eq!(run.errors, 0, "{run:?}");
    assert!(run.failed * 20 <= run.calls, "{run:?}");
    // The paused master's replica is promoted after the node timeout; its keys are served
    // again, found without a restart of the link.
    let started = Instant::now();
    eventually(
        "calls to the paused master's keys to succeed again",
        async || {
            link.query::<i64>(redis::cmd("INCR").arg(&frozen_key), Retry::Never)
                .await
                .is_ok()
        },
    )
    .await;
    println!(
        "paused master's keys served again {:?} after the checks began",
        started.elapsed()
    );
    stop.store(true, Ordering::Release);
    let frozen_run = frozen_calls.await.unwrap();
    assert_bounded("calls to the paused master's keys", &frozen_run);
    cluster.resume(frozen).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migration_is_followed() {
    let cluster = RedisClusterConfig::default()
        .replicas_per_master(0)
        .start()
        .unwrap();
    let link = Link::connect(config(&cluster)).await.unwrap();
    let key = key_per_master(&cluster).remove(0);
    let slot = RedisCluster::slot_of(key.as_bytes());
    let from = cluster.node_for(key.as_bytes()).unwrap();
    let to = cluster
        .ports()
        .into_iter()
        .find(|p| {
            *p != from
                && cluster
                    .nodes()
                    .unwrap()
                    .iter()
                    .any(|n| n.port == *p && !n.slots.is_empty())
        })
        .unwrap();
    let () = link
        .query(redis::cmd("SET").arg(&key).arg("1"), Retry::Once)
        .await
        .unwrap();
    let migration = cluster.begin_migration(slot, to).unwrap();
    assert_eq!(cluster.migrate_keys(&migration, &[&key]).unwrap(), 1);
    // The source answers ASK: followed.
    let v: String = link
        .query(redis::cmd("GET").arg(&key), Retry::Once)
        .await
        .unwrap();
    assert_eq!(v, "1");
    let n: i64 = link
        .query(redis::cmd("INCR").arg(&key), Retry::Never)
        .await
        .unwrap();
    assert_eq!(n, 2);
    cluster.finish_migration(migration).unwrap();
    // MOVED: followed, and the slot map refreshed.
    let n: i64 = link
        .query(redis::cmd("INCR").arg(&key), Retry::Never)
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(cluster.command_on(to, &["GET", &key]).unwrap(), "3");
    assert_eq!(link.stats().connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_reaches_subscribers_on_any_node_and_survives_the_nodes_death() {
    let cluster = RedisCluster::start().unwrap();
    let link = Link::connect(config(&cluster)).await.unwrap();
    let publisher = Link::connect(config(&cluster)).await.unwrap();
    let mut sub = link.subscriber().subscribe("news", 16);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .unwrap(),
        Some(Delivery::Subscribed { outage: None })
    );
    let publish = async |n: i64| -> i64 {
        publisher
            .query(redis::cmd("PUBLISH").arg("news").arg(n), Retry::Never)
            .await
            .unwrap()
    };
    // PUBLISH goes to the channel's slot's node; the subscriber sits on a seed node: the
    // cluster bus carries it.
    publish(1).await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .unwrap(),
        Some(Delivery::Message("1".into()))
    );
    // Kill the node the subscriber is on (a replica or a master with a replica).
    let clients_on = |port: u16| {
        cluster
            .command_on(port, &["CLIENT", "LIST"])
            .map(|l| l.lines().filter(|l| l.contains("sub=1")).count())
            .unwrap_or(0)
    };
    let on = cluster
        .ports()
        .into_iter()
        .find(|p| clients_on(*p) > 0)
        .unwrap();
    let node = cluster
        .nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.port == on)
        .unwrap();
    if node.slots.is_empty() {
        cluster.kill(on).unwrap();
    } else {
        cluster
            .kill_master(node.slots.first().map(|r| *r.start()).unwrap())
            .unwrap();
    }
    let next = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(next, Delivery::Subscribed { outage: Some(_) }),
        "{next:?}"
    );
    eventually("a message to arrive after the move", async || {
        let _ = publisher
            .query::<i64>(redis::cmd("PUBLISH").arg("news").arg(2), Retry::Never)
            .await;
        matches!(sub.try_recv(), Some(Some(Delivery::Message(_))))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_master_and_rebalanced_slots_are_followed() {
    let cluster = RedisClusterConfig::default()
        .replicas_per_master(0)
        .start()
        .unwrap();
    let link = Link::connect(config(&cluster)).await.unwrap();
    let keys = key_per_master(&cluster);
    for key in &keys {
        let () = link
            .query(redis::cmd("SET").arg(key).arg("before"), Retry::Once)
            .await
            .unwrap();
    }
    let new = cluster.add_master().unwrap();
    // Each key's slot, with its data, to the new master.
    for key in &keys {
        let slot = RedisCluster::slot_of(key.as_bytes());
        cluster.move_slots(slot..=slot, new).unwrap();
    }
    for key in &keys {
        let v: String = link
            .query(redis::cmd("GET").arg(key), Retry::Once)
            .await
            .unwrap();
        assert_eq!(v, "before");
        let () = link
            .query(redis::cmd("SET").arg(key).arg("after"), Retry::Once)
            .await
            .unwrap();
        assert_eq!(cluster.command_on(new, &["GET", key]).unwrap(), "after");
        // A dedicated connection for the key lands on the new master too.
        let mut conn = link.dedicated_for(key.as_bytes()).await.unwrap();
        let v: String = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if v != "after" {
            // The first one may come from the map before the move (MOVED): the next one not.
            drop(conn);
            let mut conn = link.dedicated_for(key.as_bytes()).await.unwrap();
            let v: String = redis::cmd("GET")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(v, "after");
        }
    }
    assert_eq!(link.stats().connections, 1);
}
