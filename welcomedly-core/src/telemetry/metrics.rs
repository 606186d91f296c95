//! Metrics: an OpenTelemetry meter provider exported to a Prometheus registry, the HTTP server
//! request-duration histogram and two cheap process gauges.
//!
//! ```
//! use opentelemetry::KeyValue;
//! use welcomedly_core::telemetry::Metrics;
//!
//! let metrics = Metrics::new()?; // a private registry: nothing global is touched
//! let jobs = metrics.meter().u64_counter("jobs.done").build();
//! jobs.add(3, &[KeyValue::new("queue", "mail")]);
//! let text = metrics.encode()?;
//! assert!(text.contains(r#"jobs_done_total{queue="mail",otel_scope_name="welcomedly-core""#));
//! assert!(text.contains("process_start_time_seconds"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use opentelemetry::metrics::{BoundHistogram, Histogram, Meter, MeterProvider, ObservableGauge};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, TextEncoder};

use super::error::TelemetryError;
use super::route::Route;

/// Name of the HTTP server request-duration histogram (OpenTelemetry semantic conventions);
/// Prometheus shows it as `http_server_request_duration_seconds`.
pub const HTTP_SERVER_REQUEST_DURATION: &str = "http.server.request.duration";

/// Bucket boundaries of [`HTTP_SERVER_REQUEST_DURATION`] in seconds, as the semantic conventions
/// recommend.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

const SCOPE_NAME: &str = "welcomedly-core";

/// The HTTP server metrics [`HttpTelemetryLayer`](super::HttpTelemetryLayer) records:
/// `http.server.request.duration` (seconds) by `http.request.method`, `http.route` and
/// `http.response.status_code` (or `error.type` when the service failed without a response).
///
/// Built from any OpenTelemetry [`Meter`], so tests and benches can use a private meter
/// provider. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    duration: Histogram<f64>,
    /// Tells this instrument's handles apart from others' in [`BOUND`]; the handles of an
    /// instrument whose every clone is gone are dropped when a cache fills up.
    owner: Arc<()>,
}

impl HttpMetrics {
    /// Creates the instruments on `meter`.
    pub fn new(meter: &Meter) -> Self {
        let duration = meter
            .f64_histogram(HTTP_SERVER_REQUEST_DURATION)
            .with_description("Duration of HTTP server requests.")
            .with_unit("s")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build();
        Self {
            duration,
            owner: Arc::new(()),
        }
    }

    /// Records one request. `status` is `None` when the service returned an error instead of a
    /// response.
    pub(crate) fn record(
        &self,
        method: &Method,
        route: &Route,
        status: Option<StatusCode>,
        elapsed: Duration,
    ) {
        let seconds = elapsed.as_secs_f64();
        let method = method_label(method);
        // 0 is no status code: it stands for "no response".
        let outcome = status.map_or(0, |status| status.as_u16());
        let recorded = BOUND.with(|cache| {
            let Ok(mut cache) = cache.try_borrow_mut() else {
                return false;
            };
            let label = route.as_str();
            match cache.get(&self.owner, method, label, outcome) {
                Some(bound) => bound.record(seconds),
                None => {
                    let bound = self.duration.bind(&attributes(method, route, status));
                    bound.record(seconds);
                    cache.insert(&self.owner, method, label, outcome, bound);
                }
            }
            true
        });
        if !recorded {
            // Only when a record re-enters itself on this thread (a panic hook, an allocator
            // that records metrics): the SDK's own lookup, equally correct.
            self.duration
                .record(seconds, &attributes(method, route, status));
        }
    }
}

/// The attributes of one request's measurement.
fn attributes(method: &'static str, route: &Route, status: Option<StatusCode>) -> [KeyValue; 3] {
    let outcome = match status {
        Some(status) => KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
        None => KeyValue::new("error.type", "_OTHER"),
    };
    [
        KeyValue::new("http.request.method", method),
        KeyValue::new("http.route", route.to_value()),
        outcome,
    ]
}

/// The most bound handles [`BOUND`] keeps per thread. A service has a few dozen routes and a
/// handful of methods and statuses per route; past this, requests record through the SDK's
/// lookup (correct, only slower) rather than grow the cache without bound.
const MAX_BOUND_PER_THREAD: usize = 1024;

thread_local! {
    /// Histogram handles bound to one attribute set each, per thread. Recording through the SDK
    /// with attributes hashes them (SipHash over every key and value) and looks the set up
    /// under a lock shared by all cores, on every request; a bound handle goes straight to its
    /// aggregator. Per thread, so finding the handle touches no shared cache line.
    static BOUND: std::cell::RefCell<BoundCache> = std::cell::RefCell::new(BoundCache::default());
}

/// Bound handles by route, then by instrument, method and outcome (a short list: most routes
/// see one method and one or two statuses).
#[derive(Default)]
struct BoundCache {
    by_route: HashMap<Box<str>, Vec<BoundEntry>, foldhash::fast::RandomState>,
    len: usize,
}

struct BoundEntry {
    owner: Weak<()>,
    method: &'static str,
    outcome: u16,
    bound: BoundHistogram<f64>,
}

impl BoundEntry {
    fn is(&self, owner: &Arc<()>, method: &'static str, outcome: u16) -> bool {
        // Method labels are `'static` constants: equal text is the same pointer, but comparing
        // the text stays correct however the compiler lays them out.
        self.outcome == outcome
            && self.method == method
            && self.owner.as_ptr() == Arc::as_ptr(owner)
    }
}

impl BoundCache {
    fn get(
        &self,
        owner: &Arc<()>,
        method: &'static str,
        route: &str,
        outcome: u16,
    ) -> Option<&BoundHistogram<f64>> {
        self.by_route
            .get(route)?
            .iter()
            .find(|e| e.is(owner, method, outcome))
            .map(|e| &e.bound)
    }

    fn insert(
        &mut self,
        owner: &Arc<()>,
        method: &'static str,
        route: &str,
        outcome: u16,
        bound: BoundHistogram<f64>,
    ) {
        if self.len >= MAX_BOUND_PER_THREAD {
            // Forget the handles of instruments that are gone (tests and benches build many).
            self.by_route.retain(|_, entries| {
                entries.retain(|e| e.owner.strong_count() > 0);
                !entries.is_empty()
            });
            self.len = self.by_route.values().map(Vec::len).sum();
            if self.len >= MAX_BOUND_PER_THREAD {
                return;
            }
        }
        let entry = BoundEntry {
            owner: Arc::downgrade(owner),
            method,
            outcome,
            bound,
        };
        match self.by_route.get_mut(route) {
            Some(entries) => entries.push(entry),
            None => {
                self.by_route.insert(route.into(), vec![entry]);
            }
        }
        self.len += 1;
    }
}

/// The method as the semantic conventions want it: the known methods as-is, anything else
/// `_OTHER` (an arbitrary method token must not create a series).
pub(crate) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// An OpenTelemetry meter provider whose only reader is a Prometheus exporter writing into a
/// [`prometheus::Registry`], with the HTTP instruments and the process gauges
/// (`process_start_time_seconds`, `process_uptime_seconds`) already created.
///
/// [`Telemetry::init`](super::Telemetry::init) builds one with the service's resource and makes
/// it the global meter provider; [`Metrics::new`] builds a private one. Serve it with
/// [`Metrics::service`] (or, with the `axum` feature, [`Metrics::router`]). Cloning is cheap.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: prometheus::Registry,
    provider: SdkMeterProvider,
    meter: Meter,
    http: HttpMetrics,
    // Kept so the callbacks live as long as the provider.
    _process: [ObservableGauge<f64>; 2],
}

/// Builds [`Metrics`]. Defaults: a new, empty `prometheus::Registry` and the SDK's default
/// resource (attributes from `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`).
#[derive(Debug, Default)]
#[must_use]
pub struct MetricsBuilder {
    registry: Option<prometheus::Registry>,
    resource: Option<Resource>,
}

impl MetricsBuilder {
    /// Exports into `registry` (for instance one that already holds other collectors).
    pub fn registry(mut self, registry: prometheus::Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The resource whose attributes appear on the `target_info` metric.
    pub fn resource(mut self, resource: Resource) -> Self {
        self.resource = Some(resource);
        self
    }

    /// Builds the meter provider and its instruments.
    ///
    /// # Errors
    ///
    /// [`TelemetryError::is_metrics`] when the exporter cannot register in the registry.
    pub fn build(self) -> Result<Metrics, TelemetryError> {
        let registry = self.registry.unwrap_or_default();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .map_err(TelemetryError::metrics)?;
        let provider = SdkMeterProvider::builder()
            .with_reader(exporter)
            .with_resource(self.resource.unwrap_or_else(|| Resource::builder().build()))
            .build();
        let meter = provider.meter_with_scope(
            InstrumentationScope::builder(SCOPE_NAME)
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        let http = HttpMetrics::new(&meter);
        let process = process_gauges(&meter);
        Ok(Metrics {
            inner: Arc::new(Inner {
                registry,
                provider,
                meter,
                http,
                _process: process,
            }),
        })
    }
}

/// When this process started, as well as this module can tell: the first time telemetry was set
/// up, which for a server is within milliseconds of `main`.
fn process_start() -> (SystemTime, Instant) {
    static START: OnceLock<(SystemTime, Instant)> = OnceLock::new();
    *START.get_or_init(|| (SystemTime::now(), Instant::now()))
}

/// Two gauges computed only when scraped: no per-request cost and no `/proc` parsing.
fn process_gauges(meter: &Meter) -> [ObservableGauge<f64>; 2] {
    let (wall, monotonic) = process_start();
    let start_seconds = wall
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let start_time = meter
        .f64_observable_gauge("process.start_time")
        .with_description("Start time of the process since the Unix epoch.")
        .with_unit("s")
        .with_callback(move |observer| observer.observe(start_seconds, &[]))
        .build();
    let uptime = meter
        .f64_observable_gauge("process.uptime")
        .with_description("The time the process has been running.")
        .with_unit("s")
        .with_callback(move |observer| observer.observe(monotonic.elapsed().as_secs_f64(), &[]))
        .build();
    [start_time, uptime]
}

impl Metrics {
    /// A builder, for a shared registry or a resource.
    pub fn builder() -> MetricsBuilder {
        MetricsBuilder::default()
    }

    /// Metrics in a private registry with the default resource.
    ///
    /// # Errors
    ///
    /// See [`MetricsBuilder::build`].
    pub fn new() -> Result<Self, TelemetryError> {
        Self::builder().build()
    }

    /// The HTTP instruments, for [`HttpTelemetryLayer::with_metrics`](super::HttpTelemetryLayer::with_metrics).
    pub fn http(&self) -> HttpMetrics {
        self.inner.http.clone()
    }

    /// The meter of this crate's scope, to create application instruments that are exported with
    /// the rest.
    pub fn meter(&self) -> &Meter {
        &self.inner.meter
    }

    /// The meter provider (for instance to create meters of other scopes).
    pub fn provider(&self) -> &SdkMeterProvider {
        &self.inner.provider
    }

    /// The registry the exporter writes into.
    pub fn registry(&self) -> &prometheus::Registry {
        &self.inner.registry
    }

    /// The current values in the Prometheus text exposition format (version 0.0.4).
    ///
    /// # Errors
    ///
    /// [`prometheus::Error`] when a collected metric cannot be encoded.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::with_capacity(4096);
        TextEncoder::new().encode(&self.inner.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    /// Flushes and shuts down the meter provider; later recordings are dropped.
    pub(crate) fn shutdown(&self) {
        // Already shut down is the only failure, and harmless.
        let _ = self.inner.provider.shutdown();
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("provider", &self.inner.provider)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::RouteLabel;
    use crate::telemetry::route::UNMATCHED_ROUTE;

    fn route(s: &'static str) -> Route {
        let mut ext = http::Extensions::new();
        ext.insert(RouteLabel::from_static(s));
        Route::of(&ext)
    }

    #[test]
    fn histogram_uses_semconv_names_and_buckets() {
        let metrics = Metrics::new().unwrap();
        metrics.http().record(
            &Method::GET,
            &route("/users/{id}"),
            Some(StatusCode::OK),
            Duration::from_millis(30),
        );
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("# TYPE http_server_request_duration_seconds histogram"),
            "{text}"
        );
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("http_server_request_duration_seconds_bucket{")
                    && l.contains("le=\"0.05\"")
            })
            .unwrap();
        assert!(line.contains(r#"http_request_method="GET""#), "{line}");
        assert!(line.contains(r#"http_route="/users/{id}""#), "{line}");
        assert!(
            line.contains(r#"http_response_status_code="200""#),
            "{line}"
        );
        assert!(
            line.ends_with(" 1"),
            "30 ms falls in the 0.05 s bucket: {line}"
        );
        let below = text
            .lines()
            .find(|l| {
                l.starts_with("http_server_request_duration_seconds_bucket{")
                    && l.contains("le=\"0.025\"")
            })
            .unwrap();
        assert!(below.ends_with(" 0"), "{below}");
        assert!(text.contains("le=\"10\""), "{text}");
    }

    /// The exposition without the process gauges (their values move with the clock).
    fn series(metrics: &Metrics) -> Vec<String> {
        let text = metrics.encode().unwrap();
        text.lines()
            .filter(|l| !l.contains("process_"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn bound_handles_record_what_the_sdk_lookup_records() {
        let requests = [
            (Method::GET, "/users/{id}", Some(StatusCode::OK), 3),
            (Method::GET, "/users/{id}", Some(StatusCode::NOT_FOUND), 40),
            (Method::POST, "/users/{id}", Some(StatusCode::OK), 700),
            (Method::GET, "/ping", Some(StatusCode::OK), 1),
            (
                Method::from_bytes(b"BREW").unwrap(),
                UNMATCHED_ROUTE,
                None,
                2,
            ),
            (Method::GET, "/users/{id}", Some(StatusCode::OK), 9),
        ];
        let (bound, looked_up) = (Metrics::new().unwrap(), Metrics::new().unwrap());
        let (http, raw) = (bound.http(), looked_up.http());
        for (method, path, status, ms) in &requests {
            let route = route(path);
            http.record(method, &route, *status, Duration::from_millis(*ms));
            raw.duration.record(
                Duration::from_millis(*ms).as_secs_f64(),
                &attributes(method_label(method), &route, *status),
            );
        }
        let (a, b) = (series(&bound), series(&looked_up));
        assert!(
            a.iter().any(|l| l.contains("status_code=\"404\"")),
            "{a:#?}"
        );
        assert_eq!(a, b);
    }

    #[test]
    fn instruments_on_one_thread_keep_their_own_series() {
        let (first, second) = (Metrics::new().unwrap(), Metrics::new().unwrap());
        let r = route("/x");
        first
            .http()
            .record(&Method::GET, &r, Some(StatusCode::OK), Duration::ZERO);
        second
            .http()
            .record(&Method::GET, &r, Some(StatusCode::OK), Duration::ZERO);
        second
            .http()
            .record(&Method::GET, &r, Some(StatusCode::OK), Duration::ZERO);
        let count = |m: &Metrics| {
            series(m)
                .into_iter()
                .find(|l| l.starts_with("http_server_request_duration_seconds_count{"))
                .unwrap()
        };
        assert!(count(&first).ends_with(" 1"), "{}", count(&first));
        assert!(count(&second).ends_with(" 2"), "{}", count(&second));
    }

    #[test]
    fn a_full_cache_forgets_dropped_instruments_and_stays_bounded() {
        let many = |n: usize| {
            let metrics = Metrics::new().unwrap();
            let http = metrics.http();
            for i in 0..n {
                let r = Route::Label(RouteLabel::new(format!("/r{i}")));
                http.record(&Method::GET, &r, Some(StatusCode::OK), Duration::ZERO);
            }
            metrics
        };
        let len = || BOUND.with(|c| c.borrow().len);
        drop(many(MAX_BOUND_PER_THREAD));
        assert!(len() >= MAX_BOUND_PER_THREAD);
        // The dropped instrument's handles make room for a live one's.
        let live = many(10);
        assert!(len() <= MAX_BOUND_PER_THREAD, "{}", len());
        // Fewer series than the SDK's cardinality limit (2000), which would fold the rest into
        // one overflow series.
        let kept = many(MAX_BOUND_PER_THREAD + 500);
        assert!(len() <= MAX_BOUND_PER_THREAD, "{}", len());
        // Past the cap, requests are still recorded (through the SDK's lookup).
        let text = kept.encode().unwrap();
        let last = format!("http_route=\"/r{}\"", MAX_BOUND_PER_THREAD + 499);
        assert!(text.contains(&last), "{last}");
        assert!(live.encode().unwrap().contains("http_route=\"/r9\""));
    }

    #[test]
    fn unknown_methods_and_errors_are_bounded() {
        let metrics = Metrics::new().unwrap();
        let weird = Method::from_bytes(b"BREW").unwrap();
        metrics.http().record(
            &weird,
            &route(UNMATCHED_ROUTE),
            None,
            Duration::from_millis(1),
        );
        let text = metrics.encode().unwrap();
        assert!(text.contains(r#"http_request_method="_OTHER""#), "{text}");
        assert!(text.contains(r#"error_type="_OTHER""#), "{text}");
        assert!(!text.contains("BREW"), "{text}");
    }

    #[test]
    fn process_gauges_are_exported() {
        let metrics = Metrics::new().unwrap();
        let text = metrics.encode().unwrap();
        let start = text
            .lines()
            .find(|l| l.starts_with("process_start_time_seconds{"))
            .unwrap();
        let value: f64 = start.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(value > 1.6e9, "{start}");
        assert!(text.contains("process_uptime_seconds{"), "{text}");
    }

    #[test]
    fn a_shared_registry_receives_the_metrics() {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::builder()
            .registry(registry.clone())
            .resource(Resource::builder_empty().with_service_name("svc").build())
            .build()
            .unwrap();
        metrics.http().record(
            &Method::POST,
            &route("/x"),
            Some(StatusCode::CREATED),
            Duration::ZERO,
        );
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert!(
            names.contains(&"http_server_request_duration_seconds".to_owned()),
            "{names:?}"
        );
        assert!(
            metrics
                .encode()
                .unwrap()
                .contains(r#"target_info{service_name="svc"}"#)
        );
    }
}
