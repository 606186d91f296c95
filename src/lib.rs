//! # Welcomedly
//!
//! Make an ordinary tower/axum service ready to run as many identical instances behind a load
//! balancer. This facade only re-exports the workspace's crates; each is usable on its own.
//!
//! | feature | crate |
//! |---|---|
//! | (always) | [`core`] — telemetry, health, drain, client IP, rate limiting |
//! | `redis` (with `cluster`) | `redis` — the one supervised Redis link every component shares |
//! | `cluster` | `cluster` — Redis sessions, event bus, membership, cluster-wide rate limits |
//! | `flags` | `flags` — feature flags with push invalidation |
//! | `flagd` (with `flags`) | `flags::flagd` — flagd flag files on the compiled evaluator |
//! | `db` | `db` — replica-aware sqlx router |
//! | `axum` | axum conveniences in `core` |
//! | `full` | all of the above |

pub use welcomedly_core as core;

#[cfg(feature = "redis")]
pub use welcomedly_redis as redis;

#[cfg(feature = "cluster")]
pub use welcomedly_cluster as cluster;

#[cfg(feature = "flags")]
pub use welcomedly_flags as flags;

#[cfg(feature = "db")]
pub use welcomedly_db as db;

/// The README's code, compiled and run as doc tests so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
