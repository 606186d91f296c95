//! Real servers for integration tests: `redis-server` (alone, as a Redis Cluster, or watched by
//! Sentinels), a PostgreSQL primary with streaming replicas and NGINX, each on a free loopback
//! port in its own temp dir, with fault controls.
//!
//! Add it as a dev-dependency (it is not on crates.io; take it from the repository or a path):
//!
//! ```toml
//! [dev-dependencies]
//! welcomedly-testkit = { git = "https://example.invalid/welcomedly" }
//! # or, inside a checkout: welcomedly-testkit = { path = "../welcomedly/welcomedly-testkit" }
//! ```
//!
//! # What you get
//!
//! - [`RedisServer`]: a `redis-server` (no persistence) with [`stop`](RedisServer::stop),
//!   [`kill`](RedisServer::kill) (SIGKILL), [`restart`](RedisServer::restart) on the same port,
//!   [`pause`](RedisServer::pause) / [`resume`](RedisServer::resume) (SIGSTOP / SIGCONT: the
//!   server accepts connections but answers nothing) and a tiny synchronous client
//!   ([`command`](RedisServer::command), [`query`](RedisServer::query),
//!   [`query_within`](RedisServer::query_within)).
//! - [`RedisCluster`]: a Redis Cluster, 3 masters + 1 replica each by default
//!   ([`RedisClusterConfig`] for other shapes, full coverage and node timeout), ready in ≈ 2 s,
//!   with [`slot_of`](RedisCluster::slot_of), [`node_for`](RedisCluster::node_for),
//!   [`kill_master`](RedisCluster::kill_master) (SIGKILL, returns once the replica took over),
//!   [`failover`](RedisCluster::failover) (`CLUSTER FAILOVER`), slot migration whole
//!   ([`migrate_slot`](RedisCluster::migrate_slot)) or step by step to see `ASK` / `TRYAGAIN`
//!   ([`begin_migration`](RedisCluster::begin_migration)),
//!   [`add_master`](RedisCluster::add_master) and [`move_slots`](RedisCluster::move_slots),
//!   `pause` / `resume` / `kill` / `restart` of any node.
//! - [`RedisSentinel`]: a primary, a replica and three sentinels (quorum 2), with
//!   [`kill_primary`](RedisSentinel::kill_primary) (returns once the sentinels promoted the
//!   replica), [`failover`](RedisSentinel::failover) (`SENTINEL FAILOVER`),
//!   [`restart_old_primary`](RedisSentinel::restart_old_primary) (back empty, made a replica by
//!   the sentinels), `pause` / `resume` / `kill` / `restart` of any process.
//! - [`PgCluster`]: a PostgreSQL primary and N streaming replicas (`initdb`,
//!   `pg_basebackup -R`, hot standby, one replication slot per replica) with `stop`, `kill`,
//!   `restart`, `pause` / `resume` of any [`Node`] (every process of the node is frozen, not
//!   only the postmaster), [`promote`](PgCluster::promote) a replica,
//!   [`set_replay_delay`](PgCluster::set_replay_delay) to make a replica lag, replay positions,
//!   [`wait_replica_caught_up`](PgCluster::wait_replica_caught_up) and
//!   [`psql`](PgCluster::psql) to run SQL.
//! - [`Nginx`]: a reverse proxy from [`NginxConfig`] (`least_conn`, upstream keep-alive, passive
//!   health checks, `X-Forwarded-For`, unbuffered streaming) in front of servers the test runs.
//!
//! Every start waits until the server answers, so a test can use it at once. Every error says
//! what failed and what to do; a server that fails to start shows the end of its log.
//!
//! # What must be installed
//!
//! - `redis-server` on `PATH` (7.0 or later for [`RedisCluster`]; [`RedisSentinel`] runs the
//!   same binary with `--sentinel`);
//! - PostgreSQL's `initdb`, `postgres`, `pg_ctl`, `pg_basebackup` and `psql`, on `PATH` or in
//!   `/usr/lib/postgresql/<major>/bin` (Debian and Ubuntu keep them there);
//! - `nginx` on `PATH` or at `/usr/sbin/nginx`, only for [`Nginx`];
//! - `kill(1)` (procps or util-linux), only for pause and resume.
//!
//! On Debian or Ubuntu: `apt-get install -y redis-server postgresql nginx`. A missing program is
//! an error for which [`Error::is_not_installed`] is true, so a test can skip itself.
//!
//! # Ports, users, files
//!
//! Ports come from `20000..32000`, never the default 6379 / 5432 / 80, so a machine's own Redis,
//! PostgreSQL and NGINX are left alone, and never the ephemeral range, which a load test can fill
//! with `TIME_WAIT` sockets. Each test process starts in its own block of ports, and a server
//! that fails to bind is retried on another port ([`free_port`] gives you one for your own
//! servers). A cluster node takes two such ports, its client port and its cluster bus port
//! (`cluster-port`, not the conventional `port + 10000`, which would land in the ephemeral
//! range). Everything a server writes (data, logs, sockets, config) lives in a temp dir.
//!
//! PostgreSQL refuses to run as root: when the tests run as root, the PostgreSQL programs run as
//! the `postgres` OS user (the Debian package creates it) and the temp dir is handed to that
//! user. Connect as database user `postgres` to database `postgres`, trust auth, no password:
//! [`PgCluster::primary_url`] and [`PgCluster::replica_url`] give the URLs.
//!
//! # Drop
//!
//! Servers are child processes of the test. Dropping a handle stops its servers (SIGKILL for
//! Redis (every node of a cluster or Sentinel deployment) and NGINX, `pg_ctl stop -m immediate` for PostgreSQL, a paused server is resumed first)
//! and removes the temp dir, also when the test panics: keep the handle alive for as long as the
//! code under test needs the server. The children share the test's process group, so Ctrl-C (and
//! a test runner's timeout, which signals the group) stops them too, though their temp dirs stay;
//! only a SIGKILL of the test process alone leaves them running.
//!
//! The handles are `Send + Sync` and every method takes `&self`: share one in an `Arc` with the
//! code under test or across threads. The methods block (they run and wait for processes); in an
//! async test call them between awaits, or from `tokio::task::spawn_blocking`.
//!
//! # Example
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
//! pg.psql(Node::Primary, "INSERT INTO calls VALUES (1)")?;
//! pg.wait_replica_caught_up(1, Duration::from_secs(5))?;
//! assert_eq!(pg.psql(Node::Replica(1), "SELECT count(*) FROM calls")?, "1");
//!
//! pg.set_replay_delay(0, Duration::from_secs(2))?; // replica 0 now lags
//! pg.kill_replica(1)?; // replica 1 is down: connections are refused
//! redis.pause()?; // Redis hangs: commands time out
//! redis.resume()?;
//! pg.kill(Node::Primary)?;
//! pg.promote(0)?; // failover: replica 0 takes writes
//! # Ok(())
//! # }
//! ```
//!
//! `tests/example_user_test.rs` in this crate is a whole test to copy, with `redis` and `sqlx`
//! clients.

mod error;
mod nginx;
mod ports;
mod postgres;
mod process;
mod redis;
mod redis_cluster;
mod redis_process;
mod redis_sentinel;
mod resp;
mod run_as;

pub use error::Error;
pub use nginx::{Nginx, NginxConfig};
pub use ports::free_port;
pub use postgres::{Node, PgCluster, parse_lsn};
pub use redis::RedisServer;
pub use redis_cluster::{
    ClusterNode, Failover, RedisCluster, RedisClusterConfig, Role, SLOTS, SlotMigration,
};
pub use redis_sentinel::{RedisSentinel, RedisSentinelConfig};
pub use resp::Reply;
