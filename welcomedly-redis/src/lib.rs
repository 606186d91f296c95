//! welcomedly-redis: **the link**, one supervised Redis connection shared by every
//! component of an instance (sessions, the rate limiter, the event bus, membership, the flag
//! store), with one connection discipline, one error classifier, one health check and one set
//! of metrics; its [`Subscriber`] (one pub/sub connection, one resubscribe loop) and
//! [`Link::dedicated`] connections (blocking reads, transactions) complete it.
//!
//! ```no_run
//! use welcomedly_core::config::EnvReader;
//! use welcomedly_redis::{Link, LinkConfig, Retry};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut env = EnvReader::from_env();
//! // REDIS_URL, REDIS_SENTINELS + REDIS_SENTINEL_MASTER, or REDIS_CLUSTER_NODES;
//! // WELCOMEDLY_REDIS_BUDGET_MS
//! let config = LinkConfig::read(&mut env);
//! let Some(config) = env.finish(config)? else {
//!     return Ok(()); // no Redis configured: run on embedded defaults
//! };
//! let link = Link::connect(config).await?;
//! let pong: String = link.query(&redis::cmd("PING"), Retry::Once).await?;
//! assert_eq!(pong, "PONG");
//! # Ok(())
//! # }
//! ```
//!
//! See [`Link`] for the policy: per-call budget, failure threshold, minimum outage, backoff
//! with jitter, generation check, a closed connection noticed when it closes, and one retry
//! of calls marked safe.
//!
//! **Topology** ([`Topology`]): one node, a primary found through Sentinel (followed across
//! failovers), or a Redis Cluster; every component works unchanged on each. On a cluster the
//! shared connection is redis-rs' cluster connection (routes by slot, follows `MOVED`/`ASK`),
//! with retries that never sleep for seconds; `NOSCRIPT` is answered with `EVAL` on the key's
//! node (see [`Conn`]).
//!
//! Which connection for what:
//! - [`Link::query`], [`Link::query_pipe`], [`Link::invoke`], [`Link::call`]: every ordinary
//!   command, on the one shared multiplexed connection;
//! - [`Link::subscriber`]: pub/sub, one [`Subscriber`] connection per link for every channel
//!   of every component, with one resubscribe loop (see the [`subscriber`] module);
//! - [`Link::sharded_subscriber`]: on a Redis Cluster, sharded pub/sub (`SSUBSCRIBE` of each
//!   channel on its slot's master, resubscribed after a migration, a failover or a lost node,
//!   checked periodically); the same [`Subscriber`] API; publish with `SPUBLISH`;
//! - [`Link::dedicated`]: a pooled connection of its own for what would stall or corrupt the
//!   shared one (`XREAD BLOCK`, `BLPOP`, `WATCH`/`MULTI`/`EXEC`).
//!
//! Every component names the keys of one command or script with one hash tag, so each call
//! touches one Redis Cluster slot; [`slot::debug_assert_same_slot`] checks it before each
//! multi-key call in debug builds (see the [`slot`] module).

mod classify;
mod config;
mod error;
mod link;
mod metrics;
mod sentinel;
pub mod slot;
pub mod subscriber;

pub use self::classify::{Failure, classify};
pub use self::config::{LinkConfig, RedisUrl, Topology};
pub use self::error::Error;
pub use self::link::{Conn, Dedicated, Link, LinkState, LinkStats, PushConnection, Retry};
pub use self::slot::{debug_assert_same_slot, key_slot};
pub use self::subscriber::{Delivery, Subscriber, SubscriberStats, Subscription};
/// The redis-rs crate the link is built on, so components use the same version.
pub use redis;
pub use welcomedly_core::backoff::Backoff;
