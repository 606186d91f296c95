//! [`Telemetry`]: one builder call that installs logging, tracing, trace propagation and metrics.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Dispatch;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use super::error::TelemetryError;
use super::json::{JsonFields, JsonFormat};
use super::layer::HttpTelemetryLayer;
use super::metrics::Metrics;
use super::trace_ids::LocalTraceIds;
use crate::InstanceId;
use crate::config::{CoreConfig, LogFormat};

/// Whether [`Telemetry::init`] succeeded in this process.
static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// How long the guard waits for the last spans to be exported at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

const SCOPE_NAME: &str = "welcomedly-core";

/// Telemetry settings; [`init`](Self::init) installs them for the whole process.
///
/// Defaults ([`Telemetry::new`]): JSON logs, filter `"info"`, no OTLP export, a generated
/// instance id and this crate's version as `service.version`. [`Telemetry::from_config`] takes
/// them from a [`CoreConfig`] (that is, from the environment).
#[derive(Debug, Clone)]
#[must_use]
pub struct Telemetry {
    service_name: String,
    service_version: String,
    instance_id: InstanceId,
    log_format: LogFormat,
    log_filter: String,
    otlp_endpoint: Option<String>,
    access_log: Option<tracing::Level>,
}

impl Telemetry {
    /// Settings for `service_name` with the defaults above.
    pub fn new(service_name: impl Into<String>) -> Self {
        Self {
            service_name: service_name.into(),
            service_version: env!("CARGO_PKG_VERSION").to_owned(),
            instance_id: InstanceId::generate(),
            log_format: LogFormat::Json,
            log_filter: "info".to_owned(),
            otlp_endpoint: None,
            access_log: None,
        }
    }

    /// Settings taken from `config` (`service_name`, `service_version`, `instance_id`,
    /// `log_format`, `log_filter`, `otlp_endpoint`, `access_log`).
    pub fn from_config(config: &CoreConfig) -> Self {
        Self {
            service_name: config.service_name.clone(),
            service_version: config.service_version.clone(),
            instance_id: config.instance_id.clone(),
            log_format: config.log_format,
            log_filter: config.log_filter.clone(),
            otlp_endpoint: config.otlp_endpoint.clone(),
            access_log: config.access_log,
        }
    }

    /// The level of the access log written by [`TelemetryGuard::http_layer`] (one line per
    /// request), or `None` for none. Default none; `from_config` takes `WELCOMEDLY_ACCESS_LOG`.
    pub fn access_log(mut self, level: Option<tracing::Level>) -> Self {
        self.access_log = level;
        self
    }

    /// The `service.name` resource attribute.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self
    }

    /// The `service.version` resource attribute.
    pub fn service_version(mut self, version: impl Into<String>) -> Self {
        self.service_version = version.into();
        self
    }

    /// The `service.instance.id` resource attribute, also on every request span.
    pub fn instance_id(mut self, id: InstanceId) -> Self {
        self.instance_id = id;
        self
    }

    /// JSON or pretty logs.
    pub fn log_format(mut self, format: LogFormat) -> Self {
        self.log_format = format;
        self
    }

    /// `tracing` filter directives, `RUST_LOG` syntax (such as `info,my_crate=debug`). The filter
    /// applies to spans too: a span filtered out is neither logged nor exported.
    pub fn log_filter(mut self, directives: impl Into<String>) -> Self {
        self.log_filter = directives.into();
        self
    }

    /// The base URL of an OTLP/HTTP collector (such as `http://localhost:4318`; spans go to
    /// `/v1/traces` under it), or `None` to export no spans. Trace ids are generated and
    /// propagated either way, so logs can be joined to upstream traces (without an endpoint the
    /// HTTP layer makes them, and no OpenTelemetry span is built: see
    /// [`dispatch_without_export`](Self::dispatch_without_export)).
    pub fn otlp_endpoint(mut self, endpoint: Option<String>) -> Self {
        self.otlp_endpoint = endpoint;
        self
    }

    /// The OpenTelemetry resource: `service.name`, `service.instance.id`, `service.version`
    /// (plus what `OTEL_RESOURCE_ATTRIBUTES` adds).
    pub fn resource(&self) -> Resource {
        Resource::builder()
            .with_service_name(self.service_name.clone())
            .with_attributes([
                KeyValue::new("service.instance.id", self.instance_id.to_string()),
                KeyValue::new("service.version", self.service_version.clone()),
            ])
            .build()
    }

    /// Installs, for the whole process: the `tracing` subscriber (filter, JSON or pretty logs on
    /// stdout, OpenTelemetry spans when an OTLP endpoint is set), the W3C TraceContext
    /// propagator, the tracer provider (exporting over OTLP/HTTP in batches when an endpoint is
    /// set) and the meter provider feeding the returned guard's [`Metrics`].
    ///
    /// Nothing here connects to the collector, so a missing collector neither fails nor delays
    /// startup; export errors are logged later. Keep the guard until the end of `main`: dropping
    /// it flushes the last spans.
    ///
    /// # Errors
    ///
    /// [`TelemetryError::is_already_initialized`] when called twice (or when other code installed
    /// a global subscriber), [`is_invalid_filter`](TelemetryError::is_invalid_filter),
    /// [`is_invalid_endpoint`](TelemetryError::is_invalid_endpoint),
    /// [`is_exporter`](TelemetryError::is_exporter), [`is_metrics`](TelemetryError::is_metrics).
    pub fn init(self) -> Result<TelemetryGuard, TelemetryError> {
        // Checked first so that a second call spawns no exporter thread before failing.
        if INITIALIZED.load(Ordering::Acquire) {
            return Err(TelemetryError::already_initialized(None));
        }
        let resource = self.resource();
        let tracer_provider = self.tracer_provider(resource.clone())?;
        let metrics = Metrics::builder().resource(resource).build()?;
        let ansi = std::io::stdout().is_terminal();
        // Spans go to the OpenTelemetry layer only when they are exported; see `trace_ids`.
        let spans = self.endpoint().is_some().then_some(&tracer_provider);
        let dispatch = self.build_dispatch(std::io::stdout, spans, ansi)?;
        if let Err(error) = tracing::dispatcher::set_global_default(dispatch) {
            let _ = tracer_provider.shutdown();
            metrics.shutdown();
            return Err(TelemetryError::already_initialized(Some(Box::new(error))));
        }
        INITIALIZED.store(true, Ordering::Release);
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(tracer_provider.clone());
        opentelemetry::global::set_meter_provider(metrics.provider().clone());
        Ok(TelemetryGuard {
            tracer_provider,
            metrics,
            instance_id: self.instance_id,
            access_log: self.access_log,
        })
    }

    /// The subscriber [`init`](Self::init) would install with an OTLP endpoint, writing log
    /// lines to `writer` and spans to `tracer_provider`, without installing anything: for tests
    /// (with `tracing::dispatcher::with_default`) and programs that manage their own dispatch.
    ///
    /// # Errors
    ///
    /// [`TelemetryError::is_invalid_filter`] when the log filter does not parse.
    pub fn dispatch<W>(
        &self,
        writer: W,
        tracer_provider: &SdkTracerProvider,
    ) -> Result<Dispatch, TelemetryError>
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        self.build_dispatch(writer, Some(tracer_provider), false)
    }

    /// The subscriber [`init`](Self::init) would install without an OTLP endpoint, writing log
    /// lines to `writer`, without installing anything. It has no OpenTelemetry layer, since no
    /// span would be exported: [`HttpTelemetryLayer`] makes the trace and span ids of each
    /// request itself (from the incoming `traceparent` when there is one), so log lines carry
    /// them all the same, and makes them the current OpenTelemetry context while the request
    /// is served, so outgoing requests can propagate them.
    ///
    /// # Errors
    ///
    /// [`TelemetryError::is_invalid_filter`] when the log filter does not parse.
    pub fn dispatch_without_export<W>(&self, writer: W) -> Result<Dispatch, TelemetryError>
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        self.build_dispatch(writer, None, false)
    }

    fn build_dispatch<W>(
        &self,
        writer: W,
        tracer_provider: Option<&SdkTracerProvider>,
        ansi: bool,
    ) -> Result<Dispatch, TelemetryError>
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        let filter = EnvFilter::try_new(&self.log_filter)
            .map_err(|e| TelemetryError::invalid_filter(&self.log_filter, e))?;
        let logs: Box<dyn Layer<Registry> + Send + Sync> = match self.log_format {
            // The span list carries the fields of the current span and all its parents
            // (request_id, instance_id, trace_id, ...) on every line.
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields)
                .event_format(JsonFormat)
                .with_writer(writer)
                .boxed(),
            LogFormat::Pretty => tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(writer)
                .boxed(),
        };
        let spans = tracer_provider.map(|provider| {
            let tracer = provider.tracer_with_scope(
                InstrumentationScope::builder(SCOPE_NAME)
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            );
            // Attributes built for every span that no dashboard of ours reads, off: busy/idle
            // time (four clock reads per request), the source location (three attributes naming
            // the middleware's own file for every request span) and the thread (a thread name
            // copied into a new `String` per span; async tasks hop threads anyway).
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_tracked_inactivity(false)
                .with_location(false)
                .with_threads(false)
        });
        let local_trace_ids = LocalTraceIds(spans.is_none());
        let subscriber = Registry::default()
            .with(logs)
            .with(spans)
            .with(filter)
            .with(local_trace_ids);
        Ok(Dispatch::new(subscriber))
    }

    /// The OTLP endpoint, when one is set.
    fn endpoint(&self) -> Option<&str> {
        self.otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
    }

    fn tracer_provider(&self, resource: Resource) -> Result<SdkTracerProvider, TelemetryError> {
        let builder = SdkTracerProvider::builder().with_resource(resource);
        let Some(endpoint) = self.endpoint() else {
            return Ok(builder.build());
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url(endpoint)?)
            .build()
            .map_err(TelemetryError::exporter)?;
        Ok(builder.with_batch_exporter(exporter).build())
    }
}

/// The signal URL for a base endpoint, as OTLP defines `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn traces_url(endpoint: &str) -> Result<String, TelemetryError> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| TelemetryError::invalid_endpoint(endpoint, Some(Box::new(e))))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(TelemetryError::invalid_endpoint(endpoint, None));
    }
    Ok(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
}

/// Keeps telemetry running; dropping it flushes and shuts down the tracer provider (exporting
/// the last spans, waiting at most 5 s) and the meter provider.
#[derive(Debug)]
#[must_use = "dropping the guard shuts telemetry down at once; keep it until the end of main"]
pub struct TelemetryGuard {
    tracer_provider: SdkTracerProvider,
    metrics: Metrics,
    instance_id: InstanceId,
    access_log: Option<tracing::Level>,
}

impl TelemetryGuard {
    /// The process's metrics, to serve at `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The instance id given to [`Telemetry`].
    pub fn instance_id(&self) -> &InstanceId {
        &self.instance_id
    }

    /// The tracer provider (also installed as the global one).
    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.tracer_provider
    }

    /// An [`HttpTelemetryLayer`] for this instance, recording into [`metrics`](Self::metrics),
    /// writing the access log at the level [`Telemetry::access_log`] set.
    pub fn http_layer(&self) -> HttpTelemetryLayer {
        let layer =
            HttpTelemetryLayer::new(self.instance_id.clone()).with_metrics(self.metrics.http());
        match self.access_log {
            Some(level) => layer.with_response_event(level),
            None => layer,
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.tracer_provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(%error, "spans may have been lost while shutting down telemetry");
        }
        self.metrics.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            traces_url("http://localhost:4318").unwrap(),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otel.example:4318/").unwrap(),
            "https://otel.example:4318/v1/traces"
        );
        assert!(
            traces_url("localhost:4318")
                .unwrap_err()
                .is_invalid_endpoint()
        );
        assert!(traces_url("not a url").unwrap_err().is_invalid_endpoint());
    }

    #[test]
    fn a_bad_filter_is_reported() {
        let provider = SdkTracerProvider::builder().build();
        let err = Telemetry::new("t")
            .log_filter("info,[")
            .dispatch(std::io::sink, &provider)
            .unwrap_err();
        assert!(err.is_invalid_filter(), "{err}");
    }

    #[test]
    fn resource_has_the_service_attributes() {
        let resource = Telemetry::new("svc")
            .service_version("1.2.3")
            .instance_id(InstanceId::new("i-1"))
            .resource();
        let get = |k: &'static str| {
            resource
                .get(&opentelemetry::Key::from_static_str(k))
                .map(|v| v.to_string())
        };
        assert_eq!(get("service.name").as_deref(), Some("svc"));
        assert_eq!(get("service.version").as_deref(), Some("1.2.3"));
        assert_eq!(get("service.instance.id").as_deref(), Some("i-1"));
    }

    #[test]
    fn an_exporter_to_an_absent_collector_builds_at_once() {
        let started = std::time::Instant::now();
        let provider = Telemetry::new("t")
            .otlp_endpoint(Some("http://127.0.0.1:9".to_owned()))
            .tracer_provider(Resource::builder_empty().build())
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        // Shutting down with nothing buffered must not hang on the absent collector either.
        provider
            .shutdown_with_timeout(Duration::from_secs(2))
            .unwrap();
    }
}
