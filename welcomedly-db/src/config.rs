//! [`RouterConfig`]: the operator's settings, plain data with documented defaults.

use std::fmt;
use std::time::Duration;

use welcomedly_core::config::{ConfigError, EnvReader, parse_millis};
use welcomedly_core::redact::redact_url;

/// Settings of a PostgreSQL [`Router`](crate::Router): the nodes, the probes and the bounds.
#[derive(Clone)]
#[non_exhaustive]
pub struct RouterConfig {
    /// The primary's URL, e.g. `postgres://app:secret@db-1/app`. No default. Shown with its
    /// password redacted in errors, logs and `Debug`.
    pub primary_url: String,
    /// The replicas' URLs. Default none (every read goes to the primary).
    pub replica_urls: Vec<String>,
    /// How often each node is probed. Default 250 ms (one cheap query per node). Probes also
    /// run at once when the probe's own connection closes (the node died or shut down: a dead
    /// node is out of rotation within tens of milliseconds, idle or not) and when a write met a
    /// connection error or a read-only answer, or found no writer (see
    /// [`Router::write_with`](crate::Router::write_with)). What only a tick reveals is a
    /// replica promoted while the old primary keeps running (writes move within one interval:
    /// 225 ms at most over 10 runs on the defaults) and a node that hangs without closing its
    /// connections.
    pub probe_interval: Duration,
    /// The longest one probe (connect included) may take before it counts as a failure.
    /// Default 250 ms.
    pub probe_timeout: Duration,
    /// Longest delay between probes of a node that keeps failing: the delay doubles from
    /// [`probe_interval`](Self::probe_interval) up to this, jittered. Default 2 s.
    pub max_probe_backoff: Duration,
    /// Consecutive failures (failed probes, connection errors of reads) before a node is
    /// ejected. Default 2.
    pub failure_threshold: u32,
    /// Consecutive good probes before an ejected node is readmitted. Default 2.
    pub recovery_threshold: u32,
    /// A replica further behind the primary than this many bytes of WAL is ejected.
    /// Default 16 MiB.
    pub max_lag_bytes: u64,
    /// A replica further behind the primary than this is ejected. Default 5 s.
    pub max_lag: Duration,
    /// How long [`Router::read_after`](crate::Router::read_after) waits for a replica to
    /// replay a token before it reads from the primary. Default 100 ms.
    pub read_after_wait: Duration,
    /// Connections per node's pool. Default 10.
    pub max_connections: u32,
    /// How long a query waits for a pooled connection (or to open one). Default 3 s.
    pub acquire_timeout: Duration,
}

impl fmt::Debug for RouterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let replicas: Vec<String> = self
            .replica_urls
            .iter()
            .map(|u| redact_url(u).into_owned())
            .collect();
        f.debug_struct("RouterConfig")
            .field("primary_url", &redact_url(&self.primary_url))
            .field("replica_urls", &replicas)
            .field("probe_interval", &self.probe_interval)
            .field("probe_timeout", &self.probe_timeout)
            .field("max_probe_backoff", &self.max_probe_backoff)
            .field("failure_threshold", &self.failure_threshold)
            .field("recovery_threshold", &self.recovery_threshold)
            .field("max_lag_bytes", &self.max_lag_bytes)
            .field("max_lag", &self.max_lag)
            .field("read_after_wait", &self.read_after_wait)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

fn is_pg_url(v: &str) -> bool {
    v.starts_with("postgres://") || v.starts_with("postgresql://")
}

impl RouterConfig {
    /// Settings for the primary at `primary_url`, no replicas, defaults elsewhere.
    pub fn new(primary_url: impl Into<String>) -> Self {
        Self {
            primary_url: primary_url.into(),
            replica_urls: Vec::new(),
            probe_interval: Duration::from_millis(250),
            probe_timeout: Duration::from_millis(250),
            max_probe_backoff: Duration::from_secs(2),
            failure_threshold: 2,
            recovery_threshold: 2,
            max_lag_bytes: 16 * 1024 * 1024,
            max_lag: Duration::from_secs(5),
            read_after_wait: Duration::from_millis(100),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
        }
    }

    /// These replicas.
    #[must_use]
    pub fn replicas<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.replica_urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// Reads `DATABASE_URL` (a `postgres://` URL; `None` when unset: the service then uses its
    /// embedded default), `DATABASE_REPLICA_URLS` (comma-separated), `DATABASE_MAX_LAG_MS`
    /// (default 5000) and `DATABASE_READ_AFTER_WAIT_MS` (default 100).
    ///
    /// # Errors
    ///
    /// Every invalid variable, as welcomedly-core's `ConfigError` (URL passwords redacted).
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let mut env = EnvReader::from_env();
        let config = Self::read(&mut env);
        env.finish(config)
    }

    /// [`from_env`](Self::from_env) through a shared reader, so a service reports the problems
    /// of all its components' variables at once.
    pub fn read(env: &mut EnvReader<'_>) -> Option<Self> {
        let url = env.read("DATABASE_URL", None, |v| {
            is_pg_url(v).then(|| Some(v.to_owned())).ok_or(
                "is not a PostgreSQL URL: expected postgres://[user[:password]@]host[:port]/database",
            )
        });
        let replicas = env.read("DATABASE_REPLICA_URLS", Vec::new(), |v| {
            let urls: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            if urls.iter().all(|u| is_pg_url(u)) {
                Ok(urls)
            } else {
                Err("is not a comma-separated list of PostgreSQL URLs: expected postgres://host-a/db,postgres://host-b/db")
            }
        });
        let max_lag = env.read("DATABASE_MAX_LAG_MS", Duration::from_secs(5), |v| {
            parse_millis(v)
                .filter(|d| !d.is_zero())
                .ok_or("is not a usable lag bound: expected a whole number of milliseconds greater than 0, such as 5000")
        });
        let wait = env.read(
            "DATABASE_READ_AFTER_WAIT_MS",
            Duration::from_millis(100),
            |v| {
                parse_millis(v).ok_or(
                    "is not a usable wait: expected a whole number of milliseconds, such as 100",
                )
            },
        );
        url.map(|url| {
            let mut config = Self::new(url).replicas(replicas);
            config.max_lag = max_lag;
            config.read_after_wait = wait;
            config
        })
    }

    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        if self.probe_interval.is_zero() || self.probe_timeout.is_zero() {
            return Err(crate::Error::config(
                "the probe interval and timeout must be greater than zero (defaults 500 ms and 250 ms)",
            ));
        }
        if self.max_connections == 0 {
            return Err(crate::Error::config(
                "max_connections is 0: every node needs at least one connection (default 10)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<Option<RouterConfig>, ConfigError> {
        let mut env = EnvReader::from_pairs(vars);
        let config = RouterConfig::read(&mut env);
        env.finish(config)
    }

    #[test]
    fn settings_from_the_environment() {
        assert!(read(&[]).unwrap().is_none());
        let c = read(&[
            ("DATABASE_URL", "postgres://app:pw@db-1/app"),
            (
                "DATABASE_REPLICA_URLS",
                " postgres://app:pw@db-2/app, postgresql://db-3/app ,",
            ),
            ("DATABASE_MAX_LAG_MS", "750"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.replica_urls.len(), 2);
        assert_eq!(c.max_lag, Duration::from_millis(750));
        let debug = format!("{c:?}");
        assert!(!debug.contains("pw"), "{debug}");
    }

    #[test]
    fn bad_variables_are_all_reported_without_passwords() {
        let e = read(&[
            ("DATABASE_URL", "mysql://app:hunter2@db/app"),
            ("DATABASE_REPLICA_URLS", "postgres://a/b,redis://:hunter2@c"),
            ("DATABASE_MAX_LAG_MS", "soon"),
        ])
        .unwrap_err();
        assert_eq!(e.invalid_variables().len(), 3);
        let text = e.to_string();
        assert!(!text.contains("hunter2"), "{text}");
    }
}
