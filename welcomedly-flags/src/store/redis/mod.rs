//! [`RedisStore`]: the flag set of every instance in one Redis.
//!
//! Keys (default prefix `wd:flags`, one hash tag so the write script runs on a Redis Cluster
//! too): `{wd:flags}:doc` (the document), `{wd:flags}:version` (the counter),
//! `{wd:flags}:history` (a list, newest first, capped in entries and in bytes),
//! `{wd:flags}:history_bytes` (its size) and the pub/sub channel `{wd:flags}:changes`. A write
//! is one Lua script: compare the version, `SET` the document, bump the version, `LPUSH` the
//! history entry and drop the oldest over the caps, `PUBLISH` the new version.
//!
//! ```no_run
//! use std::sync::Arc;
//! use welcomedly_flags::store::{FlagSync, RedisStoreConfig, SyncConfig};
//!
//! # async fn run() -> Result<(), welcomedly_flags::store::StoreError> {
//! let store = RedisStoreConfig::new("redis://127.0.0.1:6379/").build().await?;
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
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, RedisError, RedisResult, Script, ServerErrorKind};
use tokio::sync::{Notify, watch};
use welcomedly_core::health::{CheckFuture, CheckOutcome, HealthCheck};
use welcomedly_core::redact::redact_url;

use super::backoff::Backoff;
use super::{
    Change, DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_CAP, Document, FlagStore, MAX_CHANGE_BYTES,
    Notice, StoreError,
};

mod script;
mod subscriber;

pub use script::RedisKeys;

/// Settings of the Redis flag store, plain data with documented defaults.
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisStoreConfig {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/`. No default. Shown with its password redacted
    /// in errors, logs and `Debug`.
    pub url: String,
    /// Prefix of every key, made the hash tag (see [`RedisKeys::new`]). Default `"wd:flags"`.
    pub key_prefix: String,
    /// The longest any one Redis call (a load, a write, a version check, a ping, a connect)
    /// may take before it fails. Default 500 ms, which is also redis-rs's response timeout.
    pub budget: Duration,
    /// How often the current version is read to catch an announcement lost on the way
    /// (pub/sub delivers at most once): the bound on staleness while Redis works. Default 30 s.
    pub poll_interval: Duration,
    /// How often the subscription connection is pinged, so a silently dead connection is
    /// replaced. Default 10 s.
    pub ping_interval: Duration,
    /// Failures or timeouts in a row on a connection before it is dropped and replaced (at
    /// once on `READONLY`, `LOADING`, `MASTERDOWN`: a failover needs a new connection).
    /// Default 3.
    pub failure_threshold: u32,
    /// The least time between dropping a connection and the first reconnect attempt, so a
    /// flapping Redis is not hammered. Default 250 ms.
    pub min_reconnect_pause: Duration,
    /// First delay between reconnect attempts; doubles per failed attempt up to
    /// [`max_reconnect_interval`](Self::max_reconnect_interval), jittered to 50–100 % so
    /// instances do not reconnect in lockstep. Default 100 ms.
    pub reconnect_interval: Duration,
    /// Upper bound of the reconnect delay. Default 5 s.
    pub max_reconnect_interval: Duration,
    /// History entries kept (older ones are trimmed by the write script). Default 1000.
    pub history_cap: usize,
    /// The most bytes the history's entries take together, as JSON (older ones are trimmed by
    /// the write script; the newest always stays, and an entry over
    /// [`MAX_CHANGE_BYTES`](super::MAX_CHANGE_BYTES) is stored with its diff digested). At
    /// least `MAX_CHANGE_BYTES`. Default [`DEFAULT_HISTORY_BYTES`](super::DEFAULT_HISTORY_BYTES), 1 MiB.
    pub history_bytes: usize,
    /// Connections the pool may open (the store uses one multiplexed connection for its
    /// commands; the subscription has its own, outside the pool). Default 2.
    pub pool_size: usize,
}

impl fmt::Debug for RedisStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreConfig")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("budget", &self.budget)
            .field("poll_interval", &self.poll_interval)
            .field("ping_interval", &self.ping_interval)
            .field("failure_threshold", &self.failure_threshold)
            .field("min_reconnect_pause", &self.min_reconnect_pause)
            .field("reconnect_interval", &self.reconnect_interval)
            .field("max_reconnect_interval", &self.max_reconnect_interval)
            .field("history_cap", &self.history_cap)
            .field("history_bytes", &self.history_bytes)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl RedisStoreConfig {
    /// Settings for the Redis at `url`, defaults elsewhere.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: "wd:flags".to_owned(),
            budget: Duration::from_millis(500),
            poll_interval: Duration::from_secs(30),
            ping_interval: Duration::from_secs(10),
            failure_threshold: 3,
            min_reconnect_pause: Duration::from_millis(250),
            reconnect_interval: Duration::from_millis(100),
            max_reconnect_interval: Duration::from_secs(5),
            history_cap: DEFAULT_HISTORY_CAP,
            history_bytes: DEFAULT_HISTORY_BYTES,
            pool_size: 2,
        }
    }

    /// Builds the store and tries a first connection and subscription. An unreachable Redis
    /// is not an error: the store connects in the background (its calls fail with
    /// [`StoreError::is_unavailable`] meanwhile), and [`FlagSync::start`](super::FlagSync::start)
    /// decides how long to wait. Must run inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`StoreError::is_config`]: a URL that is not a Redis URL, a zero budget, interval or
    /// cap, or no tokio runtime.
    pub async fn build(self) -> Result<RedisStore, StoreError> {
        let mut cfg = deadpool_redis::Config::from_url(self.url.clone());
        cfg.pool = Some(deadpool_redis::PoolConfig::new(self.pool_size.max(1)));
        let pool = cfg
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .map_err(|e| bad_url(&self.url, e))?;
        RedisStore::from_pool(pool, self).await
    }
}

fn bad_url(url: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::config_because(
        format!(
            "cannot use Redis URL {:?} for the flag store: expected redis://[user:password@]host[:port][/db]",
            redact_url(url)
        ),
        // The cause may quote the URL: keep only its redacted text.
        redact_url(&e.to_string()).into_owned(),
    )
}

/// The flag store of many instances: one Redis (or one Redis Cluster slot) holds the document,
/// its version and the history; every write is announced over pub/sub.
///
/// - **Keys** (default prefix `wd:flags`, one hash tag so the write script runs on a Redis
///   Cluster too): `{wd:flags}:doc` (the document), `{wd:flags}:version` (the counter),
///   `{wd:flags}:history` (a list, newest first), `{wd:flags}:history_bytes` (its size) and the
///   channel `{wd:flags}:changes` (see [`RedisKeys`]).
/// - **A write** is one Lua script: compare the version, `SET` the document, bump the version,
///   `LPUSH` the history entry and drop the oldest beyond
///   [`history_cap`](RedisStoreConfig::history_cap) entries or
///   [`history_bytes`](RedisStoreConfig::history_bytes), `PUBLISH` the new version.
/// - **Connections**: one multiplexed connection for commands (from the pool, taken once, not
///   checked out per call: deadpool-redis pings on every checkout), and one dedicated pub/sub
///   connection. Each has exactly one owner task that replaces it: the command connection's
///   supervisor and the subscriber. A connection is dropped after
///   [`failure_threshold`](RedisStoreConfig::failure_threshold) failures in a row, and only if
///   it is still the one that failed (a late timeout never drops its replacement); then the
///   owner reconnects with exponential backoff and jitter.
/// - **Announcements** ([`FlagStore::changes`]): each published version; a new
///   [`Notice::epoch`] on every (re)subscription, every lost subscription and every failed
///   version check; and the version read every
///   [`poll_interval`](RedisStoreConfig::poll_interval) when it differs from the last one
///   announced (a lost message).
/// - **Time**: every call is bounded by [`budget`](RedisStoreConfig::budget).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

/// The command connection, with the generation it was made in.
struct Hot {
    conn: MultiplexedConnection,
    generation: u64,
}

struct Inner {
    pool: deadpool_redis::Pool,
    client: redis::Client,
    name: String,
    keys: RedisKeys,
    write: Script,
    hot: ArcSwapOption<Hot>,
    budget: Duration,
    poll_interval: Duration,
    ping_interval: Duration,
    failure_threshold: u32,
    min_reconnect_pause: Duration,
    reconnect_interval: Duration,
    max_reconnect_interval: Duration,
    history_cap: usize,
    history_bytes: usize,
    notices: watch::Sender<Notice>,
    subscribed: AtomicBool,
    /// Failures in a row on the current command connection.
    consecutive: AtomicU32,
    failures: AtomicU64,
    reconnects: AtomicU64,
    generations: AtomicU64,
    /// Wakes the supervisor when the command connection was dropped.
    wake: Arc<Notify>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().unwrap_or_else(PoisonError::into_inner) {
            task.abort();
        }
    }
}

/// What a failed Redis call says about its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Gone or slow (I/O error, timeout): counts towards the threshold.
    Transport,
    /// Reaches a Redis that cannot serve it (a replica after a failover, still loading):
    /// replace it now.
    Replace,
    /// Redis answered with an error a new connection would not fix (`WRONGTYPE`, `OOM`, a
    /// script error): the call fails, the connection stays.
    Server,
}

fn classify(e: &RedisError) -> Failure {
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::ReadOnly
            | ServerErrorKind::BusyLoading
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::TryAgain,
        )
        | ErrorKind::AuthenticationFailed => Failure::Replace,
        ErrorKind::Server(_)
        | ErrorKind::Extension
        | ErrorKind::Parse
        | ErrorKind::UnexpectedReturnType => Failure::Server,
        _ => Failure::Transport,
    }
}

impl RedisStore {
    /// A store over an existing deadpool-redis pool (shared with sessions, the event bus, the
    /// rate limiter). `config.url` must point at the same Redis: the subscription connection
    /// is opened from it, outside the pool.
    ///
    /// # Errors
    ///
    /// See [`RedisStoreConfig::build`].
    pub async fn from_pool(
        pool: deadpool_redis::Pool,
        config: RedisStoreConfig,
    ) -> Result<Self, StoreError> {
        for (what, d) in [
            ("budget", config.budget),
            ("poll interval", config.poll_interval),
            ("ping interval", config.ping_interval),
            ("reconnect interval", config.reconnect_interval),
        ] {
            if d.is_zero() {
                return Err(StoreError::config(format!(
                    "the Redis flag store's {what} is zero: use at least a few milliseconds (see RedisStoreConfig for the defaults)"
                )));
            }
        }
        if config.history_cap == 0 {
            return Err(StoreError::config(
                "the Redis flag store's history cap is zero: keep at least one entry (default 1000)",
            ));
        }
        if config.history_bytes < MAX_CHANGE_BYTES {
            return Err(StoreError::config(format!(
                "the Redis flag store's history byte budget is {} bytes, below one entry's limit of {MAX_CHANGE_BYTES}: raise it (default {DEFAULT_HISTORY_BYTES})",
                config.history_bytes
            )));
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(StoreError::config(
                "RedisStore must be built inside a tokio runtime (it reconnects and subscribes in the background)",
            ));
        };
        let client =
            redis::Client::open(config.url.as_str()).map_err(|e| bad_url(&config.url, e))?;
        let inner = Arc::new(Inner {
            pool,
            client,
            name: format!("Redis at {}", redact_url(&config.url)),
            keys: RedisKeys::new(&config.key_prefix),
            write: Script::new(script::WRITE),
            hot: ArcSwapOption::empty(),
            budget: config.budget,
            poll_interval: config.poll_interval,
            ping_interval: config.ping_interval,
            failure_threshold: config.failure_threshold.max(1),
            min_reconnect_pause: config.min_reconnect_pause,
            reconnect_interval: config.reconnect_interval,
            max_reconnect_interval: config.max_reconnect_interval.max(config.reconnect_interval),
            history_cap: config.history_cap,
            history_bytes: config.history_bytes,
            notices: watch::Sender::new(Notice::default()),
            subscribed: AtomicBool::new(false),
            consecutive: AtomicU32::new(0),
            failures: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            generations: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
            tasks: Mutex::new(Vec::new()),
        });
        let connected = match inner.connect().await {
            Ok(conn) => {
                inner.install(conn);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the flag store's Redis is unreachable: connecting in the background");
                false
            }
        };
        let first_subscription = match subscriber::open(&inner).await {
            Ok(pubsub) => {
                inner.subscribed.store(true, Ordering::Release);
                Some(pubsub)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the flag store cannot subscribe yet: retrying in the background");
                None
            }
        };
        let supervisor = runtime.spawn(supervise(
            Arc::downgrade(&inner),
            inner.wake.clone(),
            connected,
        ));
        let subscriber = runtime.spawn(subscriber::run(Arc::downgrade(&inner), first_subscription));
        inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend([supervisor.abort_handle(), subscriber.abort_handle()]);
        Ok(Self { inner })
    }

    /// The names of the store's keys and channel.
    pub fn keys(&self) -> &RedisKeys {
        &self.inner.keys
    }

    /// Whether the command connection is up.
    pub fn is_connected(&self) -> bool {
        self.inner.hot.load().is_some()
    }

    /// Whether the subscription is up (announcements arrive by push, not only by polling).
    pub fn is_subscribed(&self) -> bool {
        self.inner.subscribed.load(Ordering::Acquire)
    }

    /// Redis calls that failed or took longer than the budget since start (a counter).
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// Connections (command and subscription) made again after one was lost (a counter).
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// A new command connection, within the budget.
    async fn connect(&self) -> Result<MultiplexedConnection, StoreError> {
        match tokio::time::timeout(self.budget, self.pool.get()).await {
            Ok(Ok(conn)) => Ok(deadpool_redis::Connection::take(conn)),
            Ok(Err(e)) => Err(StoreError::unavailable_because(
                format!(
                    "cannot connect to {}: check that it runs and is reachable",
                    self.name
                ),
                redact_url(&e.to_string()).into_owned(),
            )),
            Err(_) => Err(StoreError::unavailable(format!(
                "connecting to {} took longer than the {} ms budget",
                self.name,
                self.budget.as_millis()
            ))),
        }
    }

    fn install(&self, conn: MultiplexedConnection) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        self.consecutive.store(0, Ordering::Relaxed);
        self.hot.store(Some(Arc::new(Hot { conn, generation })));
    }

    /// Runs one command on the command connection within the budget; counts failures and drops
    /// the connection per [`Failure`] and the threshold — only if it is still that connection.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Some(hot) = self.hot.load_full() else {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::unavailable(format!(
                "the flag {what} failed: {} is not connected (reconnecting in the background); check that it runs and is reachable",
                self.name
            )));
        };
        let (failure, error) = match tokio::time::timeout(self.budget, f(hot.conn.clone())).await {
            Ok(Ok(v)) => {
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
                return Ok(v);
            }
            Ok(Err(e)) => {
                let failure = classify(&e);
                let message = match failure {
                    Failure::Server => format!(
                        "{} refused the flag {what}: check that nothing else writes under the {} keys",
                        self.name, self.keys.doc
                    ),
                    _ => format!(
                        "the flag {what} on {} failed: check that it runs and is reachable",
                        self.name
                    ),
                };
                let cause = redact_url(&e.to_string()).into_owned();
                let error = if failure == Failure::Server
                    && (cause.contains("WRONGTYPE") || cause.contains("WDFLAGS"))
                {
                    StoreError::corrupt(format!("{message} ({cause})"))
                } else {
                    StoreError::unavailable_because(message, cause)
                };
                (failure, error)
            }
            Err(_) => (
                Failure::Transport,
                StoreError::unavailable(format!(
                    "the flag {what} on {} took longer than the {} ms budget",
                    self.name,
                    self.budget.as_millis()
                )),
            ),
        };
        self.failed(&hot, failure, &error);
        Err(error)
    }

    fn failed(&self, hot: &Arc<Hot>, failure: Failure, error: &StoreError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let drop_it = match failure {
            Failure::Server => false,
            Failure::Replace => true,
            Failure::Transport => {
                let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                n >= self.failure_threshold
            }
        };
        if !drop_it {
            return;
        }
        let current = self.hot.compare_and_swap(hot, None::<Arc<Hot>>);
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, hot)) {
            tracing::warn!(error = %error, generation = hot.generation, "the flag store's Redis connection failed: reconnecting");
            self.wake.notify_one();
        }
    }

    async fn read_version(&self) -> Result<u64, StoreError> {
        let key = self.keys.version.clone();
        let raw: Option<String> = self
            .call("version check", |mut c| async move {
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await?;
        self.parse_version(raw.as_deref())
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
}

/// The one task that replaces the command connection: waits until it is dropped, pauses, then
/// reconnects with exponential backoff and jitter. Being the only reconnector it cannot race
/// another. Holds the store weakly, so dropping the store ends it.
async fn supervise(inner: Weak<Inner>, wake: Arc<Notify>, mut connected: bool) {
    loop {
        if connected {
            // `notify_one` leaves a permit when nobody waits: a drop is never missed.
            wake.notified().await;
            let Some(strong) = inner.upgrade() else {
                return;
            };
            if strong.hot.load().is_some() {
                // A stale wake-up: the connection is there.
                continue;
            }
            let pause = strong.min_reconnect_pause;
            drop(strong);
            tokio::time::sleep(pause).await;
        }
        let mut backoff = match inner.upgrade() {
            Some(s) => Backoff::new(s.reconnect_interval, s.max_reconnect_interval),
            None => return,
        };
        let mut attempts = 0u32;
        loop {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            match strong.connect().await {
                Ok(conn) => {
                    strong.install(conn);
                    strong.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        generation = strong.generations.load(Ordering::Relaxed),
                        attempts,
                        "the flag store's Redis connection is back"
                    );
                    break;
                }
                Err(e) => {
                    attempts += 1;
                    // Every attempt at debug, every tenth at warn: a long outage stays visible
                    // without flooding the log.
                    if attempts.is_multiple_of(10) {
                        tracing::warn!(error = %e, attempts, "the flag store's Redis is still unreachable");
                    } else {
                        tracing::debug!(error = %e, attempts, "the flag store's Redis is still unreachable");
                    }
                }
            }
            drop(strong);
            tokio::time::sleep(backoff.next_delay()).await;
        }
        connected = true;
    }
}

impl FlagStore for RedisStore {
    fn load(&self) -> BoxFuture<'_, Result<Document, StoreError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let (version_key, doc_key) = (inner.keys.version.clone(), inner.keys.doc.clone());
            // One MGET: the version and the document it belongs to, read atomically.
            let (version, body): (Option<String>, Option<String>) = inner
                .call("load", |mut c| async move {
                    redis::cmd("MGET")
                        .arg(&version_key)
                        .arg(&doc_key)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let version = inner.parse_version(version.as_deref())?;
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
        mut change: Change,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let entry = change.fit();
            let (ok, version): (i64, u64) = inner
                .call("write", |mut c| async move {
                    let mut invocation = inner.write.prepare_invoke();
                    invocation
                        .key(&inner.keys.doc)
                        .key(&inner.keys.version)
                        .key(&inner.keys.history)
                        .key(&inner.keys.history_bytes)
                        .arg(expected)
                        .arg(&body)
                        .arg(&entry)
                        .arg(inner.history_cap)
                        .arg(&inner.keys.channel)
                        .arg(inner.history_bytes);
                    invocation.invoke_async(&mut c).await
                })
                .await?;
            if ok == 1 {
                Ok(version)
            } else {
                Err(StoreError::conflict(expected, version))
            }
        })
    }

    fn history(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Change>, StoreError>> {
        Box::pin(async move {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let inner = &self.inner;
            let key = inner.keys.history.clone();
            let stop = i64::try_from(limit).unwrap_or(i64::MAX) - 1;
            let raw: Vec<String> = inner
                .call("history read", |mut c| async move {
                    redis::cmd("LRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(stop)
                        .query_async(&mut c)
                        .await
                })
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

/// `Degraded` while the command connection or the subscription is down (flags still serve from
/// the last snapshot), `Healthy` otherwise. The [`FlagSync`](super::FlagSync) health check says
/// how stale the snapshot is; this one says why.
impl HealthCheck for RedisStore {
    fn check(&self) -> CheckFuture<'_> {
        let outcome = match (self.is_connected(), self.is_subscribed()) {
            (true, true) => CheckOutcome::Healthy,
            (false, _) => CheckOutcome::degraded(format!(
                "{} is unreachable: flag reads and writes fail, flags serve from the last snapshot (reconnecting with backoff up to {} ms)",
                self.inner.name,
                self.inner.max_reconnect_interval.as_millis()
            )),
            (true, false) => CheckOutcome::degraded(format!(
                "the flag store's subscription to {} is down: changes arrive by polling only, every {} s (resubscribing)",
                self.inner.name,
                self.inner.poll_interval.as_secs()
            )),
        };
        Box::pin(std::future::ready(outcome))
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

    #[test]
    fn the_config_debug_hides_the_password() {
        let text = format!(
            "{:?}",
            RedisStoreConfig::new("redis://:hunter2@cache:6379/0")
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn a_bad_url_is_reported_without_its_password() {
        let e = RedisStoreConfig::new("redis://:hunter2@cache:notaport/")
            .build()
            .await
            .unwrap_err();
        let text = format!("{e} {:?}", std::error::Error::source(&e));
        assert!(e.is_config());
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("redis://:***@cache:notaport/"), "{text}");
    }

    #[test]
    fn failovers_replace_the_connection_and_script_errors_do_not() {
        let readonly = RedisError::from((ErrorKind::Server(ServerErrorKind::ReadOnly), "ro"));
        assert_eq!(classify(&readonly), Failure::Replace);
        let script =
            RedisError::from((ErrorKind::Server(ServerErrorKind::ResponseError), "WDFLAGS"));
        assert_eq!(classify(&script), Failure::Server);
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(classify(&io), Failure::Transport);
    }
}
