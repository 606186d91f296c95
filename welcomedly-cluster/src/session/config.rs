//! [`SessionConfig`]: the operator's settings of the session layer, plain data with documented
//! defaults.

use std::fmt;
use std::time::Duration;

use welcomedly_core::config::{ConfigError, EnvReader, MIN_SECRET_LEN, check_secret};

/// Settings of the session layer and its cookie. Build the layer with
/// [`SessionLayer::new`](super::SessionLayer::new), which validates them once.
#[derive(Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Name of the session cookie. Default `"wd_session"`. Sent as `__Host-wd_session` whenever
    /// the cookie is `Secure` with path `/` and no domain (the defaults): browsers then refuse
    /// the name from any other host (a sibling subdomain cannot plant one) and over plain HTTP.
    /// See [`effective_cookie_name`](Self::effective_cookie_name).
    pub cookie_name: String,
    /// Whether the cookie carries `Secure` (sent over HTTPS only). Default `true`; turn it off
    /// for local plain-HTTP development only.
    pub secure: bool,
    /// The cookie's `Path`. Default `"/"`.
    pub path: String,
    /// The cookie's `Domain`, to share it with subdomains. Default none (this host only).
    pub domain: Option<String>,
    /// Keys that sign the cookie (HMAC-SHA-256), newest first: the cookie is signed with the
    /// first and accepted when any of them verifies it, so a key is rotated by putting the new
    /// one in front and dropping the old one after the longest session's life. Default none:
    /// the cookie is the bare 128-bit random id (unguessable on its own; signing adds a second
    /// secret and lets an instance refuse forged cookies without a store call).
    pub signing_keys: Vec<String>,
    /// A session not used for this long ends; each load slides it. Default 30 minutes.
    pub idle_timeout: Duration,
    /// A session ends this long after it was created (or its id last cycled by a login),
    /// however active. Default 12 hours.
    pub absolute_timeout: Duration,
    /// Live sessions a user may hold (browsers, devices); logging in past it ends the user's
    /// oldest session. Keeps the per-user index that "log out everywhere" reads bounded.
    /// Default 32.
    pub max_sessions_per_user: usize,
    /// Load the session before the inner service runs whenever the request has a session
    /// cookie, and put the logged-in user's `welcomedly_core::UserId` in the
    /// request extensions, so layers inside this one (rate limits keyed by user, feature flags)
    /// see the user. Costs the one load round trip on every request with a cookie, touched by
    /// the handler or not. Use it where a layer inside needs the user on *every* request (a
    /// rate limit keyed by user), and for streams that end with their session. Default
    /// `false`: lazy, no store call until something touches the session; a request with a
    /// cookie carries a `welcomedly_core::DeferredUser` instead, which layers that
    /// need the user only sometimes (feature flags, on the routes that evaluate a flag) resolve
    /// with one load when they do.
    pub load_eagerly: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            cookie_name: "wd_session".to_owned(),
            secure: true,
            path: "/".to_owned(),
            domain: None,
            signing_keys: Vec::new(),
            idle_timeout: Duration::from_secs(30 * 60),
            absolute_timeout: Duration::from_secs(12 * 3600),
            max_sessions_per_user: 32,
            load_eagerly: false,
        }
    }
}

impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfig")
            .field("cookie_name", &self.cookie_name)
            .field("secure", &self.secure)
            .field("path", &self.path)
            .field("domain", &self.domain)
            .field(
                "signing_keys",
                &format_args!("[{} keys]", self.signing_keys.len()),
            )
            .field("idle_timeout", &self.idle_timeout)
            .field("absolute_timeout", &self.absolute_timeout)
            .field("max_sessions_per_user", &self.max_sessions_per_user)
            .field("load_eagerly", &self.load_eagerly)
            .finish()
    }
}

/// The cookie-name prefix browsers accept only on a `Secure`, `Path=/` cookie without `Domain`.
pub(crate) const HOST_PREFIX: &str = "__Host-";

impl SessionConfig {
    /// The name the cookie is set and read under: [`cookie_name`](Self::cookie_name), with
    /// `__Host-` in front when the cookie is `Secure`, its path `/` and it has no domain (unless
    /// the name already starts with a `__Host-` or `__Secure-` prefix).
    pub fn effective_cookie_name(&self) -> std::borrow::Cow<'_, str> {
        let already = ["__Host-", "__Secure-"].iter().any(|p| {
            self.cookie_name
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p))
        });
        if self.secure && self.path == "/" && self.domain.is_none() && !already {
            std::borrow::Cow::Owned(format!("{HOST_PREFIX}{}", self.cookie_name))
        } else {
            std::borrow::Cow::Borrowed(&self.cookie_name)
        }
    }

    /// Reads the settings from the environment, defaults for unset variables:
    /// `WELCOMEDLY_SESSION_SECURE` (`true`/`false`, default `true`),
    /// `WELCOMEDLY_SESSION_KEYS` (comma-separated signing keys, newest first, default none),
    /// `WELCOMEDLY_SESSION_IDLE_MINUTES` (default 30).
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
        let defaults = Self::default();
        let secure = env.read("WELCOMEDLY_SESSION_SECURE", true, |v| match v {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err("is not a boolean: expected true or false (false only for local plain-HTTP development)"),
        });
        // Read as a secret: a refused value is reported by its length, never shown.
        let keys = env.read_secret("WELCOMEDLY_SESSION_KEYS", Vec::new(), |v| {
            let keys: Vec<String> = v
                .split(',')
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
                .collect();
            match keys.iter().position(|k| check_secret(k).is_err()) {
                Some(i) => Err(format!(
                    "holds a signing key (#{}, newest first) shorter than {MIN_SECRET_LEN} bytes: use long random keys, such as the output of `openssl rand -hex 32`, separated by commas",
                    i + 1
                )),
                None => Ok(keys),
            }
        });
        let idle = env.read(
            "WELCOMEDLY_SESSION_IDLE_MINUTES",
            defaults.idle_timeout,
            |v| {
                v.parse::<u64>()
                    .ok()
                    .filter(|m| *m > 0 && v.bytes().all(|b| b.is_ascii_digit()))
                    .map(|m| Duration::from_secs(m.saturating_mul(60)))
                    .ok_or("is not a usable idle timeout: expected a whole number of minutes greater than 0, such as 30")
            },
        );
        Self {
            secure,
            signing_keys: keys,
            idle_timeout: idle,
            ..defaults
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_the_environment() {
        let read = |vars: &[(&str, &str)]| {
            let mut env = EnvReader::from_pairs(vars);
            let config = SessionConfig::read(&mut env);
            env.finish(config)
        };
        let c = read(&[]).unwrap();
        assert!(c.secure && c.signing_keys.is_empty());
        let c = read(&[
            ("WELCOMEDLY_SESSION_SECURE", "false"),
            (
                "WELCOMEDLY_SESSION_KEYS",
                "0123456789abcdef0123, fedcba9876543210fedc",
            ),
            ("WELCOMEDLY_SESSION_IDLE_MINUTES", "5"),
        ])
        .unwrap();
        assert!(!c.secure);
        assert_eq!(c.signing_keys.len(), 2);
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
        let e = read(&[
            ("WELCOMEDLY_SESSION_SECURE", "maybe"),
            ("WELCOMEDLY_SESSION_KEYS", "tiny"),
            ("WELCOMEDLY_SESSION_IDLE_MINUTES", "0"),
        ])
        .unwrap_err();
        assert_eq!(e.invalid_variables().len(), 3);
        assert!(!e.to_string().contains("tiny"), "{e}");
        let e = read(&[("WELCOMEDLY_SESSION_KEYS", "0123456789abcdef0123,hunter2")]).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("#2"), "{e}");
    }
}
