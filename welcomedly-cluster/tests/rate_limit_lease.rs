//! Leased local shares against a real `redis-server`: several backends (instances) on one
//! Redis spend slices of one hot key's budget locally. The cluster-wide total stays within the
//! GCRA's allowance and is refused early by at most the documented bound; unspent tokens come
//! back when a lease expires; one-off keys take no lease; the table is bounded; a Redis killed
//! mid-lease leaves the held lease admitting until it is spent, then the failure mode decides.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use welcomedly_cluster::rate_limit::{LEASE_SHARE, RedisBackend, RedisRateLimitConfig};
use welcomedly_core::rate_limit::backend::{DecisionSource, Key};
use welcomedly_core::rate_limit::{Policy, Quota, RateLimitLayer};
use welcomedly_redis::{Link, LinkConfig};
use welcomedly_testkit::RedisServer;

mod rate_limit_support;
use rate_limit_support::{Instance, evalsha_calls, ip};

/// A burst of 6 400 refilling one token per second: a test's own refill is a few tokens, so the
/// counts below are the leases' doing. A lease is 6 400 / 64 = 100 tokens, living 1 s.
const BURST: u32 = 6400;
const LEASE: u64 = BURST as u64 / LEASE_SHARE;

fn config(leased: bool) -> RedisRateLimitConfig {
    let mut c = RedisRateLimitConfig::default();
    c.budget = Duration::from_secs(2);
    // Every rejected request asks Redis again: the test counts what Redis grants.
    c.remembered_rejections = 0;
    if leased {
        c = c.lease("hot");
    }
    c
}

/// An instance of the `hot` policy (3 600 an hour, bursts of `burst`).
async fn start(redis: &RedisServer, config: RedisRateLimitConfig, burst: u32) -> Instance {
    let policy = Policy::new("hot", Quota::per_hour(3600).with_burst(burst));
    Instance::start(redis, config, &[policy], 1).await
}

/// Three instances, four concurrent clients each, hammering one key until each client is
/// refused: the total admitted never exceeds the burst plus what refilled meanwhile, and when
/// the first refusal happens the admitted count is at least the burst minus the early-refusal
/// bound (every instance holding at most one lease of the key, `3 × LEASE` tokens), less the
/// admissions still on their way back to their clients. Most requests never reached Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_never_exceed_the_limit_and_refuse_early_by_at_most_the_bound() {
    let redis = RedisServer::start().unwrap();
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(Arc::new(start(&redis, config(true), BURST).await));
    }
    const CLIENTS: u64 = 4;
    let admitted = Arc::new(AtomicU64::new(0));
    let at_first_refusal = Arc::new(AtomicU64::new(u64::MAX));
    let calls_before = evalsha_calls(&redis);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for instance in &instances {
        for _ in 0..CLIENTS {
            let (instance, admitted, first) =
                (instance.clone(), admitted.clone(), at_first_refusal.clone());
            tasks.push(tokio::spawn(async move {
                let key = ip("198.51.100.1");
                loop {
                    let (ok, source) = instance.request(&key).await;
                    assert_eq!(source, DecisionSource::Store);
                    if !ok {
                        let so_far = admitted.load(Ordering::SeqCst);
                        let _ = first.compare_exchange(
                            u64::MAX,
                            so_far,
                            Ordering::SeqCst,
                            Ordering::SeqCst,
                        );
                        break;
                    }
                    admitted.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    let total = admitted.load(Ordering::SeqCst);
    let first = at_first_refusal.load(Ordering::SeqCst);
    // One token per second refills; the clock's edges may add one.
    let allowance = u64::from(BURST) + elapsed.as_secs() + 2;
    assert!(
        total <= allowance,
        "{total} admitted, allowance {allowance}"
    );
    let bound = 3 * LEASE;
    // Each client may have one admission in flight (decided, not yet counted) at the refusal.
    let in_flight = 3 * CLIENTS;
    assert!(
        first + bound + in_flight >= u64::from(BURST),
        "the first refusal came after {first} admissions: more than the bound ({bound}) refused early"
    );
    let leased: u64 = instances.iter().map(|i| i.backend.leased_requests()).sum();
    let taken: u64 = instances.iter().map(|i| i.backend.leases_taken()).sum();
    let calls = evalsha_calls(&redis) - calls_before;
    assert!(taken >= u64::from(BURST) / LEASE / 2, "{taken} leases");
    assert!(
        leased >= total * 9 / 10,
        "{leased} of {total} admitted from leases"
    );
    assert!(
        calls <= total / 10,
        "{calls} script calls for {total} admissions"
    );
    eprintln!(
        "3 instances: {total} admitted (allowance {allowance}), first refusal after {first}, {taken} leases, {calls} script calls, {elapsed:?}"
    );
}

/// An instance's unspent tokens come back when its lease expires: another instance spends them.
#[tokio::test]
async fn unspent_tokens_are_given_back_and_spent_elsewhere() {
    let redis = RedisServer::start().unwrap();
    // The smallest burst that leases (16 tokens a lease), so that B spends it well within A's
    // lease lifetime (1 s).
    const SMALL: u32 = 1024;
    let lease = u64::from(SMALL) / LEASE_SHARE;
    let a = start(&redis, config(true), SMALL).await;
    // B asks Redis for every request.
    let b = start(&redis, config(false), SMALL).await;
    let key = ip("198.51.100.2");
    // A: the first request goes to Redis, the second makes the key hot and takes a lease (it
    // spends the first token), the third spends a second one locally.
    for _ in 0..3 {
        assert!(a.request(&key).await.0);
    }
    assert_eq!(
        (a.backend.leases_taken(), a.backend.leased_requests()),
        (1, 1)
    );
    let held = lease - 2;
    // B spends everything else: what A holds is not there.
    let started = Instant::now();
    let first = b.drain(&key).await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "B took {:?} to spend the burst: A's lease may have expired meanwhile",
        started.elapsed()
    );
    let before_give_back = u64::from(SMALL) - 3 - held;
    assert!(
        (before_give_back..=before_give_back + 2).contains(&first),
        "B admitted {first}, expected {before_give_back} (+ refill)"
    );
    // A's lease expires (1 s) and the sweep gives its unspent tokens back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.backend.lease_tokens_given_back() < held {
        assert!(Instant::now() < deadline, "no give-back within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.backend.lease_tokens_given_back(), held);
    let second = b.drain(&key).await;
    // Those tokens, and what refilled meanwhile (one a second).
    assert!(
        (held..=held + 8).contains(&second),
        "B admitted {second} after the give-back, expected {held} (+ refill)"
    );
    assert_eq!(a.backend.failures(), 0);
}

/// Keys seen once take no lease and cost one script call each, as without leases; a key's
/// second request within a lease lifetime takes one.
#[tokio::test]
async fn a_one_off_key_takes_no_lease() {
    let redis = RedisServer::start().unwrap();
    let a = start(&redis, config(true), BURST).await;
    let before = evalsha_calls(&redis);
    for i in 0..200u32 {
        let key = Key::Ip(std::net::Ipv4Addr::from(0xC633_6400 + i).into());
        assert_eq!(a.request(&key).await, (true, DecisionSource::Store));
    }
    assert_eq!(evalsha_calls(&redis) - before, 200);
    assert_eq!(a.backend.leases_taken(), 0);
    let hot = ip("203.0.113.9");
    for _ in 0..50 {
        assert!(a.request(&hot).await.0);
    }
    assert_eq!(a.backend.leases_taken(), 1);
    assert_eq!(a.backend.leased_requests(), 48);
    assert_eq!(
        evalsha_calls(&redis) - before,
        202,
        "two calls for 50 requests"
    );
}

/// However many distinct keys come, the table holds at most `max_leases`; a key that finds no
/// room is decided in Redis (admitted as before).
#[tokio::test]
async fn the_lease_table_is_bounded() {
    let redis = RedisServer::start().unwrap();
    let mut c = config(true);
    c.max_leases = 32;
    let a = start(&redis, c, BURST).await;
    for i in 0..1000u32 {
        let key = Key::Ip(std::net::Ipv4Addr::from(0x0A00_0000 + i).into());
        for _ in 0..3 {
            assert!(a.request(&key).await.0);
        }
        assert!(a.backend.lease_table_len() <= 32);
    }
    assert!(a.backend.leases_taken() <= 1000);
    assert!(a.backend.leases_taken() >= 1, "the first keys found room");
}

/// Redis killed while an instance holds a lease: the lease keeps admitting (within its lifetime,
/// without Redis), and once it is spent the policy's failure mode decides (the local fallback by
/// default). Nothing is admitted past the lease's tokens from Redis.
#[tokio::test]
async fn a_held_lease_outlives_redis_until_spent_then_the_failure_mode_decides() {
    let redis = RedisServer::start().unwrap();
    let mut c = config(true);
    c.budget = Duration::from_millis(200);
    // A small burst so the lease is spent quickly: 1 024 / 64 = 16 tokens.
    let a = start(&redis, c, 1024).await;
    let key = ip("198.51.100.3");
    assert!(a.request(&key).await.0);
    assert!(a.request(&key).await.0, "takes the lease");
    assert_eq!(a.backend.leases_taken(), 1);
    redis.kill().unwrap();
    for i in 0..15 {
        assert_eq!(
            a.request(&key).await,
            (true, DecisionSource::Store),
            "token {i} of the lease"
        );
    }
    assert_eq!(a.backend.leased_requests(), 15);
    // Spent: the next lease call fails, the local fallback decides.
    let (_, source) = a.request(&key).await;
    assert_eq!(source, DecisionSource::Fallback);
    assert!(a.backend.failures() >= 1);
}

/// On a Redis Cluster: leases of keys on every master, taken and given back slot by slot (a
/// `CROSSSLOT` would be a failure); afterwards each key's state in Redis holds exactly what the
/// two instances admitted, their unspent tokens back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_on_a_cluster_are_taken_and_given_back_per_slot() {
    use welcomedly_testkit::{RedisCluster, RedisClusterConfig};
    const SMALL: u32 = 1024;
    let lease = u64::from(SMALL) / LEASE_SHARE;
    let cluster = RedisCluster::start_with(
        &RedisClusterConfig::default()
            .masters(3)
            .replicas_per_master(0),
    )
    .unwrap();
    let start = |leased: bool| {
        let urls = cluster.seed_urls();
        async move {
            let link = Link::connect(LinkConfig::cluster(urls)).await.unwrap();
            let backend = RedisBackend::new(&link, config(leased)).await.unwrap();
            let layer = RateLimitLayer::builder()
                .backend(backend.clone())
                .policy(Policy::new("hot", Quota::per_hour(3600).with_burst(SMALL)))
                .build()
                .unwrap();
            Instance { backend, layer }
        }
    };
    let (a, b, plain) = (start(true).await, start(true).await, start(false).await);
    let keys: Vec<Key> = (1..=8).map(|i| ip(&format!("198.51.100.{i}"))).collect();
    let slots: std::collections::BTreeSet<u16> = keys
        .iter()
        .map(|k| {
            welcomedly_redis::key_slot(a.backend.key_name(&a.layer.policies()[0], k).as_bytes())
        })
        .collect();
    assert!(slots.len() > 1);
    // 50 requests per key on each instance: 1 in Redis, then three leases spent whole and a
    // fourth with one token spent, 15 held.
    const PER_KEY: u64 = 50;
    for key in &keys {
        for instance in [&a, &b] {
            for _ in 0..PER_KEY {
                assert_eq!(instance.request(key).await, (true, DecisionSource::Store));
            }
        }
    }
    let held = 8 * (4 * lease - (PER_KEY - 1));
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.backend.lease_tokens_given_back() < held || b.backend.lease_tokens_given_back() < held {
        assert!(Instant::now() < deadline, "no give-back within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.backend.failures() + b.backend.failures(), 0);
    assert_eq!(
        (
            a.backend.lease_tokens_given_back(),
            b.backend.lease_tokens_given_back()
        ),
        (held, held)
    );
    for key in &keys {
        let left = plain.drain(key).await;
        let expected = u64::from(SMALL) - 2 * PER_KEY;
        assert!(
            (expected..=expected + 8).contains(&left),
            "{left} left for {key:?}, expected {expected} (+ refill)"
        );
    }
}
