//! The open-file limit (`RLIMIT_NOFILE`): raised to its hard limit when the server starts, and
//! used to keep the connection cap below it, so a flood of connections meets a clean refusal
//! rather than `EMFILE` in the accept loop (and in every other part of the process that opens a
//! file or a socket).

use std::sync::OnceLock;

/// Descriptors kept out of the connection cap for everything else the process opens: Redis and
/// PostgreSQL pools, log files, the runtime's own descriptors, refusals being written.
pub(super) const RESERVED_DESCRIPTORS: u64 = 256;

/// The open-file limit after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NofileLimit {
    /// The soft limit now in force (`None`: unlimited, or not known on this platform).
    pub(super) soft: Option<u64>,
    /// The hard limit (`None`: unlimited, or not known).
    pub(super) hard: Option<u64>,
}

impl NofileLimit {
    /// How many connections fit under the soft limit, leaving [`RESERVED_DESCRIPTORS`] (or half
    /// of a small limit) for the rest of the process; `None` when the limit is not known.
    pub(super) fn connections_that_fit(self) -> Option<u64> {
        let soft = self.soft?;
        Some(if soft > 2 * RESERVED_DESCRIPTORS {
            soft - RESERVED_DESCRIPTORS
        } else {
            soft / 2
        })
    }
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit, once per process (Go's runtime does the
/// same at start), and log what it became. Later calls return the first result.
pub(super) fn raise() -> NofileLimit {
    static RAISED: OnceLock<NofileLimit> = OnceLock::new();
    *RAISED.get_or_init(raise_once)
}

#[cfg(unix)]
fn raise_once() -> NofileLimit {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

    let before = getrlimit(Resource::Nofile);
    let (Some(soft), Some(hard)) = (before.current, before.maximum) else {
        // Unlimited (`None`) either way: nothing to raise.
        tracing::info!(
            soft = ?before.current,
            hard = ?before.maximum,
            "open-file limit (RLIMIT_NOFILE) left as it is"
        );
        return NofileLimit {
            soft: before.current,
            hard: before.maximum,
        };
    };
    if soft >= hard {
        tracing::info!(
            soft,
            hard,
            "open-file limit (RLIMIT_NOFILE) already at its hard limit"
        );
        return NofileLimit {
            soft: Some(soft),
            hard: Some(hard),
        };
    }
    let raised = Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::info!(
                from = soft,
                to = hard,
                hard,
                "open-file limit (RLIMIT_NOFILE) raised to its hard limit"
            );
            NofileLimit {
                soft: Some(hard),
                hard: Some(hard),
            }
        }
        Err(err) => {
            tracing::warn!(
                error = %err,
                soft,
                hard,
                "cannot raise the open-file limit (RLIMIT_NOFILE) to its hard limit; the \
                 connection cap stays under the soft limit: raise it before start \
                 (LimitNOFILE= in the systemd unit, ulimit -n)"
            );
            NofileLimit {
                soft: Some(soft),
                hard: Some(hard),
            }
        }
    }
}

#[cfg(not(unix))]
fn raise_once() -> NofileLimit {
    NofileLimit {
        soft: None,
        hard: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_kept_out_of_the_cap() {
        let fit = |soft| {
            NofileLimit {
                soft: Some(soft),
                hard: None,
            }
            .connections_that_fit()
        };
        assert_eq!(fit(1024), Some(768));
        assert_eq!(fit(20_000), Some(19_744));
        assert_eq!(fit(256), Some(128));
        assert_eq!(
            NofileLimit {
                soft: None,
                hard: None
            }
            .connections_that_fit(),
            None
        );
    }

    #[cfg(unix)]
    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let limit = raise();
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(limit.soft, now.current);
        assert_eq!(now.current, now.maximum, "soft raised to hard");
        assert_eq!(raise(), limit, "once per process");
    }
}
