//! Local-first shares against a real `redis-server`: several backends (instances) on one Redis
//! split each key's budget into a share per instance, spent without a Redis call, and a pool in
//! Redis. Distinct keys cost Redis nothing; one key hammered through every instance is admitted
//! exactly the limit (never more); a client stuck to one instance is refused early by at most
//! the other instances' shares; refunds go back to the share; the table is bounded without ever
//! handing a spent share out again; a dead Redis leaves the shares admitting.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use welcomedly_cluster::rate_limit::{LEASE_SHARE, RedisRateLimitConfig};
use welcomedly_core::rate_limit::backend::{DecisionSource, RateLimitBackend};
use welcomedly_core::rate_limit::{Policy, Quota};
use welcomedly_testkit::RedisServer;

mod rate_limit_support;
use rate_limit_support::{
    Instance, PER_HOUR, SHARE, evalsha_calls, ip, local_first_config, nth_ip,
};

const INSTANCES: u32 = 3;

/// An instance of the `anon` policy at `quota`, counting three live instances.
async fn start(redis: &RedisServer, config: RedisRateLimitConfig, quota: Quota) -> Instance {
    Instance::start(redis, config, &[Policy::new("anon", quota)], INSTANCES).await
}

/// Three instances of `anon` at 640 an hour.
async fn three(redis: &RedisServer) -> Vec<Arc<Instance>> {
    let mut all = Vec::new();
    for _ in 0..INSTANCES {
        all.push(Arc::new(
            start(redis, local_first_config(), Quota::per_hour(PER_HOUR)).await,
        ));
    }
    all
}

/// What [`PER_HOUR`] refilled over `elapsed` (plus one).
fn refill(elapsed: Duration) -> u64 {
    rate_limit_support::refill(PER_HOUR, elapsed)
}

/// A flood of distinct client addresses through three instances (one request each, the whole
/// stack's benchmark traffic): every request admitted from the instance's share, no Redis call.
#[tokio::test]
async fn distinct_keys_cost_redis_nothing() {
    let redis = RedisServer::start().unwrap();
    let instances = three(&redis).await;
    let before = evalsha_calls(&redis);
    for i in 0..600u32 {
        let instance = &instances[i as usize % instances.len()];
        assert_eq!(
            instance.request(&nth_ip(i)).await,
            (true, DecisionSource::LocalShare),
            "request {i}"
        );
    }
    assert_eq!(evalsha_calls(&redis), before, "no script call");
    let spent: u64 = instances
        .iter()
        .map(|i| i.backend.local_share_requests())
        .sum();
    assert_eq!(spent, 600);
}

/// One key, twelve clients over three instances at once: the total admitted is the burst plus
/// the refill, never more (the pool in Redis is the burst less every instance's share), and the
/// round-robin spread spends every share, so it is not less either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_through_every_instance_is_admitted_exactly_the_limit() {
    let redis = RedisServer::start().unwrap();
    let instances = three(&redis).await;
    let admitted = Arc::new(AtomicU64::new(0));
    let local = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for instance in &instances {
        for _ in 0..4 {
            let (instance, admitted, local) = (instance.clone(), admitted.clone(), local.clone());
            tasks.push(tokio::spawn(async move {
                let key = ip("198.51.100.1");
                let mut refused = 0;
                // Past the burst every request is refused; a few more make sure of it.
                while refused < 20 {
                    match instance.request(&key).await {
                        (true, source) => {
                            admitted.fetch_add(1, Ordering::SeqCst);
                            if source == DecisionSource::LocalShare {
                                local.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        (false, _) => refused += 1,
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    let total = admitted.load(Ordering::SeqCst);
    let limit = u64::from(PER_HOUR);
    assert!(
        total <= limit + refill(elapsed),
        "admitted {total}, more than {limit} + refill over {elapsed:?}"
    );
    assert!(total >= limit, "admitted {total}, fewer than {limit}");
    assert_eq!(local.load(Ordering::SeqCst), u64::from(INSTANCES) * SHARE);
    for i in &instances {
        assert_eq!(i.backend.failures(), 0);
    }
}

/// A client whose requests all reach one instance: refused early by at most the other
/// instances' shares, `(I - 1) × share`, and never admitted more than the limit.
#[tokio::test]
async fn a_client_stuck_to_one_instance_is_refused_early_by_at_most_the_other_shares() {
    let redis = RedisServer::start().unwrap();
    let instances = three(&redis).await;
    let key = ip("198.51.100.2");
    let start = Instant::now();
    let mut admitted = 0u64;
    while instances[0].request(&key).await.0 {
        admitted += 1;
    }
    let limit = u64::from(PER_HOUR);
    let early = u64::from(INSTANCES - 1) * SHARE;
    assert!(
        (limit - early..=limit - early + refill(start.elapsed())).contains(&admitted),
        "admitted {admitted}, expected {} (the limit less the other shares)",
        limit - early
    );
    // The other instances still hold their shares of the key.
    for other in &instances[1..] {
        assert_eq!(
            other.request(&key).await,
            (true, DecisionSource::LocalShare)
        );
    }
}

/// A refund of an admission from a share (a policy charging by response status) goes back to
/// the share: the next request is admitted from it again, without Redis.
#[tokio::test]
async fn a_refund_goes_back_to_the_share() {
    let redis = RedisServer::start().unwrap();
    let a = start(&redis, local_first_config(), Quota::per_hour(PER_HOUR)).await;
    let key = ip("198.51.100.3");
    for i in 0..SHARE {
        assert_eq!(
            a.request(&key).await,
            (true, DecisionSource::LocalShare),
            "token {i}"
        );
    }
    let policy = &a.layer.policies()[0];
    a.backend.refund(policy, &key, DecisionSource::LocalShare);
    let before = evalsha_calls(&redis);
    assert_eq!(a.request(&key).await, (true, DecisionSource::LocalShare));
    assert_eq!(evalsha_calls(&redis), before);
    // Spent again: the pool decides.
    assert_eq!(a.request(&key).await, (true, DecisionSource::Store));
    assert_eq!(evalsha_calls(&redis), before + 1);
}

/// However many distinct keys come, the table holds at most about `max_local_shares`; a new key
/// that finds it full of spent shares is decided in the pool (and admitted), and a key whose
/// share is spent is never handed a fresh one by the flood.
#[tokio::test]
async fn the_table_is_bounded_and_never_hands_a_spent_share_out_again() {
    let redis = RedisServer::start().unwrap();
    let mut c = local_first_config();
    c.max_local_shares = 64;
    let a = start(&redis, c, Quota::per_hour(PER_HOUR)).await;
    let hot = ip("203.0.113.9");
    for _ in 0..SHARE {
        assert_eq!(a.request(&hot).await, (true, DecisionSource::LocalShare));
    }
    let mut in_pool = 0;
    for i in 0..1000u32 {
        let (ok, source) = a.request(&nth_ip(i)).await;
        assert!(ok, "request {i}");
        if source == DecisionSource::Store {
            in_pool += 1;
        }
        assert!(a.backend.local_share_table_len() <= 64);
    }
    assert!(in_pool > 900, "{in_pool} of 1000 new keys in the pool");
    assert_eq!(a.backend.local_shares_full(), in_pool);
    // The hot key's share is still spent: the pool decides it.
    assert_eq!(a.request(&hot).await, (true, DecisionSource::Store));
}

/// With leases too (a high limit): a key's share first, then leases from its pool. The total
/// through three instances stays within the limit, and most requests never reach Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_then_leases_from_the_pool_stay_within_the_limit() {
    const BIG: u32 = 64_000;
    let redis = RedisServer::start().unwrap();
    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        instances.push(Arc::new(
            start(
                &redis,
                local_first_config().lease("anon"),
                Quota::per_hour(BIG),
            )
            .await,
        ));
    }
    let admitted = Arc::new(AtomicU64::new(0));
    let before = evalsha_calls(&redis);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for instance in &instances {
        for _ in 0..2 {
            let (instance, admitted) = (instance.clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                let key = ip("198.51.100.4");
                while instance.request(&key).await.0 {
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
    let limit = u64::from(BIG);
    let refill = rate_limit_support::refill(BIG, elapsed);
    // Shares: 1 000 each; the pool 61 000, leased 953 at a time.
    let share = limit / 64;
    let lease = (limit - u64::from(INSTANCES) * share) / LEASE_SHARE;
    assert!(total <= limit + refill, "admitted {total} of {limit}");
    // A client stops at its first refusal: its instance may hold up to one lease and, a client
    // of another instance being still at work, nothing else is out of reach.
    let early = u64::from(INSTANCES) * lease;
    assert!(
        total + early >= limit,
        "admitted {total}, refused earlier than the bound {early}"
    );
    let calls = evalsha_calls(&redis) - before;
    assert!(calls <= total / 50, "{calls} script calls for {total}");
    let leases: u64 = instances.iter().map(|i| i.backend.leases_taken()).sum();
    assert!(leases >= 1);
}

/// Redis killed: new keys are still admitted from the shares (no Redis needed); a key whose
/// share is spent is decided by the policy's failure mode (the local fallback by default).
#[tokio::test]
async fn shares_keep_admitting_while_redis_is_down() {
    let redis = RedisServer::start().unwrap();
    let mut c = local_first_config();
    c.budget = Duration::from_millis(200);
    let a = start(&redis, c, Quota::per_hour(PER_HOUR)).await;
    redis.kill().unwrap();
    for i in 0..50u32 {
        assert_eq!(
            a.request(&nth_ip(i)).await,
            (true, DecisionSource::LocalShare)
        );
    }
    let key = ip("198.51.100.5");
    for _ in 0..SHARE {
        assert_eq!(a.request(&key).await, (true, DecisionSource::LocalShare));
    }
    let (_, source) = a.request(&key).await;
    assert_eq!(source, DecisionSource::Fallback);
}
