//! Ephemeral bus topics on sharded pub/sub (`SPUBLISH` / `SSUBSCRIBE`) on a real Redis Cluster
//! (welcomedly-testkit's `RedisCluster`, 3 masters with a replica each): delivery between two
//! instances, and still delivering after a graceful failover of the channel's shard, a
//! migration of its slot, a SIGKILL of its master and a killed pub/sub connection. Redis
//! unsubscribes the channel on a migration or failover (an unsolicited `sunsubscribe`); the
//! counters show it was answered. With that handling turned off (the bug of node-redis,
//! StackExchange.Redis and redis-py), delivery stops silently, and the periodic check repairs it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use welcomedly_cluster::bus::{Bus, BusConfig, Delivery, PubSubMode, Subscription, Topic};
use welcomedly_redis::{Backoff, Link, LinkConfig};
use welcomedly_testkit::{RedisCluster, Role};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Status {
    n: u64,
}

const WAIT: Duration = Duration::from_secs(20);
const TOPIC: &str = "board";

async fn link(cluster: &RedisCluster) -> Link {
    let mut c = LinkConfig::cluster(cluster.seed_urls());
    c.budget = Duration::from_millis(300);
    c.backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    Link::connect(c).await.unwrap()
}

async fn bus_on(link: &Link, mode: PubSubMode) -> Bus {
    let mut c = BusConfig::new();
    c.pubsub = mode;
    // The egress test publishes 2 000 before it reads.
    c.capacity = 4_096;
    c.build(link).await.unwrap()
}

/// Waits until `bus` reports every ephemeral topic subscribed.
async fn subscribed(bus: &Bus) {
    let deadline = Instant::now() + WAIT;
    while !bus.is_subscribed() {
        assert!(Instant::now() < deadline, "never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Publishes `n`, `n + 1`, … on `publisher` until one arrives on `sub` (within 300 ms of its
/// publication); returns the one that arrived. Panics after 20 s.
async fn delivers(publisher: &Bus, sub: &mut Subscription<Status>, n: &mut u64) -> u64 {
    deliver_within(publisher, sub, n, WAIT)
        .await
        .expect("no delivery within 20 s")
}

async fn deliver_within(
    publisher: &Bus,
    sub: &mut Subscription<Status>,
    n: &mut u64,
    within: Duration,
) -> Option<u64> {
    let topic = Topic::<Status>::ephemeral(TOPIC).unwrap();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        *n += 1;
        let _ = publisher.publish(&topic, &Status { n: *n }).await;
        let until = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(Some(d)) = tokio::time::timeout_at(until, sub.recv()).await {
            if let Delivery::Event(e) = d {
                return Some(e.data.n);
            }
        }
    }
    None
}

/// The master whose `PUBSUB SHARDCHANNELS` lists the topic's channel, and the channel.
fn channel_owner(cluster: &RedisCluster) -> (u16, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        for node in cluster.nodes().unwrap() {
            if node.role != Role::Master {
                continue;
            }
            let text = cluster
                .command_on(node.port, &["PUBSUB", "SHARDCHANNELS", "*:board"])
                .unwrap_or_default();
            if let Some(ch) = text.lines().map(str::trim).find(|l| l.ends_with(":board")) {
                return (node.port, ch.trim_matches('"').to_owned());
            }
        }
        assert!(Instant::now() < deadline, "no master lists the channel");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Pair {
    cluster: Arc<RedisCluster>,
    listener: Link,
    a: Bus,
    b: Bus,
    sub: Subscription<Status>,
    n: u64,
}

async fn pair() -> Pair {
    let cluster = Arc::new(RedisCluster::start().unwrap());
    let listener = link(&cluster).await;
    let a = bus_on(&listener, PubSubMode::Sharded).await;
    let b = bus_on(&link(&cluster).await, PubSubMode::Sharded).await;
    let topic = Topic::<Status>::ephemeral(TOPIC).unwrap();
    let sub = a.subscribe(&topic).await;
    subscribed(&a).await;
    let mut p = Pair {
        cluster,
        listener,
        a,
        b,
        sub,
        n: 0,
    };
    delivers(&p.b, &mut p.sub, &mut p.n).await;
    p
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_delivery_between_two_instances_uses_the_channels_master() {
    let mut p = pair().await;
    assert!(p.listener.sharded_subscriber().is_sharded());
    let (owner, channel) = channel_owner(&p.cluster);
    assert!(channel.starts_with("wd:bus:e:{"), "{channel}");
    assert_eq!(
        p.cluster
            .master_for_slot(RedisCluster::slot_of(channel.as_bytes()))
            .unwrap(),
        owner
    );
    // Subscribed on that master only; the classic subscriber was never used.
    let stats = p.listener.sharded_subscriber().stats();
    assert_eq!((stats.channels, stats.connections), (1, 1), "{stats:?}");
    assert_eq!(p.listener.subscriber().stats().connections, 0);
    let got = delivers(&p.b, &mut p.sub, &mut p.n).await;
    assert!(got >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn still_delivering_after_a_graceful_failover_of_the_channels_shard() {
    let mut p = pair().await;
    let (_, channel) = channel_owner(&p.cluster);
    let slot = RedisCluster::slot_of(channel.as_bytes());
    let c = p.cluster.clone();
    let failover = blocking(move || c.failover(slot).unwrap()).await;
    delivers(&p.b, &mut p.sub, &mut p.n).await;
    let stats = p.listener.sharded_subscriber().stats();
    println!(
        "CLUSTER FAILOVER (settled in {:?}): {stats:?}",
        failover.took
    );
    assert!(
        stats.unsolicited_unsubscribes >= 1,
        "the failover's sunsubscribe was not seen: {stats:?}"
    );
    assert!(stats.resubscribes >= 1, "{stats:?}");
    let (owner, _) = channel_owner(&p.cluster);
    assert_eq!(owner, failover.to, "subscribed on the promoted master");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn still_delivering_after_the_channels_slot_migrates() {
    let mut p = pair().await;
    let (owner, channel) = channel_owner(&p.cluster);
    let slot = RedisCluster::slot_of(channel.as_bytes());
    let to = p
        .cluster
        .nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.role == Role::Master && n.port != owner)
        .unwrap()
        .port;
    let c = p.cluster.clone();
    blocking(move || c.migrate_slot(slot, to).unwrap()).await;
    delivers(&p.b, &mut p.sub, &mut p.n).await;
    let stats = p.listener.sharded_subscriber().stats();
    println!("slot migration: {stats:?}");
    assert!(stats.unsolicited_unsubscribes >= 1, "{stats:?}");
    assert_eq!(channel_owner(&p.cluster).0, to);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivering_again_after_the_channels_master_is_killed() {
    let mut p = pair().await;
    let (_, channel) = channel_owner(&p.cluster);
    let slot = RedisCluster::slot_of(channel.as_bytes());
    let c = p.cluster.clone();
    let failover = blocking(move || c.kill_master(slot).unwrap()).await;
    delivers(&p.b, &mut p.sub, &mut p.n).await;
    let stats = p.listener.sharded_subscriber().stats();
    println!(
        "SIGKILL of the master (promoted in {:?}): {stats:?}",
        failover.took
    );
    assert!(stats.resubscribes >= 1, "{stats:?}");
    assert_eq!(channel_owner(&p.cluster).0, failover.to);
}

/// A frozen master (SIGSTOP) keeps the socket open: the node connection's unanswered `PING`s
/// drop it, and the channel is subscribed on the replica the cluster promotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivering_again_after_the_channels_master_freezes() {
    let mut p = pair().await;
    let (owner, channel) = channel_owner(&p.cluster);
    let slot = RedisCluster::slot_of(channel.as_bytes());
    p.cluster.pause(owner).unwrap();
    delivers(&p.b, &mut p.sub, &mut p.n).await;
    let stats = p.listener.sharded_subscriber().stats();
    println!("SIGSTOP of the master: {stats:?}");
    assert!(stats.resubscribes >= 1, "{stats:?}");
    assert_ne!(p.cluster.master_for_slot(slot).unwrap(), owner);
    p.cluster.resume(owner).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pubsub_connection_is_resubscribed() {
    let mut p = pair().await;
    let (owner, _) = channel_owner(&p.cluster);
    let list = p.cluster.command_on(owner, &["CLIENT", "LIST"]).unwrap();
    let id = list
        .lines()
        .find(|l| l.contains("name=welcomedly-sharded-pubsub"))
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("id=")))
        .unwrap()
        .to_owned();
    p.cluster
        .command_on(owner, &["CLIENT", "KILL", "ID", &id])
        .unwrap();
    delivers(&p.b, &mut p.sub, &mut p.n).await;
    let stats = p.listener.sharded_subscriber().stats();
    assert!(
        stats.resubscribes >= 1 && stats.connections >= 2,
        "{stats:?}"
    );
}

/// What the unsolicited-`sunsubscribe` handling prevents: a client that ignores it (and has no
/// periodic check) stays "subscribed" on a node that no longer sends it anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_resubscribe_a_failover_silently_stops_delivery() {
    let mut p = pair().await;
    let sharded = p.listener.sharded_subscriber();
    sharded.ignore_unsolicited_unsubscribes(true);
    sharded.set_check_every(Duration::from_secs(3600));
    let (_, channel) = channel_owner(&p.cluster);
    let slot = RedisCluster::slot_of(channel.as_bytes());
    let c = p.cluster.clone();
    blocking(move || c.failover(slot).unwrap()).await;
    let got = deliver_within(&p.b, &mut p.sub, &mut p.n, Duration::from_secs(4)).await;
    assert_eq!(got, None, "delivered without resubscribing?");
    // And the bus still believes it is subscribed: the loss is silent.
    assert!(p.a.is_subscribed());
}

/// The periodic check (`PUBSUB SHARDNUMSUB` + `CLIENT INFO` on the node) repairs what slipped
/// through: here the unsolicited `sunsubscribe` is ignored on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_check_repairs_a_subscription_lost_behind_our_back() {
    let mut p = pair().await;
    let sharded = p.listener.sharded_subscriber();
    sharded.ignore_unsolicited_unsubscribes(true);
    sharded.set_check_every(Duration::from_millis(300));
    let (_, channel) = channel_owner(&p.cluster);
    let slot = RedisCluster::slot_of(channel.as_bytes());
    let c = p.cluster.clone();
    blocking(move || c.failover(slot).unwrap()).await;
    delivers(&p.b, &mut p.sub, &mut p.n).await;
    let stats = sharded.stats();
    println!("repaired by the check: {stats:?}");
    assert_eq!(stats.unsolicited_unsubscribes, 0, "{stats:?}");
    assert!(stats.repairs >= 1, "{stats:?}");
}

/// Classic vs sharded on 3 instances where only one listens: what the cluster bus carries.
/// `CLUSTER INFO`'s `cluster_stats_messages_publish_sent` counts classic `PUBLISH` forwarded to
/// other nodes; `..._publishshard_sent` the sharded ones (to the shard's replicas only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_classic_vs_sharded() {
    const MESSAGES: u64 = 2_000;
    let cluster = Arc::new(RedisCluster::start().unwrap());
    let mut report = Vec::new();
    for mode in [PubSubMode::Classic, PubSubMode::Sharded] {
        let links = [
            link(&cluster).await,
            link(&cluster).await,
            link(&cluster).await,
        ];
        let buses = [
            bus_on(&links[0], mode).await,
            bus_on(&links[1], mode).await,
            bus_on(&links[2], mode).await,
        ];
        let topic = Topic::<Status>::ephemeral(TOPIC).unwrap();
        let mut sub = buses[0].subscribe(&topic).await;
        subscribed(&buses[0]).await;
        let before = cluster_stats(&cluster);
        for n in 0..MESSAGES {
            // Published by the two instances that do not listen.
            buses[1 + (n as usize % 2)]
                .publish(&topic, &Status { n })
                .await
                .unwrap();
        }
        let mut received = 0;
        while received < MESSAGES {
            match tokio::time::timeout(WAIT, sub.recv())
                .await
                .unwrap()
                .unwrap()
            {
                Delivery::Event(_) => received += 1,
                other => panic!("{other:?}"),
            }
        }
        let after = cluster_stats(&cluster);
        let delta: Vec<(u16, u64, u64)> = after
            .iter()
            .map(|(port, bus, net)| {
                let (_, b0, n0) = before.iter().find(|(p, ..)| p == port).unwrap();
                (*port, bus - b0, net - n0)
            })
            .collect();
        let bus_msgs: u64 = delta.iter().map(|d| d.1).sum();
        let net: u64 = delta.iter().map(|d| d.2).sum();
        let nodes_sending = delta.iter().filter(|d| d.2 > 10_000).count();
        report.push((mode, bus_msgs, net, nodes_sending));
        println!(
            "{mode:?}: {MESSAGES} messages, one listener of 3 instances: cluster-bus publish messages sent {bus_msgs} ({:.2} per message), client egress {net} bytes summed over the 6 nodes ({:.0} B per message), nodes with client egress > 10 kB: {nodes_sending}; per node (port, bus msgs, client bytes): {delta:?}",
            bus_msgs as f64 / MESSAGES as f64,
            net as f64 / MESSAGES as f64
        );
        drop(sub);
        for bus in &buses {
            bus.close();
        }
    }
    let (classic, sharded) = (report[0], report[1]);
    // Classic: every PUBLISH is forwarded to the 5 other nodes; sharded: to the shard's one
    // replica.
    assert!(classic.1 >= 4 * MESSAGES, "{report:?}");
    assert!(sharded.1 <= 2 * MESSAGES, "{report:?}");
}

/// Per node: (port, cluster-bus publish messages sent, client output bytes).
fn cluster_stats(cluster: &RedisCluster) -> Vec<(u16, u64, u64)> {
    let field = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
            .unwrap_or(0)
    };
    cluster
        .ports()
        .into_iter()
        .map(|port| {
            let info = cluster.command_on(port, &["CLUSTER", "INFO"]).unwrap();
            let stats = cluster.command_on(port, &["INFO", "stats"]).unwrap();
            (
                port,
                field(&info, "cluster_stats_messages_publish_sent")
                    + field(&info, "cluster_stats_messages_publishshard_sent"),
                field(&stats, "total_net_output_bytes"),
            )
        })
        .collect()
}
