//! A cluster-wide rate-limit backend: N instances share one limit through Redis.
//!
//! Plug [`RedisBackend`] into welcomedly-core's `RateLimitLayer`; the policies, headers and 429
//! answers stay the same, only the state moves to Redis. The backend runs on the instance's
//! [`Link`](welcomedly_redis::Link): the connection, its reconnects and its health check
//! (`redis`) are the link's; the backend keeps its per-policy fallback and its metrics
//! ([`RedisBackend::register_metrics`]).
//!
//! **Keys and Redis Cluster.** The backend writes one string per policy and client key,
//! `<prefix>:{<digest of the client key>}:<policy>` (the TAT, expiring at its reset). The
//! digest is the hash tag, so the checks of one client key share a slot and are one script
//! call, as on one node. A request whose policies are keyed differently (per address and per
//! API key, or a global policy beside a per-client one) names keys of several slots: those
//! checks are grouped by slot and decided by **one script call per slot, all at once** (a
//! single multi-key call would be a `CROSSSLOT` error on a cluster; every call is checked
//! with [`welcomedly_redis::debug_assert_same_slot`] in debug builds). The semantics across
//! slots:
//! - the request is admitted when every slot's call admits it (shadow policies never reject);
//! - **a rejected request consumes nothing**: when one slot's call rejects or fails, the
//!   charges the other slots' calls made are refunded ([`REFUND_SCRIPT`], one call per slot)
//!   before the request is answered; a failure then decides the whole request per failure
//!   mode, as a failed single call does;
//! - between a slot's charge and its refund (one round trip) a concurrent request of the same
//!   client may see that reservation and be rejected by it: the limit errs on the side of
//!   admitting less, never more; a refund Redis cannot take leaves the charge standing for
//!   the same reason.
//!
//!
//! **Coalescing.** At most one script call per group is in flight (a group: everything on one
//! node or Sentinel primary; one slot on a Redis Cluster). A request that finds its group idle
//! makes its own call, as above; requests that arrive while a call is in flight queue, and when
//! it returns the queue goes in **one** call ([`script::ACQUIRE_BATCH`], at most 128 checks;
//! the rest in the call after). Under load that turns N round trips and N script runs into a
//! few, without changing a decision:
//! - each request is decided by the script exactly as alone, in arrival order: admitted only
//!   when all its checks admit, and **a rejected request consumes nothing** (its checks are
//!   charged only when all of them admit), a later request sees what an earlier one charged;
//! - reserve at admission as before: the charge is made in the call that decides;
//! - **the budget is per request**: a request waits at most the budget from its arrival,
//!   queue included; past it its failure mode decides (and it is left out of a call not yet
//!   sent), exactly as for a call that answers late;
//! - a failed coalesced call decides each of its requests per failure mode, as a failed single
//!   call does; requests whose checks span several slots are not coalesced (one call per
//!   slot, as above);
//! - the queue is bounded (4 096 requests per group; past it a request makes its own call).
//!
//! [`RedisBackend::coalesced_calls`] and [`RedisBackend::coalesced_requests`] count them.
//!
//! **Leased local shares** (opt-in per policy, [`RedisRateLimitConfig::lease`]; for policies
//! with a burst `B` of at least [`LEASE_MIN_BURST`], such as a per-user API limit raised for a
//! load test). A key is *hot* on an instance when its second request arrives within one lease
//! lifetime of its first; its next request takes a lease: one script call
//! ([`script::LEASE`]) grants `min(n, what the key has left)` tokens, `n = B / 64`
//! ([`LEASE_SHARE`]), and advances the key's state in Redis by what it granted **before** any
//! is spent. The instance then admits the key's requests from the lease, with no Redis call,
//! until no token is left or the lease expires, after `L = min(n × interval, 1 s)`
//! ([`LEASE_MAX_LIFETIME`]; for a per-minute quota `n × interval` is 60 s / 64 ≈ 0.94 s). What
//! it left unspent is given back then: in the key's next lease call, or by a sweep every
//! 100 ms (one refund call per slot); a give-back Redis does not take is dropped, which errs on
//! the side of the limit. The guarantees, with `I` instances:
//! - **never more than the limit**: every admission spends a token Redis granted first, so from
//!   a key's first request the cluster admits at most what the GCRA admits (`B` plus one per
//!   interval since). One fine print: a token is spent up to `L` after its grant, so a sliding
//!   window that starts while leases are held can count up to `L / interval ≤ n` more than `B`
//!   plus its refill (across the cluster, not per instance), and a give-back returns tokens
//!   the way a refund does (the state moves back, never below now);
//! - **early refusal, bounded**: a request is refused only when Redis has no token left for the
//!   key, while every instance holds at most one lease of it: at most `I × n` tokens (`I / 64`
//!   of the burst, 4.7 % on 3 instances) are held unspent when it happens, for at most `L` plus
//!   the sweep's 100 ms. The instance's own lease counts: a request that arrives while its
//!   instance renews the key's lease goes to Redis directly instead of waiting for it;
//! - **one-off keys cost nothing more**: a key's first request (and the first after a lifetime
//!   without one) is decided in Redis as without leases, so distinct anonymous addresses never
//!   take leases; the table is capped ([`max_leases`](RedisRateLimitConfig::max_leases)), and
//!   a new key that finds it full is decided in Redis as without leases;
//! - **headers**: an admission from a lease reports `remaining` = what Redis had left at the
//!   grant + the tokens the instance still holds, and the reset as of the grant less the held
//!   tokens' intervals: this instance's view, blind to other instances' spends since the grant
//!   (at most `L` old);
//! - **refunds** (`refund_statuses`, `charge_only_statuses`) go back into the instance's live
//!   lease of the key (the token came from Redis either way), else to Redis as before;
//! - **Redis down**: a held lease keeps admitting until it is spent or expires (its tokens were
//!   granted before the outage); then the policy's failure mode decides, as without leases;
//! - requests that match several policies are decided in Redis as without leases; lease calls
//!   are not coalesced (one per hot key and lifetime), the other checks are, as above; a lease
//!   call names one key, so it is one slot on a Redis Cluster.
//!
//! [`RedisBackend::leases_taken`], [`RedisBackend::leased_requests`] and
//! [`RedisBackend::lease_tokens_given_back`] count them.
//!
//! **Local-first shares** (opt-in per policy, [`RedisRateLimitConfig::local_first`]; for
//! policies with a burst `B` of at least [`LOCAL_FIRST_MIN_BURST`], such as a per-address limit
//! of 100 a minute). Leases pay for keys that are busy on an instance; a flood of *distinct*
//! keys (anonymous traffic, one request or a few per client address) still cost a script call
//! each. A local-first policy splits every key's budget: each of the `I` live instances keeps a
//! share of `s = min(B / 64, B / (8 × I))` tokens ([`LOCAL_FIRST_SHARE`]; all shares together
//! at most `B / 8`) and admits the key's requests from it **without a Redis call**; the rest,
//! `B - I × s`, is the key's pool in Redis, which decides once the instance's share is spent
//! (through leases too, when the policy also leases). Each part refills at its part of the
//! rate, and parts adding up to the whole never admit more than the whole over any span of time
//! (`Gcra::part`). The guarantees:
//! - **never more than the limit**, as long as the instances agree on `I` (membership feeds
//!   it: [`RedisBackend::live_instances`]). While they do not — an instance joined and the
//!   others have not seen it yet, or an instance starting before membership fed it (it uses
//!   [`instances`](RedisRateLimitConfig::instances)) — a key may be admitted up to one share
//!   per instance more. Instances never told (membership not wired, `instances` left at 1)
//!   disagree for good: `(I - 1) × s` more, all the time (660 of 640 on 3 instances; twice the
//!   limit on 64). An instance that restarts forgets what it spent of its shares: up to `s`
//!   more per key and restart;
//! - **early refusal, bounded**: a client whose requests all reach one instance cannot use
//!   the other instances' shares: refused after `B - (I - 1) × s` (98 of 100 on 3 instances);
//!   a client spread over the instances (a load balancer's round robin or least connections)
//!   spends every share. Requests matching several policies never spend a share (below): their
//!   client is refused after the pool, `B - I × s` (97 of 100 on 3 instances);
//! - **distinct keys cost Redis nothing**: a key's first `s` requests on an instance (then one
//!   per `window / s`) are decided in memory, in about the time of the embedded limiter;
//! - **bounded table**: [`max_local_shares`](RedisRateLimitConfig::max_local_shares) keys
//!   (65 536); a new key that finds it full of shares still refilling is decided in the pool,
//!   never by evicting a spent share (which would hand it out again), and a full shard is swept
//!   at most once per expiry, and only after an eighth of its size of new keys refused room or
//!   100 ms since its last sweep (at most 8 entries visited per request under a flood, however
//!   the entries expire), so a flood costs no more than before;
//! - **headers**: an admission from a share reports `remaining` as its share's remaining plus
//!   the pool's burst (this instance cannot know the pool's state without asking Redis); a
//!   refusal by the pool reports the pool's own numbers, with the retry time of whichever of
//!   the share and the pool refills first;
//! - **refunds** of a share's admission go back to the share
//!   ([`DecisionSource::LocalShare`](welcomedly_core::rate_limit::backend::DecisionSource));
//! - **Redis down**: shares keep admitting (they need no Redis); once a key's share is spent
//!   its failure mode decides, as without shares. So an outage admits a key the shares it has
//!   left plus the fallbacks: up to `I × s` more than without shares (672 of 640 on 3
//!   instances, against 642);
//! - requests that match several policies are decided in Redis, each local-first policy with
//!   its pool.
//!
//! [`RedisBackend::local_share_requests`] and [`RedisBackend::local_shares_full`] count them.
//!
//! ```no_run
//! use welcomedly_core::rate_limit::{Policy, Quota, RateLimitLayer};
//! use welcomedly_cluster::rate_limit::{RedisBackend, RedisRateLimitConfig};
//! use welcomedly_redis::{Link, LinkConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // One link per instance, shared by every Redis component (sessions, bus, membership).
//! let link = Link::connect(LinkConfig::new("redis://127.0.0.1:6379/")).await?;
//! let backend = RedisBackend::new(&link, RedisRateLimitConfig::default()).await?;
//! backend.live_instances().set(3); // the fallback then admits limit / 3 per instance
//! let limits = RateLimitLayer::builder()
//!     .backend(backend)
//!     .policy(Policy::new("api", Quota::per_minute(200)).path_prefix("/api"))
//!     .build()?;
//! # let _ = limits;
//! # Ok(())
//! # }
//! ```

mod backend;
mod coalesce;
mod key_name;
mod lease;
mod metrics;
mod rejections;
pub mod script;
mod share;

pub use backend::{LiveInstances, RedisBackend, RedisRateLimitConfig};
pub use lease::{LEASE_MAX_LIFETIME, LEASE_MIN_BURST, LEASE_SHARE};
pub use share::{LOCAL_FIRST_MIN_BURST, LOCAL_FIRST_SHARE};

/// The Lua script that decides a request's policies, public so that services written in other
/// languages can share the same limits (same key layout: `<prefix>:{<digest>}:<policy>`, see
/// [`RedisRateLimitConfig::key_secret`]; the argument layout is documented on
/// [`script::ACQUIRE`]).
pub use script::ACQUIRE as ACQUIRE_SCRIPT;
/// The Lua script that gives back one admitted request's charge.
pub use script::REFUND as REFUND_SCRIPT;
