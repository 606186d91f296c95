//! Operator settings for welcomedly-core, as plain data with documented defaults, loadable from
//! environment variables with validation.
//!
//! [`CoreConfig::from_env`] reads the variables named in [`CoreConfig`]'s field docs. Surrounding
//! whitespace is ignored and an empty (or blank) variable counts as unset, so `PORT=` in a
//! deployment manifest means "the default". Every variable is checked before the function
//! returns, and a [`ConfigError`] lists each bad one with its value and what is expected, so one
//! failed start is enough to fix them all.
//!
//! ```
//! use std::collections::HashMap;
//! use std::time::Duration;
//! use welcomedly_core::config::{CoreConfig, LogFormat};
//!
//! // `from_lookup` is `from_env` with the environment passed in (handy in tests).
//! let env = HashMap::from([
//!     ("PORT", "8080"),
//!     ("TRUSTED_PROXIES", "10.0.0.0/8, ::1"),
//!     ("WELCOMEDLY_LOG_FORMAT", "Pretty"),
//!     ("WELCOMEDLY_DRAIN_GRACE_MS", "0"),
//! ]);
//! let config = CoreConfig::from_lookup(|name| env.get(name).map(|v| v.to_string()))?;
//! assert_eq!(config.port, 8080);
//! assert_eq!(config.log_format, LogFormat::Pretty);
//! assert_eq!(config.drain_grace, Duration::ZERO);
//! assert_eq!(config.drain_deadline, Duration::from_secs(30)); // unset: the default
//!
//! let err = CoreConfig::from_lookup(|name| (name == "PORT").then(|| "abc".to_owned()))
//!     .unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     r#"PORT="abc" is not a valid port: expected an integer 1-65535"#
//! );
//! # Ok::<(), welcomedly_core::config::ConfigError>(())
//! ```

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::Duration;

mod env;

pub use env::{EnvReader, parse_millis};

use crate::InstanceId;
use crate::client_ip::{ForwardingHeader, ParseForwardingHeaderError, TrustedProxies};
use crate::drain::{
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
};

/// Environment variable names read by [`CoreConfig::from_env`].
mod var {
    pub(super) const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
    pub(super) const SERVICE_VERSION: &str = "WELCOMEDLY_SERVICE_VERSION";
    pub(super) const INSTANCE_ID: &str = "WELCOMEDLY_INSTANCE_ID";
    pub(super) const PORT: &str = "PORT";
    pub(super) const TRUSTED_PROXIES: &str = "TRUSTED_PROXIES";
    pub(super) const TRUSTED_PROXY_HEADER: &str = "TRUSTED_PROXY_HEADER";
    pub(super) const LOG_FORMAT: &str = "WELCOMEDLY_LOG_FORMAT";
    pub(super) const LOG_FILTER: &str = "RUST_LOG";
    pub(super) const OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    pub(super) const DRAIN_GRACE: &str = "WELCOMEDLY_DRAIN_GRACE_MS";
    pub(super) const DRAIN_DEADLINE: &str = "WELCOMEDLY_DRAIN_DEADLINE_MS";
    pub(super) const HEALTH_TIMEOUT: &str = "WELCOMEDLY_HEALTH_TIMEOUT_MS";
    pub(super) const ACCESS_LOG: &str = "WELCOMEDLY_ACCESS_LOG";
    pub(super) const HEADER_READ_TIMEOUT: &str = "WELCOMEDLY_HEADER_READ_TIMEOUT_MS";
    pub(super) const IDLE_TIMEOUT: &str = "WELCOMEDLY_IDLE_TIMEOUT_MS";
    pub(super) const MAX_CONNECTIONS: &str = "WELCOMEDLY_MAX_CONNECTIONS";
    pub(super) const MAX_CONNECTIONS_PER_CLIENT: &str = "WELCOMEDLY_MAX_CONNECTIONS_PER_CLIENT";
}

const DEFAULT_SERVICE_NAME: &str = "welcomedly";
const DEFAULT_PORT: u16 = 3000;
const DEFAULT_LOG_FILTER: &str = "info";
const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(5);
const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(30);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_ACCESS_LOG: Option<tracing::Level> = Some(tracing::Level::INFO);
/// The longest accepted instance id, the same bound as a request id.
const MAX_INSTANCE_ID_LEN: usize = 128;

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
    /// The forwarding header the trusted proxies write, the only one read. Env
    /// `TRUSTED_PROXY_HEADER` (`x-forwarded-for` or `forwarded`); default `x-forwarded-for`
    /// (NGINX, ALB, Envoy). Never detected from requests: see [`ForwardingHeader`].
    pub trusted_proxy_header: ForwardingHeader,
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
    /// The level of the access log, one line per HTTP request (method, route, status, latency,
    /// request id, trace id, instance id), or `None` for no access log. Env
    /// `WELCOMEDLY_ACCESS_LOG` (`off`, `error`, `warn`, `info`, `debug`, `trace`); default
    /// `info`. Applied by [`TelemetryGuard::http_layer`](crate::telemetry::TelemetryGuard::http_layer).
    pub access_log: Option<tracing::Level>,
    /// How long a new connection may take to send its first request's head before it is
    /// closed. Env `WELCOMEDLY_HEADER_READ_TIMEOUT_MS`; default 10 s. See
    /// [`DrainConfig`](crate::drain::DrainConfig).
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may stay idle between requests before it is closed;
    /// keep it longer than the load balancer's upstream idle timeout (NGINX `keepalive_timeout`,
    /// 60 s by default). Env `WELCOMEDLY_IDLE_TIMEOUT_MS`; default 75 s.
    pub idle_timeout: Duration,
    /// The most connections open at once (the excess gets a 503); lowered at start to fit under
    /// the open-file limit. Env `WELCOMEDLY_MAX_CONNECTIONS`; default 10 000.
    pub max_connections: NonZeroUsize,
    /// The most connections open at once from one client address (IPv4, or IPv6 /64); the
    /// `trusted_proxies` are exempt. Env `WELCOMEDLY_MAX_CONNECTIONS_PER_CLIENT`; default 256.
    pub max_connections_per_client: NonZeroUsize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            service_version: env!("CARGO_PKG_VERSION").to_owned(),
            instance_id: InstanceId::generate(),
            port: DEFAULT_PORT,
            trusted_proxies: TrustedProxies::default(),
            trusted_proxy_header: ForwardingHeader::default(),
            log_format: LogFormat::Json,
            log_filter: DEFAULT_LOG_FILTER.to_owned(),
            otlp_endpoint: None,
            drain_grace: DEFAULT_DRAIN_GRACE,
            drain_deadline: DEFAULT_DRAIN_DEADLINE,
            health_check_timeout: DEFAULT_HEALTH_TIMEOUT,
            access_log: DEFAULT_ACCESS_LOG,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
        }
    }
}

impl FromStr for LogFormat {
    type Err = ParseLogFormatError;

    /// `json` or `pretty`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("json") {
            Ok(Self::Json)
        } else if s.eq_ignore_ascii_case("pretty") {
            Ok(Self::Pretty)
        } else {
            Err(ParseLogFormatError(()))
        }
    }
}

/// The input of [`LogFormat::from_str`] is neither `json` nor `pretty`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseLogFormatError(());

impl fmt::Display for ParseLogFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a log format: expected json or pretty")
    }
}

impl std::error::Error for ParseLogFormatError {}

impl CoreConfig {
    /// Reads the configuration from the process environment (variables named in the field docs;
    /// unset, empty or blank ones take their default) and validates every variable.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] listing every variable whose value cannot be used (including one that is
    /// not valid Unicode), each with its value and what is expected.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_reader(EnvReader::from_env())
    }

    /// [`from_env`](Self::from_env) with the environment given as a function from a variable
    /// name to its value, so tests never have to mutate the process environment.
    ///
    /// # Errors
    ///
    /// As [`from_env`](Self::from_env).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::from_reader(EnvReader::from_lookup(lookup))
    }

    /// Reads the configuration through `env`, which may already have read (and collected
    /// problems with) other components' variables, so one error lists every bad variable of the
    /// whole service.
    ///
    /// # Errors
    ///
    /// As [`from_env`](Self::from_env), including the problems `env` collected before.
    pub fn from_reader(mut env: EnvReader<'_>) -> Result<Self, ConfigError> {
        let config = Self::read(&mut env);
        env.finish(config)
    }

    /// Reads every variable of the configuration through `env`, recording problems there and
    /// taking the default for each bad variable; [`EnvReader::finish`] reports them.
    pub fn read(env: &mut EnvReader<'_>) -> Self {
        Self {
            service_name: env.read(var::SERVICE_NAME, DEFAULT_SERVICE_NAME.to_owned(), |v| {
                printable(v).ok_or("is not a service name: expected printable characters")
            }),
            service_version: env.read(
                var::SERVICE_VERSION,
                env!("CARGO_PKG_VERSION").to_owned(),
                |v| printable(v).ok_or("is not a version: expected printable characters"),
            ),
            // Read as an `Option` so the default id is generated (which reads the host name)
            // only when it is needed.
            instance_id: env
                .read(var::INSTANCE_ID, None, |v| {
                    let visible = v.bytes().all(|b| b.is_ascii_graphic());
                    (visible && v.len() <= MAX_INSTANCE_ID_LEN)
                        .then(|| Some(InstanceId::new(v)))
                        .ok_or(
                            "is not a valid instance id: expected 1-128 visible ASCII characters \
                             (no spaces), such as a pod name",
                        )
                })
                .unwrap_or_else(InstanceId::generate),
            port: env.read(var::PORT, DEFAULT_PORT, |v| {
                digits(v)
                    .and_then(|v| v.parse::<u16>().ok())
                    .filter(|p| *p != 0)
                    .ok_or("is not a valid port: expected an integer 1-65535")
            }),
            trusted_proxies: env.read(var::TRUSTED_PROXIES, TrustedProxies::default(), |v| {
                v.parse().map_err(|e| {
                    format!(
                        "is not a list of trusted proxy networks: entry {e}, in a \
                         comma-separated list"
                    )
                })
            }),
            trusted_proxy_header: env.read(
                var::TRUSTED_PROXY_HEADER,
                ForwardingHeader::default(),
                |v| {
                    v.parse()
                        .map_err(|e: ParseForwardingHeaderError| format!("is {e}"))
                },
            ),
            log_format: env.read(var::LOG_FORMAT, LogFormat::default(), |v| {
                v.parse()
                    .map_err(|e: ParseLogFormatError| format!("is {e}"))
            }),
            log_filter: env.read(var::LOG_FILTER, DEFAULT_LOG_FILTER.to_owned(), |v| {
                // Checked here so that a typo fails at startup with the variable named, rather
                // than silently logging nothing.
                tracing_subscriber::EnvFilter::try_new(v)
                    .map(|_| v.to_owned())
                    .map_err(|e| {
                        format!(
                            "is not a log filter ({e}): expected directives such as info or \
                             my_crate=debug,tower_http=warn"
                        )
                    })
            }),
            otlp_endpoint: env.read(var::OTLP_ENDPOINT, None, |v| {
                let uri: http::Uri = v.parse().map_err(|_| OTLP_EXPECTED)?;
                let http = matches!(uri.scheme_str(), Some("http" | "https"));
                let host = uri.host().is_some_and(|h| !h.is_empty());
                (http && host)
                    .then(|| Some(v.to_owned()))
                    .ok_or(OTLP_EXPECTED)
            }),
            drain_grace: env.read(var::DRAIN_GRACE, DEFAULT_DRAIN_GRACE, |v| {
                millis(v).ok_or(
                    "is not a duration: expected a whole number of milliseconds, such as 5000",
                )
            }),
            drain_deadline: env.read(var::DRAIN_DEADLINE, DEFAULT_DRAIN_DEADLINE, |v| {
                millis(v).filter(|d| !d.is_zero()).ok_or(
                    "is not a usable deadline: expected a whole number of milliseconds greater \
                     than 0, such as 30000",
                )
            }),
            health_check_timeout: env.read(var::HEALTH_TIMEOUT, DEFAULT_HEALTH_TIMEOUT, |v| {
                millis(v).filter(|d| !d.is_zero()).ok_or(
                    "is not a usable timeout: expected a whole number of milliseconds greater \
                     than 0, such as 2000",
                )
            }),
            access_log: env.read(var::ACCESS_LOG, DEFAULT_ACCESS_LOG, |v| {
                if v.eq_ignore_ascii_case("off") {
                    return Ok(None);
                }
                v.parse::<tracing::Level>().map(Some).map_err(|_| {
                    "is not an access-log level: expected off, error, warn, info, debug or trace"
                })
            }),
            header_read_timeout: env.read(
                var::HEADER_READ_TIMEOUT,
                DEFAULT_HEADER_READ_TIMEOUT,
                |v| {
                    millis(v).filter(|d| !d.is_zero()).ok_or(
                        "is not a usable timeout: expected a whole number of milliseconds \
                         greater than 0, such as 10000",
                    )
                },
            ),
            idle_timeout: env.read(var::IDLE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, |v| {
                millis(v).filter(|d| !d.is_zero()).ok_or(
                    "is not a usable timeout: expected a whole number of milliseconds greater \
                     than 0 and longer than the load balancer's keep-alive timeout, such as 75000",
                )
            }),
            max_connections: env.read(var::MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS, |v| {
                count(v).ok_or(
                    "is not a connection cap: expected a whole number greater than 0, such as \
                     10000",
                )
            }),
            max_connections_per_client: env.read(
                var::MAX_CONNECTIONS_PER_CLIENT,
                DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
                |v| {
                    count(v).ok_or(
                        "is not a connection cap: expected a whole number greater than 0, such \
                         as 256",
                    )
                },
            ),
        }
    }
}

const OTLP_EXPECTED: &str = "is not an OTLP endpoint: expected an http:// or https:// URL such as http://otel-collector:4318";

/// `value` when it holds no control characters.
fn printable(value: &str) -> Option<String> {
    (!value.chars().any(char::is_control)).then(|| value.to_owned())
}

/// `value` when it is only ASCII digits (`u64::from_str` would also take a leading `+`).
fn digits(value: &str) -> Option<&str> {
    value.bytes().all(|b| b.is_ascii_digit()).then_some(value)
}

fn millis(value: &str) -> Option<Duration> {
    parse_millis(value)
}

/// A whole number greater than 0 (digits only).
fn count(value: &str) -> Option<NonZeroUsize> {
    digits(value)?.parse().ok()
}

/// Environment variables hold values [`CoreConfig::from_env`] cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// One variable is invalid.
    Invalid(InvalidVariable),
    /// Several variables are invalid, in the order of [`CoreConfig`]'s fields.
    Several(Vec<InvalidVariable>),
}

impl ConfigError {
    /// Every invalid variable (at least one).
    pub fn invalid_variables(&self) -> &[InvalidVariable] {
        match self {
            Self::Invalid(one) => std::slice::from_ref(one),
            Self::Several(all) => all,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(one) => fmt::Display::fmt(one, f),
            Self::Several(all) => {
                write!(f, "{} environment variables are invalid: ", all.len())?;
                for (i, one) in all.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    fmt::Display::fmt(one, f)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// One environment variable whose value cannot be used: its name, the value, and what is wrong
/// and expected. Displayed as, for instance,
/// `PORT="abc" is not a valid port: expected an integer 1-65535`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidVariable {
    pub(super) variable: &'static str,
    pub(super) value: String,
    pub(super) problem: String,
}

impl InvalidVariable {
    /// The variable's name, such as `PORT`.
    pub fn variable(&self) -> &'static str {
        self.variable
    }

    /// The value found (with invalid UTF-8 replaced by `�`), as is: it may hold a credential.
    /// Display the error (which redacts URL passwords) rather than this value.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// What is wrong and what is expected, such as
    /// `is not a valid port: expected an integer 1-65535`.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

/// Values longer than this are cut in messages, so a pasted certificate does not flood the log.
const MAX_SHOWN_CHARS: usize = 80;

impl fmt::Display for InvalidVariable {
    /// The value is shown with the password of any URL in it replaced (see
    /// [`redact_url`](crate::redact::redact_url)): this message reaches terminals and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = crate::redact::redact_url(&self.value);
        match value.char_indices().nth(MAX_SHOWN_CHARS) {
            Some((cut, _)) => write!(
                f,
                "{}={:?}… ({} bytes) {}",
                self.variable,
                value.get(..cut).unwrap_or_default(),
                value.len(),
                self.problem
            ),
            None => write!(f, "{}={:?} {}", self.variable, value, self.problem),
        }
    }
}

impl std::error::Error for InvalidVariable {}

#[cfg(test)]
mod tests {

    use super::*;
    use std::collections::HashMap;
    use std::net::IpAddr;

    fn load(vars: &[(&str, &str)]) -> Result<CoreConfig, ConfigError> {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        CoreConfig::from_lookup(|name| env.get(name).cloned())
    }

    /// The one error message produced by setting `name` to `value`.
    fn error(name: &str, value: &str) -> String {
        let err = load(&[(name, value)]).unwrap_err();
        let [one] = err.invalid_variables() else {
            panic!("expected one invalid variable, got {err}");
        };
        assert_eq!(one.variable(), name);
        assert_eq!(one.value(), value);
        assert_eq!(err.to_string(), one.to_string());
        err.to_string()
    }

    #[test]
    fn nothing_set_gives_the_defaults() {
        let c = load(&[]).unwrap();
        let d = CoreConfig::default();
        assert_eq!(c.service_name, "welcomedly");
        assert_eq!(c.service_version, d.service_version);
        assert_eq!(c.port, 3000);
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.log_filter, "info");
        assert_eq!(c.otlp_endpoint, None);
        assert_eq!(c.drain_grace, Duration::from_secs(5));
        assert_eq!(c.drain_deadline, Duration::from_secs(30));
        assert_eq!(c.health_check_timeout, Duration::from_secs(2));
        assert!(!c.instance_id.as_str().is_empty());
    }

    #[test]
    fn empty_and_blank_variables_count_as_unset() {
        let names = [
            var::SERVICE_NAME,
            var::SERVICE_VERSION,
            var::INSTANCE_ID,
            var::PORT,
            var::TRUSTED_PROXIES,
            var::TRUSTED_PROXY_HEADER,
            var::LOG_FORMAT,
            var::LOG_FILTER,
            var::OTLP_ENDPOINT,
            var::DRAIN_GRACE,
            var::DRAIN_DEADLINE,
            var::HEALTH_TIMEOUT,
            var::ACCESS_LOG,
        ];
        for blank in ["", "  ", "\t"] {
            let vars: Vec<_> = names.iter().map(|n| (*n, blank)).collect();
            let c = load(&vars).unwrap();
            assert_eq!(c.port, 3000);
            assert_eq!(c.service_name, "welcomedly");
            assert_eq!(c.drain_deadline, Duration::from_secs(30));
        }
    }

    #[test]
    fn every_variable_is_read() {
        let c = load(&[
            ("OTEL_SERVICE_NAME", "call-center"),
            ("WELCOMEDLY_SERVICE_VERSION", "2.1.0-rc1"),
            ("WELCOMEDLY_INSTANCE_ID", "api-7f9c-0"),
            ("PORT", " 8080 "),
            ("TRUSTED_PROXIES", "10.0.0.0/8, ::1"),
            ("WELCOMEDLY_LOG_FORMAT", "PRETTY"),
            ("RUST_LOG", "warn,welcomedly_core=debug"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4318"),
            ("WELCOMEDLY_DRAIN_GRACE_MS", "0"),
            ("WELCOMEDLY_DRAIN_DEADLINE_MS", "1500"),
            ("WELCOMEDLY_HEALTH_TIMEOUT_MS", "250"),
        ])
        .unwrap();
        assert_eq!(c.service_name, "call-center");
        assert_eq!(c.service_version, "2.1.0-rc1");
        assert_eq!(c.instance_id.as_str(), "api-7f9c-0");
        assert_eq!(c.port, 8080);
        assert!(
            c.trusted_proxies
                .contains("10.1.1.1".parse::<IpAddr>().unwrap())
        );
        assert!(c.trusted_proxies.contains("::1".parse::<IpAddr>().unwrap()));
        assert!(
            !c.trusted_proxies
                .contains("11.1.1.1".parse::<IpAddr>().unwrap())
        );
        assert_eq!(c.log_format, LogFormat::Pretty);
        assert_eq!(c.log_filter, "warn,welcomedly_core=debug");
        assert_eq!(
            c.otlp_endpoint.as_deref(),
            Some("http://otel-collector:4318")
        );
        assert_eq!(c.drain_grace, Duration::ZERO);
        assert_eq!(c.drain_deadline, Duration::from_millis(1500));
        assert_eq!(c.health_check_timeout, Duration::from_millis(250));
    }

    #[test]
    fn trusted_proxy_header() {
        assert_eq!(
            load(&[]).unwrap().trusted_proxy_header,
            ForwardingHeader::XForwardedFor
        );
        let c = load(&[("TRUSTED_PROXY_HEADER", " Forwarded ")]).unwrap();
        assert_eq!(c.trusted_proxy_header, ForwardingHeader::Forwarded);
        assert_eq!(
            error("TRUSTED_PROXY_HEADER", "x-real-ip"),
            r#"TRUSTED_PROXY_HEADER="x-real-ip" is not a forwarding header: expected x-forwarded-for (what NGINX, ALB and Envoy write) or forwarded (RFC 7239)"#
        );
    }

    #[test]
    fn access_log() {
        assert_eq!(load(&[]).unwrap().access_log, Some(tracing::Level::INFO));
        let c = load(&[("WELCOMEDLY_ACCESS_LOG", "OFF")]).unwrap();
        assert_eq!(c.access_log, None);
        let c = load(&[("WELCOMEDLY_ACCESS_LOG", "debug")]).unwrap();
        assert_eq!(c.access_log, Some(tracing::Level::DEBUG));
        assert!(error("WELCOMEDLY_ACCESS_LOG", "loud").contains("expected off, error"));
    }

    #[test]
    fn url_passwords_are_not_echoed() {
        let msg = error(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "ftp://collector:s3cret@otel:4318",
        );
        assert!(!msg.contains("s3cret"), "{msg}");
        assert!(msg.contains("ftp://collector:***@otel:4318"), "{msg}");
    }

    #[test]
    fn port() {
        assert_eq!(load(&[("PORT", "1")]).unwrap().port, 1);
        assert_eq!(load(&[("PORT", "65535")]).unwrap().port, 65535);
        assert_eq!(
            error("PORT", "abc"),
            r#"PORT="abc" is not a valid port: expected an integer 1-65535"#
        );
        for bad in [
            "0",
            "65536",
            "-1",
            "+80",
            "80.0",
            "1e3",
            "99999999999999999999",
        ] {
            assert!(
                error("PORT", bad).ends_with("expected an integer 1-65535"),
                "{bad}"
            );
        }
    }

    #[test]
    fn trusted_proxies_name_the_bad_entry() {
        assert_eq!(
            error("TRUSTED_PROXIES", "10.0.0.0/8, 10.0.0.0/33"),
            r#"TRUSTED_PROXIES="10.0.0.0/8, 10.0.0.0/33" is not a list of trusted proxy networks: entry "10.0.0.0/33" has an invalid prefix length: expected /0 to /32 after the address, in a comma-separated list"#
        );
        let msg = error("TRUSTED_PROXIES", "10.0.0.0/8; 192.168.0.0/16");
        assert!(
            msg.contains(r#"entry "10.0.0.0/8; 192.168.0.0/16" is not an IP network"#),
            "{msg}"
        );
        assert!(msg.contains("such as 10.0.0.0/8"), "{msg}");
    }

    #[test]
    fn log_format() {
        for (value, want) in [
            ("json", LogFormat::Json),
            ("JSON", LogFormat::Json),
            ("pretty", LogFormat::Pretty),
            ("Pretty", LogFormat::Pretty),
        ] {
            assert_eq!(
                load(&[("WELCOMEDLY_LOG_FORMAT", value)])
                    .unwrap()
                    .log_format,
                want
            );
        }
        assert_eq!(
            error("WELCOMEDLY_LOG_FORMAT", "text"),
            r#"WELCOMEDLY_LOG_FORMAT="text" is not a log format: expected json or pretty"#
        );
    }

    #[test]
    fn log_filter() {
        let msg = error("RUST_LOG", "my_crate=loud");
        assert!(
            msg.starts_with(r#"RUST_LOG="my_crate=loud" is not a log filter ("#),
            "{msg}"
        );
        assert!(
            msg.ends_with("expected directives such as info or my_crate=debug,tower_http=warn")
        );
    }

    #[test]
    fn otlp_endpoint() {
        let ok = load(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://collector.example:4318/",
        )]);
        assert!(ok.unwrap().otlp_endpoint.is_some());
        assert_eq!(
            error("OTEL_EXPORTER_OTLP_ENDPOINT", "otel-collector:4318"),
            r#"OTEL_EXPORTER_OTLP_ENDPOINT="otel-collector:4318" is not an OTLP endpoint: expected an http:// or https:// URL such as http://otel-collector:4318"#
        );
        for bad in ["ftp://collector", "http://", "not a url", "/v1/traces"] {
            error("OTEL_EXPORTER_OTLP_ENDPOINT", bad);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            error("WELCOMEDLY_DRAIN_GRACE_MS", "5s"),
            r#"WELCOMEDLY_DRAIN_GRACE_MS="5s" is not a duration: expected a whole number of milliseconds, such as 5000"#
        );
        assert_eq!(
            error("WELCOMEDLY_DRAIN_DEADLINE_MS", "0"),
            r#"WELCOMEDLY_DRAIN_DEADLINE_MS="0" is not a usable deadline: expected a whole number of milliseconds greater than 0, such as 30000"#
        );
        assert_eq!(
            error("WELCOMEDLY_HEALTH_TIMEOUT_MS", "0"),
            r#"WELCOMEDLY_HEALTH_TIMEOUT_MS="0" is not a usable timeout: expected a whole number of milliseconds greater than 0, such as 2000"#
        );
        for bad in ["-1", "1.5", "+5", "18446744073709551616"] {
            error("WELCOMEDLY_DRAIN_GRACE_MS", bad);
            error("WELCOMEDLY_DRAIN_DEADLINE_MS", bad);
            error("WELCOMEDLY_HEALTH_TIMEOUT_MS", bad);
        }
    }

    #[test]
    fn connection_timeouts_and_caps() {
        let c = load(&[
            ("WELCOMEDLY_HEADER_READ_TIMEOUT_MS", "2500"),
            ("WELCOMEDLY_IDLE_TIMEOUT_MS", "65000"),
            ("WELCOMEDLY_MAX_CONNECTIONS", "900"),
            ("WELCOMEDLY_MAX_CONNECTIONS_PER_CLIENT", "16"),
            ("TRUSTED_PROXIES", "10.0.0.0/8"),
        ])
        .unwrap();
        assert_eq!(c.header_read_timeout, Duration::from_millis(2500));
        assert_eq!(c.idle_timeout, Duration::from_secs(65));
        assert_eq!(c.max_connections.get(), 900);
        assert_eq!(c.max_connections_per_client.get(), 16);
        let drain = crate::drain::DrainConfig::from(&c);
        assert_eq!(drain.idle_timeout, Duration::from_secs(65));
        assert!(
            drain.per_client_exempt.contains([10, 1, 2, 3].into()),
            "the trusted proxies are exempt from the per-client cap"
        );
        let defaults = load(&[]).unwrap();
        assert_eq!(defaults.header_read_timeout, Duration::from_secs(10));
        assert_eq!(defaults.idle_timeout, Duration::from_secs(75));
        assert_eq!(defaults.max_connections.get(), 10_000);
        assert_eq!(defaults.max_connections_per_client.get(), 256);
        assert_eq!(
            error("WELCOMEDLY_IDLE_TIMEOUT_MS", "0"),
            r#"WELCOMEDLY_IDLE_TIMEOUT_MS="0" is not a usable timeout: expected a whole number of milliseconds greater than 0 and longer than the load balancer's keep-alive timeout, such as 75000"#
        );
        assert_eq!(
            error("WELCOMEDLY_MAX_CONNECTIONS_PER_CLIENT", "0"),
            r#"WELCOMEDLY_MAX_CONNECTIONS_PER_CLIENT="0" is not a connection cap: expected a whole number greater than 0, such as 256"#
        );
        for bad in ["-1", "1.5", "+5", "ten", "99999999999999999999999"] {
            error("WELCOMEDLY_HEADER_READ_TIMEOUT_MS", bad);
            error("WELCOMEDLY_MAX_CONNECTIONS", bad);
            error("WELCOMEDLY_MAX_CONNECTIONS_PER_CLIENT", bad);
        }
    }

    #[test]
    fn service_name_and_version() {
        assert_eq!(
            error("OTEL_SERVICE_NAME", "a\u{7}b"),
            r#"OTEL_SERVICE_NAME="a\u{7}b" is not a service name: expected printable characters"#
        );
        error("WELCOMEDLY_SERVICE_VERSION", "1.0\n2.0");
        // Inner spaces are fine in a name; surrounding whitespace is trimmed.
        assert_eq!(
            load(&[("OTEL_SERVICE_NAME", " call center ")])
                .unwrap()
                .service_name,
            "call center"
        );
    }

    #[test]
    fn instance_id() {
        let max = "a".repeat(128);
        let c = load(&[("WELCOMEDLY_INSTANCE_ID", &max)]).unwrap();
        assert_eq!(c.instance_id.as_str(), max);
        let expected = "is not a valid instance id: expected 1-128 visible ASCII characters \
                        (no spaces), such as a pod name";
        assert_eq!(
            error("WELCOMEDLY_INSTANCE_ID", "pod 1"),
            format!(r#"WELCOMEDLY_INSTANCE_ID="pod 1" {expected}"#)
        );
        error("WELCOMEDLY_INSTANCE_ID", "pöd");
        // A long value is cut in the message, with its length.
        let long = "a".repeat(129);
        assert_eq!(
            error("WELCOMEDLY_INSTANCE_ID", &long),
            format!(
                r#"WELCOMEDLY_INSTANCE_ID="{}"… (129 bytes) {expected}"#,
                "a".repeat(80)
            )
        );
    }

    #[test]
    fn every_invalid_variable_is_reported() {
        let err = load(&[
            ("PORT", "0"),
            ("WELCOMEDLY_LOG_FORMAT", "xml"),
            ("WELCOMEDLY_DRAIN_DEADLINE_MS", "soon"),
            ("OTEL_SERVICE_NAME", "fine"),
        ])
        .unwrap_err();
        let names: Vec<_> = err
            .invalid_variables()
            .iter()
            .map(|v| v.variable())
            .collect();
        assert_eq!(
            names,
            [
                "PORT",
                "WELCOMEDLY_LOG_FORMAT",
                "WELCOMEDLY_DRAIN_DEADLINE_MS"
            ]
        );
        assert!(matches!(err, ConfigError::Several(_)));
        let msg = err.to_string();
        assert!(
            msg.starts_with("3 environment variables are invalid: PORT=\"0\" is not"),
            "{msg}"
        );
        assert!(
            msg.contains("; WELCOMEDLY_LOG_FORMAT=\"xml\" is not a log format"),
            "{msg}"
        );
    }

    #[test]
    fn non_unicode_values_are_reported_not_ignored() {
        let err = CoreConfig::from_reader(EnvReader::from_raw(|name| match name {
            "PORT" => Some(Err("80\u{fffd}".to_owned())),
            _ => None,
        }))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "PORT=\"80\u{fffd}\" is not valid UTF-8: expected a text value"
        );
    }
}
