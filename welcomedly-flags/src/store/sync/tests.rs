#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, PoisonError};

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use welcomedly_core::health::CheckOutcome;

use super::*;
use crate::store::{Change, MemoryStore, Notice};

/// A store that can go down, lose its data, or change without announcing.
struct FakeStore {
    doc: Mutex<Document>,
    down: AtomicBool,
    notices: watch::Sender<Notice>,
}

impl FakeStore {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            doc: Mutex::new(Document::default()),
            down: AtomicBool::new(false),
            notices: watch::Sender::new(Notice::default()),
        })
    }
    fn set(&self, version: u64, body: &str, announce: bool) {
        *self.doc.lock().unwrap_or_else(PoisonError::into_inner) = Document {
            version,
            body: body.to_owned(),
        };
        if announce {
            self.notices.send_modify(|n| n.version = version);
        }
    }
    fn resync(&self) {
        self.notices.send_modify(|n| n.epoch += 1);
    }
    fn down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }
}

impl FlagStore for FakeStore {
    fn load(&self) -> BoxFuture<'_, Result<Document, StoreError>> {
        let r = if self.down.load(Ordering::Relaxed) {
            Err(StoreError::unavailable("the fake store is down"))
        } else {
            Ok(self
                .doc
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone())
        };
        Box::pin(std::future::ready(r))
    }
    fn write(&self, _: u64, _: String, _: Change) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(std::future::ready(Err(StoreError::config("read only"))))
    }
    fn history(&self, _: usize) -> BoxFuture<'_, Result<Vec<Change>, StoreError>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
    fn changes(&self) -> watch::Receiver<Notice> {
        self.notices.subscribe()
    }
}

type Applied = Arc<Mutex<Vec<(u64, serde_json::Value)>>>;

/// compile: JSON with a version tag; `{"bad":…}` is refused.
async fn sync(
    store: Arc<dyn FlagStore>,
    config: SyncConfig,
) -> (Result<FlagSyncHandle, StoreError>, Applied) {
    let applied: Applied = Arc::default();
    let sink = applied.clone();
    let handle = FlagSync::start(
        store,
        |body: &str, version: u64| -> Result<(u64, serde_json::Value), String> {
            let v: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
            if v.get("bad").is_some() {
                return Err(format!("marker found in {body}"));
            }
            Ok((version, v))
        },
        move |snapshot| sink.lock().unwrap().push(snapshot),
        config,
    )
    .await;
    (handle, applied)
}

fn fast() -> SyncConfig {
    SyncConfig {
        startup_timeout: Duration::from_millis(200),
        retry_interval: Duration::from_millis(5),
        max_retry_interval: Duration::from_millis(20),
        ..SyncConfig::default()
    }
}

#[tokio::test]
async fn an_empty_store_applies_nothing_then_each_write_is_applied() {
    let store = Arc::new(MemoryStore::new());
    let (handle, applied) = sync(store.clone(), fast()).await;
    let handle = handle.unwrap();
    assert_eq!(handle.applied_version(), 0);
    assert!(applied.lock().unwrap().is_empty());
    for v in 0..3 {
        store
            .write(v, format!("{{\"n\":{v}}}"), Change::new("t", "w"))
            .await
            .unwrap();
    }
    assert!(handle.wait_for_version(3, Duration::from_secs(2)).await);
    let last = applied.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last, (3, serde_json::json!({ "n": 2 })));
    assert_eq!(handle.check().await, CheckOutcome::Healthy);
}

#[tokio::test]
async fn a_rejected_document_keeps_the_good_snapshot_and_is_reported() {
    let store = FakeStore::new();
    store.set(1, r#"{"ok":1}"#, true);
    let (handle, applied) = sync(store.clone(), fast()).await;
    let handle = handle.unwrap();
    assert_eq!(handle.applied_version(), 1);
    store.set(2, r#"{"bad":true}"#, true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(handle.applied_version(), 1);
    assert_eq!(handle.store_version(), 2);
    assert_eq!(handle.rejected_payloads(), 1);
    let e = handle.last_error().unwrap();
    assert!(e.contains("version 2") && e.contains("marker found"), "{e}");
    assert!(matches!(handle.check().await, CheckOutcome::Degraded(_)));
    // The same version announced again is not compiled again.
    store.resync();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(handle.rejected_payloads(), 1);
    // A fixed document clears it.
    store.set(3, r#"{"ok":3}"#, true);
    assert!(handle.wait_for_version(3, Duration::from_secs(2)).await);
    assert_eq!(handle.last_error(), None);
    assert_eq!(applied.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn an_unannounced_change_is_found_by_a_resync() {
    let store = FakeStore::new();
    let (handle, _) = sync(store.clone(), fast()).await;
    let handle = handle.unwrap();
    store.set(4, "{}", false);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(handle.applied_version(), 0);
    store.resync();
    assert!(handle.wait_for_version(4, Duration::from_secs(2)).await);
    assert_eq!(handle.resyncs(), 1);
}

#[tokio::test]
async fn a_store_down_is_stale_then_recovers_by_itself() {
    let store = FakeStore::new();
    store.set(1, "{}", true);
    let (handle, _) = sync(store.clone(), fast()).await;
    let handle = handle.unwrap();
    store.down(true);
    store.set(2, "{}", true);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(handle.is_stale());
    assert_eq!(handle.applied_version(), 1);
    let CheckOutcome::Degraded(reason) = handle.check().await else {
        panic!("not degraded")
    };
    assert!(
        reason.starts_with("stale:") && reason.contains("serving version 1"),
        "{reason}"
    );
    store.down(false);
    // No new announcement: the retry loop finds it.
    assert!(handle.wait_for_version(2, Duration::from_secs(2)).await);
    assert!(!handle.is_stale());
    assert_eq!(handle.staleness(), Duration::ZERO);
}

#[tokio::test]
async fn an_emptied_store_keeps_the_served_version_until_it_is_written_again() {
    let store = FakeStore::new();
    store.set(5, r#"{"v":5}"#, true);
    let (handle, applied) = sync(store.clone(), fast()).await;
    let handle = handle.unwrap();
    store.set(0, "", false);
    store.resync();
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(handle.applied_version(), 5);
    let e = handle.last_error().unwrap();
    assert!(e.contains("empty") && e.contains("serves version 5"), "{e}");
    // Written again after the reset: version 1, lower than ours, applied.
    store.set(1, r#"{"v":1}"#, true);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(handle.applied_version(), 1);
    assert_eq!(handle.last_error(), None);
    assert_eq!(applied.lock().unwrap().last().unwrap().1["v"], 1);
}

#[tokio::test]
async fn startup_with_the_store_down_fails_after_the_timeout_with_a_clear_error() {
    let store = FakeStore::new();
    store.down(true);
    let started = std::time::Instant::now();
    let (handle, _) = sync(store, fast()).await;
    let e = handle.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(e.is_unavailable(), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("startup timeout") && text.contains("snapshot_file"),
        "{text}"
    );
}

#[tokio::test]
async fn startup_from_the_snapshot_file_then_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    let store = FakeStore::new();
    store.set(3, r#"{"v":3}"#, true);
    {
        let (handle, _) = sync(store.clone(), fast().with_snapshot_file(&path)).await;
        assert_eq!(handle.unwrap().applied_version(), 3);
    }
    assert!(path.exists());
    store.down(true);
    let (handle, applied) = sync(store.clone(), fast().with_snapshot_file(&path)).await;
    let handle = handle.unwrap();
    assert!(handle.started_from_snapshot());
    assert!(handle.is_stale());
    assert_eq!(handle.applied_version(), 3);
    assert_eq!(applied.lock().unwrap()[0].1["v"], 3);
    store.set(4, r#"{"v":4}"#, false);
    store.down(false);
    assert!(handle.wait_for_version(4, Duration::from_secs(2)).await);
    assert!(!handle.is_stale());
}

#[tokio::test]
async fn startup_on_an_invalid_document_fails_without_a_snapshot_file() {
    let store = FakeStore::new();
    store.set(1, r#"{"bad":1}"#, true);
    let (handle, _) = sync(store, fast()).await;
    let e = handle.unwrap_err();
    assert!(e.is_rejected(), "{e:?}");
    assert!(e.to_string().contains("marker found"), "{e}");
}

/// The threads `compile` ran on, to compare with the test's own (a current-thread runtime runs
/// every task on the test thread).
type Threads = Arc<Mutex<Vec<std::thread::ThreadId>>>;

async fn sync_recording_threads(
    store: Arc<dyn FlagStore>,
    config: SyncConfig,
) -> (FlagSyncHandle, Threads) {
    let threads: Threads = Arc::default();
    let seen = threads.clone();
    let handle = FlagSync::start(
        store,
        move |body: &str, version: u64| -> Result<(u64, String), String> {
            seen.lock().unwrap().push(std::thread::current().id());
            Ok((version, body.to_owned()))
        },
        |_| {},
        config,
    )
    .await
    .unwrap();
    (handle, threads)
}

#[tokio::test]
async fn compile_runs_off_the_async_thread_at_start_on_updates_and_from_the_snapshot_file() {
    let me = std::thread::current().id();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    let store = FakeStore::new();
    store.set(1, r#"{"v":1}"#, true);
    let (handle, threads) =
        sync_recording_threads(store.clone(), fast().with_snapshot_file(&path)).await;
    store.set(2, r#"{"v":2}"#, true);
    assert!(handle.wait_for_version(2, Duration::from_secs(2)).await);
    drop(handle);
    // Start-up from the snapshot file compiles too.
    store.down(true);
    let (handle, from_file) =
        sync_recording_threads(store.clone(), fast().with_snapshot_file(&path)).await;
    assert!(handle.started_from_snapshot());
    let mut all = threads.lock().unwrap().clone();
    all.extend(from_file.lock().unwrap().iter().copied());
    assert_eq!(all.len(), 3, "start, update, snapshot file");
    assert!(
        all.iter().all(|t| *t != me),
        "compile ran on the async thread: {all:?} (the test thread is {me:?})"
    );
}
