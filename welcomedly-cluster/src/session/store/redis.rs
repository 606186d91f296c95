//! [`RedisSessionStore`]: sessions shared by every instance through one Redis.
//!
//! Layout (every key holds a digest, never client text, so `KEYS`, `MONITOR` and a dump show no
//! usable cookie):
//!
//! | key | type | what |
//! |---|---|---|
//! | `<prefix>:{<digest of the id>}` | hash | `m:x` absolute deadline (ms since the epoch), `m:u` user id, `d:<key>` each value's JSON; `PEXPIRE` = the idle timeout, never past the deadline |
//! | `<prefix>:u:{<digest of the user id>}` | sorted set | the user's session digests scored by deadline; cleaned of expired entries and capped on every login; expires with its newest session |
//!
//! **Redis Cluster.** Every command and script names one key, so it runs on one slot; the key
//! names are those of one node (no rename, so an upgrade logs nobody out). A load is one
//! `EVALSHA` that reads the hash and slides its expiry once a quarter of it has passed (or is
//! answered from the instance's session cache, off on a cluster: see [`RedisSessionStore`]); a write of changed values is one
//! `EVALSHA` of `HSET`/`HDEL` on the changed fields only, refused when the session ended
//! meanwhile (a logout elsewhere is not undone by a late write). What spans keys is split into
//! single-slot calls, ordered so that a failure or a crash between them is safe:
//! - **login / new session** (the new session, the session it replaces, the user's index:
//!   three slots): first, at once, the replaced session is deleted (and unindexed) and the
//!   new session's index entry written; then the session itself. So **a login's index entry
//!   exists before the session is usable**, and the replaced (pre-login) id is dead before the
//!   new one works. Stopped between the steps, the user is logged out (the request failed; a
//!   retry logs in) and the index holds an entry for a session that does not exist: harmless,
//!   it is cleaned when it expires or at the next login. Sessions the per-user bound evicts
//!   are deleted last, then unindexed (a session is never live without its index entry).
//! - **logout**: the session's `DEL` and its index entry's `ZREM`, at once.
//! - **log out everywhere**: the index is read, every session it lists is deleted (one `DEL`
//!   per session, each its own slot, 16 in flight), and only then are *those* entries removed
//!   from the index. Every session usable before the request was indexed before it (see
//!   login), so **log out everywhere ends every session**; a login racing it keeps its entry
//!   for the next one; a failure leaves the index whole for a retry.
//!
//! **Revocations survive a failover** (Sentinel, Redis Cluster). Replication is asynchronous:
//! a master killed right after a logout's `DEL` may be replaced by a replica that never got
//! it, and the logged-out session would work again. So on a topology with replicas each
//! revoking `DEL` (logout, log out everywhere, sessions past the per-user bound) is sent on a
//! dedicated connection to the key's node, pipelined with `WAIT 1 <revoke_wait>`: the logout
//! answers once one replica has the deletion, or after
//! [`revoke_wait`](RedisSessionConfig::revoke_wait) (default 100 ms). `WAIT` runs there, never
//! on the shared connection, where it would stall every other call behind it. When no replica
//! acknowledges in time (the replica is down, lagging, or the cluster has no replicas) the
//! logout **still succeeds** (the session is deleted on the master; refusing it would leave the
//! user logged in for sure) and the store logs a warning and counts it
//! ([`unconfirmed_revocations`](RedisSessionStore::unconfirmed_revocations),
//! `welcomedly.session.revocations_unconfirmed`): only those revocations can be undone by a
//! failover. On one node there is no replica to wait for and nothing is waited. The id cycled
//! at login is not waited for: the pre-login id it ends was anonymous.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::Script;
use sha2::{Digest, Sha256};
use welcomedly_core::config::{ConfigError, EnvReader, parse_millis};
use welcomedly_core::health::{CheckFuture, CheckOutcome, HealthCheck};
use welcomedly_redis::{Link, Retry, Topology};

use super::cache::{self, Lookup, SessionCache, SessionCacheStats, fresh_until};
use super::{Create, Record, millis, system_now_ms};
use crate::Error;
use crate::session::error::SessionError;
use crate::session::id::{SessionId, hex};

/// The load script: `KEYS[1]` the session key, `ARGV` the idle timeout (ms), the current
/// time (ms since the epoch) and, optionally, the refresh share (ms, default 0). Returns the
/// hash's fields and values followed by `m:t` and the key's time to live (ms) after the call,
/// or nil when the session is unknown or past its absolute deadline. It slides the idle expiry
/// (never past the deadline) in the same call, but only once at least the refresh share of
/// the idle timeout has passed since the last slide (0: on every load), so most loads write
/// nothing. Public for other languages sharing the sessions, and for benches.
pub const LOAD_SCRIPT: &str = r"
local v = redis.call('HGETALL', KEYS[1])
local d
for i = 1, #v, 2 do
  if v[i] == 'm:x' then
    d = v[i + 1]
    break
  end
end
if not d then return false end
local left = tonumber(d) - tonumber(ARGV[2])
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return false
end
local ttl = tonumber(ARGV[1])
if left < ttl then ttl = left end
local pttl = redis.call('PTTL', KEYS[1])
if pttl < 0 or ttl - pttl >= tonumber(ARGV[3] or '0') then
  redis.call('PEXPIRE', KEYS[1], ttl)
  pttl = ttl
end
v[#v + 1] = 'm:t'
v[#v + 1] = tostring(pttl)
return v
";

const UPDATE: &str = r"
local d = redis.call('HGET', KEYS[1], 'm:x')
if not d then return 0 end
local left = tonumber(d) - tonumber(ARGV[2])
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
local n = tonumber(ARGV[3])
if n > 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 4, 3 + 2 * n))
end
if 4 + 2 * n <= #ARGV then
  redis.call('HDEL', KEYS[1], unpack(ARGV, 4 + 2 * n))
end
local ttl = tonumber(ARGV[1])
if left < ttl then ttl = left end
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
";

const CREATE: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
local left = tonumber(ARGV[3]) - tonumber(ARGV[2])
local ttl = tonumber(ARGV[1])
if left < ttl then ttl = left end
if ttl < 1 then ttl = 1 end
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
";

/// ARGV: now, the new session's deadline, its digest, the cap, the replaced digest or ''.
/// Returns the digests past the cap, oldest first, still indexed: the caller ends their
/// sessions, then removes them from the index (so a session is never live and unindexed).
const INDEX: &str = r"
if ARGV[5] ~= '' then redis.call('ZREM', KEYS[1], ARGV[5]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
-- Strictly increasing scores, so the bound evicts the oldest login even within one millisecond.
local score = tonumber(ARGV[2])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if top[2] and tonumber(top[2]) >= score then score = tonumber(top[2]) + 1 end
score = string.format('%.0f', score)
redis.call('ZADD', KEYS[1], score, ARGV[3])
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
local evicted = {}
if extra > 0 then
  evicted = redis.call('ZRANGE', KEYS[1], 0, extra - 1)
end
redis.call('PEXPIREAT', KEYS[1], score)
return evicted
";

/// Session deletes in flight at once (log out everywhere, evictions): bounded, whatever the
/// per-user bound.
const DELETES_IN_FLIGHT: usize = 16;

const DEADLINE: &str = "m:x";
const USER: &str = "m:u";
/// Not a field: what the load script appends (the key's time to live after the load).
const TTL: &str = "m:t";
const DATA: &str = "d:";

/// Settings of the Redis session store, plain data with documented defaults. The connection
/// itself (URL, threshold, reconnects) is the [`Link`]'s.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisSessionConfig {
    /// Prefix of every key. Default `"wd:s"`.
    pub key_prefix: String,
    /// The longest a request waits for one Redis call before it is answered 503. Default 50 ms.
    pub budget: Duration,
    /// On Sentinel and Redis Cluster, the longest a logout waits for a replica to acknowledge
    /// the deletion (`WAIT 1 <ms>` on a dedicated connection), so a failover right after it
    /// cannot undo it; past it the logout succeeds anyway and is counted as unconfirmed (see
    /// the module docs). Zero turns the wait off. Ignored on one node. Default 100 ms
    /// (loopback replicas acknowledge in well under 1 ms; a replica across zones in a few).
    pub revoke_wait: Duration,
    /// A load slides the idle expiry only once this share (in percent) of the idle timeout has
    /// passed since the last slide; 0 slides on every load (one write per request, which drops
    /// the session from every instance's cache). So a session idle-expires between
    /// `(100 - slide_after_percent)` % and 100 % of the idle timeout after its last request.
    /// At most 100. Default 25.
    pub slide_after_percent: u8,
    /// The most session records the instance keeps in memory (see "Session cache" in
    /// [`RedisSessionStore`]); 0 turns the cache off. Default 10 000.
    pub cache_entries: usize,
    /// The most bytes of session data (keys, values, user ids, plus a fixed overhead per
    /// field) the cache holds. Default 32 MiB.
    pub cache_bytes: usize,
}

impl Default for RedisSessionConfig {
    fn default() -> Self {
        Self {
            key_prefix: "wd:s".to_owned(),
            budget: Duration::from_millis(50),
            revoke_wait: Duration::from_millis(100),
            slide_after_percent: 25,
            cache_entries: 10_000,
            cache_bytes: 32 << 20,
        }
    }
}

impl RedisSessionConfig {
    /// Reads `WELCOMEDLY_SESSION_BUDGET_MS` (default 50),
    /// `WELCOMEDLY_SESSION_REVOKE_WAIT_MS` (default 100, 0 turns the wait off),
    /// `WELCOMEDLY_SESSION_SLIDE_AFTER_PERCENT` (default 25), `WELCOMEDLY_SESSION_CACHE`
    /// (`on` or `off`, default on), `WELCOMEDLY_SESSION_CACHE_ENTRIES` (default 10000) and
    /// `WELCOMEDLY_SESSION_CACHE_MIB` (default 32) from the environment.
    ///
    /// # Errors
    ///
    /// An invalid variable, as welcomedly-core's `ConfigError`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut env = EnvReader::from_env();
        let config = Self::read(&mut env);
        env.finish(config)
    }

    /// [`from_env`](Self::from_env) through a shared reader, so a service reports the problems
    /// of all its components' variables at once.
    pub fn read(env: &mut EnvReader<'_>) -> Self {
        let budget = env.read(
            "WELCOMEDLY_SESSION_BUDGET_MS",
            Duration::from_millis(50),
            |v| {
                parse_millis(v).filter(|d| !d.is_zero()).ok_or(
                    "is not a usable budget: expected a whole number of milliseconds greater than 0, such as 50",
                )
            },
        );
        let revoke_wait = env.read(
            "WELCOMEDLY_SESSION_REVOKE_WAIT_MS",
            Duration::from_millis(100),
            |v| {
                parse_millis(v).ok_or(
                    "is not a usable wait: expected a whole number of milliseconds, such as 100 (0 turns the wait off)",
                )
            },
        );
        let cache_on = env.read("WELCOMEDLY_SESSION_CACHE", true, |v| {
            match v.to_ascii_lowercase().as_str() {
                "on" | "true" | "1" => Ok(true),
                "off" | "false" | "0" => Ok(false),
                _ => Err("is not a switch: expected on or off"),
            }
        });
        let cache_entries = env.read("WELCOMEDLY_SESSION_CACHE_ENTRIES", 10_000, |v| {
            v.parse::<usize>().ok().filter(|n| *n > 0).ok_or(
                "is not a usable size: expected a whole number of sessions greater than 0, such as 10000 (WELCOMEDLY_SESSION_CACHE=off turns the cache off)",
            )
        });
        let cache_mib = env.read("WELCOMEDLY_SESSION_CACHE_MIB", 32usize, |v| {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=1 << 20).contains(n))
                .ok_or("is not a usable size: expected a whole number of MiB from 1, such as 32")
        });
        let slide_after_percent = env.read("WELCOMEDLY_SESSION_SLIDE_AFTER_PERCENT", 25u8, |v| {
            v.parse::<u8>().ok().filter(|n| *n <= 100).ok_or(
                "is not a usable share: expected a whole percentage from 0 (slide on every request) to 100, such as 25",
            )
        });
        Self {
            budget,
            revoke_wait,
            slide_after_percent,
            cache_entries: if cache_on { cache_entries } else { 0 },
            cache_bytes: cache_mib << 20,
            ..Self::default()
        }
    }
}

/// Sessions in Redis, shared by every instance, over the instance's [`Link`]. See the module
/// docs for the layout; every call has the [`budget`](RedisSessionConfig::budget), and a down
/// or slow Redis is a 503 with `Retry-After` for the requests that use a session, never a hang
/// or a silent logout. Reconnection is the link's: a connection Redis closed is replaced in
/// the background before a request needs it, so the first request after Redis returns is
/// served.
///
/// # Session cache
///
/// Each store keeps recently read session records in memory (bounded by
/// [`cache_entries`](RedisSessionConfig::cache_entries) and
/// [`cache_bytes`](RedisSessionConfig::cache_bytes)), so a logged-in request usually needs
/// no Redis round trip, and Redis tells every instance when one changes: one RESP3 connection
/// per instance runs `CLIENT TRACKING on BCAST PREFIX <prefix>:{`, and every write of any
/// session key (a login, a changed value, an idle-expiry refresh, a logout, an expiry) pushes
/// an `invalidate` to every instance, which drops the entry.
/// - **A logout on another instance** takes effect at once: Redis writes the push to every
///   instance before it answers the logout's `DEL`, so the entry is gone one loopback hop
///   after the logout, before the client can send another request. The logout itself costs
///   what it did before.
/// - **An entry is used only while the tracking connection is up and has been since the entry
///   was loaded**, and while the link's shared connection is the one it was made alongside.
///   The tracking connection's end (a `CLIENT KILL`, a Redis restart, a failed `PING`: it is
///   pinged every second) empties the cache at once; a reconnection of the link (a restart, a
///   Sentinel failover) turns the cache off until tracking is made again on the new master,
///   then empties it. Meanwhile every read goes to Redis, as without the cache.
/// - **A read racing a change** (the value read, then changed, the push arriving before the
///   read's answer) is not cached: a miss marks the key before the read; a push removes the
///   mark; the answer is kept only if its mark is still there.
/// - **Idle expiry** is slid only once
///   [`slide_after_percent`](RedisSessionConfig::slide_after_percent) of it has passed (each
///   slide is a write that empties every instance's entry); an entry is fresh until the next
///   slide is due, then the next read goes to Redis. Absolute expiry and revocation are
///   unchanged.
/// - **Broadcast costs** one push of about 60 bytes per session write to every instance.
/// - **On a Redis Cluster the cache is off** (tracking is per node).
///
/// Turn it off with `WELCOMEDLY_SESSION_CACHE=off` (or `cache_entries = 0`); its counters are
/// [`cache_stats`](Self::cache_stats) and the `welcomedly.session.cache` metric.
#[derive(Clone)]
pub struct RedisSessionStore {
    inner: Arc<Inner>,
}

struct Inner {
    link: Link,
    prefix: String,
    budget: Duration,
    /// Zero on one node (no replica to wait for) or when turned off.
    revoke_wait: Duration,
    load: Script,
    update: Script,
    confirmed: AtomicU64,
    unconfirmed: AtomicU64,
    /// Of the idle timeout, in percent: see [`RedisSessionConfig::slide_after_percent`].
    slide_after_percent: u8,
    /// `None`: off (turned off, or a Redis Cluster).
    cache: Option<Arc<SessionCache>>,
    /// The cache's tracking task, ended with the store.
    tracker: Option<tokio::task::AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = &self.tracker {
            task.abort();
        }
    }
}

impl fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("prefix", &self.inner.prefix)
            .field("budget", &self.inner.budget)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl RedisSessionStore {
    /// A store over `link` (shared with the instance's other Redis components). Registers its
    /// scripts with the link, so every new connection has them before the first request.
    ///
    /// ```no_run
    /// use welcomedly_cluster::session::{RedisSessionConfig, RedisSessionStore};
    /// use welcomedly_redis::{Link, LinkConfig};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let link = Link::connect(LinkConfig::new("redis://127.0.0.1:6379/")).await?;
    /// let store = RedisSessionStore::new(&link, RedisSessionConfig::default()).await?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// A zero budget, or a [`slide_after_percent`](RedisSessionConfig::slide_after_percent)
    /// above 100.
    pub async fn new(link: &Link, config: RedisSessionConfig) -> Result<Self, Error> {
        if config.budget.is_zero() {
            return Err(Error::invalid(
                "the Redis session budget is zero: give Redis at least a few milliseconds (default 50 ms)",
            ));
        }
        if config.slide_after_percent > 100 {
            return Err(Error::invalid(
                "the session's slide_after_percent is above 100: give a share of the idle timeout from 0 to 100 (default 25)",
            ));
        }
        let load = Script::new(LOAD_SCRIPT);
        let update = Script::new(UPDATE);
        for script in [&load, &update] {
            // A failed load now only costs one NOSCRIPT round trip later.
            if let Err(e) = link.preload(script).await {
                tracing::debug!(error = %e, "the session scripts are loaded on first use");
            }
        }
        let replicated = matches!(
            link.config().topology,
            Topology::Sentinel { .. } | Topology::Cluster { .. }
        );
        let on_cluster = matches!(link.config().topology, Topology::Cluster { .. });
        let cache = (config.cache_entries > 0 && !on_cluster).then(|| {
            Arc::new(SessionCache::new(
                config.cache_entries,
                config.cache_bytes.max(1),
            ))
        });
        if on_cluster && config.cache_entries > 0 {
            tracing::info!(
                "the session cache is off on a Redis Cluster (client tracking is per node): every session read goes to Redis"
            );
        }
        let tracker = cache.as_ref().map(|cache| {
            tokio::spawn(cache::track(
                Arc::downgrade(cache),
                link.clone(),
                config.key_prefix.clone(),
            ))
            .abort_handle()
        });
        Ok(Self {
            inner: Arc::new(Inner {
                link: link.clone(),
                prefix: config.key_prefix,
                budget: config.budget,
                revoke_wait: if replicated {
                    config.revoke_wait
                } else {
                    Duration::ZERO
                },
                load,
                update,
                confirmed: AtomicU64::new(0),
                unconfirmed: AtomicU64::new(0),
                slide_after_percent: config.slide_after_percent,
                cache,
                tracker,
            }),
        })
    }

    /// Whether the store's link has a working connection (false while Redis is down).
    pub fn is_connected(&self) -> bool {
        self.inner.link.is_connected()
    }

    /// The link the store runs on (its state, counters and metrics).
    pub fn link(&self) -> &Link {
        &self.inner.link
    }

    /// Session deletions (logouts, log out everywhere, evictions) a replica acknowledged
    /// within [`revoke_wait`](RedisSessionConfig::revoke_wait), since the store was built.
    /// Always 0 on one node.
    pub fn confirmed_revocations(&self) -> u64 {
        self.inner.confirmed.load(Ordering::Relaxed)
    }

    /// Session deletions that succeeded on the master but that no replica acknowledged within
    /// [`revoke_wait`](RedisSessionConfig::revoke_wait) (or whose wait could not run): a
    /// failover right after them could bring the session back. A steady rise means a replica
    /// is down or lagging. Always 0 on one node.
    pub fn unconfirmed_revocations(&self) -> u64 {
        self.inner.unconfirmed.load(Ordering::Relaxed)
    }

    /// Registers `welcomedly.session.revocations` (observable counter, label `replica` =
    /// `acknowledged` / `unacknowledged`) and `welcomedly.session.cache` (label `event` = `hit`
    /// / `miss` / `invalidation` / `flush` / `eviction`, see [`cache_stats`](Self::cache_stats))
    /// reading the counters at each collection.
    /// The instrument holds the store weakly.
    pub fn register_metrics(&self, meter: &opentelemetry::metrics::Meter) {
        let weak = Arc::downgrade(&self.inner);
        let _revocations = meter
            .u64_observable_counter("welcomedly.session.revocations")
            .with_description(
                "Session deletions on a replicated Redis, by whether a replica acknowledged them in time",
            )
            .with_callback(move |o| {
                if let Some(inner) = weak.upgrade() {
                    for (replica, counter) in [
                        ("acknowledged", &inner.confirmed),
                        ("unacknowledged", &inner.unconfirmed),
                    ] {
                        o.observe(
                            counter.load(Ordering::Relaxed),
                            &[opentelemetry::KeyValue::new("replica", replica)],
                        );
                    }
                }
            })
            .build();
        let weak = Arc::downgrade(&self.inner);
        let _cache = meter
            .u64_observable_counter("welcomedly.session.cache")
            .with_description(
                "Session cache events, by event: hit, miss, invalidation (a push dropped an entry), flush (the tracking connection was lost or re-made), eviction",
            )
            .with_callback(move |o| {
                if let Some(cache) = weak.upgrade().and_then(|i| i.cache.clone()) {
                    let s = cache.stats();
                    for (event, v) in [
                        ("hit", s.hits),
                        ("miss", s.misses),
                        ("invalidation", s.invalidations),
                        ("flush", s.flushes),
                        ("eviction", s.evictions),
                    ] {
                        o.observe(v, &[opentelemetry::KeyValue::new("event", event)]);
                    }
                }
            })
            .build();
    }

    /// The Redis key of the session whose cookie carries `cookie_id` (its 32 hex digits),
    /// `None` when that is not a session id. For tests and operators: what other languages
    /// sharing the sessions compute too.
    pub fn key_of(&self, cookie_id: &str) -> Option<String> {
        SessionId::parse(cookie_id).map(|id| self.session_key(&id.digest()))
    }

    /// The Redis key of `user`'s session index.
    pub fn user_index_key(&self, user: &str) -> String {
        let d: [u8; 32] = Sha256::digest(user.as_bytes()).into();
        format!(
            "{}:u:{{{}}}",
            self.inner.prefix,
            hex(d.get(..16).unwrap_or(&d))
        )
    }

    fn session_key(&self, digest: &str) -> String {
        format!("{}:{{{digest}}}", self.inner.prefix)
    }

    fn unavailable(&self, what: &str, source: Option<welcomedly_redis::Error>) -> SessionError {
        let link = self.inner.link.config();
        let retry = link.min_outage.max(link.backoff.initial);
        SessionError::unavailable(
            format!(
                "the session store is unavailable ({what}): check that Redis runs and is reachable; the request can be retried"
            ),
            retry,
            source.map(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
        )
    }

    /// Runs `call` on the link within the store's budget; `retry` says whether running it
    /// twice is harmless.
    async fn run<T, F, Fut>(&self, what: &str, retry: Retry, call: F) -> Result<T, SessionError>
    where
        F: FnMut(welcomedly_redis::Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.inner
            .link
            .call_within(self.inner.budget, retry, call)
            .await
            .map_err(|e| {
                let what = if e.is_budget() {
                    format!(
                        "{what}: Redis answered slower than the {} ms budget",
                        self.inner.budget.as_millis()
                    )
                } else if e.is_not_connected() {
                    format!("{what}: Redis is not connected")
                } else {
                    what.to_owned()
                };
                self.unavailable(&what, Some(e))
            })
    }

    /// A script call within the store's budget.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        what: &str,
        retry: Retry,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, SessionError> {
        self.run(what, retry, |mut c| async move {
            invocation.invoke_async(&mut c).await
        })
        .await
    }

    /// A command within the store's budget.
    async fn query<T: redis::FromRedisValue>(
        &self,
        what: &str,
        retry: Retry,
        cmd: &redis::Cmd,
    ) -> Result<T, SessionError> {
        self.run(
            what,
            retry,
            |mut c| async move { cmd.query_async(&mut c).await },
        )
        .await
    }

    pub(crate) async fn load(
        &self,
        id: SessionId,
        idle: Duration,
    ) -> Result<Option<Record>, SessionError> {
        let key = self.session_key(&id.digest());
        let now = system_now_ms();
        let ticket = match &self.inner.cache {
            Some(cache) => {
                let generation = self.inner.link.connection_generation();
                if cache.has_fresh(&key, now, generation) {
                    // Before answering from memory, let the runtime poll its I/O driver once
                    // (a deferred yield): an invalidation push already on the tracking socket
                    // (Redis writes it before it answers the write that caused it) is applied
                    // before the lookup, so a request sent after a logout's answer never finds
                    // the session here.
                    tokio::task::yield_now().await;
                }
                match cache.get(&key, now, generation) {
                    Lookup::Hit(record) => return Ok(Some(record)),
                    Lookup::Miss(ticket) => ticket,
                }
            }
            None => None,
        };
        let idle_ms = millis(idle);
        let slide_ms = idle_ms * u64::from(self.inner.slide_after_percent) / 100;
        let mut invocation = self.inner.load.key(&key);
        invocation.arg(idle_ms).arg(now).arg(slide_ms);
        let fields: Option<Vec<String>> = self
            .invoke("loading a session", Retry::Once, &invocation)
            .await?;
        let loaded = fields.and_then(parse_record);
        if let Some(ticket) = ticket {
            let fresh = loaded.as_ref().map_or(0, |(record, pttl)| {
                // Without a time to live (an older script answered): not cached.
                pttl.map_or(0, |pttl| {
                    fresh_until(now, pttl, idle_ms, slide_ms, record.deadline_ms)
                })
            });
            ticket.fill(
                loaded.as_ref().map(|(r, _)| r).filter(|_| fresh > now),
                fresh,
            );
        }
        Ok(loaded.map(|(record, _)| record))
    }

    /// Drops `key` from this instance's cache after this instance wrote it: the push that
    /// drops it too may still be on its way, and this instance's next request must see its own
    /// write.
    fn forget(&self, key: &str) {
        if let Some(cache) = &self.inner.cache {
            cache.invalidate(key.as_bytes());
        }
    }

    /// The session cache's counters (all 0 when it is off: turned off, or a Redis Cluster).
    pub fn cache_stats(&self) -> SessionCacheStats {
        self.inner
            .cache
            .as_ref()
            .map(|c| c.stats())
            .unwrap_or_default()
    }

    /// Whether the session cache is on and usable now: its Redis tracking connection is up and
    /// reaches the node the link's connection reaches (reads of cached sessions are answered
    /// from memory only then).
    pub fn cache_is_tracking(&self) -> bool {
        self.inner
            .cache
            .as_ref()
            .is_some_and(|c| c.usable(self.inner.link.connection_generation()))
    }

    /// Whether the session is live, without sliding its idle expiry: one `HGET` of its
    /// deadline (the key itself is gone once the idle expiry passed).
    pub(crate) async fn is_live(&self, id: SessionId) -> Result<bool, SessionError> {
        let key = self.session_key(&id.digest());
        let deadline: Option<u64> = self
            .query(
                "checking that a session is still live",
                Retry::Once,
                redis::cmd("HGET").arg(key).arg(DEADLINE),
            )
            .await?;
        Ok(deadline.is_some_and(|d| d > system_now_ms()))
    }

    pub(crate) async fn update(
        &self,
        id: SessionId,
        set: &[(&str, &str)],
        remove: &[&str],
        idle: Duration,
    ) -> Result<bool, SessionError> {
        let key = self.session_key(&id.digest());
        let mut invocation = self.inner.update.key(&key);
        invocation
            .arg(millis(idle))
            .arg(system_now_ms())
            .arg(set.len());
        for (k, v) in set {
            invocation.arg(format!("{DATA}{k}")).arg(*v);
        }
        for k in remove {
            invocation.arg(format!("{DATA}{k}"));
        }
        let written: Result<i64, _> = self
            // Idempotent: the same fields set (or removed) twice.
            .invoke("writing a session", Retry::Once, &invocation)
            .await;
        // Dropped whatever the outcome: a failed call may have written.
        self.forget(&key);
        Ok(written? == 1)
    }

    /// Writes a new session in single-slot steps (each session key and each user index is a
    /// slot of its own on a Redis Cluster), ordered so that a failure or crash between them
    /// leaves nothing unsafe (see the module docs):
    ///
    /// 1. at once: the replaced session is ended (id cycling), removed from its user's index
    ///    when that user differs, and the new session's index entry is written (an entry for a
    ///    session that does not exist yet is harmless: "log out everywhere" deletes nothing);
    /// 2. the new session is written: only now is it usable;
    /// 3. the sessions the per-user bound evicted are ended, then unindexed.
    pub(crate) async fn create(&self, c: Create<'_>) -> Result<(), SessionError> {
        let now = system_now_ms();
        let digest = c.id.digest();
        let replaced_digest = c.replaces.map(|(old, _)| old.digest()).unwrap_or_default();

        // Step 1. Each call is idempotent: run twice, it leaves the same keys (the index score
        // only moves up by one).
        let end_replaced = async {
            let Some((_, old_user)) = c.replaces else {
                return Ok(());
            };
            let delete = redis::cmd("DEL")
                .arg(self.session_key(&replaced_digest))
                .clone();
            let unindex = old_user
                .filter(|old| Some(*old) != c.record.user.as_deref())
                .map(|old| {
                    redis::cmd("ZREM")
                        .arg(self.user_index_key(old))
                        .arg(&replaced_digest)
                        .clone()
                });
            let ended = async {
                let ended = self
                    .query::<()>("ending the replaced session", Retry::Once, &delete)
                    .await;
                self.forget(&self.session_key(&replaced_digest));
                ended
            };
            match &unindex {
                Some(cmd) => futures_util::future::try_join(
                    ended,
                    self.query::<()>("unindexing the replaced session", Retry::Once, cmd),
                )
                .await
                .map(|_| ()),
                None => ended.await,
            }
        };
        let index = async {
            let Some(user) = &c.record.user else {
                return Ok(Vec::new());
            };
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(INDEX)
                .arg(1)
                .arg(self.user_index_key(user))
                .arg(now)
                .arg(c.record.deadline_ms)
                .arg(&digest)
                .arg(c.max_per_user.max(1))
                .arg(&replaced_digest);
            self.query::<Vec<String>>("indexing a session by user", Retry::Once, &cmd)
                .await
        };
        let ((), evicted) = futures_util::future::try_join(end_replaced, index).await?;

        // Step 2: the session itself, one key.
        let mut create = redis::cmd("EVAL");
        create
            .arg(CREATE)
            .arg(1)
            .arg(self.session_key(&digest))
            .arg(millis(c.idle))
            .arg(now)
            .arg(c.record.deadline_ms)
            .arg(DEADLINE)
            .arg(c.record.deadline_ms);
        if let Some(user) = &c.record.user {
            create.arg(USER).arg(user.as_ref());
        }
        for (k, v) in &c.record.data {
            create.arg(format!("{DATA}{k}")).arg(v);
        }
        // Idempotent: the same hash written twice.
        self.query::<()>("creating a session", Retry::Once, &create)
            .await?;

        // Step 3. The cap's evictions (rare: a user past the bound): the sessions first, then
        // their index entries, so an evicted session stopped halfway is still found by "log
        // out everywhere".
        let Some(user) = c.record.user.as_deref().filter(|_| !evicted.is_empty()) else {
            return Ok(());
        };
        self.delete_sessions("ending sessions past the per-user bound", &evicted)
            .await?;
        self.query::<()>(
            "unindexing sessions past the per-user bound",
            Retry::Once,
            redis::cmd("ZREM")
                .arg(self.user_index_key(user))
                .arg(&evicted),
        )
        .await
    }

    /// Deletes the sessions of `digests`, one `DEL` per key (each is a slot of its own on a
    /// Redis Cluster), a bounded number in flight.
    async fn delete_sessions(&self, what: &str, digests: &[String]) -> Result<(), SessionError> {
        use futures_util::{StreamExt as _, TryStreamExt as _};
        // Owned commands: a closure over borrowed items is not general enough for a `Send`
        // future.
        let keys: Vec<String> = digests.iter().map(|d| self.session_key(d)).collect();
        futures_util::stream::iter(keys)
            .map(|key| async move { self.revoke(what, key).await })
            .buffer_unordered(DELETES_IN_FLIGHT)
            .try_collect::<()>()
            .await
    }

    /// Deletes the session at `key`; with replicas, waits for one to acknowledge it (see the
    /// module docs): a `DEL` and a `WAIT` pipelined on a dedicated connection to the key's
    /// node (tried twice when the first try surely deleted nothing: no connection, or a
    /// redirection after a failover), each try bounded by twice the budget plus the wait. When
    /// that path fails, the `DEL` is sent on the shared connection as without replicas, and
    /// the revocation is counted as unconfirmed.
    async fn revoke(&self, what: &str, key: String) -> Result<(), SessionError> {
        let revoked = self.revoke_at(what, &key).await;
        // This instance's next request must not find it cached (the push may still be on its
        // way); dropped whatever the outcome, as a failed call may have deleted it.
        self.forget(&key);
        revoked
    }

    async fn revoke_at(&self, what: &str, key: &str) -> Result<(), SessionError> {
        let wait = self.inner.revoke_wait;
        if wait.is_zero() {
            return self
                .query::<()>(what, Retry::Once, redis::cmd("DEL").arg(key))
                .await;
        }
        let link = &self.inner.link;
        let budget = self.inner.budget;
        // Boxed (and the dedicated call type-erased): logouts are rare, and the unboxed future
        // nests deep enough to overflow the compiler's layout recursion limit in the handlers
        // that await it.
        let confirm = Box::pin(async {
            // Twice when the first try cannot have deleted anything on the key's master: no
            // connection to the node the cached slot map names, or a redirection (the slot map
            // is from before a failover; the answer makes the link look again). Any other
            // failure may have come after the `DEL`: a second `DEL` that deletes nothing is
            // not replicated, so its `WAIT` would prove nothing; the caller falls back.
            let mut tries = 0;
            loop {
                tries += 1;
                match futures_util::FutureExt::boxed(confirm_once(link, key, wait)).await {
                    Ok(acks) => return Ok(acks),
                    Err((true, _)) if tries < 2 => {}
                    Err((_, e)) => return Err(e),
                }
            }
        });
        // Each try: the checkout and the `DEL` within the budget, the `WAIT` within its own
        // bound.
        let bound = (budget * 2 + wait) * 2;
        let outcome = tokio::time::timeout(bound, confirm)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", bound.as_millis())));
        match outcome {
            Ok(acks) if acks > 0 => {
                self.inner.confirmed.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Ok(_) => tracing::warn!(
                wait_ms = millis(wait),
                "a session was deleted but no Redis replica acknowledged it in time: a failover now could bring it back (check the replicas' health and lag)"
            ),
            Err(e) => {
                tracing::warn!(
                    error = %welcomedly_core::redact::redact_url(&e),
                    "deleting a session on a dedicated connection failed: deleting it on the shared connection, without waiting for a replica"
                );
                self.query::<()>(what, Retry::Once, redis::cmd("DEL").arg(key))
                    .await?;
            }
        }
        self.inner.unconfirmed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Ends one session, then drops its index entry (two slots, two calls at once; an index
    /// entry left behind by a failure is harmless and expires with the index).
    pub(crate) async fn delete(
        &self,
        id: SessionId,
        user: Option<&str>,
    ) -> Result<(), SessionError> {
        let digest = id.digest();
        let ended = self.revoke("ending a session", self.session_key(&digest));
        match user {
            Some(user) => {
                let unindex = redis::cmd("ZREM")
                    .arg(self.user_index_key(user))
                    .arg(&digest)
                    .clone();
                futures_util::future::try_join(
                    ended,
                    self.query::<()>("unindexing a session", Retry::Once, &unindex),
                )
                .await
                .map(|_| ())
            }
            None => ended.await,
        }
    }

    /// Log out everywhere: reads the user's index, ends every session it lists (one call per
    /// session, each its own slot), and only then removes those entries — the ones read, not
    /// the whole index, so a login that indexed itself meanwhile stays findable by the next
    /// "log out everywhere". A failure leaves the index as it was, so a retry ends the rest.
    pub(crate) async fn delete_user(&self, user: &str) -> Result<u64, SessionError> {
        let index = self.user_index_key(user);
        let digests: Vec<String> = self
            .query(
                "reading a user's sessions",
                Retry::Once,
                redis::cmd("ZRANGE").arg(&index).arg(0).arg(-1),
            )
            .await?;
        if digests.is_empty() {
            return Ok(0);
        }
        self.delete_sessions("ending a user's sessions", &digests)
            .await?;
        self.query::<()>(
            "removing a user's ended sessions from the index",
            Retry::Once,
            redis::cmd("ZREM").arg(&index).arg(&digests),
        )
        .await?;
        Ok(digests.len() as u64)
    }
}

/// One `DEL` of `key` and `WAIT 1 <wait>` on a dedicated connection to the key's node: the
/// replicas that acknowledged. An error says whether the `DEL` surely did not run (no
/// connection, a redirection: worth a second try) and what went wrong.
async fn confirm_once(link: &Link, key: &str, wait: Duration) -> Result<u64, (bool, String)> {
    let mut conn = link
        .dedicated_for(key.as_bytes())
        .await
        .map_err(|e| (true, e.to_string()))?;
    // Through the `Dedicated` (not the connection under it), so a redirection makes the link
    // fetch the slot map again before the next try.
    let (acks,): (u64,) = redis::pipe()
        .cmd("DEL")
        .arg(key)
        .ignore()
        .cmd("WAIT")
        .arg(1)
        .arg(millis(wait))
        .query_async(&mut conn)
        .await
        .map_err(|e| {
            use redis::{ErrorKind, ServerErrorKind};
            let redirected = matches!(
                e.kind(),
                ErrorKind::Server(
                    ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::TryAgain
                )
            );
            (redirected, e.to_string())
        })?;
    Ok(acks)
}

/// A hash's fields and values into a record, with the time to live the load script appends;
/// `None` without a deadline (not a session).
fn parse_record(fields: Vec<String>) -> Option<(Record, Option<u64>)> {
    let mut record = Record::default();
    let mut deadline = None;
    let mut ttl = None;
    let mut it = fields.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let Some(key) = k.strip_prefix(DATA) {
            record.data.insert(key.to_owned(), v);
        } else if k == DEADLINE {
            deadline = v.parse::<u64>().ok();
        } else if k == USER {
            record.user = Some(Arc::from(v));
        } else if k == TTL {
            ttl = v.parse::<u64>().ok();
        }
    }
    record.deadline_ms = deadline?;
    Some((record, ttl))
}

/// `Degraded` while Redis is unreachable (logged-in requests get 503; anonymous ones are
/// served, and every instance shares the same Redis, so failing readiness would take the whole
/// cluster out): register it with `Affects::Nothing`.
impl HealthCheck for RedisSessionStore {
    fn check(&self) -> CheckFuture<'_> {
        let outcome = if self.is_connected() {
            CheckOutcome::Healthy
        } else {
            CheckOutcome::degraded(
                "Redis is unreachable: requests that use a session get 503 until it answers",
            )
        };
        Box::pin(std::future::ready(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_from_hash_fields() {
        let (r, ttl) = parse_record(
            [
                "m:x", "42", "m:u", "alice", "d:cart", "[1,2]", "junk", "x", "m:t", "900",
            ]
            .map(str::to_owned)
            .to_vec(),
        )
        .unwrap();
        assert_eq!(ttl, Some(900));
        assert_eq!(r.deadline_ms, 42);
        assert_eq!(r.user.as_deref(), Some("alice"));
        assert_eq!(r.data["cart"], "[1,2]");
        assert_eq!(r.data.len(), 1);
        assert!(parse_record(vec!["d:a".to_owned(), "1".to_owned()]).is_none());
    }

    #[test]
    fn settings_from_the_environment() {
        let read = |vars: &[(&str, &str)]| {
            let mut env = EnvReader::from_pairs(vars);
            let config = RedisSessionConfig::read(&mut env);
            env.finish(config)
        };
        assert_eq!(read(&[]).unwrap().budget, Duration::from_millis(50));
        let c = read(&[("WELCOMEDLY_SESSION_BUDGET_MS", "80")]).unwrap();
        assert_eq!(c.budget, Duration::from_millis(80));
        let e = read(&[("WELCOMEDLY_SESSION_BUDGET_MS", "0")]).unwrap_err();
        assert_eq!(e.invalid_variables().len(), 1);
        assert_eq!(read(&[]).unwrap().revoke_wait, Duration::from_millis(100));
        let c = read(&[("WELCOMEDLY_SESSION_REVOKE_WAIT_MS", "0")]).unwrap();
        assert!(c.revoke_wait.is_zero());
        let e = read(&[("WELCOMEDLY_SESSION_REVOKE_WAIT_MS", "soon")]).unwrap_err();
        assert_eq!(e.invalid_variables().len(), 1);
    }
}
