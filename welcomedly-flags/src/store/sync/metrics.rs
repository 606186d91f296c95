//! The sync's OpenTelemetry instruments (exported at `/metrics` by welcomedly-core's
//! Prometheus exporter): served version, staleness, resyncs, rejected payloads.

use opentelemetry::metrics::Meter;

use super::SyncHealth;

impl SyncHealth {
    /// Registers observable instruments reading this sync: `welcomedly.flags.version` (the
    /// snapshot served), `welcomedly.flags.store_version`, `welcomedly.flags.staleness` (seconds
    /// since the snapshot was last known current, 0 while it is), and the counters
    /// `welcomedly.flags.resyncs`, `welcomedly.flags.rejected_payloads`, `welcomedly.flags.applies`.
    /// No labels: one series each per instance.
    pub fn register_metrics(&self, meter: &Meter) {
        let s = self.clone();
        let _version = meter
            .u64_observable_gauge("welcomedly.flags.version")
            .with_description("Version of the flag snapshot this instance serves")
            .with_callback(move |o| o.observe(s.applied_version(), &[]))
            .build();
        let s = self.clone();
        let _store = meter
            .u64_observable_gauge("welcomedly.flags.store_version")
            .with_description("Version of the flag set last read from the store")
            .with_callback(move |o| o.observe(s.store_version(), &[]))
            .build();
        let s = self.clone();
        let _stale = meter
            .f64_observable_gauge("welcomedly.flags.staleness")
            .with_unit("s")
            .with_description(
                "Seconds the served flag snapshot may be behind the store (0 when current)",
            )
            .with_callback(move |o| o.observe(s.staleness().as_secs_f64(), &[]))
            .build();
        for (name, description, read) in [
            (
                "welcomedly.flags.resyncs",
                "Full reloads of the flag set (reconnect, resubscribe, lost announcement)",
                SyncHealth::resyncs as fn(&SyncHealth) -> u64,
            ),
            (
                "welcomedly.flags.rejected_payloads",
                "Flag documents the store held that did not validate (the last good snapshot stayed)",
                SyncHealth::rejected_payloads,
            ),
            (
                "welcomedly.flags.applies",
                "Flag snapshots swapped in",
                SyncHealth::applies,
            ),
        ] {
            let s = self.clone();
            let _counter = meter
                .u64_observable_counter(name)
                .with_description(description)
                .with_callback(move |o| o.observe(read(&s), &[]))
                .build();
        }
    }
}
