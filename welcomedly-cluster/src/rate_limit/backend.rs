//! [`RedisBackend`]: the rate-limit state of every instance in one Redis.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, RedisError, Script, ServerErrorKind};
use smallvec::SmallVec;
use tokio::sync::Notify;
use welcomedly_core::config::{ConfigError, EnvReader, parse_millis};
use welcomedly_core::health::{CheckFuture, CheckOutcome, HealthCheck};
use welcomedly_core::rate_limit::{
    BackendError, Check, Decision, DecisionSource, Decisions, FailureMode, Key, LocalBackend,
    PolicySpec, RateLimitBackend,
};
use welcomedly_core::redact::redact_url;

use super::key_name::KeyNamer;
use super::rejections::Rejections;
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
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisRateLimitConfig {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/`. No default. Shown with its password redacted
    /// in errors, logs and `Debug`.
    pub url: String,
    /// Prefix of every key. Default `"wd:rl"`: keys look like `wd:rl:{<digest>}:login`,
    /// hash-tagged by the client key's digest so one client's policies share a Redis Cluster
    /// slot.
    pub key_prefix: String,
    /// Secret that keys the digest of client keys in Redis key names (HMAC-SHA-256, 128 bits
    /// shown). Every instance sharing the limits must use the same one. Default none: a plain
    /// SHA-256 digest, which bounds key length and keeps API keys out of `KEYS`, `MONITOR` and
    /// `SLOWLOG`, but lets someone who can read Redis test guesses of low-entropy keys (an IP
    /// address, a user id). Set one (env `WELCOMEDLY_RATE_LIMIT_SECRET` in the example) where
    /// that matters.
    pub key_secret: Option<String>,
    /// The longest a request waits for Redis before the policy's failure mode decides instead.
    /// Default 20 ms.
    pub budget: Duration,
    /// Transport failures or timeouts in a row before the connection is dropped and the
    /// backend falls back until Redis answers again. A single slow answer only decides its own
    /// request locally. Default 3.
    pub failure_threshold: u32,
    /// The least time spent on the fallback once the connection was dropped, so a flapping
    /// Redis is not hammered with reconnects. Default 1 s.
    pub min_fallback: Duration,
    /// First delay between reconnect attempts; it doubles per failed attempt up to
    /// [`max_reconnect_interval`](Self::max_reconnect_interval), each delay jittered to
    /// 50–100 % so instances do not reconnect in lockstep. Default 250 ms.
    pub reconnect_interval: Duration,
    /// Upper bound of the reconnect delay. Default 5 s.
    pub max_reconnect_interval: Duration,
    /// Instances sharing the limit while membership is unknown (the fallback's divisor).
    /// Default 1.
    pub instances: u32,
    /// Clients Redis rejected that are remembered per policy, so their retries are answered
    /// 429 locally, without a Redis call, until their retry time. Default 10 000; 0 turns it
    /// off.
    pub remembered_rejections: usize,
    /// Connections the pool may open (the hot path uses one multiplexed connection). Default 4.
    pub pool_size: usize,
}

impl fmt::Debug for RedisRateLimitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitConfig")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("key_secret", &self.key_secret.as_ref().map(|_| "***"))
            .field("budget", &self.budget)
            .field("failure_threshold", &self.failure_threshold)
            .field("min_fallback", &self.min_fallback)
            .field("reconnect_interval", &self.reconnect_interval)
            .field("max_reconnect_interval", &self.max_reconnect_interval)
            .field("instances", &self.instances)
            .field("remembered_rejections", &self.remembered_rejections)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl RedisRateLimitConfig {
    /// Reads the settings from the environment, `None` when `REDIS_URL` is unset (the service
    /// then runs on local limits): `REDIS_URL`, `WELCOMEDLY_INSTANCES` (the fallback's divisor,
    /// default 1), `WELCOMEDLY_RATE_LIMIT_SECRET` (see [`key_secret`](Self::key_secret)),
    /// `WELCOMEDLY_RATE_LIMIT_BUDGET_MS` (default 20).
    ///
    /// # Errors
    ///
    /// Every invalid variable, as welcomedly-core's `ConfigError` (URL passwords redacted).
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let mut env = EnvReader::from_env();
        let config = Self::read(&mut env);
        env.finish(config)
    }

    /// [`from_env`](Self::from_env) through a shared reader, so a service reports the problems
    /// of all its components' variables at once.
    pub fn read(env: &mut EnvReader<'_>) -> Option<Self> {
        let url = crate::redis_url::read(env);
        let instances = env.read("WELCOMEDLY_INSTANCES", 1, |v| {
            v.parse::<u32>()
                .ok()
                .filter(|n| *n > 0 && v.bytes().all(|b| b.is_ascii_digit()))
                .ok_or("is not a valid instance count: expected an integer >= 1")
        });
        // At least MIN_SECRET_LEN bytes; a shorter one is reported by its length, never shown.
        let secret = env.secret("WELCOMEDLY_RATE_LIMIT_SECRET");
        let budget = env.read(
            "WELCOMEDLY_RATE_LIMIT_BUDGET_MS",
            Duration::from_millis(20),
            |v| {
                parse_millis(v).filter(|d| !d.is_zero()).ok_or(
                    "is not a usable budget: expected a whole number of milliseconds greater than 0, such as 20",
                )
            },
        );
        url.map(|url| {
            let mut config = Self::new(url);
            config.instances = instances;
            config.key_secret = secret;
            config.budget = budget;
            config
        })
    }

    /// Settings for the Redis at `url`, defaults elsewhere.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: "wd:rl".to_owned(),
            key_secret: None,
            budget: Duration::from_millis(20),
            failure_threshold: 3,
            min_fallback: Duration::from_secs(1),
            reconnect_interval: Duration::from_millis(250),
            max_reconnect_interval: Duration::from_secs(5),
            instances: 1,
            remembered_rejections: 10_000,
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
            .map_err(|e| {
                Error::config(
                    format!(
                        "cannot use Redis URL {:?}: expected redis://[user:password@]host[:port][/db]",
                        redact_url(&self.url)
                    ),
                    e,
                )
            })?;
        RedisBackend::from_pool(pool, self).await
    }
}

/// The cluster-wide rate-limit backend: one atomic Lua script call (`EVALSHA`, reloaded on
/// `NOSCRIPT`) per request decides every matching policy with GCRA on Redis server time, so N
/// instances share one limit. When Redis fails or answers slower than the budget, each policy
/// falls back to its [`FailureMode`] — by default a local limiter at `limit / live instances` —
/// and the backend returns to Redis by itself once Redis answers again.
///
/// - **Reconnect discipline**: one supervisor task per backend owns reconnection. The hot
///   connection is dropped only after [`failure_threshold`](RedisRateLimitConfig::failure_threshold)
///   transport failures in a row (or at once on `READONLY`, `LOADING`, `MASTERDOWN`: a failover
///   needs a new connection), and only if it is still the connection that failed (a late
///   timeout on an old connection never drops its replacement). Then the backend stays on the
///   fallback at least [`min_fallback`](RedisRateLimitConfig::min_fallback) and reconnects with
///   exponential backoff and jitter. Other server errors (`OOM`, `WRONGTYPE`) decide their
///   request per failure mode but keep the connection: reconnecting would not fix them.
/// - **Remembered rejections**: a client Redis rejected is answered 429 locally until its retry
///   time, costing Redis nothing more during a flood.
/// - **Refunds** (policies charging by response status) go back to the store that charged: the
///   fallback's reservations to the fallback even if Redis answers again before the response
///   (else a user whose login the outage turned into a 503 found the fallback's small share
///   spent at the next outage), Redis's to Redis; a refund Redis cannot take is dropped (the
///   charge stands).
/// - **Keys**: client keys appear in Redis only as a fixed-length digest (see
///   [`key_secret`](RedisRateLimitConfig::key_secret)).
///
/// The hot path uses one multiplexed connection (concurrent requests are pipelined on it), not a
/// pooled connection per request: deadpool-redis pings every connection it hands out, which
/// would double the cost of each request. The pool provides (and replaces) that connection.
#[derive(Clone)]
pub struct RedisBackend {
    pub(super) inner: Arc<Inner>,
}

/// The connection requests use, with the generation it was made in.
struct Hot {
    conn: MultiplexedConnection,
    generation: u64,
}

pub(super) struct Inner {
    pool: deadpool_redis::Pool,
    hot: ArcSwapOption<Hot>,
    acquire: Script,
    refund: Script,
    names: KeyNamer,
    budget: Duration,
    failure_threshold: u32,
    min_fallback: Duration,
    reconnect_interval: Duration,
    max_reconnect_interval: Duration,
    fallback: LocalBackend,
    rejections: Rejections,
    live: LiveInstances,
    degraded: AtomicBool,
    /// Transport failures in a row on the current connection.
    consecutive: AtomicU32,
    failures: AtomicU64,
    server_errors: AtomicU64,
    generations: AtomicU64,
    /// Wakes the supervisor when the hot connection was dropped.
    wake: Arc<Notify>,
    supervisor: OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.supervisor.get() {
            task.abort();
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Decisions, BackendError>> + Send>>;

/// One check, owned, so the decision can outlive the request's borrow.
struct OwnedCheck {
    policy: Arc<PolicySpec>,
    key: Key,
    charge: bool,
}

/// What a failed Redis call says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The connection or Redis is gone or slow (I/O error, timeout): counts towards the
    /// threshold.
    Transport,
    /// The connection reaches a Redis that cannot serve it (a replica after a failover, a
    /// Redis still loading its data): replace it now.
    Replace,
    /// Redis answered with an error that a new connection would not fix (`OOM`, `WRONGTYPE`,
    /// a script error): this request is decided per failure mode, the connection stays.
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
        if config.reconnect_interval.is_zero() {
            return Err(Error::invalid(
                "the Redis reconnect interval is zero: a dead Redis would be reconnected in a busy loop; use at least a few milliseconds (default 250 ms)",
            ));
        }
        if let Some(secret) = &config.key_secret
            && welcomedly_core::config::check_secret(secret).is_err()
        {
            return Err(Error::invalid(format!(
                "the rate-limit key secret is {} bytes long: use at least {} random bytes (the same on every instance), or none",
                secret.len(),
                welcomedly_core::config::MIN_SECRET_LEN
            )));
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(Error::invalid(
                "RedisBackend must be built inside a tokio runtime (it reconnects in the background)",
            ));
        };
        let inner = Arc::new(Inner {
            pool,
            hot: ArcSwapOption::empty(),
            acquire: Script::new(script::ACQUIRE),
            refund: Script::new(script::REFUND),
            names: KeyNamer::new(config.key_prefix, config.key_secret.as_deref()),
            budget: config.budget,
            failure_threshold: config.failure_threshold.max(1),
            min_fallback: config.min_fallback,
            reconnect_interval: config.reconnect_interval,
            max_reconnect_interval: config.max_reconnect_interval.max(config.reconnect_interval),
            fallback: LocalBackend::new(),
            rejections: Rejections::new(config.remembered_rejections),
            live: LiveInstances::new(config.instances),
            degraded: AtomicBool::new(true),
            consecutive: AtomicU32::new(0),
            failures: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            generations: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
            supervisor: OnceLock::new(),
        });
        let connected = match inner.connect().await {
            Ok(conn) => {
                inner.publish(conn);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis is unreachable: rate limits are local until it answers");
                false
            }
        };
        let task = runtime.spawn(supervise(
            Arc::downgrade(&inner),
            inner.wake.clone(),
            connected,
        ));
        let _ = inner.supervisor.set(task.abort_handle());
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

    /// How many Redis calls failed or answered too late since start (transport and server
    /// errors alike).
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// How many Redis calls were answered with an error a reconnect would not fix (`OOM`,
    /// `WRONGTYPE`, a script error) since start.
    pub fn server_errors(&self) -> u64 {
        self.inner.server_errors.load(Ordering::Relaxed)
    }

    /// How many connections the backend has made (1 after a clean start; each reconnect adds
    /// one).
    pub fn connections_made(&self) -> u64 {
        self.inner.generations.load(Ordering::Relaxed)
    }

    /// The Redis key holding `policy`'s state for `key` (what other languages sharing the
    /// limits compute too): `<prefix>:{<digest of key>}:<policy>`.
    pub fn key_name(&self, policy: &PolicySpec, key: &Key) -> String {
        self.inner.names.name(policy, key)
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
        for s in [&self.acquire, &self.refund] {
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

    /// Makes `conn` the hot connection, in a new generation.
    fn publish(&self, conn: MultiplexedConnection) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        self.consecutive.store(0, Ordering::Relaxed);
        self.hot.store(Some(Arc::new(Hot { conn, generation })));
        self.degraded.store(false, Ordering::Release);
    }

    fn succeeded(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// A call on `hot` failed: count it and, per its kind and the threshold, drop that
    /// connection — only that one: if it was already replaced, the replacement stays.
    fn failed(&self, hot: &Arc<Hot>, failure: Failure, error: &BackendError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let drop_it = match failure {
            Failure::Server => {
                self.server_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %error, "Redis refused a rate-limit call: this request is decided per policy failure mode");
                false
            }
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
        let was_current = current.as_ref().is_some_and(|c| Arc::ptr_eq(c, hot));
        if was_current {
            self.degraded.store(true, Ordering::Release);
            tracing::warn!(
                error = %error,
                generation = hot.generation,
                "Redis failed: rate limits fall back per policy until it answers"
            );
            self.wake.notify_one();
        }
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

    /// The decisions for a request one of whose live policies rejected its key recently, when
    /// one did: that policy rejects again until its retry time, the others are not charged.
    fn remembered(&self, checks: &[Check<'_>]) -> Option<Decisions> {
        let (i, wait) = checks.iter().enumerate().find_map(|(i, c)| {
            if c.policy.is_shadow() {
                return None;
            }
            self.rejections
                .rejected_for(c.policy.index(), c.key)
                .map(|w| (i, w))
        })?;
        Some(
            (0..checks.len())
                .map(|j| {
                    if j == i {
                        Decision {
                            allowed: false,
                            remaining: 0,
                            reset: wait,
                            retry_after: wait,
                            source: DecisionSource::Store,
                        }
                    } else {
                        // Not asked, not charged: the request is rejected anyway.
                        Decision {
                            allowed: true,
                            remaining: 0,
                            reset: Duration::ZERO,
                            retry_after: Duration::ZERO,
                            source: DecisionSource::Store,
                        }
                    }
                })
                .collect(),
        )
    }

    fn remember_rejections(&self, checks: &[OwnedCheck], decisions: &Decisions) {
        for (c, d) in checks.iter().zip(decisions) {
            if !d.allowed && !c.policy.is_shadow() && !d.retry_after.is_zero() {
                self.rejections
                    .remember(c.policy.index(), &c.key, d.retry_after);
            }
        }
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

/// The one task that reconnects: waits until the hot connection is dropped, stays on the
/// fallback for `min_fallback`, then reconnects with exponential backoff and jitter. Being the
/// only reconnector, it cannot race another one (no flag to clear, no window in which a
/// failure finds "someone is reconnecting" and nobody is). Holds the backend weakly, so
/// dropping the backend ends it (its `Drop` also aborts it).
async fn supervise(inner: Weak<Inner>, wake: Arc<Notify>, mut connected: bool) {
    loop {
        if connected {
            wake.notified().await;
            let Some(strong) = inner.upgrade() else {
                return;
            };
            if strong.hot.load().is_some() {
                // A stale wake-up: the connection is there.
                continue;
            }
            let pause = strong.min_fallback;
            drop(strong);
            tokio::time::sleep(pause).await;
        }
        let mut delay = match inner.upgrade() {
            Some(strong) => strong.reconnect_interval,
            None => return,
        };
        let mut attempts = 0u32;
        loop {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            match strong.connect().await {
                Ok(conn) => {
                    strong.publish(conn);
                    tracing::info!(
                        generation = strong.generations.load(Ordering::Relaxed),
                        attempts,
                        "Redis answers again: rate limits are cluster-wide again"
                    );
                    break;
                }
                Err(e) => {
                    attempts += 1;
                    // Every attempt at debug, every tenth at warn: a long outage stays visible
                    // without flooding the log.
                    if attempts.is_multiple_of(10) {
                        tracing::warn!(error = %e, attempts, "Redis still unreachable");
                    } else {
                        tracing::debug!(error = %e, attempts, "Redis still unreachable");
                    }
                }
            }
            let max = strong.max_reconnect_interval;
            drop(strong);
            tokio::time::sleep(jittered(delay)).await;
            delay = delay.saturating_mul(2).min(max);
        }
        connected = true;
    }
}

/// `delay` scaled to a random 50–100 %.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(0.5 + fastrand::f64() * 0.5)
}

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
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
        })?;
        self.inner.rejections.prepare(policies.len());
        Ok(())
    }

    fn acquire(&self, checks: &[Check<'_>]) -> Self::Future {
        if let Some(decisions) = self.inner.remembered(checks) {
            return Box::pin(std::future::ready(Ok(decisions)));
        }
        let owned: SmallVec<[OwnedCheck; 2]> = checks
            .iter()
            .map(|c| OwnedCheck {
                policy: c.policy.clone(),
                key: c.key.clone(),
                charge: c.charge,
            })
            .collect();
        let Some(hot) = self.inner.hot.load_full() else {
            let decisions = self.inner.decide_without_redis(&owned);
            return Box::pin(std::future::ready(Ok(decisions)));
        };
        // One command buffer, written once: EVALSHA sha numkeys keys... args...
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.inner.acquire.get_hash()).arg(owned.len());
        let mut name = Vec::with_capacity(96);
        for c in &owned {
            self.inner.names.write_name(&mut name, &c.policy, &c.key);
            cmd.arg(name.as_slice());
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
            let mut conn = hot.conn.clone();
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
            let (failure, error) = match tokio::time::timeout(inner.budget, call).await {
                Ok(Ok(values)) => match parse(&values, owned.len()) {
                    Some(d) => {
                        inner.succeeded();
                        inner.remember_rejections(&owned, &d);
                        return Ok(d);
                    }
                    None => (
                        Failure::Server,
                        BackendError::msg(
                            "the Redis rate-limit script answered in an unexpected shape: check that no other program writes keys under the rate-limit prefix",
                        ),
                    ),
                },
                Ok(Err(e)) => (
                    classify(&e),
                    BackendError::new("the Redis rate-limit call failed", e),
                ),
                Err(_) => (
                    Failure::Transport,
                    BackendError::msg(format!(
                        "Redis answered slower than the {} ms budget",
                        inner.budget.as_millis()
                    )),
                ),
            };
            inner.failed(&hot, failure, &error);
            Ok(inner.decide_without_redis(&owned))
        })
    }

    fn refund(&self, policy: &Arc<PolicySpec>, key: &Key, charged_by: DecisionSource) {
        let inner = &self.inner;
        // Back to whichever store made the charge, wherever the backend points now: a request
        // the fallback admitted during an outage and answered after Redis returned must free
        // its place in the fallback (refunding Redis, which charged nothing, left the
        // fallback's share spent and refused the client at the next outage), and a charge made
        // in Redis is never given back to the fallback.
        match charged_by {
            DecisionSource::Store => {}
            DecisionSource::Fallback => {
                inner.fallback.refund_shared(policy, key, inner.live.get());
                return;
            }
            // Nothing was charged.
            _ => return,
        }
        let (Some(hot), Ok(runtime)) =
            (inner.hot.load_full(), tokio::runtime::Handle::try_current())
        else {
            // Redis is unreachable: the charge stands there, erring on the side of the limit
            // (and a restarted Redis has forgotten it anyway).
            return;
        };
        let interval = micros(policy.gcra().interval_nanos());
        let name = inner.names.name(policy, key);
        let inner = inner.clone();
        runtime.spawn(async move {
            let mut conn = hot.conn.clone();
            let mut invocation = inner.refund.key(&name);
            invocation.arg(interval);
            let call = invocation.invoke_async::<i64>(&mut conn);
            let (failure, error) = match tokio::time::timeout(inner.budget, call).await {
                Ok(Ok(_)) => {
                    inner.succeeded();
                    return;
                }
                Ok(Err(e)) => (
                    classify(&e),
                    BackendError::new("the Redis rate-limit refund failed", e),
                ),
                Err(_) => (
                    Failure::Transport,
                    BackendError::msg("the Redis rate-limit refund was slower than the budget"),
                ),
            };
            // The charge stands: a lost refund errs on the side of the limit.
            inner.failed(&hot, failure, &error);
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
                "Redis is unreachable: rate limits are decided locally at limit / {} instances until it answers (reconnecting with backoff up to {} ms)",
                self.inner.live.get(),
                self.inner.max_reconnect_interval.as_millis()
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
            .field("prefix", &self.inner.names.prefix())
            .field("budget", &self.inner.budget)
            .field("degraded", &self.is_degraded())
            .field("live_instances", &self.inner.live.get())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_to_full() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100));
        }
    }

    #[test]
    fn the_config_debug_hides_credentials() {
        let mut c = RedisRateLimitConfig::new("redis://:hunter2@cache:6379/0");
        c.key_secret = Some("s3cret".to_owned());
        let text = format!("{c:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "{text}"
        );
    }

    #[test]
    fn settings_from_the_environment() {
        let read = |vars: &[(&str, &str)]| {
            let mut env = EnvReader::from_pairs(vars);
            let config = RedisRateLimitConfig::read(&mut env);
            env.finish(config)
        };
        assert!(read(&[]).unwrap().is_none());
        let c = read(&[
            ("REDIS_URL", "redis://:pw@cache:6379/0"),
            ("WELCOMEDLY_INSTANCES", "3"),
            ("WELCOMEDLY_RATE_LIMIT_SECRET", "0123456789abcdef-rl"),
            ("WELCOMEDLY_RATE_LIMIT_BUDGET_MS", "35"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.instances, 3);
        assert_eq!(c.key_secret.as_deref(), Some("0123456789abcdef-rl"));
        let e = read(&[
            ("REDIS_URL", "redis://cache:6379/0"),
            ("WELCOMEDLY_RATE_LIMIT_SECRET", "hunter2"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("WELCOMEDLY_RATE_LIMIT_SECRET (a secret of 7 bytes"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(c.budget, Duration::from_millis(35));
        let e = read(&[
            ("REDIS_URL", "http://:hunter2@cache/"),
            ("WELCOMEDLY_INSTANCES", "0"),
        ])
        .unwrap_err();
        assert_eq!(e.invalid_variables().len(), 2);
        let text = e.to_string();
        assert!(
            !text.contains("hunter2") && text.contains("http://:***@cache/"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_bad_url_is_reported_without_its_password() {
        let e = RedisRateLimitConfig::new("redis://:hunter2@cache:notaport/")
            .build()
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(e.is_config());
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("redis://:***@cache:notaport/"), "{text}");
    }
}
