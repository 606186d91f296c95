//! The session cache of [`RedisSessionStore`](super::RedisSessionStore): recently used
//! session records kept in this instance's memory, dropped the moment Redis says they changed
//! (server-assisted client-side caching, `CLIENT TRACKING on BCAST PREFIX <prefix>:{`).
//!
//! **How it stays right.** One RESP3 connection per instance (a
//! [`PushConnection`](welcomedly_redis::PushConnection), to the node the shared connection
//! reaches) asks Redis to push an `invalidate` message for every change of any session key
//! (broadcast mode: no per-key table on the server, so nothing to register per read; every
//! write of any session reaches every instance, see the costs below). Then:
//! - an entry is used only while that connection is up **and has been up since the entry was
//!   loaded** (an epoch bumped on every connect and every loss) and while the link's shared
//!   connection is the one the tracking connection was made alongside (a Sentinel failover or
//!   a reconnection of the link turns every entry off until the tracking is made again);
//! - an `invalidate` for a key drops its entry; an `invalidate` without keys (`FLUSHALL`)
//!   drops all; the connection's end (Redis closed it, a `CLIENT KILL`, a failed `PING`: it is
//!   pinged every second, so a frozen Redis is noticed within about two) drops all at once;
//! - the classic race (a value read, then changed, the invalidation arriving before the read's
//!   answer) is closed with a placeholder: a miss puts a "loading" mark with a fresh token
//!   before the read is sent; an invalidation removes the mark; the answer is kept only if its
//!   own mark is still there (see the Redis docs, "client-side caching", *Race conditions*);
//! - an entry is fresh only until the next idle-expiry refresh is due (see
//!   `RedisSessionConfig::slide_after_percent`):
//!   after that the next read goes to Redis, which slides the expiry and writes nothing else.
//!
//! **What a logout elsewhere costs.** Nothing more than before for the instance that logs out
//! (its `DEL`); Redis queues one `invalidate` to every instance before it answers that `DEL`
//! (`beforeSleep` sends broadcast invalidations, then writes the pending replies), so the
//! push is on every instance's socket when the logout's answer leaves Redis. An instance about
//! to answer from memory first yields once to the runtime (a deferred `yield_now`: the runtime
//! polls its I/O driver before it resumes the request), so a push already on the socket is
//! applied before the lookup: a request sent after the logout's answer does not find the
//! session. What remains is the scheduling of the connection's reader task (on a multi-thread
//! runtime it may run on another worker a moment later), far shorter than a client's next
//! request through a load balancer.
//!
//! **What broadcast mode costs.** Every session write (login, a changed value, an idle-expiry
//! refresh, a logout, an expiry) sends one push of about 60 bytes to every instance, and
//! drops that session from every instance's cache. With sessions refreshed once per quarter of
//! their idle timeout, that is about four pushes per active session per idle timeout per
//! instance, plus one per changed value.
//!
//! **On a Redis Cluster the cache is off** (tracking is per node: it would need one tracking
//! connection per master owning cached keys, followed across slot moves); every read goes to
//! Redis as without the cache.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use redis::{PushInfo, PushKind, Value};
use tokio::sync::Notify;
use welcomedly_redis::Link;

use super::Record;

/// Shards of the map, so concurrent requests rarely wait for each other.
const SHARDS: usize = 16;

/// How often the tracking connection is pinged when idle.
const PING_EVERY: Duration = Duration::from_secs(1);

/// The longest a ping may take before the tracking connection counts as dead.
const PING_WITHIN: Duration = Duration::from_secs(1);

/// Entries looked at to find one to evict (second chance: a used one is skipped once).
const EVICTION_SCAN: usize = 32;

/// Bytes counted per field beyond its text (map and allocation overhead).
const FIELD_OVERHEAD: usize = 48;

/// Counters of a session cache, since the store was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionCacheStats {
    /// Loads answered from memory.
    pub hits: u64,
    /// Loads that went to Redis (not cached, not fresh, or the cache was not usable).
    pub misses: u64,
    /// Entries (or loads in flight) dropped by an invalidation push.
    pub invalidations: u64,
    /// Times the whole cache was dropped (the tracking connection lost or re-made, a
    /// `FLUSHALL`).
    pub flushes: u64,
    /// Entries evicted to stay within the bounds.
    pub evictions: u64,
    /// Entries held now.
    pub entries: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
    evictions: AtomicU64,
}

enum Slot {
    /// A read is in flight; the token is its own.
    Loading(u64),
    Ready(Entry),
}

struct Entry {
    record: Record,
    /// Used until then (ms since the epoch): the next idle refresh, or the deadline.
    fresh_until_ms: u64,
    epoch: u64,
    bytes: usize,
    /// Read since the eviction scan last passed (second chance).
    used: bool,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Box<str>, Slot>,
    bytes: usize,
}

/// The cache: bounded in entries and bytes, sharded.
pub(crate) struct SessionCache {
    shards: [Mutex<Shard>; SHARDS],
    hasher: RandomState,
    /// Per shard.
    max_entries: usize,
    max_bytes: usize,
    /// Bumped on every connect and loss of the tracking connection: an entry or a load of an
    /// older epoch is never used.
    epoch: AtomicU64,
    /// 0 while the tracking connection is down; else the link generation it was made
    /// alongside, plus one.
    tracking: AtomicU64,
    tokens: AtomicU64,
    counters: Counters,
    /// Told by a lookup that found the link moved away from the tracking connection's node:
    /// the tracking task makes it again at once rather than at its next ping.
    moved: Arc<Notify>,
}

/// What a lookup found.
pub(crate) enum Lookup<'a> {
    Hit(Record),
    /// Read from Redis; hand the answer to [`Ticket::fill`] (`None`: not cacheable now).
    Miss(Option<Ticket<'a>>),
}

/// A miss's claim on its key: the answer is kept only if nothing changed the key meanwhile.
/// Dropped unfilled (an error, a cancelled request), it removes its mark.
pub(crate) struct Ticket<'a> {
    cache: &'a SessionCache,
    key: &'a str,
    token: u64,
    epoch: u64,
}

impl SessionCache {
    /// A cache of at most `entries` records and `bytes` of their text (each at least one per
    /// shard).
    pub(crate) fn new(entries: usize, bytes: usize) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
            hasher: RandomState::new(),
            max_entries: (entries / SHARDS).max(1),
            max_bytes: (bytes / SHARDS).max(1),
            epoch: AtomicU64::new(0),
            tracking: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            counters: Counters::default(),
            moved: Arc::new(Notify::new()),
        }
    }

    fn shard(&self, key: &[u8]) -> &Mutex<Shard> {
        let i = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        #[allow(clippy::indexing_slicing, reason = "i < SHARDS, the array's length")]
        &self.shards[i]
    }

    /// Whether entries may be used now: the tracking connection is up and made alongside the
    /// link's current connection.
    pub(crate) fn usable(&self, link_generation: Option<u64>) -> bool {
        let tracking = self.tracking.load(Ordering::Acquire);
        if tracking == 0 {
            return false;
        }
        if link_generation.map(|g| g.wrapping_add(1)) == Some(tracking) {
            return true;
        }
        self.moved.notify_one();
        false
    }

    /// Whether `key` has an entry [`get`](Self::get) would return now.
    pub(crate) fn has_fresh(&self, key: &str, now_ms: u64, link_generation: Option<u64>) -> bool {
        if !self.usable(link_generation) {
            return false;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let shard = self
            .shard(key.as_bytes())
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        matches!(shard.map.get(key), Some(Slot::Ready(e)) if e.epoch == epoch && now_ms < e.fresh_until_ms)
    }

    /// The fresh entry of `key`, or a ticket to fill it from Redis.
    pub(crate) fn get<'a>(
        &'a self,
        key: &'a str,
        now_ms: u64,
        link_generation: Option<u64>,
    ) -> Lookup<'a> {
        if !self.usable(link_generation) {
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            return Lookup::Miss(None);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut shard = self
            .shard(key.as_bytes())
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(Slot::Ready(entry)) = shard.map.get_mut(key)
            && entry.epoch == epoch
            && now_ms < entry.fresh_until_ms
        {
            entry.used = true;
            let record = entry.record.clone();
            drop(shard);
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Lookup::Hit(record);
        }
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        if let Some(Slot::Ready(old)) = shard.map.insert(key.into(), Slot::Loading(token)) {
            shard.bytes = shard.bytes.saturating_sub(old.bytes);
        }
        drop(shard);
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        Lookup::Miss(Some(Ticket {
            cache: self,
            key,
            token,
            epoch,
        }))
    }

    /// Drops `key`'s entry or mark (an invalidation push, or a write of this instance).
    pub(crate) fn invalidate(&self, key: &[u8]) {
        let Ok(text) = std::str::from_utf8(key) else {
            return;
        };
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = shard.map.remove(text) {
            if let Slot::Ready(old) = slot {
                shard.bytes = shard.bytes.saturating_sub(old.bytes);
            }
            self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops every entry and mark, and starts a new epoch (loads in flight are not kept).
    pub(crate) fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.map.clear();
            shard.bytes = 0;
        }
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
    }

    /// The tracking connection made alongside link generation `generation` is tracking now.
    fn tracking_up(&self, generation: u64) {
        self.flush();
        self.tracking
            .store(generation.wrapping_add(1), Ordering::Release);
    }

    /// The tracking connection is gone (or about to be): nothing cached may be used.
    fn tracking_down(&self) {
        // Off first, then flushed: a hit between the two is impossible (`usable`).
        if self.tracking.swap(0, Ordering::AcqRel) != 0 {
            self.flush();
        }
    }

    /// A server push on the tracking connection.
    fn on_push(&self, info: &PushInfo) {
        match info.kind {
            PushKind::Invalidate => match info.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        if let Value::BulkString(key) = key {
                            self.invalidate(key);
                        }
                    }
                }
                // `invalidate` with a null: every key (a `FLUSHALL`, `FLUSHDB`).
                _ => self.flush(),
            },
            PushKind::Disconnection => self.tracking_down(),
            _ => {}
        }
    }

    pub(crate) fn stats(&self) -> SessionCacheStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let entries = self
            .shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                s.map
                    .values()
                    .filter(|slot| matches!(slot, Slot::Ready(_)))
                    .count() as u64
            })
            .sum();
        SessionCacheStats {
            hits: get(&self.counters.hits),
            misses: get(&self.counters.misses),
            invalidations: get(&self.counters.invalidations),
            flushes: get(&self.counters.flushes),
            evictions: get(&self.counters.evictions),
            entries,
        }
    }

    /// Whether the tracking connection is up now (it may be on a node the link has left:
    /// see [`usable`](Self::usable)).
    #[cfg(test)]
    fn is_tracking(&self) -> bool {
        self.tracking.load(Ordering::Acquire) != 0
    }
}

impl Ticket<'_> {
    /// Keeps `record`, fresh until `fresh_until_ms`, if the key's mark is still this load's
    /// and the epoch has not changed; else drops it. `None` (no such session) is not kept.
    pub(crate) fn fill(self, record: Option<&Record>, fresh_until_ms: u64) {
        let cache = self.cache;
        let mut shard = cache
            .shard(self.key.as_bytes())
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ours = matches!(shard.map.get(self.key), Some(Slot::Loading(t)) if *t == self.token);
        if !ours {
            return;
        }
        // Checked under the shard's lock: a flush bumps the epoch before it clears the shards.
        let keep = record.filter(|_| cache.epoch.load(Ordering::Acquire) == self.epoch);
        let Some(record) = keep else {
            shard.map.remove(self.key);
            return;
        };
        let bytes = record_bytes(self.key, record);
        shard.map.remove(self.key);
        while shard.map.len() >= cache.max_entries || shard.bytes + bytes > cache.max_bytes {
            if !evict_one(&mut shard) {
                // Only marks of loads in flight are left, or the record alone is too big.
                return;
            }
            cache.counters.evictions.fetch_add(1, Ordering::Relaxed);
        }
        shard.bytes += bytes;
        shard.map.insert(
            self.key.into(),
            Slot::Ready(Entry {
                record: record.clone(),
                fresh_until_ms,
                epoch: self.epoch,
                bytes,
                used: false,
            }),
        );
        // Dropped with the mark gone: `Drop` finds nothing of its own.
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut shard = self
            .cache
            .shard(self.key.as_bytes())
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if matches!(shard.map.get(self.key), Some(Slot::Loading(t)) if *t == self.token) {
            shard.map.remove(self.key);
        }
    }
}

/// Evicts one entry: the first not used since the scan last passed, else the first seen.
/// `false` when there is none to evict.
fn evict_one(shard: &mut Shard) -> bool {
    let mut victim: Option<Box<str>> = None;
    let mut fallback: Option<Box<str>> = None;
    for (key, slot) in shard.map.iter_mut().take(EVICTION_SCAN) {
        if let Slot::Ready(entry) = slot {
            if !entry.used {
                victim = Some(key.clone());
                break;
            }
            entry.used = false;
            if fallback.is_none() {
                fallback = Some(key.clone());
            }
        }
    }
    let Some(key) = victim.or(fallback) else {
        return false;
    };
    if let Some(Slot::Ready(old)) = shard.map.remove(&key) {
        shard.bytes = shard.bytes.saturating_sub(old.bytes);
    }
    true
}

/// What an entry counts against the byte bound.
fn record_bytes(key: &str, record: &Record) -> usize {
    let fields: usize = record
        .data
        .iter()
        .map(|(k, v)| k.len() + v.len() + FIELD_OVERHEAD)
        .sum();
    key.len() + record.user.as_deref().map_or(0, str::len) + fields + 2 * FIELD_OVERHEAD
}

/// When a record loaded now, whose key expires in `pttl_ms`, stops being fresh: when the next
/// idle refresh is due (the load script refreshes once `slide_ms` of the idle timeout has
/// passed), or at its expiry or deadline when no refresh will come.
pub(crate) fn fresh_until(
    now_ms: u64,
    pttl_ms: u64,
    idle_ms: u64,
    slide_ms: u64,
    deadline_ms: u64,
) -> u64 {
    let expires = now_ms.saturating_add(pttl_ms).min(deadline_ms);
    if deadline_ms.saturating_sub(expires) < slide_ms {
        // The deadline caps every later refresh below the refresh share: none will be made.
        return expires;
    }
    expires
        .saturating_add(slide_ms)
        .saturating_sub(idle_ms)
        .min(expires)
}

/// Keeps the tracking connection: connects, turns tracking on for `prefix`, pings it, and
/// makes it again after a loss with the link's backoff (jittered). Ends when the cache is
/// dropped.
pub(crate) async fn track(cache: Weak<SessionCache>, link: Link, prefix: String) {
    let mut delays = link.config().backoff.delays();
    let mut failures = 0u32;
    loop {
        if cache.strong_count() == 0 {
            return;
        }
        match session(&cache, &link, &prefix).await {
            Ok(why) => {
                delays = link.config().backoff.delays();
                failures = 0;
                tracing::info!(
                    reason = why,
                    "the session cache's Redis tracking connection ended: the cache was emptied; reconnecting"
                );
            }
            Err(e) => {
                failures += 1;
                // Once, then quietly: the link's own health check reports a down Redis.
                if failures == 1 {
                    tracing::warn!(
                        error = %e,
                        "cannot turn Redis client tracking on for the session cache: sessions are read from Redis until it works; retrying"
                    );
                } else {
                    tracing::debug!(error = %e, failures, "session cache tracking still off");
                }
            }
        }
        tokio::time::sleep(delays.next_delay()).await;
    }
}

/// One tracking connection's life: `Ok` with why it ended after it worked, `Err` when it
/// could not be made.
async fn session(
    cache: &Weak<SessionCache>,
    link: &Link,
    prefix: &str,
) -> Result<&'static str, String> {
    let down = Arc::new(Notify::new());
    let Some(moved) = cache.upgrade().map(|c| c.moved.clone()) else {
        return Ok("the store was dropped");
    };
    let push = {
        let cache = cache.clone();
        let down = down.clone();
        move |info: PushInfo| -> Result<(), ()> {
            if let Some(cache) = cache.upgrade() {
                cache.on_push(&info);
            }
            if info.kind == PushKind::Disconnection {
                down.notify_one();
            }
            Ok(())
        }
    };
    let mut pc = link
        .push_connection(push)
        .await
        .map_err(|e| e.to_string())?;
    let on = redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("BCAST")
        .arg("PREFIX")
        .arg(format!("{prefix}:{{"))
        .clone();
    tokio::time::timeout(PING_WITHIN, on.query_async::<()>(pc.conn()))
        .await
        .map_err(|_| "CLIENT TRACKING got no answer in time".to_owned())?
        .map_err(|e| format!("CLIENT TRACKING was refused: {e}"))?;
    {
        let Some(strong) = cache.upgrade() else {
            return Ok("the store was dropped");
        };
        strong.tracking_up(pc.generation());
    }
    let why = loop {
        tokio::select! {
            () = down.notified() => break "Redis closed the connection",
            () = moved.notified() => {
                if link.connection_generation() != Some(pc.generation()) {
                    break "the link reconnected (a restart or a failover)";
                }
            }
            () = tokio::time::sleep(PING_EVERY) => {
                if cache.strong_count() == 0 {
                    return Ok("the store was dropped");
                }
                if link.connection_generation() != Some(pc.generation()) {
                    break "the link reconnected (a restart or a failover)";
                }
                let ping = redis::cmd("PING");
                match tokio::time::timeout(PING_WITHIN, ping.query_async::<()>(pc.conn())).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break "a PING failed",
                    Err(_) => break "a PING got no answer in time",
                }
            }
        }
    };
    if let Some(strong) = cache.upgrade() {
        strong.tracking_down();
    }
    Ok(why)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn record(user: &str) -> Record {
        Record {
            data: HashMap::from([("k".to_owned(), "1".to_owned())]),
            user: Some(Arc::from(user)),
            deadline_ms: u64::MAX,
        }
    }

    fn up(cache: &SessionCache) {
        cache.tracking_up(7);
    }

    fn hit(cache: &SessionCache, key: &str) -> Option<Record> {
        match cache.get(key, 10, Some(7)) {
            Lookup::Hit(r) => Some(r),
            Lookup::Miss(_) => None,
        }
    }

    fn load(cache: &SessionCache, key: &str, user: &str) {
        let Lookup::Miss(Some(t)) = cache.get(key, 10, Some(7)) else {
            panic!("expected a miss with a ticket");
        };
        t.fill(Some(&record(user)), 100);
    }

    #[test]
    fn a_filled_entry_is_hit_until_invalidated() {
        let cache = SessionCache::new(100, 1 << 20);
        up(&cache);
        assert!(hit(&cache, "a").is_none());
        load(&cache, "a", "alice");
        assert_eq!(hit(&cache, "a").unwrap().user.as_deref(), Some("alice"));
        cache.invalidate(b"a");
        assert!(hit(&cache, "a").is_none());
        let s = cache.stats();
        assert_eq!((s.hits, s.invalidations), (1, 1));
    }

    #[test]
    fn an_invalidation_during_the_read_keeps_the_answer_out() {
        let cache = SessionCache::new(100, 1 << 20);
        up(&cache);
        let Lookup::Miss(Some(t)) = cache.get("a", 10, Some(7)) else {
            panic!("miss");
        };
        // The value changes in Redis after the read ran; its push arrives before the answer.
        cache.invalidate(b"a");
        t.fill(Some(&record("stale")), 100);
        assert!(hit(&cache, "a").is_none());
    }

    #[test]
    fn a_flush_during_the_read_keeps_the_answer_out() {
        let cache = SessionCache::new(100, 1 << 20);
        up(&cache);
        let Lookup::Miss(Some(t)) = cache.get("a", 10, Some(7)) else {
            panic!("miss");
        };
        // The connection dropped and came back while the read was in flight.
        cache.tracking_down();
        up(&cache);
        t.fill(Some(&record("stale")), 100);
        assert!(hit(&cache, "a").is_none());
    }

    #[test]
    fn nothing_is_used_while_tracking_is_down_or_the_link_moved() {
        let cache = SessionCache::new(100, 1 << 20);
        assert!(matches!(cache.get("a", 10, Some(7)), Lookup::Miss(None)));
        up(&cache);
        load(&cache, "a", "alice");
        // The link reconnected (generation 8): the tracking connection may be on another node.
        assert!(matches!(cache.get("a", 10, Some(8)), Lookup::Miss(None)));
        cache.on_push(&PushInfo {
            kind: PushKind::Disconnection,
            data: vec![],
        });
        assert!(!cache.is_tracking());
        up(&cache);
        assert!(hit(&cache, "a").is_none(), "flushed on the loss");
    }

    #[test]
    fn invalidation_pushes_drop_keys_and_a_null_drops_all() {
        let cache = SessionCache::new(100, 1 << 20);
        up(&cache);
        load(&cache, "a", "alice");
        load(&cache, "b", "bob");
        cache.on_push(&PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Array(vec![Value::BulkString(b"a".to_vec())])],
        });
        assert!(hit(&cache, "a").is_none());
        assert!(hit(&cache, "b").is_some());
        cache.on_push(&PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Nil],
        });
        assert!(hit(&cache, "b").is_none());
    }

    #[test]
    fn stale_entries_are_not_used_and_a_dropped_ticket_leaves_no_mark() {
        let cache = SessionCache::new(100, 1 << 20);
        up(&cache);
        load(&cache, "a", "alice");
        assert!(matches!(
            cache.get("a", 100, Some(7)),
            Lookup::Miss(Some(_))
        ));
        assert_eq!(cache.stats().entries, 0);
        let shard = cache.shard(b"a").lock().unwrap();
        assert!(shard.map.is_empty(), "the mark went with the ticket");
    }

    #[test]
    fn bounds_hold() {
        let cache = SessionCache::new(SHARDS * 4, 1 << 20);
        up(&cache);
        for i in 0..1000 {
            load(&cache, &format!("k{i}"), "u");
        }
        let s = cache.stats();
        assert!(s.entries <= (SHARDS * 4) as u64, "{s:?}");
        assert!(s.evictions >= 1000 - (SHARDS * 4) as u64);
        // A byte bound far below one record: nothing is kept.
        let tiny = SessionCache::new(100, SHARDS);
        up(&tiny);
        load(&tiny, "a", "alice");
        assert!(hit(&tiny, "a").is_none());
    }

    #[test]
    fn freshness_ends_when_the_next_refresh_is_due() {
        // Idle 1000, refresh after 250: loaded with the full ttl, fresh for 250.
        assert_eq!(fresh_until(0, 1000, 1000, 250, 1_000_000), 250);
        // Loaded with 800 left (not refreshed): fresh for 50 more.
        assert_eq!(fresh_until(0, 800, 1000, 250, 1_000_000), 50);
        // Near the deadline no refresh comes: fresh until the key expires.
        assert_eq!(fresh_until(0, 900, 1000, 250, 900), 900);
        assert_eq!(fresh_until(0, 1000, 1000, 250, 1100), 1000);
    }
}
