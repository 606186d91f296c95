//! Per-policy counters: admitted, limited, shadow-limited, store errors, fallbacks.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

/// Counters of one policy, incremented on the request path with relaxed atomics.
#[derive(Debug, Default)]
pub(crate) struct PolicyStats {
    pub(crate) admitted: AtomicU64,
    pub(crate) limited: AtomicU64,
    pub(crate) shadow_limited: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) fallbacks: AtomicU64,
}

impl PolicyStats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of one policy's counters ([`RateLimitLayer::stats`](super::RateLimitLayer::stats)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyStatsSnapshot {
    /// The policy's name.
    pub policy: String,
    /// Requests the policy admitted.
    pub admitted: u64,
    /// Requests it rejected with 429.
    pub limited: u64,
    /// Requests it would have rejected, admitted because it is in shadow mode.
    pub shadow_limited: u64,
    /// Decisions the backend could not make (the request was admitted).
    pub store_errors: u64,
    /// Decisions made by a local fallback standing in for a failed shared store.
    pub fallbacks: u64,
    /// Keys the backend holds for the policy, when it knows.
    pub keys: Option<u64>,
    /// Live keys dropped to bound memory, when the backend knows.
    pub evicted_keys: Option<u64>,
}

impl PolicyStatsSnapshot {
    pub(crate) fn new(
        policy: &str,
        s: &PolicyStats,
        keys: Option<u64>,
        evicted_keys: Option<u64>,
    ) -> Self {
        Self {
            policy: policy.to_owned(),
            admitted: s.admitted.load(Ordering::Relaxed),
            limited: s.limited.load(Ordering::Relaxed),
            shadow_limited: s.shadow_limited.load(Ordering::Relaxed),
            store_errors: s.store_errors.load(Ordering::Relaxed),
            fallbacks: s.fallbacks.load(Ordering::Relaxed),
            keys,
            evicted_keys,
        }
    }
}

/// Registers observable instruments that read `snapshot()` at each collection:
/// `welcomedly.rate_limit.requests` (attributes `policy`, `outcome` = admitted | limited |
/// shadow_limited), `welcomedly.rate_limit.store_errors`, `welcomedly.rate_limit.fallbacks`,
/// `welcomedly.rate_limit.keys` and `welcomedly.rate_limit.evicted_keys`.
pub(crate) fn register(
    meter: &Meter,
    snapshot: impl Fn() -> Vec<PolicyStatsSnapshot> + Send + Sync + Clone + 'static,
) {
    let s = snapshot.clone();
    let _requests = meter
        .u64_observable_counter("welcomedly.rate_limit.requests")
        .with_description("Requests decided by each rate-limit policy, by outcome")
        .with_callback(move |o| {
            for p in s() {
                for (outcome, v) in [
                    ("admitted", p.admitted),
                    ("limited", p.limited),
                    ("shadow_limited", p.shadow_limited),
                ] {
                    o.observe(
                        v,
                        &[
                            KeyValue::new("policy", p.policy.clone()),
                            KeyValue::new("outcome", outcome),
                        ],
                    );
                }
            }
        })
        .build();
    let s = snapshot.clone();
    let _errors = meter
        .u64_observable_counter("welcomedly.rate_limit.store_errors")
        .with_description("Rate-limit decisions the backend could not make (request admitted)")
        .with_callback(move |o| {
            for p in s() {
                o.observe(p.store_errors, &[KeyValue::new("policy", p.policy)]);
            }
        })
        .build();
    let s = snapshot.clone();
    let _fallbacks = meter
        .u64_observable_counter("welcomedly.rate_limit.fallbacks")
        .with_description("Rate-limit decisions made by the local fallback of a failed store")
        .with_callback(move |o| {
            for p in s() {
                o.observe(p.fallbacks, &[KeyValue::new("policy", p.policy)]);
            }
        })
        .build();
    let s = snapshot.clone();
    let _keys = meter
        .u64_observable_gauge("welcomedly.rate_limit.keys")
        .with_description("Keys held by the local rate limiter, per policy")
        .with_callback(move |o| {
            for p in s() {
                if let Some(k) = p.keys {
                    o.observe(k, &[KeyValue::new("policy", p.policy)]);
                }
            }
        })
        .build();
    let _evicted = meter
        .u64_observable_counter("welcomedly.rate_limit.evicted_keys")
        .with_description("Live keys dropped by the local rate limiter to bound its memory")
        .with_callback(move |o| {
            for p in snapshot() {
                if let Some(k) = p.evicted_keys {
                    o.observe(k, &[KeyValue::new("policy", p.policy)]);
                }
            }
        })
        .build();
}
