//! The connection's life: one classifier-driven drop path (threshold, generation check), the
//! connection attempt (own socket, so the reader task's end is seen), and the one supervisor
//! task that reconnects with a minimum outage, backoff with jitter and callers' demand.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, RedisResult};
use tokio::sync::Notify;
use tokio::time::Instant;
use welcomedly_core::redact::redact_url;

use super::{CONNECTED, CONNECTING, Conn, HOLDING_OFF, Hot, Inner, cluster, shards};
use crate::classify::Failure;

impl Inner {
    /// The current connection if it is not generation `not`; otherwise, while the supervisor
    /// is connecting, asks it for an attempt and waits for that attempt's outcome, until
    /// `deadline`.
    pub(super) async fn hot_or_wait(
        &self,
        deadline: Instant,
        not: Option<u64>,
    ) -> Option<Arc<Hot>> {
        let usable = |hot: Option<Arc<Hot>>| hot.filter(|h| Some(h.generation) != not);
        if let Some(hot) = usable(self.hot.load_full()) {
            return Some(hot);
        }
        let mut attempts = self.attempts.subscribe();
        // Only an attempt started after this caller arrived tells it something new.
        let asked_after = self.attempts_started.load(Ordering::Acquire);
        if let Some(hot) = usable(self.hot.load_full()) {
            return Some(hot);
        }
        // The failed connection may still be up (below the threshold): not worth waiting
        // for; nor is a link holding off after failures.
        if self.hot.load().is_some() || self.state.load(Ordering::Acquire) != CONNECTING {
            return None;
        }
        self.demand.notify_one();
        // An attempt that was already running when this caller arrived counts if it connects.
        let fresh = attempts.wait_for(|ended| *ended > asked_after || self.hot.load().is_some());
        match tokio::time::timeout_at(deadline, fresh).await {
            Ok(Ok(_)) => usable(self.hot.load_full()),
            _ => None,
        }
    }

    pub(super) fn succeeded(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
            self.failing_since.store(u64::MAX, Ordering::Relaxed);
        }
    }

    /// A call on `hot` failed: count it and, per its class and the threshold, drop that
    /// connection — only that one: a replacement made meanwhile stays.
    pub(super) fn failed(&self, hot: &Arc<Hot>, failure: Failure, closed: bool, error: &str) {
        let c = &self.counters;
        match failure {
            Failure::Transport => c.transport.fetch_add(1, Ordering::Relaxed),
            Failure::Replace => c.replace.fetch_add(1, Ordering::Relaxed),
            Failure::Server => c.server.fetch_add(1, Ordering::Relaxed),
        };
        let drop_it = match failure {
            Failure::Server => {
                // Redis answered: the connection works.
                self.succeeded();
                tracing::debug!(error, "Redis refused a call");
                false
            }
            // A cluster connection is many node connections that redis-rs repairs one by one
            // (reconnecting a node, refreshing the slot map): one node's failure, or its
            // `CLUSTERDOWN` during a failover, is no reason to rebuild the whole thing. Only
            // failures going on past a failover's length, nothing succeeding, are.
            _ if hot.conn.is_cluster() => {
                let (n, span) = self.count_failure();
                n >= self.config.failure_threshold.max(1) && span >= cluster::REBUILD_AFTER
            }
            Failure::Replace => true,
            Failure::Transport if closed => true,
            Failure::Transport => {
                let (n, span) = self.count_failure();
                // The threshold, over at least one budget: failures that all land at one
                // instant are this process stalling, not the connection dying.
                n >= self.config.failure_threshold.max(1) && span >= self.config.budget
            }
        };
        if drop_it {
            // A closed connection is reconnected at once; one dropped for failures waits.
            self.drop_connection(hot, !closed, error);
        } else {
            tracing::debug!(error, "a Redis call failed");
        }
    }

    /// The longest one connection attempt may take: one node, a `connect_timeout`; Sentinel,
    /// asking the Sentinels too; a cluster, the last map's masters, then the seeds, then
    /// `CLUSTER SLOTS`.
    fn attempt_timeout(&self) -> Duration {
        let timeout = self.config.connect_timeout;
        match &self.config.topology {
            crate::Topology::Single(_) => timeout,
            crate::Topology::Sentinel { .. } => timeout * 2,
            _ => timeout * 3,
        }
    }

    /// Counts a failure in a row: how many now, and over how long since the first.
    fn count_failure(&self) -> (u32, Duration) {
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let since = self
            .failing_since
            .fetch_min(now, Ordering::Relaxed)
            .min(now);
        (n, Duration::from_nanos(now - since))
    }

    /// Drops `hot` if it is still the current connection, and wakes the supervisor.
    pub(super) fn drop_connection(&self, hot: &Arc<Hot>, hold_off: bool, why: &str) {
        let current = self.hot.compare_and_swap(hot, None::<Arc<Hot>>);
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, hot)) {
            self.state.store(
                if hold_off { HOLDING_OFF } else { CONNECTING },
                Ordering::Release,
            );
            self.hold_off.store(hold_off, Ordering::Release);
            tracing::warn!(
                error = why,
                generation = hot.generation,
                "the Redis connection was dropped: reconnecting in the background"
            );
            self.dropped.notify_one();
        }
    }

    /// The reader task of generation `generation` ended: Redis closed the connection.
    fn closed(&self, generation: u64) {
        let Some(hot) = self.hot.load_full() else {
            return;
        };
        if hot.generation == generation {
            self.counters.closed.fetch_add(1, Ordering::Relaxed);
            self.drop_connection(&hot, false, "Redis closed the connection");
        }
    }

    /// One connection attempt; publishes the connection on success. Every attempt's end is
    /// told to waiting callers.
    pub(super) async fn attempt(this: &Arc<Self>) -> Result<(), String> {
        let number = this.attempts_started.fetch_add(1, Ordering::AcqRel) + 1;
        let within = this.attempt_timeout();
        let result = tokio::time::timeout(within, this.open(this)).await;
        let result = match result {
            Ok(Ok(hot)) => {
                this.consecutive.store(0, Ordering::Relaxed);
                this.failing_since.store(u64::MAX, Ordering::Relaxed);
                this.connections.fetch_add(1, Ordering::Relaxed);
                this.hot.store(Some(Arc::new(hot)));
                this.state.store(CONNECTED, Ordering::Release);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!(
                "connecting to Redis at {} took longer than {} ms",
                this.config.topology,
                within.as_millis()
            )),
        };
        if result.is_err() {
            this.counters
                .failed_attempts
                .fetch_add(1, Ordering::Relaxed);
        }
        this.attempts.send_modify(|n| *n = (*n).max(number));
        result
    }

    /// Opens a connection: on one node (or the Sentinels' master, asked now) the socket, the
    /// handshake (`AUTH`, `SELECT`), the reader task (watched: its end drops the connection),
    /// a `PING` and the registered scripts; on a cluster the cluster connection.
    async fn open(&self, this: &Arc<Self>) -> Result<Hot, String> {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(seeds) = self.target.nodes() {
            // redis-rs connects to every initial node and waits for all: a frozen seed would
            // make every attempt time out. The masters of the last slot map first (a healthy
            // node named them; failed nodes are left out), the seeds if that fails.
            let masters = self.cluster_masters();
            let first = match masters {
                Some(masters) => tokio::time::timeout(
                    self.config.connect_timeout,
                    cluster::connect(&masters, &self.config),
                )
                .await
                .ok()
                .and_then(Result::ok),
                None => None,
            };
            let conn = match first {
                Some(conn) => conn,
                None => cluster::connect(seeds, &self.config).await.map_err(|e| {
                    redact_url(&format!("cannot connect to {}: {e}", self.config.topology))
                        .into_owned()
                })?,
            };
            // The slot map it starts from (for the topology watch and `dedicated_for`).
            let map = shards::fetch(&conn, self.config.connect_timeout)
                .await
                .ok()
                .map(Arc::new);
            if let Some(map) = &map {
                self.shards.store(Some(map.clone()));
            }
            let conn = Conn::cluster(conn, self.cluster_scripts.clone());
            // Scripts are not loaded on every node (a fan-out that fails while one is
            // down): the `Conn` keeps their sources and answers `NOSCRIPT` with `EVAL`.
            let scripts = self.scripts.lock().map(|s| s.clone()).unwrap_or_default();
            let mut c = conn.clone();
            for script in &scripts {
                let _ = script.prepare_invoke().load_async(&mut c).await;
            }
            let hot = Hot::new(conn, generation);
            hot.map.store(map);
            return Ok(hot);
        }
        let info = self.target.resolve(self.config.connect_timeout).await?;
        let where_ = info.addr().to_string();
        let cannot = |e: &dyn fmt::Display| {
            redact_url(&format!(
                "cannot connect to Redis at {} ({where_}): {e}",
                self.config.topology
            ))
            .into_owned()
        };
        let weak = Arc::downgrade(this);
        let conn = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| cannot(&e))?;
                let _ = stream.set_nodelay(true);
                handshake(&info, stream, weak, generation)
                    .await
                    .map_err(|e| cannot(&e))?
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| cannot(&e))?;
                handshake(&info, stream, weak, generation)
                    .await
                    .map_err(|e| cannot(&e))?
            }
            _ => return Err(cannot(&"this kind of address is not supported")),
        };
        let scripts = self.scripts.lock().map(|s| s.clone()).unwrap_or_default();
        let mut c = conn.clone();
        // The handshake may send nothing (no password, database 0): a `PING` proves Redis
        // answers before the connection is handed to callers (a frozen Redis accepts TCP).
        redis::cmd("PING")
            .query_async::<()>(&mut c)
            .await
            .map_err(|e| cannot(&e))?;
        for script in &scripts {
            script
                .prepare_invoke()
                .load_async(&mut c)
                .await
                .map_err(|e| {
                    redact_url(&format!(
                        "cannot load a script into Redis at {}: {e}",
                        self.config.topology
                    ))
                    .into_owned()
                })?;
        }
        let mut hot = Hot::new(Conn::node(conn), generation);
        hot.addr = Some(info.addr().clone());
        Ok(hot)
    }
}

/// The redis-rs handshake on our own socket, with the reader task spawned here so its end is
/// seen: that is how a closed connection is noticed without a request.
async fn handshake<S>(
    info: &redis::ConnectionInfo,
    stream: S,
    link: Weak<Inner>,
    generation: u64,
) -> RedisResult<MultiplexedConnection>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The link bounds every call itself (its budget); no second timeout inside redis-rs.
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    let (conn, driver) =
        MultiplexedConnection::new_with_config(info.redis_settings(), stream, config).await?;
    tokio::spawn(async move {
        driver.await;
        if let Some(inner) = link.upgrade() {
            inner.closed(generation);
        }
    });
    Ok(conn)
}

/// The one task that reconnects (see [`Link`](super::Link)). Holds the link weakly, so dropping the
/// last handle ends it. `switched` (Sentinel: a new master was announced) cuts a hold-off or a
/// backoff delay short: the new master is worth trying now.
pub(super) async fn supervise(
    link: Weak<Inner>,
    dropped: Arc<Notify>,
    demand: Arc<Notify>,
    switched: Arc<Notify>,
) {
    loop {
        // Wait for a drop while connected (no strong handle held while waiting).
        loop {
            let notified = dropped.notified();
            let Some(inner) = link.upgrade() else { return };
            let connected = inner.hot.load().is_some();
            drop(inner);
            if !connected {
                break;
            }
            notified.await;
        }
        let Some(inner) = link.upgrade() else { return };
        let hold_off = inner.hold_off.swap(false, Ordering::AcqRel);
        let pause = inner.config.min_outage;
        let mut delays = inner.config.backoff.delays();
        let demand_interval = inner.config.demand_interval;
        drop(inner);
        if hold_off {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = switched.notified() => {}
            }
        }
        let mut attempts = 0u32;
        loop {
            let Some(inner) = link.upgrade() else { return };
            inner.state.store(CONNECTING, Ordering::Release);
            let started = Instant::now();
            let result = Inner::attempt(&inner).await;
            match result {
                Ok(()) => {
                    tracing::info!(attempts, redis = %inner.config.topology, "Redis answers again: the link is connected");
                    break;
                }
                Err(e) => {
                    attempts += 1;
                    if attempts.is_multiple_of(10) {
                        tracing::warn!(error = %e, attempts, "Redis still unreachable");
                    } else {
                        tracing::debug!(error = %e, attempts, "Redis still unreachable");
                    }
                }
            }
            drop(inner);
            let delay = delays.next_delay();
            let asked = async {
                demand.notified().await;
                tokio::time::sleep_until(started + demand_interval).await;
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = asked => {}
                () = switched.notified() => {}
            }
        }
    }
}
