//! A cluster-wide rate-limit backend: N instances share one limit through Redis.
//!
//! Plug [`RedisBackend`] into welcomedly-core's `RateLimitLayer`; the policies, headers and 429
//! answers stay the same, only the state moves to Redis.
//!
//! ```no_run
//! use welcomedly_core::rate_limit::{Policy, Quota, RateLimitLayer};
//! use welcomedly_cluster::rate_limit::RedisRateLimitConfig;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = RedisRateLimitConfig::new("redis://127.0.0.1:6379/").build().await?;
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
