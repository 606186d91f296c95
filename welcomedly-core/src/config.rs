//! Operator settings for welcomedly-core, as plain data with documented defaults.
//!
//! (from_env parsing and validation: in progress)

use std::time::Duration;

use crate::InstanceId;
use crate::client_ip::TrustedProxies;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogFormat {
    /// One JSON object per line (the default: what log shippers parse).
    #[default]
    Json,
    /// Human-readable, coloured when the output is a terminal (for development).
    Pretty,
}

/// Settings of welcomedly-core for one instance. Every field has a documented default
/// ([`CoreConfig::default`]); [`CoreConfig::from_env`] reads them from environment variables.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CoreConfig {
    /// `service.name` of traces and metrics. Env `OTEL_SERVICE_NAME`; default `"welcomedly"`.
    pub service_name: String,
    /// `service.version`. Env `WELCOMEDLY_SERVICE_VERSION`; default this crate's version.
    pub service_version: String,
    /// This instance's id. Env `WELCOMEDLY_INSTANCE_ID`; default [`InstanceId::generate`].
    pub instance_id: InstanceId,
    /// TCP port to listen on. Env `PORT`; default `3000`.
    pub port: u16,
    /// Proxies whose forwarding headers are believed. Env `TRUSTED_PROXIES` (comma-separated
    /// CIDRs or addresses); default none (only the peer address counts).
    pub trusted_proxies: TrustedProxies,
    /// Log format. Env `WELCOMEDLY_LOG_FORMAT` (`json` or `pretty`); default `json`.
    pub log_format: LogFormat,
    /// Log filter directives. Env `RUST_LOG`; default `"info"`.
    pub log_filter: String,
    /// OTLP/HTTP endpoint for traces. Env `OTEL_EXPORTER_OTLP_ENDPOINT`; default none (no exporter).
    pub otlp_endpoint: Option<String>,
    /// After SIGTERM, how long the server keeps accepting connections while readiness already
    /// answers 503 (so the load balancer notices first). Env `WELCOMEDLY_DRAIN_GRACE_MS`; default 5 s.
    pub drain_grace: Duration,
    /// After the grace period, how long in-flight requests and open streams may take before they are
    /// cut. Env `WELCOMEDLY_DRAIN_DEADLINE_MS`; default 30 s.
    pub drain_deadline: Duration,
    /// Timeout of each health check. Env `WELCOMEDLY_HEALTH_TIMEOUT_MS`; default 2 s.
    pub health_check_timeout: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            service_name: "welcomedly".to_owned(),
            service_version: env!("CARGO_PKG_VERSION").to_owned(),
            instance_id: InstanceId::generate(),
            port: 3000,
            trusted_proxies: TrustedProxies::default(),
            log_format: LogFormat::Json,
            log_filter: "info".to_owned(),
            otlp_endpoint: None,
            drain_grace: Duration::from_secs(5),
            drain_deadline: Duration::from_secs(30),
            health_check_timeout: Duration::from_secs(2),
        }
    }
}
