//! The one error type of the support crate.
//!
//! Every message says what failed and what to do about it; when a server fails to start, the
//! message ends with the tail of that server's log, so a failing test shows why at once.
//!
//! ```
//! use welcomedly_testkit::PgCluster;
//!
//! fn print_replica(cluster: &PgCluster) {
//!     match cluster.replica_url(7) {
//!         Ok(url) => println!("{url}"),
//!         Err(error) if error.is_no_such_replica() => {
//!             println!("only {} replicas", cluster.replica_count())
//!         }
//!         Err(error) => println!("{error}"),
//!     }
//! }
//! # let _ = print_replica;
//! ```

use std::fmt;
use std::io;
use std::path::Path;

/// Something the support crate could not do: find a binary, start or stop a server, run a query.
///
/// `Display` says what failed and what to do; [`std::error::Error::source`] holds the underlying
/// I/O error, if any. `Debug` prints the same text plus the source, so `unwrap()` in a test shows
/// the whole story.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: Kind,
    message: String,
    log_tail: Option<String>,
    /// The server's error reply, for [`Error::reply`].
    reply: Option<String>,
    source: Option<io::Error>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NotInstalled,
    NoServerUser,
    NoFreePort,
    Io,
    StartFailed,
    Timeout,
    CommandFailed,
    RedisReply,
    Protocol,
    NoSuchReplica,
    NotRunning,
    InvalidRequest,
}

impl Error {
    fn new(kind: Kind, message: String) -> Self {
        Self {
            inner: Box::new(Inner {
                kind,
                message,
                log_tail: None,
                reply: None,
                source: None,
            }),
        }
    }

    pub(crate) fn not_installed(binary: &str, install_hint: &str) -> Self {
        Self::new(
            Kind::NotInstalled,
            format!("{binary} not found: {install_hint}"),
        )
    }

    pub(crate) fn no_server_user(user: &str) -> Self {
        Self::new(
            Kind::NoServerUser,
            format!(
                "running as root, PostgreSQL refuses to run as root, and there is no `{user}` OS \
                 user to run it as: install postgresql (it creates the user) or `useradd --system \
                 {user}`, or run the tests as an ordinary user"
            ),
        )
    }

    pub(crate) fn no_free_port(tries: usize) -> Self {
        Self::new(
            Kind::NoFreePort,
            format!(
                "no free loopback port found after {tries} tries in 20000..32000: look for \
                 leftover test servers (`ps aux | grep -E 'redis-server|postgres'`) and stop them"
            ),
        )
    }

    pub(crate) fn io(what: impl fmt::Display, hint: &str, source: io::Error) -> Self {
        let mut error = Self::new(Kind::Io, format!("{what} failed: {hint}"));
        error.inner.source = Some(source);
        error
    }

    pub(crate) fn start_failed(what: impl fmt::Display, log: &Path, tail: String) -> Self {
        let mut error = Self::new(
            Kind::StartFailed,
            format!(
                "{what}: see the end of its log {} below; if the port was taken, run the test again",
                log.display()
            ),
        );
        error.inner.log_tail = Some(tail);
        error
    }

    pub(crate) fn timeout(what: impl fmt::Display, log: Option<(&Path, String)>) -> Self {
        let mut error = Self::new(
            Kind::Timeout,
            format!("{what}: the machine may be overloaded; run fewer tests at once"),
        );
        if let Some((path, tail)) = log {
            error.inner.message = format!("{} (log: {})", error.inner.message, path.display());
            error.inner.log_tail = Some(tail);
        }
        error
    }

    pub(crate) fn command_failed(what: impl fmt::Display, stderr: &str, hint: &str) -> Self {
        Self::new(
            Kind::CommandFailed,
            format!("{what}: {}; {hint}", stderr.trim()),
        )
    }

    pub(crate) fn redis_reply(what: impl fmt::Display, reply: &str) -> Self {
        let mut error = Self::new(
            Kind::RedisReply,
            format!("{what} answered with an error: {reply}; check the command and its arguments"),
        );
        error.inner.reply = Some(reply.to_owned());
        error
    }

    pub(crate) fn invalid_request(what: impl fmt::Display, hint: &str) -> Self {
        Self::new(Kind::InvalidRequest, format!("{what}: {hint}"))
    }

    pub(crate) fn protocol(what: impl fmt::Display) -> Self {
        Self::new(
            Kind::Protocol,
            format!(
                "{what}: the server spoke something this small RESP client does not understand"
            ),
        )
    }

    pub(crate) fn no_such_replica(index: usize, count: usize) -> Self {
        Self::new(
            Kind::NoSuchReplica,
            format!(
                "replica {index} does not exist: the cluster has {count} (indices 0..{count}); \
                 start more with PgCluster::start(n)"
            ),
        )
    }

    pub(crate) fn not_running(what: impl fmt::Display, hint: &str) -> Self {
        Self::new(Kind::NotRunning, format!("{what} is not running: {hint}"))
    }

    /// A server binary (`redis-server`, `initdb`, `psql`, …) is not installed.
    #[must_use]
    pub fn is_not_installed(&self) -> bool {
        self.inner.kind == Kind::NotInstalled
    }

    /// The tests run as root and there is no unprivileged OS user to run PostgreSQL as.
    #[must_use]
    pub fn is_no_server_user(&self) -> bool {
        self.inner.kind == Kind::NoServerUser
    }

    /// No free loopback port could be found.
    #[must_use]
    pub fn is_no_free_port(&self) -> bool {
        self.inner.kind == Kind::NoFreePort
    }

    /// An I/O operation failed (spawning a process, creating a directory, a socket); see `source()`.
    #[must_use]
    pub fn is_io(&self) -> bool {
        self.inner.kind == Kind::Io
    }

    /// A server exited during start-up; the message carries its log tail.
    #[must_use]
    pub fn is_start_failed(&self) -> bool {
        self.inner.kind == Kind::StartFailed
    }

    /// Something did not happen in time (a start, a stop, a replica catching up).
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == Kind::Timeout
    }

    /// A helper command (`psql`, `initdb`, `pg_basebackup`, `pg_ctl`) exited unsuccessfully.
    ///
    /// A query against a stopped node fails this way (`psql` cannot connect).
    #[must_use]
    pub fn is_command_failed(&self) -> bool {
        self.inner.kind == Kind::CommandFailed
    }

    /// Redis answered a command with an error reply.
    #[must_use]
    pub fn is_redis_reply(&self) -> bool {
        self.inner.kind == Kind::RedisReply
    }

    /// Redis answered with bytes that are not valid RESP.
    #[must_use]
    pub fn is_protocol(&self) -> bool {
        self.inner.kind == Kind::Protocol
    }

    /// A replica index was out of range.
    #[must_use]
    pub fn is_no_such_replica(&self) -> bool {
        self.inner.kind == Kind::NoSuchReplica
    }

    /// A request the topology cannot serve: a port that is not one of the handle's nodes, a
    /// slot out of `0..16384`, a master with no replica to promote, an invalid configuration.
    #[must_use]
    pub fn is_invalid_request(&self) -> bool {
        self.inner.kind == Kind::InvalidRequest
    }

    /// The server's error reply (`MOVED 3999 127.0.0.1:20001`, `ASK …`, `TRYAGAIN …`,
    /// `CLUSTERDOWN …`, `NOSCRIPT …`) when Redis answered a command with an error
    /// ([`is_redis_reply`](Self::is_redis_reply)), so a test can check which one.
    #[must_use]
    pub fn reply(&self) -> Option<&str> {
        self.inner.reply.as_deref()
    }

    /// A fault control needs a running server (pausing, promoting) and it was stopped or killed.
    #[must_use]
    pub fn is_not_running(&self) -> bool {
        self.inner.kind == Kind::NotRunning
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)?;
        if let Some(tail) = &self.inner.log_tail {
            write!(f, "\n--- log tail ---\n{}", tail.trim_end())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tests unwrap these; print the readable message, not a struct dump.
        fmt::Display::fmt(self, f)?;
        if let Some(source) = &self.inner.source {
            write!(f, "\ncaused by: {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use std::error::Error as _;

    #[test]
    fn start_failure_shows_log_tail_and_hint() {
        let error = Error::start_failed(
            "redis-server on 127.0.0.1:20001 exited",
            Path::new("/tmp/x/redis.log"),
            "bind: Address already in use\n".to_owned(),
        );
        let text = error.to_string();
        assert!(text.contains("/tmp/x/redis.log"), "{text}");
        assert!(text.ends_with("bind: Address already in use"), "{text}");
        assert!(error.is_start_failed());
        assert!(!error.is_timeout());
    }

    #[test]
    fn io_error_is_source_not_repeated_in_display() {
        let error = Error::io(
            "creating a temp dir",
            "check TMPDIR",
            io::Error::other("disk full"),
        );
        assert!(!error.to_string().contains("disk full"));
        assert_eq!(error.source().unwrap().to_string(), "disk full");
        assert!(format!("{error:?}").contains("caused by: disk full"));
    }
}
