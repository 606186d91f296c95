//! The link's sharded subscriber on a real Redis Cluster (welcomedly-testkit's `RedisCluster`):
//! `SPUBLISH` through the link reaches an `SSUBSCRIBE` on the channel's master; after a graceful
//! failover of that shard the subscription is told `Subscribed { outage: Some(_) }` and
//! receives again, on the promoted master.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use welcomedly_redis::{Backoff, Delivery, Link, LinkConfig, Retry, Subscription};
use welcomedly_testkit::RedisCluster;

const CHANNEL: &str = "wd:test:{7}:news";

async fn link(cluster: &RedisCluster) -> Link {
    let mut c = LinkConfig::cluster(cluster.seed_urls());
    c.budget = Duration::from_millis(300);
    c.backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    Link::connect(c).await.unwrap()
}

/// `SPUBLISH`es until the subscription receives a message (skipping `Subscribed`); returns what
/// it saw before the message.
async fn receives(publisher: &Link, sub: &mut Subscription) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let mut cmd = redis::cmd("SPUBLISH");
        cmd.arg(CHANNEL).arg("hello");
        let _ = publisher.query::<i64>(&cmd, Retry::Never).await;
        let until = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(Some(d)) = tokio::time::timeout_at(until, sub.recv()).await {
            if matches!(d, Delivery::Message(_)) {
                return seen;
            }
            seen.push(d);
        }
    }
    panic!("no message within 20 s; saw {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spublish_reaches_ssubscribe_before_and_after_a_failover() {
    let cluster = Arc::new(RedisCluster::start().unwrap());
    let (listener, publisher) = (link(&cluster).await, link(&cluster).await);
    let sharded = listener.sharded_subscriber();
    assert!(sharded.is_sharded() && listener.is_cluster());
    let mut sub = sharded.subscribe(CHANNEL, 16);
    let first = receives(&publisher, &mut sub).await;
    assert_eq!(first.first(), Some(&Delivery::Subscribed { outage: None }));
    assert!(sharded.is_subscribed(CHANNEL));
    let slot = RedisCluster::slot_of(CHANNEL.as_bytes());
    let owner = cluster.master_for_slot(slot).unwrap();
    let subscribers = cluster
        .command_on(owner, &["PUBSUB", "SHARDNUMSUB", CHANNEL])
        .unwrap();
    assert!(subscribers.trim().ends_with('1'), "{subscribers}");
    let c = cluster.clone();
    let failover = tokio::task::spawn_blocking(move || c.failover(slot).unwrap())
        .await
        .unwrap();
    let after = receives(&publisher, &mut sub).await;
    assert!(
        after
            .iter()
            .any(|d| matches!(d, Delivery::Subscribed { outage: Some(_) })),
        "{after:?}"
    );
    let stats = sharded.stats();
    assert!(stats.unsolicited_unsubscribes >= 1, "{stats:?}");
    // Subscribed on the promoted master. An `SSUBSCRIBE` that reached the old master in the
    // instant before its demotion may stay on it as a replica (which still receives the shard's
    // messages); the periodic check (every 5 s) moves it to the slot map's master.
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let on_new = cluster
            .command_on(failover.to, &["PUBSUB", "SHARDNUMSUB", CHANNEL])
            .unwrap();
        if on_new.trim().ends_with('1') {
            break;
        }
        assert!(Instant::now() < deadline, "{on_new}: {:?}", sharded.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The classic subscriber was never involved.
    assert_eq!(listener.subscriber().stats().connections, 0);
}

#[tokio::test]
async fn off_a_cluster_the_sharded_subscriber_is_the_classic_one() {
    let link = Link::connect(LinkConfig::new("redis://127.0.0.1:1/"))
        .await
        .unwrap();
    assert!(!link.is_cluster());
    assert!(!link.sharded_subscriber().is_sharded());
}
