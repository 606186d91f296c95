//! The event bus on a real Redis Cluster (welcomedly-testkit's `RedisCluster`, 3 masters with a
//! replica each): a durable subscriber keeps reading across a graceful failover and a SIGKILL of
//! its stream's master (its reader's dedicated connection goes to the stream's node, and to the
//! new master after the failover), never silently missing an event.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use welcomedly_cluster::bus::{Bus, BusConfig, Delivery, Subscription, Topic};
use welcomedly_redis::{Backoff, Link, LinkConfig};
use welcomedly_testkit::RedisCluster;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Status {
    n: u64,
}

const WAIT: Duration = Duration::from_secs(15);

/// One instance's link to the cluster: a noisy shared box, so a generous budget and fast
/// reconnects.
async fn link(cluster: &RedisCluster) -> Link {
    let mut c = LinkConfig::cluster(cluster.seed_urls());
    c.budget = Duration::from_millis(300);
    c.backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    Link::connect(c).await.unwrap()
}

async fn bus(cluster: &RedisCluster) -> Bus {
    let mut c = BusConfig::new();
    c.block = Duration::from_millis(500);
    c.build(&link(cluster).await).await.unwrap()
}

async fn next(sub: &mut Subscription<Status>) -> Delivery<Status> {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("no delivery within 15 s")
        .expect("the subscription ended")
}

/// Publishes until the bus accepts; `None` if it kept failing for 15 s.
async fn publish_retrying(bus: &Bus, topic: &Topic<Status>, n: u64) -> (u64, usize) {
    let deadline = Instant::now() + WAIT;
    let mut failures = 0;
    loop {
        match bus.publish(topic, &Status { n }).await {
            Ok(_) => return (n, failures),
            Err(e) => {
                assert!(e.is_redis(), "{e}");
                assert!(Instant::now() < deadline, "publishing kept failing: {e}");
                failures += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_reader_keeps_reading_across_a_failover_of_its_shard() {
    let cluster = Arc::new(RedisCluster::start().unwrap());
    let (a, b) = (bus(&cluster).await, bus(&cluster).await);
    let topic = Topic::<Status>::durable("calls").unwrap();
    let mut d = a.subscribe(&topic).await;
    publish_retrying(&b, &topic, 1).await;
    match next(&mut d).await {
        Delivery::Event(e) => assert_eq!(e.data.n, 1),
        other => panic!("{other:?}"),
    }
    // Publish 2..=150 every 10 ms on B while the stream's shard fails over.
    let publisher = {
        let (b, topic) = (b.clone(), topic.clone());
        tokio::spawn(async move {
            let mut failures = 0;
            for n in 2..=150 {
                failures += publish_retrying(&b, &topic, n).await.1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failures
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let slot = RedisCluster::slot_of(b"calls");
    let c = cluster.clone();
    let failover = tokio::task::spawn_blocking(move || c.failover(slot).unwrap())
        .await
        .unwrap();
    // Every acknowledged event arrives, in order, exactly once (a graceful failover loses
    // nothing), including those published after the reader moved to the new master.
    let mut expected = 2;
    while expected <= 150 {
        match next(&mut d).await {
            Delivery::Event(e) => {
                assert_eq!(e.data.n, expected, "out of order or lost");
                expected += 1;
            }
            other => panic!("a graceful failover lost events: {other:?}"),
        }
    }
    let failures = publisher.await.unwrap();
    let stats = a.stats();
    println!(
        "CLUSTER FAILOVER of the stream's shard (settled in {:?}): 149 events, {failures} publish attempts failed and were retried, reader reconnects {}",
        failover.took, stats.reader_reconnects
    );
    // The reader now blocks on the new master.
    let readers = cluster
        .command_on(failover.to, &["CLIENT", "LIST"])
        .unwrap()
        .lines()
        .filter(|l| l.contains("cmd=xread"))
        .count();
    assert_eq!(readers, 1, "the reader is on the promoted master");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_reader_follows_its_shard_through_a_killed_master_never_silently() {
    let cluster = Arc::new(RedisCluster::start().unwrap());
    let (a, b) = (bus(&cluster).await, bus(&cluster).await);
    let topic = Topic::<Status>::durable("calls").unwrap();
    let mut d = a.subscribe(&topic).await;
    publish_retrying(&b, &topic, 1).await;
    match next(&mut d).await {
        Delivery::Event(e) => assert_eq!(e.data.n, 1),
        other => panic!("{other:?}"),
    }
    let publisher = {
        let (b, topic) = (b.clone(), topic.clone());
        tokio::spawn(async move {
            let mut failures = 0;
            for n in 2..=150 {
                failures += publish_retrying(&b, &topic, n).await.1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failures
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let slot = RedisCluster::slot_of(b"calls");
    let c = cluster.clone();
    let killed = tokio::task::spawn_blocking(move || c.kill_master(slot).unwrap())
        .await
        .unwrap();
    // Continuous, or a gap notice before the first event after a hole: never silent.
    let (mut last, mut gaps, mut told) = (1, 0, false);
    while last < 150 {
        match next(&mut d).await {
            Delivery::Event(e) => {
                let n = e.data.n;
                assert!(
                    n == last + 1 || told,
                    "event {n} after {last} without a gap notice"
                );
                told = false;
                last = last.max(n);
            }
            Delivery::Gap(_) => {
                gaps += 1;
                told = true;
            }
            other => panic!("{other:?}"),
        }
    }
    let failures = publisher.await.unwrap();
    println!(
        "SIGKILL of the stream's master (promoted in {:?}): 149 events, {failures} publish attempts failed and were retried, {gaps} gap notices, reader reconnects {}",
        killed.took,
        a.stats().reader_reconnects
    );
    let readers = cluster
        .command_on(killed.to, &["CLIENT", "LIST"])
        .unwrap()
        .lines()
        .filter(|l| l.contains("cmd=xread"))
        .count();
    assert_eq!(readers, 1, "the reader is on the promoted master");
}
