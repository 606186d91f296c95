//! [`RedisCluster`]: a real Redis Cluster on free loopback ports with fault controls; its type
//! docs say what it does, since this module is private and they are what users read.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{self, wait_until};
use crate::redis_process::{Args, RedisProcess};
use crate::resp::{self, Reply};
use crate::{Error, ports};

mod faults;
mod migration;
mod slot;
mod topology;

pub use migration::SlotMigration;

use slot::{check_slot, crc16_xmodem, even_share, hash_tag};
use topology::{Entry, owner_of, settled, view_of};

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
    /// `127.0.0.1:<port>`, as `CLUSTER NODES`, `MOVED` and `ASK` write it.
    #[must_use]
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

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

/// One node's process and its cluster identity.
struct Member {
    process: RedisProcess,
    id: String,
}

/// A real Redis Cluster (N masters, M replicas each) on free loopback ports, with the faults a
/// cluster client must survive: a master killed and its replica promoted, a graceful failover, a
/// slot migrated key by key (`ASK` / `TRYAGAIN` while it is half done), a master added and slots
/// moved to it, a node frozen.
///
/// ```no_run
/// use welcomedly_testkit::{RedisCluster, RedisClusterConfig, Role};
///
/// # fn main() -> Result<(), welcomedly_testkit::Error> {
/// let cluster = RedisCluster::start()?; // 3 masters + 1 replica each, ≈ 2 s
/// // Hand `cluster.seed_urls()` to the code under test.
///
/// let node = cluster.node_for(b"user:42")?; // the master serving the key's slot now
/// cluster.command_on(node, &["SET", "user:42", "x"])?;
/// let moved = cluster.command_on(cluster.seed_ports()[0], &["GET", "user:42"]);
/// // `moved` is Ok("x") on the key's master, a `MOVED 12739 127.0.0.1:…` error elsewhere.
/// # let _ = moved;
///
/// let slot = RedisCluster::slot_of(b"user:42");
/// let failover = cluster.kill_master(slot)?; // SIGKILL; returns once the replica took over
/// println!("promoted in {:?}", failover.took);
/// cluster.restart(failover.from)?; // back, as a replica of the new master
/// cluster.failover(slot)?; // CLUSTER FAILOVER: the roles swap back
///
/// // Half a migration to another master, to see ASK / TRYAGAIN, then the rest:
/// let owner = cluster.master_for_slot(slot)?;
/// let other = cluster.nodes()?.into_iter().find(|n| n.role == Role::Master && n.port != owner);
/// let migration = cluster.begin_migration(slot, other.map_or(owner, |n| n.port))?;
/// cluster.migrate_keys(&migration, &["user:42"])?;
/// cluster.finish_migration(migration)?;
///
/// // Faster clusters for tests that need no failover:
/// let small = RedisClusterConfig::default().replicas_per_master(0).start()?;
/// let new_master = small.add_master()?; // joins empty
/// small.move_slots(0..=99, new_master)?;
/// # Ok(())
/// # }
/// ```
///
/// # Nodes
///
/// A node is named by its port on 127.0.0.1 (`u16`), the number a `MOVED` or `ASK` reply
/// carries. Each node runs `redis-server --cluster-enabled yes` in its own directory, with
/// persistence off, `cluster-node-timeout` from the config (1000 ms by default), its cluster bus
/// on a second free port (`cluster-port`, so it never lands in the ephemeral range the way
/// `port + 10000` would), `cluster-replica-validity-factor 0` (a replica may always be promoted,
/// however long its link was down), `cluster-allow-replica-migration no` (replicas stay where the
/// test put them) and `repl-diskless-sync-delay 0` (a new replica syncs at once, not after 5 s).
///
/// The cluster is built with plain commands, the way `redis-cli --cluster create` does:
/// `CLUSTER ADDSLOTSRANGE` on each master (16384 slots split evenly), `CLUSTER SET-CONFIG-EPOCH`,
/// `CLUSTER MEET`, `CLUSTER REPLICATE`. It is ready when every node says `cluster_state:ok`, every
/// node sees the same slot owners and roles and no node flagged `fail`, and every replica's
/// `master_link_status` is `up`. Every fault control waits for the same "settled" state among
/// the nodes that are still running, so a test can go on at once.
///
/// Keys given to [`migrate_keys`](RedisCluster::migrate_keys) and the replies of
/// [`command_on`](RedisCluster::command_on) are text (invalid UTF-8 is replaced); slot migration
/// moves binary keys correctly only through [`finish_migration`](RedisCluster::finish_migration)
/// if their bytes are valid UTF-8.
///
/// Dropping the handle SIGKILLs every node and removes the temp dir, also when a test panics.
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
        wait_until("the cluster nodes to meet", START_TIMEOUT, POLL, || {
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

    /// Waits until every running node says `cluster_state:ok`, they agree on slot owners and
    /// roles, none of them is flagged failing, every replica of a running master has its link
    /// up, and `extra` accepts the agreed slot table.
    fn wait_settled(
        &self,
        what: &str,
        timeout: Duration,
        extra: impl Fn(&[(u16, u16, String)]) -> Result<(), String>,
    ) -> Result<(), Error> {
        wait_until(what, timeout, POLL, || {
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

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Every process is killed by its own drop; clear them before the temp dir goes.
        self.lock().clear();
    }
}
