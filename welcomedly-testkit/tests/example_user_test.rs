//! A test as a user of the test kit writes it: copy this file into your crate's `tests/`.
//!
//! Run it: `cargo test -p welcomedly-testkit --test example_user_test` (needs `redis-server` and
//! PostgreSQL installed: see the crate docs).
//!
//! It starts a Redis and a PostgreSQL primary with one streaming replica on free loopback ports,
//! hands their URLs to ordinary clients (`redis`, `sqlx`) the way a test hands them to the code
//! under test, writes on the primary, reads the row back on the replica once it has caught up,
//! then kills the replica and shows what the client sees. Everything is torn down when the handles
//! drop, also when an assertion fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use welcomedly_testkit::{Node, PgCluster, RedisServer};

#[tokio::test]
async fn write_on_the_primary_read_on_the_replica_then_lose_it() {
    // The servers start in blocking code: call them before (or outside) the async work, or from
    // `tokio::task::spawn_blocking` when many tests start servers at once.
    let redis = RedisServer::start().unwrap();
    let pg = PgCluster::start(1).unwrap();

    // Redis: any client, given the URL.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SET")
        .arg("greeting")
        .arg("hello")
        .query_async(&mut conn)
        .await
        .unwrap();
    // The kit's own synchronous client sees the same server.
    assert_eq!(redis.command(&["GET", "greeting"]).unwrap(), "hello");

    // PostgreSQL: write on the primary ...
    let mut primary = PgConnection::connect(&pg.primary_url()).await.unwrap();
    sqlx::query("CREATE TABLE calls (id int PRIMARY KEY, agent text NOT NULL)")
        .execute(&mut primary)
        .await
        .unwrap();
    sqlx::query("INSERT INTO calls VALUES (1, 'ada')")
        .execute(&mut primary)
        .await
        .unwrap();

    // ... and read on the replica once it has replayed everything the primary committed.
    pg.wait_replica_caught_up(0, Duration::from_secs(10))
        .unwrap();
    let replica_url = pg.replica_url(0).unwrap();
    let mut replica = PgConnection::connect(&replica_url).await.unwrap();
    let agent: String = sqlx::query_scalar("SELECT agent FROM calls WHERE id = 1")
        .fetch_one(&mut replica)
        .await
        .unwrap();
    assert_eq!(agent, "ada");

    // Faults: kill the replica as a crash would. The open connection breaks, a new one is refused.
    pg.kill_replica(0).unwrap();
    assert!(!pg.is_running(Node::Replica(0)));
    let broken = sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&mut replica)
        .await;
    assert!(broken.is_err(), "the killed replica answered: {broken:?}");
    let refused = PgConnection::connect(&replica_url).await.unwrap_err();
    eprintln!("connecting to the killed replica: {refused}");
    assert!(matches!(refused, sqlx::Error::Io(_)), "{refused:?}");

    // The primary is unaffected; the replica comes back on the same port and catches up.
    sqlx::query("INSERT INTO calls VALUES (2, 'grace')")
        .execute(&mut primary)
        .await
        .unwrap();
    pg.restart_replica(0).unwrap();
    pg.wait_replica_caught_up(0, Duration::from_secs(10))
        .unwrap();
    let mut replica = PgConnection::connect(&replica_url).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM calls")
        .fetch_one(&mut replica)
        .await
        .unwrap();
    assert_eq!(count, 2);

    // A frozen Redis: the client's command times out instead of failing fast.
    redis.pause().unwrap();
    let frozen = tokio::time::timeout(
        Duration::from_millis(300),
        redis::cmd("GET")
            .arg("greeting")
            .query_async::<String>(&mut conn),
    )
    .await;
    assert!(frozen.is_err(), "a paused Redis answered: {frozen:?}");
    redis.resume().unwrap();
}
