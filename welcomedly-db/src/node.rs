//! One node of the router: its pool, its routing state (atomics read on every pick) and its
//! health bookkeeping (eject after K failures or too much lag, readmit after M good probes).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use sqlx::{Database, Pool};

/// Why a node is out of rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ejection {
    /// Not probed successfully yet.
    Unknown,
    /// Failed this many times in a row; the last error.
    Failing(String),
    /// Too far behind the primary.
    Lagging(String),
}

impl Ejection {
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Unknown => "not reached yet".to_owned(),
            Self::Failing(e) | Self::Lagging(e) => e.clone(),
        }
    }
}

/// What the health bookkeeping decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transition {
    Ejected(Ejection),
    Readmitted,
}

#[derive(Debug)]
struct Bookkeeping {
    failures: u32,
    successes: u32,
    ejection: Option<Ejection>,
}

/// A node: primary or replica, as configured (its current role comes from the probes).
#[derive(Debug)]
pub(crate) struct NodeState<DB: Database> {
    /// "primary", "replica 0", … (its configured place).
    pub(crate) label: String,
    /// Its URL with the password redacted.
    pub(crate) url: String,
    pub(crate) pool: Pool<DB>,
    pub(crate) outstanding: AtomicU32,
    healthy: AtomicBool,
    in_recovery: AtomicBool,
    /// Replayed position (replica) or flushed position (primary), 0 when unknown.
    pub(crate) position: AtomicU64,
    pub(crate) timeline: AtomicU32,
    pub(crate) lag_bytes: AtomicU64,
    pub(crate) lag_micros: AtomicU64,
    /// Micros since the router started at which an on-the-spot replay check last ran.
    pub(crate) last_spot_check: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) ejections: AtomicU64,
    pub(crate) readmissions: AtomicU64,
    book: Mutex<Bookkeeping>,
    /// Wakes the requests waiting on this node when it is ejected, so they move on at once
    /// instead of waiting out the pool's acquire timeout.
    pub(crate) ejected: tokio::sync::Notify,
}

impl<DB: Database> NodeState<DB> {
    pub(crate) fn new(
        label: String,
        url: String,
        pool: Pool<DB>,
        replica: bool,
        healthy: bool,
    ) -> Self {
        Self {
            label,
            url,
            pool,
            outstanding: AtomicU32::new(0),
            healthy: AtomicBool::new(healthy),
            in_recovery: AtomicBool::new(replica),
            position: AtomicU64::new(0),
            timeline: AtomicU32::new(0),
            lag_bytes: AtomicU64::new(0),
            lag_micros: AtomicU64::new(0),
            last_spot_check: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            readmissions: AtomicU64::new(0),
            book: Mutex::new(Bookkeeping {
                failures: 0,
                successes: 0,
                ejection: (!healthy).then_some(Ejection::Unknown),
            }),
            ejected: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub(crate) fn in_recovery(&self) -> bool {
        self.in_recovery.load(Ordering::Acquire)
    }

    pub(crate) fn set_in_recovery(&self, yes: bool) {
        self.in_recovery.store(yes, Ordering::Release);
    }

    /// A healthy node in recovery: can serve reads as a replica.
    pub(crate) fn is_usable_replica(&self) -> bool {
        self.is_healthy() && self.in_recovery()
    }

    pub(crate) fn ejection(&self) -> Option<Ejection> {
        self.lock().ejection.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bookkeeping> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A probe failed or a query met a connection-level error.
    pub(crate) fn failed(&self, error: String, threshold: u32) -> Option<Transition> {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut book = self.lock();
        book.successes = 0;
        book.failures = book.failures.saturating_add(1);
        if book.ejection.is_none() && book.failures >= threshold.max(1) {
            let ejection = Ejection::Failing(error);
            book.ejection = Some(ejection.clone());
            self.eject();
            return Some(Transition::Ejected(ejection));
        }
        if book.ejection.is_some() {
            // Still out: keep the latest error for the health report.
            book.ejection = Some(Ejection::Failing(error));
        }
        None
    }

    /// A probe answered but the node is too far behind: out at once (readmission needs M good
    /// probes, which is what keeps it from flapping).
    pub(crate) fn lagging(&self, why: String) -> Option<Transition> {
        let mut book = self.lock();
        book.failures = 0;
        book.successes = 0;
        match book.ejection {
            None => {
                let ejection = Ejection::Lagging(why);
                book.ejection = Some(ejection.clone());
                self.eject();
                Some(Transition::Ejected(ejection))
            }
            Some(_) => {
                book.ejection = Some(Ejection::Lagging(why));
                None
            }
        }
    }

    /// A good probe. A node never admitted yet is admitted at once (a start-up probe); an
    /// ejected one after `threshold` good probes in a row.
    pub(crate) fn succeeded(&self, threshold: u32) -> Option<Transition> {
        let mut book = self.lock();
        book.failures = 0;
        let never_seen = match book.ejection.as_ref() {
            None => return None,
            Some(e) => *e == Ejection::Unknown,
        };
        book.successes = book.successes.saturating_add(1);
        if never_seen || book.successes >= threshold.max(1) {
            book.ejection = None;
            book.successes = 0;
            self.readmissions.fetch_add(1, Ordering::Relaxed);
            self.healthy.store(true, Ordering::Release);
            return Some(Transition::Readmitted);
        }
        None
    }

    fn eject(&self) {
        self.healthy.store(false, Ordering::Release);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        // What it replayed before may not be what it shows after a crash restart: forget it,
        // the probes that readmit it measure it again.
        self.position.store(0, Ordering::Release);
        self.ejected.notify_waiters();
    }
}

/// The router's nodes, the primary first: never empty by construction, so there is always a
/// node to fall back on (no "impossible" panic on a lookup).
pub(crate) struct Nodes<T> {
    primary: T,
    replicas: Vec<T>,
}

impl<T> Nodes<T> {
    pub(crate) fn new(primary: T, replicas: Vec<T>) -> Self {
        Self { primary, replicas }
    }

    /// The configured primary (index 0).
    pub(crate) fn first(&self) -> &T {
        &self.primary
    }

    /// Node `index` (0 = the configured primary).
    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        match index.checked_sub(1) {
            None => Some(&self.primary),
            Some(i) => self.replicas.get(i),
        }
    }

    /// Node `index`, or the primary when there is no such node.
    pub(crate) fn get_or_first(&self, index: usize) -> &T {
        self.get(index).unwrap_or(&self.primary)
    }

    pub(crate) fn len(&self) -> usize {
        1 + self.replicas.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        std::iter::once(&self.primary).chain(&self.replicas)
    }
}

impl<'a, T> IntoIterator for &'a Nodes<T> {
    type Item = &'a T;
    type IntoIter = std::iter::Chain<std::iter::Once<&'a T>, std::slice::Iter<'a, T>>;

    fn into_iter(self) -> Self::IntoIter {
        std::iter::once(&self.primary).chain(self.replicas.iter())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sqlx::Sqlite;

    fn node(healthy: bool) -> NodeState<Sqlite> {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .connect_lazy("sqlite::memory:")
            .unwrap();
        NodeState::new(
            "replica 0".into(),
            "sqlite::memory:".into(),
            pool,
            true,
            healthy,
        )
    }

    #[tokio::test]
    async fn ejected_after_k_failures_readmitted_after_m_successes() {
        let n = node(true);
        assert_eq!(n.failed("refused".into(), 2), None);
        assert!(n.is_healthy());
        assert!(matches!(
            n.failed("refused".into(), 2),
            Some(Transition::Ejected(Ejection::Failing(_)))
        ));
        assert!(!n.is_healthy());
        assert_eq!(n.succeeded(2), None);
        assert_eq!(n.failed("refused".into(), 2), None); // resets the good streak
        assert_eq!(n.succeeded(2), None);
        assert_eq!(n.succeeded(2), Some(Transition::Readmitted));
        assert!(n.is_healthy());
        assert_eq!(n.ejections.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_node_never_seen_is_admitted_by_its_first_good_probe() {
        let n = node(false);
        assert_eq!(n.ejection(), Some(Ejection::Unknown));
        assert_eq!(n.succeeded(3), Some(Transition::Readmitted));
    }

    #[tokio::test]
    async fn lag_ejects_at_once_and_readmission_needs_m_good_probes() {
        let n = node(true);
        assert!(matches!(
            n.lagging("5 s behind".into()),
            Some(Transition::Ejected(Ejection::Lagging(_)))
        ));
        assert_eq!(n.lagging("6 s behind".into()), None);
        assert_eq!(n.succeeded(2), None);
        assert_eq!(n.lagging("1 s behind".into()), None);
        assert_eq!(n.succeeded(2), None);
        assert_eq!(n.succeeded(2), Some(Transition::Readmitted));
    }
}
