//! [`MembershipConfig`]: the operator's settings, plain data with documented defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use welcomedly_core::InstanceId;
use welcomedly_core::config::{ConfigError, EnvReader, parse_millis};

use crate::Error;

/// The longest instance id accepted (it is part of a Redis key name).
pub(crate) const MAX_INSTANCE_ID_LEN: usize = 128;
/// Bounds of [`MembershipConfig::metadata`]: it is written on every heartbeat.
const MAX_METADATA_ENTRIES: usize = 32;
const MAX_METADATA_KEY_LEN: usize = 64;
const MAX_METADATA_VALUE_LEN: usize = 1024;

/// Settings of [`Membership`](super::Membership), plain data with documented defaults. The
/// connection itself (URL, failure threshold, reconnects) is the
/// [`Link`](welcomedly_redis::Link)'s.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MembershipConfig {
    /// Prefix of every key, used as the Redis Cluster hash tag so every membership key lives in
    /// one slot. Default `"wd:members"`: keys `{wd:members}:members` (sorted set of instance ids
    /// scored by expiry), `{wd:members}:info` (hash of descriptions) and
    /// `{wd:members}:presence:<instance id>` (hash of one instance's presence keys). Every
    /// instance of one service must use the same prefix.
    pub key_prefix: String,
    /// How often the instance heartbeats. Default 1 s.
    pub heartbeat_interval: Duration,
    /// How long after its last heartbeat an instance counts as dead. Must exceed
    /// [`heartbeat_interval`](Self::heartbeat_interval) (twice or more, so one slow heartbeat
    /// does not flap). Default 3 s.
    pub timeout: Duration,
    /// The longest one Redis call (a heartbeat, a listing, leaving) may take on the link, a
    /// wait for a reconnect included: background heartbeats can afford more than a request's
    /// budget. Must stay below [`timeout`](Self::timeout). A failed heartbeat is retried at
    /// the next tick. Default 250 ms.
    pub budget: Duration,
    /// What the instance tells about itself in [`Member::metadata`](super::Member::metadata),
    /// such as `"addr" → "10.0.0.7:3000"`. At most 32 entries, keys up to 64 bytes, values up
    /// to 1 KiB (it is written on every heartbeat). Default empty.
    pub metadata: BTreeMap<String, String>,
    /// The longest presence key accepted, in bytes. Presence keys are app-chosen: keep them ids
    /// (`agent:42`), not client text. Default 256.
    pub max_presence_key_len: usize,
    /// The most presence keys one instance holds at once; a join beyond it fails. Default
    /// 100 000.
    pub max_presences: usize,
    /// Presence diffs buffered per subscriber of
    /// [`presence_diffs`](super::Membership::presence_diffs) before the slowest one lags (it is told
    /// how many it missed). Default 1024.
    pub diff_capacity: usize,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            key_prefix: "wd:members".to_owned(),
            heartbeat_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            budget: Duration::from_millis(250),
            metadata: BTreeMap::new(),
            max_presence_key_len: 256,
            max_presences: 100_000,
            diff_capacity: 1024,
        }
    }
}

impl MembershipConfig {
    /// Adds one [`metadata`](Self::metadata) entry.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Reads the settings from the environment: `WELCOMEDLY_HEARTBEAT_MS` (default 1000),
    /// `WELCOMEDLY_MEMBER_TIMEOUT_MS` (default 3000). Where Redis is (`REDIS_URL`) is the
    /// link's setting ([`LinkConfig::read`](welcomedly_redis::LinkConfig::read)).
    ///
    /// # Errors
    ///
    /// Every invalid variable, as welcomedly-core's `ConfigError`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut env = EnvReader::from_env();
        let config = Self::read(&mut env);
        env.finish(config)
    }

    /// [`from_env`](Self::from_env) through a shared reader, so a service reports the problems
    /// of all its components' variables at once.
    pub fn read(env: &mut EnvReader<'_>) -> Self {
        let millis = |what: &'static str| {
            move |v: &str| {
                parse_millis(v).filter(|d| !d.is_zero()).ok_or(format!(
                    "is not a usable {what}: expected a whole number of milliseconds greater than 0"
                ))
            }
        };
        let interval = env.read(
            "WELCOMEDLY_HEARTBEAT_MS",
            Duration::from_secs(1),
            millis("heartbeat interval"),
        );
        let timeout = env.read(
            "WELCOMEDLY_MEMBER_TIMEOUT_MS",
            Duration::from_secs(3),
            millis("member timeout"),
        );
        Self {
            heartbeat_interval: interval,
            timeout,
            ..Self::default()
        }
    }

    /// Checks the settings once, before anything connects.
    pub(crate) fn validate(&self, instance: &InstanceId) -> Result<(), Error> {
        let id = instance.as_str();
        if id.is_empty()
            || id.len() > MAX_INSTANCE_ID_LEN
            || !id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Error::invalid(format!(
                "the instance id {:?} cannot be part of a Redis key: use 1 to {MAX_INSTANCE_ID_LEN} printable ASCII characters without spaces (InstanceId::generate makes one)",
                id.chars().take(MAX_INSTANCE_ID_LEN).collect::<String>()
            )));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            return Err(Error::invalid(
                "the membership key prefix must be non-empty and without braces: it becomes the Redis Cluster hash tag {prefix} (default \"wd:members\")",
            ));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(Error::invalid(
                "the heartbeat interval is zero: heartbeats would run in a busy loop; use about a second (default 1 s)",
            ));
        }
        if self.timeout <= self.heartbeat_interval {
            return Err(Error::invalid(format!(
                "the member timeout ({} ms) must exceed the heartbeat interval ({} ms), ideally three times it: otherwise live instances are reported dead between heartbeats (defaults 3 s and 1 s)",
                self.timeout.as_millis(),
                self.heartbeat_interval.as_millis()
            )));
        }
        if self.budget.is_zero() || self.budget >= self.timeout {
            return Err(Error::invalid(
                "the membership Redis budget must be above zero and below the member timeout (default 250 ms)",
            ));
        }
        if self.max_presence_key_len == 0 || self.max_presences == 0 {
            return Err(Error::invalid(
                "max_presence_key_len and max_presences must be at least 1 (defaults 256 and 100 000)",
            ));
        }
        let too_big = self.metadata.len() > MAX_METADATA_ENTRIES
            || self.metadata.iter().any(|(k, v)| {
                k.is_empty() || k.len() > MAX_METADATA_KEY_LEN || v.len() > MAX_METADATA_VALUE_LEN
            });
        if too_big {
            return Err(Error::invalid(format!(
                "the membership metadata is too large: at most {MAX_METADATA_ENTRIES} entries, keys 1 to {MAX_METADATA_KEY_LEN} bytes, values up to {MAX_METADATA_VALUE_LEN} bytes (it is written on every heartbeat)"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn id() -> InstanceId {
        InstanceId::new("web-1")
    }

    #[test]
    fn defaults_validate_and_bad_settings_say_what_to_do() {
        let c = MembershipConfig::default();
        c.validate(&id()).unwrap();
        let mut bad = c.clone();
        bad.timeout = Duration::from_secs(1);
        let e = bad.validate(&id()).unwrap_err();
        assert!(
            e.is_config() && e.to_string().contains("must exceed"),
            "{e}"
        );
        let e = c.validate(&InstanceId::new("has space")).unwrap_err();
        assert!(e.to_string().contains("printable ASCII"), "{e}");
        assert!(c.validate(&InstanceId::new("x".repeat(129))).is_err());
        let mut bad = c.clone();
        bad.key_prefix = "{x}".to_owned();
        assert!(bad.validate(&id()).is_err());
        let bad = c.clone().with_metadata("addr", "x".repeat(2000));
        assert!(bad.validate(&id()).is_err());
    }

    #[test]
    fn settings_from_the_environment() {
        let read = |vars: &[(&str, &str)]| {
            let mut env = EnvReader::from_pairs(vars);
            let config = MembershipConfig::read(&mut env);
            env.finish(config)
        };
        assert_eq!(read(&[]).unwrap().timeout, Duration::from_secs(3));
        let c = read(&[
            ("WELCOMEDLY_HEARTBEAT_MS", "500"),
            ("WELCOMEDLY_MEMBER_TIMEOUT_MS", "2000"),
        ])
        .unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert!(read(&[("WELCOMEDLY_HEARTBEAT_MS", "0")]).is_err());
    }
}
