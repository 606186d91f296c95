//! The bus's OpenTelemetry instruments (exported at `/metrics` by welcomedly-core's Prometheus
//! exporter): what was published and received, what slow subscribers lost, reconnects, and the
//! local fan-out.

use std::sync::{Arc, Weak};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use super::{Bus, BusStats, Inner, lock};

/// A counter's name, description and the field of [`BusStats`] it reports.
type Counter = (&'static str, &'static str, fn(&BusStats) -> u64);

impl Bus {
    /// Registers observable instruments reading [`Bus::stats`] at each collection, so nothing
    /// is added to the publish or delivery path. Counters (no labels, one series per
    /// instance): `welcomedly.bus.published`, `welcomedly.bus.publish_failures`,
    /// `welcomedly.bus.received`, `welcomedly.bus.dropped` (events lost by slow ephemeral
    /// subscribers), `welcomedly.bus.recovered` (events durable subscribers lagged on and
    /// re-read from Redis), `welcomedly.bus.gaps`, `welcomedly.bus.malformed`,
    /// `welcomedly.bus.resubscribes`, `welcomedly.bus.reader_reconnects`; and the gauge
    /// `welcomedly.bus.subscribers` by `tier` (`ephemeral` / `durable`): the local
    /// subscriptions events fan out to (an SSE stream is one).
    ///
    /// The instruments hold the bus weakly: they stop reporting once the bus is dropped.
    ///
    /// ```
    /// use welcomedly_cluster::bus::BusConfig;
    /// use welcomedly_core::telemetry::Metrics;
    ///
    /// let metrics = Metrics::new()?;
    /// let bus = BusConfig::new().build_local()?;
    /// bus.register_metrics(metrics.meter());
    /// let text = metrics.encode()?;
    /// assert!(text.contains("welcomedly_bus_published_total"), "{text}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register_metrics(&self, meter: &Meter) {
        let counters: [Counter; 9] = [
            (
                "welcomedly.bus.published",
                "Events published by this instance",
                |s| s.published,
            ),
            (
                "welcomedly.bus.publish_failures",
                "Publishes that failed (Redis unreachable, slow or refusing)",
                |s| s.publish_failures,
            ),
            (
                "welcomedly.bus.received",
                "Events this instance received (each once, however many local subscribers)",
                |s| s.received,
            ),
            (
                "welcomedly.bus.dropped",
                "Events dropped for slow ephemeral subscribers",
                |s| s.dropped,
            ),
            (
                "welcomedly.bus.recovered",
                "Events durable subscribers lagged behind on and re-read from Redis",
                |s| s.recovered,
            ),
            (
                "welcomedly.bus.gaps",
                "Gaps reported to durable subscribers (history trimmed or lost)",
                |s| s.gaps,
            ),
            (
                "welcomedly.bus.malformed",
                "Messages or stream entries not written by the bus (skipped)",
                |s| s.malformed,
            ),
            (
                "welcomedly.bus.resubscribes",
                "Times the pub/sub connection was re-established",
                |s| s.resubscribes,
            ),
            (
                "welcomedly.bus.reader_reconnects",
                "Times a durable reader lost its connection",
                |s| s.reader_reconnects,
            ),
        ];
        for (name, description, read) in counters {
            let weak = Arc::downgrade(&self.inner);
            let _counter = meter
                .u64_observable_counter(name)
                .with_description(description)
                .with_callback(move |o| {
                    if let Some(inner) = weak.upgrade() {
                        o.observe(read(&Bus { inner }.stats()), &[]);
                    }
                })
                .build();
        }
        let weak = Arc::downgrade(&self.inner);
        let _subscribers = meter
            .u64_observable_gauge("welcomedly.bus.subscribers")
            .with_description("Local subscriptions the bus fans events out to, by tier")
            .with_callback(move |o| {
                if let Some((ephemeral, durable)) = subscribers(&weak) {
                    o.observe(ephemeral, &[KeyValue::new("tier", "ephemeral")]);
                    o.observe(durable, &[KeyValue::new("tier", "durable")]);
                }
            })
            .build();
    }
}

/// Receivers of every topic's local broadcast, ephemeral and durable; `None` once the bus is
/// gone.
fn subscribers(weak: &Weak<Inner>) -> Option<(u64, u64)> {
    let inner = weak.upgrade()?;
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let ephemeral = lock(&inner.ephemeral)
        .values()
        .map(|t| count(t.tx.receiver_count()))
        .sum();
    let durable = lock(&inner.durable)
        .values()
        .map(|t| count(t.tx.receiver_count()))
        .sum();
    Some((ephemeral, durable))
}

#[cfg(test)]
mod tests {
    use welcomedly_core::telemetry::Metrics;

    use super::super::{BusConfig, Topic};

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[tokio::test]
    async fn counts_published_received_and_local_subscribers() {
        let metrics = Metrics::new().unwrap();
        let bus = BusConfig::new().build_local().unwrap();
        bus.register_metrics(metrics.meter());
        let topic = Topic::<u32>::ephemeral("ops.test").unwrap();
        let mut a = bus.subscribe(&topic).await;
        let _b = bus.subscribe(&topic).await;
        bus.publish(&topic, &7).await.unwrap();
        assert!(a.recv().await.is_some());

        let text = metrics.encode().unwrap();
        assert_eq!(
            value(&text, "welcomedly_bus_published_total{"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(value(&text, "welcomedly_bus_received_total{"), Some(1.0));
        assert_eq!(value(&text, "welcomedly_bus_dropped_total{"), Some(0.0));
        assert_eq!(
            value(&text, r#"welcomedly_bus_subscribers{tier="ephemeral""#),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            value(&text, r#"welcomedly_bus_subscribers{tier="durable""#),
            Some(0.0)
        );

        // The instruments do not keep the bus alive.
        drop((a, _b, bus));
        let text = metrics.encode().unwrap();
        assert!(!text.contains("welcomedly_bus_subscribers{"), "{text}");
    }
}
