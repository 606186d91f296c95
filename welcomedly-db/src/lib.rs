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
//! - Writes: [`Router::write_with`] runs a write on the writer and tells the router how it
//!   went: a connection error or a `25006` read-only answer (the node is no longer the primary,
//!   as behind a DNS name or proxy that moved) makes it probe every node at once, so writes
//!   follow a promoted replica within milliseconds; while no node takes writes they fail fast
//!   ([`Error::is_no_writer`]) instead of waiting out the pool's acquire timeout. A primary on
//!   a timeline older than one already seen is fenced (never takes writes again), and one that
//!   goes back into recovery or is set read-only stops taking them.
//! - The schema floor: [`Router::publish_floor`] after migrations, [`Router::raise_floor`] at
//!   run time (see below).
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

//!
//! # Schema changes: migrations, the floor, expand–contract
//!
//! A replica replays a migration some time after the primary ran it. Until then, a read of a
//! new table or column sent to it fails (`relation … does not exist`) although the replica is
//! healthy and within its lag bounds. The **schema floor** prevents that: a WAL position that
//! every replica must have replayed before it serves any read. Below it, reads go to a replica
//! that has replayed it, else (after waiting up to
//! [`read_after_wait`](RouterConfig::read_after_wait) in [`Router::read_after`]) to the
//! primary — exactly as for a read-your-writes token.
//!
//! - At start-up, run the migrations on the primary (sqlx's migrator serialises instances
//!   starting at once with an advisory lock and records what ran), then call
//!   [`Router::publish_floor`]: it stores the primary's current WAL position on the primary
//!   (table `welcomedly_schema_floor`, never lowered) and raises this router's floor to it.
//!   Every other instance reads it from the primary at start-up and at each probe of it (every
//!   [`probe_interval`](RouterConfig::probe_interval)).
//! - A migration run while instances serve (an online migration tool, a second deploy) calls
//!   [`Router::publish_floor`] (or writes the table itself) once its change committed;
//!   [`Router::raise_floor`] raises one router's floor to a position you already have.
//!
//! The floor makes the new schema safe to read as soon as code that reads it runs; it does not
//! make old code safe against a change it does not expect. For changes without downtime, use
//! **expand–contract**, one deploy per step, each step backward compatible with the code
//! running before it:
//!
//! 1. **Expand**: add what the new code needs (a nullable or defaulted column, a new table, a
//!    new index built `CONCURRENTLY`) and publish the floor. Old code ignores it.
//! 2. **Migrate code**: deploy code that writes both the old and the new shape and reads the
//!    new one (the floor guarantees no instance reads it from a replica that lacks it);
//!    backfill existing rows in batches.
//! 3. **Contract**: once no running code uses the old shape, drop it in a later migration (and
//!    publish the floor again).
//!
//! A rollback is then a deploy of the previous code, which still finds the shape it expects;
//! never roll back by reverting an expand migration while code that uses it runs.
//!
//! ```no_run
//! # async fn run(router: welcomedly_db::Router<sqlx::Postgres>) -> Result<(), Box<dyn std::error::Error>> {
//! // At start-up (the example's `call_center` does this with `sqlx::migrate!`):
//! // MIGRATIONS.run(&mut *router.write_connection().await?).await?;
//! let floor = router.publish_floor().await?;
//! // No read from here on goes to a replica that has not replayed `floor`.
//! # let _ = floor; Ok(()) }
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
