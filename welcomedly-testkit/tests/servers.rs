//! The support crate against real servers: `cargo test -p welcomedly-testkit`.
//!
//! Needs `redis-server` and PostgreSQL installed (see the crate docs).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use welcomedly_testkit::{Nginx, NginxConfig, Node, PgCluster, RedisServer, Reply, parse_lsn};

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

/// Whether a read on `stream` times out (nothing arrives) within `within`.
fn read_times_out(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0_u8; 1];
    matches!(
        stream.read(&mut byte),
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
    )
}

#[test]
fn a_paused_redis_accepts_but_answers_only_after_resume() {
    let redis = RedisServer::start().unwrap();
    let port = redis.port();
    assert!(!redis.is_paused());

    redis.pause().unwrap();
    assert!(redis.is_paused());
    assert!(redis.is_running());
    let error = redis
        .query_within(&["PING"], Duration::from_millis(300))
        .unwrap_err();
    assert!(error.is_io(), "{error}");
    // The kernel still accepts the connection and takes the request: it waits, unanswered.
    let mut client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    client.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    assert!(read_times_out(&mut client, Duration::from_millis(300)));

    redis.resume().unwrap();
    assert!(!redis.is_paused());
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(&mut client).read_line(&mut line).unwrap();
    assert_eq!(line, "+PONG\r\n");
    assert_eq!(redis.command(&["PING"]).unwrap(), "PONG");

    // A paused server still stops at once (it is resumed first), and cannot be paused when down.
    redis.pause().unwrap();
    let started = Instant::now();
    redis.stop().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(refuses_connections(port));
    assert!(redis.pause().unwrap_err().is_not_running());
    redis.restart().unwrap();
    redis.pause().unwrap();
    redis.kill().unwrap();
    assert!(!redis.is_paused());
    redis.restart().unwrap();
    redis.pause().unwrap();
    // ... and dropping a paused server leaves nothing behind.
    drop(redis);
    assert!(refuses_connections(port));
}

/// PostgreSQL's `SSLRequest`: the server answers a single byte (`N`: no TLS here) at once.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

#[test]
fn a_paused_replica_hangs_then_resumes_and_catches_up() {
    let pg = PgCluster::start(1).unwrap();
    let port = pg.replica_port(0).unwrap();
    pg.psql(Node::Primary, "CREATE TABLE t (id int)").unwrap();
    pg.wait_replica_caught_up(0, Duration::from_secs(10))
        .unwrap();

    pg.pause_replica(0).unwrap();
    assert!(pg.is_paused(Node::Replica(0)));
    assert!(!pg.is_paused(Node::Primary));
    assert!(pg.is_running(Node::Replica(0)));
    let mut client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    client.write_all(&SSL_REQUEST).unwrap();
    assert!(read_times_out(&mut client, Duration::from_millis(300)));
    // The primary does not wait for a paused replica.
    pg.psql(Node::Primary, "INSERT INTO t VALUES (1)").unwrap();
    let error = pg
        .wait_replica_caught_up(0, Duration::from_millis(300))
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");

    pg.resume_replica(0).unwrap();
    assert!(!pg.is_paused(Node::Replica(0)));
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = [0_u8; 1];
    client.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"N");
    pg.wait_replica_caught_up(0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        pg.psql(Node::Replica(0), "SELECT count(*) FROM t").unwrap(),
        "1"
    );

    // A paused node is killed at once (it is resumed first) and then cannot be paused.
    pg.pause_replica(0).unwrap();
    let started = Instant::now();
    pg.kill_replica(0).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(refuses_connections(port));
    assert!(pg.pause_replica(0).unwrap_err().is_not_running());
    assert!(pg.pause_replica(5).unwrap_err().is_no_such_replica());
}

#[test]
fn a_promoted_replica_accepts_writes() {
    let pg = PgCluster::start(1).unwrap();
    pg.psql(Node::Primary, "CREATE TABLE t (id int)").unwrap();
    pg.psql(Node::Primary, "INSERT INTO t VALUES (1)").unwrap();
    pg.wait_replica_caught_up(0, Duration::from_secs(10))
        .unwrap();
    let error = pg
        .psql(Node::Replica(0), "INSERT INTO t VALUES (2)")
        .unwrap_err();
    assert!(error.to_string().contains("read-only"), "{error}");

    // A failover: the primary dies, the replica takes over.
    pg.kill(Node::Primary).unwrap();
    pg.promote(0).unwrap();
    assert_eq!(
        pg.psql(Node::Replica(0), "SELECT pg_is_in_recovery()")
            .unwrap(),
        "f"
    );
    pg.psql(Node::Replica(0), "INSERT INTO t VALUES (2)")
        .unwrap();
    assert_eq!(
        pg.psql(Node::Replica(0), "SELECT count(*) FROM t").unwrap(),
        "2"
    );
    // It is a primary now: promoting it again is refused, and it stays one across a restart.
    let error = pg.promote(0).unwrap_err();
    assert!(error.is_command_failed(), "{error}");
    pg.restart_replica(0).unwrap();
    assert_eq!(
        pg.psql(Node::Replica(0), "SELECT pg_is_in_recovery()")
            .unwrap(),
        "f"
    );
    pg.kill_replica(0).unwrap();
    assert!(pg.promote(0).unwrap_err().is_not_running());
}

/// An upstream that sends the head of an event stream and one event, then holds the response
/// open until told to finish.
fn event_stream_upstream() -> (u16, mpsc::Sender<()>, thread::JoinHandle<()>) {
    let listener = TcpListener::bind((
        Ipv4Addr::LOCALHOST,
        welcomedly_testkit::free_port().unwrap(),
    ))
    .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (finish, finished) = mpsc::channel::<()>();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
            line.clear();
        }
        stream
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                  connection: close\r\n\r\ndata: first\n\n",
            )
            .unwrap();
        let _ = finished.recv_timeout(Duration::from_secs(20));
        let _ = stream.write_all(b"data: last\n\n");
    });
    (port, finish, server)
}

/// Sends a GET through NGINX and returns what arrived within `within`.
fn read_through(nginx: &Nginx, within: Duration) -> String {
    let mut client = TcpStream::connect((Ipv4Addr::LOCALHOST, nginx.port())).unwrap();
    client
        .write_all(b"GET /events HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .unwrap();
    let deadline = Instant::now() + within;
    let mut received = Vec::new();
    let mut chunk = [0_u8; 1024];
    while !String::from_utf8_lossy(&received).contains("data: first") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        client.set_read_timeout(Some(left)).unwrap();
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

#[test]
fn nginx_without_buffering_streams_events_as_they_are_sent() {
    let (port, finish, server) = event_stream_upstream();
    let nginx = Nginx::start(
        &NginxConfig::least_conn(&[port])
            .keepalive(8)
            .forwarded_for()
            .buffering(false),
    )
    .unwrap();
    // The upstream still holds the response open: only an unbuffered proxy shows the event.
    let received = read_through(&nginx, Duration::from_secs(5));
    assert!(received.contains("data: first"), "{received:?}");
    assert!(!received.contains("data: last"), "{received:?}");
    finish.send(()).unwrap();
    server.join().unwrap();

    // Why the setting exists: NGINX's default buffering holds the same event back.
    let (port, finish, server) = event_stream_upstream();
    let buffered = Nginx::start(&NginxConfig::least_conn(&[port]).keepalive(8)).unwrap();
    let received = read_through(&buffered, Duration::from_secs(1));
    assert!(!received.contains("data: first"), "{received:?}");
    finish.send(()).unwrap();
    server.join().unwrap();
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
