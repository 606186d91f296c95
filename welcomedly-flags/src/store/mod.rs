//! Where the flag set lives, and how every instance keeps its snapshot of it current.
//!
//! A store holds one opaque [`Document`] (the whole flag set as JSON, with a version), the
//! [`Change`] history, and announces each new version through [`FlagStore::changes`]. It knows
//! nothing of flags: validating and compiling the document is the caller's job, which is how
//! [`FlagSync`] stays generic.
//!
//! | store | for |
//! |---|---|
//! | [`MemoryStore`] | one process (the embedded default, tests) |
//! | `RedisStore` (feature `redis`) | many instances sharing one Redis or one Redis Cluster slot |
//!
//! Writes are compare-and-set on the version: [`FlagStore::write`] with the version the writer
//! read succeeds only if nobody wrote in between, and otherwise fails with
//! [`StoreError::is_conflict`] and the current version, so an admin UI can reload and retry.
//!
//! **A guarded rollout's writes are fenced** ([`FlagStore::write_fenced`]): the rollout's acting
//! instance writes the flag with its lease's [`Fence`] token, and the store refuses a token lower
//! than the highest one it has seen for that flag, in the same atomic step as the
//! compare-and-set. A paused old leader that lost its lease cannot write a stale stage.
//!
//! [`FlagSync`] subscribes to a store and, for each new version, loads the document, calls the
//! application's `compile` and, if that succeeds, its `apply` (typically an `ArcSwap::store`). An
//! invalid document is rejected and the last good snapshot keeps serving; so does a store that
//! is down.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use welcomedly_flags::store::{Change, FlagStore, FlagSync, MemoryStore, SyncConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), welcomedly_flags::store::StoreError> {
//! let store = Arc::new(MemoryStore::new());
//! let current = Arc::new(Mutex::new(serde_json::Value::Null));
//! let target = current.clone();
//! let sync = FlagSync::start(
//!     store.clone(),
//!     // compile: parse and validate; an Err keeps the last good snapshot.
//!     |body: &str, _version: u64| serde_json::from_str::<serde_json::Value>(body),
//!     // apply: swap the compiled snapshot in.
//!     move |flags| *target.lock().unwrap() = flags,
//!     SyncConfig::default(),
//! )
//! .await?;
//!
//! let v = store
//!     .write(0, r#"{"dark_mode":true}"#.to_owned(), Change::new("alice", "dark mode on"))
//!     .await?;
//! sync.wait_for_version(v, std::time::Duration::from_secs(1)).await;
//! assert_eq!(current.lock().unwrap()["dark_mode"], true);
//! # Ok(())
//! # }
//! ```

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

mod error;
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod snapshot_file;
mod sync;

pub use error::StoreError;
pub use memory::MemoryStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{RedisKeys, RedisStore, RedisStoreConfig};
pub use sync::{FlagSync, FlagSyncHandle, SyncConfig, SyncHealth};

/// The default number of history entries a store keeps (older ones are dropped).
pub const DEFAULT_HISTORY_CAP: usize = 1000;

/// The default byte budget of a store's history: the JSON of every kept entry together, 1 MiB.
/// The oldest entries are dropped when a new one would go over it (the newest is always kept).
/// With [`DEFAULT_HISTORY_CAP`] that leaves about 1 KiB per entry, more than the admin API's
/// digest-and-paths diffs take.
pub const DEFAULT_HISTORY_BYTES: usize = 1024 * 1024;

/// The most one history entry may take, as JSON: 16 KiB. A larger entry is stored with its
/// diff replaced by its size and digest (`{"omitted": …, "bytes": …, "digest": …}`), and its
/// actor and summary cut to 256 bytes: who, when and which version stay.
pub const MAX_CHANGE_BYTES: usize = 16 * 1024;

/// The longest actor and summary an oversized entry keeps.
const MAX_CHANGE_TEXT: usize = 256;

/// The stored flag set: an opaque body and its version.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Document {
    /// Bumped by one on every write. 0 means nothing was ever stored (then `body` is empty).
    pub version: u64,
    /// The whole flag set, as the writer gave it (JSON, opaque to the store).
    pub body: String,
}

/// One entry of the history: who changed what, when. The caller computes the diff; the store
/// keeps it as given when the entry fits [`MAX_CHANGE_BYTES`], or with the diff replaced by its
/// size and digest when it does not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The version this change produced. Set by the store on write (whatever the caller puts
    /// here is replaced).
    pub version: u64,
    /// Who made the change (a user name, a service account).
    pub actor: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// A one-line description for humans.
    pub summary: String,
    /// What changed, in whatever form the caller chose (e.g. a JSON patch).
    pub diff: serde_json::Value,
}

impl Change {
    /// A change by `actor` now, with no diff.
    pub fn new(actor: impl Into<String>, summary: impl Into<String>) -> Self {
        Self {
            version: 0,
            actor: actor.into(),
            at_unix_ms: now_unix_ms(),
            summary: summary.into(),
            diff: serde_json::Value::Null,
        }
    }

    /// The same change with this diff.
    #[must_use]
    pub fn with_diff(mut self, diff: serde_json::Value) -> Self {
        self.diff = diff;
        self
    }
}

impl Change {
    /// Makes the entry fit [`MAX_CHANGE_BYTES`] (see there) and returns its JSON without
    /// `version` (the Redis store splices it in; the memory store counts this size).
    pub(crate) fn fit(&mut self) -> String {
        let text = self.encode();
        if text.len() <= MAX_CHANGE_BYTES {
            return text;
        }
        let diff = serde_json::to_vec(&self.diff).unwrap_or_default();
        self.diff = serde_json::json!({
            "omitted": format!("the diff was over the {MAX_CHANGE_BYTES}-byte limit of a history entry"),
            "bytes": diff.len(),
            "digest": digest(&diff),
        });
        self.actor = bounded(&self.actor, MAX_CHANGE_TEXT);
        self.summary = bounded(&self.summary, MAX_CHANGE_TEXT);
        self.encode()
    }

    fn encode(&self) -> String {
        #[derive(Serialize)]
        struct Entry<'a> {
            actor: &'a str,
            at_unix_ms: u64,
            summary: &'a str,
            diff: &'a serde_json::Value,
        }
        // A `serde_json::Value` always serializes.
        serde_json::to_string(&Entry {
            actor: &self.actor,
            at_unix_ms: self.at_unix_ms,
            summary: &self.summary,
            diff: &self.diff,
        })
        .unwrap_or_default()
    }
}

/// A content digest for history entries and ETags: FNV-1a, 64 bits, as `fnv1a64:<16 hex>`.
/// Not cryptographic: it tells versions apart, it does not authenticate them.
pub(crate) fn digest(bytes: &[u8]) -> String {
    format!("fnv1a64:{:016x}", fnv1a64(bytes))
}

/// FNV-1a over `bytes`, the same on every instance and platform.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A guarded rollout's fencing token on a write of its flag: the token of the acting
/// instance's lease (`INCR`ed on every new lease, so a later leader holds a larger one).
///
/// The store keeps the highest token it has seen per flag (beside the document, in the same
/// atomic step as the write) and refuses a write or a [raise](FlagStore::raise_fence) with a
/// lower one ([`StoreError::is_fenced`]): Kleppmann's fencing at the resource, so an old leader
/// that was paused past its lease cannot overwrite what the new one wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The flag the rollout acts on (a key of the flag set: the store keeps one token per
    /// flag that was ever rolled out).
    pub flag: String,
    /// The lease's fencing token.
    pub token: u64,
}

impl Fence {
    /// The fence of `flag`'s rollout at `token`.
    pub fn new(flag: impl Into<String>, token: u64) -> Self {
        Self {
            flag: flag.into(),
            token,
        }
    }
}

/// What a store announces through [`FlagStore::changes`].
///
/// A struct rather than an enum `Version(u64) | Resync`: a `watch` channel keeps only the latest
/// value, so a `Resync` followed at once by a `Version` would be lost. Here a resync is a change
/// of `epoch`, which no later announcement can hide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notice {
    /// The latest version the store announced (0 when none was announced yet).
    pub version: u64,
    /// Changes whenever announcements may have been lost (a reconnect, a resubscribe, a failed
    /// version check): a receiver that sees it change must reload the document, whatever
    /// `version` says.
    pub epoch: u64,
}

/// Where the flag document lives. Object-safe: [`FlagSync`] takes an `Arc<dyn FlagStore>`.
///
/// Every call is bounded in time by the implementation and fails with a [`StoreError`] rather
/// than hang.
pub trait FlagStore: Send + Sync + 'static {
    /// The current document ([`Document::default`], version 0, when nothing was stored yet).
    fn load(&self) -> BoxFuture<'_, Result<Document, StoreError>>;

    /// Compare-and-set: stores `body` only if the stored version is `expected`, bumps the
    /// version, appends `change` (with the new version) to the history and announces the new
    /// version, all at once. Returns the new version, or an error with
    /// [`is_conflict`](StoreError::is_conflict) and [`current_version`](StoreError::current_version)
    /// when `expected` is stale.
    fn write(
        &self,
        expected: u64,
        body: String,
        change: Change,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// [`write`](Self::write) by a guarded rollout's acting instance: refused with
    /// [`StoreError::is_fenced`] when the store has seen a larger token for `fence.flag`
    /// (another instance acts now); otherwise the token is recorded as the highest seen and the
    /// compare-and-set runs, all in one atomic step.
    ///
    /// The default refuses every fenced write ([`StoreError::is_config`]): a store that cannot
    /// check the token cannot take a rollout's writes safely. [`MemoryStore`] and `RedisStore`
    /// implement it.
    fn write_fenced(
        &self,
        expected: u64,
        body: String,
        change: Change,
        fence: Fence,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        let _ = (expected, body, change, fence);
        Box::pin(std::future::ready(Err(cannot_fence(self.describe()))))
    }

    /// Records `fence.token` as the highest token seen for `fence.flag` without writing the
    /// document (a new acting instance does this as soon as it holds the lease, so the old
    /// one's writes are refused from then on). Refused with [`StoreError::is_fenced`] when the
    /// store has seen a larger token. The default refuses, as [`write_fenced`](Self::write_fenced).
    fn raise_fence(&self, fence: Fence) -> BoxFuture<'_, Result<(), StoreError>> {
        let _ = fence;
        Box::pin(std::future::ready(Err(cannot_fence(self.describe()))))
    }

    /// The latest `limit` history entries, newest first.
    fn history(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Change>, StoreError>>;

    /// Announcements of new versions (see [`Notice`]).
    fn changes(&self) -> tokio::sync::watch::Receiver<Notice>;

    /// The current version only. The default loads the whole document; stores override it
    /// with something cheaper.
    fn version(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move { self.load().await.map(|d| d.version) })
    }

    /// What this store is, for logs and health messages (never a password).
    fn describe(&self) -> String {
        "the flag store".to_owned()
    }
}

impl<S: FlagStore + ?Sized> FlagStore for std::sync::Arc<S> {
    fn load(&self) -> BoxFuture<'_, Result<Document, StoreError>> {
        (**self).load()
    }
    fn write(
        &self,
        expected: u64,
        body: String,
        change: Change,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        (**self).write(expected, body, change)
    }
    fn write_fenced(
        &self,
        expected: u64,
        body: String,
        change: Change,
        fence: Fence,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        (**self).write_fenced(expected, body, change, fence)
    }
    fn raise_fence(&self, fence: Fence) -> BoxFuture<'_, Result<(), StoreError>> {
        (**self).raise_fence(fence)
    }
    fn history(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Change>, StoreError>> {
        (**self).history(limit)
    }
    fn changes(&self) -> tokio::sync::watch::Receiver<Notice> {
        (**self).changes()
    }
    fn version(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        (**self).version()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Keeps `flags` current from `store`: [`FlagSync::start`] with the flag model's compiler
/// ([`Snapshot::compile_document`](crate::Snapshot::compile_document): a native flag set,
/// reusing the served snapshot's regular expressions, or a flagd file with the `flagd` feature)
/// and [`Flags::replace`](crate::Flags::replace).
/// An invalid document is rejected and the last good snapshot keeps serving.
///
/// # Errors
///
/// As [`FlagSync::start`]: the store stayed unreachable for the startup timeout and no snapshot
/// file was usable.
pub async fn sync_flags(
    store: std::sync::Arc<dyn FlagStore>,
    flags: &crate::Flags,
    config: SyncConfig,
) -> Result<FlagSyncHandle, StoreError> {
    let current = flags.clone();
    let flags = flags.clone();
    FlagSync::start(
        store,
        // Reusing the served snapshot's regexes: an update compiles only its new patterns.
        move |body: &str, version: u64| {
            crate::Snapshot::compile_document(body, version, Some(&current.snapshot()))
        },
        move |snapshot| flags.replace(snapshot),
        config,
    )
    .await
}

fn cannot_fence(store: String) -> StoreError {
    StoreError::config(format!(
        "{store} cannot check a guarded rollout's fencing token, so it cannot take the rollout's flag writes safely: implement FlagStore::write_fenced and FlagStore::raise_fence for it (MemoryStore and RedisStore do)"
    ))
}

pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `text` cut to at most `max` bytes on a character boundary, with `…` when cut: a rejected
/// payload's reason can quote the payload, which can be huge.
pub(crate) fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = text.get(..end).unwrap_or_default().to_owned();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<MemoryStore>();
        check::<FlagSyncHandle>();
        check::<SyncHealth>();
        check::<StoreError>();
        check::<Document>();
        check::<Change>();
        check::<Notice>();
        #[cfg(feature = "redis")]
        check::<RedisStore>();
        // Object-safe, as FlagSync::start takes an `Arc<dyn FlagStore>`.
        let _: Option<std::sync::Arc<dyn FlagStore>> = None;
    }

    #[test]
    fn an_oversized_change_keeps_who_when_and_a_digest_of_its_diff() {
        let big = "x".repeat(MAX_CHANGE_BYTES);
        let mut change =
            Change::new("ops", "changed flag a").with_diff(serde_json::json!({ "after": big }));
        let text = change.fit();
        assert!(text.len() <= MAX_CHANGE_BYTES, "{}", text.len());
        assert_eq!(change.actor, "ops");
        assert_eq!(change.summary, "changed flag a");
        assert_eq!(change.diff["bytes"], MAX_CHANGE_BYTES + 12);
        let digest = change.diff["digest"].as_str().unwrap_or_default();
        assert!(
            digest.starts_with("fnv1a64:") && digest.len() == 24,
            "{digest}"
        );
        // A change that fits is kept as given.
        let mut small = Change::new("ops", "s").with_diff(serde_json::json!({ "n": 1 }));
        small.fit();
        assert_eq!(small.diff, serde_json::json!({ "n": 1 }));
    }

    #[test]
    fn bounded_cuts_on_a_char_boundary() {
        assert_eq!(bounded("héllo", 2), "h…");
        assert_eq!(bounded("short", 10), "short");
    }
}
