//! A real Redis Cluster (N masters, M replicas each) on free loopback ports, with the faults a
//! cluster client must survive: a master killed and its replica promoted, a graceful failover, a
//! slot migrated key by key (`ASK` / `TRYAGAIN` while it is half done), a master added and slots
//! moved to it, a node frozen.
//!
//! ```no_run
//! use welcomedly_testkit::{RedisCluster, RedisClusterConfig};
//!
//! # fn main() -> Result<(), welcomedly_testkit::Error> {
//! let cluster = RedisCluster::start()?; // 3 masters + 1 replica each, ≈ 2 s
//! // Hand `cluster.seed_urls()` to the code under test.
//!
//! let node = cluster.node_for(b"user:42")?; // the master serving the key's slot now
//! cluster.command_on(node, &["SET", "user:42", "x"])?;
//! let moved = cluster.command_on(cluster.seed_ports()[0], &["GET", "user:42"]);
//! // `moved` is Ok("x") on the key's master, a `MOVED 12739 127.0.0.1:…` error elsewhere.
//! # let _ = moved;
//!
//! let slot = RedisCluster::slot_of(b"user:42");
//! let failover = cluster.kill_master(slot)?; // SIGKILL; returns once the replica took over
//! println!("promoted in {:?}", failover.took);
//! cluster.restart(failover.from)?; // back, as a replica of the new master
//! cluster.failover(slot)?; // CLUSTER FAILOVER: the roles swap back
//!
//! // Half a migration, to see ASK / TRYAGAIN, then the rest:
//! let migration = cluster.begin_migration(slot, cluster.master_for_slot(0)?)?;
//! cluster.migrate_keys(&migration, &["user:42"])?;
//! cluster.finish_migration(migration)?;
//!
//! // Faster clusters for tests that need no failover:
//! let small = RedisClusterConfig::default().replicas_per_master(0).start()?;
//! let new_master = small.add_master()?; // joins empty
//! small.move_slots(0..=99, new_master)?;
//! # Ok(())
//! # }
//! ```
//!
//! # Nodes
//!
//! A node is named by its port on 127.0.0.1 (`u16`), the number a `MOVED` or `ASK` reply
//! carries. Each node runs `redis-server --cluster-enabled yes` in its own directory, with
//! persistence off, `cluster-node-timeout` from the config (1000 ms by default), its cluster bus
//! on a second free port (`cluster-port`, so it never lands in the ephemeral range the way
//! `port + 10000` would), `cluster-replica-validity-factor 0` (a replica may always be promoted,
//! however long its link was down), `cluster-allow-replica-migration no` (replicas stay where the
//! test put them) and `repl-diskless-sync-delay 0` (a new replica syncs at once, not after 5 s).
//!
//! The cluster is built with plain commands, the way `redis-cli --cluster create` does:
//! `CLUSTER ADDSLOTSRANGE` on each master (16384 slots split evenly), `CLUSTER SET-CONFIG-EPOCH`,
//! `CLUSTER MEET`, `CLUSTER REPLICATE`. It is ready when every node says `cluster_state:ok`, every
//! node sees the same slot owners and roles and no node flagged `fail`, and every replica's
//! `master_link_status` is `up`. Every fault control waits for the same "settled" state among
//! the nodes that are still running, so a test can go on at once.
//!
//! Keys given to [`migrate_keys`](RedisCluster::migrate_keys) and the replies of
//! [`command_on`](RedisCluster::command_on) are text (invalid UTF-8 is replaced); slot migration
//! moves binary keys correctly only through [`finish_migration`](RedisCluster::finish_migration)
//! if their bytes are valid UTF-8.
//!
//! Dropping the handle SIGKILLs every node and removes the temp dir, also when a test panics.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process;
use crate::redis_process::{Args, RedisProcess};
use crate::resp::{self, Connection, Reply};
use crate::{Error, ports};

/// The number of hash slots of every Redis Cluster.
pub const SLOTS: u16 = 16384;

/// How long a start may take until every node agrees.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fault control waits for the cluster to settle again.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often waits look again: short enough to time a failover to a few tens of milliseconds,
/// long enough not to load six nodes with probes.
const POLL: Duration = Duration::from_millis(20);
/// How many keys one `MIGRATE` moves.
const MIGRATE_BATCH: usize = 100;
/// How long one `MIGRATE` may take on the source, in milliseconds.
const MIGRATE_TIMEOUT_MS: &str = "5000";
/// Upper bounds of the topology, so a typo cannot start a hundred processes.
const MAX_MASTERS: usize = 16;
const MAX_REPLICAS: usize = 4;

/// The shape of a [`RedisCluster`]: how many masters, how many replicas each, and the cluster
/// settings that change how faults play out.
///
/// ```no_run
/// use std::time::Duration;
/// use welcomedly_testkit::RedisClusterConfig;
///
/// let cluster = RedisClusterConfig::default()
///     .masters(3)
///     .replicas_per_master(0)
///     .require_full_coverage(false)
///     .node_timeout(Duration::from_millis(500))
///     .start()?;
/// # Ok::<(), welcomedly_testkit::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct RedisClusterConfig {
    /// How many masters share the 16384 slots (evenly, like `redis-cli --cluster create`).
    /// Default 3; at most 16.
    pub masters: usize,
    /// How many replicas each master gets. Default 1; 0 starts faster when a test needs no
    /// failover; at most 4.
    pub replicas_per_master: usize,
    /// `cluster-require-full-coverage`: with `true` (Redis' default and ours) every node answers
    /// `CLUSTERDOWN` while any slot has no live master, e.g. for the ≈ 1 s of a failover; with
    /// `false` only the keys of the uncovered slots fail.
    pub require_full_coverage: bool,
    /// `cluster-node-timeout`: how long a node must be unreachable before it is flagged failing
    /// and its replica promoted. Default 1000 ms (Redis' default is 15 s; a test wants it short).
    pub node_timeout: Duration,
}

impl Default for RedisClusterConfig {
    fn default() -> Self {
        Self {
            masters: 3,
            replicas_per_master: 1,
            require_full_coverage: true,
            node_timeout: Duration::from_millis(1000),
        }
    }
}

impl RedisClusterConfig {
    /// Sets [`masters`](Self::masters).
    pub fn masters(mut self, masters: usize) -> Self {
        self.masters = masters;
        self
    }

    /// Sets [`replicas_per_master`](Self::replicas_per_master).
    pub fn replicas_per_master(mut self, replicas: usize) -> Self {
        self.replicas_per_master = replicas;
        self
    }

    /// Sets [`require_full_coverage`](Self::require_full_coverage).
    pub fn require_full_coverage(mut self, require: bool) -> Self {
        self.require_full_coverage = require;
        self
    }

    /// Sets [`node_timeout`](Self::node_timeout).
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// Starts a cluster of this shape; see [`RedisCluster::start_with`].
    ///
    /// # Errors
    ///
    /// As [`RedisCluster::start_with`].
    pub fn start(&self) -> Result<RedisCluster, Error> {
        RedisCluster::start_with(self)
    }

    fn validate(&self) -> Result<(), Error> {
        if !(1..=MAX_MASTERS).contains(&self.masters) {
            return Err(Error::invalid_request(
                format_args!("a cluster of {} masters", self.masters),
                "choose 1 to 16 masters",
            ));
        }
        if self.replicas_per_master > MAX_REPLICAS {
            return Err(Error::invalid_request(
                format_args!("{} replicas per master", self.replicas_per_master),
                "choose 0 to 4 replicas per master",
            ));
        }
        if self.node_timeout < Duration::from_millis(100) {
            return Err(Error::invalid_request(
                format_args!("a node timeout of {:?}", self.node_timeout),
                "choose at least 100 ms: shorter ones flag nodes as failing on a busy machine",
            ));
        }
        Ok(())
    }
}

/// What a node is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Serves slots (or is an empty master, e.g. one just [added](RedisCluster::add_master)).
    Master,
    /// Replicates a master.
    Replica,
}

/// One node of a [`RedisCluster`] as [`RedisCluster::nodes`] sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterNode {
    /// Its port on 127.0.0.1: the name every method takes.
    pub port: u16,
    /// Its 40-character cluster node id.
    pub id: String,
    /// What it is now: its own view while it runs, the other nodes' view once it is dead.
    pub role: Role,
    /// The port of its master, for a replica.
    pub master: Option<u16>,
    /// The slot ranges it serves, for a master.
    pub slots: Vec<RangeInclusive<u16>>,
    /// Whether its process is alive (also while paused).
    pub running: bool,
    /// Whether it is [paused](RedisCluster::pause).
    pub paused: bool,
}

impl ClusterNode {
    /// `redis://127.0.0.1:<port>/`.
    #[must_use]
    pub fn url(&self) -> String {
        url(self.port)
    }
}

/// What a failover did: which node lost a role, which one took it over, and how long it took
/// from the fault (the SIGKILL, the failover command) until every running node agreed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Failover {
    /// The port of the master (or Sentinel primary) that was replaced.
    pub from: u16,
    /// The port of the replica that was promoted.
    pub to: u16,
    /// From the fault until the promoted node served and every running node agreed.
    pub took: Duration,
}

/// A slot migration begun by [`RedisCluster::begin_migration`]: the source says `MIGRATING`,
/// the target `IMPORTING`, and keys move only when asked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "finish the migration with RedisCluster::finish_migration"]
pub struct SlotMigration {
    slot: u16,
    from: u16,
    to: u16,
    from_id: String,
    to_id: String,
}

impl SlotMigration {
    /// The slot being moved.
    #[must_use]
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// The port of the master the slot leaves: it answers `ASK` for keys already moved and
    /// `TRYAGAIN` for multi-key commands over moved and unmoved keys.
    #[must_use]
    pub fn from(&self) -> u16 {
        self.from
    }

    /// The port of the master the slot goes to: it serves moved keys after `ASKING`.
    #[must_use]
    pub fn to(&self) -> u16 {
        self.to
    }
}

/// One node's process and its cluster identity.
struct Member {
    process: RedisProcess,
    id: String,
}

/// A running Redis Cluster; see the [module docs](self).
///
/// All methods take `&self` and block; the handle is `Send + Sync`.
pub struct RedisCluster {
    binary: PathBuf,
    config: RedisClusterConfig,
    members: Mutex<Vec<Member>>,
    started_in: Duration,
    // Last: removed after every node is dead.
    dir: TempDir,
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ports: Vec<u16> = self
            .lock()
            .iter()
            .map(|member| member.process.port())
            .collect();
        f.debug_struct("RedisCluster")
            .field("config", &self.config)
            .field("ports", &ports)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl RedisCluster {
    /// Starts 3 masters with 1 replica each (the default [`RedisClusterConfig`]) and waits until
    /// the cluster is ready (≈ 2 s).
    ///
    /// # Errors
    ///
    /// `redis-server` is not installed, no port is free, a node did not come up (the error
    /// carries its log tail), or the nodes did not agree within 30 s.
    pub fn start() -> Result<Self, Error> {
        Self::start_with(&RedisClusterConfig::default())
    }

    /// Starts a cluster of the given shape and waits until it is ready: every node says
    /// `cluster_state:ok`, all agree on slot owners and roles, every replica's link is up.
    ///
    /// # Errors
    ///
    /// The config is out of range ([`Error::is_invalid_request`]), or as [`start`](Self::start).
    pub fn start_with(config: &RedisClusterConfig) -> Result<Self, Error> {
        config.validate()?;
        let started = Instant::now();
        let binary = process::find_on_path("redis-server").ok_or_else(|| {
            Error::not_installed(
                "redis-server (on PATH)",
                "install Redis 7 or later (apt-get install -y redis-server)",
            )
        })?;
        let dir = process::temp_dir("welcomedly-redis-cluster-")?;
        let total = config.masters * (1 + config.replicas_per_master);
        let mut members = Vec::with_capacity(total);
        for _ in 0..total {
            members.push(spawn_member(&binary, &dir, config, members.len())?);
        }
        let mut cluster = Self {
            binary,
            config: config.clone(),
            members: Mutex::new(members),
            started_in: Duration::ZERO,
            dir,
        };
        cluster.form()?;
        cluster.started_in = started.elapsed();
        Ok(cluster)
    }

    /// Assigns slots, introduces the nodes to each other, attaches the replicas and waits.
    fn form(&self) -> Result<(), Error> {
        let nodes: Vec<(u16, String)> = self.snapshot().into_iter().map(|n| (n.0, n.1)).collect();
        let masters = self.config.masters;
        let (master_nodes, replica_nodes) = nodes.split_at(masters.min(nodes.len()));
        for (index, (port, _)) in master_nodes.iter().enumerate() {
            let (first, last) = even_share(index, masters);
            resp::request(
                *port,
                &[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &first.to_string(),
                    &last.to_string(),
                ],
            )?;
        }
        // Distinct epochs up front, as redis-cli does, so no epoch collision has to be resolved
        // by gossip before the cluster can agree.
        for (index, (port, _)) in nodes.iter().enumerate() {
            resp::request(
                *port,
                &["CLUSTER", "SET-CONFIG-EPOCH", &(index + 1).to_string()],
            )?;
        }
        let bus_ports = self.bus_ports();
        if let Some((hub, _)) = nodes.first() {
            for (port, _) in nodes.iter().skip(1) {
                let bus = bus_ports.get(port).copied().unwrap_or_default();
                resp::request(
                    *hub,
                    &[
                        "CLUSTER",
                        "MEET",
                        "127.0.0.1",
                        &port.to_string(),
                        &bus.to_string(),
                    ],
                )?;
            }
        }
        let ids: Vec<&str> = nodes.iter().map(|(_, id)| id.as_str()).collect();
        wait_for("the cluster nodes to meet", START_TIMEOUT, || {
            for (port, _) in &nodes {
                let view = view_of(*port).map_err(|error| error.to_string())?;
                for id in &ids {
                    match view.iter().find(|entry| entry.id == *id) {
                        Some(entry) if !entry.handshake => {}
                        _ => return Err(format!("127.0.0.1:{port} does not know node {id} yet")),
                    }
                }
            }
            Ok(())
        })?;
        for (index, (port, _)) in replica_nodes.iter().enumerate() {
            let Some((_, master_id)) = master_nodes.get(index % masters) else {
                continue;
            };
            resp::request(*port, &["CLUSTER", "REPLICATE", master_id])?;
        }
        self.wait_settled("the cluster to form", START_TIMEOUT, |_| Ok(()))
    }

    /// How long [`start`](Self::start) took, from the first spawn until the cluster was ready.
    #[must_use]
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The configuration the cluster was started with.
    pub fn config(&self) -> &RedisClusterConfig {
        &self.config
    }

    /// The slot of a key: CRC16-XMODEM of the key, or of its hash tag (the bytes between the
    /// first `{` and the next `}`, if there are any), modulo 16384.
    ///
    /// ```
    /// use welcomedly_testkit::RedisCluster;
    ///
    /// assert_eq!(RedisCluster::slot_of(b"123456789"), 12739);
    /// assert_eq!(
    ///     RedisCluster::slot_of(b"{user1000}.following"),
    ///     RedisCluster::slot_of(b"{user1000}.followers"),
    /// );
    /// ```
    #[must_use]
    pub fn slot_of(key: &[u8]) -> u16 {
        crc16_xmodem(hash_tag(key)) % SLOTS
    }

    /// Every node, as the running nodes see it now, in start order.
    ///
    /// # Errors
    ///
    /// No node is running, or one did not answer `CLUSTER NODES`.
    pub fn nodes(&self) -> Result<Vec<ClusterNode>, Error> {
        let snapshot = self.snapshot();
        let ports_by_id: HashMap<&str, u16> = snapshot
            .iter()
            .map(|(port, id, _, _)| (id.as_str(), *port))
            .collect();
        let shared = self.any_view()?;
        let mut nodes = Vec::with_capacity(snapshot.len());
        for (port, id, running, paused) in &snapshot {
            let own = if *running && !*paused {
                view_of(*port)?.into_iter().find(|entry| entry.myself)
            } else {
                None
            };
            let Some(entry) = own.or_else(|| shared.iter().find(|e| e.id == *id).cloned()) else {
                continue;
            };
            nodes.push(ClusterNode {
                port: *port,
                id: id.clone(),
                role: if entry.master {
                    Role::Master
                } else {
                    Role::Replica
                },
                master: entry
                    .master_id
                    .as_deref()
                    .and_then(|master| ports_by_id.get(master).copied()),
                slots: entry
                    .slots
                    .iter()
                    .map(|&(first, last)| first..=last)
                    .collect(),
                running: *running,
                paused: *paused,
            });
        }
        Ok(nodes)
    }

    /// The ports of every node, in start order (masters first, then replicas, then added
    /// masters), whatever their role and state now.
    #[must_use]
    pub fn ports(&self) -> Vec<u16> {
        self.lock()
            .iter()
            .map(|member| member.process.port())
            .collect()
    }

    /// The ports of the running, unpaused nodes, masters first: seeds for a client.
    #[must_use]
    pub fn seed_ports(&self) -> Vec<u16> {
        let masters: HashSet<u16> = self.master_ports().into_iter().collect();
        let mut live: Vec<u16> = self
            .snapshot()
            .into_iter()
            .filter(|(_, _, running, paused)| *running && !*paused)
            .map(|(port, ..)| port)
            .collect();
        live.sort_by_key(|port| !masters.contains(port));
        live
    }

    /// `redis://127.0.0.1:<port>/` of every running, unpaused node, masters first: what a
    /// cluster client takes as its seed list (any one node is enough to discover the rest; all of
    /// them survive any one node's death).
    #[must_use]
    pub fn seed_urls(&self) -> Vec<String> {
        self.seed_ports().into_iter().map(url).collect()
    }

    /// `redis://127.0.0.1:<port>/` of the masters serving slots now.
    #[must_use]
    pub fn urls(&self) -> Vec<String> {
        self.master_ports().into_iter().map(url).collect()
    }

    /// The ports of the masters serving slots now, by their first slot.
    fn master_ports(&self) -> Vec<u16> {
        let Ok(view) = self.any_view() else {
            return Vec::new();
        };
        let by_id = self.ports_by_id();
        let mut owners: Vec<(u16, u16)> = view
            .iter()
            .filter(|entry| entry.master && !entry.failing)
            .filter_map(|entry| {
                let first = entry.slots.iter().map(|&(first, _)| first).min()?;
                Some((first, *by_id.get(&entry.id)?))
            })
            .collect();
        owners.sort_unstable();
        owners.into_iter().map(|(_, port)| port).collect()
    }

    /// The port of the master serving `slot` now, as the first running node sees it.
    ///
    /// # Errors
    ///
    /// `slot` is not below 16384 ([`Error::is_invalid_request`]), no node is running, or no
    /// master serves the slot.
    pub fn master_for_slot(&self, slot: u16) -> Result<u16, Error> {
        check_slot(slot)?;
        let view = self.any_view()?;
        let owner = owner_of(&view, slot).ok_or_else(|| {
            Error::invalid_request(
                format_args!("slot {slot}"),
                "no master serves it: finish or undo the slot's migration",
            )
        })?;
        self.port_of(&owner)
    }

    /// The port of the master serving `key`'s slot now.
    ///
    /// # Errors
    ///
    /// As [`master_for_slot`](Self::master_for_slot).
    pub fn node_for(&self, key: &[u8]) -> Result<u16, Error> {
        self.master_for_slot(Self::slot_of(key))
    }

    /// The ports of the running replicas of the master at `master`.
    ///
    /// # Errors
    ///
    /// `master` is not a node of the cluster, or a node did not answer.
    pub fn replicas_of(&self, master: u16) -> Result<Vec<u16>, Error> {
        let id = self.id_of(master)?;
        let mut replicas = Vec::new();
        for (port, _, running, paused) in self.snapshot() {
            if !running || paused || port == master {
                continue;
            }
            if let Some(me) = view_of(port)?.into_iter().find(|entry| entry.myself)
                && me.master_id.as_deref() == Some(id.as_str())
            {
                replicas.push(port);
            }
        }
        Ok(replicas)
    }

    /// Runs one command on the node at `node` and returns the reply as text (nil as the empty
    /// string). A key of another node's slot is a `MOVED` error reply: see [`Error::reply`].
    ///
    /// # Errors
    ///
    /// `node` is not a node of the cluster, it is not reachable, or it answered with an error.
    pub fn command_on(&self, node: u16, args: &[&str]) -> Result<String, Error> {
        self.query_on(node, args).map(|reply| reply.to_text())
    }

    /// Runs one command on the node at `node` and returns the structured reply.
    ///
    /// # Errors
    ///
    /// As [`command_on`](Self::command_on).
    pub fn query_on(&self, node: u16, args: &[&str]) -> Result<Reply, Error> {
        self.index_of(node)?;
        resp::request(node, args)
    }

    /// [`query_on`](Self::query_on) with its own timeout instead of 5 s, to see that a
    /// [paused](Self::pause) node does not answer.
    ///
    /// # Errors
    ///
    /// As [`command_on`](Self::command_on); a timeout is [`Error::is_io`].
    pub fn query_on_within(
        &self,
        node: u16,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Reply, Error> {
        self.index_of(node)?;
        resp::request_within(node, args, timeout)
    }

    /// The log file of the node at `node`.
    ///
    /// # Errors
    ///
    /// `node` is not a node of the cluster.
    pub fn log_path(&self, node: u16) -> Result<PathBuf, Error> {
        let index = self.index_of(node)?;
        let members = self.lock();
        Ok(members
            .get(index)
            .map(|member| member.process.log().to_path_buf())
            .unwrap_or_default())
    }

    /// SIGKILLs the master serving `slot` and returns once one of its replicas was promoted,
    /// serves the slot, and every running node says `cluster_state:ok` and agrees on the slot
    /// map. With the default 1 s node timeout this takes 2–4 s.
    ///
    /// # Errors
    ///
    /// The master has no running replica ([`Error::is_invalid_request`]; nothing is killed), or
    /// the cluster did not settle within 30 s.
    pub fn kill_master(&self, slot: u16) -> Result<Failover, Error> {
        let master = self.master_for_slot(slot)?;
        let replica = self.first_replica(master, slot)?;
        let replica_id = self.id_of(replica)?;
        let started = Instant::now();
        self.kill(master)?;
        self.wait_settled(
            &format!("the replica 127.0.0.1:{replica} to take over slot {slot}"),
            SETTLE_TIMEOUT,
            |table| {
                if owner_in(table, slot) == Some(replica_id.as_str()) {
                    Ok(())
                } else {
                    Err(format!(
                        "slot {slot} is not served by 127.0.0.1:{replica} yet"
                    ))
                }
            },
        )?;
        Ok(Failover {
            from: master,
            to: replica,
            took: started.elapsed(),
        })
    }

    /// `CLUSTER FAILOVER` on a replica of the master serving `slot`: the roles swap without data
    /// loss. Returns once the replica serves the slot, the old master replicates it with its link
    /// up, and no node is flagged failing.
    ///
    /// # Errors
    ///
    /// The master has no running replica ([`Error::is_invalid_request`]), the replica refused
    /// the command, or the cluster did not settle within 30 s.
    pub fn failover(&self, slot: u16) -> Result<Failover, Error> {
        let master = self.master_for_slot(slot)?;
        let replica = self.first_replica(master, slot)?;
        let replica_id = self.id_of(replica)?;
        let started = Instant::now();
        resp::request(replica, &["CLUSTER", "FAILOVER"])?;
        self.wait_settled(
            &format!("the replica 127.0.0.1:{replica} to take over slot {slot}"),
            SETTLE_TIMEOUT,
            |table| {
                if owner_in(table, slot) != Some(replica_id.as_str()) {
                    return Err(format!(
                        "slot {slot} is not served by 127.0.0.1:{replica} yet"
                    ));
                }
                let old = view_of(master).map_err(|error| error.to_string())?;
                match old.iter().find(|entry| entry.myself) {
                    Some(me) if me.master_id.as_deref() == Some(replica_id.as_str()) => Ok(()),
                    _ => Err(format!(
                        "127.0.0.1:{master} does not replicate 127.0.0.1:{replica} yet"
                    )),
                }
            },
        )?;
        Ok(Failover {
            from: master,
            to: replica,
            took: started.elapsed(),
        })
    }

    fn first_replica(&self, master: u16, slot: u16) -> Result<u16, Error> {
        self.replicas_of(master)?.into_iter().next().ok_or_else(|| {
            Error::invalid_request(
                format_args!("failing over slot {slot} of 127.0.0.1:{master}"),
                "that master has no running replica to promote: start the cluster with \
                 replicas_per_master(1) or more, or restart its replica",
            )
        })
    }

    /// SIGKILLs the node at `node` without waiting for anything (a replica, or a master whose
    /// failover the test wants to watch itself). Does nothing if it is not running.
    ///
    /// # Errors
    ///
    /// `node` is not a node of the cluster.
    pub fn kill(&self, node: u16) -> Result<(), Error> {
        let index = self.index_of(node)?;
        if let Some(member) = self.lock().get_mut(index) {
            member.process.kill();
        }
        Ok(())
    }

    /// Freezes the node at `node` (SIGSTOP): it accepts connections and answers nothing. After
    /// the node timeout the others flag it failing and, for a master with a replica, promote
    /// the replica. Nothing is awaited.
    ///
    /// # Errors
    ///
    /// `node` is not a node of the cluster or is not running, or `kill -STOP` failed.
    pub fn pause(&self, node: u16) -> Result<(), Error> {
        let index = self.index_of(node)?;
        match self.lock().get_mut(index) {
            Some(member) => member.process.pause(),
            None => Ok(()),
        }
    }

    /// Lets a [paused](Self::pause) node run again (SIGCONT). Nothing is awaited: a master that
    /// was replaced meanwhile turns itself into a replica within a moment.
    ///
    /// # Errors
    ///
    /// `node` is not a node of the cluster, or `kill -CONT` failed.
    pub fn resume(&self, node: u16) -> Result<(), Error> {
        let index = self.index_of(node)?;
        match self.lock().get_mut(index) {
            Some(member) => member.process.resume(),
            None => Ok(()),
        }
    }

    /// Starts a [killed](Self::kill) node again on its ports (a running one is killed first). It
    /// keeps its node id and cluster view (`nodes.conf`), not its data: a master that was
    /// replaced rejoins as a replica of its successor and syncs from it. Returns once every
    /// running node agrees and every replica's link is up.
    ///
    /// # Errors
    ///
    /// `node` is not a node of the cluster, its ports stayed taken, it did not come up, or the
    /// cluster did not settle within 30 s.
    pub fn restart(&self, node: u16) -> Result<(), Error> {
        let index = self.index_of(node)?;
        if let Some(member) = self.lock().get_mut(index) {
            member.process.restart()?;
        }
        self.wait_settled(
            &format!("127.0.0.1:{node} to rejoin"),
            SETTLE_TIMEOUT,
            |_| Ok(()),
        )
    }

    /// Starts a new master, empty (no slots, no replica), introduces it with `CLUSTER MEET` and
    /// returns its port once every running node knows it. Move slots to it with
    /// [`move_slots`](Self::move_slots).
    ///
    /// # Errors
    ///
    /// The new node did not come up, or the cluster did not settle within 30 s.
    pub fn add_master(&self) -> Result<u16, Error> {
        let index = self.lock().len();
        let member = spawn_member(&self.binary, &self.dir, &self.config, index)?;
        let port = member.process.port();
        self.lock().push(member);
        let bus = self.bus_ports().get(&port).copied().unwrap_or_default();
        let hub = self
            .seed_ports()
            .into_iter()
            .find(|seed| *seed != port)
            .ok_or_else(no_live_node)?;
        resp::request(
            hub,
            &[
                "CLUSTER",
                "MEET",
                "127.0.0.1",
                &port.to_string(),
                &bus.to_string(),
            ],
        )?;
        self.wait_settled(
            &format!("the new master 127.0.0.1:{port} to join"),
            SETTLE_TIMEOUT,
            |_| Ok(()),
        )?;
        Ok(port)
    }

    /// Moves every slot of `slots` to the master at `to` with the full migration protocol (see
    /// [`migrate_slot`](Self::migrate_slot)); slots it serves already are skipped. Returns once
    /// every running node agrees. Moving a few hundred slots takes well under a second.
    ///
    /// # Errors
    ///
    /// A slot is out of range, `to` is not a running master, a command failed, or the cluster
    /// did not settle within 30 s.
    pub fn move_slots(&self, slots: RangeInclusive<u16>, to: u16) -> Result<(), Error> {
        check_slot(*slots.end())?;
        let mut connections = Connections::default();
        for slot in slots {
            let migration = self.begin_with(slot, to, &mut connections)?;
            if let Some(migration) = migration {
                self.finish_with(&migration, &mut connections)?;
            }
        }
        self.wait_settled(
            &format!("every node to see the slots moved to 127.0.0.1:{to}"),
            SETTLE_TIMEOUT,
            |_| Ok(()),
        )
    }

    /// Moves `slot` to the master at `to`: `CLUSTER SETSLOT … IMPORTING` on the target,
    /// `… MIGRATING` on the source, `MIGRATE` of every key in batches of 100, then `CLUSTER
    /// SETSLOT … NODE` on the target, the source and every other master. Returns once every
    /// running node agrees. To act while the slot is half-migrated, use
    /// [`begin_migration`](Self::begin_migration), [`migrate_keys`](Self::migrate_keys) and
    /// [`finish_migration`](Self::finish_migration) instead.
    ///
    /// # Errors
    ///
    /// As [`move_slots`](Self::move_slots).
    pub fn migrate_slot(&self, slot: u16, to: u16) -> Result<(), Error> {
        self.move_slots(slot..=slot, to)
    }

    /// Starts moving `slot` to the master at `to` and stops there: the target says
    /// `IMPORTING`, the source `MIGRATING`, no key has moved. Until
    /// [`finish_migration`](Self::finish_migration), the source answers `ASK` for keys already
    /// moved (see [`migrate_keys`](Self::migrate_keys)) and `TRYAGAIN` for multi-key commands
    /// over moved and unmoved keys.
    ///
    /// # Errors
    ///
    /// `slot` is out of range, `to` is not a running master or serves the slot already
    /// ([`Error::is_invalid_request`]), or a command failed.
    pub fn begin_migration(&self, slot: u16, to: u16) -> Result<SlotMigration, Error> {
        check_slot(slot)?;
        let mut connections = Connections::default();
        self.begin_with(slot, to, &mut connections)?.ok_or_else(|| {
            Error::invalid_request(
                format_args!("migrating slot {slot} to 127.0.0.1:{to}"),
                "that master serves the slot already: pick another target",
            )
        })
    }

    /// `MIGRATE`s the given keys of a begun migration's slot from its source to its target.
    /// Keys that do not exist on the source are skipped. Returns how many were moved.
    ///
    /// # Errors
    ///
    /// A key is not in the migration's slot ([`Error::is_invalid_request`]), or `MIGRATE`
    /// failed.
    pub fn migrate_keys(&self, migration: &SlotMigration, keys: &[&str]) -> Result<usize, Error> {
        if let Some(key) = keys
            .iter()
            .find(|key| Self::slot_of(key.as_bytes()) != migration.slot)
        {
            return Err(Error::invalid_request(
                format_args!(
                    "migrating key {key:?} (slot {}) with slot {}",
                    Self::slot_of(key.as_bytes()),
                    migration.slot
                ),
                "pass only keys of the migration's slot",
            ));
        }
        let mut source = Connection::open(migration.from)?;
        let mut moved = 0;
        for batch in keys.chunks(MIGRATE_BATCH) {
            moved += migrate_batch(&mut source, migration.to, batch)?;
        }
        Ok(moved)
    }

    /// Moves the remaining keys of a begun migration and assigns the slot to the target on
    /// every master (`CLUSTER SETSLOT … NODE`); returns once every running node agrees.
    ///
    /// # Errors
    ///
    /// A command failed, or the cluster did not settle within 30 s.
    pub fn finish_migration(&self, migration: SlotMigration) -> Result<(), Error> {
        let mut connections = Connections::default();
        self.finish_with(&migration, &mut connections)?;
        self.wait_settled(
            &format!(
                "every node to see slot {} served by 127.0.0.1:{}",
                migration.slot, migration.to
            ),
            SETTLE_TIMEOUT,
            |_| Ok(()),
        )
    }

    /// `SETSLOT IMPORTING` / `MIGRATING`; `None` if `to` serves `slot` already.
    fn begin_with(
        &self,
        slot: u16,
        to: u16,
        connections: &mut Connections,
    ) -> Result<Option<SlotMigration>, Error> {
        let to_id = self.id_of(to)?;
        let target_is_master = view_of(to)?
            .iter()
            .any(|entry| entry.myself && entry.master);
        if !target_is_master {
            return Err(Error::invalid_request(
                format_args!("migrating slot {slot} to 127.0.0.1:{to}"),
                "that node is a replica: migrate slots to a master",
            ));
        }
        let from = self.master_for_slot(slot)?;
        if from == to {
            return Ok(None);
        }
        let from_id = self.id_of(from)?;
        let slot_text = slot.to_string();
        connections
            .get(to)?
            .request(&["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &from_id])?;
        connections
            .get(from)?
            .request(&["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &to_id])?;
        Ok(Some(SlotMigration {
            slot,
            from,
            to,
            from_id,
            to_id,
        }))
    }

    /// Every remaining key, then `SETSLOT NODE` on the target, the source and every other
    /// running master (the order the cluster spec gives, so no node answers for a slot it lost).
    fn finish_with(
        &self,
        migration: &SlotMigration,
        connections: &mut Connections,
    ) -> Result<(), Error> {
        let slot_text = migration.slot.to_string();
        let batch_text = MIGRATE_BATCH.to_string();
        loop {
            let source = connections.get(migration.from)?;
            let keys = source
                .request(&["CLUSTER", "GETKEYSINSLOT", &slot_text, &batch_text])?
                .to_text();
            let keys: Vec<&str> = keys.lines().filter(|key| !key.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            if migrate_batch(source, migration.to, &keys)? == 0 {
                return Err(Error::invalid_request(
                    format_args!(
                        "migrating slot {} from 127.0.0.1:{}: keys listed by GETKEYSINSLOT \
                         could not be moved",
                        migration.slot, migration.from
                    ),
                    "use text keys (this client sends keys as UTF-8)",
                ));
            }
        }
        let node = ["CLUSTER", "SETSLOT", &slot_text, "NODE", &migration.to_id];
        connections.get(migration.to)?.request(&node)?;
        connections.get(migration.from)?.request(&node)?;
        for (port, _, running, paused) in self.snapshot() {
            if !running || paused || port == migration.to || port == migration.from {
                continue;
            }
            let connection = connections.get(port)?;
            let is_master = connection
                .request(&["ROLE"])?
                .to_text()
                .starts_with("master");
            if is_master {
                connection.request(&node)?;
            }
        }
        Ok(())
    }

    /// Waits until every running node says `cluster_state:ok`, they agree on slot owners and
    /// roles, none of them is flagged failing, every replica of a running master has its link
    /// up, and `extra` accepts the agreed slot table.
    fn wait_settled(
        &self,
        what: &str,
        timeout: Duration,
        extra: impl Fn(&[(u16, u16, String)]) -> Result<(), String>,
    ) -> Result<(), Error> {
        wait_for(what, timeout, || {
            let live: Vec<(u16, String)> = self
                .snapshot()
                .into_iter()
                .filter(|(_, _, running, paused)| *running && !*paused)
                .map(|(port, id, ..)| (port, id))
                .collect();
            let table = settled(&live)?;
            extra(&table)
        })
    }

    /// `(port, id, running, paused)` of every node.
    fn snapshot(&self) -> Vec<(u16, String, bool, bool)> {
        self.lock()
            .iter_mut()
            .map(|member| {
                let running = member.process.is_running();
                (
                    member.process.port(),
                    member.id.clone(),
                    running,
                    member.process.is_paused(),
                )
            })
            .collect()
    }

    fn bus_ports(&self) -> HashMap<u16, u16> {
        self.lock()
            .iter()
            .map(|member| {
                let port = member.process.port();
                (port, bus_port_of(&member.process).unwrap_or_default())
            })
            .collect()
    }

    fn ports_by_id(&self) -> HashMap<String, u16> {
        self.lock()
            .iter()
            .map(|member| (member.id.clone(), member.process.port()))
            .collect()
    }

    /// The `CLUSTER NODES` view of the first running node.
    fn any_view(&self) -> Result<Vec<Entry>, Error> {
        let mut last = None;
        for (port, _, running, paused) in self.snapshot() {
            if running && !paused {
                match view_of(port) {
                    Ok(view) => return Ok(view),
                    Err(error) => last = Some(error),
                }
            }
        }
        Err(last.unwrap_or_else(no_live_node))
    }

    fn index_of(&self, node: u16) -> Result<usize, Error> {
        self.lock()
            .iter()
            .position(|member| member.process.port() == node)
            .ok_or_else(|| {
                Error::invalid_request(
                    format_args!("127.0.0.1:{node}"),
                    "that port is not a node of this cluster: take ports from nodes(), \
                     master_for_slot() or node_for()",
                )
            })
    }

    fn id_of(&self, node: u16) -> Result<String, Error> {
        let index = self.index_of(node)?;
        Ok(self
            .lock()
            .get(index)
            .map(|member| member.id.clone())
            .unwrap_or_default())
    }

    fn port_of(&self, id: &str) -> Result<u16, Error> {
        self.ports_by_id().get(id).copied().ok_or_else(|| {
            Error::invalid_request(
                format_args!("cluster node {id}"),
                "a node this handle did not start joined the cluster: use a fresh cluster",
            )
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Member>> {
        // A panic while holding the lock leaves the processes intact; keep using them.
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection per node, opened on first use, for the hundreds of commands of a slot move.
#[derive(Default)]
struct Connections(HashMap<u16, Connection>);

impl Connections {
    fn get(&mut self, port: u16) -> Result<&mut Connection, Error> {
        use std::collections::hash_map::Entry as Slot;
        match self.0.entry(port) {
            Slot::Occupied(entry) => Ok(entry.into_mut()),
            Slot::Vacant(entry) => Ok(entry.insert(Connection::open(port)?)),
        }
    }
}

/// `MIGRATE` of `keys` from the node behind `source` to `to`; how many existed and moved.
fn migrate_batch(source: &mut Connection, to: u16, keys: &[&str]) -> Result<usize, Error> {
    if keys.is_empty() {
        return Ok(0);
    }
    let to_text = to.to_string();
    let mut args = vec![
        "MIGRATE",
        "127.0.0.1",
        &to_text,
        "",
        "0",
        MIGRATE_TIMEOUT_MS,
        "REPLACE",
        "KEYS",
    ];
    args.extend_from_slice(keys);
    // `NOKEY` when none of them existed; MIGRATE says nothing about a partial batch, so count.
    match source.request(&args)? {
        Reply::Status(status) if status == "NOKEY" => Ok(0),
        _ => Ok(keys.len()),
    }
}

fn spawn_member(
    binary: &std::path::Path,
    dir: &TempDir,
    config: &RedisClusterConfig,
    index: usize,
) -> Result<Member, Error> {
    let node_dir = dir.path().join(format!("node-{index}"));
    let timeout_ms = config.node_timeout.as_millis().to_string();
    let coverage = if config.require_full_coverage {
        "yes"
    } else {
        "no"
    };
    let process = RedisProcess::start(binary, node_dir, || {
        let port = ports::free_port()?;
        let bus = ports::free_port()?;
        let after = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            &bus.to_string(),
            "--cluster-node-timeout",
            &timeout_ms,
            "--cluster-require-full-coverage",
            coverage,
            "--cluster-replica-validity-factor",
            "0",
            "--cluster-allow-replica-migration",
            "no",
            "--repl-diskless-sync-delay",
            "0",
        ];
        Ok(Args {
            port,
            before: Vec::new(),
            after: after.iter().map(|arg| (*arg).to_owned()).collect(),
        })
    })?;
    let id = resp::request(process.port(), &["CLUSTER", "MYID"])?.to_text();
    Ok(Member { process, id })
}

/// The `--cluster-port` a node was started with.
fn bus_port_of(process: &RedisProcess) -> Option<u16> {
    let args = process.args_after();
    let at = args.iter().position(|arg| arg == "--cluster-port")?;
    args.get(at + 1)?.parse().ok()
}

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/")
}

fn no_live_node() -> Error {
    Error::not_running(
        "every node of the cluster",
        "restart or resume a node first",
    )
}

fn check_slot(slot: u16) -> Result<(), Error> {
    if slot < SLOTS {
        Ok(())
    } else {
        Err(Error::invalid_request(
            format_args!("slot {slot}"),
            "slots are 0..16384: compute them with RedisCluster::slot_of",
        ))
    }
}

/// Master `index` of `count` gets `[index * 16384 / count, (index + 1) * 16384 / count)`.
fn even_share(index: usize, count: usize) -> (usize, usize) {
    let slots = usize::from(SLOTS);
    let count = count.max(1);
    (index * slots / count, (index + 1) * slots / count - 1)
}

/// The part of a key that is hashed: the bytes between the first `{` and the next `}` when
/// there is at least one byte between them, else the whole key (the cluster spec's rule).
fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&byte| byte == b'{') else {
        return key;
    };
    let Some(rest) = key.get(open + 1..) else {
        return key;
    };
    match rest.iter().position(|&byte| byte == b'}') {
        Some(close) if close > 0 => rest.get(..close).unwrap_or(key),
        _ => key,
    }
}

/// CRC16-CCITT as XMODEM computes it (polynomial 0x1021, initial value 0), the cluster spec's
/// hash. Eight lines, so no crate for it.
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// `(first, last, owner id)` of every served slot range, sorted.
type SlotTable = Vec<(u16, u16, String)>;

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    id: String,
    myself: bool,
    master: bool,
    /// Flagged `fail` or `fail?` by the node whose view this is.
    failing: bool,
    handshake: bool,
    master_id: Option<String>,
    /// Served slot ranges (a migration's `[slot->-id]` markers are not ownership).
    slots: Vec<(u16, u16)>,
}

fn view_of(port: u16) -> Result<Vec<Entry>, Error> {
    Ok(parse_nodes(
        &resp::request(port, &["CLUSTER", "NODES"])?.to_text(),
    ))
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch>
/// <link> <slot>...`; lines that do not look like that are skipped.
fn parse_nodes(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let id = fields.next()?.to_owned();
            let _addr = fields.next()?;
            let flags: Vec<&str> = fields.next()?.split(',').collect();
            let master_id = fields.next()?;
            let slots = fields
                .skip(4)
                .filter(|slot| !slot.starts_with('['))
                .filter_map(|slot| match slot.split_once('-') {
                    Some((first, last)) => Some((first.parse().ok()?, last.parse().ok()?)),
                    None => {
                        let only = slot.parse().ok()?;
                        Some((only, only))
                    }
                })
                .collect();
            Some(Entry {
                id,
                myself: flags.contains(&"myself"),
                master: flags.contains(&"master"),
                failing: flags.contains(&"fail") || flags.contains(&"fail?"),
                handshake: flags.contains(&"handshake"),
                master_id: (master_id != "-").then(|| master_id.to_owned()),
                slots,
            })
        })
        .collect()
}

/// `(first, last, owner id)` of every served range, sorted.
fn slot_table(view: &[Entry]) -> SlotTable {
    let mut table: SlotTable = view
        .iter()
        .filter(|entry| entry.master)
        .flat_map(|entry| {
            entry
                .slots
                .iter()
                .map(move |&(first, last)| (first, last, entry.id.clone()))
        })
        .collect();
    table.sort_unstable();
    table
}

fn owner_in(table: &[(u16, u16, String)], slot: u16) -> Option<&str> {
    table
        .iter()
        .find(|(first, last, _)| (*first..=*last).contains(&slot))
        .map(|(_, _, owner)| owner.as_str())
}

fn owner_of(view: &[Entry], slot: u16) -> Option<String> {
    owner_in(&slot_table(view), slot).map(str::to_owned)
}

/// One probe of the settled state over the live nodes `(port, id)`; the agreed slot table, or
/// what is not settled yet.
fn settled(live: &[(u16, String)]) -> Result<SlotTable, String> {
    if live.is_empty() {
        return Err("no node is running".to_owned());
    }
    let mut views = Vec::with_capacity(live.len());
    for (port, _) in live {
        let info = resp::request(*port, &["CLUSTER", "INFO"])
            .map_err(|error| error.to_string())?
            .to_text();
        if !info.lines().any(|line| line.trim() == "cluster_state:ok") {
            return Err(format!("127.0.0.1:{port} does not say cluster_state:ok"));
        }
        views.push((*port, view_of(*port).map_err(|error| error.to_string())?));
    }
    let selves: HashMap<&str, &Entry> = views
        .iter()
        .filter_map(|(_, view)| view.iter().find(|entry| entry.myself))
        .map(|entry| (entry.id.as_str(), entry))
        .collect();
    let mut agreed: Option<(u16, SlotTable)> = None;
    for (port, view) in &views {
        let table = slot_table(view);
        let covered: usize = table
            .iter()
            .map(|(first, last, _)| usize::from(last.saturating_sub(*first)) + 1)
            .sum();
        if covered != usize::from(SLOTS) {
            return Err(format!(
                "127.0.0.1:{port} sees {covered} of 16384 slots served"
            ));
        }
        match &agreed {
            Some((first_port, first)) if *first != table => {
                return Err(format!(
                    "127.0.0.1:{first_port} and 127.0.0.1:{port} disagree on the slot map"
                ));
            }
            Some(_) => {}
            None => agreed = Some((*port, table)),
        }
        for (other_port, id) in live {
            let Some(entry) = view.iter().find(|entry| entry.id == *id) else {
                return Err(format!(
                    "127.0.0.1:{port} does not know 127.0.0.1:{other_port}"
                ));
            };
            if entry.failing || entry.handshake {
                return Err(format!(
                    "127.0.0.1:{port} flags 127.0.0.1:{other_port} as failing"
                ));
            }
            let Some(own) = selves.get(id.as_str()) else {
                return Err(format!("127.0.0.1:{other_port} does not list itself"));
            };
            if entry.master != own.master || entry.master_id != own.master_id {
                return Err(format!(
                    "127.0.0.1:{port} has an old view of the role of 127.0.0.1:{other_port}"
                ));
            }
        }
    }
    let live_ids: HashSet<&str> = live.iter().map(|(_, id)| id.as_str()).collect();
    for (port, id) in live {
        let Some(own) = selves.get(id.as_str()) else {
            continue;
        };
        let Some(master) = own.master_id.as_deref() else {
            continue;
        };
        if !live_ids.contains(master) {
            continue;
        }
        let info = resp::request(*port, &["INFO", "replication"])
            .map_err(|error| error.to_string())?
            .to_text();
        if !info
            .lines()
            .any(|line| line.trim() == "master_link_status:up")
        {
            return Err(format!(
                "the replica 127.0.0.1:{port} has no link to its master yet"
            ));
        }
    }
    Ok(agreed.map(|(_, table)| table).unwrap_or_default())
}

/// Polls `check` until it passes; on timeout the error says what was still missing.
fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(()) => return Ok(()),
            Err(reason) => reason,
        };
        if Instant::now() >= deadline {
            return Err(Error::timeout(
                format_args!("waited {timeout:?} for {what}; last: {last}"),
                None,
            ));
        }
        thread::sleep(POLL);
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Every process is killed by its own drop; clear them before the temp dir goes.
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn slots_follow_the_cluster_spec() {
        // The spec's check value of CRC16-XMODEM, and the slot it gives.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(RedisCluster::slot_of(b"123456789"), 12739);
        assert_eq!(RedisCluster::slot_of(b"foo"), 12182);
        assert_eq!(RedisCluster::slot_of(b""), 0);
        // Hash tags: the first `{...}` with something inside.
        assert_eq!(
            RedisCluster::slot_of(b"{user1000}.following"),
            RedisCluster::slot_of(b"{user1000}.followers")
        );
        assert_eq!(
            RedisCluster::slot_of(b"{user1000}.following"),
            RedisCluster::slot_of(b"user1000")
        );
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"foo{bar"), b"foo{bar");
    }

    #[test]
    fn slots_are_shared_evenly_and_completely() {
        assert_eq!(even_share(0, 3), (0, 5460));
        assert_eq!(even_share(1, 3), (5461, 10921));
        assert_eq!(even_share(2, 3), (10922, 16383));
        assert_eq!(even_share(0, 1), (0, 16383));
    }

    #[test]
    fn cluster_nodes_lines_are_parsed() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 [93->-292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f]
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master,fail - 1426238316232 1426238316232 3 connected 10923 12000-16383
garbage";
        let view = parse_nodes(text);
        assert_eq!(view.len(), 3);
        let replica = &view[0];
        assert!(!replica.master && !replica.myself);
        assert_eq!(
            replica.master_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert!(view[1].myself && view[1].master);
        assert_eq!(view[1].slots, vec![(0, 5460)]);
        assert!(view[2].failing);
        assert_eq!(view[2].slots, vec![(10923, 10923), (12000, 16383)]);
        assert_eq!(
            owner_of(&view, 13000).as_deref(),
            Some("292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f")
        );
        assert_eq!(owner_of(&view, 6000), None);
    }
}
