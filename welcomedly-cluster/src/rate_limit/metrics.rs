//! The Redis rate-limit backend's OpenTelemetry instruments: whether it is on its local
//! fallback right now, the live-instance count the fallback divides limits by, and its failed
//! Redis calls. Connections and reconnects are the link's metrics (`welcomedly.redis.*`).

use std::sync::Arc;

use opentelemetry::metrics::Meter;

use super::backend::RedisBackend;

/// An instrument's name, description and what it reads off the backend.
type Reading = (&'static str, &'static str, fn(&RedisBackend) -> u64);

impl RedisBackend {
    /// Registers observable instruments read at each collection (nothing is added to the
    /// request path): gauges `welcomedly.rate_limit.backend_degraded` (1 while decisions are
    /// made locally because the link has no connection, else 0) and
    /// `welcomedly.rate_limit.live_instances` (what the fallback divides each limit by);
    /// counters `welcomedly.rate_limit.leases` and `welcomedly.rate_limit.leased_requests`
    /// (leases taken, requests admitted from them), `welcomedly.rate_limit.local_share_requests`
    /// (requests admitted from local-first shares), `welcomedly.rate_limit.backend_failures`
    /// (the backend's calls that failed or answered too late) and `welcomedly.rate_limit.backend_server_errors` (errors a reconnect
    /// would not fix). Connections and reconnects are the link's
    /// (`Link::register_metrics`); the per-policy decision counters are the layer's
    /// (`RateLimitLayer::register_metrics`).
    ///
    /// The instruments hold the backend weakly: they stop reporting once it is dropped.
    pub fn register_metrics(&self, meter: &Meter) {
        let gauges: [Reading; 2] = [
            (
                "welcomedly.rate_limit.backend_degraded",
                "1 while rate-limit decisions are made locally because the Redis link has no connection, else 0",
                |b| u64::from(b.is_degraded()),
            ),
            (
                "welcomedly.rate_limit.live_instances",
                "Live instances the local fallback divides each limit by",
                |b| u64::from(b.live_instances().get()),
            ),
        ];
        for (name, description, read) in gauges {
            let weak = Arc::downgrade(&self.inner);
            let _gauge = meter
                .u64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |o| {
                    if let Some(inner) = weak.upgrade() {
                        o.observe(read(&RedisBackend { inner }), &[]);
                    }
                })
                .build();
        }
        let counters: [Reading; 5] = [
            (
                "welcomedly.rate_limit.leases",
                "Leases of a hot key's budget taken from Redis (policies with leased local shares)",
                RedisBackend::leases_taken,
            ),
            (
                "welcomedly.rate_limit.leased_requests",
                "Requests admitted from a lease, without a Redis call",
                RedisBackend::leased_requests,
            ),
            (
                "welcomedly.rate_limit.local_share_requests",
                "Requests admitted from this instance's local-first share of a key's budget, without a Redis call",
                RedisBackend::local_share_requests,
            ),
            (
                "welcomedly.rate_limit.backend_failures",
                "Redis calls of the rate limiter that failed or answered too late",
                RedisBackend::failures,
            ),
            (
                "welcomedly.rate_limit.backend_server_errors",
                "Redis errors a reconnect would not fix (OOM, WRONGTYPE, script errors)",
                RedisBackend::server_errors,
            ),
        ];
        for (name, description, read) in counters {
            let weak = Arc::downgrade(&self.inner);
            let _counter = meter
                .u64_observable_counter(name)
                .with_description(description)
                .with_callback(move |o| {
                    if let Some(inner) = weak.upgrade() {
                        o.observe(read(&RedisBackend { inner }), &[]);
                    }
                })
                .build();
        }
    }
}
