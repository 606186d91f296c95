//! The link's subscriber and dedicated connections against a real `redis-server`
//! (welcomedly-testkit): one connection for many subscriptions, ordering, a killed pub/sub
//! connection, a crashed and restarted Redis, a frozen Redis, a slow reader, unsubscribing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use welcomedly_redis::redis;
use welcomedly_redis::{Delivery, Link, LinkConfig, Retry, Subscription};
use welcomedly_testkit::RedisServer;

async fn link(redis: &RedisServer) -> Link {
    Link::connect(LinkConfig::new(redis.url())).await.unwrap()
}

/// The next delivery, within 10 s (a bound for a hung test, not a speed check).
async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing delivered on {} within 10 s", sub.channel()))
        .expect("the link is alive")
}

async fn subscribed(sub: &mut Subscription) -> Option<Duration> {
    match next(sub).await {
        Delivery::Subscribed { outage } => outage,
        other => panic!("expected Subscribed on {}, got {other:?}", sub.channel()),
    }
}

async fn message(sub: &mut Subscription) -> String {
    match next(sub).await {
        Delivery::Message(m) => String::from_utf8(m.to_vec()).unwrap(),
        other => panic!("expected a message on {}, got {other:?}", sub.channel()),
    }
}

async fn publish(link: &Link, channel: &str, payload: &str) -> i64 {
    link.query(
        redis::cmd("PUBLISH").arg(channel).arg(payload),
        Retry::Never,
    )
    .await
    .unwrap()
}

/// Pub/sub clients as Redis lists them.
fn pubsub_clients(redis: &RedisServer) -> usize {
    redis
        .command(&["CLIENT", "LIST", "TYPE", "pubsub"])
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

fn numsub(redis: &RedisServer, channel: &str) -> String {
    let text = redis.command(&["PUBSUB", "NUMSUB", channel]).unwrap();
    text.lines().nth(1).unwrap_or_default().trim().to_owned()
}

/// Polls `cond` every 10 ms for up to 10 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 10 s: {what}");
}

/// `SUBSCRIBE` calls Redis has counted since it started (`INFO commandstats`).
fn subscribe_calls(redis: &RedisServer) -> u64 {
    let info = redis.command(&["INFO", "commandstats"]).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_subscribe:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscriptions_share_one_connection_and_messages_arrive_in_order() {
    let redis = RedisServer::start().unwrap();
    let link = link(&redis).await;
    let clone = link.clone();
    let mut subs = Vec::new();
    for i in 0..5 {
        // Two subscriptions per channel, from two clones of the link.
        subs.push(link.subscriber().subscribe(format!("ch{i}"), 256));
        subs.push(clone.subscriber().subscribe(format!("ch{i}"), 256));
    }
    for sub in &mut subs {
        assert_eq!(subscribed(sub).await, None);
    }
    assert_eq!(pubsub_clients(&redis), 1);
    assert_eq!(numsub(&redis, "ch3"), "1", "one SUBSCRIBE per channel");
    for n in 0..100 {
        // Each channel reached one connection.
        assert_eq!(publish(&link, "ch0", &n.to_string()).await, 1);
    }
    publish(&link, "ch4", "other").await;
    for sub in subs.iter_mut().take(2) {
        for n in 0..100 {
            assert_eq!(message(sub).await, n.to_string());
        }
    }
    for sub in subs.iter_mut().skip(8) {
        assert_eq!(message(sub).await, "other");
    }
    // A new subscription to a channel already subscribed is told at once.
    let mut late = link.subscriber().subscribe("ch1", 4);
    assert_eq!(subscribed(&mut late).await, None);
    assert_eq!(link.subscriber().stats().connections, 1);
    assert_eq!(pubsub_clients(&redis), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pubsub_connection_is_noticed_and_every_channel_resubscribed() {
    let redis = RedisServer::start().unwrap();
    let link = link(&redis).await;
    let mut a = link.subscriber().subscribe("a", 16);
    let mut b = link.subscriber().subscribe("b", 16);
    assert_eq!(subscribed(&mut a).await, None);
    assert_eq!(subscribed(&mut b).await, None);
    let calls_before = subscribe_calls(&redis);

    redis
        .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .unwrap();
    // Noticed without anything published: the subscriptions are told.
    assert!(subscribed(&mut a).await.is_some());
    assert!(subscribed(&mut b).await.is_some());
    // Both channels in one SUBSCRIBE.
    assert_eq!(subscribe_calls(&redis), calls_before + 1);
    assert_eq!(link.subscriber().stats().resubscribes, 1);
    assert_eq!(publish(&link, "a", "after").await, 1);
    assert_eq!(message(&mut a).await, "after");
    assert_eq!(pubsub_clients(&redis), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_and_restart_every_channel_is_subscribed_again_in_one_round_trip() {
    let redis = RedisServer::start().unwrap();
    let link = link(&redis).await;
    let mut subs: Vec<_> = (0..3)
        .map(|i| link.subscriber().subscribe(format!("c{i}"), 16))
        .collect();
    for sub in &mut subs {
        assert_eq!(subscribed(sub).await, None);
    }
    redis.kill().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!link.subscriber().is_connected());
    redis.restart().unwrap();
    for sub in &mut subs {
        let outage = subscribed(sub).await.expect("an outage after a restart");
        assert!(outage >= Duration::from_millis(250), "{outage:?}");
    }
    // A fresh server counts every SUBSCRIBE it served: one for the three channels.
    assert_eq!(subscribe_calls(&redis), 1);
    assert_eq!(publish(&link, "c2", "back").await, 1);
    assert_eq!(message(&mut subs[2]).await, "back");
    assert_eq!(pubsub_clients(&redis), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_is_noticed_by_pings_and_resubscribed_after() {
    let redis = RedisServer::start().unwrap();
    let link = link(&redis).await;
    let mut sub = link.subscriber().subscribe("frozen", 16);
    assert_eq!(subscribed(&mut sub).await, None);
    redis.pause().unwrap();
    // Pings (1 s apart) go unanswered: after the threshold (3) the connection is dropped.
    eventually("the subscriber notices the frozen Redis", || {
        !link.subscriber().is_connected()
    })
    .await;
    redis.resume().unwrap();
    assert!(subscribed(&mut sub).await.is_some());
    assert_eq!(publish(&link, "frozen", "thawed").await, 1);
    assert_eq!(message(&mut sub).await, "thawed");
    // The frozen connection is gone, its replacement is the only one.
    eventually("one pub/sub connection", || pubsub_clients(&redis) == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_lagged_and_then_new_messages() {
    let redis = RedisServer::start().unwrap();
    let link = link(&redis).await;
    let mut slow = link.subscriber().subscribe("busy", 4);
    let mut fast = link.subscriber().subscribe("busy", 64);
    assert_eq!(subscribed(&mut slow).await, None);
    assert_eq!(subscribed(&mut fast).await, None);
    for n in 0..10 {
        publish(&link, "busy", &n.to_string()).await;
    }
    // The fast reader has everything, so the slow one has been offered everything.
    for n in 0..10 {
        assert_eq!(message(&mut fast).await, n.to_string());
    }
    for n in 0..4 {
        assert_eq!(message(&mut slow).await, n.to_string());
    }
    assert_eq!(next(&mut slow).await, Delivery::Lagged(6));
    assert_eq!(link.subscriber().stats().lagged, 6);
    publish(&link, "busy", "fresh").await;
    assert_eq!(message(&mut slow).await, "fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_subscription_unsubscribes() {
    let redis = RedisServer::start().unwrap();
    let link = link(&redis).await;
    let mut one = link.subscriber().subscribe("gone", 4);
    let mut two = link.subscriber().subscribe("gone", 4);
    let mut other = link.subscriber().subscribe("stays", 4);
    assert_eq!(subscribed(&mut one).await, None);
    assert_eq!(subscribed(&mut two).await, None);
    assert_eq!(subscribed(&mut other).await, None);
    assert_eq!(numsub(&redis, "gone"), "1");
    drop(one);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        numsub(&redis, "gone"),
        "1",
        "another subscription still wants it"
    );
    assert_eq!(publish(&link, "gone", "still").await, 1);
    assert_eq!(message(&mut two).await, "still");
    drop(two);
    eventually("UNSUBSCRIBE of the channel nobody wants", || {
        numsub(&redis, "gone") == "0"
    })
    .await;
    assert_eq!(numsub(&redis, "stays"), "1");
    // Wanted again: subscribed again, told again.
    let mut again = link.subscriber().subscribe("gone", 4);
    assert_eq!(subscribed(&mut again).await, None);
    assert_eq!(publish(&link, "gone", "back").await, 1);
    assert_eq!(message(&mut again).await, "back");
    assert_eq!(link.subscriber().stats().connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_while_redis_is_down_is_subscribed_once_it_is_up() {
    let redis = RedisServer::start().unwrap();
    redis.kill().unwrap();
    let link = link(&redis).await;
    let started = std::time::Instant::now();
    let mut sub = link.subscriber().subscribe("later", 4);
    // Registering never waits for Redis.
    assert!(started.elapsed() < Duration::from_millis(50));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.recv())
            .await
            .is_err(),
        "nothing to deliver while Redis is down"
    );
    redis.restart().unwrap();
    // The first subscription of the channel: no outage to report.
    assert_eq!(subscribed(&mut sub).await, None);
    assert_eq!(publish(&link, "later", "up").await, 1);
    assert_eq!(message(&mut sub).await, "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_end_when_the_link_is_gone() {
    let redis = RedisServer::start().unwrap();
    let link = link(&redis).await;
    let mut sub = link.subscriber().subscribe("end", 4);
    assert_eq!(subscribed(&mut sub).await, None);
    drop(link);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .unwrap(),
        None
    );
    eventually("the pub/sub connection closes", || {
        pubsub_clients(&redis) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_connections_block_without_stalling_the_link_and_survive_a_restart() {
    let redis = RedisServer::start().unwrap();
    let link = link(&redis).await;
    let mut conn = link.dedicated().await.unwrap();
    let blocked = tokio::spawn(async move {
        let r: redis::Value = redis::cmd("BLPOP")
            .arg("queue")
            .arg(2)
            .query_async(&mut *conn)
            .await
            .unwrap();
        (r, conn)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The shared connection is not stalled by the blocking read.
    let n: i64 = link
        .query(redis::cmd("RPUSH").arg("queue").arg("job"), Retry::Never)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let (popped, conn) = blocked.await.unwrap();
    assert!(matches!(popped, redis::Value::Array(_)), "{popped:?}");
    drop(conn); // back to the pool

    redis.kill().unwrap();
    redis.restart().unwrap();
    // The pooled connection died with Redis: the recycle check replaces it.
    let mut conn = link.dedicated().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut *conn).await.unwrap();
    assert_eq!(pong, "PONG");

    // Redis down: no connection within the connect timeout, an error rather than a hang.
    redis.kill().unwrap();
    drop(conn);
    let started = std::time::Instant::now();
    let Err(e) = link.dedicated().await else {
        panic!("a dedicated connection while Redis is down");
    };
    assert!(e.is_unavailable(), "{e:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));
}
