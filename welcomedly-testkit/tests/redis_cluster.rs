//! `RedisCluster` against real `redis-server` processes: `cargo test -p welcomedly-testkit --test
//! redis_cluster`. Start times and failover times are printed (`-- --nocapture`), not asserted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Instant;

use welcomedly_testkit::{RedisCluster, RedisClusterConfig, Role};

/// Handles can be shared with the code under test, across threads and tasks.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<RedisCluster>();
};

fn moved_to(error: &welcomedly_testkit::Error) -> Option<u16> {
    let reply = error.reply()?;
    let rest = reply.strip_prefix("MOVED ")?;
    rest.rsplit(':').next()?.parse().ok()
}

#[test]
fn a_cluster_serves_keys_on_their_slot_owner_and_survives_failover_and_a_killed_master() {
    let started = Instant::now();
    let cluster = RedisCluster::start().unwrap();
    eprintln!(
        "3 + 3 cluster ready in {:?} ({:?} measured inside)",
        started.elapsed(),
        cluster.started_in()
    );

    let nodes = cluster.nodes().unwrap();
    assert_eq!(nodes.len(), 6);
    let masters: Vec<_> = nodes.iter().filter(|n| n.role == Role::Master).collect();
    assert_eq!(masters.len(), 3);
    let served: usize = masters
        .iter()
        .flat_map(|n| n.slots.iter())
        .map(|range| usize::from(range.end() - range.start()) + 1)
        .sum();
    assert_eq!(served, 16384);
    for replica in nodes.iter().filter(|n| n.role == Role::Replica) {
        let master = replica.master.expect("a replica has a master");
        assert!(masters.iter().any(|m| m.port == master));
    }
    assert_eq!(cluster.urls().len(), 3);
    assert_eq!(cluster.seed_urls().len(), 6);

    // Writes land on the key's master; any other master redirects there.
    let key = "user:42";
    let slot = RedisCluster::slot_of(key.as_bytes());
    let owner = cluster.node_for(key.as_bytes()).unwrap();
    assert!(
        masters
            .iter()
            .any(|m| m.port == owner && m.slots.iter().any(|r| r.contains(&slot)))
    );
    cluster.command_on(owner, &["SET", key, "before"]).unwrap();
    let other = masters.iter().find(|m| m.port != owner).unwrap().port;
    let error = cluster.command_on(other, &["GET", key]).unwrap_err();
    assert_eq!(moved_to(&error), Some(owner), "{error}");

    // Graceful failover: the replica takes the slot with the data, the old master follows it.
    let failover = cluster.failover(slot).unwrap();
    eprintln!("CLUSTER FAILOVER settled in {:?}", failover.took);
    assert_eq!(failover.from, owner);
    assert_eq!(cluster.node_for(key.as_bytes()).unwrap(), failover.to);
    assert_eq!(
        cluster.command_on(failover.to, &["GET", key]).unwrap(),
        "before"
    );
    let old = cluster
        .nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.port == owner)
        .unwrap();
    assert_eq!(old.role, Role::Replica);
    assert_eq!(old.master, Some(failover.to));

    // SIGKILL of the master: its replica (the old master) is promoted, with the data.
    cluster
        .command_on(failover.to, &["SET", key, "after"])
        .unwrap();
    cluster
        .command_on(failover.to, &["WAIT", "1", "2000"])
        .unwrap();
    let killed = cluster.kill_master(slot).unwrap();
    eprintln!(
        "SIGKILL of a master -> promoted and settled in {:?}",
        killed.took
    );
    assert_eq!(killed.from, failover.to);
    assert_eq!(killed.to, owner);
    assert_eq!(cluster.node_for(key.as_bytes()).unwrap(), owner);
    assert_eq!(cluster.command_on(owner, &["GET", key]).unwrap(), "after");
    let dead = cluster
        .nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.port == killed.from)
        .unwrap();
    assert!(!dead.running);
    assert_eq!(cluster.urls().len(), 3);
    assert_eq!(cluster.seed_urls().len(), 5);
}

#[test]
fn a_cluster_without_replicas_refuses_to_kill_a_master_it_cannot_replace() {
    let cluster = RedisClusterConfig::default()
        .replicas_per_master(0)
        .start()
        .unwrap();
    eprintln!("3 + 0 cluster ready in {:?}", cluster.started_in());
    let owner = cluster.master_for_slot(0).unwrap();
    let error = cluster.kill_master(0).unwrap_err();
    assert!(error.is_invalid_request(), "{error}");
    // Nothing was killed.
    assert_eq!(cluster.command_on(owner, &["PING"]).unwrap(), "PONG");
    assert!(
        cluster
            .command_on(1, &["PING"])
            .unwrap_err()
            .is_invalid_request()
    );
    assert!(
        cluster
            .master_for_slot(16384)
            .unwrap_err()
            .is_invalid_request()
    );
}
