//! [`MemoryStore`]: the flag store of a single process.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::{
    Change, DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_CAP, Document, Fence, FlagStore,
    MAX_CHANGE_BYTES, Notice, StoreError,
};

/// The embedded default: the document, its version and the history in this process, with the
/// same compare-and-set semantics as the Redis store. Announcements are never lost, so its
/// [`Notice::epoch`] never changes. Nothing survives a restart.
///
/// The history is bounded by a number of entries and by their total size as JSON (see
/// [`DEFAULT_HISTORY_BYTES`] and [`MAX_CHANGE_BYTES`]).
///
/// ```
/// use welcomedly_flags::store::{Change, FlagStore, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::new();
/// assert_eq!(store.write(0, "{}".into(), Change::new("ops", "first")).await.unwrap(), 1);
/// let stale = store.write(0, "{}".into(), Change::new("ops", "again")).await.unwrap_err();
/// assert_eq!(stale.current_version(), Some(1));
/// # }
/// ```
pub struct MemoryStore {
    state: Mutex<State>,
    cap: usize,
    budget: usize,
    notices: watch::Sender<Notice>,
}

struct State {
    doc: Document,
    /// Newest first, each with its size as JSON.
    history: VecDeque<(Change, usize)>,
    /// The sum of the sizes in `history`.
    history_bytes: usize,
    /// The highest rollout fencing token seen per flag (see [`Fence`]).
    fences: HashMap<String, u64>,
}

impl State {
    /// Records `fence` unless a larger token was seen for its flag.
    fn check_fence(&mut self, fence: &Fence) -> Result<(), StoreError> {
        let seen = self.fences.entry(fence.flag.clone()).or_insert(0);
        if *seen > fence.token {
            return Err(StoreError::fenced(&fence.flag, fence.token, *seen));
        }
        *seen = fence.token;
        Ok(())
    }
}

impl MemoryStore {
    /// An empty store (version 0) keeping the last [`DEFAULT_HISTORY_CAP`] changes, at most
    /// [`DEFAULT_HISTORY_BYTES`] of them.
    pub fn new() -> Self {
        Self::with_history_limits(DEFAULT_HISTORY_CAP, DEFAULT_HISTORY_BYTES)
    }

    /// An empty store keeping the last `cap` changes (at least 1), at most
    /// [`DEFAULT_HISTORY_BYTES`] of them.
    pub fn with_history_cap(cap: usize) -> Self {
        Self::with_history_limits(cap, DEFAULT_HISTORY_BYTES)
    }

    /// An empty store keeping the last `cap` changes (at least 1) whose JSON takes at most
    /// `bytes` together (at least [`MAX_CHANGE_BYTES`], so the newest entry always fits).
    pub fn with_history_limits(cap: usize, bytes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                doc: Document::default(),
                history: VecDeque::new(),
                history_bytes: 0,
                fences: HashMap::new(),
            }),
            cap: cap.max(1),
            budget: bytes.max(MAX_CHANGE_BYTES),
            notices: watch::Sender::new(Notice::default()),
        }
    }

    /// The size of the kept history as JSON, in bytes (at most the budget).
    pub fn history_bytes(&self) -> usize {
        self.lock().history_bytes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent; a panic elsewhere cannot break it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_now(
        &self,
        expected: u64,
        body: String,
        mut change: Change,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        let version = {
            let mut state = self.lock();
            if let Some(fence) = fence {
                state.check_fence(fence)?;
            }
            if state.doc.version != expected {
                return Err(StoreError::conflict(expected, state.doc.version));
            }
            let version = expected + 1;
            state.doc = Document { version, body };
            change.version = version;
            let size = change.fit().len();
            state.history.push_front((change, size));
            state.history_bytes += size;
            // The oldest go first; the newest stays whatever its size (it fits the budget).
            while state.history.len() > self.cap
                || (state.history.len() > 1 && state.history_bytes > self.budget)
            {
                match state.history.pop_back() {
                    Some((_, dropped)) => state.history_bytes -= dropped,
                    None => break,
                }
            }
            version
        };
        // Announced after the lock is released and in version order: concurrent writers are
        // serialised by the lock, and `send_if_modified` never lowers the version.
        self.notices.send_if_modified(|n| {
            if n.version < version {
                n.version = version;
                true
            } else {
                false
            }
        });
        Ok(version)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryStore")
            .field("version", &state.doc.version)
            .field("history", &state.history.len())
            .field("history_bytes", &state.history_bytes)
            .field("history_cap", &self.cap)
            .field("history_budget", &self.budget)
            .finish()
    }
}

impl FlagStore for MemoryStore {
    fn load(&self) -> BoxFuture<'_, Result<Document, StoreError>> {
        let doc = self.lock().doc.clone();
        Box::pin(std::future::ready(Ok(doc)))
    }

    fn write(
        &self,
        expected: u64,
        body: String,
        change: Change,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(std::future::ready(
            self.write_now(expected, body, change, None),
        ))
    }

    fn write_fenced(
        &self,
        expected: u64,
        body: String,
        change: Change,
        fence: Fence,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(std::future::ready(self.write_now(
            expected,
            body,
            change,
            Some(&fence),
        )))
    }

    fn raise_fence(&self, fence: Fence) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(self.lock().check_fence(&fence)))
    }

    fn history(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Change>, StoreError>> {
        let entries = self
            .lock()
            .history
            .iter()
            .take(limit)
            .map(|(change, _)| change.clone())
            .collect();
        Box::pin(std::future::ready(Ok(entries)))
    }

    fn changes(&self) -> watch::Receiver<Notice> {
        self.notices.subscribe()
    }

    fn version(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        let v = self.lock().doc.version;
        Box::pin(std::future::ready(Ok(v)))
    }

    fn describe(&self) -> String {
        "the in-memory flag store".to_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn change(n: u32) -> Change {
        Change::new("tester", format!("change {n}")).with_diff(serde_json::json!({ "n": n }))
    }

    #[tokio::test]
    async fn a_lower_fencing_token_is_refused_and_a_higher_one_passes() {
        let store = MemoryStore::new();
        store.write(0, "{}".into(), change(1)).await.unwrap();
        let v = store
            .write_fenced(1, "{\"a\":1}".into(), change(2), Fence::new("f", 2))
            .await
            .unwrap();
        assert_eq!(v, 2);
        store.raise_fence(Fence::new("f", 5)).await.unwrap();
        let e = store
            .write_fenced(2, "{\"a\":0}".into(), change(3), Fence::new("f", 2))
            .await
            .unwrap_err();
        assert!(e.is_fenced() && e.fenced_by() == Some(5), "{e}");
        assert!(e.to_string().contains("another instance acts"), "{e}");
        assert!(
            store
                .raise_fence(Fence::new("f", 4))
                .await
                .unwrap_err()
                .is_fenced()
        );
        // Another flag's fence is its own; unfenced writes (operators) pass.
        store
            .write_fenced(2, "{}".into(), change(4), Fence::new("g", 1))
            .await
            .unwrap();
        store.write(3, "{}".into(), change(5)).await.unwrap();
        store
            .write_fenced(4, "{}".into(), change(6), Fence::new("f", 5))
            .await
            .unwrap();
        assert_eq!(store.load().await.unwrap().version, 5);
    }

    #[tokio::test]
    async fn starts_empty_at_version_zero() {
        let store = MemoryStore::new();
        assert_eq!(store.load().await.unwrap(), Document::default());
        assert_eq!(store.version().await.unwrap(), 0);
        assert!(store.history(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_write_bumps_the_version_and_stores_the_body() {
        let store = MemoryStore::new();
        assert_eq!(
            store.write(0, "{\"a\":1}".into(), change(1)).await.unwrap(),
            1
        );
        assert_eq!(
            store.write(1, "{\"a\":2}".into(), change(2)).await.unwrap(),
            2
        );
        let doc = store.load().await.unwrap();
        assert_eq!(doc.version, 2);
        assert_eq!(doc.body, "{\"a\":2}");
    }

    #[tokio::test]
    async fn a_stale_write_is_a_conflict_with_the_current_version() {
        let store = MemoryStore::new();
        store.write(0, "{}".into(), change(1)).await.unwrap();
        store.write(1, "{}".into(), change(2)).await.unwrap();
        for stale in [0, 1, 3] {
            let e = store
                .write(stale, "{}".into(), change(9))
                .await
                .unwrap_err();
            assert!(e.is_conflict(), "{e}");
            assert_eq!(e.current_version(), Some(2));
            assert!(e.to_string().contains("version 2"), "{e}");
        }
        assert_eq!(store.load().await.unwrap().version, 2);
        assert_eq!(store.history(10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn history_is_newest_first_capped_and_carries_the_new_versions() {
        let store = MemoryStore::with_history_cap(3);
        for n in 0..5 {
            store
                .write(u64::from(n), "{}".into(), change(n))
                .await
                .unwrap();
        }
        let h = store.history(10).await.unwrap();
        let versions: Vec<u64> = h.iter().map(|c| c.version).collect();
        assert_eq!(versions, [5, 4, 3]);
        assert_eq!(h[0].summary, "change 4");
        assert_eq!(h[0].diff, serde_json::json!({ "n": 4 }));
        assert_eq!(store.history(2).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn history_is_bounded_in_bytes_keeping_the_newest() {
        // The default budget: 30 changes of 100 KB diffs each (3 MB) do not all stay.
        let store = MemoryStore::new();
        let text = "x".repeat(100_000);
        for n in 0..30u64 {
            let c = change(0).with_diff(serde_json::json!({ "n": n, "text": text }));
            store.write(n, "{}".into(), c).await.unwrap();
        }
        assert!(store.history_bytes() <= DEFAULT_HISTORY_BYTES);
        let h = store.history(1000).await.unwrap();
        // Each entry was over the per-entry limit: its diff became a size and a digest.
        assert_eq!(h[0].version, 30);
        assert_eq!(h[0].diff["bytes"], 100_000 + r#"{"n":29,"text":""}"#.len());
        assert_eq!(h.len(), 30, "small digested entries all fit");

        // Entries that fit the per-entry limit are dropped oldest first to fit the budget.
        let store = MemoryStore::with_history_limits(1000, 3 * MAX_CHANGE_BYTES);
        let text = "y".repeat(MAX_CHANGE_BYTES - 200);
        for n in 0..10u64 {
            let c = change(0).with_diff(serde_json::json!({ "n": n, "text": text }));
            store.write(n, "{}".into(), c).await.unwrap();
        }
        assert!(store.history_bytes() <= 3 * MAX_CHANGE_BYTES);
        let h = store.history(1000).await.unwrap();
        let versions: Vec<u64> = h.iter().map(|c| c.version).collect();
        assert_eq!(versions, [10, 9, 8]);
        assert_eq!(h[0].diff["text"], text.as_str(), "kept as given");
    }

    #[tokio::test]
    async fn writes_are_announced_in_version_order() {
        let store = MemoryStore::new();
        let mut rx = store.changes();
        assert_eq!(rx.borrow_and_update().version, 0);
        store.write(0, "{}".into(), change(1)).await.unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            *rx.borrow_and_update(),
            Notice {
                version: 1,
                epoch: 0
            }
        );
        // A failed write announces nothing.
        let _ = store.write(0, "{}".into(), change(2)).await;
        assert!(!rx.has_changed().unwrap());
    }

    #[tokio::test]
    async fn concurrent_writers_with_the_same_expected_version_let_exactly_one_win() {
        let store = std::sync::Arc::new(MemoryStore::new());
        let mut tasks = Vec::new();
        for n in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.write(0, format!("{{\"n\":{n}}}"), change(n)).await
            }));
        }
        let mut won = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(v) => {
                    assert_eq!(v, 1);
                    won += 1;
                }
                Err(e) => assert_eq!(e.current_version(), Some(1)),
            }
        }
        assert_eq!(won, 1);
    }
}
