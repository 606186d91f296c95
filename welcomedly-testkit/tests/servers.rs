//! The support crate against real servers: `cargo test -p welcomedly-testkit`.
//!
//! Needs `redis-server` and PostgreSQL installed (see the crate docs).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use welcomedly_testkit::{Node, PgCluster, RedisServer, Reply, parse_lsn};

/// Handles can be shared with the code under test, across threads and tasks.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<RedisServer>();
    shareable::<PgCluster>();
    shareable::<welcomedly_testkit::Error>();
};

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn refuses_connections(port: u16) -> bool {
    matches!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
        Err(error) if error.kind() == ErrorKind::ConnectionRefused
    )
}

#[test]
fn redis_starts_answers_and_reports_its_timing() {
    let started = Instant::now();
    let redis = RedisServer::start().unwrap();
    eprintln!("starting one redis-server took {:?}", started.elapsed());

    assert!(redis.is_running());
    assert_ne!(redis.port(), 6379);
    assert!((20_000..32_000).contains(&redis.port()));
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/", redis.port()));
    assert_eq!(redis.command(&["PING"]).unwrap(), "PONG");
    assert_eq!(
        redis.query(&["INCRBY", "n", "5"]).unwrap(),
        Reply::Integer(5)
    );
    let error = redis.command(&["NOSUCHCOMMAND"]).unwrap_err();
    assert!(error.is_redis_reply(), "{error}");
}

#[test]
fn two_redis_servers_are_independent() {
    let a = RedisServer::start().unwrap();
    let b = RedisServer::start().unwrap();
    assert_ne!(a.port(), b.port());

    assert_eq!(a.command(&["SET", "key", "on-a"]).unwrap(), "OK");
    assert_eq!(
        a.query(&["GET", "key"]).unwrap(),
        Reply::Bulk("on-a".into())
    );
    assert_eq!(b.query(&["GET", "key"]).unwrap(), Reply::Nil);
}

#[test]
fn redis_kill_then_restart_on_the_same_port() {
    let redis = RedisServer::start().unwrap();
    let port = redis.port();
    redis.command(&["SET", "key", "value"]).unwrap();
    // A client connection open across the kill sees it drop, as an app's pool would.
    let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();

    redis.kill().unwrap();
    assert!(!redis.is_running());
    assert!(refuses_connections(port));
    assert!(redis.command(&["PING"]).unwrap_err().is_io());
    drop(client);

    redis.restart().unwrap();
    assert!(redis.is_running());
    assert_eq!(redis.port(), port);
    assert_eq!(redis.command(&["PING"]).unwrap(), "PONG");
    // No persistence: the restarted server is empty.
    assert_eq!(redis.query(&["GET", "key"]).unwrap(), Reply::Nil);

    redis.stop().unwrap();
    assert!(!redis.is_running());
    assert!(refuses_connections(port));
    redis.restart().unwrap();
    assert_eq!(redis.command(&["PING"]).unwrap(), "PONG");
}

#[test]
fn redis_is_gone_after_drop() {
    let redis = RedisServer::start().unwrap();
    let port = redis.port();
    let dir = redis.log_path().parent().unwrap().to_path_buf();
    assert!(dir.exists());
    drop(redis);
    assert!(refuses_connections(port));
    assert!(!dir.exists());
}

#[test]
fn a_row_written_on_the_primary_reaches_every_replica() {
    let started = Instant::now();
    let pg = PgCluster::start(2).unwrap();
    eprintln!(
        "starting a PostgreSQL primary + 2 replicas took {:?}",
        started.elapsed()
    );

    assert_eq!(pg.replica_count(), 2);
    let ports = [
        pg.primary_port(),
        pg.replica_port(0).unwrap(),
        pg.replica_port(1).unwrap(),
    ];
    assert!(ports.iter().all(|port| *port != 5432));
    assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
    assert_eq!(
        pg.replica_url(1).unwrap(),
        format!("postgres://postgres@127.0.0.1:{}/postgres", ports[2])
    );
    assert!(pg.replica_url(2).unwrap_err().is_no_such_replica());

    assert_eq!(
        pg.psql(Node::Primary, "SELECT pg_is_in_recovery()")
            .unwrap(),
        "f"
    );
    for index in 0..2 {
        let replica = Node::Replica(index);
        assert_eq!(pg.psql(replica, "SELECT pg_is_in_recovery()").unwrap(), "t");
        // Replicas are read-only.
        let error = pg.psql(replica, "CREATE TABLE nope (id int)").unwrap_err();
        assert!(error.to_string().contains("read-only"), "{error}");
    }

    pg.psql(Node::Primary, "CREATE TABLE calls (id int, who text)")
        .unwrap();
    pg.psql(Node::Primary, "INSERT INTO calls VALUES (1, 'ada')")
        .unwrap();
    for index in 0..2 {
        let row = eventually("the row on the replica", Duration::from_secs(10), || {
            pg.psql(Node::Replica(index), "SELECT id, who FROM calls")
                .ok()
                .filter(|row| !row.is_empty())
        });
        assert_eq!(row, "1|ada");
    }
}

#[test]
fn a_killed_replica_is_refused_then_restarts_and_catches_up() {
    let pg = PgCluster::start(1).unwrap();
    let port = pg.replica_port(0).unwrap();
    pg.psql(Node::Primary, "CREATE TABLE t (id int)").unwrap();
    pg.wait_replica_caught_up(0, Duration::from_secs(10))
        .unwrap();

    pg.kill_replica(0).unwrap();
    assert!(!pg.is_running(Node::Replica(0)));
    assert!(refuses_connections(port));
    let error = pg.psql(Node::Replica(0), "SELECT 1").unwrap_err();
    assert!(error.is_command_failed(), "{error}");
    assert!(error.to_string().contains("refused"), "{error}");

    // Written while the replica is down: it must catch up from its slot.
    pg.psql(
        Node::Primary,
        "INSERT INTO t SELECT generate_series(1, 1000)",
    )
    .unwrap();

    pg.restart_replica(0).unwrap();
    assert!(pg.is_running(Node::Replica(0)));
    assert_eq!(pg.replica_port(0).unwrap(), port);
    pg.wait_replica_caught_up(0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        pg.psql(Node::Replica(0), "SELECT count(*) FROM t").unwrap(),
        "1000"
    );

    // A clean stop refuses connections too, and comes back the same way.
    pg.stop_replica(0).unwrap();
    assert!(refuses_connections(port));
    pg.restart_replica(0).unwrap();
    assert_eq!(pg.psql(Node::Replica(0), "SELECT 1").unwrap(), "1");
}

#[test]
fn a_replay_delay_makes_a_replica_lag_and_replay_lsn_advances() {
    let pg = PgCluster::start(1).unwrap();
    pg.psql(Node::Primary, "CREATE TABLE t (id int)").unwrap();
    pg.wait_replica_caught_up(0, Duration::from_secs(10))
        .unwrap();
    let before = parse_lsn(&pg.replay_lsn(0).unwrap()).unwrap();

    pg.set_replay_delay(0, Duration::from_secs(30)).unwrap();
    pg.psql(Node::Primary, "INSERT INTO t VALUES (1)").unwrap();
    assert_eq!(
        pg.psql(Node::Primary, "SELECT count(*) FROM t").unwrap(),
        "1"
    );
    // Give the replica ample time to receive the WAL: it must still hold the commit back.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        pg.psql(Node::Replica(0), "SELECT count(*) FROM t").unwrap(),
        "0"
    );
    let error = pg
        .wait_replica_caught_up(0, Duration::from_millis(200))
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");

    pg.set_replay_delay(0, Duration::ZERO).unwrap();
    let count = eventually(
        "the row after removing the delay",
        Duration::from_secs(10),
        || {
            pg.psql(Node::Replica(0), "SELECT count(*) FROM t")
                .ok()
                .filter(|count| count == "1")
        },
    );
    assert_eq!(count, "1");
    pg.wait_replica_caught_up(0, Duration::from_secs(10))
        .unwrap();
    let after = parse_lsn(&pg.replay_lsn(0).unwrap()).unwrap();
    assert!(
        after > before,
        "replay LSN did not advance: {before:#x} -> {after:#x}"
    );
    assert_eq!(
        parse_lsn(&pg.primary_lsn().unwrap()).map(|primary| primary >= after),
        Some(true)
    );
}

#[test]
fn the_cluster_is_gone_after_drop() {
    let pg = PgCluster::start(1).unwrap();
    let ports = [pg.primary_port(), pg.replica_port(0).unwrap()];
    let dir = pg.dir().to_path_buf();
    drop(pg);
    for port in ports {
        assert!(refuses_connections(port), "port {port} still open");
    }
    assert!(!dir.exists());
}

#[test]
fn a_panicking_test_still_tears_its_servers_down() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = thread::spawn(move || {
        let redis = RedisServer::start().unwrap();
        let pg = PgCluster::start(0).unwrap();
        tx.send((redis.port(), pg.primary_port())).unwrap();
        panic!("the test failed");
    })
    .join();
    assert!(outcome.is_err());
    let (redis_port, pg_port) = rx.recv().unwrap();
    assert!(refuses_connections(redis_port));
    assert!(refuses_connections(pg_port));
}
