//! [`Router`]: one sqlx pool per node, writes to the node that accepts them, reads to the
//! healthy replica with the fewest outstanding requests.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::{Database, Pool, Transaction};
use welcomedly_core::redact::redact_url;

use crate::Error;
use crate::consistency::Token;
use crate::node::{NodeState, Nodes, Transition};

pub(crate) const NO_WRITER: usize = usize::MAX;

/// Bounds and thresholds the router applies (from [`RouterConfig`](crate::RouterConfig)).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) failure_threshold: u32,
    pub(crate) recovery_threshold: u32,
    pub(crate) max_lag_bytes: u64,
    pub(crate) max_lag: Duration,
    pub(crate) read_after_wait: Duration,
    pub(crate) probe_interval: Duration,
    pub(crate) probe_timeout: Duration,
    pub(crate) max_probe_backoff: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        let c = crate::RouterConfig::new("");
        Self::from(&c)
    }
}

impl From<&crate::RouterConfig> for Settings {
    fn from(c: &crate::RouterConfig) -> Self {
        Self {
            failure_threshold: c.failure_threshold.max(1),
            recovery_threshold: c.recovery_threshold.max(1),
            max_lag_bytes: c.max_lag_bytes,
            max_lag: c.max_lag,
            read_after_wait: c.read_after_wait,
            probe_interval: c.probe_interval,
            probe_timeout: c.probe_timeout,
            max_probe_backoff: c.max_probe_backoff.max(c.probe_interval),
        }
    }
}

/// Router-wide counters.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) reads_replica: AtomicU64,
    pub(crate) reads_primary: AtomicU64,
    pub(crate) ryw_replica: AtomicU64,
    pub(crate) ryw_waited: AtomicU64,
    pub(crate) ryw_primary: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) writer_changes: AtomicU64,
}

pub(crate) struct Inner<DB: Database> {
    pub(crate) nodes: Nodes<NodeState<DB>>,
    /// Index of the node that takes writes, [`NO_WRITER`] when none is known.
    pub(crate) writer: AtomicUsize,
    pub(crate) settings: Settings,
    pub(crate) started: Instant,
    pub(crate) stats: Stats,
    /// The writer's flushed WAL position over time (newest last), to tell how long ago a
    /// replica's replay position was current.
    pub(crate) samples: Mutex<VecDeque<(Instant, u64)>>,
    pub(crate) tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// The writer's WAL segment size (PostgreSQL's probes read it), to step tokens back over a
    /// segment's long page header.
    pub(crate) segment_size: AtomicU64,
    /// Whether probes run (and so can readmit what errors eject).
    pub(crate) probed: std::sync::atomic::AtomicBool,
    /// The schema floor: a WAL position every replica must have replayed before it serves any
    /// read (0: none). Raised after migrations, never lowered.
    pub(crate) floor: AtomicU64,
    /// The newest timeline a node out of recovery was seen on: a primary on an older one is
    /// fenced (never takes writes again).
    pub(crate) newest_timeline: AtomicU32,
    /// Wakes every probe loop at once (a write met a connection error or a read-only answer,
    /// or there is no writer): shared with the loops, which must not hold `Inner` while idle.
    pub(crate) reprobe: Arc<tokio::sync::Notify>,
    /// Wakes requests waiting for a connection of the writer when writes move elsewhere.
    pub(crate) writer_moved: tokio::sync::Notify,
}

impl<DB: Database> Drop for Inner<DB> {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(PoisonError::into_inner);
        for task in tasks.drain(..) {
            task.abort();
        }
    }
}

/// A replica-aware router over one sqlx pool per node.
///
/// - [`write`](Self::write) and [`begin`](Self::begin) use the node that accepts writes (the
///   primary, or the replica that was promoted).
/// - [`read`](Self::read) uses the healthy replica with the fewest outstanding requests (ties
///   broken at random), or the primary when no replica is usable.
/// - [`read_with`](Self::read_with) runs a read and retries it once on another node when it
///   failed with a connection-level error.
/// - For PostgreSQL, [`RouterConfig::connect`](crate::RouterConfig::connect) adds the health
///   probes, failover and read-your-writes ([`Router::token`], [`Router::read_after`]).
///
/// What the caller gets is a [`Routed`] that derefs to the node's `Pool`, so queries run
/// exactly as on a plain pool: `sqlx::query("…").fetch_all(&*router.read())`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use welcomedly_db::Router;
///
/// let pool = sqlx::sqlite::SqlitePoolOptions::new().connect("sqlite::memory:").await?;
/// let router = Router::single(pool);
/// sqlx::query("CREATE TABLE t (id INTEGER)").execute(&*router.write()?).await?;
/// sqlx::query("INSERT INTO t VALUES (1)").execute(&*router.write()?).await?;
/// let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM t").fetch_one(&*router.read()).await?;
/// assert_eq!(n, 1);
/// # Ok(()) }
/// ```
pub struct Router<DB: Database> {
    pub(crate) inner: Arc<Inner<DB>>,
}

impl<DB: Database> Clone for Router<DB> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<DB: Database> fmt::Debug for Router<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<String> = self
            .inner
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "{} {} ({}, {} in flight)",
                    n.label,
                    n.url,
                    if n.is_healthy() { "healthy" } else { "ejected" },
                    n.outstanding.load(Ordering::Relaxed)
                )
            })
            .collect();
        f.debug_struct("Router")
            .field("nodes", &nodes)
            .field("writer", &self.writer_label())
            .finish()
    }
}

/// The pool of the node a request was routed to; derefs to [`Pool`], so `&*routed` is the
/// executor sqlx's `query`/`query_as` (and the query macros) take. Counts as one outstanding
/// request on that node until dropped.
pub struct Routed<'r, DB: Database> {
    inner: &'r Inner<DB>,
    index: usize,
    replica: bool,
}

impl<DB: Database> Routed<'_, DB> {
    /// The configured place of the node ("primary", "replica 0", …).
    pub fn node(&self) -> &str {
        self.node_state().map_or("", |n| n.label.as_str())
    }

    /// Whether a replica serves this (`false` for the primary or the promoted writer).
    pub fn is_replica(&self) -> bool {
        self.replica
    }

    /// The node's pool (what `Deref` gives).
    pub fn pool(&self) -> &Pool<DB> {
        self
    }

    pub(crate) fn index(&self) -> usize {
        self.index
    }

    fn node_state(&self) -> Option<&NodeState<DB>> {
        self.inner.nodes.get(self.index)
    }
}

impl<DB: Database> Deref for Routed<'_, DB> {
    type Target = Pool<DB>;

    fn deref(&self) -> &Pool<DB> {
        // `index` always comes from `nodes`, which never changes after the build.
        &self.inner.nodes.get_or_first(self.index).pool
    }
}

impl<DB: Database> Drop for Routed<'_, DB> {
    fn drop(&mut self) {
        if let Some(n) = self.node_state() {
            n.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<DB: Database> fmt::Debug for Routed<'_, DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Routed")
            .field("node", &self.node())
            .field("replica", &self.replica)
            .finish()
    }
}

impl<DB: Database> Router<DB> {
    /// A router over existing pools, without probes: the primary takes writes, every replica is
    /// taken as healthy and stays in rotation (for PostgreSQL use
    /// [`RouterConfig::connect`](crate::RouterConfig::connect), which probes, ejects and
    /// readmits). Reads still retry once on another node after a connection-level error.
    pub fn from_pools(primary: Pool<DB>, replicas: impl IntoIterator<Item = Pool<DB>>) -> Self {
        let primary = NodeState::new("primary".to_owned(), String::new(), primary, false, true);
        let replicas = replicas
            .into_iter()
            .enumerate()
            .map(|(i, pool)| {
                NodeState::new(format!("replica {i}"), String::new(), pool, true, true)
            })
            .collect();
        Self::from_nodes(Nodes::new(primary, replicas), Settings::default())
    }

    /// A router over one node that takes reads and writes (SQLite, or a PostgreSQL without
    /// replicas).
    pub fn single(pool: Pool<DB>) -> Self {
        Self::from_pools(pool, [])
    }

    pub(crate) fn from_nodes(nodes: Nodes<NodeState<DB>>, settings: Settings) -> Self {
        Self {
            inner: Arc::new(Inner {
                nodes,
                writer: AtomicUsize::new(0),
                settings,
                started: Instant::now(),
                stats: Stats::default(),
                samples: Mutex::new(VecDeque::with_capacity(SAMPLES)),
                tasks: Mutex::new(Vec::new()),
                segment_size: AtomicU64::new(16 * 1024 * 1024),
                probed: std::sync::atomic::AtomicBool::new(false),
                floor: AtomicU64::new(0),
                newest_timeline: AtomicU32::new(0),
                reprobe: Arc::new(tokio::sync::Notify::new()),
                writer_moved: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The node that takes writes. Prefer [`write_with`](Self::write_with), which tells the
    /// router when a write fails because the node is gone or no longer the primary (so writes
    /// move at once) and fails fast while the primary is lost; a query on this pool waits out
    /// the pool's acquire timeout when the primary dies.
    ///
    /// # Errors
    ///
    /// No node accepts writes right now ([`Error::is_no_writer`]): the primary is unreachable
    /// or in recovery and no promoted replica has been found. Returned at once, without
    /// waiting for a connection.
    pub fn write(&self) -> Result<Routed<'_, DB>, Error> {
        let inner = &*self.inner;
        let w = inner.writer.load(Ordering::Acquire);
        let Some(node) = inner.nodes.get(w) else {
            // Look for the node that now takes writes at once, not at the next probe tick.
            inner.reprobe_all();
            return Err(Error::no_writer(format!(
                "no database node accepts writes: the primary {} is unreachable or in recovery and no promoted replica was found; bring it back or promote a replica (the router follows within a probe interval)",
                inner.first().url
            )));
        };
        if !node.is_healthy() {
            inner.reprobe_all();
            let why = node.ejection().map(|e| e.describe()).unwrap_or_default();
            return Err(Error::no_writer(format!(
                "the database primary {} ({}) is unreachable ({why}): writes fail until it answers again or a replica is promoted",
                node.url, node.label
            )));
        }
        node.writes.fetch_add(1, Ordering::Relaxed);
        Ok(inner.routed(w, false))
    }

    /// A transaction on the node that takes writes.
    ///
    /// # Errors
    ///
    /// See [`write`](Self::write); or the transaction could not begin (see `source()`).
    pub async fn begin(&self) -> Result<Transaction<'static, DB>, Error> {
        let routed = self.write()?;
        let index = routed.index;
        let begun = self
            .inner
            .unless_writer_lost(index, routed.pool().begin())
            .await;
        match begun {
            Some(Ok(tx)) => Ok(tx),
            None => Err(self.writer_lost(index)),
            Some(Err(e)) => {
                self.inner.query_failed(index, &e);
                let url = self.inner.nodes.get(index).map_or("", |n| n.url.as_str());
                Err(Error::database(
                    format!(
                        "could not begin a transaction on the database primary {url}: check that it is reachable"
                    ),
                    e,
                ))
            }
        }
    }

    /// A connection of the node that takes writes, for a sequence of statements on one
    /// session. Unlike a query on [`write`](Self::write)'s pool, which waits out the pool's
    /// acquire timeout when the primary dies, this fails as soon as the probes eject it.
    ///
    /// # Errors
    ///
    /// See [`write`](Self::write); or no connection could be had (see `source()`).
    pub async fn write_connection(&self) -> Result<sqlx::pool::PoolConnection<DB>, Error> {
        self.writer_connection().await.map(|(_, conn)| conn)
    }

    async fn writer_connection(&self) -> Result<(usize, sqlx::pool::PoolConnection<DB>), Error> {
        let routed = self.write()?;
        let index = routed.index;
        match self
            .inner
            .unless_writer_lost(index, routed.pool().acquire())
            .await
        {
            Some(Ok(conn)) => Ok((index, conn)),
            None => Err(self.writer_lost(index)),
            Some(Err(e)) => {
                self.inner.query_failed(index, &e);
                let url = self.inner.nodes.get(index).map_or("", |n| n.url.as_str());
                Err(Error::database(
                    format!(
                        "could not get a connection to the database primary {url}: check that it is reachable and that the pool is large enough"
                    ),
                    e,
                ))
            }
        }
    }

    /// Runs the write `f` on a connection of the node that takes writes, and tells the router
    /// how it went: a connection-level error ([`is_connection_error`]) or a read-only answer
    /// (`25006`: the node is no longer the primary, as after a managed failover behind a DNS
    /// name or a proxy) makes the router probe every node at once, so the next write goes to
    /// the new primary as soon as it accepts writes, and closes that connection rather than
    /// giving it back to the pool. Never retried (a write may have landed before the error).
    /// While the primary is down, this fails fast ([`Error::is_no_writer`]) instead of
    /// waiting out the pool's acquire timeout.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// # let router = welcomedly_db::Router::single(pool);
    /// let n = router
    ///     .write_with(async |conn| sqlx::query("CREATE TABLE t (id INTEGER)").execute(conn).await)
    ///     .await?;
    /// # let _ = n; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// No node takes writes ([`Error::is_no_writer`]), or the connection or `f` failed
    /// ([`Error::is_database`], `f`'s error as `source()`).
    pub async fn write_with<T, F>(&self, f: F) -> Result<T, Error>
    where
        F: AsyncFnOnce(&mut DB::Connection) -> Result<T, sqlx::Error>,
    {
        let (index, mut conn) = self.writer_connection().await?;
        match f(&mut conn).await {
            Ok(value) => Ok(value),
            Err(e) => {
                let url = self.inner.nodes.get(index).map_or("", |n| n.url.as_str());
                let message = if is_read_only_error(&e) {
                    format!(
                        "the database node {url} refused the write as read-only: it is no longer the primary; the router is looking for the new one, retry in a moment"
                    )
                } else if is_connection_error(&e) {
                    format!(
                        "the write to the database primary {url} was cut off: it may or may not have been applied; retry only if it is safe to run twice"
                    )
                } else {
                    format!("the write on the database primary {url} failed (see the cause)")
                };
                if is_connection_error(&e) || is_read_only_error(&e) {
                    conn.close_on_drop();
                }
                self.inner.query_failed(index, &e);
                Err(Error::database(message, e))
            }
        }
    }

    /// Raises the schema floor to WAL position `lsn` (never lowers it): from now on no read
    /// goes to a replica that has not replayed it ([`read`](Self::read) goes to the writer
    /// instead, [`read_after`](Self::read_after) waits for a replica up to
    /// [`read_after_wait`](crate::RouterConfig::read_after_wait) first). For PostgreSQL,
    /// [`publish_floor`](Self::publish_floor) raises it on every instance; this raises it on
    /// this router only.
    pub fn raise_floor(&self, lsn: u64) {
        let before = self.inner.floor.fetch_max(lsn, Ordering::AcqRel);
        if lsn > before {
            tracing::info!(
                floor = %crate::consistency::format_lsn(lsn),
                "database schema floor raised: replicas serve reads once they have replayed it"
            );
        }
    }

    /// The schema floor (0 when none): see [`raise_floor`](Self::raise_floor).
    pub fn floor(&self) -> u64 {
        self.inner.floor.load(Ordering::Acquire)
    }

    fn writer_lost(&self, index: usize) -> Error {
        let (url, why) = self
            .inner
            .nodes
            .get(index)
            .map_or_else(Default::default, |n| {
                (
                    n.url.clone(),
                    n.ejection().map(|e| e.describe()).unwrap_or_default(),
                )
            });
        Error::no_writer(format!(
            "the database primary {url} became unreachable while waiting for a connection ({why}): writes fail until it answers again or a replica is promoted"
        ))
    }

    /// A healthy replica past the schema floor ([`raise_floor`](Self::raise_floor)) with the
    /// fewest outstanding requests (ties broken at random), or the primary when no replica is
    /// usable. Never fails: with every node down, the query itself
    /// reports the error.
    pub fn read(&self) -> Routed<'_, DB> {
        self.inner.read(None)
    }

    /// Runs the read `f` on [`read`](Self::read)'s node and, when it fails with a
    /// connection-level error ([`is_connection_error`]) on a replica, once more on another
    /// node. Other errors pass through unchanged. `f` gets the node's pool (an `Arc` clone).
    ///
    /// # Errors
    ///
    /// What `f` returned (the retry's error when it was retried).
    pub async fn read_with<T, F, Fut>(&self, f: F) -> Result<T, sqlx::Error>
    where
        F: FnMut(Pool<DB>) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let first = self.read();
        self.inner.run_with_retry(first, None, f).await
    }

    /// Whether the node that takes writes is known and healthy.
    pub fn has_writer(&self) -> bool {
        let w = self.inner.writer.load(Ordering::Acquire);
        self.inner.nodes.get(w).is_some_and(NodeState::is_healthy)
    }

    /// The configured place ("primary", "replica 0", …) of the node taking writes, if any.
    pub fn writer_label(&self) -> Option<&str> {
        let w = self.inner.writer.load(Ordering::Acquire);
        self.inner.nodes.get(w).map(|n| n.label.as_str())
    }

    /// A snapshot of every node's state, in configured order (primary first).
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let w = self.inner.writer.load(Ordering::Acquire);
        self.inner
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeStatus {
                label: n.label.clone(),
                url: n.url.clone(),
                healthy: n.is_healthy(),
                writer: i == w,
                in_recovery: n.in_recovery(),
                outstanding: n.outstanding.load(Ordering::Relaxed),
                lag_bytes: n.lag_bytes.load(Ordering::Relaxed),
                lag: Duration::from_micros(n.lag_micros.load(Ordering::Relaxed)),
                reads: n.reads.load(Ordering::Relaxed),
                errors: n.errors.load(Ordering::Relaxed),
                ejections: n.ejections.load(Ordering::Relaxed),
                readmissions: n.readmissions.load(Ordering::Relaxed),
                ejected_because: n.ejection().map(|e| e.describe()),
            })
            .collect()
    }

    /// Router-wide counters.
    pub fn stats(&self) -> RouterStats {
        let s = &self.inner.stats;
        RouterStats {
            reads_replica: s.reads_replica.load(Ordering::Relaxed),
            reads_primary: s.reads_primary.load(Ordering::Relaxed),
            read_after_replica: s.ryw_replica.load(Ordering::Relaxed),
            read_after_waited: s.ryw_waited.load(Ordering::Relaxed),
            read_after_primary: s.ryw_primary.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            writer_changes: s.writer_changes.load(Ordering::Relaxed),
        }
    }
}

/// One node's state, as [`Router::nodes`] reports it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeStatus {
    /// Its configured place: "primary", "replica 0", …
    pub label: String,
    /// Its URL, password redacted (empty for pools given to [`Router::from_pools`]).
    pub url: String,
    /// In rotation.
    pub healthy: bool,
    /// Takes the writes.
    pub writer: bool,
    /// Reported `pg_is_in_recovery()` (a replica) at the last probe.
    pub in_recovery: bool,
    /// Requests routed to it and not finished.
    pub outstanding: u32,
    /// WAL bytes behind the primary at the last probe.
    pub lag_bytes: u64,
    /// How long ago the primary was where this replica is, at the last probe.
    pub lag: Duration,
    /// Reads routed to it.
    pub reads: u64,
    /// Failed probes and connection-level errors.
    pub errors: u64,
    /// Times it was taken out of rotation.
    pub ejections: u64,
    /// Times it was put back (the first admission included).
    pub readmissions: u64,
    /// Why it is out of rotation, when it is.
    pub ejected_because: Option<String>,
}

/// Router-wide counters, as [`Router::stats`] reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouterStats {
    /// Reads served by a replica.
    pub reads_replica: u64,
    /// Reads served by the primary (no replica usable, or a token not replayed anywhere).
    pub reads_primary: u64,
    /// `read_after` calls a replica had already replayed.
    pub read_after_replica: u64,
    /// `read_after` calls served by a replica after waiting for it.
    pub read_after_waited: u64,
    /// `read_after` calls sent to the primary (no replica got there within the bound).
    pub read_after_primary: u64,
    /// Reads retried on another node after a connection-level error.
    pub retries: u64,
    /// Times the node taking writes changed (failover).
    pub writer_changes: u64,
}

/// How many writer positions are kept to measure replica lag in time.
pub(crate) const SAMPLES: usize = 256;

impl<DB: Database> Inner<DB> {
    pub(crate) fn first(&self) -> &NodeState<DB> {
        self.nodes.first()
    }

    pub(crate) fn micros_since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub(crate) fn routed(&self, index: usize, replica: bool) -> Routed<'_, DB> {
        if let Some(n) = self.nodes.get(index) {
            n.outstanding.fetch_add(1, Ordering::Relaxed);
        }
        Routed {
            inner: self,
            index,
            replica,
        }
    }

    /// The usable replica (not `exclude`, past the schema floor, having replayed `token` if
    /// given) with the fewest
    /// outstanding requests, ties broken at random. No allocation.
    pub(crate) fn pick_replica(
        &self,
        exclude: Option<usize>,
        token: Option<&Token>,
    ) -> Option<usize> {
        let writer = self.writer.load(Ordering::Acquire);
        let floor = self.floor.load(Ordering::Acquire);
        let mut best = None;
        let mut best_load = u32::MAX;
        let mut ties = 0u32;
        for (i, n) in self.nodes.iter().enumerate() {
            if i == writer
                || Some(i) == exclude
                || !n.is_usable_replica()
                || n.position.load(Ordering::Acquire) < floor
            {
                continue;
            }
            if let Some(t) = token
                && !replayed(n, t)
            {
                continue;
            }
            let load = n.outstanding.load(Ordering::Relaxed);
            if load < best_load {
                best = Some(i);
                best_load = load;
                ties = 1;
            } else if load == best_load {
                ties += 1;
                if fastrand::u32(..ties) == 0 {
                    best = Some(i);
                }
            }
        }
        best
    }

    /// Where reads go when no replica will do: the writer, else any healthy node, else the
    /// configured primary (whose query then reports the error).
    pub(crate) fn fallback(&self, exclude: Option<usize>) -> Option<usize> {
        let w = self.writer.load(Ordering::Acquire);
        if Some(w) != exclude && self.nodes.get(w).is_some_and(NodeState::is_healthy) {
            return Some(w);
        }
        self.nodes
            .iter()
            .enumerate()
            .find(|(i, n)| Some(*i) != exclude && n.is_healthy())
            .map(|(i, _)| i)
    }

    pub(crate) fn read(&self, token: Option<&Token>) -> Routed<'_, DB> {
        match self.pick_replica(None, token) {
            Some(i) => self.read_on(i, true),
            None => {
                let i = self.fallback(None).unwrap_or(0);
                self.read_on(i, false)
            }
        }
    }

    pub(crate) fn read_on(&self, index: usize, replica: bool) -> Routed<'_, DB> {
        if let Some(n) = self.nodes.get(index) {
            n.reads.fetch_add(1, Ordering::Relaxed);
        }
        if replica {
            self.stats.reads_replica.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.reads_primary.fetch_add(1, Ordering::Relaxed);
        }
        self.routed(index, replica)
    }

    pub(crate) async fn run_with_retry<T, F, Fut>(
        &self,
        first: Routed<'_, DB>,
        token: Option<&Token>,
        mut f: F,
    ) -> Result<T, sqlx::Error>
    where
        F: FnMut(Pool<DB>) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let index = first.index;
        let result = self
            .unless_ejected(index, f(first.pool().clone()))
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut));
        drop(first);
        match result {
            Err(e) if is_connection_error(&e) => {
                self.query_failed(index, &e);
                // With a token only a node that has replayed it, or the writer, will do.
                let fallback = match token {
                    Some(_) => {
                        let w = self.writer.load(Ordering::Acquire);
                        (w != index && self.nodes.get(w).is_some()).then_some(w)
                    }
                    None => self.fallback(Some(index)),
                };
                let next = match self.pick_replica(Some(index), token) {
                    Some(i) => self.read_on(i, true),
                    None => match fallback {
                        Some(i) => self.read_on(i, false),
                        None => return Err(e),
                    },
                };
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, from = self.nodes.get(index).map_or("", |n| n.label.as_str()), to = next.node(), "read failed with a connection error: retried on another node");
                let result = self
                    .unless_ejected(next.index, f(next.pool().clone()))
                    .await
                    .unwrap_or(Err(sqlx::Error::PoolTimedOut));
                if let Err(e) = &result
                    && is_connection_error(e)
                {
                    self.query_failed(next.index, e);
                }
                result
            }
            other => other,
        }
    }

    /// `fut` (a request on node `index`), abandoned (`None`) if the node is ejected meanwhile:
    /// a dead node's requests otherwise wait out the pool's acquire timeout (sqlx retries a
    /// refused connection until then). Only for what is safe to abandon: reads, acquiring a
    /// connection, beginning a transaction. A node already out of rotation is not raced.
    pub(crate) async fn unless_ejected<F: Future>(
        &self,
        index: usize,
        fut: F,
    ) -> Option<F::Output> {
        let Some(node) = self.nodes.get(index) else {
            return Some(fut.await);
        };
        let notified = node.ejected.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !node.is_healthy() {
            return Some(fut.await);
        }
        tokio::select! {
            out = fut => Some(out),
            () = notified => None,
        }
    }

    /// Like [`unless_ejected`](Self::unless_ejected), and also abandoned when writes move
    /// to another node: for requests on the writer (acquiring a connection, beginning).
    pub(crate) async fn unless_writer_lost<F: Future>(
        &self,
        index: usize,
        fut: F,
    ) -> Option<F::Output> {
        let moved = self.writer_moved.notified();
        tokio::pin!(moved);
        moved.as_mut().enable();
        if self.writer.load(Ordering::Acquire) != index {
            return None;
        }
        tokio::select! {
            out = self.unless_ejected(index, fut) => out,
            () = moved => None,
        }
    }

    /// Wakes every probe loop: probe now rather than at the next tick.
    pub(crate) fn reprobe_all(&self) {
        if self.probed.load(Ordering::Acquire) {
            self.reprobe.notify_waiters();
        }
    }

    /// A query on `index` failed: connection-level errors count towards its ejection and, on
    /// the writer, make every node be probed at once; a read-only answer (`25006`) makes every
    /// node be probed at once (the node is no longer the primary: the probe finds out).
    pub(crate) fn query_failed(&self, index: usize, e: &sqlx::Error) {
        if is_read_only_error(e) {
            tracing::warn!(
                node = self.nodes.get(index).map_or("", |n| n.label.as_str()),
                "a write was refused as read-only: probing every database node for the new primary"
            );
            self.reprobe_all();
            return;
        }
        if !is_connection_error(e) {
            return;
        }
        let Some(n) = self.nodes.get(index) else {
            return;
        };
        if index == self.writer.load(Ordering::Acquire) {
            self.reprobe_all();
        }
        if !self.probed.load(Ordering::Acquire) {
            // Without probes nothing would readmit the node: count the error, keep it.
            n.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let message = redact_url(&e.to_string()).into_owned();
        let t = n.failed(message, self.settings.failure_threshold);
        self.log_transition(index, t);
    }

    pub(crate) fn log_transition(&self, index: usize, t: Option<Transition>) {
        let (Some(t), Some(n)) = (t, self.nodes.get(index)) else {
            return;
        };
        match t {
            Transition::Ejected(why) => tracing::warn!(
                node = %n.label,
                url = %n.url,
                reason = %why.describe(),
                "database node taken out of rotation"
            ),
            Transition::Readmitted => tracing::info!(
                node = %n.label,
                url = %n.url,
                "database node in rotation"
            ),
        }
    }
}

/// Whether `n` has replayed `t` as far as the router knows (same timeline, far enough).
pub(crate) fn replayed<DB: Database>(n: &NodeState<DB>, t: &Token) -> bool {
    n.timeline.load(Ordering::Acquire) == t.timeline()
        && n.position.load(Ordering::Acquire) >= t.lsn()
}

/// Whether `e` is PostgreSQL's `25006` (read_only_sql_transaction): a write reached a node
/// that does not take writes (a standby, or a primary set read-only). The router treats it on a
/// write like a connection error: it probes every node at once to find the primary.
pub fn is_read_only_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| c == "25006"))
}

/// Whether `e` says the connection or the server is gone (so another node may well answer),
/// rather than something about the query: I/O and TLS errors, a closed or exhausted pool, a
/// protocol error, and PostgreSQL's class 08 (connection exception) and `57P01`–`57P03`
/// (shutdown, crash, not accepting connections yet).
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use sqlx::Sqlite;
    use sqlx::sqlite::SqlitePoolOptions;

    fn lazy() -> Pool<Sqlite> {
        SqlitePoolOptions::new()
            .connect_lazy("sqlite::memory:")
            .unwrap()
    }

    #[tokio::test]
    async fn reads_go_to_the_least_loaded_replica_ties_at_random() {
        let router = Router::from_pools(lazy(), [lazy(), lazy(), lazy()]);
        let a = router.read();
        assert!(a.is_replica());
        let b = router.read();
        let c = router.read();
        let mut seen = [
            a.node().to_owned(),
            b.node().to_owned(),
            c.node().to_owned(),
        ];
        seen.sort();
        assert_eq!(seen, ["replica 0", "replica 1", "replica 2"]);
        drop(b);
        let d = router.read();
        assert_eq!(
            d.node(),
            seen.iter()
                .find(|s| *s != a.node() && *s != c.node())
                .unwrap()
        );
        drop((a, c, d));
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            let r = router.read();
            counts[r.node().as_bytes()[8] as usize - b'0' as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[tokio::test]
    async fn no_usable_replica_means_the_primary() {
        let router = Router::from_pools(lazy(), [lazy()]);
        for _ in 0..2 {
            router
                .inner
                .nodes
                .get(1)
                .unwrap()
                .failed("refused".into(), 2);
        }
        let r = router.read();
        assert_eq!(r.node(), "primary");
        assert!(!r.is_replica());
        assert_eq!(router.stats().reads_primary, 1);
    }

    #[tokio::test]
    async fn a_connection_error_is_retried_once_on_another_node_others_pass_through() {
        let router = Router::from_pools(lazy(), [lazy(), lazy()]);
        let calls = std::sync::atomic::AtomicU32::new(0);
        let out: Result<u32, _> = router
            .read_with(|_pool| {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    if n == 0 {
                        Err(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(out.unwrap(), 1);
        assert_eq!(router.stats().retries, 1);
        let calls = std::sync::atomic::AtomicU32::new(0);
        let out: Result<u32, _> = router
            .read_with(|_pool| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err(sqlx::Error::RowNotFound) }
            })
            .await;
        assert!(matches!(out, Err(sqlx::Error::RowNotFound)));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn sqlite_single_node_reads_and_writes() {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let router = Router::single(pool);
        sqlx::query("CREATE TABLE t (v TEXT)")
            .execute(&*router.write().unwrap())
            .await
            .unwrap();
        let mut tx = router.begin().await.unwrap();
        sqlx::query("INSERT INTO t VALUES ('x')")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let v: (String,) = sqlx::query_as("SELECT v FROM t")
            .fetch_one(&*router.read())
            .await
            .unwrap();
        assert_eq!(v.0, "x");
        assert_eq!(router.writer_label(), Some("primary"));
    }

    #[tokio::test]
    async fn a_connection_error_on_the_writer_asks_every_probe_loop_for_a_probe_now() {
        let router = Router::from_pools(lazy(), [lazy()]);
        router.inner.probed.store(true, Ordering::Release);
        let woken = router.inner.reprobe.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let e = sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into());
        assert!(!is_read_only_error(&e));
        // A connection error on the writer asks every probe loop for a probe now.
        router.inner.query_failed(0, &e);
        tokio::time::timeout(Duration::from_millis(100), woken)
            .await
            .unwrap();
        assert_eq!(router.nodes()[0].errors, 1);
    }

    #[test]
    fn routers_and_guards_are_send_and_sync() {
        fn both<T: Send + Sync>() {}
        both::<Router<Sqlite>>();
        both::<Routed<'static, Sqlite>>();
        both::<Router<sqlx::Postgres>>();
    }
}
