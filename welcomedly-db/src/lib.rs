//! # welcomedly-db
//!
//! A replica-aware router over sqlx pools for services that run as many instances: writes go
//! to the node that accepts them, reads to the healthy replica with the fewest outstanding
//! requests, lagging or dead replicas are taken out of rotation, and a user never reads a state
//! older than their own last write (read-your-writes by WAL position).
//!
//! - [`Router`]: one pool per node; [`Router::write`] / [`Router::begin`] → the writer;
//!   [`Router::read`] → least outstanding healthy replica, else the primary;
//!   [`Router::read_with`] retries a read once on another node after a connection-level error.
//!   Generic over [`sqlx::Database`] (a single SQLite node works); what you get derefs to the
//!   node's [`sqlx::Pool`], so queries run as on a plain pool.
//! - [`RouterConfig`] (PostgreSQL, from `DATABASE_URL` / `DATABASE_REPLICA_URLS`):
//!   [`RouterConfig::connect`] adds a probe per node (reachable, `pg_is_in_recovery()`, replay
//!   position, lag), ejection after K failures or too much lag, readmission after M good probes,
//!   failover to a promoted replica, and read-your-writes: [`Router::token`] after a write,
//!   [`Router::read_after`] for the reads that must see it.
//! - [`ConsistencyLayer`]: a tower layer that carries each client's [`Token`] in a signed
//!   cookie, so their next request on any instance reads their own writes.
//! - [`Router::register_health`] (welcomedly-core's registry) and [`Router::register_metrics`]
//!   (OpenTelemetry).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use welcomedly_db::RouterConfig;
//!
//! let router = RouterConfig::new("postgres://app@db-1/app")
//!     .replicas(["postgres://app@db-2/app", "postgres://app@db-3/app"])
//!     .connect()
//!     .await?;
//! sqlx::query("INSERT INTO campaigns (name) VALUES ($1)")
//!     .bind("spring")
//!     .execute(&*router.write()?)
//!     .await?;
//! let token = router.token().await?; // keep it for this user (the layer does)
//! let rows: Vec<(String,)> = sqlx::query_as("SELECT name FROM campaigns")
//!     .fetch_all(&*router.read_after(Some(&token)).await)
//!     .await?;
//! # let _ = rows; Ok(()) }
//! ```

mod config;
mod consistency;
mod error;
mod health;
mod layer;
mod metrics;
mod node;
mod pg;
mod router;

pub use config::RouterConfig;
pub use consistency::{Token, TokenSigner};
pub use error::Error;
pub use layer::{Consistency, ConsistencyLayer, ConsistencyService, ResponseFuture};
pub use router::{
    NodeStatus, Routed, Router, RouterStats, is_connection_error, is_read_only_error,
};
