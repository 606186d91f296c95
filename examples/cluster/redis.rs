//! The local cluster's Redis, in the topology `--redis` names: one node (the default), Sentinel
//! (a primary, a replica and three sentinels) or a Redis Cluster (3 masters with a replica each),
//! with the fault commands that reach it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::Duration;

use welcomedly_testkit::{RedisCluster, RedisSentinel, RedisServer};

use crate::command::Command;

/// Which Redis topology the cluster runs on (`--redis single|sentinel|cluster`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum RedisKind {
    /// One `redis-server` (`REDIS_URL`).
    #[default]
    Single,
    /// A primary, a replica and three sentinels (`REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER`).
    Sentinel,
    /// A Redis Cluster of 3 masters with a replica each (`REDIS_CLUSTER_NODES`).
    Cluster,
}

impl RedisKind {
    /// Parses the `--redis` value.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        match text {
            "single" | "node" => Ok(Self::Single),
            "sentinel" => Ok(Self::Sentinel),
            "cluster" => Ok(Self::Cluster),
            other => Err(format!(
                "--redis `{other}` is not a Redis topology: use single, sentinel or cluster"
            )),
        }
    }
}

/// The running Redis.
#[derive(Debug)]
pub(crate) enum Redis {
    Single {
        server: Arc<RedisServer>,
        /// Bumped by every command on it: a timed `pause-redis` resumes only if nothing was
        /// done to Redis since (a later `resume-redis` + `pause-redis` is not cut short by it).
        generation: Arc<AtomicU64>,
    },
    Sentinel(RedisSentinel),
    Cluster(RedisCluster),
}

impl Redis {
    /// Starts Redis in the topology `kind` and waits until it serves.
    pub(crate) fn start(kind: RedisKind) -> Result<Self, String> {
        let failed = |what: &str| {
            let what = what.to_owned();
            move |e: welcomedly_testkit::Error| format!("starting {what}: {e}")
        };
        Ok(match kind {
            RedisKind::Single => Self::Single {
                server: Arc::new(RedisServer::start().map_err(failed("Redis"))?),
                generation: Arc::new(AtomicU64::new(0)),
            },
            RedisKind::Sentinel => {
                Self::Sentinel(RedisSentinel::start().map_err(failed("Redis with Sentinel"))?)
            }
            RedisKind::Cluster => {
                Self::Cluster(RedisCluster::start().map_err(failed("a Redis Cluster"))?)
            }
        })
    }

    /// What starting prints first.
    pub(crate) fn starting(kind: RedisKind) -> &'static str {
        match kind {
            RedisKind::Single => "starting Redis ...",
            RedisKind::Sentinel => {
                "starting Redis with Sentinel: a primary, a replica and three sentinels ..."
            }
            RedisKind::Cluster => "starting a Redis Cluster: 3 masters with a replica each ...",
        }
    }

    /// The variables that point the instances at it.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        match self {
            Self::Single { server, .. } => vec![("REDIS_URL".to_owned(), server.url())],
            Self::Sentinel(s) => vec![
                ("REDIS_SENTINELS".to_owned(), s.sentinel_addrs().join(",")),
                (
                    "REDIS_SENTINEL_MASTER".to_owned(),
                    s.master_name().to_owned(),
                ),
            ],
            Self::Cluster(c) => vec![("REDIS_CLUSTER_NODES".to_owned(), c.seed_urls().join(","))],
        }
    }

    /// The banner's lines.
    pub(crate) fn banner(&self) -> Vec<String> {
        match self {
            Self::Single { server, .. } => vec![format!("  Redis         {}", server.url())],
            Self::Sentinel(s) => vec![
                format!(
                    "  Redis         Sentinel, master `{}`, sentinels {}",
                    s.master_name(),
                    s.sentinel_addrs().join(" ")
                ),
                format!("                data nodes on ports {:?}", s.data_ports()),
            ],
            Self::Cluster(c) => vec![format!(
                "  Redis         Cluster, nodes on ports {:?}",
                c.ports()
            )],
        }
    }

    /// Whether `command` acts on Redis.
    pub(crate) fn is_redis_command(command: &Command) -> bool {
        matches!(
            command,
            Command::KillRedis
                | Command::RestartRedis
                | Command::PauseRedis(_)
                | Command::ResumeRedis
                | Command::Failover(_)
                | Command::KillMaster(_)
                | Command::MigrateSlot(..)
                | Command::AddMaster
                | Command::RestartNode(_)
                | Command::PauseNode(_)
                | Command::ResumeNode(_)
        )
    }

    /// Runs a Redis fault command; the text says what happened.
    pub(crate) fn run(&self, command: &Command) -> Result<String, String> {
        if let Self::Single { generation, .. } = self {
            generation.fetch_add(1, Ordering::SeqCst);
        }
        let text = |e: welcomedly_testkit::Error| e.to_string();
        match (self, command) {
            (Self::Single { server, .. }, Command::KillRedis) => {
                server.kill().map_err(text)?;
                Ok("Redis killed".to_owned())
            }
            (Self::Single { server, .. }, Command::RestartRedis) => {
                server.restart().map_err(text)?;
                Ok("Redis restarted on the same port (empty)".to_owned())
            }
            (Self::Single { .. }, Command::PauseRedis(duration)) => self.pause(*duration),
            (Self::Single { server, .. }, Command::ResumeRedis) => {
                server.resume().map_err(text)?;
                Ok("Redis resumed".to_owned())
            }
            (Self::Sentinel(s), Command::KillRedis) => {
                let f = s.kill_primary().map_err(text)?;
                Ok(format!(
                    "primary {} killed (SIGKILL); the sentinels promoted {} in {:.1?}",
                    f.from, f.to, f.took
                ))
            }
            (Self::Sentinel(s), Command::RestartRedis) => {
                s.restart_old_primary().map_err(text)?;
                Ok("the old primary is back, as a replica of the new one".to_owned())
            }
            (Self::Sentinel(s), Command::Failover(None)) => {
                let f = s.failover().map_err(text)?;
                Ok(format!(
                    "SENTINEL FAILOVER: {} promoted in {:.1?} ({} stays a master until the sentinels demote it, ≈ 10 s)",
                    f.to, f.took, f.from
                ))
            }
            (Self::Sentinel(s), Command::RestartNode(port)) => {
                s.restart(*port).map_err(text)?;
                Ok(format!("node {port} restarted"))
            }
            (Self::Sentinel(s), Command::PauseNode(port)) => {
                s.pause(*port).map_err(text)?;
                Ok(format!("node {port} paused (SIGSTOP)"))
            }
            (Self::Sentinel(s), Command::ResumeNode(port)) => {
                s.resume(*port).map_err(text)?;
                Ok(format!("node {port} resumed"))
            }
            (Self::Cluster(c), Command::KillMaster(slot)) => {
                let f = c.kill_master(*slot).map_err(text)?;
                Ok(format!(
                    "master {} of slot {slot} killed (SIGKILL); replica {} promoted, cluster settled in {:.1?}",
                    f.from, f.to, f.took
                ))
            }
            (Self::Cluster(c), Command::Failover(slot)) => {
                let slot = slot.unwrap_or(0);
                let f = c.failover(slot).map_err(text)?;
                Ok(format!(
                    "CLUSTER FAILOVER of slot {slot}'s shard: {} took over from {} in {:.1?}",
                    f.to, f.from, f.took
                ))
            }
            (Self::Cluster(c), Command::MigrateSlot(slot, to)) => {
                c.migrate_slot(*slot, *to).map_err(text)?;
                Ok(format!("slot {slot} migrated to node {to}"))
            }
            (Self::Cluster(c), Command::AddMaster) => {
                let port = c.add_master().map_err(text)?;
                Ok(format!(
                    "master {port} joined, empty: give it slots with `migrate-slot <slot> {port}`"
                ))
            }
            (Self::Cluster(c), Command::RestartNode(port)) => {
                c.restart(*port).map_err(text)?;
                Ok(format!("node {port} restarted (it rejoins as a replica)"))
            }
            (Self::Cluster(c), Command::PauseNode(port)) => {
                c.pause(*port).map_err(text)?;
                Ok(format!("node {port} paused (SIGSTOP)"))
            }
            (Self::Cluster(c), Command::ResumeNode(port)) => {
                c.resume(*port).map_err(text)?;
                Ok(format!("node {port} resumed"))
            }
            (Self::Cluster(_), Command::KillRedis) => Err(
                "on a Redis Cluster, name the shard: `kill-master <slot>` (e.g. kill-master 0)"
                    .to_owned(),
            ),
            (_, other) => Err(format!(
                "`{}` does not apply to {}: type `help`",
                other.name(),
                self.kind_name()
            )),
        }
    }

    fn kind_name(&self) -> &'static str {
        match self {
            Self::Single { .. } => "a single Redis node (--redis single)",
            Self::Sentinel(_) => "Redis with Sentinel (--redis sentinel)",
            Self::Cluster(_) => "a Redis Cluster (--redis cluster)",
        }
    }

    fn pause(&self, duration: Option<Duration>) -> Result<String, String> {
        let Self::Single { server, generation } = self else {
            return Err("pause-redis applies to a single node: use pause-node <port>".to_owned());
        };
        server.pause().map_err(|e| e.to_string())?;
        let Some(duration) = duration else {
            return Ok("Redis paused (SIGSTOP) until `resume-redis`".to_owned());
        };
        // A weak handle: a pause that outlives the cluster must not keep Redis alive.
        let weak: Weak<RedisServer> = Arc::downgrade(server);
        let generation = generation.clone();
        let this_pause = generation.load(Ordering::SeqCst);
        thread::spawn(move || {
            thread::sleep(duration);
            if generation.load(Ordering::SeqCst) != this_pause {
                return; // Redis was resumed, restarted or paused again since
            }
            if let Some(server) = weak.upgrade() {
                match server.resume() {
                    Ok(()) => println!("Redis resumed after {} ms", duration.as_millis()),
                    Err(error) => println!("error: resuming Redis: {error}"),
                }
            }
        });
        Ok(format!(
            "Redis paused (SIGSTOP) for {} ms",
            duration.as_millis()
        ))
    }

    /// The `status` lines.
    pub(crate) fn status(&self) -> Vec<String> {
        let within = Duration::from_millis(500);
        match self {
            Self::Single { server, .. } => {
                let state = if server.is_paused() {
                    "paused (SIGSTOP)".to_owned()
                } else if !server.is_running() {
                    "down".to_owned()
                } else {
                    match server.query_within(&["PING"], within) {
                        Ok(_) => "up".to_owned(),
                        Err(error) => format!("up, not answering ({error})"),
                    }
                };
                vec![format!(
                    "Redis         127.0.0.1:{}  {state}",
                    server.port()
                )]
            }
            Self::Sentinel(s) => {
                let primary = s
                    .primary()
                    .map_or_else(|e| format!("unknown ({e})"), |p| p.to_string());
                let mut lines = vec![format!(
                    "Redis         Sentinel `{}`: the sentinels name primary {primary}",
                    s.master_name()
                )];
                for port in s.data_ports() {
                    let role = s
                        .query_on_within(port, &["ROLE"], within)
                        .map_or_else(|e| format!("not answering ({e})"), |r| first_word(&r));
                    lines.push(format!("  data node   127.0.0.1:{port}  {role}"));
                }
                lines
            }
            Self::Cluster(c) => match c.nodes() {
                Ok(nodes) => nodes
                    .iter()
                    .map(|n| {
                        let state = if n.paused {
                            "paused (SIGSTOP)"
                        } else if n.running {
                            "up"
                        } else {
                            "down"
                        };
                        let what = match n.master {
                            Some(master) => format!("replica of {master}"),
                            None => format!("master of slots {}", ranges(&n.slots)),
                        };
                        format!("Redis node    127.0.0.1:{}  {state}, {what}", n.port)
                    })
                    .collect(),
                Err(error) => vec![format!("Redis Cluster: cannot read the nodes ({error})")],
            },
        }
    }

    /// Stops every Redis process now.
    pub(crate) fn kill(&self) {
        if let Self::Single { server, .. } = self {
            // Explicitly: a `pause-redis <ms>` timer may hold a handle for a moment.
            let _ = server.kill();
        }
    }
}

/// `ROLE`'s first element (`master`, `slave`), or the reply as text.
fn first_word(reply: &welcomedly_testkit::Reply) -> String {
    let text = format!("{reply:?}");
    if text.contains("master") {
        "master".to_owned()
    } else if text.contains("slave") {
        "replica".to_owned()
    } else {
        text
    }
}

fn ranges(slots: &[std::ops::RangeInclusive<u16>]) -> String {
    if slots.is_empty() {
        return "none".to_owned();
    }
    slots
        .iter()
        .map(|r| format!("{}-{}", r.start(), r.end()))
        .collect::<Vec<_>>()
        .join(",")
}
