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

pub use backend::{LiveInstances, RedisBackend, RedisRateLimitConfig};
pub use lease::{LEASE_MAX_LIFETIME, LEASE_MIN_BURST, LEASE_SHARE};

/// The Lua script that decides a request's policies, public so that services written in other
/// languages can share the same limits (same key layout: `<prefix>:{<digest>}:<policy>`, see
/// [`RedisRateLimitConfig::key_secret`]; the argument layout is documented on
/// [`script::ACQUIRE`]).
pub use script::ACQUIRE as ACQUIRE_SCRIPT;
/// The Lua script that gives back one admitted request's charge.
pub use script::REFUND as REFUND_SCRIPT;
