//! Flags compare-and-set across a real Redis Cluster failover (welcomedly-testkit's
//! `RedisCluster`, 3 masters with a replica each; two instances, each with its own link, store
//! and sync): a write acknowledged by the flag key's master and lost when that master is
//! SIGKILLed before its replica had it (the replica frozen and its link cut, so the loss is
//! certain rather than a race) is not silently kept by the instances that applied it. A write
//! expecting the lost version is a conflict on the promoted replica; the next write takes the
//! lost version number again with other content, and every instance converges to it (the
//! digest beside the version tells the two documents apart).
#![cfg(feature = "redis")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use welcomedly_flags::store::{
    Change, FlagStore, FlagSync, FlagSyncHandle, RedisStore, RedisStoreConfig, SyncConfig,
};
use welcomedly_redis::{Backoff, Link, LinkConfig};
use welcomedly_testkit::RedisCluster;

type Applied = Arc<Mutex<Vec<(u64, serde_json::Value)>>>;

struct Instance {
    store: Arc<RedisStore>,
    sync: FlagSyncHandle,
    applied: Applied,
}

impl Instance {
    fn last(&self) -> (u64, serde_json::Value) {
        self.applied.lock().unwrap().last().cloned().unwrap()
    }
}

async fn instance(cluster: &RedisCluster) -> Instance {
    let mut link = LinkConfig::cluster(cluster.seed_urls());
    link.budget = Duration::from_millis(300);
    link.backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    link.min_outage = Duration::from_millis(20);
    let link = Link::connect(link).await.unwrap();
    let mut config = RedisStoreConfig::default();
    config.budget = Duration::from_millis(300);
    // The version check catches an announcement lost while the subscription moved.
    config.poll_interval = Duration::from_secs(1);
    let store = Arc::new(RedisStore::new(&link, config).await.unwrap());
    let mut sync = SyncConfig::default();
    sync.startup_timeout = Duration::from_secs(5);
    sync.retry_interval = Duration::from_millis(20);
    sync.max_retry_interval = Duration::from_millis(200);
    let applied: Applied = Arc::default();
    let sink = applied.clone();
    let sync = FlagSync::start(
        store.clone(),
        |body: &str, v: u64| serde_json::from_str::<serde_json::Value>(body).map(|d| (v, d)),
        move |(v, doc)| sink.lock().unwrap().push((v, doc)),
        sync,
    )
    .await
    .unwrap();
    Instance {
        store,
        sync,
        applied,
    }
}

fn change(n: u64) -> Change {
    Change::new("tester", format!("change {n}")).with_diff(serde_json::json!({ "n": n }))
}

/// Writes until the store answers (a conflict is an answer): failed attempts, and the answer.
async fn write_retrying(
    store: &RedisStore,
    expected: u64,
    body: &str,
    n: u64,
) -> (usize, Result<u64, welcomedly_flags::store::StoreError>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut failures = 0;
    loop {
        match store.write(expected, body.into(), change(n)).await {
            Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return (failures, other),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lost_in_a_failover_is_not_kept_and_every_instance_converges() {
    let cluster = Arc::new(RedisCluster::start().unwrap());
    let (a, b) = (instance(&cluster).await, instance(&cluster).await);
    let keys = a.store.keys().clone();
    let slot = RedisCluster::slot_of(keys.version.as_bytes());
    let master = cluster.master_for_slot(slot).unwrap();
    let replica = cluster.replicas_of(master).unwrap()[0];

    assert_eq!(
        a.store
            .write(0, r#"{"a":1}"#.into(), change(1))
            .await
            .unwrap(),
        1
    );
    for i in [&a, &b] {
        assert!(i.sync.wait_for_version(1, Duration::from_secs(5)).await);
    }
    // Version 1 reached the replica.
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster
        .command_on(replica, &["INFO", "replication"])
        .unwrap()
        .contains("master_link_status:down")
        || !cluster
            .command_on(replica, &["KEYS", &keys.version])
            .unwrap()
            .contains(&keys.version)
    {
        assert!(
            Instant::now() < deadline,
            "version 1 never reached the replica"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Version 2, acknowledged by the master, applied by both instances, never replicated.
    cluster.pause(replica).unwrap();
    cluster
        .command_on(master, &["CLIENT", "KILL", "TYPE", "replica"])
        .unwrap();
    assert_eq!(
        a.store
            .write(1, r#"{"lost":true}"#.into(), change(2))
            .await
            .unwrap(),
        2
    );
    for i in [&a, &b] {
        assert!(i.sync.wait_for_version(2, Duration::from_secs(5)).await);
        assert_eq!(i.last(), (2, serde_json::json!({ "lost": true })));
    }

    let fault = Instant::now();
    cluster.kill(master).unwrap();
    cluster.resume(replica).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.master_for_slot(slot).ok() != Some(replica) {
        assert!(Instant::now() < deadline, "the replica was never promoted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = fault.elapsed();

    // B, which saw version 2, writes expecting it: the promoted replica never had it.
    let (failed, answer) = write_retrying(&b.store, 2, r#"{"b":1}"#, 3).await;
    let err = answer.expect_err("a write expecting the lost version was accepted");
    assert!(err.is_conflict(), "{err}");
    // Written again from what the store holds: version 2 again, other content.
    let (_, answer) = write_retrying(&b.store, 1, r#"{"a":2}"#, 4).await;
    assert_eq!(answer.unwrap(), 2);
    let deadline = Instant::now() + Duration::from_secs(15);
    for i in [&a, &b] {
        while i.last() != (2, serde_json::json!({ "a": 2 })) {
            assert!(
                Instant::now() < deadline,
                "an instance kept the lost content of version 2: {:?}",
                i.last()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let converged = fault.elapsed();
    println!(
        "cluster, flag key's master SIGKILLed with an acknowledged write unreplicated: promoted after {promoted:?}, \
         {failed} write attempts failed before the store answered (a conflict), both instances on the new version 2 \
         after {converged:?}"
    );
}
