//! The crate's error type.

use std::error::Error as StdError;
use std::fmt;

/// An error of welcomedly-db: what went wrong and what to do, with the cause as `source()`.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Config,
    NoWriter,
    Database,
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Config,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn config_with(
        message: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self {
            kind: Kind::Config,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    pub(crate) fn no_writer(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::NoWriter,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn database(message: impl Into<String>, source: sqlx::Error) -> Self {
        Self {
            kind: Kind::Database,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Whether the settings are wrong (fix the configuration).
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// Whether no node accepts writes right now (the primary is down or in recovery and no
    /// promoted replica was found yet): retry later or promote a replica.
    pub fn is_no_writer(&self) -> bool {
        self.kind == Kind::NoWriter
    }

    /// Whether the database answered with an error or could not be reached (see `source()`).
    pub fn is_database(&self) -> bool {
        self.kind == Kind::Database
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
