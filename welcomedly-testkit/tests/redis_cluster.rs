//! `RedisCluster` against real `redis-server` processes: `cargo test -p welcomedly-testkit --test
//! redis_cluster`. Start times and failover times are printed (`-- --nocapture`), not asserted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

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
    let owner_node = node(&cluster, owner);
    assert!(error.reply().unwrap().ends_with(&owner_node.addr()));
    assert_eq!(owner_node.url(), format!("redis://127.0.0.1:{owner}/"));

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

    // The killed master comes back as a replica of its successor and syncs the data.
    let restarted = Instant::now();
    cluster.restart(killed.from).unwrap();
    eprintln!(
        "killed master rejoined as a replica in {:?}",
        restarted.elapsed()
    );
    let back = node(&cluster, killed.from);
    assert!(back.running);
    assert_eq!(back.role, Role::Replica);
    assert_eq!(back.master, Some(owner));
    assert_eq!(
        cluster
            .command_on(killed.from, &["GET", key])
            .unwrap_err()
            .reply(),
        Some(format!("MOVED {slot} 127.0.0.1:{owner}").as_str())
    );
    cluster.command_on(killed.from, &["READONLY"]).unwrap();
    assert_eq!(cluster.replicas_of(owner).unwrap(), vec![killed.from]);
}

fn node(cluster: &RedisCluster, port: u16) -> welcomedly_testkit::ClusterNode {
    cluster
        .nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.port == port)
        .unwrap()
}

/// A key of the given slot range, found by trying names.
fn key_in(slots: std::ops::RangeInclusive<u16>, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|key| slots.contains(&RedisCluster::slot_of(key.as_bytes())))
        .unwrap()
}

#[test]
fn slots_migrate_key_by_key_with_ask_and_tryagain_then_move_to_an_added_master() {
    let cluster = RedisClusterConfig::default()
        .replicas_per_master(0)
        .start()
        .unwrap();
    eprintln!("3 + 0 cluster ready in {:?}", cluster.started_in());

    // Two keys of one slot (one hash tag); the slot half-migrated to another master.
    let (a, b) = ("{moving}a", "{moving}b");
    let slot = RedisCluster::slot_of(a.as_bytes());
    let from = cluster.node_for(a.as_bytes()).unwrap();
    assert_eq!(cluster.urls().len(), 3);
    let to = cluster
        .nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.role == Role::Master && n.port != from)
        .unwrap()
        .port;
    cluster.command_on(from, &["SET", a, "1"]).unwrap();
    cluster.command_on(from, &["SET", b, "2"]).unwrap();

    let migration = cluster.begin_migration(slot, to).unwrap();
    assert_eq!(
        (migration.slot(), migration.from(), migration.to()),
        (slot, from, to)
    );
    assert_eq!(cluster.migrate_keys(&migration, &[a]).unwrap(), 1);
    // The moved key: ASK to the target; the other: still here; both at once: TRYAGAIN.
    let ask = cluster.command_on(from, &["GET", a]).unwrap_err();
    assert_eq!(
        ask.reply(),
        Some(format!("ASK {slot} 127.0.0.1:{to}").as_str())
    );
    assert_eq!(cluster.command_on(from, &["GET", b]).unwrap(), "2");
    let tryagain = cluster.command_on(from, &["MGET", a, b]).unwrap_err();
    assert!(
        tryagain.reply().unwrap().starts_with("TRYAGAIN"),
        "{tryagain}"
    );
    // The slot still belongs to the source: the target redirects a client that did not ASK.
    let moved = cluster.command_on(to, &["GET", a]).unwrap_err();
    assert_eq!(
        moved.reply(),
        Some(format!("MOVED {slot} 127.0.0.1:{from}").as_str())
    );
    assert_eq!(cluster.master_for_slot(slot).unwrap(), from);
    let wrong = cluster
        .migrate_keys(&migration, &["elsewhere"])
        .unwrap_err();
    assert!(wrong.is_invalid_request(), "{wrong}");

    cluster.finish_migration(migration).unwrap();
    assert_eq!(cluster.node_for(b.as_bytes()).unwrap(), to);
    assert_eq!(cluster.command_on(to, &["MGET", a, b]).unwrap(), "1\n2");
    let moved = cluster.command_on(from, &["GET", b]).unwrap_err();
    assert_eq!(
        moved.reply(),
        Some(format!("MOVED {slot} 127.0.0.1:{to}").as_str())
    );
    for other in cluster.ports() {
        let owner = cluster
            .command_on(other, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()])
            .unwrap();
        assert_eq!(owner, if other == to { "2" } else { "0" });
    }

    // A whole slot in one call, keys and all, back where it was.
    cluster.migrate_slot(slot, from).unwrap();
    assert_eq!(cluster.node_for(a.as_bytes()).unwrap(), from);
    assert_eq!(cluster.command_on(from, &["MGET", a, b]).unwrap(), "1\n2");

    // A fourth master joins empty; slots 0..=99 move to it with their keys.
    let key = key_in(0..=99, "low");
    let old_owner = cluster.node_for(key.as_bytes()).unwrap();
    cluster.command_on(old_owner, &["SET", &key, "v"]).unwrap();
    let added = Instant::now();
    let new = cluster.add_master().unwrap();
    eprintln!("a 4th master joined in {:?}", added.elapsed());
    let fresh = node(&cluster, new);
    assert_eq!(fresh.role, Role::Master);
    assert!(fresh.slots.is_empty());
    assert_eq!(cluster.urls().len(), 3, "an empty master serves nothing");
    let moving = Instant::now();
    cluster.move_slots(0..=99, new).unwrap();
    eprintln!("100 slots moved in {:?}", moving.elapsed());
    assert_eq!(node(&cluster, new).slots, vec![0..=99]);
    for slot in [0, 50, 99] {
        assert_eq!(cluster.master_for_slot(slot).unwrap(), new);
    }
    assert_eq!(cluster.master_for_slot(100).unwrap(), old_owner);
    assert_eq!(cluster.command_on(new, &["GET", &key]).unwrap(), "v");
    assert_eq!(cluster.urls().len(), 4);
    assert_eq!(cluster.urls()[0], format!("redis://127.0.0.1:{new}/"));
}

#[test]
fn without_replicas_or_full_coverage_a_dead_master_fails_only_its_own_slots_and_restarts_with_them()
{
    let cluster = RedisClusterConfig::default()
        .replicas_per_master(0)
        .require_full_coverage(false)
        .start()
        .unwrap();
    let any = cluster.ports()[0];
    let setting = cluster
        .command_on(any, &["CONFIG", "GET", "cluster-require-full-coverage"])
        .unwrap();
    assert_eq!(setting, "cluster-require-full-coverage\nno");

    let dead = cluster.master_for_slot(0).unwrap();
    let alive = cluster.master_for_slot(16383).unwrap();

    // No replica to promote: refused, and nothing is killed.
    let error = cluster.kill_master(0).unwrap_err();
    assert!(error.is_invalid_request(), "{error}");
    assert_eq!(cluster.command_on(dead, &["PING"]).unwrap(), "PONG");
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
    let key = key_in(16000..=16383, "high");
    cluster
        .command_on(alive, &["SET", &key, "still here"])
        .unwrap();

    // Frozen: accepts, answers nothing.
    cluster.pause(dead).unwrap();
    let error = cluster
        .query_on_within(dead, &["PING"], Duration::from_millis(200))
        .unwrap_err();
    assert!(error.is_io(), "{error}");
    assert!(node(&cluster, dead).paused);
    cluster.resume(dead).unwrap();
    assert_eq!(cluster.command_on(dead, &["PING"]).unwrap(), "PONG");

    cluster.kill(dead).unwrap();
    // Once the others flag it failed, the rest of the slots are still served.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = cluster.command_on(alive, &["CLUSTER", "NODES"]).unwrap();
        let flagged = view.lines().any(|line| {
            line.contains(&format!(":{dead}@")) && line.contains("fail") && !line.contains("fail?")
        });
        if flagged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{dead} never flagged failed:\n{view}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        cluster.command_on(alive, &["GET", &key]).unwrap(),
        "still here"
    );

    // Back with its slots (no replica took them), empty.
    cluster.restart(dead).unwrap();
    assert_eq!(cluster.master_for_slot(0).unwrap(), dead);
    assert_eq!(node(&cluster, dead).role, Role::Master);
    assert_eq!(cluster.command_on(dead, &["DBSIZE"]).unwrap(), "0");

    // Dropped while a test panics: every node is killed and the temp dir removed.
    let ports = cluster.ports();
    let dir = cluster.log_path(dead).unwrap();
    let dir = dir.parent().unwrap().parent().unwrap().to_path_buf();
    assert!(dir.exists());
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _cluster = cluster;
        panic!("a failing test");
    }));
    assert!(panicked.is_err());
    for port in ports {
        let refused = TcpStream::connect((Ipv4Addr::LOCALHOST, port));
        assert_eq!(
            refused.unwrap_err().kind(),
            ErrorKind::ConnectionRefused,
            "{port}"
        );
    }
    assert!(!dir.exists(), "{}", dir.display());
}
