//! [`RedisBackend`]: the rate-limit state of every instance in one Redis.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::{ErrorKind, RedisError, Script, ServerErrorKind};
use smallvec::SmallVec;
use welcomedly_core::config::{ConfigError, EnvReader, parse_millis};
use welcomedly_core::rate_limit::FailureMode;
use welcomedly_core::rate_limit::backend::{
    BackendError, Check, Decision, DecisionSource, Decisions, Gcra, Key, LocalBackend, PolicySpec,
    RateLimitBackend,
};
use welcomedly_core::redact::redact_url;
use welcomedly_redis::{Link, LinkState, Retry, debug_assert_same_slot, key_slot};

use super::coalesce::{Args, Coalescer, Names, Pending, Turn};
use super::key_name::KeyNamer;
use super::lease::{GIVE_BACK_PERIOD, GiveBack, Grant, Leases, Plan, Step};
use super::rejections::Rejections;
use super::script;
use super::share::{self, LOCAL_FIRST_MIN_BURST, Shares, Split};
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

/// Settings of the cluster-wide rate-limit backend, plain data with documented defaults. The
/// connection itself (URL, failure threshold, reconnects) is the [`Link`]'s.
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisRateLimitConfig {
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
    /// The longest a request waits for Redis (the link's call, a wait for a reconnect
    /// included) before the policy's failure mode decides instead. Tighter than the link's
    /// default budget: every request pays it while Redis is slow. Default 20 ms.
    pub budget: Duration,
    /// Instances sharing the limit while membership is unknown (the fallback's divisor).
    /// Default 1.
    pub instances: u32,
    /// Clients Redis rejected that are remembered per policy, so their retries are answered
    /// 429 locally, without a Redis call, until their retry time. Default 10 000; 0 turns it
    /// off.
    pub remembered_rejections: usize,
    /// Coalesce checks: while a script call is in flight, the requests that arrive wait and
    /// share the next call (same decisions; see the [module docs](super)). `false`: one call
    /// per request, as before coalescing (to compare). Default `true`.
    pub coalesce: bool,
    /// Policies (by name) that take **leased local shares** of hot keys: an instance takes a
    /// slice of a key's cluster-wide budget from Redis and spends it locally, one Redis call
    /// per slice instead of one per request (see the [module docs](super) for the error bound).
    /// Each must have a burst of at least [`LEASE_MIN_BURST`](super::LEASE_MIN_BURST); the
    /// layer's build fails otherwise, or for a name no policy has. Default none.
    pub leased_policies: Vec<String>,
    /// The most keys the lease table tracks (hot keys and keys seen once within a lease
    /// lifetime); past it, a new key is decided in Redis as without leases. Default 4 096.
    pub max_leases: usize,
    /// Policies (by name) whose keys' budgets are split into **local-first shares**: each
    /// instance spends a small share of every key's budget without a Redis call, the rest is the
    /// key's pool in Redis (see the [module docs](super) for the split and its bounds). Each
    /// must have a burst of at least [`LOCAL_FIRST_MIN_BURST`](super::LOCAL_FIRST_MIN_BURST);
    /// the layer's build fails otherwise, or for a name no policy has. Default none.
    pub local_first_policies: Vec<String>,
    /// The most keys the local-share table tracks; when it is full of shares still being
    /// spent or refilling, a new key is decided in the pool (never by evicting a spent share).
    /// Default 65 536 (about 2 MiB).
    pub max_local_shares: usize,
}

impl Default for RedisRateLimitConfig {
    fn default() -> Self {
        Self {
            key_prefix: "wd:rl".to_owned(),
            key_secret: None,
            budget: Duration::from_millis(20),
            instances: 1,
            remembered_rejections: 10_000,
            coalesce: true,
            leased_policies: Vec::new(),
            max_leases: 4096,
            local_first_policies: Vec::new(),
            max_local_shares: 65_536,
        }
    }
}

impl fmt::Debug for RedisRateLimitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitConfig")
            .field("key_prefix", &self.key_prefix)
            .field("key_secret", &self.key_secret.as_ref().map(|_| "***"))
            .field("budget", &self.budget)
            .field("instances", &self.instances)
            .field("remembered_rejections", &self.remembered_rejections)
            .field("coalesce", &self.coalesce)
            .field("leased_policies", &self.leased_policies)
            .field("max_leases", &self.max_leases)
            .field("local_first_policies", &self.local_first_policies)
            .field("max_local_shares", &self.max_local_shares)
            .finish()
    }
}

impl RedisRateLimitConfig {
    /// Opts the policy named `policy` into leased local shares (adds it to
    /// [`leased_policies`](Self::leased_policies)).
    ///
    /// ```
    /// use welcomedly_cluster::rate_limit::RedisRateLimitConfig;
    ///
    /// let config = RedisRateLimitConfig::default().lease("api");
    /// assert_eq!(config.leased_policies, ["api"]);
    /// ```
    #[must_use]
    pub fn lease(mut self, policy: impl Into<String>) -> Self {
        self.leased_policies.push(policy.into());
        self
    }

    /// Splits the budgets of the policy named `policy` into local-first shares (adds it to
    /// [`local_first_policies`](Self::local_first_policies)).
    ///
    /// ```
    /// use welcomedly_cluster::rate_limit::RedisRateLimitConfig;
    ///
    /// let config = RedisRateLimitConfig::default().local_first("api").lease("api");
    /// assert_eq!(config.local_first_policies, ["api"]);
    /// ```
    #[must_use]
    pub fn local_first(mut self, policy: impl Into<String>) -> Self {
        self.local_first_policies.push(policy.into());
        self
    }

    /// Reads the settings from the environment: `WELCOMEDLY_INSTANCES` (the fallback's
    /// divisor, default 1), `WELCOMEDLY_RATE_LIMIT_SECRET` (see
    /// [`key_secret`](Self::key_secret)), `WELCOMEDLY_RATE_LIMIT_BUDGET_MS` (default 20),
    /// `WELCOMEDLY_RATE_LIMIT_COALESCE` (`true`/`false`, default `true`). Where
    /// Redis is (`REDIS_URL`) is the link's setting
    /// ([`LinkConfig::read`](welcomedly_redis::LinkConfig::read)).
    ///
    /// # Errors
    ///
    /// Every invalid variable, as welcomedly-core's `ConfigError` (secrets never shown).
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut env = EnvReader::from_env();
        let config = Self::read(&mut env);
        env.finish(config)
    }

    /// [`from_env`](Self::from_env) through a shared reader, so a service reports the problems
    /// of all its components' variables at once.
    pub fn read(env: &mut EnvReader<'_>) -> Self {
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
        let coalesce = env.read("WELCOMEDLY_RATE_LIMIT_COALESCE", true, |v| match v {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err("is not a boolean: expected true (the default) or false"),
        });
        Self {
            instances,
            key_secret: secret,
            budget,
            coalesce,
            ..Self::default()
        }
    }
}

/// The cluster-wide rate-limit backend: one atomic Lua script call (`EVALSHA`, reloaded on
/// `NOSCRIPT`) per request — per Redis Cluster slot when the request's checks are keyed
/// differently, see the [module docs](super); requests arriving while a call is in flight
/// share the next one (coalescing, same decisions) — decides every matching policy with GCRA on
/// Redis server time, so N instances share one limit. When Redis fails or answers slower than
/// the budget, each policy falls back to its [`FailureMode`] — by default a local limiter at
/// `limit / live instances` — and the backend returns to Redis by itself once Redis answers
/// again.
///
/// - **Connection**: the instance's [`Link`] (shared with sessions, the bus, membership): its
///   failure threshold, minimum outage, backoff and generation check decide when the
///   connection is replaced; a connection Redis closed is replaced in the background, so the
///   first request after Redis returns is decided in Redis again. While the link has no
///   connection the backend is [degraded](Self::is_degraded); a single slow answer decides
///   only its own request locally. Server errors (`OOM`, `WRONGTYPE`) decide their request per
///   failure mode and keep the connection.
/// - **Remembered rejections**: a client Redis rejected is answered 429 locally until its retry
///   time, costing Redis nothing more during a flood.
/// - **Refunds** (policies charging by response status) go back to the store that charged: the
///   fallback's reservations to the fallback even if Redis answers again before the response
///   (else a user whose login the outage turned into a 503 found the fallback's small share
///   spent at the next outage), Redis's to Redis; a refund Redis cannot take is dropped (the
///   charge stands).
/// - **Keys**: client keys appear in Redis only as a fixed-length digest (see
///   [`key_secret`](RedisRateLimitConfig::key_secret)).
#[derive(Clone)]
pub struct RedisBackend {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    link: Link,
    acquire: Script,
    acquire_batch: Script,
    refund: Script,
    lease: Script,
    pub(super) coalescer: Coalescer,
    leases: Leases,
    leased_policies: Vec<String>,
    shares: Shares,
    local_first_policies: Vec<String>,
    names: KeyNamer,
    budget: Duration,
    fallback: LocalBackend,
    rejections: Rejections,
    live: LiveInstances,
    failures: AtomicU64,
    server_errors: AtomicU64,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Decisions, BackendError>> + Send>>;

/// One check, owned, so the decision can outlive the request's borrow.
struct OwnedCheck {
    policy: Arc<PolicySpec>,
    key: Key,
    charge: bool,
    /// The quota Redis decides with: the policy's, or its pool when it is local-first.
    gcra: Gcra,
}

impl RedisBackend {
    /// A backend over `link` (shared with the instance's other Redis components). Registers
    /// its scripts with the link, so every new connection has them before the first request.
    ///
    /// ```no_run
    /// use welcomedly_cluster::rate_limit::{RedisBackend, RedisRateLimitConfig};
    /// use welcomedly_redis::{Link, LinkConfig};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let link = Link::connect(LinkConfig::new("redis://127.0.0.1:6379/")).await?;
    /// let backend = RedisBackend::new(&link, RedisRateLimitConfig::default()).await?;
    /// # let _ = backend;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// A zero budget, or a key secret shorter than welcomedly-core's `MIN_SECRET_LEN`.
    pub async fn new(link: &Link, config: RedisRateLimitConfig) -> Result<Self, Error> {
        if config.budget.is_zero() {
            return Err(Error::invalid(
                "the Redis rate-limit budget is zero: give Redis at least a few milliseconds (default 20 ms)",
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
        let acquire = Script::new(script::ACQUIRE);
        let acquire_batch = Script::new(script::ACQUIRE_BATCH);
        let refund = Script::new(script::REFUND);
        let lease = Script::new(script::LEASE);
        for s in [&acquire, &acquire_batch, &refund, &lease] {
            // A failed load now only costs one NOSCRIPT round trip later.
            if let Err(e) = link.preload(s).await {
                tracing::debug!(error = %e, "the rate-limit scripts are loaded on first use");
            }
        }
        let inner = Arc::new(Inner {
            link: link.clone(),
            acquire,
            acquire_batch,
            refund,
            lease,
            coalescer: Coalescer::new(config.coalesce, link.config().topology.is_cluster()),
            leases: Leases::new(config.max_leases),
            leased_policies: config.leased_policies,
            shares: Shares::new(config.max_local_shares),
            local_first_policies: config.local_first_policies,
            names: KeyNamer::new(config.key_prefix, config.key_secret.as_deref()),
            budget: config.budget,
            fallback: LocalBackend::new(),
            rejections: Rejections::new(config.remembered_rejections),
            live: LiveInstances::new(config.instances),
            failures: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
        });
        if !inner.leased_policies.is_empty() && inner.leases.capacity() > 0 {
            spawn_give_backs(&inner);
        }
        Ok(Self { inner })
    }

    /// The handle to the number of live instances (the fallback divides limits by it).
    pub fn live_instances(&self) -> &LiveInstances {
        &self.inner.live
    }

    /// Whether decisions are made locally now: the link has no connection to Redis (Redis
    /// down, or the connection dropped after failures and not yet replaced). A single call
    /// past the budget decides its own request locally without making the backend degraded.
    pub fn is_degraded(&self) -> bool {
        self.inner.link.state() != LinkState::Connected
    }

    /// How many of the backend's Redis calls failed or answered too late since start
    /// (transport and server errors alike).
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// How many of the backend's Redis calls were answered with an error a reconnect would
    /// not fix (`OOM`, `WRONGTYPE`, a script error) since start.
    pub fn server_errors(&self) -> u64 {
        self.inner.server_errors.load(Ordering::Relaxed)
    }

    /// How many coalesced script calls the backend made since start: calls carrying the
    /// checks of requests that arrived while another call of their group was in flight (see
    /// the [module docs](super)). A request that found its group idle made its own call and is
    /// not counted here.
    pub fn coalesced_calls(&self) -> u64 {
        self.inner.coalescer.stats().0
    }

    /// How many requests rode in [coalesced calls](Self::coalesced_calls) since start.
    pub fn coalesced_requests(&self) -> u64 {
        self.inner.coalescer.stats().1
    }

    /// How many leases the backend took since start (lease calls that granted at least one
    /// token; see [`leased_policies`](RedisRateLimitConfig::leased_policies)).
    pub fn leases_taken(&self) -> u64 {
        self.inner.leases.stats().0
    }

    /// How many requests were admitted from leases since start, without a Redis call.
    pub fn leased_requests(&self) -> u64 {
        self.inner.leases.stats().1
    }

    /// How many unspent lease tokens the backend gave back to Redis since start (when their
    /// lease expired; a give-back Redis did not take is not counted: those tokens stay spent).
    pub fn lease_tokens_given_back(&self) -> u64 {
        self.inner.leases.stats().2
    }

    /// Requests admitted from this instance's local-first shares, without a Redis call, since
    /// start.
    pub fn local_share_requests(&self) -> u64 {
        self.inner.shares.stats().0
    }

    /// Requests of a local-first policy decided in the pool because the local-share table was
    /// full of shares still refilling, since start.
    pub fn local_shares_full(&self) -> u64 {
        self.inner.shares.stats().1
    }

    /// How many keys the local-share table holds now (at most about
    /// [`max_local_shares`](RedisRateLimitConfig::max_local_shares)).
    pub fn local_share_table_len(&self) -> usize {
        self.inner.shares.len()
    }

    /// How many keys the lease table tracks now (at most
    /// [`max_leases`](RedisRateLimitConfig::max_leases)).
    pub fn lease_table_len(&self) -> usize {
        self.inner.leases.len()
    }

    /// The link the backend runs on (its state, counters and metrics).
    pub fn link(&self) -> &Link {
        &self.inner.link
    }

    /// The Redis key holding `policy`'s state for `key` (what other languages sharing the
    /// limits compute too): `<prefix>:{<digest of key>}:<policy>`.
    pub fn key_name(&self, policy: &PolicySpec, key: &Key) -> String {
        self.inner.names.name(policy, key)
    }
}

impl Inner {
    /// Marks the local-first policies: every name must name a policy with a burst of at least
    /// `LOCAL_FIRST_MIN_BURST`.
    fn prepare_shares(&self, policies: &[Arc<PolicySpec>]) -> Result<(), BackendError> {
        for name in &self.local_first_policies {
            let Some(p) = policies.iter().find(|p| p.name() == name.as_str()) else {
                return Err(BackendError::msg(format!(
                    "the rate-limit policy `{name}` is opted into local-first shares, but the layer has no policy of that name: check the spelling, or remove it from the local-first policies"
                )));
            };
            let burst = p.gcra().burst();
            if burst < LOCAL_FIRST_MIN_BURST {
                return Err(BackendError::msg(format!(
                    "the rate-limit policy `{name}` is opted into local-first shares, but its burst is {burst} (under {LOCAL_FIRST_MIN_BURST}): a share would be under one token; raise the quota or take `{name}` off the local-first policies"
                )));
            }
        }
        self.shares.prepare(
            policies
                .iter()
                .map(|p| self.local_first_policies.iter().any(|n| n == p.name()))
                .collect(),
        );
        Ok(())
    }

    /// The split of a local-first policy's quota with the live instance count now.
    fn split(&self, policy: &PolicySpec) -> Option<Split> {
        if !self.shares.is_local_first(policy.index()) {
            return None;
        }
        share::split(policy.gcra(), self.live.get())
    }

    /// The quota Redis decides `policy` with: its pool when it is local-first, else its own.
    fn redis_gcra(&self, policy: &PolicySpec) -> Gcra {
        self.split(policy).map_or_else(|| policy.gcra(), |s| s.pool)
    }

    fn owned(&self, check: &Check<'_>) -> OwnedCheck {
        OwnedCheck {
            policy: check.policy.clone(),
            key: check.key.clone(),
            charge: check.charge,
            gcra: self.redis_gcra(check.policy),
        }
    }

    /// The lease plans of `policies`: every leased name must name a policy with a burst of at
    /// least `LEASE_MIN_BURST`.
    fn prepare_leases(&self, policies: &[Arc<PolicySpec>]) -> Result<(), BackendError> {
        if let Some(unknown) = self
            .leased_policies
            .iter()
            .find(|n| !policies.iter().any(|p| p.name() == n.as_str()))
        {
            return Err(BackendError::msg(format!(
                "the rate-limit policy `{unknown}` is opted into leases, but the layer has no policy of that name: check the spelling, or remove it from the leased policies"
            )));
        }
        let plans = policies
            .iter()
            .map(|p| {
                if !self.leased_policies.iter().any(|n| n == p.name()) {
                    return Ok(None);
                }
                let owned = OwnedCheck {
                    policy: p.clone(),
                    key: Key::Global,
                    charge: true,
                    gcra: p.gcra(),
                };
                let [interval, window, _, _] = script_args(&owned);
                Plan::new(p, interval, window).map(Some)
            })
            .collect::<Result<Box<[_]>, String>>()
            .map_err(BackendError::msg)?;
        self.leases.prepare(plans);
        Ok(())
    }

    /// A call of the backend failed: count it (the link has counted and classified it for
    /// the connection already).
    fn failed(&self, what: &str, error: &welcomedly_redis::Error) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if error.is_server() {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %error, source = ?error.redis_error().map(|e| redact_url(&e.to_string()).into_owned()), "Redis refused {what}: this request is decided per policy failure mode");
        } else {
            tracing::debug!(error = %error, "{what} failed: decided per policy failure mode");
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

    /// The acquire command (`EVALSHA sha numkeys keys... args...`) for the checks at
    /// `members` (every check when `None`), written once, and the Redis Cluster slot of each
    /// key it names, in order.
    fn acquire_cmd(
        &self,
        owned: &[OwnedCheck],
        members: Option<&[usize]>,
    ) -> (redis::Cmd, SmallVec<[u16; 2]>) {
        let picked = |i: usize| members.is_none_or(|m| m.contains(&i));
        let count = members.map_or(owned.len(), <[usize]>::len);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.acquire.get_hash()).arg(count);
        let mut slots = SmallVec::new();
        let mut name = Vec::with_capacity(96);
        for (i, c) in owned.iter().enumerate() {
            if !picked(i) {
                continue;
            }
            self.names.write_name(&mut name, &c.policy, &c.key);
            slots.push(key_slot(&name));
            cmd.arg(name.as_slice());
        }
        for (i, c) in owned.iter().enumerate() {
            if !picked(i) {
                continue;
            }
            let [interval, window, charge, shadow] = script_args(c);
            cmd.arg(interval).arg(window).arg(charge).arg(shadow);
        }
        if members.is_some() {
            // One script call names keys of one slot only (a CROSSSLOT error on a cluster).
            let first = slots.first().copied();
            debug_assert!(
                slots.iter().all(|s| Some(*s) == first),
                "a rate-limit script call groups keys of different slots: {slots:?}"
            );
        }
        (cmd, slots)
    }

    /// The key names and script arguments of `owned`, kept while the request waits for a
    /// coalesced call.
    fn pending_parts(&self, owned: &[OwnedCheck]) -> (Names, Args) {
        let names = owned
            .iter()
            .map(|c| {
                let mut name = Vec::with_capacity(96);
                self.names.write_name(&mut name, &c.policy, &c.key);
                name
            })
            .collect();
        (names, owned.iter().map(script_args).collect())
    }

    /// Runs one acquire command within the budget: the decisions of its `n` checks, or `None`
    /// when Redis failed, answered too late or in an unexpected shape (counted and logged;
    /// the caller decides per failure mode).
    async fn acquire_call(&self, cmd: &redis::Cmd, n: usize) -> Option<Decisions> {
        self.script_call(&self.acquire, cmd, n).await
    }

    /// Runs one coalesced call ([`script::ACQUIRE_BATCH`]) for the queued requests of `batch`
    /// (`checks` checks in all, every key in one slot): every check's decision in order, or
    /// `None` as [`acquire_call`](Self::acquire_call).
    pub(super) async fn acquire_batch(
        &self,
        batch: &[Pending],
        checks: usize,
    ) -> Option<Decisions> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.acquire_batch.get_hash()).arg(checks);
        for p in batch {
            for name in &p.names {
                cmd.arg(name.as_slice());
            }
        }
        cmd.arg(batch.len());
        for p in batch {
            cmd.arg(p.args.len());
            for [interval, window, charge, shadow] in &p.args {
                cmd.arg(*interval).arg(*window).arg(*charge).arg(*shadow);
            }
        }
        self.script_call(&self.acquire_batch, &cmd, checks).await
    }

    async fn script_call(&self, script: &Script, cmd: &redis::Cmd, n: usize) -> Option<Decisions> {
        let values = self.script_values(script, cmd, "a rate-limit call").await?;
        let parsed = parse(&values, n);
        if parsed.is_none() {
            self.unexpected_shape();
        }
        parsed
    }

    fn unexpected_shape(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.server_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "the Redis rate-limit script answered in an unexpected shape: check that no other program writes keys under the rate-limit prefix"
        );
    }

    /// Runs one script command within the budget: its integers, or `None` when Redis failed or
    /// answered too late (counted and logged as `what`).
    async fn script_values(
        &self,
        script: &Script,
        cmd: &redis::Cmd,
        what: &str,
    ) -> Option<Vec<i64>> {
        // Always through the link, even while it has no connection: a caller that finds none
        // asks it for an attempt within the budget, so the first request after Redis returns
        // is decided in Redis again (while the link holds off after failures it answers at
        // once and the failure mode decides).
        //
        // Retry::Never: the script charges, so a second run after a transport error (whose
        // first run may have reached Redis) could spend two of the client's requests; that one
        // request is decided by the failure mode instead. NOSCRIPT is not such a failure: the
        // script did not run, so it is loaded on the same connection (the key's node) and run
        // again, within the same budget.
        let result = self
            .link
            .call_within(self.budget, Retry::Never, |mut conn| async move {
                match cmd.query_async::<Vec<i64>>(&mut conn).await {
                    Err(e) if is_noscript(&e) => {
                        script.prepare_invoke().load_async(&mut conn).await?;
                        cmd.query_async::<Vec<i64>>(&mut conn).await
                    }
                    other => other,
                }
            })
            .await;
        match result {
            Ok(values) => Some(values),
            Err(e) => {
                self.failed(what, &e);
                None
            }
        }
    }

    /// Takes a lease of `plan.size` tokens of the key `name` for the request `owned` (giving
    /// back `give_back` tokens of its expired lease in the same call), and decides the request:
    /// from the grant's first token, as Redis's rejection when nothing was granted (remembered
    /// until the sooner of its retry time and `local_retry`, when this instance's local-first
    /// share of the key refills first), or per failure mode when Redis failed.
    async fn lease_and_decide(
        &self,
        owned: &OwnedCheck,
        fp: u64,
        plan: Plan,
        name: Box<[u8]>,
        give_back: u64,
        local_retry: Option<Duration>,
    ) -> Decisions {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.lease.get_hash())
            .arg(1)
            .arg(&*name)
            .arg(plan.interval_us)
            .arg(plan.window_us)
            .arg(plan.size)
            .arg(give_back);
        let values = self
            .script_values(&self.lease, &cmd, "a rate-limit lease call")
            .await;
        let now = Instant::now();
        let reply = match values.as_deref() {
            Some(&[granted, remaining, reset, retry]) => Some((granted, remaining, reset, retry)),
            Some(_) => {
                self.unexpected_shape();
                None
            }
            None => None,
        };
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        match reply {
            Some((granted, remaining, reset, _)) if granted >= 1 => {
                if give_back > 0 {
                    self.leases.returned(give_back);
                }
                let slot = key_slot(&name);
                let grant = Grant {
                    granted: u64::try_from(granted).unwrap_or(1),
                    remaining: u64::try_from(remaining).unwrap_or(0),
                    reset: us(reset),
                };
                smallvec::smallvec![self.leases.granted(fp, &plan, grant, name, slot, now)]
            }
            Some((_, _, reset, retry)) => {
                if give_back > 0 {
                    self.leases.returned(give_back);
                }
                self.leases.not_granted(fp, &plan, now);
                let d: Decisions = smallvec::smallvec![Decision {
                    allowed: false,
                    remaining: 0,
                    reset: us(reset),
                    retry_after: us(retry),
                    source: DecisionSource::Store,
                }];
                // Remembered no longer than the retry time the client is told: its share here
                // may refill before the pool does.
                let d = sooner_locally(d, local_retry);
                self.remember_rejections(std::slice::from_ref(owned), &d);
                d
            }
            None => {
                // The give-back, if any, is lost with the call: those tokens stay spent.
                self.leases.not_granted(fp, &plan, now);
                self.decide_without_redis(std::slice::from_ref(owned))
            }
        }
    }

    /// Gives back what expired leases left unspent: one call per Redis Cluster slot (at most
    /// 128 keys each), within the budget. A give-back Redis does not take is dropped: those
    /// tokens stay spent, erring on the side of the limit.
    async fn give_back(&self, mut give_backs: Vec<GiveBack>) {
        give_backs.sort_by_key(|g| g.slot);
        for chunk in give_backs.chunk_by(|a, b| a.slot == b.slot) {
            for part in chunk.chunks(128) {
                let mut invocation = self.refund.prepare_invoke();
                for g in part {
                    invocation
                        .key(&*g.name)
                        .arg(g.tokens.saturating_mul(g.interval_us));
                }
                let given: Result<i64, _> = self
                    .link
                    .call_within(self.budget, Retry::Never, |mut conn| {
                        let invocation = &invocation;
                        async move { invocation.invoke_async(&mut conn).await }
                    })
                    .await;
                match given {
                    Ok(_) => self.leases.returned(part.iter().map(|g| g.tokens).sum()),
                    Err(e) => self.failed("a rate-limit lease give-back", &e),
                }
            }
        }
    }

    /// Decides a request whose checks' keys span several Redis Cluster slots: one script call
    /// per slot (`calls`: each command and the indexes of its checks), all at once. The
    /// request is admitted when every slot admitted; when one rejected or failed, what the
    /// others charged is refunded before the answer (a rejected request consumes nothing,
    /// see the module docs), and a failure decides the whole request per failure mode.
    async fn acquire_per_slot(
        &self,
        owned: &[OwnedCheck],
        calls: &[(redis::Cmd, SmallVec<[usize; 2]>)],
    ) -> Decisions {
        let answers = futures_util::future::join_all(
            calls
                .iter()
                .map(|(cmd, members)| self.acquire_call(cmd, members.len())),
        )
        .await;
        let mut decisions: Decisions = owned.iter().map(|_| fail_closed()).collect();
        let mut failed = false;
        for ((_, members), answer) in calls.iter().zip(&answers) {
            match answer {
                Some(d) => {
                    for (i, d) in members.iter().zip(d) {
                        if let Some(slot) = decisions.get_mut(*i) {
                            *slot = *d;
                        }
                    }
                }
                None => failed = true,
            }
        }
        let rejected = owned
            .iter()
            .zip(&decisions)
            .any(|(c, d)| !d.allowed && !c.policy.is_shadow());
        if failed || rejected {
            // The slots whose script admitted charged their allowed checks: give those back.
            let mut refunds = Vec::new();
            for ((_, members), answer) in calls.iter().zip(&answers) {
                let Some(d) = answer else { continue };
                let admitted = members
                    .iter()
                    .zip(d)
                    .all(|(i, d)| d.allowed || owned.get(*i).is_none_or(|c| c.policy.is_shadow()));
                if !admitted {
                    continue;
                }
                let charged: SmallVec<[&OwnedCheck; 2]> = members
                    .iter()
                    .zip(d)
                    .filter_map(|(i, d)| owned.get(*i).filter(|c| c.charge && d.allowed))
                    .collect();
                if !charged.is_empty() {
                    refunds.push(self.refund_now(charged));
                }
            }
            futures_util::future::join_all(refunds).await;
        }
        if failed {
            return self.decide_without_redis(owned);
        }
        self.remember_rejections(owned, &decisions);
        decisions
    }

    /// Gives back one interval of each check's key (all in one slot) now, within the budget.
    /// A refund Redis cannot take is dropped: the charge stands, erring on the side of the
    /// limit.
    async fn refund_now(&self, checks: SmallVec<[&OwnedCheck; 2]>) {
        let mut invocation = self.refund.prepare_invoke();
        let names: SmallVec<[String; 2]> = checks
            .iter()
            .map(|c| self.names.name(&c.policy, &c.key))
            .collect();
        debug_assert_same_slot("a rate-limit refund", &names);
        for (name, c) in names.iter().zip(&checks) {
            invocation.key(name).arg(micros(c.gcra.interval_nanos()));
        }
        // Retry::Never: each run gives one interval back, so a second run after a lost reply
        // could refund a charge twice.
        let refunded: Result<i64, _> = self
            .link
            .call_within(self.budget, Retry::Never, |mut conn| {
                let invocation = &invocation;
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await;
        if let Err(e) = refunded {
            self.failed("a rate-limit refund of another slot's charge", &e);
        }
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

/// Gives back, every [`GIVE_BACK_PERIOD`], what expired leases left unspent; ends with the
/// backend.
fn spawn_give_backs(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(GIVE_BACK_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { break };
            let due = inner.leases.take_give_backs(Instant::now());
            if !due.is_empty() {
                inner.give_back(due).await;
            }
        }
    });
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

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// A check's 4 script arguments: interval µs, window µs, charge (0/1), shadow (0/1).
fn script_args(c: &OwnedCheck) -> [u64; 4] {
    let [interval, window] = gcra_args(c.gcra);
    [
        interval,
        window,
        u64::from(c.charge),
        u64::from(c.policy.is_shadow()),
    ]
}

/// A quota's script arguments: interval µs, window µs (`interval × burst`).
fn gcra_args(g: Gcra) -> [u64; 2] {
    let interval = micros(g.interval_nanos());
    [interval, interval.saturating_mul(g.burst())]
}

/// The lease plan of a local-first policy's pool, when the pool is large enough to lease from.
fn lease_args(policy: &PolicySpec, pool: Gcra) -> Option<Plan> {
    let [interval, window] = gcra_args(pool);
    Plan::new(policy, interval, window).ok()
}

/// A single check the pool rejected is retried sooner when this instance's share of the key
/// refills first (`local_retry`: the share's own wait).
fn sooner_locally(mut decisions: Decisions, local_retry: Option<Duration>) -> Decisions {
    if let (Some(local), [d]) = (local_retry, decisions.as_mut_slice())
        && !d.allowed
        && local < d.retry_after
    {
        d.retry_after = local;
    }
    decisions
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
                "this RedisBackend already serves another rate-limit layer: build one backend per layer (several backends can share one link)",
            )
        })?;
        self.inner.rejections.prepare(policies.len());
        self.inner.prepare_shares(policies)?;
        self.inner.prepare_leases(policies)
    }

    fn acquire(&self, checks: &[Check<'_>]) -> Self::Future {
        if let Some(decisions) = self.inner.remembered(checks) {
            return Box::pin(std::future::ready(Ok(decisions)));
        }
        // A request of one local-first policy: spend from this instance's share of its key when
        // it has a token left (no Redis call); else the key's pool decides, in Redis.
        let split = match checks {
            [check] if check.charge => self.inner.split(check.policy),
            _ => None,
        };
        let mut local_retry = None;
        if let (Some(split), [check]) = (&split, checks) {
            let shares = &self.inner.shares;
            let fp = shares.fingerprint(check.policy.index(), check.key);
            if let Some(o) = shares.spend(fp, &split.local, shares.now()) {
                if o.allowed {
                    // What the pool has left is unknown here without asking: reported whole
                    // (see the module docs).
                    let d = Decision {
                        remaining: o.remaining.saturating_add(split.pool.burst()),
                        source: DecisionSource::LocalShare,
                        ..Decision::from_outcome(&o, DecisionSource::LocalShare)
                    };
                    return Box::pin(std::future::ready(Ok(smallvec::smallvec![d])));
                }
                local_retry = Some(Duration::from_nanos(o.retry_after));
            }
        }
        // A request of one leased policy: spend from this instance's lease of its key, or take
        // one when the key is hot here (see the module docs); requests of several policies are
        // decided in Redis as without leases. A local-first policy leases from its pool.
        let plan = match (checks, &split) {
            ([check], Some(split)) if check.charge => self
                .inner
                .leases
                .plan(check.policy.index())
                .and_then(|_| lease_args(check.policy, split.pool)),
            ([check], None) if check.charge => self.inner.leases.plan(check.policy.index()),
            _ => None,
        };
        if let ([check], Some(plan)) = (checks, plan) {
            let leases = &self.inner.leases;
            let fp = leases.fingerprint(check.policy.index(), check.key);
            match leases.step(fp, &plan, Instant::now()) {
                Step::Spend(d) => return Box::pin(std::future::ready(Ok(smallvec::smallvec![d]))),
                Step::Fetch { give_back } => {
                    let owned = self.inner.owned(check);
                    let mut name = Vec::with_capacity(96);
                    self.inner
                        .names
                        .write_name(&mut name, check.policy, check.key);
                    let inner = self.inner.clone();
                    return Box::pin(async move {
                        let d = inner
                            .lease_and_decide(
                                &owned,
                                fp,
                                plan,
                                name.into_boxed_slice(),
                                give_back,
                                local_retry,
                            )
                            .await;
                        Ok(sooner_locally(d, local_retry))
                    });
                }
                Step::Direct => {}
            }
        }
        let owned: SmallVec<[OwnedCheck; 2]> = checks.iter().map(|c| self.inner.owned(c)).collect();
        let inner = self.inner.clone();
        // The common case, every check in one slot (one client key), is one command written
        // once, as on one node; only checks whose keys span slots are grouped.
        let (cmd, slots) = inner.acquire_cmd(&owned, None);
        let first = slots.first().copied();
        if slots.iter().all(|s| Some(*s) == first) {
            // Coalescing: when a call of this group is in flight, wait and ride in the next.
            let group = inner.coalescer.group(first.unwrap_or(0));
            let turn = Coalescer::join(&inner, group, || inner.pending_parts(&owned));
            return Box::pin(async move {
                let answer = match turn {
                    Turn::Lead(lead) => {
                        let answer = inner.acquire_call(&cmd, owned.len()).await;
                        drop(lead);
                        answer
                    }
                    Turn::Alone => inner.acquire_call(&cmd, owned.len()).await,
                    Turn::Wait(rx) => match tokio::time::timeout(inner.budget, rx).await {
                        // None: the call failed (counted and logged), or it was not made
                        // (the runtime shutting down).
                        Ok(answer) => answer.ok().flatten(),
                        Err(_) => {
                            inner.failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(
                                "a rate-limit check waited past the budget behind a coalesced call: decided per policy failure mode"
                            );
                            None
                        }
                    },
                };
                match answer {
                    Some(d) => {
                        let d = sooner_locally(d, local_retry);
                        inner.remember_rejections(&owned, &d);
                        Ok(d)
                    }
                    None => Ok(inner.decide_without_redis(&owned)),
                }
            });
        }
        let mut groups: SmallVec<[(u16, SmallVec<[usize; 2]>); 2]> = SmallVec::new();
        for (i, slot) in slots.iter().enumerate() {
            match groups.iter_mut().find(|(s, _)| s == slot) {
                Some((_, members)) => members.push(i),
                None => groups.push((*slot, smallvec::smallvec![i])),
            }
        }
        let calls: Vec<(redis::Cmd, SmallVec<[usize; 2]>)> = groups
            .into_iter()
            .map(|(_, members)| (inner.acquire_cmd(&owned, Some(&members)).0, members))
            .collect();
        Box::pin(async move { Ok(inner.acquire_per_slot(&owned, &calls).await) })
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
            DecisionSource::LocalShare => {
                if let Some(split) = inner.split(policy) {
                    let shares = &inner.shares;
                    shares.refund(
                        shares.fingerprint(policy.index(), key),
                        &split.local,
                        shares.now(),
                    );
                }
                return;
            }
            // Nothing was charged.
            _ => return,
        }
        // A charge of a leased policy goes back to this instance's live lease of the key when
        // there is one (the token came from Redis either way).
        if inner.leases.plan(policy.index()).is_some()
            && inner.leases.refund(
                inner.leases.fingerprint(policy.index(), key),
                Instant::now(),
            )
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !inner.link.is_connected() {
            // Redis is unreachable: the charge stands there, erring on the side of the limit
            // (and a restarted Redis has forgotten it anyway).
            return;
        }
        let interval = micros(inner.redis_gcra(policy).interval_nanos());
        let name = inner.names.name(policy, key);
        let inner = inner.clone();
        runtime.spawn(async move {
            let mut invocation = inner.refund.key(&name);
            invocation.arg(interval);
            // Retry::Never: each run gives one interval back, so a second run after a lost
            // reply could refund a charge twice; a lost refund errs on the side of the limit.
            let refunded: Result<i64, _> = inner
                .link
                .call_within(inner.budget, Retry::Never, |mut conn| {
                    let invocation = &invocation;
                    async move { invocation.invoke_async(&mut conn).await }
                })
                .await;
            if let Err(e) = refunded {
                // The charge stands: a lost refund errs on the side of the limit.
                inner.failed("a rate-limit refund", &e);
            }
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
    fn the_config_debug_hides_the_secret() {
        let c = RedisRateLimitConfig {
            key_secret: Some("s3cret".to_owned()),
            ..RedisRateLimitConfig::default()
        };
        let text = format!("{c:?}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn settings_from_the_environment() {
        let read = |vars: &[(&str, &str)]| {
            let mut env = EnvReader::from_pairs(vars);
            let config = RedisRateLimitConfig::read(&mut env);
            env.finish(config)
        };
        let c = read(&[]).unwrap();
        assert_eq!(c.budget, Duration::from_millis(20));
        assert_eq!(c.instances, 1);
        assert!(c.coalesce);
        assert!(
            !read(&[("WELCOMEDLY_RATE_LIMIT_COALESCE", "false")])
                .unwrap()
                .coalesce
        );
        assert!(read(&[("WELCOMEDLY_RATE_LIMIT_COALESCE", "sometimes")]).is_err());
        let c = read(&[
            ("WELCOMEDLY_INSTANCES", "3"),
            ("WELCOMEDLY_RATE_LIMIT_SECRET", "0123456789abcdef-rl"),
            ("WELCOMEDLY_RATE_LIMIT_BUDGET_MS", "35"),
        ])
        .unwrap();
        assert_eq!(c.instances, 3);
        assert_eq!(c.key_secret.as_deref(), Some("0123456789abcdef-rl"));
        assert_eq!(c.budget, Duration::from_millis(35));
        let e = read(&[("WELCOMEDLY_RATE_LIMIT_SECRET", "hunter2")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("WELCOMEDLY_RATE_LIMIT_SECRET (a secret of 7 bytes"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let e = read(&[
            ("WELCOMEDLY_INSTANCES", "0"),
            ("WELCOMEDLY_RATE_LIMIT_BUDGET_MS", "0"),
        ])
        .unwrap_err();
        assert_eq!(e.invalid_variables().len(), 2);
    }

    #[tokio::test]
    async fn bad_settings_are_refused() {
        // No Redis needed: the link starts unconnected and keeps trying.
        let link = Link::connect(welcomedly_redis::LinkConfig::new("redis://127.0.0.1:1/"))
            .await
            .unwrap();
        let zero = RedisRateLimitConfig {
            budget: Duration::ZERO,
            ..RedisRateLimitConfig::default()
        };
        let e = RedisBackend::new(&link, zero).await.unwrap_err();
        assert!(
            e.is_config() && e.to_string().contains("budget is zero"),
            "{e}"
        );
        let short = RedisRateLimitConfig {
            key_secret: Some("hunter2".to_owned()),
            ..RedisRateLimitConfig::default()
        };
        let e = RedisBackend::new(&link, short).await.unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let b = RedisBackend::new(&link, RedisRateLimitConfig::default())
            .await
            .unwrap();
        assert!(b.is_degraded());
    }

    #[tokio::test]
    async fn lease_and_local_first_opt_ins_are_checked_when_the_layer_is_built() {
        use welcomedly_core::rate_limit::{Policy, Quota, RateLimitLayer};
        let link = Link::connect(welcomedly_redis::LinkConfig::new("redis://127.0.0.1:1/"))
            .await
            .unwrap();
        let build = |config: RedisRateLimitConfig| {
            let link = link.clone();
            async move {
                let backend = RedisBackend::new(&link, config).await.unwrap();
                RateLimitLayer::builder()
                    .backend(backend)
                    .policy(Policy::new("api", Quota::per_minute(200)))
                    .policy(Policy::new("bulk", Quota::per_minute(100_000)))
                    .policy(Policy::new("tiny", Quota::per_minute(20)))
                    .build()
                    .map(|_| ())
                    .map_err(|e| {
                        let source = std::error::Error::source(&e).map(ToString::to_string);
                        format!("{e}: {}", source.unwrap_or_default())
                    })
            }
        };
        let e = build(RedisRateLimitConfig::default().lease("apy"))
            .await
            .unwrap_err();
        assert!(
            e.contains("`apy`") && e.contains("no policy of that name"),
            "{e}"
        );
        let e = build(RedisRateLimitConfig::default().lease("api"))
            .await
            .unwrap_err();
        assert!(e.contains("burst is 200 (under 1024)"), "{e}");
        build(RedisRateLimitConfig::default().lease("bulk"))
            .await
            .unwrap();
        // Local-first shares: an unknown name, or a burst under 64 (a share under one token).
        let e = build(RedisRateLimitConfig::default().local_first("apy"))
            .await
            .unwrap_err();
        assert!(
            e.contains("`apy`") && e.contains("no policy of that name"),
            "{e}"
        );
        let e = build(RedisRateLimitConfig::default().local_first("tiny"))
            .await
            .unwrap_err();
        assert!(e.contains("burst is 20 (under 64)"), "{e}");
        build(RedisRateLimitConfig::default().local_first("api"))
            .await
            .unwrap();
    }
}
