//! [`RedisStore`]: the flag set of every instance in one Redis, over the instance's
//! [`Link`].
//!
//! Keys (default prefix `wd:flags`, one hash tag so every multi-key command and the write
//! script name one Redis Cluster slot, checked by
//! [`debug_assert_same_slot`](welcomedly_redis::debug_assert_same_slot); a prefix whose braces
//! would defeat the tag is refused): `{wd:flags}:doc` (the document), `{wd:flags}:version` (the
//! counter), `{wd:flags}:digest` (the document's SHA-1), `{wd:flags}:history` (a list, newest
//! first, capped in entries and in bytes), `{wd:flags}:history_bytes` (its size),
//! `{wd:flags}:fences` (the highest guarded-rollout fencing token seen per flag) and the
//! pub/sub channel `{wd:flags}:changes`. A write is one Lua script: for a rollout's write,
//! refuse a fencing token below the one seen for its flag (and record a larger one); compare
//! the version, `SET` the document and its digest, bump the version, `LPUSH` the history entry
//! and drop the oldest over the caps, `PUBLISH` the new version. A load is one `MGET` of the
//! version, the document and its digest.
//!
//! **A reused version is new.** A write acknowledged by a primary that dies before its
//! replica has it is lost in the failover, and the next write takes the same version number
//! with other content. Instances that served the lost write must not take the new document
//! for the one they have: the version check reads the version *and the digest* and reloads
//! when the digest differs from the document last loaded at that version; a version published
//! a second time reloads too; and the sync compares the content of a document at the version
//! it serves, applying it when it differs.
//!
//! ```no_run
//! use std::sync::Arc;
//! use welcomedly_flags::store::{FlagSync, RedisStore, RedisStoreConfig, SyncConfig};
//! use welcomedly_redis::{Link, LinkConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let link = Link::connect(LinkConfig::new("redis://127.0.0.1:6379/")).await?;
//! let store = RedisStore::new(&link, RedisStoreConfig::default()).await?;
//! let sync = FlagSync::start(
//!     Arc::new(store),
//!     |body: &str, _v: u64| serde_json::from_str::<serde_json::Value>(body),
//!     |_flags| { /* swap the snapshot in */ },
//!     SyncConfig::default().with_snapshot_file("/var/lib/app/flags.json"),
//! )
//! .await?;
//! # drop(sync);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use welcomedly_redis::redis::{self, Script};
use welcomedly_redis::{Link, Retry};

use super::{
    Change, DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_CAP, Document, Fence, FlagStore,
    MAX_CHANGE_BYTES, Notice, StoreError,
};

mod follow;
mod script;

pub use script::RedisKeys;

/// Settings of the Redis flag store, plain data with documented defaults. The connection
/// itself (URL, failure threshold, reconnects and their backoff) is the [`Link`]'s
/// ([`LinkConfig`](welcomedly_redis::LinkConfig)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisStoreConfig {
    /// Prefix of every key, made the hash tag (see [`RedisKeys::new`]). Default `"wd:flags"`.
    pub key_prefix: String,
    /// The longest any one Redis call of the store (a load, a write, a version check) may
    /// take before it fails with [`StoreError::is_unavailable`]. The flag store is off the
    /// request path (requests read the in-memory snapshot), so it may be longer than the
    /// link's. Default 500 ms.
    pub budget: Duration,
    /// How often the current version is read to catch an announcement lost on the way
    /// (pub/sub delivers at most once): the bound on staleness while Redis works. Default 30 s.
    pub poll_interval: Duration,
    /// History entries kept (older ones are trimmed by the write script). Default 1000.
    pub history_cap: usize,
    /// The most bytes the history's entries take together, as JSON (older ones are trimmed by
    /// the write script; the newest always stays, and an entry over
    /// [`MAX_CHANGE_BYTES`](super::MAX_CHANGE_BYTES) is stored with its diff digested). At
    /// least `MAX_CHANGE_BYTES`. Default [`DEFAULT_HISTORY_BYTES`](super::DEFAULT_HISTORY_BYTES), 1 MiB.
    pub history_bytes: usize,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        Self {
            key_prefix: "wd:flags".to_owned(),
            budget: Duration::from_millis(500),
            poll_interval: Duration::from_secs(30),
            history_cap: DEFAULT_HISTORY_CAP,
            history_bytes: DEFAULT_HISTORY_BYTES,
        }
    }
}

impl RedisStoreConfig {
    /// Builds the store over `link`: [`RedisStore::new`].
    ///
    /// # Errors
    ///
    /// See [`RedisStore::new`].
    pub async fn build(self, link: &Link) -> Result<RedisStore, StoreError> {
        RedisStore::new(link, self).await
    }

    fn validate(&self) -> Result<(), StoreError> {
        for (what, d) in [
            ("budget", self.budget),
            ("poll interval", self.poll_interval),
        ] {
            if d.is_zero() {
                return Err(StoreError::config(format!(
                    "the Redis flag store's {what} is zero: use at least a few milliseconds (see RedisStoreConfig for the defaults)"
                )));
            }
        }
        if !RedisKeys::new(&self.key_prefix).share_one_slot() {
            return Err(StoreError::config(format!(
                "the Redis flag store's key prefix {:?} gives keys in different Redis Cluster slots (its braces hide the hash tag): use a prefix without braces, or with one non-empty {{tag}} (default \"wd:flags\")",
                super::bounded(&self.key_prefix, 64)
            )));
        }
        if self.history_cap == 0 {
            return Err(StoreError::config(
                "the Redis flag store's history cap is zero: keep at least one entry (default 1000)",
            ));
        }
        if self.history_bytes < MAX_CHANGE_BYTES {
            return Err(StoreError::config(format!(
                "the Redis flag store's history byte budget is {} bytes, below one entry's limit of {MAX_CHANGE_BYTES}: raise it (default {DEFAULT_HISTORY_BYTES})",
                self.history_bytes
            )));
        }
        Ok(())
    }
}

/// The flag store of many instances: one Redis (or one Redis Cluster slot) holds the document,
/// its version and the history; every write is announced over pub/sub.
///
/// - **Keys** (default prefix `wd:flags`, one hash tag so the write script runs on a Redis
///   Cluster too): `{wd:flags}:doc` (the document), `{wd:flags}:version` (the counter),
///   `{wd:flags}:history` (a list, newest first), `{wd:flags}:history_bytes` (its size),
///   `{wd:flags}:fences` (the highest guarded-rollout fencing token seen per flag) and the
///   channel `{wd:flags}:changes` (see [`RedisKeys`]).
/// - **A guarded rollout's write** ([`FlagStore::write_fenced`]) is refused in the same script
///   when its token is below the one seen for its flag: a paused old leader cannot write.
/// - **A write** is one Lua script: compare the version, `SET` the document, bump the version,
///   `LPUSH` the history entry and drop the oldest beyond
///   [`history_cap`](RedisStoreConfig::history_cap) entries or
///   [`history_bytes`](RedisStoreConfig::history_bytes), `PUBLISH` the new version. It is
///   never retried (a second run would write a second version).
/// - **Connections**: none of its own. The commands run on the instance's [`Link`], which owns
///   the connection, its reconnects and the "redis" health check; changes arrive through the
///   link's shared [`Subscriber`](welcomedly_redis::Subscriber) (one pub/sub connection with
///   the event bus), which resubscribes after an outage.
/// - **Announcements** ([`FlagStore::changes`]): each published version; a new
///   [`Notice::epoch`] on every (re)subscription, the moment the subscription is lost, on
///   messages dropped from a full buffer and on every failed version check; and the version
///   read every
///   [`poll_interval`](RedisStoreConfig::poll_interval) when it differs from the last one
///   announced (a lost message).
/// - **Time**: every call is bounded by [`budget`](RedisStoreConfig::budget); reads are run
///   once more on a new connection when the first one died under them (within the budget).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    link: Link,
    name: String,
    keys: RedisKeys,
    write: Script,
    raise_fence: Script,
    budget: Duration,
    poll_interval: Duration,
    history_cap: usize,
    history_bytes: usize,
    notices: watch::Sender<Notice>,
    subscribed: AtomicBool,
    failures: AtomicU64,
    resubscriptions: AtomicU64,
    /// The version and digest of the document last loaded, which the version check compares
    /// with the store's: the same version with another digest is a reused version number.
    loaded: Mutex<Option<(u64, Option<String>)>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().unwrap_or_else(PoisonError::into_inner) {
            task.abort();
        }
    }
}

impl RedisStore {
    /// A store over `link` (shared with the instance's other Redis components). Registers the
    /// write script with the link (so every new connection has it), subscribes to the store's
    /// channel and, when Redis answers, waits up to the budget for the subscription. An
    /// unreachable Redis is not an error: the store's calls fail with
    /// [`StoreError::is_unavailable`] until the link reconnects, and
    /// [`FlagSync::start`](super::FlagSync::start) decides how long to wait. Must run inside
    /// a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`StoreError::is_config`]: a zero budget, poll interval or history cap, a history byte
    /// budget below [`MAX_CHANGE_BYTES`], or no tokio runtime.
    pub async fn new(link: &Link, config: RedisStoreConfig) -> Result<Self, StoreError> {
        config.validate()?;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(StoreError::config(
                "RedisStore must be built inside a tokio runtime (it follows the store's channel in the background)",
            ));
        };
        let write = Script::new(script::WRITE);
        // A failed load now only costs one NOSCRIPT round trip later.
        if let Err(e) = link.preload(&write).await {
            tracing::debug!(error = %e, "the flag store's write script is loaded on first use");
        }
        let keys = RedisKeys::new(&config.key_prefix);
        let inner = Arc::new(Inner {
            link: link.clone(),
            name: format!("Redis at {}", link.config().topology),
            write,
            raise_fence: Script::new(script::RAISE_FENCE),
            budget: config.budget,
            poll_interval: config.poll_interval,
            history_cap: config.history_cap,
            history_bytes: config.history_bytes,
            notices: watch::Sender::new(Notice::default()),
            subscribed: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            resubscriptions: AtomicU64::new(0),
            loaded: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            keys,
        });
        let subscriber = link.subscriber();
        let connected = subscriber.watch_connected();
        let subscription = subscriber.subscribe(inner.keys.channel.clone(), follow::CAPACITY);
        let follower = follow::start(&inner, subscription, connected).await;
        let task = runtime.spawn(follower);
        inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task.abort_handle());
        Ok(Self { inner })
    }

    /// The names of the store's keys and channel.
    pub fn keys(&self) -> &RedisKeys {
        &self.inner.keys
    }

    /// The link the store runs on (its state, counters, health check and metrics).
    pub fn link(&self) -> &Link {
        &self.inner.link
    }

    /// Whether the link has a working connection (false while Redis is down).
    pub fn is_connected(&self) -> bool {
        self.inner.link.is_connected()
    }

    /// Whether the store's channel is subscribed now (announcements arrive by push, not only
    /// by polling).
    pub fn is_subscribed(&self) -> bool {
        self.inner.subscribed.load(Ordering::Acquire)
    }

    /// Redis calls of the store that failed or took longer than the budget since start (a
    /// counter; the link counts them by class too).
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// Subscriptions to the store's channel made again after one was lost (a counter): each
    /// made the store announce a reload.
    pub fn reconnects(&self) -> u64 {
        self.inner.resubscriptions.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// Runs one call on the link within the store's budget, turning the link's error into the
    /// store's (unavailable, or corrupt when Redis refused it for the data under our keys).
    async fn call<T: redis::FromRedisValue>(
        &self,
        what: &str,
        retry: Retry,
        run: Call<'_>,
    ) -> Result<T, StoreError> {
        let result = match run {
            Call::Cmd(cmd) => {
                self.link
                    .call_within(self.budget, retry, |mut c| async move {
                        cmd.query_async(&mut c).await
                    })
                    .await
            }
            Call::Script(invocation) => {
                self.link
                    .call_within(self.budget, retry, |mut c| async move {
                        invocation.invoke_async(&mut c).await
                    })
                    .await
            }
        };
        result.map_err(|e| {
            self.failures.fetch_add(1, Ordering::Relaxed);
            self.error(what, e)
        })
    }

    fn error(&self, what: &str, e: welcomedly_redis::Error) -> StoreError {
        if e.is_server() {
            let message = format!(
                "{} refused the flag {what}: check that nothing else writes under the {} keys",
                self.name, self.keys.doc
            );
            let cause = e
                .redis_error()
                .map(|r| welcomedly_core::redact::redact_url(&r.to_string()).into_owned())
                .unwrap_or_default();
            return if cause.contains("WRONGTYPE") || cause.contains("WDFLAGS") {
                StoreError::corrupt(format!("{message} ({cause})"))
            } else {
                StoreError::unavailable_because(message, cause)
            };
        }
        let message = if e.is_budget() {
            format!(
                "the flag {what} on {} took longer than the {} ms budget: check that it runs and is reachable",
                self.name,
                self.budget.as_millis()
            )
        } else if e.is_not_connected() {
            format!(
                "the flag {what} failed: {} is not connected (the link reconnects in the background); check that it runs and is reachable",
                self.name
            )
        } else {
            format!(
                "the flag {what} on {} failed: check that it runs and is reachable",
                self.name
            )
        };
        StoreError::unavailable_because(message, e)
    }

    async fn read_version(&self) -> Result<u64, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(&self.keys.version);
        let raw: Option<String> = self
            .call("version check", Retry::Once, Call::Cmd(&cmd))
            .await?;
        self.parse_version(raw.as_deref())
    }

    /// The version and the document's digest, read together (`MGET`, one slot): what the
    /// periodic check compares with the document last loaded.
    pub(super) async fn read_version_and_digest(
        &self,
    ) -> Result<(u64, Option<String>), StoreError> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&self.keys.version).arg(&self.keys.digest);
        welcomedly_redis::debug_assert_same_slot(
            "the flag version check",
            &[&self.keys.version, &self.keys.digest],
        );
        let (raw, digest): (Option<String>, Option<String>) = self
            .call("version check", Retry::Once, Call::Cmd(&cmd))
            .await?;
        Ok((self.parse_version(raw.as_deref())?, digest))
    }

    /// Whether the store holds `version` with another digest than the document last loaded
    /// at that version: a version number reused with other content (a write lost in a
    /// failover, its number written again), which the version alone cannot show.
    pub(super) fn is_reused(&self, version: u64, digest: Option<&str>) -> bool {
        let loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        match (loaded.as_ref(), digest) {
            (Some((v, Some(known))), Some(digest)) => *v == version && known != digest,
            _ => false,
        }
    }

    fn parse_version(&self, raw: Option<&str>) -> Result<u64, StoreError> {
        match raw {
            None => Ok(0),
            Some(text) => text.trim().parse().map_err(|_| {
                StoreError::corrupt(format!(
                    "{} holds {:?} under {}, not a version number: something else wrote there; restore the counter (or delete the store's keys and write the flag set again)",
                    self.name,
                    super::bounded(text, 64),
                    self.keys.version
                ))
            }),
        }
    }

    /// The write script, fenced or not (see [`script::WRITE`]).
    async fn write(
        &self,
        expected: u64,
        body: String,
        mut change: Change,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        let entry = change.fit();
        let mut invocation = self.write.prepare_invoke();
        invocation
            .key(&self.keys.doc)
            .key(&self.keys.version)
            .key(&self.keys.history)
            .key(&self.keys.history_bytes)
            .key(&self.keys.digest)
            .key(&self.keys.fences)
            .arg(expected)
            .arg(&body)
            .arg(&entry)
            .arg(self.history_cap)
            .arg(&self.keys.channel)
            .arg(self.history_bytes)
            .arg(fence.map_or("", |f| f.flag.as_str()))
            .arg(fence.map_or(0, |f| f.token));
        debug_assert!(
            self.keys.share_one_slot(),
            "the flag write script's keys span slots"
        );
        // Never retried: a second run after a lost answer would write a second version.
        let (code, n): (i64, u64) = self
            .call("write", Retry::Never, Call::Script(&invocation))
            .await?;
        match (code, fence) {
            (1, _) => Ok(n),
            (2, Some(f)) => Err(StoreError::fenced(&f.flag, f.token, n)),
            _ => Err(StoreError::conflict(expected, n)),
        }
    }

    /// Announces `version` (only a change wakes the receivers).
    fn announce(&self, version: u64) -> bool {
        self.notices.send_if_modified(|n| {
            let changed = n.version != version;
            n.version = version;
            changed
        })
    }

    /// Tells receivers that announcements may have been lost: they reload.
    fn resync(&self) {
        self.notices
            .send_modify(|n| n.epoch = n.epoch.wrapping_add(1));
    }
}

/// What [`Inner::call`] runs.
enum Call<'a> {
    Cmd(&'a redis::Cmd),
    Script(&'a redis::ScriptInvocation<'a>),
}

impl FlagStore for RedisStore {
    fn load(&self) -> BoxFuture<'_, Result<Document, StoreError>> {
        Box::pin(async move {
            let inner = &self.inner;
            // One MGET (one slot): the version, the document it belongs to and its digest,
            // read atomically.
            let mut cmd = redis::cmd("MGET");
            cmd.arg(&inner.keys.version)
                .arg(&inner.keys.doc)
                .arg(&inner.keys.digest);
            welcomedly_redis::debug_assert_same_slot(
                "the flag load",
                &[&inner.keys.version, &inner.keys.doc, &inner.keys.digest],
            );
            let (version, body, digest): (Option<String>, Option<String>, Option<String>) =
                inner.call("load", Retry::Once, Call::Cmd(&cmd)).await?;
            let version = inner.parse_version(version.as_deref())?;
            *inner.loaded.lock().unwrap_or_else(PoisonError::into_inner) = Some((version, digest));
            match (version, body) {
                (0, None) => Ok(Document::default()),
                (0, Some(_)) => Err(StoreError::corrupt(format!(
                    "{} holds a flag document under {} but no version under {}: it was written by hand without the version; set the version too (e.g. INCR {}) or write through the store",
                    inner.name, inner.keys.doc, inner.keys.version, inner.keys.version
                ))),
                (v, None) => Err(StoreError::corrupt(format!(
                    "{} holds version {v} under {} but no document under {}: the document was deleted; write the flag set again",
                    inner.name, inner.keys.version, inner.keys.doc
                ))),
                (version, Some(body)) => Ok(Document { version, body }),
            }
        })
    }

    fn write(
        &self,
        expected: u64,
        body: String,
        change: Change,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.inner.write(expected, body, change, None))
    }

    fn write_fenced(
        &self,
        expected: u64,
        body: String,
        change: Change,
        fence: Fence,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move { self.inner.write(expected, body, change, Some(&fence)).await })
    }

    fn raise_fence(&self, fence: Fence) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let mut invocation = inner.raise_fence.prepare_invoke();
            invocation
                .key(&inner.keys.fences)
                .arg(&fence.flag)
                .arg(fence.token);
            // Idempotent: a second run records the same token.
            let (ok, seen): (i64, u64) = inner
                .call("fence raise", Retry::Once, Call::Script(&invocation))
                .await?;
            if ok == 1 {
                Ok(())
            } else {
                Err(StoreError::fenced(&fence.flag, fence.token, seen))
            }
        })
    }

    fn history(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Change>, StoreError>> {
        Box::pin(async move {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let inner = &self.inner;
            let stop = i64::try_from(limit).unwrap_or(i64::MAX) - 1;
            let mut cmd = redis::cmd("LRANGE");
            cmd.arg(&inner.keys.history).arg(0).arg(stop);
            let raw: Vec<String> = inner
                .call("history read", Retry::Once, Call::Cmd(&cmd))
                .await?;
            raw.iter()
                .map(|text| {
                    serde_json::from_str::<Change>(text).map_err(|e| {
                        StoreError::corrupt(format!(
                            "{} holds a history entry under {} that is not a change ({e}): something else wrote there; delete the entry",
                            inner.name, inner.keys.history
                        ))
                    })
                })
                .collect()
        })
    }

    fn changes(&self) -> watch::Receiver<Notice> {
        self.inner.notices.subscribe()
    }

    fn version(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.inner.read_version())
    }

    fn describe(&self) -> String {
        self.inner.name.clone()
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("redis", &self.inner.name)
            .field("keys", &self.inner.keys)
            .field("connected", &self.is_connected())
            .field("subscribed", &self.is_subscribed())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn zero_settings_are_refused_with_what_to_do() {
        let link = Link::connect(welcomedly_redis::LinkConfig::new("redis://127.0.0.1:1/"))
            .await
            .unwrap();
        let config = RedisStoreConfig {
            poll_interval: Duration::ZERO,
            ..RedisStoreConfig::default()
        };
        let e = RedisStore::new(&link, config).await.unwrap_err();
        assert!(
            e.is_config() && e.to_string().contains("poll interval"),
            "{e}"
        );
        let config = RedisStoreConfig {
            history_bytes: 1,
            ..RedisStoreConfig::default()
        };
        let e = RedisStore::new(&link, config).await.unwrap_err();
        assert!(e.is_config() && e.to_string().contains("raise it"), "{e}");
        let config = RedisStoreConfig {
            key_prefix: "}x".to_owned(),
            ..RedisStoreConfig::default()
        };
        let e = RedisStore::new(&link, config).await.unwrap_err();
        assert!(e.is_config() && e.to_string().contains("slots"), "{e}");
    }
}
