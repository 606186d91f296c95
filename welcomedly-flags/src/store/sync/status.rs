//! What the sync knows about itself: the applied version, staleness, the last problem, counters;
//! read through [`SyncHealth`] (a cloneable view, and the health check).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use welcomedly_core::health::{CheckFuture, CheckOutcome, HealthCheck};

/// State shared by the sync task and every view of it.
pub(super) struct Shared {
    pub(super) store_name: String,
    pub(super) applied: watch::Sender<u64>,
    pub(super) store_version: AtomicU64,
    pub(super) resyncs: AtomicU64,
    pub(super) rejected_payloads: AtomicU64,
    pub(super) applies: AtomicU64,
    pub(super) snapshot_write_failures: AtomicU64,
    pub(super) from_snapshot: AtomicBool,
    pub(super) problems: Mutex<Problems>,
    /// Digests of the served document and of the last rejected one, so a version number reused
    /// with other content (a write lost in a failover, the number written again) is seen as
    /// new.
    pub(super) digests: Mutex<Digests>,
}

/// See [`Shared::digests`]: [`body_digest`] of the document served and of the one refused.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Digests {
    pub(super) applied: Option<u64>,
    pub(super) rejected: Option<u64>,
}

/// A digest of a document's text, to tell two documents of one version apart (the documents
/// come from the operators' own store: no adversary picks collisions).
pub(super) fn body_digest(body: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

/// Why the snapshot may not be what the store holds. Each is cleared by what fixes it.
#[derive(Default)]
pub(super) struct Problems {
    /// Since when the store could not be read, with the error that said so.
    pub(super) unreachable: Option<(Instant, SystemTime, String)>,
    /// A version the application's compile refused, with the message.
    pub(super) rejected: Option<(u64, String)>,
    /// The store holds a lower version than the one served (it lost its data).
    pub(super) behind: Option<String>,
}

impl Shared {
    pub(super) fn new(store_name: String) -> Self {
        Self {
            store_name,
            applied: watch::Sender::new(0),
            store_version: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            rejected_payloads: AtomicU64::new(0),
            applies: AtomicU64::new(0),
            snapshot_write_failures: AtomicU64::new(0),
            from_snapshot: AtomicBool::new(false),
            problems: Mutex::new(Problems::default()),
            digests: Mutex::new(Digests::default()),
        }
    }

    pub(super) fn digests(&self) -> MutexGuard<'_, Digests> {
        self.digests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn problems(&self) -> MutexGuard<'_, Problems> {
        self.problems.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn applied(&self) -> u64 {
        *self.applied.borrow()
    }
}

/// A read-only view of a running [`FlagSync`](super::FlagSync): its health check and its
/// metrics. Cloneable and cheap; holding one does not keep the sync running (dropping the
/// [`FlagSyncHandle`](super::FlagSyncHandle) stops it). Register it with
/// `registry.register("flags", handle.health(), Affects::Nothing)`: a stale snapshot still
/// serves, so it reports `Degraded`, never `Unhealthy`.
#[derive(Clone)]
pub struct SyncHealth {
    pub(super) shared: Arc<Shared>,
}

impl SyncHealth {
    /// The version of the snapshot being served (0 when none was ever applied).
    pub fn applied_version(&self) -> u64 {
        self.shared.applied()
    }

    /// The version last read from the store (it can be above the applied one when that
    /// version was rejected, below it when the store lost its data).
    pub fn store_version(&self) -> u64 {
        self.shared.store_version.load(Ordering::Relaxed)
    }

    /// Whether the store could not be read on the last attempt: the snapshot may be out of
    /// date.
    pub fn is_stale(&self) -> bool {
        self.shared.problems().unreachable.is_some()
    }

    /// How long the store has been unreachable (zero when it is not): the bound on how out of
    /// date the snapshot may be. A gauge for metrics.
    pub fn staleness(&self) -> Duration {
        self.shared
            .problems()
            .unreachable
            .as_ref()
            .map(|(since, _, _)| since.elapsed())
            .unwrap_or_default()
    }

    /// The current problem, if any: the store unreachable, a rejected document, a store that
    /// lost its data. `None` when the snapshot is the store's current version.
    pub fn last_error(&self) -> Option<String> {
        let p = self.shared.problems();
        p.unreachable
            .as_ref()
            .map(|(_, _, e)| e.clone())
            .or_else(|| p.rejected.as_ref().map(|(_, e)| e.clone()))
            .or_else(|| p.behind.clone())
    }

    /// Full reloads after a reconnect, a resubscribe or a failed check (a counter).
    pub fn resyncs(&self) -> u64 {
        self.shared.resyncs.load(Ordering::Relaxed)
    }

    /// Documents the application's compile refused (a counter).
    pub fn rejected_payloads(&self) -> u64 {
        self.shared.rejected_payloads.load(Ordering::Relaxed)
    }

    /// Snapshots applied, the first one included (a counter).
    pub fn applies(&self) -> u64 {
        self.shared.applies.load(Ordering::Relaxed)
    }

    /// Failed writes of the snapshot file (a counter; each is logged).
    pub fn snapshot_write_failures(&self) -> u64 {
        self.shared.snapshot_write_failures.load(Ordering::Relaxed)
    }

    /// Whether the sync started from the snapshot file because the store was unreachable or
    /// invalid at startup.
    pub fn started_from_snapshot(&self) -> bool {
        self.shared.from_snapshot.load(Ordering::Relaxed)
    }

    fn outcome(&self) -> CheckOutcome {
        let applied = self.applied_version();
        let p = self.shared.problems();
        if let Some((since, wall, error)) = &p.unreachable {
            return CheckOutcome::degraded(format!(
                "stale: {} unreachable since {} ({} s), serving version {applied}: {error}",
                self.shared.store_name,
                utc(*wall),
                since.elapsed().as_secs()
            ));
        }
        if let Some((_, error)) = &p.rejected {
            return CheckOutcome::degraded(error.clone());
        }
        if let Some(error) = &p.behind {
            return CheckOutcome::degraded(error.clone());
        }
        CheckOutcome::Healthy
    }
}

impl HealthCheck for SyncHealth {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(std::future::ready(self.outcome()))
    }
}

impl fmt::Debug for SyncHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncHealth")
            .field("store", &self.shared.store_name)
            .field("applied_version", &self.applied_version())
            .field("store_version", &self.store_version())
            .field("stale", &self.is_stale())
            .field("last_error", &self.last_error())
            .finish()
    }
}

/// `t` as `YYYY-MM-DDTHH:MM:SSZ` (UTC), without a date crate.
pub(super) fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // a leap day
        assert_eq!(utc(t), "2024-02-29T12:34:56Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_798_761_599);
        assert_eq!(utc(t), "2026-12-31T23:59:59Z");
    }
}
