//! Where to connect now: the one place the link, the subscriber and the dedicated pool learn
//! it. One node: its URL. Sentinel: asked of the Sentinels on every (re)connection, so a
//! failover is followed. Cluster: the seed nodes (the cluster connection learns the rest).

use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::config::{RedisUrl, Topology};
use crate::error::Error;
use crate::sentinel::Sentinels;

/// The validated topology.
#[derive(Debug)]
pub(crate) enum Target {
    Single(ConnectionInfo),
    /// The Sentinels, with the one that answered last (see `crate::sentinel`).
    Sentinel(Arc<Sentinels>),
    Cluster {
        nodes: Vec<ConnectionInfo>,
    },
}

impl Target {
    /// Checks `topology` once, when the link is built.
    pub(crate) fn new(topology: &Topology) -> Result<Self, Error> {
        match topology {
            Topology::Single(url) => Ok(Self::Single(connection_info(url)?)),
            Topology::Sentinel {
                sentinels,
                master,
                url,
            } => {
                if sentinels.is_empty() || master.is_empty() {
                    return Err(Error::config(
                        "the Sentinel topology needs at least one Sentinel (host:port) and the master's name: set REDIS_SENTINELS and REDIS_SENTINEL_MASTER",
                    ));
                }
                // The master's credentials and database must parse (its host is ignored).
                let sentinels = Sentinels::new(sentinels, master, url).map_err(Error::config)?;
                Ok(Self::Sentinel(Arc::new(sentinels)))
            }
            Topology::Cluster { nodes } => {
                if nodes.is_empty() {
                    return Err(Error::config(
                        "the Redis Cluster topology needs at least one node: set REDIS_CLUSTER_NODES to redis://host:port,...",
                    ));
                }
                let nodes = nodes
                    .iter()
                    .map(|url| {
                        let info = connection_info(url)?;
                        if matches!(info.addr(), ConnectionAddr::Tcp(..)) {
                            Ok(info)
                        } else {
                            Err(Error::config(format!(
                                "cannot use Redis Cluster node {url}: cluster nodes are reached over TCP; use redis://host:port"
                            )))
                        }
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Self::Cluster { nodes })
            }
        }
    }

    /// Where to connect now, within `timeout` (Sentinel: the master the Sentinels name now).
    /// On a cluster: the first seed node (the cluster paths use [`nodes`](Self::nodes)).
    pub(crate) async fn resolve(&self, timeout: Duration) -> Result<ConnectionInfo, String> {
        match self {
            Self::Single(info) => Ok(info.clone()),
            Self::Sentinel(sentinels) => sentinels.resolve_master(timeout).await,
            Self::Cluster { nodes } => nodes
                .first()
                .cloned()
                .ok_or_else(|| "the Redis Cluster has no seed node".to_owned()),
        }
    }

    /// The Sentinels, on Sentinel.
    pub(crate) fn sentinels(&self) -> Option<&Arc<Sentinels>> {
        match self {
            Self::Sentinel(sentinels) => Some(sentinels),
            _ => None,
        }
    }

    /// The seed nodes, on a cluster.
    pub(crate) fn nodes(&self) -> Option<&[ConnectionInfo]> {
        match self {
            Self::Cluster { nodes } => Some(nodes),
            _ => None,
        }
    }
}

/// `url` parsed, TCP or Unix socket only.
fn connection_info(url: &RedisUrl) -> Result<ConnectionInfo, Error> {
    let info = url.expose().into_connection_info().map_err(|_| {
        Error::config(format!(
            "cannot use Redis URL {url}: expected redis://[user:password@]host[:port][/db] or unix:///path"
        ))
    })?;
    if !matches!(
        info.addr(),
        ConnectionAddr::Tcp(..) | ConnectionAddr::Unix(_)
    ) {
        return Err(Error::config(format!(
            "cannot use Redis URL {url}: TLS (rediss://) is not built in; use redis:// or unix://"
        )));
    }
    Ok(info)
}

/// The credentials and database of `url` (a Sentinel master's URL, whose host is ignored and
/// may be left out: `redis://:secret@/0`, `redis://`) at `host:port`. The error never shows
/// the password.
pub(crate) fn info_at(url: &RedisUrl, host: &str, port: u16) -> Result<ConnectionInfo, String> {
    let text = url.expose();
    let bad = || {
        format!(
            "cannot use the Sentinel master's URL {url}: expected redis://[user:password@][host]/[db] (the host is ignored: the Sentinels say where the master is)"
        )
    };
    let rest = text.strip_prefix("redis://").ok_or_else(bad)?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((user, hostport)) => (Some(user), hostport),
        None => (None, authority),
    };
    // A placeholder host where none was given, so the URL parses; replaced below.
    let hostport = if hostport.is_empty() {
        "master"
    } else {
        hostport
    };
    let normal = match userinfo {
        Some(user) => format!("redis://{user}@{hostport}{tail}"),
        None => format!("redis://{hostport}{tail}"),
    };
    let info = normal.as_str().into_connection_info().map_err(|_| bad())?;
    Ok(info.set_addr(ConnectionAddr::Tcp(host.to_owned(), port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_url_without_host_keeps_its_credentials_and_database() {
        let info = info_at(&RedisUrl::new("redis://:hunter2@/3"), "10.0.0.5", 6380).unwrap();
        assert_eq!(info.addr(), &ConnectionAddr::Tcp("10.0.0.5".into(), 6380));
        assert_eq!(info.redis_settings().db(), 3);
        assert_eq!(info.redis_settings().password(), Some("hunter2"));
        let info = info_at(&RedisUrl::new("redis://"), "h", 1).unwrap();
        assert_eq!(info.redis_settings().db(), 0);
        let info = info_at(&RedisUrl::new("redis://u:p@ignored:9/1"), "h", 2).unwrap();
        assert_eq!(info.addr(), &ConnectionAddr::Tcp("h".into(), 2));
        assert_eq!(info.redis_settings().username(), Some("u"));
        let e = info_at(&RedisUrl::new("http://:hunter2@x/"), "h", 1).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn topologies_are_checked_once() {
        assert!(Target::new(&Topology::Cluster { nodes: vec![] }).is_err());
        let e = Target::new(&Topology::Cluster {
            nodes: vec![RedisUrl::new("unix:///tmp/x.sock")],
        })
        .unwrap_err();
        assert!(e.is_config(), "{e}");
        assert!(Target::new(&Topology::Single(RedisUrl::new("redis://127.0.0.1:1/"))).is_ok());
    }
}
