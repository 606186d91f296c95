//! [`RedisSentinel`]: a real Sentinel deployment on free loopback ports with fault controls;
//! its type docs say what it does, since this module is private and they are what users read.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::Failover;
use crate::process::{self, wait_until};
use crate::redis_process::{Args, RedisProcess};
use crate::resp::{self, Reply};
use crate::{Error, ports};

/// How long a start may take until every sentinel agrees.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a failover may take; the sentinels' own retry needs twice the failover timeout.
const FAILOVER_WAIT: Duration = Duration::from_secs(30);
/// How long a restarted old primary may take to be made a replica: the sentinels wait 8 s of it
/// being up before they reconfigure it, and look at replicas every 10 s.
const REJOIN_WAIT: Duration = Duration::from_secs(40);
/// How often waits look again.
const POLL: Duration = Duration::from_millis(20);
/// How many sentinels watch the primary.
const SENTINELS: usize = 3;
/// How many sentinels must agree the primary is down.
const QUORUM: usize = 2;

/// The settings of a [`RedisSentinel`] deployment.
///
/// ```no_run
/// use std::time::Duration;
/// use welcomedly_testkit::RedisSentinelConfig;
///
/// let sentinel = RedisSentinelConfig::default()
///     .master_name("calls")
///     .down_after(Duration::from_millis(500))
///     .start()?;
/// assert_eq!(sentinel.master_name(), "calls");
/// # Ok::<(), welcomedly_testkit::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct RedisSentinelConfig {
    /// The name the sentinels monitor the primary under (`sentinel monitor <name> …`), which a
    /// client asks for. Default `"mymaster"`; letters, digits, `-`, `_` and `.` only.
    pub master_name: String,
    /// `down-after-milliseconds`: how long the primary must not answer before a sentinel
    /// considers it down. Default 1000 ms (Redis' default is 30 s).
    pub down_after: Duration,
    /// `failover-timeout`: how long a failover may take before the sentinels try again; after
    /// a failover, no sentinel starts another for twice this. Default 2000 ms (Redis' default is
    /// 3 minutes).
    pub failover_timeout: Duration,
}

impl Default for RedisSentinelConfig {
    fn default() -> Self {
        Self {
            master_name: "mymaster".to_owned(),
            down_after: Duration::from_millis(1000),
            failover_timeout: Duration::from_millis(2000),
        }
    }
}

impl RedisSentinelConfig {
    /// Sets [`master_name`](Self::master_name).
    pub fn master_name(mut self, name: impl Into<String>) -> Self {
        self.master_name = name.into();
        self
    }

    /// Sets [`down_after`](Self::down_after).
    pub fn down_after(mut self, down_after: Duration) -> Self {
        self.down_after = down_after;
        self
    }

    /// Sets [`failover_timeout`](Self::failover_timeout).
    pub fn failover_timeout(mut self, timeout: Duration) -> Self {
        self.failover_timeout = timeout;
        self
    }

    /// Starts a deployment with these settings; see [`RedisSentinel::start_with`].
    ///
    /// # Errors
    ///
    /// As [`RedisSentinel::start_with`].
    pub fn start(&self) -> Result<RedisSentinel, Error> {
        RedisSentinel::start_with(self)
    }

    fn validate(&self) -> Result<(), Error> {
        let name_ok = !self.master_name.is_empty()
            && self.master_name.len() <= 64
            && self
                .master_name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte));
        if !name_ok {
            return Err(Error::invalid_request(
                format_args!("the master name {:?}", self.master_name),
                "use 1 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
        if self.down_after < Duration::from_millis(100) {
            return Err(Error::invalid_request(
                format_args!("down-after-milliseconds of {:?}", self.down_after),
                "choose at least 100 ms: shorter ones see a busy machine's pauses as outages",
            ));
        }
        if self.failover_timeout < Duration::from_millis(500) {
            return Err(Error::invalid_request(
                format_args!("a failover timeout of {:?}", self.failover_timeout),
                "choose at least 500 ms",
            ));
        }
        Ok(())
    }
}

struct Members {
    /// The two data nodes, in start order (the first primary at start).
    data: Vec<RedisProcess>,
    sentinels: Vec<RedisProcess>,
    /// The primary [`RedisSentinel::kill_primary`] killed last.
    old_primary: Option<u16>,
}

/// A real Redis Sentinel deployment on free loopback ports: one primary, one replica and three
/// sentinels (quorum 2), with the faults a Sentinel client must follow: the primary killed and
/// the replica promoted, a manual failover, the old primary back as a replica, a node frozen.
///
/// ```no_run
/// use welcomedly_testkit::RedisSentinel;
///
/// # fn main() -> Result<(), welcomedly_testkit::Error> {
/// let sentinel = RedisSentinel::start()?; // ≈ 3 s, until all three sentinels agree
/// // Hand `sentinel.sentinel_addrs()` and `sentinel.master_name()` to the code under test.
///
/// let primary = sentinel.primary()?;
/// sentinel.command_on(primary, &["SET", "greeting", "hello"])?;
/// sentinel.command_on(primary, &["WAIT", "1", "1000"])?; // on the replica too
///
/// let failover = sentinel.kill_primary()?; // SIGKILL; returns once the replica is primary
/// println!("sentinels promoted 127.0.0.1:{} in {:?}", failover.to, failover.took);
/// assert_eq!(sentinel.command_on(failover.to, &["GET", "greeting"])?, "hello");
///
/// sentinel.restart_old_primary()?; // back empty, made a replica by the sentinels (≈ 20 s)
/// sentinel.failover()?; // SENTINEL FAILOVER: the roles swap back
/// # Ok(())
/// # }
/// ```
///
/// # Nodes
///
/// Every process is named by its port on 127.0.0.1 (`u16`). The two data nodes run
/// `redis-server` with persistence off and `repl-diskless-sync-delay 0` (a replica syncs at
/// once); the sentinels run the same binary with `--sentinel` and a config file in their own
/// directory that monitors the primary with quorum 2, `down-after-milliseconds` and
/// `failover-timeout` from [`RedisSentinelConfig`]. The deployment is ready when every sentinel
/// reports the primary as master, knows the two other sentinels, and lists the replica with its
/// link up. Faults wait until every running sentinel reports the new primary and it answers
/// `ROLE` as master.
///
/// Dropping the handle SIGKILLs every process and removes the temp dir, also when a test panics.
///
/// All methods take `&self` and block; the handle is `Send + Sync`.
pub struct RedisSentinel {
    config: RedisSentinelConfig,
    members: Mutex<Members>,
    started_in: Duration,
    // Last: removed after every process is dead.
    dir: TempDir,
}

impl fmt::Debug for RedisSentinel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let members = self.lock();
        let data: Vec<u16> = members.data.iter().map(RedisProcess::port).collect();
        let sentinels: Vec<u16> = members.sentinels.iter().map(RedisProcess::port).collect();
        f.debug_struct("RedisSentinel")
            .field("config", &self.config)
            .field("data_ports", &data)
            .field("sentinel_ports", &sentinels)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl RedisSentinel {
    /// Starts a primary, a replica and three sentinels with the default
    /// [`RedisSentinelConfig`] and waits until every sentinel knows the primary, the replica
    /// and the other sentinels.
    ///
    /// # Errors
    ///
    /// `redis-server` is not installed, no port is free, a process did not come up (the error
    /// carries its log tail), or the sentinels did not agree within 30 s.
    pub fn start() -> Result<Self, Error> {
        Self::start_with(&RedisSentinelConfig::default())
    }

    /// Starts a deployment with the given settings; see [`start`](Self::start).
    ///
    /// # Errors
    ///
    /// The config is invalid ([`Error::is_invalid_request`]), or as [`start`](Self::start).
    pub fn start_with(config: &RedisSentinelConfig) -> Result<Self, Error> {
        config.validate()?;
        let started = Instant::now();
        let binary = process::find_on_path("redis-server").ok_or_else(|| {
            Error::not_installed(
                "redis-server (on PATH)",
                "install Redis 7 or later (apt-get install -y redis-server)",
            )
        })?;
        let dir = process::temp_dir("welcomedly-redis-sentinel-")?;
        let primary = RedisProcess::start(&binary, dir.path().join("data-0"), || data_args(None))?;
        let primary_port = primary.port();
        let replica = RedisProcess::start(&binary, dir.path().join("data-1"), || {
            data_args(Some(primary_port))
        })?;
        let replica_port = replica.port();
        // Sentinels read the replica's link state once when they first connect to it: start
        // them after it is up, or they see it down until their next look 10 s later.
        wait_until("the replica to sync", START_TIMEOUT, POLL, || {
            replica_link_up(replica_port, primary_port)
        })?;
        let mut sentinels = Vec::with_capacity(SENTINELS);
        for index in 0..SENTINELS {
            let sentinel_dir = dir.path().join(format!("sentinel-{index}"));
            let conf = sentinel_dir.join("sentinel.conf");
            let text = sentinel_conf(config, primary_port);
            sentinels.push(RedisProcess::start(&binary, sentinel_dir, || {
                // Written afresh for each attempt: a sentinel rewrites its file as it learns.
                std::fs::write(&conf, &text).map_err(|source| {
                    Error::io(
                        format_args!("writing {}", conf.display()),
                        "check that the temp dir is writable",
                        source,
                    )
                })?;
                Ok(Args {
                    port: ports::free_port()?,
                    before: vec![OsString::from(&conf), OsString::from("--sentinel")],
                    after: Vec::new(),
                })
            })?);
        }
        let mut deployment = Self {
            config: config.clone(),
            members: Mutex::new(Members {
                data: vec![primary, replica],
                sentinels,
                old_primary: None,
            }),
            started_in: Duration::ZERO,
            dir,
        };
        deployment.wait_agreed(
            "the sentinels to find each other and the replica",
            START_TIMEOUT,
            primary_port,
            Some(replica_port),
        )?;
        deployment.started_in = started.elapsed();
        Ok(deployment)
    }

    /// How long [`start`](Self::start) took, from the first spawn until it was ready.
    #[must_use]
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The name the sentinels know the primary by.
    #[must_use]
    pub fn master_name(&self) -> &str {
        &self.config.master_name
    }

    /// `127.0.0.1:<port>` of every sentinel, running or not: what a Sentinel client takes.
    #[must_use]
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinel_ports()
            .into_iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// The ports of every sentinel, running or not.
    #[must_use]
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.lock()
            .sentinels
            .iter()
            .map(RedisProcess::port)
            .collect()
    }

    /// The ports of the two data nodes (primary and replica), in start order.
    #[must_use]
    pub fn data_ports(&self) -> Vec<u16> {
        self.lock().data.iter().map(RedisProcess::port).collect()
    }

    /// The port of the primary as most running sentinels report it now
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    ///
    /// # Errors
    ///
    /// No sentinel answered.
    pub fn primary(&self) -> Result<u16, Error> {
        let mut votes: HashMap<u16, usize> = HashMap::new();
        let mut last = None;
        for port in self.live_sentinels() {
            match reported_primary(port, &self.config.master_name) {
                Ok(primary) => *votes.entry(primary).or_default() += 1,
                Err(error) => last = Some(error),
            }
        }
        votes
            .into_iter()
            .max_by_key(|&(port, count)| (count, std::cmp::Reverse(port)))
            .map(|(port, _)| port)
            .ok_or_else(|| {
                last.unwrap_or_else(|| {
                    Error::not_running("every sentinel", "restart or resume a sentinel first")
                })
            })
    }

    /// `redis://127.0.0.1:<port>/` of the [primary](Self::primary).
    ///
    /// # Errors
    ///
    /// As [`primary`](Self::primary).
    pub fn primary_url(&self) -> Result<String, Error> {
        self.primary().map(url)
    }

    /// `redis://127.0.0.1:<port>/` of the running data nodes that are not the primary.
    ///
    /// # Errors
    ///
    /// As [`primary`](Self::primary).
    pub fn replica_urls(&self) -> Result<Vec<String>, Error> {
        let primary = self.primary()?;
        let mut members = self.lock();
        Ok(members
            .data
            .iter_mut()
            .filter_map(|node| {
                (node.port() != primary && node.is_running() && !node.is_paused())
                    .then(|| url(node.port()))
            })
            .collect())
    }

    /// Runs one command on any process of the deployment (a data node or a sentinel) and
    /// returns the reply as text (nil as the empty string).
    ///
    /// # Errors
    ///
    /// `node` is not one of the deployment's ports, it is not reachable, or it answered with an
    /// error (see [`Error::reply`]).
    pub fn command_on(&self, node: u16, args: &[&str]) -> Result<String, Error> {
        self.query_on(node, args).map(|reply| reply.to_text())
    }

    /// Runs one command on any process of the deployment and returns the structured reply.
    ///
    /// # Errors
    ///
    /// As [`command_on`](Self::command_on).
    pub fn query_on(&self, node: u16, args: &[&str]) -> Result<Reply, Error> {
        self.check_port(node)?;
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
        self.check_port(node)?;
        resp::request_within(node, args, timeout)
    }

    /// The log file of any process of the deployment (a sentinel's shows `+sdown`, `+odown`,
    /// `+switch-master`, …).
    ///
    /// # Errors
    ///
    /// `node` is not one of the deployment's ports.
    pub fn log_path(&self, node: u16) -> Result<PathBuf, Error> {
        let members = self.lock();
        members
            .data
            .iter()
            .chain(members.sentinels.iter())
            .find(|process| process.port() == node)
            .map(|process| process.log().to_path_buf())
            .ok_or_else(|| self.not_a_node(node))
    }

    /// SIGKILLs the primary and returns once every running sentinel reports the replica as the
    /// new primary and it answers `ROLE` as master. With the default 1 s down-after this takes
    /// 2–5 s.
    ///
    /// # Errors
    ///
    /// The replica is not running or does not replicate the primary (right after a
    /// [`failover`](Self::failover): see [`wait_replica`](Self::wait_replica))
    /// ([`Error::is_invalid_request`]; nothing is killed), or the failover did not complete
    /// within 30 s.
    pub fn kill_primary(&self) -> Result<Failover, Error> {
        let (primary, replica) = self.primary_and_replica()?;
        let started = Instant::now();
        {
            let mut members = self.lock();
            if let Some(node) = members.data.iter_mut().find(|n| n.port() == primary) {
                node.kill();
            }
            members.old_primary = Some(primary);
        }
        self.wait_promoted(replica)?;
        Ok(Failover {
            from: primary,
            to: replica,
            took: started.elapsed(),
        })
    }

    /// `SENTINEL FAILOVER` on a running sentinel: the replica is promoted without waiting for
    /// the primary to fail. Returns once every running sentinel reports the new primary and it
    /// answers `ROLE` as master (≈ 1 s).
    ///
    /// The old primary stays a master (with its data, taking writes a stale client sends it)
    /// until the sentinels notice and make it a replica, about 10 s later, as in production;
    /// [`wait_replica`](Self::wait_replica) waits for that.
    ///
    /// # Errors
    ///
    /// The replica is not running or does not replicate the primary
    /// ([`Error::is_invalid_request`]), the sentinel refused (a failover in progress), or the
    /// failover did not complete within 30 s.
    pub fn failover(&self) -> Result<Failover, Error> {
        let (primary, replica) = self.primary_and_replica()?;
        let sentinel = self
            .live_sentinels()
            .into_iter()
            .next()
            .ok_or_else(|| Error::not_running("every sentinel", "restart a sentinel first"))?;
        let started = Instant::now();
        resp::request(
            sentinel,
            &["SENTINEL", "FAILOVER", &self.config.master_name],
        )?;
        self.wait_promoted(replica)?;
        Ok(Failover {
            from: primary,
            to: replica,
            took: started.elapsed(),
        })
    }

    /// Starts the primary [`kill_primary`](Self::kill_primary) killed last again on its port.
    /// It comes back as an empty master, as a crashed host would (a client that still writes to
    /// it loses those writes), until the sentinels turn it into a replica of the new primary:
    /// they wait 8 s of it being up before they do (≈ 10 s). Returns once it replicates the
    /// primary with its link up and every running sentinel has seen it as a replica (≈ 20 s in
    /// all: sentinels look at replicas every 10 s, and until each has seen the change it would
    /// undo a failover that promotes this node). To have it back as a replica sooner, use
    /// [`restart`](Self::restart).
    ///
    /// # Errors
    ///
    /// No primary was killed ([`Error::is_invalid_request`]), it did not come up, or the
    /// sentinels did not reconfigure it within 40 s.
    pub fn restart_old_primary(&self) -> Result<(), Error> {
        let old = self.lock().old_primary.ok_or_else(|| {
            Error::invalid_request(
                "restarting the old primary",
                "no primary was killed: call kill_primary() first",
            )
        })?;
        self.restart_as(old, false)
    }

    /// Starts a killed process (data node or sentinel) again on its port (a running one is
    /// killed first). A sentinel returns once it answers. A data node that is not the primary
    /// the sentinels report is told `REPLICAOF` the primary at once, as an operator would, and
    /// returns once its link is up and every running sentinel has seen it as a replica (up to
    /// 10 s: sentinels look at replicas every 10 s).
    ///
    /// # Errors
    ///
    /// `node` is not one of the deployment's ports, it did not come up, or it did not rejoin
    /// within 40 s.
    pub fn restart(&self, node: u16) -> Result<(), Error> {
        self.restart_as(node, true)
    }

    fn restart_as(&self, node: u16, as_replica: bool) -> Result<(), Error> {
        let is_data = {
            let mut members = self.lock();
            let Members {
                data, sentinels, ..
            } = &mut *members;
            if let Some(process) = data.iter_mut().find(|n| n.port() == node) {
                process.restart()?;
                true
            } else if let Some(process) = sentinels.iter_mut().find(|n| n.port() == node) {
                process.restart()?;
                false
            } else {
                return Err(self.not_a_node(node));
            }
        };
        if !is_data {
            return Ok(());
        }
        let primary = self.primary()?;
        if primary == node {
            return Ok(());
        }
        if as_replica {
            resp::request(node, &["REPLICAOF", "127.0.0.1", &primary.to_string()])?;
        }
        self.wait_agreed(
            &format!("127.0.0.1:{node} to be made a replica of 127.0.0.1:{primary}"),
            REJOIN_WAIT,
            primary,
            Some(node),
        )?;
        let mut members = self.lock();
        if members.old_primary == Some(node) {
            members.old_primary = None;
        }
        Ok(())
    }

    /// SIGKILLs any process of the deployment without waiting for anything. Does nothing if it
    /// is not running.
    ///
    /// # Errors
    ///
    /// `node` is not one of the deployment's ports.
    pub fn kill(&self, node: u16) -> Result<(), Error> {
        self.with_process(node, |process| {
            process.kill();
            Ok(())
        })
    }

    /// Freezes any process of the deployment (SIGSTOP): it accepts connections and answers
    /// nothing. A paused primary is failed over by the sentinels after `down-after`; nothing is
    /// awaited here.
    ///
    /// # Errors
    ///
    /// `node` is not one of the deployment's ports or is not running, or `kill -STOP` failed.
    pub fn pause(&self, node: u16) -> Result<(), Error> {
        self.with_process(node, RedisProcess::pause)
    }

    /// Lets a [paused](Self::pause) process run again (SIGCONT). Nothing is awaited.
    ///
    /// # Errors
    ///
    /// `node` is not one of the deployment's ports, or `kill -CONT` failed.
    pub fn resume(&self, node: u16) -> Result<(), Error> {
        self.with_process(node, RedisProcess::resume)
    }

    /// The current primary and the running replica to promote.
    fn primary_and_replica(&self) -> Result<(u16, u16), Error> {
        let primary = self.primary()?;
        let mut members = self.lock();
        let replica = members
            .data
            .iter_mut()
            .filter_map(|node| {
                (node.port() != primary && node.is_running() && !node.is_paused())
                    .then(|| node.port())
            })
            .next()
            .ok_or_else(|| {
                Error::invalid_request(
                    format_args!("failing over the primary 127.0.0.1:{primary}"),
                    "the replica is not running: restart it first",
                )
            })?;
        drop(members);
        // Right after a failover the old primary is still a master of its own until the
        // sentinels convert it; promoting it would silently drop every write since.
        if replica_link_up(replica, primary).is_err() {
            return Err(Error::invalid_request(
                format_args!("failing over the primary 127.0.0.1:{primary} to 127.0.0.1:{replica}"),
                "that node does not replicate the primary (yet): after a failover, call \
                 wait_replica(port) on the old primary first",
            ));
        }
        Ok((primary, replica))
    }

    /// Waits until every running sentinel reports `replica` as the primary and it answers
    /// `ROLE` as master.
    fn wait_promoted(&self, replica: u16) -> Result<(), Error> {
        let name = self.config.master_name.clone();
        wait_until(
            &format!("the sentinels to promote 127.0.0.1:{replica}"),
            FAILOVER_WAIT,
            POLL,
            || {
                for sentinel in self.live_sentinels() {
                    let reported =
                        reported_primary(sentinel, &name).map_err(|error| error.to_string())?;
                    if reported != replica {
                        return Err(format!(
                            "sentinel 127.0.0.1:{sentinel} reports 127.0.0.1:{reported}"
                        ));
                    }
                }
                let role = resp::request(replica, &["ROLE"])
                    .map_err(|error| error.to_string())?
                    .to_text();
                if role.starts_with("master") {
                    Ok(())
                } else {
                    Err(format!("127.0.0.1:{replica} is not master yet"))
                }
            },
        )
    }

    /// Waits until the data node at `node` replicates the primary the sentinels report, with
    /// its link up, and every running sentinel has seen it as a replica: after a
    /// [`failover`](Self::failover), the old primary (≈ 20 s: the sentinels' own 8 s delay,
    /// then their next look at it).
    ///
    /// # Errors
    ///
    /// `node` is not a data node of the deployment ([`Error::is_invalid_request`]), it is the
    /// primary, or it did not become a replica within 40 s.
    pub fn wait_replica(&self, node: u16) -> Result<(), Error> {
        if !self.data_ports().contains(&node) {
            return Err(self.not_a_node(node));
        }
        let primary = self.primary()?;
        if primary == node {
            return Err(Error::invalid_request(
                format_args!("waiting for 127.0.0.1:{node} to be a replica"),
                "it is the primary the sentinels report: fail over first",
            ));
        }
        self.wait_agreed(
            &format!("127.0.0.1:{node} to be made a replica of 127.0.0.1:{primary}"),
            REJOIN_WAIT,
            primary,
            Some(node),
        )
    }

    /// Waits until every running sentinel reports `primary` as master, knows every other
    /// running sentinel, and (with `replica`) has seen it as a replica whose own link to
    /// `primary` is up.
    fn wait_agreed(
        &self,
        what: &str,
        timeout: Duration,
        primary: u16,
        replica: Option<u16>,
    ) -> Result<(), Error> {
        let name = self.config.master_name.clone();
        wait_until(what, timeout, POLL, || {
            if let Some(replica) = replica {
                replica_link_up(replica, primary)?;
            }
            let sentinels = self.live_sentinels();
            for &sentinel in &sentinels {
                let master = fields(
                    &resp::request(sentinel, &["SENTINEL", "MASTER", &name])
                        .map_err(|error| error.to_string())?,
                );
                let field = |key: &str| master.get(key).map(String::as_str).unwrap_or_default();
                if field("port") != primary.to_string() || field("flags") != "master" {
                    return Err(format!(
                        "sentinel 127.0.0.1:{sentinel} sees port {} with flags {}",
                        field("port"),
                        field("flags")
                    ));
                }
                let others = sentinels.len().saturating_sub(1).to_string();
                if field("num-other-sentinels") != others {
                    return Err(format!(
                        "sentinel 127.0.0.1:{sentinel} knows {} other sentinels",
                        field("num-other-sentinels")
                    ));
                }
                let Some(replica) = replica else {
                    continue;
                };
                let listed = resp::request(sentinel, &["SENTINEL", "REPLICAS", &name])
                    .map_err(|error| error.to_string())?;
                let healthy = match listed {
                    // `role-reported`: a sentinel whose last look saw the node as a master
                    // still means to reconfigure it, and would undo the next failover's
                    // promotion of it (seen: `-failover-abort-slave-timeout`). Not its
                    // `master-link-status`, which the replica's own INFO showed above.
                    Reply::Array(items) => items.iter().map(fields).any(|entry| {
                        let field = |key: &str| entry.get(key).map(String::as_str);
                        entry.get("port") == Some(&replica.to_string())
                            && field("flags") == Some("slave")
                            && field("role-reported") == Some("slave")
                    }),
                    _ => false,
                };
                if !healthy {
                    return Err(format!(
                        "sentinel 127.0.0.1:{sentinel} has not seen 127.0.0.1:{replica} as a \
                         replica yet"
                    ));
                }
            }
            Ok(())
        })
    }

    fn live_sentinels(&self) -> Vec<u16> {
        self.lock()
            .sentinels
            .iter_mut()
            .filter_map(|node| (node.is_running() && !node.is_paused()).then(|| node.port()))
            .collect()
    }

    fn with_process(
        &self,
        node: u16,
        action: impl FnOnce(&mut RedisProcess) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut members = self.lock();
        let Members {
            data, sentinels, ..
        } = &mut *members;
        match data
            .iter_mut()
            .chain(sentinels.iter_mut())
            .find(|process| process.port() == node)
        {
            Some(process) => action(process),
            None => Err(self.not_a_node(node)),
        }
    }

    fn check_port(&self, node: u16) -> Result<(), Error> {
        let members = self.lock();
        if members
            .data
            .iter()
            .chain(members.sentinels.iter())
            .any(|process| process.port() == node)
        {
            Ok(())
        } else {
            Err(self.not_a_node(node))
        }
    }

    fn not_a_node(&self, node: u16) -> Error {
        Error::invalid_request(
            format_args!("127.0.0.1:{node}"),
            "that port is not part of this Sentinel deployment: take ports from primary(), \
             data_ports() or sentinel_ports()",
        )
    }

    fn lock(&self) -> MutexGuard<'_, Members> {
        // A panic while holding the lock leaves the processes intact; keep using them.
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        // Kill the sentinels first, so none reconfigures a data node while it goes.
        let mut members = self.lock();
        members.sentinels.clear();
        members.data.clear();
    }
}

fn data_args(replica_of: Option<u16>) -> Result<Args, Error> {
    let mut after = vec!["--repl-diskless-sync-delay".to_owned(), "0".to_owned()];
    if let Some(primary) = replica_of {
        after.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            primary.to_string(),
        ]);
    }
    Ok(Args {
        port: ports::free_port()?,
        before: Vec::new(),
        after,
    })
}

fn sentinel_conf(config: &RedisSentinelConfig, primary: u16) -> String {
    let name = &config.master_name;
    format!(
        "sentinel monitor {name} 127.0.0.1 {primary} {QUORUM}\n\
         sentinel down-after-milliseconds {name} {}\n\
         sentinel failover-timeout {name} {}\n\
         sentinel parallel-syncs {name} 1\n",
        config.down_after.as_millis(),
        config.failover_timeout.as_millis(),
    )
}

/// The primary port a sentinel reports.
fn reported_primary(sentinel: u16, name: &str) -> Result<u16, Error> {
    let reply = resp::request(sentinel, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", name])?;
    let text = reply.to_text();
    text.lines()
        .nth(1)
        .and_then(|port| port.parse().ok())
        .ok_or_else(|| {
            Error::protocol(format_args!(
                "sentinel 127.0.0.1:{sentinel} answered {text:?} for the address of {name}"
            ))
        })
}

/// Whether `replica` replicates `primary` with its link up.
fn replica_link_up(replica: u16, primary: u16) -> Result<(), String> {
    let info = resp::request(replica, &["INFO", "replication"])
        .map_err(|error| error.to_string())?
        .to_text();
    let has = |wanted: &str| info.lines().any(|line| line.trim() == wanted);
    if has("role:slave") && has(&format!("master_port:{primary}")) && has("master_link_status:up") {
        Ok(())
    } else {
        Err(format!(
            "127.0.0.1:{replica} does not replicate 127.0.0.1:{primary} with its link up yet"
        ))
    }
}

/// A flat `[key, value, key, value, …]` reply as a map.
fn fields(reply: &Reply) -> HashMap<String, String> {
    let Reply::Array(items) = reply else {
        return HashMap::new();
    };
    items
        .chunks(2)
        .filter_map(|pair| match pair {
            [key, value] => Some((key.to_text(), value.to_text())),
            _ => None,
        })
        .collect()
}

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/")
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn the_sentinel_config_monitors_the_primary_with_quorum_two() {
        let config = RedisSentinelConfig::default().down_after(Duration::from_millis(700));
        let text = sentinel_conf(&config, 20001);
        assert!(text.contains("sentinel monitor mymaster 127.0.0.1 20001 2\n"));
        assert!(text.contains("sentinel down-after-milliseconds mymaster 700\n"));
        assert!(text.contains("sentinel failover-timeout mymaster 2000\n"));
    }

    #[test]
    fn master_names_that_would_break_the_config_are_refused() {
        for bad in ["", "my master", "a\nsentinel monitor x", &"x".repeat(65)] {
            let error = RedisSentinelConfig::default()
                .master_name(bad)
                .validate()
                .unwrap_err();
            assert!(error.is_invalid_request(), "{bad:?}");
        }
        assert!(
            RedisSentinelConfig::default()
                .master_name("calls-1.eu_west")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn flat_replies_become_maps() {
        let reply = Reply::Array(vec![
            Reply::Bulk("port".into()),
            Reply::Bulk("20001".into()),
            Reply::Bulk("odd".into()),
        ]);
        let map = fields(&reply);
        assert_eq!(map.get("port").map(String::as_str), Some("20001"));
        assert_eq!(map.len(), 1);
    }
}
