//! The link's OpenTelemetry instruments (exported at `/metrics` by welcomedly-core's
//! Prometheus exporter).

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use crate::link::{Link, LinkState};

/// A sharded subscriber counter: name, description, how to read it.
type ShardedCounter = (
    &'static str,
    &'static str,
    fn(&crate::SubscriberStats) -> u64,
);

impl Link {
    /// Registers observable instruments reading [`Link::stats`] at each collection, so nothing
    /// is added to the call path: `welcomedly.redis.connected` (1 or 0),
    /// `welcomedly.redis.connections` (connections made; reconnects are this minus one),
    /// `welcomedly.redis.failures` by `class` (`transport` / `replace` / `server`),
    /// `welcomedly.redis.budget_overruns`, `welcomedly.redis.closed` (connections Redis
    /// closed), `welcomedly.redis.in_flight`, `welcomedly.redis.master_switches` (Sentinel:
    /// announced new masters followed), and for the [`subscriber`](Link::subscriber)
    /// once it is used: `welcomedly.redis.subscriber.connected` (1 or 0),
    /// `welcomedly.redis.subscriber.resubscribes`, `welcomedly.redis.subscriber.lagged`
    /// (messages dropped for slow readers); for the
    /// [`sharded_subscriber`](Link::sharded_subscriber) once it is used (on a cluster):
    /// `welcomedly.redis.sharded.connected` (1 or 0), `welcomedly.redis.sharded.resubscribes`
    /// (channels subscribed again after a loss), `welcomedly.redis.sharded.unsolicited_unsubscribes`
    /// (Redis unsubscribed a channel: a slot migration or failover) and
    /// `welcomedly.redis.sharded.repairs` (channels the periodic check found missing). Labels
    /// come from closed sets only.
    ///
    /// The instruments hold the link weakly: they stop reporting once it is dropped.
    pub fn register_metrics(&self, meter: &Meter) {
        let weak = Arc::downgrade(self.inner());
        let _connected = meter
            .u64_observable_gauge("welcomedly.redis.connected")
            .with_description("Whether the Redis link has a connection (1) or not (0)")
            .with_callback(move |o| {
                if let Some(link) = Link::upgrade(&weak) {
                    o.observe(u64::from(link.state() == LinkState::Connected), &[]);
                }
            })
            .build();
        let weak = Arc::downgrade(self.inner());
        let _connections = meter
            .u64_observable_counter("welcomedly.redis.connections")
            .with_description("Connections the Redis link made (reconnects are this minus one)")
            .with_callback(move |o| {
                if let Some(link) = Link::upgrade(&weak) {
                    o.observe(link.stats().connections, &[]);
                }
            })
            .build();
        let weak = Arc::downgrade(self.inner());
        let _failures = meter
            .u64_observable_counter("welcomedly.redis.failures")
            .with_description("Failed Redis calls by class")
            .with_callback(move |o| {
                if let Some(link) = Link::upgrade(&weak) {
                    let s = link.stats();
                    for (class, v) in [
                        ("transport", s.transport_failures),
                        ("replace", s.replace_failures),
                        ("server", s.server_failures),
                    ] {
                        o.observe(v, &[KeyValue::new("class", class)]);
                    }
                }
            })
            .build();
        let weak = Arc::downgrade(self.inner());
        let _budget = meter
            .u64_observable_counter("welcomedly.redis.budget_overruns")
            .with_description("Redis calls that ran past their budget")
            .with_callback(move |o| {
                if let Some(link) = Link::upgrade(&weak) {
                    o.observe(link.stats().budget_overruns, &[]);
                }
            })
            .build();
        let weak = Arc::downgrade(self.inner());
        let _closed = meter
            .u64_observable_counter("welcomedly.redis.closed")
            .with_description("Redis connections closed by the server, noticed without a call")
            .with_callback(move |o| {
                if let Some(link) = Link::upgrade(&weak) {
                    o.observe(link.stats().closed, &[]);
                }
            })
            .build();
        let weak = Arc::downgrade(self.inner());
        let _in_flight = meter
            .u64_observable_gauge("welcomedly.redis.in_flight")
            .with_description("Redis calls in flight")
            .with_callback(move |o| {
                if let Some(link) = Link::upgrade(&weak) {
                    o.observe(link.stats().in_flight, &[]);
                }
            })
            .build();
        let weak = Arc::downgrade(self.inner());
        let _switches = meter
            .u64_observable_counter("welcomedly.redis.master_switches")
            .with_description(
                "New masters the Sentinels announced that the Redis link followed (Sentinel only)",
            )
            .with_callback(move |o| {
                if let Some(link) = Link::upgrade(&weak) {
                    o.observe(link.stats().master_switches, &[]);
                }
            })
            .build();
        let weak = Arc::downgrade(self.inner());
        let _sub_connected = meter
            .u64_observable_gauge("welcomedly.redis.subscriber.connected")
            .with_description("Whether the Redis pub/sub connection is subscribed (1) or not (0)")
            .with_callback(move |o| {
                if let Some(s) = Link::upgrade(&weak).and_then(|l| l.used_subscriber()) {
                    o.observe(u64::from(s.is_connected()), &[]);
                }
            })
            .build();
        let weak = Arc::downgrade(self.inner());
        let _resubscribes = meter
            .u64_observable_counter("welcomedly.redis.subscriber.resubscribes")
            .with_description(
                "Times the Redis pub/sub connection was re-established after an outage",
            )
            .with_callback(move |o| {
                if let Some(s) = Link::upgrade(&weak).and_then(|l| l.used_subscriber()) {
                    o.observe(s.stats().resubscribes, &[]);
                }
            })
            .build();
        let weak = Arc::downgrade(self.inner());
        let _sharded_connected = meter
            .u64_observable_gauge("welcomedly.redis.sharded.connected")
            .with_description(
                "Whether every sharded pub/sub channel is routed to a connected master (1) or not (0)",
            )
            .with_callback(move |o| {
                if let Some(s) = Link::upgrade(&weak).and_then(|l| l.used_sharded()) {
                    o.observe(u64::from(s.is_connected()), &[]);
                }
            })
            .build();
        let counters: [ShardedCounter; 3] = [
            (
                "welcomedly.redis.sharded.resubscribes",
                "Sharded pub/sub channels subscribed again after a loss",
                |s| s.resubscribes,
            ),
            (
                "welcomedly.redis.sharded.unsolicited_unsubscribes",
                "Sharded channels Redis unsubscribed on its own (slot migration, failover), each subscribed again on the new owner",
                |s| s.unsolicited_unsubscribes,
            ),
            (
                "welcomedly.redis.sharded.repairs",
                "Sharded channels the periodic check found not subscribed, subscribed again",
                |s| s.repairs,
            ),
        ];
        for (name, description, read) in counters {
            let weak = Arc::downgrade(self.inner());
            let _counter = meter
                .u64_observable_counter(name)
                .with_description(description)
                .with_callback(move |o| {
                    if let Some(s) = Link::upgrade(&weak).and_then(|l| l.used_sharded()) {
                        o.observe(read(&s.stats()), &[]);
                    }
                })
                .build();
        }
        let weak = Arc::downgrade(self.inner());
        let _lagged = meter
            .u64_observable_counter("welcomedly.redis.subscriber.lagged")
            .with_description("Pub/sub messages dropped for subscriptions that read too slowly")
            .with_callback(move |o| {
                if let Some(s) = Link::upgrade(&weak).and_then(|l| l.used_subscriber()) {
                    o.observe(s.stats().lagged, &[]);
                }
            })
            .build();
    }
}
