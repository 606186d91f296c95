//! [`Membership`]: the handle a service keeps; its state shared with the heartbeat task.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use redis::Script;
use redis::aio::MultiplexedConnection;
use tokio::sync::broadcast;
use welcomedly_core::InstanceId;
use welcomedly_core::drain::DrainSignal;
use welcomedly_core::health::{CheckFuture, CheckOutcome, HealthCheck};

use super::config::MembershipConfig;
use super::heartbeat;
use super::member::{Description, Member, parse_list};
use super::presence::{ClusterPresence, PresenceDiff, PresenceGuard, PresenceShared};
use super::script;
use crate::Error;
use crate::rate_limit::LiveInstances;

/// The Redis key names of one membership.
#[derive(Debug)]
pub(crate) struct Keys {
    pub(crate) members: String,
    pub(crate) info: String,
    pub(crate) own_presence: String,
    prefix: String,
}

impl Keys {
    fn new(prefix: &str, instance: &str) -> Self {
        Self {
            members: format!("{{{prefix}}}:members"),
            info: format!("{{{prefix}}}:info"),
            own_presence: format!("{{{prefix}}}:presence:{instance}"),
            prefix: prefix.to_owned(),
        }
    }

    /// The presence hash of `instance` (an id read from the members set: bounded by the
    /// instance that wrote it).
    pub(crate) fn presence_of(&self, instance: &str) -> String {
        format!("{{{}}}:presence:{instance}", self.prefix)
    }
}

pub(crate) struct Scripts {
    pub(crate) heartbeat: Script,
    pub(crate) reap: Script,
    list: Script,
    leave: Script,
}

pub(crate) struct Inner {
    pub(crate) pool: deadpool_redis::Pool,
    /// The one connection membership uses; only the heartbeat task replaces it.
    pub(crate) hot: ArcSwapOption<MultiplexedConnection>,
    pub(crate) id: InstanceId,
    pub(crate) keys: Keys,
    pub(crate) scripts: Scripts,
    /// This instance's description (JSON), written on every heartbeat so a restarted Redis
    /// learns it again.
    pub(crate) description: String,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) budget: Duration,
    pub(crate) failure_threshold: u32,
    pub(crate) reconnect_interval: Duration,
    pub(crate) max_reconnect_interval: Duration,
    /// Safety-net TTL of the presence hash: a reaper normally deletes it at once; this bounds
    /// its life if every instance died.
    pub(crate) presence_ttl: Duration,
    pub(crate) presence: Arc<PresenceShared>,
    live: LiveInstances,
    fed: Mutex<Vec<LiveInstances>>,
    /// The live count of the last heartbeat, 0 before the first.
    last_count: AtomicU32,
    pub(crate) degraded: AtomicBool,
    pub(crate) degraded_reason: Mutex<String>,
    /// Listed at least once: a later `joined` from the heartbeat is a rejoin.
    pub(crate) listed: AtomicBool,
    left: AtomicBool,
    pub(crate) heartbeats: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) reaped: AtomicU64,
    worker: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Instances this one reaped whose presences are still to be taken and announced (retried
    /// at the next heartbeat when Redis failed in between).
    pub(crate) pending_reaps: Mutex<Vec<String>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropped without `leave()`: stop heartbeating, like a crash. The others drop this
        // instance after the timeout; a destructor cannot do I/O reliably (the runtime may be
        // shutting down), so leaving at once is `leave()`'s job.
        if let Some(task) = self
            .worker
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl Inner {
    pub(crate) async fn connect(&self) -> Result<MultiplexedConnection, Error> {
        let timeout = self.budget.max(Duration::from_secs(1));
        let conn = tokio::time::timeout(timeout, self.pool.get())
            .await
            .map_err(|e| {
                Error::redis(
                    format!(
                        "connecting to Redis for membership timed out after {} ms: check that Redis runs and is reachable",
                        timeout.as_millis()
                    ),
                    e,
                )
            })?
            .map_err(|e| {
                Error::redis(
                    "cannot connect to Redis for membership: check that Redis runs and is reachable",
                    e,
                )
            })?;
        self.connections.fetch_add(1, Ordering::Relaxed);
        Ok(deadpool_redis::Connection::take(conn))
    }

    fn conn(&self) -> Result<MultiplexedConnection, Error> {
        self.hot.load_full().map(|c| (*c).clone()).ok_or_else(|| {
            Error::redis(
                "membership is not connected to Redis (it reconnects in the background): try again later",
                "no connection",
            )
        })
    }

    /// Sets the live count on this membership's handle and every fed one.
    pub(crate) fn set_live(&self, n: u32) {
        let n = n.max(1);
        self.last_count.store(n, Ordering::Relaxed);
        self.live.set(n);
        for l in self
            .fed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            l.set(n);
        }
    }

    pub(crate) fn set_degraded(&self, reason: String) {
        *self
            .degraded_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = reason;
        self.degraded.store(true, Ordering::Release);
    }

    pub(crate) fn is_left(&self) -> bool {
        self.left.load(Ordering::Acquire)
    }
}

/// Redis's answer within `budget`, or an error that says which call failed and what to do.
pub(crate) async fn within<T>(
    budget: Duration,
    what: &str,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, Error> {
    match tokio::time::timeout(budget, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e))
            if matches!(
                e.kind(),
                redis::ErrorKind::Server(_)
                    | redis::ErrorKind::Extension
                    | redis::ErrorKind::Parse
                    | redis::ErrorKind::UnexpectedReturnType
            ) =>
        {
            Err(Error::redis(
                format!(
                    "Redis refused {what}: check that nothing else writes keys under the membership prefix and that Redis accepts writes (not a replica, not out of memory)"
                ),
                e,
            ))
        }
        Ok(Err(e)) => Err(Error::redis(
            format!("{what} failed: check that Redis runs and is reachable"),
            e,
        )),
        Err(e) => Err(Error::redis(
            format!(
                "{what} took longer than the {} ms budget: Redis is slow or unreachable",
                budget.as_millis()
            ),
            e,
        )),
    }
}

/// This instance's membership of the cluster: heartbeats into Redis, lists the live instances,
/// and tracks who is connected here (presence). Cloning is cheap and shares the heartbeat.
///
/// Built by [`MembershipConfig::build`] or [`Membership::from_pool`]. Call
/// [`leave`](Self::leave) at drain; dropping the last clone without it stops the heartbeat and
/// the others drop this instance after the timeout, as after a crash.
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

impl Membership {
    /// The membership of `instance` over an existing deadpool-redis pool (shared with the rate
    /// limiter, sessions and the event bus): validates the settings, tries a first heartbeat
    /// (so the instance is listed when this returns), then heartbeats in the background. An
    /// unreachable Redis is not an error: it starts degraded and keeps trying.
    ///
    /// # Errors
    ///
    /// Invalid settings or instance id, or no tokio runtime.
    pub async fn from_pool(
        pool: deadpool_redis::Pool,
        config: MembershipConfig,
        instance: InstanceId,
    ) -> Result<Self, Error> {
        config.validate(&instance)?;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(Error::invalid(
                "Membership must be built inside a tokio runtime (it heartbeats in the background)",
            ));
        };
        let started_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let description = serde_json::to_string(&Description {
            started_at_ms,
            timeout_ms: millis(config.timeout),
            metadata: config.metadata.clone(),
        })
        .map_err(|e| Error::config("cannot encode the membership metadata as JSON", e))?;
        let presence = PresenceShared::new(
            instance.as_str().to_owned(),
            config.diff_capacity,
            config.max_presence_key_len,
            config.max_presences,
        );
        let inner = Arc::new(Inner {
            pool,
            hot: ArcSwapOption::empty(),
            keys: Keys::new(&config.key_prefix, instance.as_str()),
            id: instance,
            scripts: Scripts {
                heartbeat: Script::new(script::HEARTBEAT),
                reap: Script::new(script::REAP),
                list: Script::new(script::LIST),
                leave: Script::new(script::LEAVE),
            },
            description,
            interval: config.heartbeat_interval,
            timeout: config.timeout,
            budget: config.budget,
            failure_threshold: config.failure_threshold.max(1),
            reconnect_interval: config.reconnect_interval,
            max_reconnect_interval: config.max_reconnect_interval.max(config.reconnect_interval),
            presence_ttl: config
                .timeout
                .saturating_mul(10)
                .max(Duration::from_secs(30)),
            presence,
            live: LiveInstances::new(1),
            fed: Mutex::new(Vec::new()),
            last_count: AtomicU32::new(0),
            degraded: AtomicBool::new(true),
            degraded_reason: Mutex::new("no heartbeat yet".to_owned()),
            listed: AtomicBool::new(false),
            left: AtomicBool::new(false),
            heartbeats: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            reaped: AtomicU64::new(0),
            worker: Mutex::new(None),
            pending_reaps: Mutex::new(Vec::new()),
        });
        match inner.connect().await {
            Ok(conn) => {
                inner.hot.store(Some(Arc::new(conn)));
                if let Err(e) = heartbeat::beat(&inner).await {
                    inner.failures.fetch_add(1, Ordering::Relaxed);
                    inner.set_degraded(e.to_string());
                    tracing::warn!(error = %e, instance = %inner.id, "first membership heartbeat failed: retrying in the background");
                }
            }
            Err(e) => {
                inner.set_degraded(e.to_string());
                tracing::warn!(error = %e, instance = %inner.id, "Redis is unreachable: this instance is not listed as a member until it answers");
            }
        }
        let task = runtime.spawn(heartbeat::run(Arc::downgrade(&inner)));
        *inner.worker.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(Self { inner })
    }

    /// This instance's id.
    pub fn instance(&self) -> &InstanceId {
        &self.inner.id
    }

    /// The live instances, sorted by id: one round trip (a read-only script that filters the
    /// members sorted set by Redis's current time, so an instance past its timeout is not
    /// listed even before it is reaped).
    ///
    /// # Errors
    ///
    /// Redis is unreachable or slower than the budget.
    pub async fn members(&self) -> Result<Vec<Member>, Error> {
        let inner = &self.inner;
        let mut conn = inner.conn()?;
        let mut invocation = inner.scripts.list.key(&inner.keys.members);
        invocation.key(&inner.keys.info);
        let reply: Vec<String> = within(
            inner.budget,
            "listing the cluster members",
            invocation.invoke_async(&mut conn),
        )
        .await?;
        let (_, mut members) = parse_list(&reply).ok_or_else(|| {
            Error::redis(
                "the member list came back in an unexpected shape: check that nothing else writes under the membership prefix",
                "unexpected reply",
            )
        })?;
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(members)
    }

    /// Every presence of every live instance: two round trips (the live members, then one
    /// `HKEYS` per live instance, pipelined), never a `SCAN`. A dead or departed instance's
    /// presences are not in it, even before they are reaped. This instance's own are read from
    /// its table (exact at once; Redis learns them a moment later).
    ///
    /// # Errors
    ///
    /// Redis is unreachable or slower than the budget.
    pub async fn cluster_presence(&self) -> Result<ClusterPresence, Error> {
        let members = self.members().await?;
        let inner = &self.inner;
        let mut out = ClusterPresence::default();
        if members.is_empty() {
            return Ok(out);
        }
        let mut pipe = redis::pipe();
        for m in &members {
            pipe.cmd("HKEYS").arg(inner.keys.presence_of(&m.id));
        }
        let mut conn = inner.conn()?;
        let sets: Vec<Vec<String>> = within(
            inner.budget,
            "reading the presences of the live members",
            pipe.query_async(&mut conn),
        )
        .await?;
        let here = inner.id.as_str();
        for (m, keys) in members.iter().zip(sets) {
            // This instance's own presences come from its table, not from Redis, where a join
            // or a leave is written a moment after it happened.
            if m.id == here {
                for (key, _) in inner.presence.local() {
                    out.insert(key, here);
                }
                continue;
            }
            for key in keys {
                out.insert(key, &m.id);
            }
        }
        Ok(out)
    }

    /// Marks `key` (an app-chosen id such as `agent:42`) present on this instance for as long
    /// as the returned guard lives. Several connections of one key are counted: the key stays
    /// present until the last guard is dropped. The first connection broadcasts a
    /// [`Joined`](super::PresenceChange::Joined) diff at once; Redis is written in the
    /// background (right away, and again after an outage), so this never waits for Redis.
    ///
    /// # Errors
    ///
    /// The key is empty or longer than
    /// [`max_presence_key_len`](MembershipConfig::max_presence_key_len), this instance already
    /// holds [`max_presences`](MembershipConfig::max_presences) keys, or it has left.
    pub fn join(&self, key: impl Into<String>) -> Result<PresenceGuard, Error> {
        self.inner.presence.join(key.into())
    }

    /// This instance's presence keys with their connection counts, sorted.
    pub fn local_presence(&self) -> Vec<(String, u32)> {
        self.inner.presence.local()
    }

    /// A receiver of presence diffs: this instance's joins and leaves, its leaving, its rejoin
    /// after an outage, and the presences of instances this instance reaped after they died
    /// (exactly one survivor reaps a dead instance, so each of those is announced once).
    ///
    /// These are local (a tokio broadcast); forward them to the event bus so every instance's
    /// subscribers see every change:
    ///
    /// ```no_run
    /// # async fn run(
    /// #     membership: welcomedly_cluster::membership::Membership,
    /// #     bus: welcomedly_cluster::bus::Bus,
    /// # ) -> Result<(), welcomedly_cluster::Error> {
    /// use tokio::sync::broadcast::error::RecvError;
    /// use welcomedly_cluster::bus::Topic;
    /// use welcomedly_cluster::membership::PresenceDiff;
    ///
    /// let topic = Topic::<PresenceDiff>::ephemeral("presence")?;
    /// let mut diffs = membership.presence_diffs();
    /// tokio::spawn(async move {
    ///     loop {
    ///         match diffs.recv().await {
    ///             Ok(diff) => {
    ///                 if let Err(e) = bus.publish(&topic, &diff).await {
    ///                     tracing::warn!(error = %e, "a presence diff was not published");
    ///                 }
    ///             }
    ///             Err(RecvError::Lagged(n)) => tracing::warn!(n, "presence diffs lost"),
    ///             Err(RecvError::Closed) => break,
    ///         }
    ///     }
    /// });
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A subscriber slower than [`diff_capacity`](MembershipConfig::diff_capacity) diffs gets
    /// `RecvError::Lagged(n)`: a state rebuilt from diffs should then reload
    /// [`cluster_presence`](Self::cluster_presence).
    pub fn presence_diffs(&self) -> broadcast::Receiver<PresenceDiff> {
        self.inner.presence.subscribe()
    }

    /// Leaves the cluster at once (call it when draining starts): stops the heartbeat, removes
    /// this instance and its presences from Redis in one call, and broadcasts a
    /// [`InstanceLeft`](super::PresenceCause::InstanceLeft) diff per presence. Idempotent.
    ///
    /// # Errors
    ///
    /// Redis did not answer within the budget; the heartbeat is stopped anyway, so the others
    /// drop this instance after the timeout.
    pub async fn leave(&self) -> Result<(), Error> {
        let inner = &self.inner;
        if inner.left.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Stop the heartbeat task and wait until it has ended (on a multi-threaded runtime it
        // may be sending a heartbeat right now): whatever it sent is queued on the connection
        // before the leave below, and one connection answers in order, so no late heartbeat
        // can list this instance again.
        let task = inner
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        inner.presence.leave();
        let mut conn = match inner.hot.load_full() {
            Some(c) => (*c).clone(),
            // Redis was already unreachable: try once, within the budget (drain must not wait).
            None => tokio::time::timeout(inner.budget, inner.connect())
                .await
                .map_err(|e| {
                    Error::redis(
                        "could not reach Redis to leave the cluster within the budget: the others drop this instance after the timeout",
                        e,
                    )
                })??,
        };
        let mut invocation = inner.scripts.leave.key(&inner.keys.members);
        invocation
            .key(&inner.keys.info)
            .key(&inner.keys.own_presence)
            .arg(inner.id.as_str());
        let left: Result<i64, Error> = within(
            inner.budget,
            "leaving the cluster",
            invocation.invoke_async(&mut conn),
        )
        .await;
        match left {
            Ok(_) => {
                tracing::info!(instance = %inner.id, "left the cluster");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, instance = %inner.id, timeout_ms = millis(inner.timeout), "could not leave the cluster in Redis: the others drop this instance after the timeout");
                Err(e)
            }
        }
    }

    /// Calls [`leave`](Self::leave) as soon as `signal` reports draining (SIGTERM: readiness
    /// turns 503 at the same moment), from a background task that holds this membership only
    /// weakly (it does not keep a dropped membership heartbeating). Clients still streaming
    /// from this instance during the grace period are announced as gone now; their reconnect
    /// (at [`DrainSignal::closing`]) joins them on another instance.
    ///
    /// # Errors
    ///
    /// Not inside a tokio runtime.
    pub fn leave_when_draining(&self, signal: DrainSignal) -> Result<(), Error> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(Error::invalid(
                "Membership::leave_when_draining must be called inside a tokio runtime",
            ));
        };
        let weak = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            signal.draining().await;
            if let Some(inner) = weak.upgrade() {
                // leave() logs its own failure; the heartbeat is stopped either way.
                let _ = Membership { inner }.leave().await;
            }
        });
        Ok(())
    }

    /// The live-instance count as a [`LiveInstances`] handle, updated on every heartbeat (at
    /// least 1; it keeps its last value while Redis is unreachable).
    pub fn live_instances(&self) -> LiveInstances {
        self.inner.live.clone()
    }

    /// Keeps `live` (for instance the rate limiter's
    /// [`RedisBackend::live_instances`](crate::rate_limit::RedisBackend::live_instances)) set
    /// to the live-instance count from now on, so its local fallback admits
    /// `limit / live instances` without `WELCOMEDLY_INSTANCES` set by hand.
    pub fn feed(&self, live: &LiveInstances) {
        let n = self.inner.last_count.load(Ordering::Relaxed);
        if n > 0 {
            live.set(n);
        }
        self.inner
            .fed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(live.clone());
    }

    /// Whether the last heartbeat failed (or none succeeded yet): the others may consider this
    /// instance dead once the timeout passes.
    pub fn is_degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Acquire)
    }

    /// Successful heartbeats since start.
    pub fn heartbeats(&self) -> u64 {
        self.inner.heartbeats.load(Ordering::Relaxed)
    }

    /// Failed heartbeats and presence writes since start.
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// Connections made to Redis (1 after a clean start; each reconnect adds one).
    pub fn connections_made(&self) -> u64 {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// Dead instances this instance reaped since start.
    pub fn reaped(&self) -> u64 {
        self.inner.reaped.load(Ordering::Relaxed)
    }

    /// The Redis key of the members sorted set (`{prefix}:members`).
    pub fn members_key(&self) -> &str {
        &self.inner.keys.members
    }
}

/// `Degraded` while this instance cannot heartbeat (it still serves: never fails readiness),
/// and after it left; `Healthy` otherwise. Register it with
/// `registry.register("membership", membership.clone(), Affects::Nothing)`.
impl HealthCheck for Membership {
    fn check(&self) -> CheckFuture<'_> {
        let inner = &self.inner;
        let outcome = if inner.is_left() {
            CheckOutcome::degraded("this instance has left the cluster (draining)")
        } else if self.is_degraded() {
            let reason = inner
                .degraded_reason
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            CheckOutcome::degraded(format!(
                "cannot heartbeat into Redis, so other instances drop this one {} ms after its last heartbeat (retrying with backoff up to {} ms): {reason}",
                millis(inner.timeout),
                millis(inner.max_reconnect_interval)
            ))
        } else {
            CheckOutcome::Healthy
        };
        Box::pin(std::future::ready(outcome))
    }
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Membership")
            .field("instance", &inner.id)
            .field("members_key", &inner.keys.members)
            .field("interval", &inner.interval)
            .field("timeout", &inner.timeout)
            .field("degraded", &self.is_degraded())
            .field("live_instances", &inner.live.get())
            .finish()
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_shares_one_hash_tag() {
        let k = Keys::new("wd:members", "web-1");
        assert_eq!(k.members, "{wd:members}:members");
        assert_eq!(k.info, "{wd:members}:info");
        assert_eq!(k.own_presence, "{wd:members}:presence:web-1");
        assert_eq!(k.presence_of("web-2"), "{wd:members}:presence:web-2");
    }
}
