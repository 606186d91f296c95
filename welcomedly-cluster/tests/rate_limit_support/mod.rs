//! Shared by the Redis rate-limit tests (`tests/rate_limit_*.rs`), not a test target itself: an
//! instance (a backend on its own link and a layer of policies), one request through it, and
//! what Redis counted.
// Each test crate that includes this uses only some of it; unwrap and panics are allowed by
// the including crate's own `#![allow]`.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use welcomedly_cluster::rate_limit::{RedisBackend, RedisRateLimitConfig};
use welcomedly_core::rate_limit::backend::{Check, DecisionSource, Key, RateLimitBackend};
use welcomedly_core::rate_limit::{Policy, RateLimitLayer};
use welcomedly_redis::{Backoff, Link, LinkConfig};
use welcomedly_testkit::RedisServer;

/// One instance: a Redis backend on its own link (quick reconnects, for the tests that kill
/// Redis) and a layer of `policies`.
pub struct Instance {
    pub backend: RedisBackend,
    pub layer: RateLimitLayer<RedisBackend>,
}

impl Instance {
    /// An instance on `redis` that counts `live` instances (the local-first split and the
    /// fallback's divisor).
    pub async fn start(
        redis: &RedisServer,
        config: RedisRateLimitConfig,
        policies: &[Policy],
        live: u32,
    ) -> Self {
        let mut c = LinkConfig::new(redis.url());
        c.backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(200));
        let link = Link::connect(c).await.unwrap();
        let backend = RedisBackend::new(&link, config).await.unwrap();
        assert!(!backend.is_degraded());
        backend.live_instances().set(live);
        let mut builder = RateLimitLayer::builder().backend(backend.clone());
        for p in policies {
            builder = builder.policy(p.clone());
        }
        Self {
            backend,
            layer: builder.build().unwrap(),
        }
    }

    /// One request of `key` against every policy of the layer: admitted (by all), and who
    /// decided the first.
    pub async fn request(&self, key: &Key) -> (bool, DecisionSource) {
        let checks: Vec<Check<'_>> = self
            .layer
            .policies()
            .iter()
            .map(|policy| Check {
                policy,
                key,
                charge: true,
            })
            .collect();
        let d = self.backend.acquire(&checks).await.unwrap();
        (d.iter().all(|d| d.allowed), d[0].source)
    }

    /// Requests of `key` one after the other until one is refused: how many were admitted.
    pub async fn drain(&self, key: &Key) -> u64 {
        let mut admitted = 0;
        while self.request(key).await.0 {
            admitted += 1;
        }
        admitted
    }
}

/// The local-first tests' quota, 640 an hour: a share of 640 / 64 = 10 tokens per instance (on
/// 1 to 8 instances), a pool of `640 - I × 10`. The refill (one token every 5.6 s) is
/// negligible over a test.
pub const PER_HOUR: u32 = 640;
/// A share of [`PER_HOUR`].
pub const SHARE: u64 = 10;

/// The local-first tests' settings: the `anon` policy takes shares, a generous budget, and no
/// remembered rejections (every refused request asks again: the tests count what is admitted).
pub fn local_first_config() -> RedisRateLimitConfig {
    let mut c = RedisRateLimitConfig::default().local_first("anon");
    c.budget = Duration::from_secs(2);
    c.remembered_rejections = 0;
    c
}

/// What a quota of `per_hour` refilled over `elapsed`, rounded up, plus one for the instant's
/// edge.
pub fn refill(per_hour: u32, elapsed: Duration) -> u64 {
    (elapsed.as_secs_f64() * f64::from(per_hour) / 3600.0).ceil() as u64 + 1
}

/// The script calls Redis has run (`EVALSHA`), from `INFO commandstats`.
pub fn evalsha_calls(redis: &RedisServer) -> u64 {
    let info = redis.command(&["INFO", "commandstats"]).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// The client-address key of `s`.
pub fn ip(s: &str) -> Key {
    Key::Ip(s.parse().unwrap())
}

/// The `i`-th of a run of distinct client-address keys (10.0.0.0 on).
pub fn nth_ip(i: u32) -> Key {
    Key::Ip(std::net::Ipv4Addr::from(0x0A00_0000 + i).into())
}
