//! [`Error`]: why a call on the link failed, opaque with `is_*` predicates.

use std::fmt;
use std::time::Duration;

/// Why a call on the [`Link`](crate::Link) (or building it) failed.
///
/// Display says what went wrong at this level and what to do; the Redis error, when there is
/// one, is the [`source`](std::error::Error::source). URL passwords never appear.
pub struct Error {
    kind: Kind,
    message: String,
    source: Option<redis::RedisError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Config,
    NotConnected,
    Budget,
    Transport,
    Server,
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Config,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn not_connected() -> Self {
        Self {
            kind: Kind::NotConnected,
            message: "Redis is not connected: the link reconnects in the background; check that Redis runs and is reachable, then retry".to_owned(),
            source: None,
        }
    }

    /// No connection could be had (a dedicated one: the pool timed out or could not connect).
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::NotConnected,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn budget(budget: Duration) -> Self {
        Self {
            kind: Kind::Budget,
            message: format!(
                "Redis did not answer within the {} ms budget: it is slow or unreachable; retry later or raise the budget",
                budget.as_millis()
            ),
            source: None,
        }
    }

    pub(crate) fn transport(source: redis::RedisError) -> Self {
        Self {
            kind: Kind::Transport,
            message: "the connection to Redis failed: the link replaces it; retry".to_owned(),
            source: Some(source),
        }
    }

    pub(crate) fn server(source: redis::RedisError) -> Self {
        Self {
            kind: Kind::Server,
            message: "Redis refused the command: a new connection would not change that; check the command, the data or the server's state".to_owned(),
            source: Some(source),
        }
    }

    /// The settings were invalid (building the link).
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// The link had no connection (Redis down, reconnecting): the call was not sent.
    pub fn is_not_connected(&self) -> bool {
        self.kind == Kind::NotConnected
    }

    /// Redis did not answer within the link's budget.
    pub fn is_budget(&self) -> bool {
        self.kind == Kind::Budget
    }

    /// The connection failed (I/O, closed, desynchronised stream).
    pub fn is_transport(&self) -> bool {
        self.kind == Kind::Transport
    }

    /// Redis answered with an error a new connection would not fix (`WRONGTYPE`, `OOM`, a
    /// script error) or the reply did not convert to the asked type.
    pub fn is_server(&self) -> bool {
        self.kind == Kind::Server
    }

    /// Whether Redis is (for now) unavailable: not connected, over budget or a transport error.
    /// What a component turns into its "unavailable, retry later" answer.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.kind,
            Kind::NotConnected | Kind::Budget | Kind::Transport
        )
    }

    /// The Redis error, when there is one.
    pub fn redis_error(&self) -> Option<&redis::RedisError> {
        self.source.as_ref()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field(
                "source",
                &self
                    .source
                    .as_ref()
                    .map(|e| welcomedly_core::redact::redact_url(&e.to_string()).into_owned()),
            )
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
