//! [`LinkConfig`]: the link's settings, plain data with documented defaults, and [`RedisUrl`],
//! a URL whose password cannot be printed by accident.

use std::fmt;
use std::time::Duration;

use welcomedly_core::backoff::Backoff;
use welcomedly_core::config::{ConfigError, EnvReader, parse_millis};
use welcomedly_core::redact::redact_url;

/// The URL schemes the link connects with.
const SCHEMES: [&str; 3] = ["redis://", "unix://", "redis+unix://"];

/// A Redis URL (`redis://[user:password@]host[:port][/db]`). `Debug` and `Display` show it with
/// its password replaced by `***`; [`expose`](Self::expose) gives the full text to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Wraps `url` (checked when the link is built).
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for connecting only: never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl From<&str> for RedisUrl {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl From<String> for RedisUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

/// Settings of a [`Link`](crate::Link).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LinkConfig {
    /// Where Redis is. No default.
    pub url: RedisUrl,
    /// The longest one call waits, a retry included, before it fails with
    /// [`Error::is_budget`](crate::Error::is_budget). Components may pass a tighter budget per
    /// call. Default 50 ms.
    pub budget: Duration,
    /// Transport failures or calls past the budget in a row before the connection is dropped
    /// and replaced; a single slow answer keeps it, and so does any number of calls past the
    /// budget while Redis answers other calls on the connection (a loaded Redis or instance,
    /// not a dead connection); the failures in a row must also span at least one
    /// [`budget`](Self::budget), so calls that all time out at one instant (this process was
    /// not scheduled for a moment) count as one event. A closed connection is replaced at
    /// once. Default 3.
    pub failure_threshold: u32,
    /// The least time between dropping a connection for failures (threshold or a
    /// [`Replace`](crate::Failure::Replace) error) and the next connection attempt, so a
    /// flapping Redis is not hammered. A connection Redis closed is reconnected at once.
    /// Default 250 ms.
    pub min_outage: Duration,
    /// Delays between failed connection attempts (exponential, jittered to 50–100 %).
    /// Default 100 ms doubling up to 2 s. While callers are waiting for a connection, the next
    /// attempt is made as soon as one asks, at most one attempt per
    /// [`demand_interval`](Self::demand_interval).
    pub backoff: Backoff,
    /// The least time between two connection attempts made because callers wait for one.
    /// Default 10 ms.
    pub demand_interval: Duration,
    /// The longest a connection attempt (TCP connect, `AUTH`, `SELECT`, loading scripts) may
    /// take. Default 1 s.
    pub connect_timeout: Duration,
}

impl LinkConfig {
    /// Settings for the Redis at `url`, defaults elsewhere.
    pub fn new(url: impl Into<RedisUrl>) -> Self {
        Self {
            url: url.into(),
            budget: Duration::from_millis(50),
            failure_threshold: 3,
            min_outage: Duration::from_millis(250),
            backoff: Backoff::default(),
            demand_interval: Duration::from_millis(10),
            connect_timeout: Duration::from_secs(1),
        }
    }

    /// Reads the settings from the environment, `None` when `REDIS_URL` is unset.
    ///
    /// # Errors
    ///
    /// Every invalid variable (see [`read`](Self::read)), URL passwords redacted.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let mut env = EnvReader::from_env();
        let config = Self::read(&mut env);
        env.finish(config)
    }

    /// Reads `REDIS_URL` (`None` when unset) and `WELCOMEDLY_REDIS_BUDGET_MS` (default 50)
    /// through a shared reader, so a service reports every bad variable at once.
    pub fn read(env: &mut EnvReader<'_>) -> Option<Self> {
        let url = env.read("REDIS_URL", None, |v| {
            if v.starts_with("rediss://") {
                return Err("uses TLS (rediss://), which this build does not include: use redis://[user:password@]host[:port][/db] or unix:///path");
            }
            SCHEMES
                .iter()
                .any(|s| v.starts_with(s))
                .then(|| Some(RedisUrl::new(v)))
                .ok_or("is not a Redis URL: expected redis://[user:password@]host[:port][/db] or unix:///path")
        });
        let budget = env.read(
            "WELCOMEDLY_REDIS_BUDGET_MS",
            Duration::from_millis(50),
            |v| {
                parse_millis(v).filter(|d| !d.is_zero()).ok_or(
                    "is not a usable budget: expected a whole number of milliseconds greater than 0, such as 50",
                )
            },
        );
        url.map(|url| {
            let mut config = Self::new(url);
            config.budget = budget;
            config
        })
    }

    /// Refuses settings that would misbehave: a zero budget, backoff or connect timeout.
    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        if self.budget.is_zero() {
            return Err(crate::Error::config(
                "the Redis link budget is zero: give Redis at least a few milliseconds (default 50 ms)",
            ));
        }
        if self.backoff.initial.is_zero() || self.demand_interval.is_zero() {
            return Err(crate::Error::config(
                "the Redis link's reconnect delay is zero: a dead Redis would be reconnected in a busy loop; use at least a few milliseconds (defaults 100 ms and 10 ms)",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(crate::Error::config(
                "the Redis link's connect timeout is zero: no connection could ever be made; use at least 100 ms (default 1 s)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_hidden_by_type() {
        let c = LinkConfig::new("redis://:hunter2@cache:6379/0");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.url.to_string().contains("hunter2"));
        assert!(c.url.expose().contains("hunter2"));
    }

    #[test]
    fn settings_from_the_environment() {
        let read = |vars: &[(&str, &str)]| {
            let mut env = EnvReader::from_pairs(vars);
            let config = LinkConfig::read(&mut env);
            env.finish(config)
        };
        assert!(read(&[]).unwrap().is_none());
        let c = read(&[
            ("REDIS_URL", "redis://cache:6379/0"),
            ("WELCOMEDLY_REDIS_BUDGET_MS", "80"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.budget, Duration::from_millis(80));
        let e = read(&[
            ("REDIS_URL", "http://:hunter2@cache/"),
            ("WELCOMEDLY_REDIS_BUDGET_MS", "0"),
        ])
        .unwrap_err();
        assert_eq!(e.invalid_variables().len(), 2);
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = read(&[("REDIS_URL", "rediss://:hunter2@cache/")]).unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
