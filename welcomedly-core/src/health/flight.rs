//! [`Flight`]: at most one run of a set of checks at a time, shared by every caller that asks
//! while it is in progress (single flight).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared, WeakShared};

use super::CheckReport;

/// The result of one run: each check's line, by name.
pub(super) type Checks = BTreeMap<String, CheckReport>;

/// One run of the checks, awaited by every caller that joined it.
///
/// `Shared` rather than a task spawned by the first caller: any waiter polls the run, so the
/// caller that started it may be dropped (a client that hung up) and the others still get their
/// answer; and when every waiter is gone the run is dropped with them, so nobody pays for a
/// result nobody reads.
pub(super) type Run = Shared<BoxFuture<'static, Checks>>;

/// The slot of the run in progress for one kind of request (`/health` or `/health/ready`).
#[derive(Default)]
pub(super) struct Flight {
    // Weak: the slot must not keep a run alive once all its waiters are gone; a run abandoned
    // half-way would otherwise be resumed later, its timeouts long expired, and answer stale
    // timeouts to the next caller.
    in_progress: Mutex<Option<WeakShared<BoxFuture<'static, Checks>>>>,
}

impl Flight {
    /// The run in progress, or a new one from `start` when there is none (never run, finished,
    /// or abandoned by all its waiters). A finished run is never handed out: single flight
    /// only, no caching, so a call after the run completed probes the dependencies again.
    pub(super) fn join_or_start(&self, start: impl FnOnce() -> BoxFuture<'static, Checks>) -> Run {
        // Held only for this synchronous swap, never across an await.
        let mut slot = self
            .in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // `peek` is `None` while the run is pending. (It panics only for a run whose poll
        // panicked, and a run cannot: each check runs under `catch_unwind`.)
        if let Some(run) = slot.as_ref().and_then(WeakShared::upgrade)
            && run.peek().is_none()
        {
            return run;
        }
        let run = start().shared();
        *slot = run.downgrade();
        run
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::FutureExt as _;

    use super::*;

    fn counted(starts: &AtomicUsize) -> BoxFuture<'static, Checks> {
        starts.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            tokio::task::yield_now().await;
            Checks::new()
        })
    }

    #[tokio::test]
    async fn a_pending_run_is_joined_a_finished_or_abandoned_one_is_not() {
        let flight = Flight::default();
        let starts = AtomicUsize::new(0);

        let first = flight.join_or_start(|| counted(&starts));
        let mut second = flight.join_or_start(|| counted(&starts));
        assert!((&mut second).now_or_never().is_none());
        assert_eq!(starts.load(Ordering::SeqCst), 1, "pending: joined");

        assert!(second.await.is_empty());
        // `first` has not read the result yet, so the finished run is still alive: it must
        // not be handed out.
        let third = flight.join_or_start(|| counted(&starts));
        assert_eq!(starts.load(Ordering::SeqCst), 2, "finished: not joined");
        assert!(first.await.is_empty());

        drop(third);
        let _fourth = flight.join_or_start(|| counted(&starts));
        assert_eq!(starts.load(Ordering::SeqCst), 3, "abandoned: not joined");
    }
}
