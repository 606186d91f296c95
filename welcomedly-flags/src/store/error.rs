//! [`StoreError`]: what went wrong with a flag store or its sync, and what to do.

use std::error::Error as StdError;
use std::fmt;

/// An error of a flag store or of [`FlagSync`](super::FlagSync): the message says what went
/// wrong and what to do; the cause, when there is one, is the `source()`.
pub struct StoreError {
    kind: Kind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Conflict { current: u64 },
    Fenced { seen: u64 },
    Unavailable,
    Corrupt,
    Rejected,
    Config,
}

impl StoreError {
    pub(crate) fn conflict(expected: u64, current: u64) -> Self {
        Self {
            kind: Kind::Conflict { current },
            message: format!(
                "the flag set changed since it was read (expected version {expected}, the store holds {current}): reload it, reapply the edit and write again with version {current}"
            ),
            source: None,
        }
    }

    pub(crate) fn fenced(flag: &str, token: u64, seen: u64) -> Self {
        Self {
            kind: Kind::Fenced { seen },
            message: format!(
                "the flag store refused the rollout's write of flag {flag:?} with fencing token {token}: it has seen token {seen}, so another instance acts for this rollout now and this one stops (if the rollout's counter {{wd:rollout:{flag}}}:fence was reset by hand, set it above {seen})",
                flag = super::bounded(flag, 128)
            ),
            source: None,
        }
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Unavailable,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn unavailable_because(
        message: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self {
            kind: Kind::Unavailable,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn corrupt(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Corrupt,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn rejected(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Rejected,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Config,
            message: message.into(),
            source: None,
        }
    }

    /// Whether a compare-and-set write found another version than the one it expected (see
    /// [`current_version`](Self::current_version)).
    pub fn is_conflict(&self) -> bool {
        matches!(self.kind, Kind::Conflict { .. })
    }

    /// The version the store holds, for a conflict.
    pub fn current_version(&self) -> Option<u64> {
        match self.kind {
            Kind::Conflict { current } => Some(current),
            _ => None,
        }
    }

    /// Whether a guarded rollout's fenced write (or fence raise) was refused because the store
    /// has seen a larger fencing token for the flag: another instance acts for the rollout now
    /// (see [`fenced_by`](Self::fenced_by)).
    pub fn is_fenced(&self) -> bool {
        matches!(self.kind, Kind::Fenced { .. })
    }

    /// The larger token the store has seen, for a fenced write.
    pub fn fenced_by(&self) -> Option<u64> {
        match self.kind {
            Kind::Fenced { seen } => Some(seen),
            _ => None,
        }
    }

    /// Whether the store could not be reached or did not answer in time (retrying later may
    /// work: check that it runs and is reachable).
    pub fn is_unavailable(&self) -> bool {
        self.kind == Kind::Unavailable
    }

    /// Whether the store answered with data in an unexpected shape (something else wrote
    /// under the store's keys).
    pub fn is_corrupt(&self) -> bool {
        self.kind == Kind::Corrupt
    }

    /// Whether the stored document was refused by the application's `compile` (fix the
    /// document in the store).
    pub fn is_rejected(&self) -> bool {
        self.kind == Kind::Rejected
    }

    /// Whether the settings are wrong (fix the configuration).
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
