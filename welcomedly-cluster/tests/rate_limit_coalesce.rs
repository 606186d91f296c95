//! Coalesced rate-limit checks against a real `redis-server` and a real Redis Cluster: checks
//! that arrive while a call is in flight ride in the next call together, and each request
//! keeps its own decision (a rejected one consumes nothing), across instances and slot groups.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use futures_util::future::join_all;
use welcomedly_cluster::rate_limit::{RedisBackend, RedisRateLimitConfig};
use welcomedly_core::rate_limit::backend::{Check, DecisionSource, Key, RateLimitBackend};
use welcomedly_core::rate_limit::{Policy, Quota, RateLimitLayer};
use welcomedly_redis::{Link, LinkConfig};
mod rate_limit_support;
use rate_limit_support::evalsha_calls;
use welcomedly_testkit::{RedisCluster, RedisClusterConfig, RedisServer};

fn config() -> RedisRateLimitConfig {
    let mut c = RedisRateLimitConfig::default();
    c.budget = Duration::from_secs(2);
    // Every request asks Redis: the test is about the script calls.
    c.remembered_rejections = 0;
    c
}

/// A layer (for its policies) over a backend on a link of its own: `wide` admits everything
/// the test sends, `scarce` a burst of 10.
async fn instance(link: LinkConfig) -> (RedisBackend, RateLimitLayer<RedisBackend>) {
    let link = Link::connect(link).await.unwrap();
    let b = RedisBackend::new(&link, config()).await.unwrap();
    assert!(!b.is_degraded());
    let layer = RateLimitLayer::builder()
        .backend(b.clone())
        .policy(Policy::new(
            "wide",
            Quota::per_minute(1000).with_burst(1000),
        ))
        .policy(Policy::new("scarce", Quota::per_minute(10).with_burst(10)))
        .build()
        .unwrap();
    (b, layer)
}

/// `n` requests of `ip` under both policies, all started before any is polled (so the first
/// leads and the others queue behind its call): each request's two decisions.
fn burst<'a>(
    b: &'a RedisBackend,
    layer: &'a RateLimitLayer<RedisBackend>,
    ip: &str,
    n: usize,
) -> Vec<impl Future<Output = Vec<(bool, u64, DecisionSource)>> + use<'a>> {
    let key = Key::Ip(ip.parse().unwrap());
    (0..n)
        .map(|_| {
            let checks = [
                Check {
                    policy: &layer.policies()[0],
                    key: &key,
                    charge: true,
                },
                Check {
                    policy: &layer.policies()[1],
                    key: &key,
                    charge: true,
                },
            ];
            let fut = b.acquire(&checks);
            async move {
                fut.await
                    .unwrap()
                    .iter()
                    .map(|d| (d.allowed, d.remaining, d.source))
                    .collect()
            }
        })
        .collect()
}

fn admitted(decisions: &[Vec<(bool, u64, DecisionSource)>]) -> usize {
    decisions.iter().filter(|d| d.iter().all(|c| c.0)).count()
}

/// 50 requests of one client at once: two script calls (the leader's, then the 49 that queued
/// behind it in one), 10 admitted in arrival order, and the 40 rejected charged nothing to
/// the policy that admitted them (`wide` spent 10, not 50).
#[tokio::test]
async fn a_batch_keeps_each_requests_decision_and_a_rejection_consumes_nothing() {
    let redis = RedisServer::start().unwrap();
    let (b, layer) = instance(LinkConfig::new(redis.url())).await;
    let before = evalsha_calls(&redis);
    let decisions = join_all(burst(&b, &layer, "192.0.2.10", 50)).await;
    assert_eq!(
        evalsha_calls(&redis) - before,
        2,
        "script calls for 50 requests"
    );
    assert_eq!((b.coalesced_calls(), b.coalesced_requests()), (1, 49));
    assert!(
        decisions
            .iter()
            .flatten()
            .all(|d| d.2 == DecisionSource::Store)
    );
    // Arrival order: the first 10 admitted, then only rejections.
    let allowed: Vec<bool> = decisions.iter().map(|d| d[0].0 && d[1].0).collect();
    assert_eq!(allowed.iter().filter(|a| **a).count(), 10);
    assert!(allowed[..10].iter().all(|a| *a), "{allowed:?}");
    assert_eq!(decisions[9][1].1, 0, "the 10th spends the scarce burst");
    // One more request under `wide` alone: 11 charged in all (10 + this one).
    let key = Key::Ip("192.0.2.10".parse().unwrap());
    let check = Check {
        policy: &layer.policies()[0],
        key: &key,
        charge: true,
    };
    let d = b.acquire(&[check]).await.unwrap();
    assert!(d[0].allowed);
    assert!(
        (988..=989).contains(&d[0].remaining),
        "wide has {} left: rejected requests were charged",
        d[0].remaining
    );
    assert_eq!(b.failures(), 0);
}

/// Two instances, 40 requests of one client each, all at once: the two backends coalesce on
/// their own links and together admit the burst once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coalescing_instances_hold_the_total() {
    let redis = RedisServer::start().unwrap();
    let (a, la) = instance(LinkConfig::new(redis.url())).await;
    let (b, lb) = instance(LinkConfig::new(redis.url())).await;
    let mut all = burst(&a, &la, "192.0.2.20", 40)
        .into_iter()
        .map(futures_util::FutureExt::boxed)
        .collect::<Vec<_>>();
    all.extend(
        burst(&b, &lb, "192.0.2.20", 40)
            .into_iter()
            .map(futures_util::FutureExt::boxed),
    );
    let decisions = join_all(all).await;
    assert_eq!(admitted(&decisions), 10);
    assert!(a.coalesced_requests() > 0 && b.coalesced_requests() > 0);
    assert_eq!(a.failures() + b.failures(), 0);
}

/// On a Redis Cluster requests coalesce per slot: 8 clients (8 slots over 3 masters) × 12
/// requests at once, each client admitted its burst of 10 exactly, no call refused
/// (`CROSSSLOT` would be a failure decided by the fallback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_calls_on_a_cluster_group_by_slot() {
    let cluster = RedisCluster::start_with(
        &RedisClusterConfig::default()
            .masters(3)
            .replicas_per_master(0),
    )
    .unwrap();
    let (b, layer) = instance(LinkConfig::cluster(cluster.seed_urls())).await;
    let ips: Vec<String> = (1..=8).map(|i| format!("198.51.100.{i}")).collect();
    let slots: std::collections::BTreeSet<u16> = ips
        .iter()
        .map(|ip| {
            let name = b.key_name(&layer.policies()[0], &Key::Ip(ip.parse().unwrap()));
            welcomedly_redis::key_slot(name.as_bytes())
        })
        .collect();
    let mut all = Vec::new();
    // Polled interleaved (each client's requests joined its slot's queue when created).
    let mut per_ip: Vec<_> = ips
        .iter()
        .map(|ip| burst(&b, &layer, ip, 12).into_iter())
        .collect();
    for _ in 0..12 {
        for it in &mut per_ip {
            all.push(it.next().unwrap());
        }
    }
    let decisions = join_all(all).await;
    assert_eq!(b.failures(), 0, "a coalesced call was refused");
    assert!(
        decisions
            .iter()
            .flatten()
            .all(|d| d.2 == DecisionSource::Store)
    );
    for (i, ip) in ips.iter().enumerate() {
        let mine: Vec<_> = decisions.iter().skip(i).step_by(8).cloned().collect();
        assert_eq!(admitted(&mine), 10, "{ip}");
    }
    assert!(
        b.coalesced_calls() >= slots.len() as u64,
        "one coalesced call per slot at least: {} for {} slots",
        b.coalesced_calls(),
        slots.len()
    );
}
