//! OpenTelemetry instruments (exported at `/metrics` by welcomedly-core's Prometheus
//! exporter).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;
use sqlx::Database;

use crate::Router;
use crate::router::Inner;

type Read<DB> = fn(&Inner<DB>, &mut dyn FnMut(u64, &[KeyValue]));

impl<DB: Database> Router<DB> {
    /// Registers observable instruments reading the router, each labelled `node` ("primary",
    /// "replica 0", …) where per node: `welcomedly.db.queries` (routed requests),
    /// `welcomedly.db.errors` (failed probes and connection errors), `welcomedly.db.in_flight`,
    /// `welcomedly.db.healthy` (1 in rotation, 0 ejected), `welcomedly.db.ejections`,
    /// `welcomedly.db.lag_bytes`, `welcomedly.db.lag` (seconds); `welcomedly.db.reads` by
    /// `served_by` (`replica` / `primary`); `welcomedly.db.read_after` by `outcome`
    /// (`replica` / `waited` / `primary`); `welcomedly.db.retries`.
    pub fn register_metrics(&self, meter: &Meter) {
        let counters: [(&'static str, &'static str, Read<DB>); 5] = [
            (
                "welcomedly.db.queries",
                "Requests routed to the node",
                |i, o| {
                    for n in &i.nodes {
                        o(
                            n.reads.load(Ordering::Relaxed) + n.writes.load(Ordering::Relaxed),
                            &[KeyValue::new("node", n.label.clone())],
                        );
                    }
                },
            ),
            (
                "welcomedly.db.errors",
                "Failed probes and connection-level errors of the node",
                |i, o| {
                    for n in &i.nodes {
                        o(
                            n.errors.load(Ordering::Relaxed),
                            &[KeyValue::new("node", n.label.clone())],
                        );
                    }
                },
            ),
            (
                "welcomedly.db.ejections",
                "Times the node was taken out of rotation",
                |i, o| {
                    for n in &i.nodes {
                        o(
                            n.ejections.load(Ordering::Relaxed),
                            &[KeyValue::new("node", n.label.clone())],
                        );
                    }
                },
            ),
            (
                "welcomedly.db.reads",
                "Reads by the kind of node serving them",
                |i, o| {
                    o(
                        i.stats.reads_replica.load(Ordering::Relaxed),
                        &[KeyValue::new("served_by", "replica")],
                    );
                    o(
                        i.stats.reads_primary.load(Ordering::Relaxed),
                        &[KeyValue::new("served_by", "primary")],
                    );
                },
            ),
            (
                "welcomedly.db.read_after",
                "Read-your-writes outcomes",
                |i, o| {
                    for (v, outcome) in [
                        (&i.stats.ryw_replica, "replica"),
                        (&i.stats.ryw_waited, "waited"),
                        (&i.stats.ryw_primary, "primary"),
                    ] {
                        o(
                            v.load(Ordering::Relaxed),
                            &[KeyValue::new("outcome", outcome)],
                        );
                    }
                },
            ),
        ];
        for (name, description, read) in counters {
            let weak = Arc::downgrade(&self.inner);
            let _counter = meter
                .u64_observable_counter(name)
                .with_description(description)
                .with_callback(move |o| with(&weak, read, &mut |v, a| o.observe(v, a)))
                .build();
        }
        let weak = Arc::downgrade(&self.inner);
        let _retries = meter
            .u64_observable_counter("welcomedly.db.retries")
            .with_description("Reads retried on another node after a connection-level error")
            .with_callback(move |o| {
                if let Some(i) = weak.upgrade() {
                    o.observe(i.stats.retries.load(Ordering::Relaxed), &[]);
                }
            })
            .build();
        let gauges: [(&'static str, &'static str, Read<DB>); 3] = [
            (
                "welcomedly.db.in_flight",
                "Requests routed to the node and not finished",
                |i, o| {
                    for n in &i.nodes {
                        o(
                            u64::from(n.outstanding.load(Ordering::Relaxed)),
                            &[KeyValue::new("node", n.label.clone())],
                        );
                    }
                },
            ),
            (
                "welcomedly.db.healthy",
                "1 while the node is in rotation, 0 while ejected",
                |i, o| {
                    for n in &i.nodes {
                        o(
                            u64::from(n.is_healthy()),
                            &[KeyValue::new("node", n.label.clone())],
                        );
                    }
                },
            ),
            (
                "welcomedly.db.lag_bytes",
                "WAL bytes the replica is behind the writer",
                |i, o| {
                    for n in &i.nodes {
                        o(
                            n.lag_bytes.load(Ordering::Relaxed),
                            &[KeyValue::new("node", n.label.clone())],
                        );
                    }
                },
            ),
        ];
        for (name, description, read) in gauges {
            let weak = Arc::downgrade(&self.inner);
            let _gauge = meter
                .u64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |o| with(&weak, read, &mut |v, a| o.observe(v, a)))
                .build();
        }
        let weak = Arc::downgrade(&self.inner);
        let _lag = meter
            .f64_observable_gauge("welcomedly.db.lag")
            .with_unit("s")
            .with_description("How long ago the writer was where the replica is")
            .with_callback(move |o| {
                if let Some(i) = weak.upgrade() {
                    for n in &i.nodes {
                        #[allow(clippy::cast_precision_loss)]
                        let secs = n.lag_micros.load(Ordering::Relaxed) as f64 / 1e6;
                        o.observe(secs, &[KeyValue::new("node", n.label.clone())]);
                    }
                }
            })
            .build();
    }
}

fn with<DB: Database>(
    weak: &Weak<Inner<DB>>,
    read: Read<DB>,
    out: &mut dyn FnMut(u64, &[KeyValue]),
) {
    if let Some(inner) = weak.upgrade() {
        read(&inner, out);
    }
}
