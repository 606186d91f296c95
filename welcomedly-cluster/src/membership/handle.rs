//! [`Membership`]: the handle a service keeps; its state shared with the heartbeat task.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Script;
use tokio::sync::broadcast;
use welcomedly_core::InstanceId;
use welcomedly_core::drain::DrainSignal;
use welcomedly_core::health::{CheckFuture, CheckOutcome, HealthCheck};
use welcomedly_redis::{Link, Retry};

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
    /// The instance's link: its connection, reconnects and health check (`redis`).
    pub(crate) link: Link,
    pub(crate) id: InstanceId,
    pub(crate) keys: Keys,
    pub(crate) scripts: Scripts,
    /// This instance's description (JSON), written on every heartbeat so a restarted Redis
    /// learns it again.
    pub(crate) description: String,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) budget: Duration,
    /// Safety-net TTL of the presence hash: a reaper normally deletes it at once; this bounds
    /// its life if every instance died.
    pub(crate) presence_ttl: Duration,
    pub(crate) presence: Arc<PresenceShared>,
    live: LiveInstances,
    fed: Mutex<Vec<LiveInstances>>,
    /// The live count of the last heartbeat, 0 before the first.
    last_count: AtomicU32,
    pub(crate) degraded: AtomicBool,
    /// Why the last heartbeat failed, as the health check words it.
    pub(crate) degraded_reason: Mutex<String>,
    /// When the last heartbeat reached Redis (`None` before the first).
    pub(crate) last_heartbeat: Mutex<Option<Instant>>,
    /// Listed at least once: a later `joined` from the heartbeat is a rejoin.
    pub(crate) listed: AtomicBool,
    left: AtomicBool,
    pub(crate) heartbeats: AtomicU64,
    pub(crate) failures: AtomicU64,
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
    /// Runs `f` on the link within membership's budget; `retry` says whether running it twice
    /// is harmless. The error says which call failed and what to do.
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, retry: Retry, f: F) -> Result<T, Error>
    where
        F: FnMut(welcomedly_redis::Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.link
            .call_within(self.budget, retry, f)
            .await
            .map_err(|e| {
                let message = if e.is_server() {
                    format!(
                        "Redis refused {what}: check that nothing else writes keys under the membership prefix and that Redis accepts writes (not a replica, not out of memory)"
                    )
                } else if e.is_budget() {
                    format!(
                        "{what} took longer than the {} ms budget: Redis is slow or unreachable; it is retried",
                        self.budget.as_millis()
                    )
                } else if e.is_not_connected() {
                    format!(
                        "{what} was not sent: the Redis link has no connection (it reconnects in the background); check that Redis runs and is reachable"
                    )
                } else {
                    format!(
                        "{what} failed: the connection to Redis failed (the link replaces it); check that Redis runs and is reachable"
                    )
                };
                Error::redis(message, e)
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

    /// A heartbeat failed with `e`: remembers why, in the health check's words (which do not
    /// repeat the `redis` check's "unreachable").
    pub(crate) fn set_degraded(&self, e: &Error) {
        let refused = std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<welcomedly_redis::Error>())
            .is_some_and(welcomedly_redis::Error::is_server);
        let reason = if refused {
            "Redis refused the heartbeat: check that nothing else writes keys under the membership prefix and that Redis accepts writes"
        } else {
            "the heartbeat did not reach Redis (the redis check says why)"
        };
        reason.clone_into(
            &mut self
                .degraded_reason
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        self.degraded.store(true, Ordering::Release);
    }

    pub(crate) fn is_left(&self) -> bool {
        self.left.load(Ordering::Acquire)
    }
}

/// This instance's membership of the cluster: heartbeats into Redis, lists the live instances,
/// and tracks who is connected here (presence). Cloning is cheap and shares the heartbeat.
///
/// Built by [`Membership::new`] over the instance's [`Link`]. Call
/// [`leave`](Self::leave) at drain; dropping the last clone without it stops the heartbeat and
/// the others drop this instance after the timeout, as after a crash.
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

impl Membership {
    /// The membership of `instance` over `link` (shared with the instance's other Redis
    /// components): validates the settings, tries a first heartbeat (so the instance is listed
    /// when this returns), then heartbeats in the background every
    /// [`heartbeat_interval`](MembershipConfig::heartbeat_interval). An unreachable Redis is
    /// not an error: it starts degraded, and each tick tries again.
    ///
    /// ```no_run
    /// use welcomedly_cluster::membership::{Membership, MembershipConfig};
    /// use welcomedly_core::InstanceId;
    /// use welcomedly_redis::{Link, LinkConfig};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let link = Link::connect(LinkConfig::new("redis://127.0.0.1:6379/")).await?;
    /// let membership =
    ///     Membership::new(&link, MembershipConfig::default(), InstanceId::generate()).await?;
    /// # let _ = membership;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// Invalid settings or instance id, or no tokio runtime.
    pub async fn new(
        link: &Link,
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
            link: link.clone(),
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
            last_heartbeat: Mutex::new(None),
            listed: AtomicBool::new(false),
            left: AtomicBool::new(false),
            heartbeats: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            reaped: AtomicU64::new(0),
            worker: Mutex::new(None),
            pending_reaps: Mutex::new(Vec::new()),
        });
        if let Err(e) = heartbeat::beat(&inner).await {
            inner.failures.fetch_add(1, Ordering::Relaxed);
            inner.set_degraded(&e);
            tracing::warn!(error = %e, instance = %inner.id, "first membership heartbeat failed: this instance is listed once one reaches Redis (tried every heartbeat interval)");
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
        welcomedly_redis::debug_assert_same_slot(
            "the membership list",
            &[&inner.keys.members, &inner.keys.info],
        );
        let mut invocation = inner.scripts.list.key(&inner.keys.members);
        invocation
            .key(&inner.keys.info)
            .arg(millis(inner.timeout))
            .arg(millis(inner.interval));
        // Read-only: safe to run again on a new connection.
        let reply: Vec<String> = inner
            .call("listing the cluster members", Retry::Once, |mut c| {
                let invocation = &invocation;
                async move { invocation.invoke_async(&mut c).await }
            })
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
        let hashes: Vec<String> = members
            .iter()
            .map(|m| inner.keys.presence_of(&m.id))
            .collect();
        // One slot, so a cluster client sends the whole pipeline to one node.
        welcomedly_redis::debug_assert_same_slot("the presence read", &hashes);
        for hash in &hashes {
            pipe.cmd("HKEYS").arg(hash);
        }
        // Read-only: safe to run again on a new connection.
        let sets: Vec<Vec<String>> = inner
            .call(
                "reading the presences of the live members",
                Retry::Once,
                |mut c| {
                    let pipe = &pipe;
                    async move { pipe.query_async(&mut c).await }
                },
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
        welcomedly_redis::debug_assert_same_slot(
            "leaving the cluster",
            &[
                &inner.keys.members,
                &inner.keys.info,
                &inner.keys.own_presence,
            ],
        );
        let mut invocation = inner.scripts.leave.key(&inner.keys.members);
        invocation
            .key(&inner.keys.info)
            .key(&inner.keys.own_presence)
            .arg(inner.id.as_str());
        // Idempotent (ZREM, HDEL, DEL): safe to run again on a new connection. Within the
        // budget, a reconnect included, so a drain never waits on a dead Redis.
        let left: Result<i64, Error> = inner
            .call("leaving the cluster", Retry::Once, |mut c| {
                let invocation = &invocation;
                async move { invocation.invoke_async(&mut c).await }
            })
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

    /// The link membership runs on (its state, counters and metrics).
    pub fn link(&self) -> &Link {
        &self.inner.link
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

/// `Degraded` while this instance's heartbeats fail (it still serves: never fails readiness),
/// saying since when the cluster has not heard from it and when the others drop it, and after
/// it left; `Healthy` otherwise. Whether Redis is reachable is the link's check (`redis`);
/// this one reports membership's own state. Register it with
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
            let heard = match *inner
                .last_heartbeat
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
            {
                Some(at) => format!(
                    "the cluster last heard from it {} ms ago",
                    millis(at.elapsed())
                ),
                None => "the cluster has not heard from it yet".to_owned(),
            };
            CheckOutcome::degraded(format!(
                "this instance cannot heartbeat: {heard}, and the other instances drop it {} ms after its last heartbeat (tried again every {} ms): {reason}",
                millis(inner.timeout),
                millis(inner.interval)
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
        // One slot, whatever the instance ids (read back from Redis, so any text).
        assert!(welcomedly_redis::slot::same_slot(&[
            k.members.as_str(),
            &k.info,
            &k.own_presence,
            &k.presence_of("web-{2}"),
            &k.presence_of("}{"),
        ]));
    }
}
