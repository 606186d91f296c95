//! `RedisSentinel` against real `redis-server` processes: `cargo test -p welcomedly-testkit --test
//! redis_sentinel`. Start and failover times are printed (`-- --nocapture`), not asserted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Instant;

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

    let back = sentinel.failover().unwrap();
    eprintln!("SENTINEL FAILOVER settled in {:?}", back.took);
    assert_eq!((back.from, back.to), (data[1], primary));
    assert_eq!(role(&sentinel, primary), "master");
    assert_eq!(role(&sentinel, data[1]), "slave");
}
