//! The error of telemetry setup.

use std::error::Error as StdError;
use std::fmt;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Telemetry could not be set up.
///
/// Returned by [`Telemetry::init`](super::Telemetry::init),
/// [`Telemetry::dispatch`](super::Telemetry::dispatch) and
/// [`MetricsBuilder::build`](super::MetricsBuilder::build). Ask what went wrong with the `is_*`
/// predicates; the underlying error, if any, is the [`source`](StdError::source).
pub struct TelemetryError {
    kind: Kind,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    AlreadyInitialized,
    InvalidFilter(String),
    InvalidEndpoint(String),
    Exporter,
    Metrics,
}

impl TelemetryError {
    pub(crate) fn already_initialized(source: Option<BoxError>) -> Self {
        Self {
            kind: Kind::AlreadyInitialized,
            source,
        }
    }

    pub(crate) fn invalid_filter(filter: &str, source: impl Into<BoxError>) -> Self {
        Self {
            kind: Kind::InvalidFilter(filter.to_owned()),
            source: Some(source.into()),
        }
    }

    pub(crate) fn invalid_endpoint(endpoint: &str, source: Option<BoxError>) -> Self {
        Self {
            // Shown in messages: never with a password.
            kind: Kind::InvalidEndpoint(crate::redact::redact_url(endpoint).into_owned()),
            source,
        }
    }

    pub(crate) fn exporter(source: impl Into<BoxError>) -> Self {
        Self {
            kind: Kind::Exporter,
            source: Some(source.into()),
        }
    }

    pub(crate) fn metrics(source: impl Into<BoxError>) -> Self {
        Self {
            kind: Kind::Metrics,
            source: Some(source.into()),
        }
    }

    /// A global `tracing` subscriber was already installed (by an earlier
    /// [`Telemetry::init`](super::Telemetry::init) or by other code).
    pub fn is_already_initialized(&self) -> bool {
        self.kind == Kind::AlreadyInitialized
    }

    /// The log filter (`RUST_LOG`) could not be parsed.
    pub fn is_invalid_filter(&self) -> bool {
        matches!(self.kind, Kind::InvalidFilter(_))
    }

    /// The OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`) is not a valid `http(s)://` URL.
    pub fn is_invalid_endpoint(&self) -> bool {
        matches!(self.kind, Kind::InvalidEndpoint(_))
    }

    /// The OTLP span exporter could not be built.
    pub fn is_exporter(&self) -> bool {
        self.kind == Kind::Exporter
    }

    /// The Prometheus exporter could not be built or registered.
    pub fn is_metrics(&self) -> bool {
        self.kind == Kind::Metrics
    }
}

impl fmt::Display for TelemetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::AlreadyInitialized => f.write_str(
                "telemetry is already initialised: a global tracing subscriber is installed; \
                 call `Telemetry::init` once per process and keep its guard",
            ),
            Kind::InvalidFilter(filter) => write!(
                f,
                "invalid log filter `{filter}` (RUST_LOG): expected directives such as \
                 `info` or `info,my_crate=debug,hyper=warn`"
            ),
            Kind::InvalidEndpoint(endpoint) => write!(
                f,
                "invalid OTLP endpoint `{endpoint}` (OTEL_EXPORTER_OTLP_ENDPOINT): expected the \
                 base URL of an OTLP/HTTP collector such as `http://localhost:4318`, or unset it \
                 to export no traces"
            ),
            Kind::Exporter => f.write_str(
                "could not build the OTLP span exporter; check OTEL_EXPORTER_OTLP_* variables \
                 or unset OTEL_EXPORTER_OTLP_ENDPOINT to export no traces",
            ),
            Kind::Metrics => f.write_str(
                "could not set up the Prometheus metrics exporter; a metric of the same name may \
                 already be registered in the `prometheus::Registry` given to `Metrics`",
            ),
        }
    }
}

impl fmt::Debug for TelemetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl StdError for TelemetryError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let e = TelemetryError::invalid_filter("==", "bad");
        assert!(e.is_invalid_filter());
        assert!(!e.is_already_initialized());
        assert!(e.to_string().contains("`==`"));
        assert!(e.source().is_some());
        let e = TelemetryError::already_initialized(None);
        assert!(e.is_already_initialized());
        assert!(e.to_string().contains("once per process"));
    }
}
