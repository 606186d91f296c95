//! [`LinkConfig`]: the link's settings, plain data with documented defaults, and [`RedisUrl`],
//! a URL whose password cannot be printed by accident.

use std::fmt;
use std::time::Duration;

use welcomedly_core::backoff::Backoff;
use welcomedly_core::config::{ConfigError, EnvReader, parse_millis};
use welcomedly_core::redact::redact_url;

/// The URL schemes the link connects with.
const SCHEMES: [&str; 3] = ["redis://", "unix://", "redis+unix://"];

/// A Redis URL (`redis://[user:password@]host[:port][/db]`). `Debug` and `Display` show it with
/// its password replaced by `***`; [`expose`](Self::expose) gives the full text to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Wraps `url` (checked when the link is built).
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for connecting only: never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl From<&str> for RedisUrl {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl From<String> for RedisUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

/// Where Redis is: one node, a primary found through Sentinel, or a Redis Cluster. Every
/// component works on each the same way (the [`Link`](crate::Link) hides which).
///
/// `Debug` and `Display` redact URL passwords.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// One Redis node (`REDIS_URL`).
    Single(RedisUrl),
    /// A primary the Sentinels name (`REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER`): the link asks
    /// them where the primary is on every (re)connection, so it follows a failover.
    Sentinel {
        /// The Sentinels' addresses, `host:port` each, or `redis://[user:password@]host:port`
        /// for Sentinels that require a password (`requirepass` or an ACL user in their
        /// configuration). `Debug` and `Display` redact those passwords.
        sentinels: Vec<String>,
        /// The master's name in the Sentinels' configuration (`sentinel monitor <name> ...`).
        master: String,
        /// Credentials and database for the master, as a Redis URL whose host and port are
        /// ignored (the Sentinels say where the master is): `redis://:secret@master/0`, or
        /// `redis://` for none. `REDIS_SENTINEL_MASTER_URL`.
        url: RedisUrl,
    },
    /// A Redis Cluster (`REDIS_CLUSTER_NODES`): the seed nodes, from which the link learns
    /// the slot map. Credentials come from the first node's URL.
    Cluster {
        /// Seed nodes, `redis://[user:password@]host:port` each (any node; more than one so
        /// the link starts while one is down).
        nodes: Vec<RedisUrl>,
    },
}

impl Topology {
    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(url) => fmt::Display::fmt(url, f),
            Self::Sentinel {
                sentinels, master, ..
            } => {
                write!(f, "master {master:?} of Sentinels ")?;
                for (i, sentinel) in sentinels.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(&redact_url(sentinel))?;
                }
                Ok(())
            }
            Self::Cluster { nodes } => {
                f.write_str("Redis Cluster at ")?;
                for (i, node) in nodes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    fmt::Display::fmt(node, f)?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(url) => f.debug_tuple("Single").field(url).finish(),
            Self::Sentinel {
                sentinels,
                master,
                url,
            } => f
                .debug_struct("Sentinel")
                .field(
                    "sentinels",
                    &sentinels.iter().map(|s| redact_url(s)).collect::<Vec<_>>(),
                )
                .field("master", master)
                .field("url", url)
                .finish(),
            Self::Cluster { nodes } => f.debug_struct("Cluster").field("nodes", nodes).finish(),
        }
    }
}

/// Settings of a [`Link`](crate::Link).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LinkConfig {
    /// Where Redis is. No default.
    pub topology: Topology,
    /// The longest one call waits, a retry included, before it fails with
    /// [`Error::is_budget`](crate::Error::is_budget). Components may pass a tighter budget per
    /// call. Default 50 ms.
    pub budget: Duration,
    /// Transport failures or calls past the budget in a row before the connection is dropped
    /// and replaced; a single slow answer keeps it, and so does any number of calls past the
    /// budget while Redis answers other calls on the connection (a loaded Redis or instance,
    /// not a dead connection); the failures in a row must also span at least one
    /// [`budget`](Self::budget), so calls that all time out at one instant (this process was
    /// not scheduled for a moment) count as one event. A closed connection is replaced at
    /// once. Default 3.
    pub failure_threshold: u32,
    /// The least time between dropping a connection for failures (threshold or a
    /// [`Replace`](crate::Failure::Replace) error) and the next connection attempt, so a
    /// flapping Redis is not hammered. A connection Redis closed is reconnected at once.
    /// Default 250 ms.
    pub min_outage: Duration,
    /// Delays between failed connection attempts (exponential, jittered to 50–100 %).
    /// Default 100 ms doubling up to 2 s. While callers are waiting for a connection, the next
    /// attempt is made as soon as one asks, at most one attempt per
    /// [`demand_interval`](Self::demand_interval).
    pub backoff: Backoff,
    /// The least time between two connection attempts made because callers wait for one.
    /// Default 10 ms.
    pub demand_interval: Duration,
    /// The longest a connection attempt (TCP connect, `AUTH`, `SELECT`, loading scripts) may
    /// take; twice that on Sentinel (asking the Sentinels first), three times on a cluster
    /// (the last slot map's masters, then the seed nodes, then `CLUSTER SLOTS`). On a cluster
    /// also each node connection's timeout and the cluster client's per-attempt response
    /// timeout (the budget bounds calls). Default 1 s.
    pub connect_timeout: Duration,
}

impl LinkConfig {
    /// Settings for the one Redis node at `url`, defaults elsewhere.
    pub fn new(url: impl Into<RedisUrl>) -> Self {
        Self::with_topology(Topology::Single(url.into()))
    }

    /// Settings for the primary the Sentinels at `sentinels` (`host:port` each) call `master`;
    /// `url` carries the master's credentials and database (its host is ignored, see
    /// [`Topology::Sentinel`]). Defaults elsewhere.
    pub fn sentinel(
        sentinels: impl IntoIterator<Item = impl Into<String>>,
        master: impl Into<String>,
        url: impl Into<RedisUrl>,
    ) -> Self {
        Self::with_topology(Topology::Sentinel {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            master: master.into(),
            url: url.into(),
        })
    }

    /// Settings for the Redis Cluster reachable at any of `nodes` (seed nodes). Defaults
    /// elsewhere.
    pub fn cluster(nodes: impl IntoIterator<Item = impl Into<RedisUrl>>) -> Self {
        Self::with_topology(Topology::Cluster {
            nodes: nodes.into_iter().map(Into::into).collect(),
        })
    }

    /// Settings for `topology`, defaults elsewhere.
    pub fn with_topology(topology: Topology) -> Self {
        Self {
            topology,
            budget: Duration::from_millis(50),
            failure_threshold: 3,
            min_outage: Duration::from_millis(250),
            backoff: Backoff::default(),
            demand_interval: Duration::from_millis(10),
            connect_timeout: Duration::from_secs(1),
        }
    }

    /// Reads the settings from the environment, `None` when no Redis is configured.
    ///
    /// # Errors
    ///
    /// Every invalid variable (see [`read`](Self::read)), URL passwords redacted.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let mut env = EnvReader::from_env();
        let config = Self::read(&mut env);
        env.finish(config)
    }

    /// Reads where Redis is — `REDIS_URL` (one node), or `REDIS_SENTINELS` (comma-separated
    /// `host:port`) with `REDIS_SENTINEL_MASTER` (the master's name, required with it) and
    /// `REDIS_SENTINEL_MASTER_URL` (optional credentials and database for the master), or
    /// `REDIS_CLUSTER_NODES` (comma-separated `redis://` URLs); `None` when none is set; two
    /// of them set is an error naming both — and `WELCOMEDLY_REDIS_BUDGET_MS` (default 50),
    /// through a shared reader, so a service reports every bad variable at once.
    pub fn read(env: &mut EnvReader<'_>) -> Option<Self> {
        let url = env.read("REDIS_URL", None, |v| parse_url(v).map(Some));
        let sentinels = env.read("REDIS_SENTINELS", None, |v| {
            parse_list(v, parse_sentinel).map(Some)
        });
        let nodes = env.read("REDIS_CLUSTER_NODES", None, |v| {
            parse_list(v, |node| {
                let url = parse_url(node)?;
                if url.expose().starts_with("redis://") {
                    Ok(url)
                } else {
                    Err("holds a node that is not a redis:// URL: expected redis://[user:password@]host:port,... (cluster nodes are reached over TCP)")
                }
            })
            .map(Some)
        });
        let master = env.read("REDIS_SENTINEL_MASTER", None, |v| {
            if v.chars().any(|c| c.is_whitespace() || c.is_control()) || v.len() > 256 {
                Err("is not a master name: expected the name given to `sentinel monitor`, without spaces, such as mymaster")
            } else {
                Ok(Some(v.to_owned()))
            }
        });
        let master_url = env.read("REDIS_SENTINEL_MASTER_URL", None, |v| {
            parse_url(v).and_then(|u| {
                if u.expose().starts_with("redis://") {
                    Ok(Some(u))
                } else {
                    Err("is not a redis:// URL: expected redis://[user:password@]master/[db] (the host is ignored: the Sentinels say where the master is)")
                }
            })
        });
        let budget = env.read(
            "WELCOMEDLY_REDIS_BUDGET_MS",
            Duration::from_millis(50),
            |v| {
                parse_millis(v).filter(|d| !d.is_zero()).ok_or(
                    "is not a usable budget: expected a whole number of milliseconds greater than 0, such as 50",
                )
            },
        );
        // Exactly one topology: two set is a mistake nobody should have to debug later.
        let set: Vec<&'static str> = [
            ("REDIS_URL", url.is_some()),
            ("REDIS_SENTINELS", sentinels.is_some()),
            ("REDIS_CLUSTER_NODES", nodes.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if let [first, second, ..] = set.as_slice() {
            let problem = format!(
                "is set together with {first}: set only one of REDIS_URL (one node), REDIS_SENTINELS (Sentinel) or REDIS_CLUSTER_NODES (Redis Cluster)"
            );
            env.read(second, (), |_| Err(problem));
            return None;
        }
        if sentinels.is_some() && master.is_none() {
            env.read("REDIS_SENTINELS", (), |_| {
                Err("is set without REDIS_SENTINEL_MASTER: set it to the master's name given to `sentinel monitor`, such as mymaster")
            });
            return None;
        }
        let topology = match (url, sentinels, nodes, master) {
            (Some(url), _, _, _) => Topology::Single(url),
            (_, Some(sentinels), _, Some(master)) => Topology::Sentinel {
                sentinels,
                master,
                url: master_url.unwrap_or_else(|| RedisUrl::new("redis://")),
            },
            (_, _, Some(nodes), _) => Topology::Cluster { nodes },
            _ => return None,
        };
        let mut config = Self::with_topology(topology);
        config.budget = budget;
        Some(config)
    }

    /// Refuses settings that would misbehave: a zero budget, backoff or connect timeout.
    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        if self.budget.is_zero() {
            return Err(crate::Error::config(
                "the Redis link budget is zero: give Redis at least a few milliseconds (default 50 ms)",
            ));
        }
        if self.backoff.initial.is_zero() || self.demand_interval.is_zero() {
            return Err(crate::Error::config(
                "the Redis link's reconnect delay is zero: a dead Redis would be reconnected in a busy loop; use at least a few milliseconds (defaults 100 ms and 10 ms)",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(crate::Error::config(
                "the Redis link's connect timeout is zero: no connection could ever be made; use at least 100 ms (default 1 s)",
            ));
        }
        Ok(())
    }
}

/// A Redis URL of a scheme the link connects with.
fn parse_url(v: &str) -> Result<RedisUrl, &'static str> {
    if v.starts_with("rediss://") {
        return Err(
            "uses TLS (rediss://), which this build does not include: use redis://[user:password@]host[:port][/db] or unix:///path",
        );
    }
    SCHEMES
        .iter()
        .any(|s| v.starts_with(s))
        .then(|| RedisUrl::new(v))
        .ok_or(
            "is not a Redis URL: expected redis://[user:password@]host[:port][/db] or unix:///path",
        )
}

/// `host:port` with a port 1-65535.
/// One Sentinel: `host:port`, or `redis://[user:password@]host:port` when it needs a password.
fn parse_sentinel(v: &str) -> Result<String, &'static str> {
    let bad = "holds a Sentinel that is not host:port or redis://[user:password@]host:port: expected a list such as sentinel-1:26379,sentinel-2:26379";
    let Some(rest) = v.strip_prefix("redis://") else {
        return parse_host_port(v, bad);
    };
    let address = rest.rsplit_once('@').map_or(rest, |(_, address)| address);
    let address = address.strip_suffix('/').unwrap_or(address);
    parse_host_port(address, bad)?;
    Ok(v.to_owned())
}

fn parse_host_port(v: &str, bad: &'static str) -> Result<String, &'static str> {
    let (host, port) = v.rsplit_once(':').ok_or(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', '@']) {
        return Err(bad);
    }
    port.parse::<u16>().ok().filter(|p| *p != 0).ok_or(bad)?;
    Ok(v.to_owned())
}

/// A comma-separated list, blanks between commas ignored, at most 64 entries.
fn parse_list<T>(
    v: &str,
    each: impl Fn(&str) -> Result<T, &'static str>,
) -> Result<Vec<T>, &'static str> {
    let items: Vec<T> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(each)
        .collect::<Result<_, _>>()?;
    if items.is_empty() {
        return Err("is an empty list: expected one or more comma-separated addresses");
    }
    if items.len() > 64 {
        return Err("lists more than 64 addresses: list a few (any of them leads to the rest)");
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_hidden_by_type() {
        let c = LinkConfig::new("redis://:hunter2@cache:6379/0");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.topology.to_string().contains("hunter2"));
        let Topology::Single(url) = &c.topology else {
            panic!("one node")
        };
        assert!(url.expose().contains("hunter2"));
        let c = LinkConfig::cluster(["redis://:hunter2@a:7000", "redis://:hunter2@b:7001"]);
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.topology.to_string().contains("hunter2"));
        let c = LinkConfig::sentinel(["s1:26379"], "mymaster", "redis://:hunter2@master/0");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.topology.to_string().contains("hunter2"));
    }

    #[test]
    fn settings_from_the_environment() {
        let read = |vars: &[(&str, &str)]| {
            let mut env = EnvReader::from_pairs(vars);
            let config = LinkConfig::read(&mut env);
            env.finish(config)
        };
        assert!(read(&[]).unwrap().is_none());
        let c = read(&[
            ("REDIS_URL", "redis://cache:6379/0"),
            ("WELCOMEDLY_REDIS_BUDGET_MS", "80"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.budget, Duration::from_millis(80));
        let e = read(&[
            ("REDIS_URL", "http://:hunter2@cache/"),
            ("WELCOMEDLY_REDIS_BUDGET_MS", "0"),
        ])
        .unwrap_err();
        assert_eq!(e.invalid_variables().len(), 2);
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = read(&[("REDIS_URL", "rediss://:hunter2@cache/")]).unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn one_topology_from_the_environment() {
        let read = |vars: &[(&str, &str)]| {
            let mut env = EnvReader::from_pairs(vars);
            let config = LinkConfig::read(&mut env);
            env.finish(config)
        };
        let c = read(&[
            ("REDIS_SENTINELS", "s1:26379, s2:26380,"),
            ("REDIS_SENTINEL_MASTER", "mymaster"),
            ("REDIS_SENTINEL_MASTER_URL", "redis://:hunter2@master/2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            c.topology,
            Topology::Sentinel {
                sentinels: vec!["s1:26379".into(), "s2:26380".into()],
                master: "mymaster".into(),
                url: RedisUrl::new("redis://:hunter2@master/2"),
            }
        );
        let c = read(&[(
            "REDIS_CLUSTER_NODES",
            "redis://:hunter2@a:7000,redis://:hunter2@b:7001",
        )])
        .unwrap()
        .unwrap();
        assert_eq!(
            c.topology,
            Topology::Cluster {
                nodes: vec![
                    RedisUrl::new("redis://:hunter2@a:7000"),
                    RedisUrl::new("redis://:hunter2@b:7001")
                ]
            }
        );
        assert!(c.topology.is_cluster());
        // Two topologies: one error naming both, passwords hidden.
        let e = read(&[
            ("REDIS_URL", "redis://:hunter2@cache:6379/0"),
            ("REDIS_CLUSTER_NODES", "redis://:hunter2@a:7000"),
        ])
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("REDIS_URL") && text.contains("REDIS_CLUSTER_NODES"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        let e = read(&[("REDIS_SENTINELS", "s1:26379")]).unwrap_err();
        assert!(e.to_string().contains("REDIS_SENTINEL_MASTER"), "{e}");
        let e = read(&[
            ("REDIS_SENTINELS", "s1"),
            ("REDIS_SENTINEL_MASTER", "mymaster"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("host:port"), "{e}");
        let e = read(&[("REDIS_CLUSTER_NODES", "unix:///tmp/r.sock")]).unwrap_err();
        assert!(e.to_string().contains("redis://"), "{e}");
        let e = read(&[("REDIS_CLUSTER_NODES", " , ")]).unwrap_err();
        assert!(e.to_string().contains("empty list"), "{e}");
        // Blank is unset.
        assert!(read(&[("REDIS_CLUSTER_NODES", "  ")]).unwrap().is_none());
    }

    #[test]
    fn sentinels_with_passwords_are_accepted_and_never_printed() {
        let read = |vars: &[(&str, &str)]| {
            let mut env = EnvReader::from_pairs(vars);
            let config = LinkConfig::read(&mut env);
            env.finish(config)
        };
        let c = read(&[
            (
                "REDIS_SENTINELS",
                "redis://:hunter2@s1:26379,redis://watcher:hunter2@[::1]:26380/,s3:26381",
            ),
            ("REDIS_SENTINEL_MASTER", "mymaster"),
        ])
        .unwrap()
        .unwrap();
        let Topology::Sentinel { sentinels, .. } = &c.topology else {
            panic!("not a Sentinel topology: {:?}", c.topology);
        };
        assert_eq!(sentinels.len(), 3);
        assert_eq!(sentinels[0], "redis://:hunter2@s1:26379");
        for shown in [
            format!("{}", c.topology),
            format!("{:?}", c.topology),
            format!("{c:?}"),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains("s1:26379") && shown.contains("s3:26381"),
                "{shown}"
            );
        }
        // A URL without a port, or with a path other than `/`, is refused without echoing it.
        for bad in [
            "redis://:hunter2@s1",
            "redis://:hunter2@s1:26379/0",
            "redis://:hunter2@:26379",
        ] {
            let e = read(&[("REDIS_SENTINELS", bad), ("REDIS_SENTINEL_MASTER", "m")]).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("redis://[user:password@]host:port"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }
}
