//! `RedisSentinel` against real `redis-server` processes: `cargo test -p welcomedly-testkit --test
//! redis_sentinel`. Start and failover times are printed (`-- --nocapture`), not asserted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use welcomedly_testkit::{RedisSentinel, RedisSentinelConfig};

/// Handles can be shared with the code under test, across threads and tasks.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<RedisSentinel>();
};

fn role(sentinel: &RedisSentinel, port: u16) -> String {
    let role = sentinel.command_on(port, &["ROLE"]).unwrap();
    role.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn sentinels_promote_the_replica_when_the_primary_is_killed_and_the_old_one_rejoins() {
    let started = Instant::now();
    let sentinel = RedisSentinelConfig::default()
        .master_name("calls")
        .start()
        .unwrap();
    eprintln!(
        "primary + replica + 3 sentinels ready in {:?}",
        started.elapsed()
    );
    assert_eq!(sentinel.master_name(), "calls");
    let addrs = sentinel.sentinel_addrs();
    assert_eq!(addrs.len(), 3);
    for (addr, port) in addrs.iter().zip(sentinel.sentinel_ports()) {
        assert_eq!(*addr, format!("127.0.0.1:{port}"));
        // A sentinel answers for the master name it was given.
        let reported = sentinel
            .command_on(port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "calls"])
            .unwrap();
        assert!(reported.ends_with(&sentinel.primary().unwrap().to_string()));
    }

    let primary = sentinel.primary().unwrap();
    let data = sentinel.data_ports();
    assert_eq!(data[0], primary);
    assert_eq!(
        sentinel.primary_url().unwrap(),
        format!("redis://127.0.0.1:{primary}/")
    );
    assert_eq!(
        sentinel.replica_urls().unwrap(),
        vec![format!("redis://127.0.0.1:{}/", data[1])]
    );
    assert_eq!(role(&sentinel, primary), "master");
    assert_eq!(role(&sentinel, data[1]), "slave");

    sentinel
        .command_on(primary, &["SET", "greeting", "hello"])
        .unwrap();
    assert_eq!(
        sentinel
            .command_on(primary, &["WAIT", "1", "2000"])
            .unwrap(),
        "1"
    );

    let failover = sentinel.kill_primary().unwrap();
    eprintln!("SIGKILL of the primary -> promoted in {:?}", failover.took);
    assert_eq!(failover.from, primary);
    assert_eq!(failover.to, data[1]);
    assert_eq!(sentinel.primary().unwrap(), data[1]);
    assert_eq!(role(&sentinel, data[1]), "master");
    assert_eq!(
        sentinel.command_on(data[1], &["GET", "greeting"]).unwrap(),
        "hello"
    );
    assert!(sentinel.replica_urls().unwrap().is_empty());

    let restarted = Instant::now();
    sentinel.restart_old_primary().unwrap();
    eprintln!("old primary made a replica in {:?}", restarted.elapsed());
    assert_eq!(role(&sentinel, primary), "slave");
    // It synced from the new primary: the data is back on it.
    assert_eq!(
        sentinel.command_on(primary, &["GET", "greeting"]).unwrap(),
        "hello"
    );

    // Roles are settled: a failover promotes the old primary again.
    let back = sentinel
        .failover()
        .unwrap_or_else(|error| panic!("{error}\n{}", logs(&sentinel)));
    eprintln!(
        "SENTINEL FAILOVER after a rejoin settled in {:?}",
        back.took
    );
    assert_eq!((back.from, back.to), (data[1], primary));
    assert_eq!(role(&sentinel, primary), "master");
    assert_eq!(
        sentinel.command_on(primary, &["GET", "greeting"]).unwrap(),
        "hello"
    );
}

/// Every sentinel's log, for a failure message.
fn logs(sentinel: &RedisSentinel) -> String {
    sentinel
        .sentinel_ports()
        .into_iter()
        .map(|port| {
            let log = std::fs::read_to_string(sentinel.log_path(port).unwrap()).unwrap();
            format!("--- sentinel {port}\n{log}")
        })
        .collect()
}

#[test]
fn a_manual_failover_swaps_roles_and_a_restarted_node_replicates_the_primary() {
    let sentinel = RedisSentinel::start().unwrap();
    let data = sentinel.data_ports();
    let (old, new) = (data[0], data[1]);
    sentinel.command_on(old, &["SET", "k", "v"]).unwrap();
    sentinel.command_on(old, &["WAIT", "1", "2000"]).unwrap();

    let failover = sentinel
        .failover()
        .unwrap_or_else(|error| panic!("{error}\n{}", logs(&sentinel)));
    eprintln!("SENTINEL FAILOVER settled in {:?}", failover.took);
    assert_eq!((failover.from, failover.to), (old, new));
    assert_eq!(sentinel.primary().unwrap(), new);
    assert_eq!(role(&sentinel, new), "master");
    assert_eq!(sentinel.command_on(new, &["GET", "k"]).unwrap(), "v");
    // The sentinels make the old primary a replica only ≈ 10 s later (`wait_replica`); a
    // restart below does it at once. Until then it cannot be promoted without losing writes.
    let refused = sentinel.kill_primary().unwrap_err();
    assert!(refused.is_invalid_request(), "{refused}");
    assert_eq!(sentinel.command_on(new, &["PING"]).unwrap(), "PONG");

    // A frozen node accepts connections and answers nothing, until resumed.
    sentinel.pause(old).unwrap();
    let error = sentinel
        .query_on_within(old, &["PING"], Duration::from_millis(200))
        .unwrap_err();
    assert!(error.is_io(), "{error}");
    sentinel.resume(old).unwrap();
    assert_eq!(sentinel.command_on(old, &["PING"]).unwrap(), "PONG");

    // Killed and restarted: a replica of the primary, with the data.
    sentinel.command_on(new, &["SET", "k", "again"]).unwrap();
    sentinel.kill(old).unwrap();
    let restarted = Instant::now();
    sentinel.restart(old).unwrap();
    eprintln!(
        "old primary restarted as a replica in {:?}",
        restarted.elapsed()
    );
    assert_eq!(role(&sentinel, old), "slave");
    assert_eq!(sentinel.command_on(old, &["GET", "k"]).unwrap(), "again");
    assert_eq!(
        sentinel.replica_urls().unwrap(),
        vec![format!("redis://127.0.0.1:{old}/")]
    );

    // Not a node of the deployment; nothing to restart as "old primary" (none was killed).
    assert!(
        sentinel
            .command_on(1, &["PING"])
            .unwrap_err()
            .is_invalid_request()
    );
    assert!(sentinel.wait_replica(new).unwrap_err().is_invalid_request());
}

#[test]
fn restarting_the_old_primary_before_killing_one_is_refused_and_drop_cleans_up() {
    let sentinel = RedisSentinel::start().unwrap();
    assert_eq!(sentinel.master_name(), "mymaster");
    let error = sentinel.restart_old_primary().unwrap_err();
    assert!(error.is_invalid_request(), "{error}");
    // Every sentinel answers with the primary it was started with.
    let primary = sentinel.data_ports()[0];
    for port in sentinel.sentinel_ports() {
        let reply = sentinel
            .command_on(port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"])
            .unwrap();
        assert_eq!(reply, format!("127.0.0.1\n{primary}"));
    }

    // Dropped: every process is killed and the temp dir removed.
    let ports: Vec<u16> = sentinel
        .data_ports()
        .into_iter()
        .chain(sentinel.sentinel_ports())
        .collect();
    let dir = sentinel.log_path(primary).unwrap();
    let dir = dir.parent().unwrap().parent().unwrap().to_path_buf();
    assert!(dir.exists());
    drop(sentinel);
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
