//! A cluster-wide rate-limit backend: N instances share one limit through Redis.
//!
//! Plug [`RedisBackend`] into welcomedly-core's `RateLimitLayer`; the policies, headers and 429
//! answers stay the same, only the state moves to Redis. The backend runs on the instance's
//! [`Link`](welcomedly_redis::Link): the connection, its reconnects and its health check
//! (`redis`) are the link's; the backend keeps its per-policy fallback and its metrics
//! ([`RedisBackend::register_metrics`]).
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
mod key_name;
mod metrics;
mod rejections;
pub mod script;

pub use backend::{LiveInstances, RedisBackend, RedisRateLimitConfig};

/// The Lua script that decides a request's policies, public so that services written in other
/// languages can share the same limits (same key layout: `<prefix>:{<digest>}:<policy>`, see
/// [`RedisRateLimitConfig::key_secret`]; the argument layout is documented on
/// [`script::ACQUIRE`]).
pub use script::ACQUIRE as ACQUIRE_SCRIPT;
/// The Lua script that gives back one admitted request's charge.
pub use script::REFUND as REFUND_SCRIPT;
