//! The session layer's OpenTelemetry instruments (exported at `/metrics` by welcomedly-core's
//! Prometheus exporter): store loads and writes, and the cookies that were no session.

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use super::layer::SessionLayer;

impl SessionLayer {
    /// Registers observable counters reading [`SessionLayer::stats`] at each collection, so
    /// nothing is added to the request path: `welcomedly.session.loads` and
    /// `welcomedly.session.writes` (store round trips), `welcomedly.session.refused` by
    /// `reason` (`malformed_cookie` / `forged_cookie` / `unknown_session`: a cookie that was
    /// treated as no session; a burst of `forged_cookie` is someone guessing, a burst of
    /// `unknown_session` after a deploy is a store that lost its data or a changed key) and
    /// `welcomedly.session.writes_after_end` (late writes dropped because the session was
    /// logged out meanwhile). No other labels: one series each per instance.
    ///
    /// The instruments hold the layer's state weakly: they stop reporting once every service
    /// built from the layer is dropped.
    ///
    /// ```
    /// use welcomedly_cluster::session::{SessionConfig, SessionLayer, SessionStore};
    /// use welcomedly_core::telemetry::Metrics;
    ///
    /// let metrics = Metrics::new()?;
    /// let layer = SessionLayer::new(SessionStore::memory(), SessionConfig::default())?;
    /// layer.register_metrics(metrics.meter());
    /// assert!(metrics.encode()?.contains("welcomedly_session_loads_total"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register_metrics(&self, meter: &Meter) {
        let weak = Arc::downgrade(&self.shared);
        let _loads = meter
            .u64_observable_counter("welcomedly.session.loads")
            .with_description("Session loads from the store")
            .with_callback(move |o| {
                if let Some(shared) = weak.upgrade() {
                    o.observe(shared.counters.snapshot().loads, &[]);
                }
            })
            .build();
        let weak = Arc::downgrade(&self.shared);
        let _writes = meter
            .u64_observable_counter("welcomedly.session.writes")
            .with_description("Session writes to the store (changes, logins, id cycles, logouts)")
            .with_callback(move |o| {
                if let Some(shared) = weak.upgrade() {
                    o.observe(shared.counters.snapshot().writes, &[]);
                }
            })
            .build();
        let weak = Arc::downgrade(&self.shared);
        let _refused = meter
            .u64_observable_counter("welcomedly.session.refused")
            .with_description("Session cookies treated as no session, by reason")
            .with_callback(move |o| {
                if let Some(shared) = weak.upgrade() {
                    let s = shared.counters.snapshot();
                    for (reason, v) in [
                        ("malformed_cookie", s.malformed_cookies),
                        ("forged_cookie", s.forged_cookies),
                        ("unknown_session", s.unknown_sessions),
                    ] {
                        o.observe(v, &[KeyValue::new("reason", reason)]);
                    }
                }
            })
            .build();
        let weak = Arc::downgrade(&self.shared);
        let _late = meter
            .u64_observable_counter("welcomedly.session.writes_after_end")
            .with_description("Session writes dropped because the session had ended meanwhile")
            .with_callback(move |o| {
                if let Some(shared) = weak.upgrade() {
                    o.observe(shared.counters.snapshot().writes_after_end, &[]);
                }
            })
            .build();
    }
}
