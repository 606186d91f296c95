//! PostgreSQL: building the router from a [`RouterConfig`], the per-node probes (reachable,
//! `pg_is_in_recovery()`, replay position, lag, timeline), failover and read-your-writes.

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{PoisonError, Weak};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions};
use sqlx::{Connection, Pool, Postgres};
use welcomedly_core::redact::redact_url;

use crate::consistency::{Token, end_of_last_record, format_lsn, parse_lsn};
use crate::node::{NodeState, Nodes};
use crate::router::{Inner, NO_WRITER, Routed, Router, SAMPLES, Settings};
use crate::{Error, RouterConfig};

/// One round trip: role, position (replayed on a replica, flushed on a primary), timeline, on
/// a primary the WAL segment size (to step over page headers in tokens), whether the session is
/// read-only (`default_transaction_read_only`, as a fenced or demoted primary may be set) and
/// whether the schema floor table exists.
const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END)::text, \
    CASE WHEN pg_is_in_recovery() \
         THEN COALESCE((SELECT received_tli::text FROM pg_stat_wal_receiver), '') \
         ELSE substr(pg_walfile_name(pg_current_wal_flush_lsn()), 1, 8) END, \
    CASE WHEN pg_is_in_recovery() THEN 0::int8 \
         ELSE (SELECT setting::int8 FROM pg_settings WHERE name = 'wal_segment_size') END, \
    current_setting('transaction_read_only') = 'on', \
    to_regclass('welcomedly_schema_floor') IS NOT NULL";

/// The schema floor the primary holds (see [`Router::publish_floor`]).
const FLOOR_SQL: &str = "SELECT lsn::text FROM welcomedly_schema_floor WHERE id = 1";

/// Records the primary's current WAL position as the schema floor, never lowering it, in one
/// transaction serialised by an advisory lock (so concurrent first runs do not race on the
/// table's creation). Returns the floor.
const PUBLISH_FLOOR_SQL: [&str; 4] = [
    "SELECT pg_advisory_xact_lock(7243270002)",
    "CREATE TABLE IF NOT EXISTS welcomedly_schema_floor ( \
        id int PRIMARY KEY CHECK (id = 1), \
        lsn pg_lsn NOT NULL, \
        raised_at timestamptz NOT NULL DEFAULT now())",
    "INSERT INTO welcomedly_schema_floor (id, lsn) VALUES (1, pg_current_wal_insert_lsn()) \
        ON CONFLICT (id) DO UPDATE SET lsn = GREATEST(welcomedly_schema_floor.lsn, EXCLUDED.lsn), raised_at = now() \
        RETURNING lsn::text",
    "SELECT pg_notify('welcomedly_schema_floor', '')",
];

/// The channel on which [`Router::publish_floor`] tells every instance's probe of the primary
/// that the floor moved (delivered when its transaction commits).
const FLOOR_CHANNEL: &str = "welcomedly_schema_floor";

/// The writer's insert position (stepped back over a page header) and its timeline.
const TOKEN_SQL: &str = "SELECT pg_current_wal_insert_lsn()::text, \
    substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8)";

const REPLAY_SQL: &str = "SELECT pg_last_wal_replay_lsn()::text";

/// How often (at most) one node's replay position is checked on the spot by waiting readers;
/// concurrent waiters share the answer.
const SPOT_CHECK_EVERY_MICROS: u64 = 1_000;

#[derive(Debug, Clone, Copy)]
struct Probe {
    in_recovery: bool,
    /// Out of recovery but read-only (`default_transaction_read_only`): takes no writes.
    read_only: bool,
    position: u64,
    /// 0 when unknown (no WAL receiver visible to this role).
    timeline: u32,
    /// The schema floor the node holds (a primary only), 0 when none.
    floor: u64,
}

/// The probe's own connection: a one-connection pool and a listener on it, so that the
/// connection closing (the server died or shut down) wakes the probe at once instead of
/// waiting for the next tick.
struct ProbeConn {
    _pool: Pool<Postgres>,
    listener: PgListener,
    /// Listening for floor changes (on a node that takes writes).
    listening: bool,
}

impl RouterConfig {
    /// Builds the router: one lazily connected pool per node, one probe task per node, and a
    /// first probe round (bounded by [`probe_timeout`](Self::probe_timeout)) so that the router
    /// knows which nodes answer when this returns. Unreachable nodes are not an error: the
    /// router starts without them (reads go to the primary when no replica answers) and takes
    /// them in once their probes succeed. Must run inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// A URL is not a valid PostgreSQL URL, or a setting is out of range.
    pub async fn connect(self) -> Result<Router<Postgres>, Error> {
        self.validate()?;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(Error::config(
                "the database router must be built inside a tokio runtime (it probes its nodes in the background)",
            ));
        };
        let mut nodes = Vec::with_capacity(1 + self.replica_urls.len());
        let mut options = Vec::with_capacity(1 + self.replica_urls.len());
        let all = std::iter::once(("primary".to_owned(), &self.primary_url, false)).chain(
            self.replica_urls
                .iter()
                .enumerate()
                .map(|(i, u)| (format!("replica {i}"), u, true)),
        );
        for (label, url, replica) in all {
            let redacted = redact_url(url).into_owned();
            let opts = PgConnectOptions::from_str(url).map_err(|e| {
                Error::config_with(
                    format!(
                        "cannot use {redacted:?} as the {label}'s URL: expected postgres://[user[:password]@]host[:port]/database"
                    ),
                    redact_url(&e.to_string()).into_owned(),
                )
            })?;
            let pool = PgPoolOptions::new()
                .max_connections(self.max_connections)
                .acquire_timeout(self.acquire_timeout)
                .connect_lazy_with(opts.clone());
            nodes.push(NodeState::new(label, redacted, pool, replica, false));
            options.push(opts);
        }
        let mut nodes = nodes.into_iter();
        let Some(primary) = nodes.next() else {
            // The chain above always yields the primary first.
            return Err(Error::config("the database router needs a primary URL"));
        };
        let router =
            Router::from_nodes(Nodes::new(primary, nodes.collect()), Settings::from(&self));
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(options.len().max(1));
        let mut tasks = Vec::with_capacity(options.len());
        for (index, opts) in options.into_iter().enumerate() {
            let task = runtime.spawn(probe_loop(
                std::sync::Arc::downgrade(&router.inner),
                index,
                opts,
                done_tx.clone(),
            ));
            tasks.push(task.abort_handle());
        }
        drop(done_tx);
        router.inner.probed.store(true, Ordering::Release);
        *router
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = tasks;
        // Each task reports once its first probe is in (or timed out).
        let first_round = self.probe_timeout + Duration::from_millis(50);
        let _ = tokio::time::timeout(first_round, async {
            while done_rx.recv().await.is_some() {}
        })
        .await;
        Ok(router)
    }
}

async fn probe_loop(
    inner: Weak<Inner<Postgres>>,
    index: usize,
    opts: PgConnectOptions,
    first: tokio::sync::mpsc::Sender<()>,
) {
    let mut first = Some(first);
    let mut conn: Option<ProbeConn> = None;
    // The node failed or its connection closed: the next connection attempt must fail fast.
    let mut lost = false;
    let mut delay = Duration::ZERO;
    let Some(reprobe) = inner.upgrade().map(|i| i.reprobe.clone()) else {
        return;
    };
    loop {
        // Armed before the probe, so a request for a new probe made meanwhile is not lost.
        let woken = reprobe.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let settings = strong.settings.clone();
        let started = Instant::now();
        let outcome = match tokio::time::timeout(
            settings.probe_timeout,
            probe_once(&mut conn, &opts, settings.probe_timeout, lost),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "the health probe got no answer within {} ms",
                settings.probe_timeout.as_millis()
            )),
        };
        let outcome = outcome.map(|(probe, segment)| {
            if let Some(size) = segment {
                strong.segment_size.store(size, Ordering::Relaxed);
            }
            probe
        });
        let failed = outcome.is_err();
        lost = failed;
        if failed {
            // A new connection next time: this one may be half-dead.
            conn = None;
        }
        if strong.apply_probe(index, outcome) {
            // The node changed role: a fresh connection (a DNS name may point elsewhere now).
            conn = None;
        }
        let still_in = strong.nodes.get(index).is_some_and(NodeState::is_healthy);
        drop(strong);
        if let Some(tx) = first.take() {
            let _ = tx.try_send(());
        }
        delay = if failed && still_in {
            // Failing but not ejected yet: confirm quickly, so a dead node leaves rotation
            // about one interval after it died rather than K intervals.
            (settings.probe_interval / 10).max(Duration::from_millis(10))
        } else if failed {
            // Back off while it keeps failing, so a long-dead node is not hammered; the
            // first retry comes after one interval.
            (delay.max(settings.probe_interval / 2) * 2).min(settings.max_probe_backoff)
        } else {
            settings.probe_interval
        };
        // 80–100 % of the delay: instances do not probe in lockstep, and never slower than
        // configured.
        let sleep = tokio::time::sleep(delay.mul_f64(0.8 + fastrand::f64() * 0.2));
        tokio::select! {
            () = sleep => {}
            () = &mut woken => {
                // Asked to probe now: at most one probe per node every few milliseconds,
                // however many requests ask.
                tokio::time::sleep_until((started + MIN_PROBE_GAP).into()).await;
            }
            closed = closed(&mut conn) => {
                if closed {
                    conn = None;
                    lost = true;
                }
                tokio::time::sleep_until((started + MIN_PROBE_GAP).into()).await;
            }
        }
    }
}

/// The shortest time between two probes of one node when requests ask for probes.
const MIN_PROBE_GAP: Duration = Duration::from_millis(5);

/// Waits until the probe connection says something while idle: it closed or the server sent
/// an error (the server is going away) — `true`, drop it — or a notification (the schema
/// floor moved: probe now, which reads it) — `false`. Never returns without a connection.
async fn closed(conn: &mut Option<ProbeConn>) -> bool {
    match conn.as_mut() {
        Some(c) => !matches!(c.listener.try_recv().await, Ok(Some(_))),
        None => std::future::pending().await,
    }
}

async fn probe_once(
    conn: &mut Option<ProbeConn>,
    opts: &PgConnectOptions,
    timeout: Duration,
    lost: bool,
) -> Result<(Probe, Option<u64>), String> {
    if conn.is_none() {
        if lost {
            // After a failure or a closed connection, a direct connection first: a pool
            // retries a refused connection until its acquire timeout, and a dead node must
            // fail its probe at once.
            let direct = PgConnection::connect_with(opts)
                .await
                .map_err(|e| format!("cannot connect: {}", redact_url(&e.to_string())))?;
            let _ = direct.close().await;
        }
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(timeout)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(opts.clone());
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(|e| format!("cannot connect: {}", redact_url(&e.to_string())))?;
        listener.ignore_pool_close_event(true);
        listener.eager_reconnect(false);
        *conn = Some(ProbeConn {
            _pool: pool,
            listener,
            listening: false,
        });
    }
    let Some(c) = conn.as_mut() else {
        return Err("no probe connection".to_owned());
    };
    let (in_recovery, position, timeline, segment, read_only, has_floor): (
        bool,
        Option<String>,
        Option<String>,
        Option<i64>,
        bool,
        bool,
    ) = sqlx::query_as(PROBE_SQL)
        .fetch_one(&mut c.listener)
        .await
        .map_err(|e| format!("the health probe failed: {}", redact_url(&e.to_string())))?;
    if !in_recovery && !read_only && !c.listening {
        // A primary: hear floor changes as they commit (a standby refuses LISTEN). Best
        // effort: without it the floor is still read at every probe.
        match c.listener.listen(FLOOR_CHANNEL).await {
            Ok(()) => c.listening = true,
            Err(e) => {
                tracing::debug!(error = %redact_url(&e.to_string()), "cannot listen for schema floor changes: read at each probe instead")
            }
        }
    }
    let floor = if has_floor && !in_recovery {
        let floor: Option<(Option<String>,)> = sqlx::query_as(FLOOR_SQL)
            .fetch_optional(&mut c.listener)
            .await
            .map_err(|e| {
                format!(
                    "the health probe could not read the schema floor: {}",
                    redact_url(&e.to_string())
                )
            })?;
        floor
            .and_then(|(lsn,)| lsn)
            .as_deref()
            .and_then(parse_lsn)
            .unwrap_or(0)
    } else {
        0
    };
    let position = position.as_deref().and_then(parse_lsn).unwrap_or(0);
    let timeline = timeline
        .as_deref()
        .and_then(|t| {
            if in_recovery {
                t.parse::<u32>().ok()
            } else {
                u32::from_str_radix(t, 16).ok()
            }
        })
        .unwrap_or(0);
    let segment = segment
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0);
    Ok((
        Probe {
            in_recovery,
            read_only,
            position,
            timeline,
            floor,
        },
        segment,
    ))
}

impl Inner<Postgres> {
    /// Applies one probe's outcome; `true` when the node changed role (promoted, demoted, set
    /// read-only), so the probe reconnects.
    fn apply_probe(&self, index: usize, outcome: Result<Probe, String>) -> bool {
        let Some(node) = self.nodes.get(index) else {
            return false;
        };
        let probe = match outcome {
            Ok(probe) => probe,
            Err(error) => {
                let t = node.failed(error, self.settings.failure_threshold);
                self.log_transition(index, t);
                return false;
            }
        };
        if probe.floor > self.floor.load(Ordering::Acquire) {
            let before = self.floor.fetch_max(probe.floor, Ordering::AcqRel);
            if probe.floor > before {
                tracing::info!(node = %node.label, floor = %format_lsn(probe.floor), "database schema floor raised by the primary: replicas serve reads once they have replayed it");
            }
        }
        let was_replica = node.in_recovery();
        // A primary set read-only takes no writes: for routing it is a replica.
        let reads_only = probe.in_recovery || probe.read_only;
        node.set_in_recovery(reads_only);
        node.timeline.store(probe.timeline, Ordering::Release);
        let writer = self.writer.load(Ordering::Acquire);
        if !reads_only {
            node.position.store(probe.position, Ordering::Release);
            node.lag_bytes.store(0, Ordering::Relaxed);
            node.lag_micros.store(0, Ordering::Relaxed);
            let t = node.succeeded(self.settings.recovery_threshold);
            self.log_transition(index, t);
            if was_replica {
                tracing::warn!(node = %node.label, url = %node.url, timeline = probe.timeline, "database node left recovery (promoted)");
            }
            self.consider_writer(index, probe.timeline);
            if self.writer.load(Ordering::Acquire) == index {
                self.sample(probe.position);
            }
            return was_replica;
        }
        if writer == index {
            // The writer went into recovery (demoted, or a standby started in its place) or
            // was set read-only: no more writes to it; another node that takes writes takes
            // over, and every node is probed at once to find it.
            self.writer.store(NO_WRITER, Ordering::Release);
            self.stats.writer_changes.fetch_add(1, Ordering::Relaxed);
            self.writer_moved.notify_waiters();
            self.reprobe_all();
            tracing::warn!(node = %node.label, url = %node.url, in_recovery = probe.in_recovery, "the database writer no longer takes writes (in recovery or read-only): writes fail until a node accepts them");
        }
        let (lag_bytes, lag) = self.lag_of(probe.position, probe.timeline);
        node.lag_bytes.store(lag_bytes, Ordering::Relaxed);
        node.lag_micros.store(
            u64::try_from(lag.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let t = if lag_bytes > self.settings.max_lag_bytes || lag > self.settings.max_lag {
            node.lagging(format!(
                "{lag_bytes} bytes and {} ms behind the primary (bounds {} bytes, {} ms)",
                lag.as_millis(),
                self.settings.max_lag_bytes,
                self.settings.max_lag.as_millis()
            ))
        } else {
            // Probes set the position (it may have gone back after a crash restart); spot
            // checks only move it forward.
            let t = node.succeeded(self.settings.recovery_threshold);
            if node.is_healthy() {
                node.position.store(probe.position, Ordering::Release);
            }
            t
        };
        self.log_transition(index, t);
        !was_replica
    }

    /// `index` is out of recovery on `timeline`: it takes the writes unless the current writer
    /// is healthy, out of recovery and on a timeline at least as new. A node on a timeline
    /// older than the newest seen is fenced: it never takes writes again (an old primary left
    /// running after a replica was promoted).
    fn consider_writer(&self, index: usize, timeline: u32) {
        let w = self.writer.load(Ordering::Acquire);
        let newest = if timeline > 0 {
            self.newest_timeline
                .fetch_max(timeline, Ordering::AcqRel)
                .max(timeline)
        } else {
            self.newest_timeline.load(Ordering::Acquire)
        };
        let Some(node) = self.nodes.get(index) else {
            return;
        };
        if timeline != 0 && timeline < newest {
            if w == index {
                self.writer.store(NO_WRITER, Ordering::Release);
                self.stats.writer_changes.fetch_add(1, Ordering::Relaxed);
                self.writer_moved.notify_waiters();
                self.reprobe_all();
                tracing::warn!(node = %node.label, url = %node.url, timeline, newest, "database node fenced: it is a primary on an older timeline than one already seen; it takes no more writes");
            }
            return;
        }
        if w == index {
            return;
        }
        let keep = self.nodes.get(w).is_some_and(|cur| {
            cur.is_healthy()
                && !cur.in_recovery()
                && cur.timeline.load(Ordering::Acquire) >= timeline
        });
        if keep || !node.is_healthy() {
            return;
        }
        self.writer.store(index, Ordering::Release);
        self.stats.writer_changes.fetch_add(1, Ordering::Relaxed);
        self.writer_moved.notify_waiters();
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        if w != NO_WRITER || index != 0 {
            tracing::warn!(node = %node.label, url = %node.url, timeline, "writes now go to this database node");
        }
    }

    fn sample(&self, position: u64) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.back().is_some_and(|(_, p)| *p >= position) {
            return;
        }
        if samples.len() >= SAMPLES {
            samples.pop_front();
        }
        samples.push_back((Instant::now(), position));
    }

    /// How far a replica at `position` is behind the writer: bytes, and how long ago the writer
    /// first passed that position (as far as its probes saw).
    fn lag_of(&self, position: u64, timeline: u32) -> (u64, Duration) {
        let w = self.writer.load(Ordering::Acquire);
        // Measured against a live writer on the same timeline only: with the primary down,
        // the replicas hold all there is, and ejecting them for "lag" would fail every read.
        let comparable = self.nodes.get(w).is_some_and(|n| {
            let t = n.timeline.load(Ordering::Acquire);
            n.is_healthy() && (t == 0 || timeline == 0 || t == timeline)
        });
        if !comparable {
            return (0, Duration::ZERO);
        }
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((_, newest)) = samples.back() else {
            return (0, Duration::ZERO);
        };
        let bytes = newest.saturating_sub(position);
        if bytes == 0 {
            return (0, Duration::ZERO);
        }
        let since = samples
            .iter()
            .find(|(_, p)| *p > position)
            .map_or(Duration::ZERO, |(t, _)| t.elapsed());
        (bytes, since)
    }

    /// Checks on the spot how far `index` has replayed, unless another caller did within the
    /// last millisecond.
    async fn spot_check(&self, index: usize, budget: Duration) {
        let Some(node) = self.nodes.get(index) else {
            return;
        };
        let now = self.micros_since_start();
        let last = node.last_spot_check.load(Ordering::Acquire);
        if now.saturating_sub(last) < SPOT_CHECK_EVERY_MICROS
            || node
                .last_spot_check
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let query = sqlx::query_as::<_, (Option<String>,)>(REPLAY_SQL).fetch_one(&node.pool);
        match tokio::time::timeout(budget, query).await {
            Ok(Ok((Some(lsn),))) => {
                if let Some(p) = parse_lsn(&lsn)
                    && node.is_healthy()
                {
                    node.position.fetch_max(p, Ordering::AcqRel);
                }
            }
            Ok(Err(e)) => self.query_failed(index, &e),
            Ok(Ok((None,))) | Err(_) => {}
        }
    }
}

impl Router<Postgres> {
    /// Records the primary's current WAL position as the schema floor, on the primary itself
    /// (table `welcomedly_schema_floor`, created on first use, never lowered), and raises this
    /// router's floor to it ([`raise_floor`](Router::raise_floor)). Call it after migrations
    /// ran (or after any schema change made while instances serve): from then on no read goes
    /// to a replica that has not replayed the change, on this instance at once, and on every
    /// other instance from its next probe of the primary (they read the floor at start-up
    /// too). Returns the floor.
    ///
    /// # Errors
    ///
    /// No node takes writes, or the statements failed (the role needs `CREATE` on the
    /// schema the first time).
    pub async fn publish_floor(&self) -> Result<u64, Error> {
        let lsn = self
            .write_with(async |conn| {
                let mut tx = conn.begin().await?;
                sqlx::query(PUBLISH_FLOOR_SQL[0]).execute(&mut *tx).await?;
                sqlx::query(PUBLISH_FLOOR_SQL[1]).execute(&mut *tx).await?;
                let (lsn,): (String,) = sqlx::query_as(PUBLISH_FLOOR_SQL[2])
                    .fetch_one(&mut *tx)
                    .await?;
                sqlx::query(PUBLISH_FLOOR_SQL[3]).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(lsn)
            })
            .await?;
        let Some(lsn) = parse_lsn(&lsn) else {
            return Err(Error::no_writer(format!(
                "the database writer answered the schema floor update with {lsn:?}, not a WAL position: check that it is PostgreSQL 10 or later"
            )));
        };
        self.raise_floor(lsn);
        Ok(lsn)
    }

    /// The consistency token of everything committed so far on the node taking writes: call it
    /// after a write commits and hand it to [`read_after`](Self::read_after) (or to the
    /// [`ConsistencyLayer`](crate::ConsistencyLayer)'s handle). It is the writer's WAL insert
    /// position, which is past the commit record even under `synchronous_commit = off` (where
    /// `pg_current_wal_lsn()` can still precede it), stepped back over a page header so that a
    /// replica of an idle primary reaches it, with the writer's timeline.
    ///
    /// # Errors
    ///
    /// No node takes writes, or the query failed.
    pub async fn token(&self) -> Result<Token, Error> {
        let routed = self.write()?;
        let index = routed.index();
        let result: Result<(Option<String>, Option<String>), sqlx::Error> =
            sqlx::query_as(TOKEN_SQL).fetch_one(routed.pool()).await;
        drop(routed);
        match result {
            Ok((Some(lsn), Some(tl))) => {
                let (Some(lsn), Ok(timeline)) = (parse_lsn(&lsn), u32::from_str_radix(&tl, 16))
                else {
                    return Err(Error::no_writer(
                        "the database writer answered the token query with an unexpected value: check that it is PostgreSQL 10 or later",
                    ));
                };
                let lsn = end_of_last_record(lsn, self.inner.segment_size.load(Ordering::Relaxed));
                Ok(Token::new(timeline, lsn))
            }
            Ok(_) => Err(Error::no_writer(
                "the database writer gave no WAL position: it may have just gone into recovery; retry",
            )),
            Err(e) => {
                self.inner.query_failed(index, &e);
                Err(Error::database(
                    "could not read the database writer's WAL position for the consistency token: check that it is reachable",
                    e,
                ))
            }
        }
    }

    /// A node that has replayed `token` (the caller's last write): a healthy replica that has
    /// (known from the probes or checked on the spot), else one that gets there within
    /// [`read_after_wait`](RouterConfig::read_after_wait), else the writer. Never a node that
    /// has not replayed the token, and never one on another timeline. Without a token, the
    /// same for the schema floor ([`Router::raise_floor`]): a replica that has not replayed it
    /// is waited for, then skipped; without a token and without a floor this is
    /// [`read`](Router::read).
    ///
    /// A replica's timeline is read from `pg_stat_wal_receiver`: a role that cannot see it
    /// (neither superuser nor `pg_read_all_stats`) leaves it unknown, and such a replica never
    /// satisfies a token (those reads go to the primary, still never stale).
    pub async fn read_after(&self, token: Option<&Token>) -> Routed<'_, Postgres> {
        let inner = &*self.inner;
        if token.is_none() && inner.floor.load(Ordering::Acquire) == 0 {
            return self.read();
        }
        if let Some(i) = inner.pick_replica(None, token) {
            inner.stats.ryw_replica.fetch_add(1, Ordering::Relaxed);
            return inner.read_on(i, true);
        }
        let deadline = Instant::now() + inner.settings.read_after_wait;
        let wait_micros =
            u64::try_from(inner.settings.read_after_wait.as_micros()).unwrap_or(u64::MAX);
        loop {
            let writer = inner.writer.load(Ordering::Acquire);
            let mut candidates = false;
            for (i, n) in inner.nodes.iter().enumerate() {
                // A replica known to be further behind than the wait bound will not make it:
                // waiting for it would only delay the read.
                if i == writer
                    || !n.is_usable_replica()
                    || token.is_some_and(|t| n.timeline.load(Ordering::Acquire) != t.timeline())
                    || n.lag_micros.load(Ordering::Relaxed) > wait_micros
                {
                    continue;
                }
                candidates = true;
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                inner.spot_check(i, left).await;
            }
            if let Some(i) = inner.pick_replica(None, token) {
                inner.stats.ryw_waited.fetch_add(1, Ordering::Relaxed);
                return inner.read_on(i, true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !candidates || left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(Duration::from_millis(1))).await;
        }
        inner.stats.ryw_primary.fetch_add(1, Ordering::Relaxed);
        let w = inner.writer.load(Ordering::Acquire);
        // The writer has every committed write: read there even if it is failing (the query
        // then reports why) rather than from a node that may not have the token.
        let index = if inner.nodes.get(w).is_some() { w } else { 0 };
        inner.read_on(index, false)
    }

    /// [`read_after`](Self::read_after) with [`read_with`](Router::read_with)'s retry: a
    /// connection-level error is retried once on another node that has replayed `token` (or
    /// the writer).
    ///
    /// # Errors
    ///
    /// What `f` returned (the retry's error when it was retried).
    pub async fn read_after_with<T, F, Fut>(
        &self,
        token: Option<&Token>,
        f: F,
    ) -> Result<T, sqlx::Error>
    where
        F: FnMut(Pool<Postgres>) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let first = self.read_after(token).await;
        self.inner.run_with_retry(first, token, f).await
    }
}
