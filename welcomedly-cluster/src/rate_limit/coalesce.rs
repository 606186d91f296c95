//! Coalesced checks: while one script call of a group is in flight, the checks that arrive
//! queue and go together in the group's next call ([`script::ACQUIRE_BATCH`]).
//!
//! A group is every request on one node or Sentinel primary, and one Redis Cluster slot on a
//! cluster (a script call names keys of one slot only). At most one call per group is in
//! flight: an idle group's first request *leads* (its own call, as without coalescing, so an
//! unloaded instance pays nothing for the queue); requests arriving meanwhile wait in the
//! group's queue, and when the call in flight ends the queue goes in one call (at most
//! [`MAX_BATCH_CHECKS`] checks; the rest in the call after). Per request, nothing changes:
//! the script decides each request as the single-request script would, in arrival order, a
//! rejected request consumes nothing, and each request still waits at most the backend's
//! budget from its arrival (past it, its failure mode decides, and a call not yet sent leaves
//! it out).
//!
//! [`script::ACQUIRE_BATCH`]: super::script::ACQUIRE_BATCH

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use smallvec::SmallVec;
use tokio::sync::oneshot;
use welcomedly_core::rate_limit::backend::Decisions;

use super::backend::Inner;

/// The most checks (keys) one coalesced call carries; a longer queue goes in several calls.
/// Bounds the script's run time (Redis runs nothing else meanwhile) and the reply's size.
pub(super) const MAX_BATCH_CHECKS: usize = 128;

/// The most requests waiting in one group: past it, a request makes its own call (the
/// behaviour without coalescing), so the queue's memory is bounded whatever the load.
pub(super) const MAX_QUEUED: usize = 4096;

/// The state keys of one request's checks.
pub(super) type Names = SmallVec<[Vec<u8>; 2]>;
/// The script arguments of one request's checks, 4 per check.
pub(super) type Args = SmallVec<[[u64; 4]; 2]>;

/// One queued request: its keys and script arguments, and where its decisions go.
pub(super) struct Pending {
    pub(super) names: Names,
    pub(super) args: Args,
    tx: oneshot::Sender<Option<Decisions>>,
}

#[derive(Default)]
struct Group {
    queue: VecDeque<Pending>,
}

/// The groups with a call in flight (a group absent from the map is idle), and counters.
pub(super) struct Coalescer {
    /// Off: every request makes its own call.
    enabled: bool,
    busy: Mutex<HashMap<u16, Group, foldhash::fast::RandomState>>,
    /// Group by Redis Cluster slot (a cluster), or everything in one group.
    per_slot: bool,
    calls: AtomicU64,
    coalesced: AtomicU64,
}

/// What a request does: lead its group's next call, wait for a coalesced one, or (a full
/// queue, a poisoned lock) make its own call.
pub(super) enum Turn {
    Lead(Lead),
    Wait(oneshot::Receiver<Option<Decisions>>),
    Alone,
}

impl Coalescer {
    pub(super) fn new(enabled: bool, per_slot: bool) -> Self {
        Self {
            enabled,
            busy: Mutex::new(HashMap::default()),
            per_slot,
            calls: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
        }
    }

    /// The group of a request whose keys are all in `slot`.
    pub(super) fn group(&self, slot: u16) -> u16 {
        if self.per_slot { slot } else { 0 }
    }

    /// Coalesced calls made, and the requests they carried.
    pub(super) fn stats(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.coalesced.load(Ordering::Relaxed),
        )
    }

    /// Joins group `group`: leads it when idle, else queues `pending()`.
    pub(super) fn join(
        inner: &Arc<Inner>,
        group: u16,
        pending: impl FnOnce() -> (Names, Args),
    ) -> Turn {
        if !inner.coalescer.enabled {
            return Turn::Alone;
        }
        let Ok(mut busy) = inner.coalescer.busy.lock() else {
            return Turn::Alone;
        };
        match busy.get_mut(&group) {
            None => {
                busy.insert(group, Group::default());
                Turn::Lead(Lead {
                    inner: inner.clone(),
                    group,
                })
            }
            Some(g) if g.queue.len() >= MAX_QUEUED => Turn::Alone,
            Some(g) => {
                let (names, args) = pending();
                let (tx, rx) = oneshot::channel();
                g.queue.push_back(Pending { names, args, tx });
                Turn::Wait(rx)
            }
        }
    }
}

/// The group's call in flight. When it ends (or its future is dropped) the queue that built
/// up meanwhile is sent in one call from a task of its own, or the group turns idle.
pub(super) struct Lead {
    inner: Arc<Inner>,
    group: u16,
}

impl Drop for Lead {
    fn drop(&mut self) {
        let coalescer = &self.inner.coalescer;
        let Ok(mut busy) = coalescer.busy.lock() else {
            return;
        };
        let Some(g) = busy.get_mut(&self.group) else {
            return;
        };
        // Requests that stopped waiting (past their budget, or their client left) are not sent.
        let mut batch: Vec<Pending> = Vec::new();
        let mut checks = 0;
        while let Some(p) = g.queue.front() {
            if p.tx.is_closed() {
                g.queue.pop_front();
                continue;
            }
            if !batch.is_empty() && checks + p.names.len() > MAX_BATCH_CHECKS {
                break;
            }
            checks += p.names.len();
            if let Some(p) = g.queue.pop_front() {
                batch.push(p);
            }
        }
        if batch.is_empty() {
            busy.remove(&self.group);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to run the call on (shutting down): the waiters decide per failure
            // mode when their senders drop.
            busy.remove(&self.group);
            return;
        };
        drop(busy);
        coalescer.calls.fetch_add(1, Ordering::Relaxed);
        coalescer
            .coalesced
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let next = Lead {
            inner: self.inner.clone(),
            group: self.group,
        };
        runtime.spawn(async move {
            let answer = next.inner.acquire_batch(&batch, checks).await;
            // Hand the group on (the next batch, or idle) before answering: the answers wake
            // requests whose next checks then find the group in the state it will be in.
            let mut answers = answer.map(IntoIterator::into_iter);
            drop(next);
            for p in batch {
                let d: Option<Decisions> = match answers.as_mut() {
                    Some(it) => {
                        let mine: Decisions = it.by_ref().take(p.names.len()).collect();
                        (mine.len() == p.names.len()).then_some(mine)
                    }
                    None => None,
                };
                // A waiter that gave up meanwhile decided by itself already.
                let _ = p.tx.send(d);
            }
        });
    }
}
