//! [`RedisBackend`]: the rate-limit state of every instance in one Redis.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::Script;
use redis::aio::MultiplexedConnection;
use welcomedly_core::health::{CheckFuture, CheckOutcome, HealthCheck};
use welcomedly_core::rate_limit::{
    BackendError, Check, Decision, DecisionSource, Decisions, FailureMode, Key, LocalBackend,
    PolicySpec, RateLimitBackend,
};

use super::script;
use crate::Error;

/// How many instances share a cluster-wide limit, for the local fallback's share
/// (`limit / live instances`). Cloneable handle: membership (or the operator) updates it.
#[derive(Debug, Clone)]
pub struct LiveInstances(Arc<AtomicU32>);

impl LiveInstances {
    /// A count starting at `n` (at least 1).
    pub fn new(n: u32) -> Self {
        Self(Arc::new(AtomicU32::new(n.max(1))))
    }

    /// Sets the count (0 is taken as 1).
    pub fn set(&self, n: u32) {
        self.0.store(n.max(1), Ordering::Relaxed);
    }

    /// The count, at least 1.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed).max(1)
    }
}

/// Settings of the cluster-wide rate-limit backend, plain data with documented defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisRateLimitConfig {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/`. No default.
    pub url: String,
    /// Prefix of every key. Default `"wd:rl"`: keys look like `wd:rl:{ip:203.0.113.7}:login`,
    /// hash-tagged by the client key so one client's policies share a Redis Cluster slot.
    pub key_prefix: String,
    /// The longest a request waits for Redis before the policy's failure mode decides instead.
    /// Default 20 ms.
    pub budget: Duration,
    /// How often a failed Redis is probed until it answers again. Default 250 ms.
    pub reconnect_interval: Duration,
    /// Instances sharing the limit while membership is unknown (the fallback's divisor).
    /// Default 1.
    pub instances: u32,
    /// Connections the pool may open (the hot path uses one multiplexed connection). Default 4.
    pub pool_size: usize,
}

impl RedisRateLimitConfig {
    /// Settings for the Redis at `url`, defaults elsewhere.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: "wd:rl".to_owned(),
            budget: Duration::from_millis(20),
            reconnect_interval: Duration::from_millis(250),
            instances: 1,
            pool_size: 4,
        }
    }

    /// Builds the backend and tries a first connection. An unreachable Redis is not an error:
    /// the backend starts on its local fallback and connects in the background. Must run inside
    /// a tokio runtime.
    pub async fn build(self) -> Result<RedisBackend, Error> {
        let mut cfg = deadpool_redis::Config::from_url(self.url.clone());
        cfg.pool = Some(deadpool_redis::PoolConfig::new(self.pool_size.max(1)));
        let pool = cfg
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .map_err(|e| Error::config(format!("cannot use Redis URL {:?}", self.url), e))?;
        RedisBackend::from_pool(pool, self).await
    }
}

/// The cluster-wide rate-limit backend: one atomic Lua script call (`EVALSHA`, reloaded on
/// `NOSCRIPT`) per request decides every matching policy with GCRA on Redis server time, so N
/// instances share one limit. When Redis fails or answers slower than the budget, each policy
/// falls back to its [`FailureMode`] — by default a local limiter at `limit / live instances` —
/// and the backend returns to Redis by itself once Redis answers again.
///
/// The hot path uses one multiplexed connection (concurrent requests are pipelined on it), not a
/// pooled connection per request: deadpool-redis pings every connection it hands out, which
/// would double the cost of each request. The pool provides (and replaces) that connection.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    pool: deadpool_redis::Pool,
    hot: ArcSwapOption<MultiplexedConnection>,
    acquire: Script,
    charge: Script,
    prefix: String,
    budget: Duration,
    reconnect_interval: Duration,
    fallback: LocalBackend,
    live: LiveInstances,
    degraded: AtomicBool,
    reconnecting: AtomicBool,
    failures: AtomicU64,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Decisions, BackendError>> + Send>>;

/// One check, owned, so the decision can outlive the request's borrow.
struct OwnedCheck {
    policy: Arc<PolicySpec>,
    key: Key,
    charge: bool,
}

impl RedisBackend {
    /// A backend over an existing deadpool-redis pool (shared with sessions and the event bus).
    pub async fn from_pool(
        pool: deadpool_redis::Pool,
        config: RedisRateLimitConfig,
    ) -> Result<Self, Error> {
        if config.budget.is_zero() {
            return Err(Error::invalid(
                "the Redis rate-limit budget is zero: give Redis at least a few milliseconds (default 20 ms)",
            ));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::invalid(
                "RedisBackend must be built inside a tokio runtime (it reconnects in the background)",
            ));
        }
        let inner = Arc::new(Inner {
            pool,
            hot: ArcSwapOption::empty(),
            acquire: Script::new(script::ACQUIRE),
            charge: Script::new(script::CHARGE),
            prefix: config.key_prefix,
            budget: config.budget,
            reconnect_interval: config.reconnect_interval,
            fallback: LocalBackend::new(),
            live: LiveInstances::new(config.instances),
            degraded: AtomicBool::new(true),
            reconnecting: AtomicBool::new(false),
            failures: AtomicU64::new(0),
        });
        match inner.connect().await {
            Ok(conn) => {
                inner.hot.store(Some(Arc::new(conn)));
                inner.degraded.store(false, Ordering::Release);
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis is unreachable: rate limits are local until it answers");
                start_reconnect(&inner);
            }
        }
        Ok(Self { inner })
    }

    /// The handle to the number of live instances (the fallback divides limits by it).
    pub fn live_instances(&self) -> &LiveInstances {
        &self.inner.live
    }

    /// Whether decisions are currently made locally because Redis failed.
    pub fn is_degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Acquire)
    }

    /// How many times Redis failed or answered too late since start.
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    fn key_name(&self, policy: &PolicySpec, key: &Key) -> String {
        format!("{}:{{{key}}}:{}", self.inner.prefix, policy.name())
    }
}

impl Inner {
    async fn connect(&self) -> Result<MultiplexedConnection, BackendError> {
        let timeout = self.budget.max(Duration::from_secs(1));
        let conn = tokio::time::timeout(timeout, self.pool.get())
            .await
            .map_err(|_| BackendError::msg("connecting to Redis timed out"))?
            .map_err(|e| BackendError::new("cannot connect to Redis", e))?;
        let mut conn = deadpool_redis::Connection::take(conn);
        // Loading the scripts now keeps the first request's EVALSHA from meeting NOSCRIPT.
        for s in [&self.acquire, &self.charge] {
            tokio::time::timeout(timeout, s.prepare_invoke().load_async(&mut conn))
                .await
                .map_err(|_| {
                    BackendError::msg("loading the rate-limit script into Redis timed out")
                })?
                .map_err(|e| {
                    BackendError::new("cannot load the rate-limit script into Redis", e)
                })?;
        }
        Ok(conn)
    }

    /// Redis failed: drop the connection, decide locally from now on, probe in the background.
    fn failed(self: &Arc<Self>, error: &BackendError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.hot.store(None);
        if !self.degraded.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %error, "Redis failed: rate limits fall back per policy until it answers");
        }
        start_reconnect(self);
    }

    /// Decides without Redis, per policy failure mode.
    fn decide_without_redis(&self, checks: &[OwnedCheck]) -> Decisions {
        let closed = |c: &OwnedCheck| {
            c.policy.failure_mode() == FailureMode::FailClosed && !c.policy.is_shadow()
        };
        // A fail-closed rejection rejects the request: then the fallback only peeks.
        let rejected = checks.iter().any(closed);
        let local: Vec<Check<'_>> = checks
            .iter()
            .filter(|c| c.policy.failure_mode() == FailureMode::LocalFallback)
            .map(|c| Check {
                policy: &c.policy,
                key: &c.key,
                charge: c.charge && !rejected,
            })
            .collect();
        let mut local_decisions = self.fallback.decide(&local, self.live.get()).into_iter();
        checks
            .iter()
            .map(|c| match c.policy.failure_mode() {
                FailureMode::FailOpen => Decision {
                    allowed: true,
                    remaining: 0,
                    reset: Duration::ZERO,
                    retry_after: Duration::ZERO,
                    source: DecisionSource::FailOpen,
                },
                FailureMode::LocalFallback => match local_decisions.next() {
                    Some(d) => Decision {
                        source: DecisionSource::Fallback,
                        ..d
                    },
                    None => fail_closed(),
                },
                _ => fail_closed(),
            })
            .collect()
    }
}

fn fail_closed() -> Decision {
    Decision {
        allowed: false,
        remaining: 0,
        reset: Duration::from_secs(1),
        retry_after: Duration::from_secs(1),
        source: DecisionSource::FailClosed,
    }
}

fn start_reconnect(inner: &Arc<Inner>) {
    if inner.reconnecting.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        inner.reconnecting.store(false, Ordering::Release);
        return;
    };
    let weak: Weak<Inner> = Arc::downgrade(inner);
    runtime.spawn(async move {
        loop {
            // Holding only a weak reference lets the backend be dropped while Redis is down.
            let Some(inner) = weak.upgrade() else { return };
            match inner.connect().await {
                Ok(conn) => {
                    inner.hot.store(Some(Arc::new(conn)));
                    inner.degraded.store(false, Ordering::Release);
                    inner.reconnecting.store(false, Ordering::Release);
                    tracing::info!("Redis answers again: rate limits are cluster-wide again");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "Redis still unreachable"),
            }
            let interval = inner.reconnect_interval;
            drop(inner);
            tokio::time::sleep(interval).await;
        }
    });
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

fn micros(g: u64) -> u64 {
    g.div_ceil(1000).max(1)
}

fn parse(values: &[i64], n: usize) -> Option<Decisions> {
    if values.len() != n * 4 {
        return None;
    }
    let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    Some(
        values
            .chunks_exact(4)
            .map(|c| match c {
                [allowed, remaining, reset, retry] => Decision {
                    allowed: *allowed == 1,
                    remaining: u64::try_from(*remaining).unwrap_or(0),
                    reset: us(*reset),
                    retry_after: us(*retry),
                    source: DecisionSource::Store,
                },
                _ => fail_closed(),
            })
            .collect(),
    )
}

impl RateLimitBackend for RedisBackend {
    type Future = BoxFuture;

    fn prepare(&self, policies: &[Arc<PolicySpec>]) -> Result<(), BackendError> {
        // The fallback refuses a second layer (policy indexes would collide); say why here.
        RateLimitBackend::prepare(&self.inner.fallback, policies).map_err(|_| {
            BackendError::msg(
                "this RedisBackend already serves another rate-limit layer: build one backend per layer (RedisBackend::from_pool lets them share a connection pool)",
            )
        })
    }

    fn acquire(&self, checks: &[Check<'_>]) -> Self::Future {
        let owned: Vec<OwnedCheck> = checks
            .iter()
            .map(|c| OwnedCheck {
                policy: c.policy.clone(),
                key: c.key.clone(),
                charge: c.charge,
            })
            .collect();
        let Some(conn) = self.inner.hot.load_full() else {
            let decisions = self.inner.decide_without_redis(&owned);
            return Box::pin(std::future::ready(Ok(decisions)));
        };
        // One command buffer, written once: EVALSHA sha numkeys keys... args...
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.inner.acquire.get_hash()).arg(owned.len());
        for c in &owned {
            cmd.arg(self.key_name(&c.policy, &c.key));
        }
        for c in &owned {
            let g = c.policy.gcra();
            let interval = micros(g.interval_nanos());
            let burst = (g.window_nanos() / g.interval_nanos()).max(1);
            cmd.arg(interval)
                .arg(interval.saturating_mul(burst))
                .arg(u64::from(c.charge))
                .arg(u64::from(c.policy.is_shadow()));
        }
        let inner = self.inner.clone();
        Box::pin(async move {
            let mut conn = MultiplexedConnection::clone(&conn);
            let call = async {
                match cmd.query_async::<Vec<i64>>(&mut conn).await {
                    // Redis restarted or its script cache was flushed: load, then retry once,
                    // within the same budget.
                    Err(e) if is_noscript(&e) => {
                        inner.acquire.prepare_invoke().load_async(&mut conn).await?;
                        cmd.query_async::<Vec<i64>>(&mut conn).await
                    }
                    other => other,
                }
            };
            let error = match tokio::time::timeout(inner.budget, call).await {
                Ok(Ok(values)) => match parse(&values, owned.len()) {
                    Some(d) => return Ok(d),
                    None => BackendError::msg(
                        "the Redis rate-limit script answered in an unexpected shape: check that no other program writes keys under the rate-limit prefix",
                    ),
                },
                Ok(Err(e)) => BackendError::new("the Redis rate-limit call failed", e),
                Err(_) => BackendError::msg(format!(
                    "Redis answered slower than the {} ms budget",
                    inner.budget.as_millis()
                )),
            };
            inner.failed(&error);
            Ok(inner.decide_without_redis(&owned))
        })
    }

    fn charge(&self, policy: &Arc<PolicySpec>, key: &Key) {
        let inner = &self.inner;
        let (Some(conn), Ok(runtime)) =
            (inner.hot.load_full(), tokio::runtime::Handle::try_current())
        else {
            inner.fallback.charge_shared(policy, key, inner.live.get());
            return;
        };
        let g = policy.gcra();
        let interval = micros(g.interval_nanos());
        let window = interval.saturating_mul((g.window_nanos() / g.interval_nanos()).max(1));
        let name = self.key_name(policy, key);
        let (inner, policy, key) = (inner.clone(), policy.clone(), key.clone());
        runtime.spawn(async move {
            let mut conn = MultiplexedConnection::clone(&conn);
            let mut invocation = inner.charge.key(&name);
            invocation.arg(interval).arg(window);
            let call = invocation.invoke_async::<i64>(&mut conn);
            let error = match tokio::time::timeout(inner.budget, call).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => BackendError::new("the Redis rate-limit charge failed", e),
                Err(_) => {
                    BackendError::msg("the Redis rate-limit charge was slower than the budget")
                }
            };
            inner.failed(&error);
            inner
                .fallback
                .charge_shared(&policy, &key, inner.live.get());
        });
    }

    fn key_count(&self, policy: &PolicySpec) -> Option<u64> {
        // Redis bounds its own memory (each key expires at its reset); this is the fallback's.
        self.inner.fallback.key_count(policy)
    }

    fn evicted_keys(&self, policy: &PolicySpec) -> Option<u64> {
        self.inner.fallback.evicted_keys(policy)
    }
}

/// `Degraded` while decisions are local because Redis failed (the instance still serves, so this
/// never fails readiness), `Healthy` otherwise. Register it with
/// `registry.register("rate_limit", backend.clone(), Affects::Nothing)`.
impl HealthCheck for RedisBackend {
    fn check(&self) -> CheckFuture<'_> {
        let outcome = if self.is_degraded() {
            CheckOutcome::degraded(format!(
                "Redis is unreachable: rate limits are decided locally at limit / {} instances until it answers (probed every {} ms)",
                self.inner.live.get(),
                self.inner.reconnect_interval.as_millis()
            ))
        } else {
            CheckOutcome::Healthy
        };
        Box::pin(std::future::ready(outcome))
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.inner.prefix)
            .field("budget", &self.inner.budget)
            .field("degraded", &self.is_degraded())
            .field("live_instances", &self.inner.live.get())
            .finish()
    }
}
