//! Real servers for Welcomedly's integration tests (not published).
//!
//! - [`RedisServer`] starts a `redis-server` on a free loopback port in a temp dir, with fault
//!   controls (stop, kill, restart on the same port) and a tiny synchronous client
//!   ([`RedisServer::command`]).
//! - [`PgCluster`] starts a PostgreSQL primary with N streaming replicas (`initdb`,
//!   `pg_basebackup -R`, hot standby), with fault controls (stop, kill, restart a node; a replay
//!   delay to make a replica lag), replay positions and [`PgCluster::psql`] to run SQL.
//!
//! Servers are child processes of the test. Dropping the handle stops them and removes their
//! temp dir, also when the test panics. They share the test's process group, so Ctrl-C (and
//! nextest's timeout, which signals the group) stops them too, though their temp dirs stay; only
//! a SIGKILL of the test process alone leaves them running.
//!
//! Ports come from `20000..32000`, never the default 6379 / 5432, so a machine's own Redis and
//! PostgreSQL are left alone. When the tests run as root, PostgreSQL runs as the `postgres` OS
//! user. Every start failure says what to do and shows the server's log tail.
//!
//! Needs `redis-server` on `PATH` and PostgreSQL's `initdb`, `postgres`, `pg_ctl`,
//! `pg_basebackup` and `psql` (on `PATH` or in `/usr/lib/postgresql/<major>/bin`); on Debian:
//! `apt-get install -y redis-server postgresql`.
//!
//! ```no_run
//! use std::time::Duration;
//! use welcomedly_testkit::{Node, PgCluster, RedisServer};
//!
//! # fn main() -> Result<(), welcomedly_testkit::Error> {
//! let redis = RedisServer::start()?;
//! let pg = PgCluster::start(2)?;
//! // Hand `redis.url()`, `pg.primary_url()` and `pg.replica_urls()` to the code under test.
//!
//! pg.psql(Node::Primary, "CREATE TABLE calls (id int)")?;
//! pg.wait_replica_caught_up(1, Duration::from_secs(5))?;
//! pg.set_replay_delay(0, Duration::from_secs(2))?; // replica 0 now lags
//! pg.kill_replica(1)?; // replica 1 is down
//! redis.kill()?; // so is Redis
//! # Ok(())
//! # }
//! ```

mod error;
mod nginx;
mod ports;
mod postgres;
mod process;
mod redis;
mod resp;
mod run_as;

pub use error::Error;
pub use nginx::{Nginx, NginxConfig};
pub use ports::free_port;
pub use postgres::{Node, PgCluster, parse_lsn};
pub use redis::RedisServer;
pub use resp::Reply;
