//! The one classifier: what a failed Redis call says about the connection it ran on.

use redis::{ErrorKind, RedisError, ServerErrorKind};

/// What a failed call says about its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// I/O error, closed connection or a call past the budget: counts towards the failure
    /// threshold (a single slow answer keeps the connection).
    Transport,
    /// The connection cannot be used any more: a desynchronised reply stream (`Parse`, as
    /// redis-rs' `retry_method()` says `Reconnect`), a Redis that cannot serve it (`READONLY`
    /// after a failover, `LOADING`, `MASTERDOWN`, `CLUSTERDOWN`, `TRYAGAIN`, `MOVED`/`ASK`
    /// past the cluster client's retries) or lost authentication: replaced at once, without
    /// waiting for the threshold — on one node; a cluster connection repairs itself (see
    /// [`Link`](crate::Link)).
    Replace,
    /// Redis answered with an error a new connection would not fix (`WRONGTYPE`, `OOM`, a
    /// script error), or the reply did not convert to the asked type: the connection stays.
    Server,
}

impl Failure {
    /// Its name in metrics and logs (a closed set).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transport => "transport",
            Self::Replace => "replace",
            Self::Server => "server",
        }
    }
}

/// Classifies `e` (see [`Failure`]).
pub fn classify(e: &RedisError) -> Failure {
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::ReadOnly
            | ServerErrorKind::BusyLoading
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::TryAgain
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask,
        )
        | ErrorKind::AuthenticationFailed
        | ErrorKind::Parse => Failure::Replace,
        ErrorKind::Server(_)
        | ErrorKind::Extension
        | ErrorKind::UnexpectedReturnType
        | ErrorKind::Client => Failure::Server,
        _ => Failure::Transport,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_replace_the_connection_and_type_errors_keep_it() {
        let parse = RedisError::from((ErrorKind::Parse, "bad reply"));
        assert_eq!(classify(&parse), Failure::Replace);
        let ty = RedisError::from((ErrorKind::UnexpectedReturnType, "not an int"));
        assert_eq!(classify(&ty), Failure::Server);
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(classify(&io), Failure::Transport);
    }
}
