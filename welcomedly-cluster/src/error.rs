//! The crate's error type.

use std::error::Error as StdError;
use std::fmt;

/// An error of welcomedly-cluster: what went wrong and what to do, with the cause as `source()`.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Config,
    Redis,
}

impl Error {
    pub(crate) fn config(
        message: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self {
            kind: Kind::Config,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Config,
            message: message.into(),
            source: None,
        }
    }

    #[allow(dead_code)] // used by the session and bus modules to come
    pub(crate) fn redis(
        message: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self {
            kind: Kind::Redis,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Whether the settings are wrong (fix the configuration).
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// Whether Redis failed (check that it runs and is reachable).
    pub fn is_redis(&self) -> bool {
        self.kind == Kind::Redis
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
