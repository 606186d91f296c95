//! The sync task: reacts to the store's announcements, loads, compiles, applies.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use tokio::sync::watch;
use welcomedly_core::backoff::Backoff;

use super::status::{Digests, Shared, body_digest};
use crate::store::{Document, FlagStore, Notice, StoreError, bounded, snapshot_file};

/// The longest a compile error is quoted in logs and health (it may quote the payload).
const MAX_REASON: usize = 512;

/// What one sync attempt found, beyond "the store answered".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// A new version was compiled and applied.
    Applied,
    /// The snapshot is the store's version already (or the store is empty and nothing was
    /// ever applied).
    Current,
    /// The store's document was refused by compile; the old snapshot stays.
    Rejected,
    /// The store holds less than what is served (it lost its data); the snapshot stays.
    Behind,
}

pub(super) struct Worker<C, A> {
    pub(super) store: Arc<dyn FlagStore>,
    /// Shared with the blocking threads that run it.
    pub(super) compile: Arc<C>,
    pub(super) apply: A,
    pub(super) shared: Arc<Shared>,
    pub(super) snapshot_file: Option<PathBuf>,
}

impl<C, A, T, E> Worker<C, A>
where
    C: Fn(&str, u64) -> Result<T, E> + Send + Sync + 'static,
    A: Fn(T) + Send + Sync + 'static,
    T: Send + 'static,
    E: fmt::Display,
{
    /// Loads the store's document and applies it if it is new and valid.
    pub(super) async fn sync_once(&self) -> Result<Outcome, StoreError> {
        let doc = match self.store.load().await {
            Ok(doc) => doc,
            Err(e) => {
                self.unreachable(&e);
                return Err(e);
            }
        };
        self.reachable();
        Ok(self.offer(doc).await)
    }

    /// Decides what to do with a document read from the store.
    pub(super) async fn offer(&self, doc: Document) -> Outcome {
        self.shared
            .store_version
            .store(doc.version, Ordering::Relaxed);
        let applied = self.shared.applied();
        let behind = self.shared.problems().behind.is_some();
        if doc.version == 0 {
            if applied == 0 {
                return Outcome::Current;
            }
            // Never apply an empty set silently: an empty store next to a served version means
            // the store lost its data (a Redis restarted without persistence, a FLUSHALL), not
            // that someone deleted every flag. Serve what we have and say so.
            let message = format!(
                "{} is empty (version 0) while this instance serves version {applied}: it lost its data (a Redis restarted without persistence?). Serving version {applied} until a flag set is written again: save the flag set once more (e.g. through the admin) to recover",
                self.store.describe()
            );
            if !behind {
                tracing::warn!(applied, "{message}");
            }
            self.shared.problems().behind = Some(message);
            return Outcome::Behind;
        }
        let digest = body_digest(&doc.body);
        let digests = *self.shared.digests();
        // After the store was seen behind, any document it holds was written since the reset:
        // it replaces ours even at a version we served before.
        if doc.version == applied && !behind {
            // A version is its content, except when a write was lost (a failover) and its
            // number written again with other content: that is new.
            if digests.applied.is_none_or(|d| d == digest) {
                return Outcome::Current;
            }
            tracing::warn!(
                version = doc.version,
                "{} holds version {} with other content than the one served: a write was lost (a failover?) and its version number reused; applying the store's document",
                self.store.describe(),
                doc.version
            );
        }
        if digests.rejected == Some(digest)
            && self
                .shared
                .problems()
                .rejected
                .as_ref()
                .is_some_and(|(v, _)| *v == doc.version)
        {
            return Outcome::Rejected;
        }
        if doc.version < applied {
            tracing::warn!(
                applied,
                store_version = doc.version,
                "{}'s version went back: it was reset and written again; applying its document",
                self.store.describe()
            );
        }
        let (doc, compiled) = self.compile_off_thread(doc).await;
        let compiled = match compiled {
            Ok(compiled) => compiled,
            Err(reason) => {
                self.reject(doc.version, &reason);
                self.shared.digests().rejected = Some(digest);
                return Outcome::Rejected;
            }
        };
        self.install(compiled, &doc).await;
        Outcome::Applied
    }

    /// Runs `compile` on a blocking thread: compiling a large flag set (its regular expressions
    /// above all) takes milliseconds of CPU that would stall every other task of this async
    /// worker thread. The error comes back as text, so it need not be `Send`.
    pub(super) async fn compile_off_thread(&self, doc: Document) -> (Document, Result<T, String>) {
        let compile = self.compile.clone();
        let version = doc.version;
        let task = tokio::task::spawn_blocking(move || {
            let compiled = compile(&doc.body, doc.version).map_err(|e| e.to_string());
            (doc, compiled)
        });
        match task.await {
            Ok(done) => done,
            // The document went with the task: only its version is left to report.
            Err(e) => (
                Document {
                    version,
                    body: String::new(),
                },
                Err(format!(
                    "compiling it failed on its thread ({}); this is a bug in the compile function",
                    if e.is_panic() {
                        "it panicked"
                    } else {
                        "cancelled"
                    }
                )),
            ),
        }
    }

    /// Applies a compiled snapshot and records it (in memory and in the snapshot file).
    pub(super) async fn install(&self, compiled: T, doc: &Document) {
        (self.apply)(compiled);
        self.shared.applies.fetch_add(1, Ordering::Relaxed);
        {
            let mut p = self.shared.problems();
            p.rejected = None;
            p.behind = None;
        }
        *self.shared.digests() = Digests {
            applied: Some(body_digest(&doc.body)),
            rejected: None,
        };
        self.shared.applied.send_replace(doc.version);
        tracing::debug!(version = doc.version, "flag snapshot applied");
        self.save(doc).await;
    }

    pub(super) fn reject(&self, version: u64, error: &str) {
        self.shared
            .rejected_payloads
            .fetch_add(1, Ordering::Relaxed);
        let applied = self.shared.applied();
        let reason = bounded(error, MAX_REASON);
        let message = format!(
            "version {version} of the flag set in {} was rejected ({reason}); still serving version {applied}: fix the document and write it again",
            self.store.describe()
        );
        tracing::error!(version, applied, "{message}");
        self.shared.problems().rejected = Some((version, message));
    }

    pub(super) fn unreachable(&self, e: &StoreError) {
        let mut p = self.shared.problems();
        let text = e.to_string();
        match &mut p.unreachable {
            Some((_, _, last)) => *last = text,
            None => {
                tracing::warn!(error = %e, applied = self.shared.applied(), "the flag store is unreachable: serving the last snapshot");
                p.unreachable = Some((Instant::now(), SystemTime::now(), text));
            }
        }
    }

    fn reachable(&self) {
        if let Some((since, _, _)) = self.shared.problems().unreachable.take() {
            tracing::info!(
                stale_for_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                "the flag store answers again"
            );
        }
    }

    async fn save(&self, doc: &Document) {
        let Some(path) = self.snapshot_file.clone() else {
            return;
        };
        let doc = doc.clone();
        let result = tokio::task::spawn_blocking(move || snapshot_file::write(&path, &doc))
            .await
            .unwrap_or_else(|e| Err(format!("the snapshot writer failed: {e}")));
        if let Err(e) = result {
            self.shared
                .snapshot_write_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "the flag snapshot file was not updated: a restart while the store is down would start from an older one");
        }
    }
}

/// The sync loop: waits for an announcement (or, while the store fails, for the next retry),
/// then syncs. Ends when the store drops its announcement channel or the task is aborted.
pub(super) async fn run<C, A, T, E>(
    worker: Worker<C, A>,
    mut notices: watch::Receiver<Notice>,
    mut seen_epoch: u64,
    mut pending: bool,
    backoff: Backoff,
) where
    C: Fn(&str, u64) -> Result<T, E> + Send + Sync + 'static,
    A: Fn(T) + Send + Sync + 'static,
    T: Send + 'static,
    E: fmt::Display,
{
    let mut delays = backoff.delays();
    loop {
        let notice = if pending {
            tokio::select! {
                changed = notices.changed() => match changed {
                    Ok(()) => Some(*notices.borrow_and_update()),
                    Err(_) => return,
                },
                () = tokio::time::sleep(delays.next_delay()) => None,
            }
        } else {
            if notices.changed().await.is_err() {
                return;
            }
            Some(*notices.borrow_and_update())
        };
        if let Some(n) = notice {
            let resync = n.epoch != seen_epoch;
            seen_epoch = n.epoch;
            if resync {
                worker.shared.resyncs.fetch_add(1, Ordering::Relaxed);
            } else if !pending && !needs_load(&worker.shared, n.version) {
                continue;
            }
        }
        match worker.sync_once().await {
            Ok(_) => {
                pending = false;
                delays = backoff.delays();
            }
            Err(e) => {
                tracing::debug!(error = %e, "flag sync failed; retrying with backoff");
                pending = true;
            }
        }
    }
}

/// Whether an announced version calls for a load. Equal to the served one: no. Higher: yes.
/// Lower: yes too, to check — versions only grow, so a lower one means the store was reset.
fn needs_load(shared: &Shared, announced: u64) -> bool {
    let applied = shared.applied();
    let p = shared.problems();
    if p.rejected.as_ref().is_some_and(|(v, _)| *v == announced) {
        return false;
    }
    announced != applied || p.behind.is_some()
}
