//! [`Link`]: one supervised multiplexed connection shared by every component of an instance.
//!
//! ```no_run
//! use welcomedly_redis::{Link, LinkConfig, Retry};
//!
//! # async fn run() -> Result<(), welcomedly_redis::Error> {
//! let link = Link::connect(LinkConfig::new("redis://127.0.0.1:6379/")).await?;
//! let n: i64 = link.query(redis::cmd("INCR").arg("hits"), Retry::Never).await?;
//! let v: Option<String> = link.query(redis::cmd("GET").arg("greeting"), Retry::Once).await?;
//! # let _ = (n, v);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::{Cmd, FromRedisValue, Pipeline, RedisResult, Script, ScriptInvocation};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use welcomedly_core::health::{CheckFuture, CheckOutcome, HealthCheck};
use welcomedly_core::redact::redact_url;

use crate::classify::{Failure, classify};
use crate::config::LinkConfig;

mod cluster;
mod conn;
mod dedicated;
mod follow;
mod push;
pub(crate) mod shards;
mod supervisor;
mod target;

pub use self::conn::Conn;
pub(crate) use self::conn::Scripts;
pub use self::dedicated::Dedicated;
pub use self::push::PushConnection;
use self::supervisor::supervise;
pub(crate) use self::target::Target;
// For `crate::sentinel` (a master's address with the configured credentials).
pub(crate) use self::target::info_at;
use crate::error::Error;
use crate::subscriber::Subscriber;

/// Whether a call may be run a second time on a new connection after a transport error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retry {
    /// Never run twice (an `INCR`, a non-idempotent script): a transport error fails the call.
    Never,
    /// Safe to run twice (reads, idempotent scripts): after a transport error the call is run
    /// once more on the replacement connection, within the same budget.
    Once,
}

/// The link's state, as its health check and metrics report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkState {
    /// A connection is up.
    Connected,
    /// The connection was dropped for failures: waiting [`LinkConfig::min_outage`] before
    /// reconnecting.
    HoldingOff,
    /// Reconnecting.
    Connecting,
}

const CONNECTED: u8 = 0;
const HOLDING_OFF: u8 = 1;
const CONNECTING: u8 = 2;

/// Counters of a link since it was built (see [`Link::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkStats {
    /// Connections made (1 after a clean start; each reconnect adds one).
    pub connections: u64,
    /// Connection attempts that failed.
    pub failed_attempts: u64,
    /// Connections Redis closed, noticed by the reader task ending.
    pub closed: u64,
    /// Failed calls classified [`Failure::Transport`] (calls past the budget included).
    pub transport_failures: u64,
    /// Failed calls classified [`Failure::Replace`].
    pub replace_failures: u64,
    /// Failed calls classified [`Failure::Server`].
    pub server_failures: u64,
    /// Calls that ran past their budget.
    pub budget_overruns: u64,
    /// Calls run a second time on a new connection ([`Retry::Once`]).
    pub retries: u64,
    /// Calls answered "not connected" without being sent.
    pub not_connected: u64,
    /// Calls in flight now.
    pub in_flight: u64,
    /// On Sentinel: connections dropped because the Sentinels announced a new master on
    /// another node (each replaced at once).
    pub master_switches: u64,
}

/// One supervised multiplexed Redis connection, shared by every component of an instance.
/// A cheap handle: clone it freely; the supervisor ends when the last clone is dropped.
///
/// # How it behaves
///
/// - **Budget**: every call ends within its budget (the link's, or the one passed to
///   [`Link::call_within`]), a retry included.
/// - **Threshold**: a transport failure or a call past the budget during which Redis answered
///   nothing on the connection counts (a call that was only slow while others were answered
///   does not: under load that would drop a working connection); the connection is
///   dropped after [`failure_threshold`](LinkConfig::failure_threshold) in a row spanning at
///   least one budget (a burst timing out at one instant is one event), at once on a
///   [`Failure::Replace`] error. Server errors keep it. Only the connection that failed is
///   dropped (generation check): a late failure on an old connection never drops its
///   replacement.
/// - **Closed connections are noticed when they close**: the link owns the socket's reader
///   task; when Redis closes the connection (`CLIENT KILL`, restart, crash) the task ends, the
///   connection is dropped and one background task reconnects at once, before any request
///   needs it.
/// - **Reconnect**: one supervisor task per link: after a drop for failures it waits
///   [`min_outage`](LinkConfig::min_outage), then tries with [`backoff`](LinkConfig::backoff)
///   (exponential, jittered). A caller that finds no connection asks for an attempt and waits
///   for its outcome within its budget; attempts stay single-flight and at most one per
///   [`demand_interval`](LinkConfig::demand_interval), so a crowd of callers causes one
///   reconnect, not one each.
/// - **Retry**: a call marked [`Retry::Once`] that fails with a transport error is run once
///   more on the replacement connection, within the same budget.
/// - **Scripts**: [`Link::preload`] loads a script on every new connection before it is used,
///   and `EVALSHA` falls back to loading it on `NOSCRIPT`.
///
/// # On Sentinel
///
/// Every connection attempt asks the Sentinels where the master is (the one that answered
/// last first, each within a share of [`connect_timeout`](LinkConfig::connect_timeout)) and
/// uses the node only if `ROLE` says `master` (a Sentinel's view may be stale). One pub/sub
/// connection per link to a Sentinel follows `+switch-master` (its own reconnect loop: pings,
/// threshold, backoff with jitter, the next Sentinel after a failure): when a new master is
/// announced, a connection to any other node is dropped and replaced at once (no hold-off, a
/// reconnect delay under way cut short) and the [`Subscriber`] moves too; dedicated
/// connections made before are not handed out again. A `READONLY` answer (a demoted master)
/// also reconnects at once, and a connection the old master closes is replaced at once.
/// Sentinels are given as `host:port` (no password), or through [`LinkConfig::sentinel`] as
/// `redis://[user:password@]host:port` for a Sentinel with its own `requirepass`.
///
/// # On a Redis Cluster
///
/// The connection is redis-rs' cluster connection ([`Conn`]): commands go to the node serving
/// their key's slot; `MOVED`, `ASK`, `READONLY` are followed and `CLUSTERDOWN`/`TRYAGAIN`
/// retried inside it (3 retries, 10–100 ms apart, never the client's default 1.28 s sleeps);
/// the budget still bounds every call. What differs from one node:
/// - **No rebuild for one node's failure.** A dead node, `CLUSTERDOWN` while a master fails
///   over, a `MOVED` past the retries: the call fails (unavailable), redis-rs reconnects that
///   node and refreshes its slot map; calls to other shards go on. The whole cluster
///   connection is rebuilt only after failures in a row, nothing succeeding, for longer than
///   a failover (5 s), or by the topology watch.
/// - **Topology watch.** redis-rs never refreshes its slot map on calls that time out, so a
///   frozen master replaced by its replica would time its slots out for ever. A call past its
///   budget makes the link ask the cluster for its slot map (at most once per
///   [`min_outage`](LinkConfig::min_outage)); if the slots' masters changed and the
///   connection still routes to the old one, a new connection is made and swapped in.
/// - **Retry**: redis-rs resends a command after a connection error or a redirection by
///   itself; [`Retry::Once`] adds nothing on a cluster. A command whose node died as it was
///   sent may therefore have run once before it is sent again: keep commands marked
///   [`Retry::Never`] idempotent where a double run would matter.
/// - **Scripts** are never loaded on every node (`SCRIPT LOAD` fans out and fails while one
///   node is down): `NOSCRIPT` is answered with `EVAL` on the key's node (see [`Conn`]).
/// - **Health**: the link stays [`LinkState::Connected`] while one shard fails over (the
///   other shards serve); it turns to reconnecting, and its health check `Degraded`, once
///   calls have failed for 5 s in a row with nothing succeeding (the whole cluster down).
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

/// The connection calls use, with the generation it was made in.
struct Hot {
    conn: Conn,
    generation: u64,
    /// When the connection was made: the origin of `last_reply`.
    born: Instant,
    /// When Redis last answered a call on this connection (nanoseconds after `born`, kept to
    /// the millisecond). A call past its budget while other calls are being answered is a
    /// busy Redis or a busy instance, not a dead connection: it is not counted towards the
    /// threshold, so a burst of load never drops a connection that works.
    last_reply: AtomicU64,
    /// On a cluster: the slot map this connection was built with, to tell whether the cluster
    /// has changed in a way it did not follow (see `shards::watch`).
    map: ArcSwapOption<shards::ShardMap>,
    /// The node it reaches (one node or a Sentinel's master; `None` on a cluster).
    addr: Option<redis::ConnectionAddr>,
}

impl Hot {
    fn new(conn: Conn, generation: u64) -> Self {
        Self {
            conn,
            generation,
            born: Instant::now(),
            last_reply: AtomicU64::new(0),
            map: ArcSwapOption::empty(),
            addr: None,
        }
    }

    /// Redis answered a call on this connection (a value or an error of its own).
    fn replied(&self) {
        let now = u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // One store per millisecond at most: callers on every core share this line.
        if now.saturating_sub(self.last_reply.load(Ordering::Relaxed)) >= 1_000_000 {
            self.last_reply.store(now, Ordering::Relaxed);
        }
    }

    /// Whether Redis answered any call on this connection after `since`.
    fn replied_since(&self, since: Instant) -> bool {
        let since = u64::try_from(since.saturating_duration_since(self.born).as_nanos())
            .unwrap_or(u64::MAX);
        self.last_reply.load(Ordering::Relaxed) > since
    }
}

#[derive(Default)]
struct Counters {
    closed: AtomicU64,
    failed_attempts: AtomicU64,
    transport: AtomicU64,
    replace: AtomicU64,
    server: AtomicU64,
    budget: AtomicU64,
    retries: AtomicU64,
    not_connected: AtomicU64,
    in_flight: AtomicU64,
    switches: AtomicU64,
}

pub(crate) struct Inner {
    config: LinkConfig,
    /// Where to connect (validated once).
    target: Arc<Target>,
    hot: ArcSwapOption<Hot>,
    state: AtomicU8,
    /// Transport failures in a row on the current connection.
    consecutive: AtomicU32,
    /// When the current run of failures began (nanoseconds after `epoch`; `u64::MAX`: none).
    /// A run counts only once it spans the budget: a burst of calls that all time out at one
    /// instant (this process was not scheduled for a moment) is not a dead connection.
    failing_since: AtomicU64,
    /// The origin of `failing_since`.
    epoch: Instant,
    /// Generations handed out (connections made, counting the ones being set up).
    generations: AtomicU64,
    connections: AtomicU64,
    counters: Counters,
    /// Wakes the supervisor when the connection was dropped.
    dropped: Arc<Notify>,
    /// Set with `dropped` when the drop was for failures (then `min_outage` applies).
    hold_off: AtomicBool,
    /// A caller waits for a connection: try now (within `demand_interval`).
    demand: Arc<Notify>,
    /// Connection attempts started (numbered from 1).
    attempts_started: AtomicU64,
    /// The number of the last attempt that ended, so waiting callers learn its outcome.
    attempts: watch::Sender<u64>,
    scripts: Mutex<Vec<Script>>,
    /// On a cluster: script sources by SHA1, for `EVAL` after `NOSCRIPT` (see [`Conn`]).
    cluster_scripts: Arc<Scripts>,
    supervisor: OnceLock<tokio::task::AbortHandle>,
    runtime: tokio::runtime::Handle,
    /// The pub/sub side, made on first use.
    subscriber: OnceLock<Subscriber>,
    /// On a cluster: the sharded pub/sub side, made on first use.
    sharded: OnceLock<Subscriber>,
    /// The pools of dedicated connections (`None`: the target; a node on a cluster), made
    /// on first use.
    pools: Mutex<HashMap<Option<(String, u16)>, dedicated::Pool>>,
    /// On a cluster: the slot map as last fetched (see `shards`).
    shards: ArcSwapOption<shards::ShardMap>,
    /// The slot map may be out of date.
    shards_stale: AtomicBool,
    /// One slot map fetch at a time.
    shards_fetch: tokio::sync::Mutex<()>,
    /// On Sentinel: the Sentinels announced a new master; cuts the supervisor's hold-off or
    /// backoff short (see `follow`).
    switched: Arc<Notify>,
    /// On a cluster: a call ran past its budget; the topology watch compares the cluster's
    /// slot map with the connection's.
    look_at_topology: Arc<Notify>,
    /// The watch task: on a cluster the topology watch, on Sentinel the `+switch-master`
    /// watch (see `follow`).
    watch: OnceLock<tokio::task::AbortHandle>,
}

impl Inner {
    /// Whether the link has a connection now.
    pub(crate) fn is_up(&self) -> bool {
        self.hot.load().is_some()
    }

    /// The node the current connection reaches (one node or a Sentinel's master).
    pub(crate) fn current_addr(&self) -> Option<redis::ConnectionAddr> {
        self.hot.load().as_ref().and_then(|h| h.addr.clone())
    }

    /// Ticks at the end of every connection attempt.
    pub(crate) fn attempts(&self) -> watch::Receiver<u64> {
        self.attempts.subscribe()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.supervisor.get() {
            task.abort();
        }
        if let Some(task) = self.watch.get() {
            task.abort();
        }
        if let Some(subscriber) = self.subscriber.get() {
            subscriber.shared().close();
        }
        if let Some(subscriber) = self.sharded.get() {
            subscriber.shared().close();
        }
        dedicated::close_all(&self.pools);
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("topology", &self.inner.config.topology)
            .field("state", &self.state())
            .field("budget", &self.inner.config.budget)
            .finish()
    }
}

/// Decrements the in-flight count however the call ends (cancellation included).
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Link {
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    pub(crate) fn upgrade(weak: &Weak<Inner>) -> Option<Self> {
        weak.upgrade().map(|inner| Self { inner })
    }

    /// Builds the link, tries a first connection and starts the supervisor. An unreachable
    /// Redis is not an error: calls fail with [`Error::is_not_connected`] until it answers.
    ///
    /// # Errors
    ///
    /// Invalid settings (a zero budget or backoff, a URL that is not a Redis URL), or no tokio
    /// runtime.
    pub async fn connect(config: LinkConfig) -> Result<Self, Error> {
        config.validate()?;
        let target = Arc::new(Target::new(&config.topology)?);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(Error::config(
                "the Redis link must be built inside a tokio runtime (it reconnects in the background)",
            ));
        };
        let (attempts, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            config,
            target,
            hot: ArcSwapOption::empty(),
            state: AtomicU8::new(CONNECTING),
            consecutive: AtomicU32::new(0),
            failing_since: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            generations: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            counters: Counters::default(),
            dropped: Arc::new(Notify::new()),
            hold_off: AtomicBool::new(false),
            demand: Arc::new(Notify::new()),
            attempts_started: AtomicU64::new(0),
            attempts,
            scripts: Mutex::new(Vec::new()),
            cluster_scripts: Arc::default(),
            supervisor: OnceLock::new(),
            runtime: runtime.clone(),
            subscriber: OnceLock::new(),
            sharded: OnceLock::new(),
            pools: Mutex::new(HashMap::new()),
            shards: ArcSwapOption::empty(),
            shards_stale: AtomicBool::new(false),
            shards_fetch: tokio::sync::Mutex::new(()),
            switched: Arc::new(Notify::new()),
            look_at_topology: Arc::new(Notify::new()),
            watch: OnceLock::new(),
        });
        if let Err(e) = Inner::attempt(&inner).await {
            tracing::warn!(redis = %inner.config.topology, error = %e, "Redis is unreachable: the link keeps trying in the background");
        }
        let task = runtime.spawn(supervise(
            Arc::downgrade(&inner),
            inner.dropped.clone(),
            inner.demand.clone(),
            inner.switched.clone(),
        ));
        let _ = inner.supervisor.set(task.abort_handle());
        Inner::watch_sentinels(&inner);
        if inner.target.nodes().is_some() {
            let task = runtime.spawn(shards::watch(
                Arc::downgrade(&inner),
                inner.look_at_topology.clone(),
            ));
            let _ = inner.watch.set(task.abort_handle());
        }
        Ok(Self { inner })
    }

    /// The link's [`Subscriber`]: one pub/sub connection shared by every clone of this link,
    /// connected on the first [`subscribe`](Subscriber::subscribe).
    pub fn subscriber(&self) -> Subscriber {
        self.inner
            .subscriber
            .get_or_init(|| {
                Subscriber::new(
                    self.inner.config.clone(),
                    self.inner.target.clone(),
                    self.inner.runtime.clone(),
                    Arc::downgrade(&self.inner),
                )
            })
            .clone()
    }

    /// On a Redis Cluster, the link's **sharded** [`Subscriber`]: `SSUBSCRIBE` of each channel
    /// on the master serving the channel's slot, one connection per master that serves a
    /// subscribed channel (so a node receives only what its own slots carry, instead of every
    /// `PUBLISH` of the cluster). Publish to it with `SPUBLISH` through
    /// [`query`](Self::query): redis-rs routes `SPUBLISH` by its first argument, the channel,
    /// to the slot's master. Same API and deliveries as [`subscriber`](Self::subscriber).
    ///
    /// It resubscribes a channel on its slot's new owner (a fresh slot map) when Redis sends an
    /// unsolicited `sunsubscribe` (a slot migration, a failover, graceful or not), when
    /// `SSUBSCRIBE` is redirected (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`), when the node
    /// connection is lost (noticed when it closes, or after
    /// [`failure_threshold`](crate::LinkConfig::failure_threshold) unanswered `PING`s one
    /// second apart), and when the periodic check (every 5 s, see
    /// [`Subscriber::set_check_every`], and 1 s after any resubscription: an `SSUBSCRIBE` that
    /// reached a master in the instant before its demotion stays on it, a replica that still
    /// receives the shard's messages) finds it missing or misplaced: `PUBSUB SHARDNUMSUB` and
    /// `CLIENT INFO` on the node connection itself, against what the node acknowledged, and
    /// the slot map against where each channel is subscribed. Failed attempts wait the link's
    /// [`backoff`](crate::LinkConfig::backoff) (exponential, jittered). Subscriptions are told
    /// as with the classic subscriber: [`Delivery::Subscribed`](crate::Delivery::Subscribed)
    /// with the outage after every resubscription. [`Subscriber::is_connected`] is `true` when
    /// every wanted channel is routed to a connected master.
    ///
    /// A sharded channel should carry a hash tag so channels spread over the slots (and so
    /// the masters): the bus does this for its ephemeral topics.
    ///
    /// Off a cluster (one node, Sentinel) this is the classic [`subscriber`](Self::subscriber):
    /// one node has one shard, so sharded pub/sub would change nothing but the command names.
    pub fn sharded_subscriber(&self) -> Subscriber {
        if self.inner.target.nodes().is_none() {
            return self.subscriber();
        }
        self.inner
            .sharded
            .get_or_init(|| {
                Subscriber::with_mode(
                    self.inner.config.clone(),
                    self.inner.target.clone(),
                    self.inner.runtime.clone(),
                    Arc::downgrade(&self.inner),
                    true,
                )
            })
            .clone()
    }

    /// Whether the link runs on a Redis Cluster (where [`sharded_subscriber`](Self::sharded_subscriber)
    /// is sharded).
    pub fn is_cluster(&self) -> bool {
        self.inner.target.nodes().is_some()
    }

    /// The sharded subscriber if it was ever asked for (on a cluster).
    pub(crate) fn used_sharded(&self) -> Option<Subscriber> {
        self.inner.sharded.get().cloned()
    }

    /// The subscriber if it was ever asked for.
    pub(crate) fn used_subscriber(&self) -> Option<Subscriber> {
        self.inner.subscriber.get().cloned()
    }

    /// The settings the link was built with.
    pub fn config(&self) -> &LinkConfig {
        &self.inner.config
    }

    /// Whether a connection is up now.
    pub fn is_connected(&self) -> bool {
        self.inner.hot.load().is_some()
    }

    /// The link's state now.
    pub fn state(&self) -> LinkState {
        match self.inner.state.load(Ordering::Acquire) {
            CONNECTED => LinkState::Connected,
            HOLDING_OFF => LinkState::HoldingOff,
            _ => LinkState::Connecting,
        }
    }

    /// The link's counters since it was built.
    pub fn stats(&self) -> LinkStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LinkStats {
            connections: get(&self.inner.connections),
            failed_attempts: get(&c.failed_attempts),
            closed: get(&c.closed),
            transport_failures: get(&c.transport),
            replace_failures: get(&c.replace),
            server_failures: get(&c.server),
            budget_overruns: get(&c.budget),
            retries: get(&c.retries),
            not_connected: get(&c.not_connected),
            in_flight: get(&c.in_flight),
            master_switches: get(&c.switches),
        }
    }

    /// Registers `script` to be loaded on every new connection before it is used (so the first
    /// `EVALSHA` after a Redis restart does not meet `NOSCRIPT`), and loads it on the current
    /// connection now.
    ///
    /// # Errors
    ///
    /// Loading it on the current connection failed (it is still registered; a failed load
    /// only costs one `NOSCRIPT` round trip later). No error when Redis is down.
    pub async fn preload(&self, script: &Script) -> Result<(), Error> {
        if let Ok(mut scripts) = self.inner.scripts.lock()
            && !scripts.iter().any(|s| s.get_hash() == script.get_hash())
        {
            scripts.push(script.clone());
        }
        if !self.is_connected() {
            return Ok(());
        }
        let budget = self.inner.config.connect_timeout;
        let invocation = script.prepare_invoke();
        self.call_within(budget, Retry::Once, |mut c| {
            let invocation = &invocation;
            async move { invocation.load_async(&mut c).await }
        })
        .await
        .map(drop)
    }

    /// Runs `cmd` within the link's budget.
    ///
    /// # Errors
    ///
    /// See [`call_within`](Self::call_within).
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd, retry: Retry) -> Result<T, Error> {
        self.call(retry, |mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// Runs `pipe` (one round trip) within the link's budget.
    ///
    /// # Errors
    ///
    /// See [`call_within`](Self::call_within).
    pub async fn query_pipe<T: FromRedisValue>(
        &self,
        pipe: &Pipeline,
        retry: Retry,
    ) -> Result<T, Error> {
        self.call(retry, |mut c| async move { pipe.query_async(&mut c).await })
            .await
    }

    /// Runs a script (`EVALSHA`, loading it on `NOSCRIPT`) within the link's budget. Mark it
    /// [`Retry::Once`] only when running it twice does no harm.
    ///
    /// # Errors
    ///
    /// See [`call_within`](Self::call_within).
    pub async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
        retry: Retry,
    ) -> Result<T, Error> {
        self.call(retry, |mut c| async move {
            invocation.invoke_async(&mut c).await
        })
        .await
    }

    /// Runs `f` on the connection within the link's budget.
    ///
    /// # Errors
    ///
    /// See [`call_within`](Self::call_within).
    pub async fn call<T, F, Fut>(&self, retry: Retry, f: F) -> Result<T, Error>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.call_within(self.inner.config.budget, retry, f).await
    }

    /// Runs `f` on the connection (a clone of the shared [`Conn`]: do not issue blocking
    /// commands, `WATCH`/`MULTI` or `SUBSCRIBE` on it) within `budget`.
    /// `f` runs a second time on a new connection when `retry` is [`Retry::Once`] and the
    /// first run failed with a transport error.
    ///
    /// # Errors
    ///
    /// [`Error::is_not_connected`] (no connection and none made within the budget),
    /// [`Error::is_budget`], [`Error::is_transport`] or [`Error::is_server`].
    pub async fn call_within<T, F, Fut>(
        &self,
        budget: Duration,
        retry: Retry,
        mut f: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let inner = &self.inner;
        let started = Instant::now();
        let deadline = started + budget;
        inner.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(&inner.counters.in_flight);
        let mut hot = match inner.hot_or_wait(deadline, None).await {
            Some(hot) => hot,
            None => {
                inner.counters.not_connected.fetch_add(1, Ordering::Relaxed);
                return Err(Error::not_connected());
            }
        };
        let mut retried = false;
        loop {
            match tokio::time::timeout_at(deadline, f(hot.conn.clone())).await {
                Ok(Ok(v)) => {
                    hot.replied();
                    inner.succeeded();
                    return Ok(v);
                }
                Err(_) if hot.replied_since(started) => {
                    // Other calls were answered meanwhile: the connection works, this call
                    // was only slow (a loaded Redis or instance). Not a failure of the
                    // connection: counting it would drop a working connection under load
                    // and fail every request during the reconnect. On a cluster: its node
                    // may be frozen and replaced, which the cluster connection does not
                    // notice by itself; have the topology looked at.
                    inner.counters.budget.fetch_add(1, Ordering::Relaxed);
                    if hot.conn.is_cluster() {
                        inner.look_at_topology.notify_one();
                    }
                    tracing::debug!("a Redis call ran past its budget while others were answered");
                    return Err(Error::budget(budget));
                }
                Err(_) => {
                    inner.counters.budget.fetch_add(1, Ordering::Relaxed);
                    if hot.conn.is_cluster() {
                        inner.look_at_topology.notify_one();
                    }
                    inner.failed(
                        &hot,
                        Failure::Transport,
                        false,
                        "a call ran past its budget",
                    );
                    return Err(Error::budget(budget));
                }
                Ok(Err(e)) => {
                    let failure = classify(&e);
                    if failure == Failure::Server {
                        hot.replied();
                    }
                    // On Sentinel, `READONLY` means this node was demoted (a failover): the
                    // Sentinels are asked for the new master at once, without the hold-off
                    // of a failing connection (a node that is not master is never used).
                    let demoted = e.kind()
                        == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                        && inner.target.sentinels().is_some();
                    let closed = e.is_connection_dropped() || e.is_unrecoverable_error() || demoted;
                    let text = redact_url(&e.to_string()).into_owned();
                    inner.failed(&hot, failure, closed, &text);
                    if failure == Failure::Server {
                        return Err(Error::server(e));
                    }
                    if retried || retry == Retry::Never {
                        return Err(Error::transport(e));
                    }
                    match inner.hot_or_wait(deadline, Some(hot.generation)).await {
                        Some(next) => {
                            inner.counters.retries.fetch_add(1, Ordering::Relaxed);
                            retried = true;
                            hot = next;
                        }
                        None => return Err(Error::transport(e)),
                    }
                }
            }
        }
    }
}

/// `Degraded` while the link has no connection (or its subscriber, while wanted, has none): each component decides what that means for
/// its requests, so register it with `Affects::Nothing` unless Redis is required to serve.
impl HealthCheck for Link {
    fn check(&self) -> CheckFuture<'_> {
        let subscriber_down = [self.inner.subscriber.get(), self.inner.sharded.get()]
            .into_iter()
            .flatten()
            .any(|s| !s.is_connected() && s.is_wanted());
        let outcome = match self.state() {
            LinkState::Connected if subscriber_down => CheckOutcome::degraded(
                "Redis answers commands but the pub/sub connection is down: live updates are delayed until it resubscribes (in the background); check Redis' client limits",
            ),
            LinkState::Connected => CheckOutcome::Healthy,
            _ => CheckOutcome::degraded(
                "Redis is unreachable: the link reconnects in the background; check that Redis runs and is reachable",
            ),
        };
        Box::pin(std::future::ready(outcome))
    }
}
