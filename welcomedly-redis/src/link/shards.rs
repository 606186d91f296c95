//! The cluster's slot map as the link knows it (`CLUSTER SLOTS`, asked of one node), for
//! what redis-rs' cluster connection does not expose: which node serves a key's slot
//! ([`Link::dedicated_for`](super::Link::dedicated_for)) and which nodes exist (the
//! subscriber's candidates). Cached; marked stale on `MOVED`, `ASK`, `READONLY` or a lost
//! node seen on a dedicated connection, and fetched again on the next use.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crc::{CRC_16_XMODEM, Crc};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{ConnectionAddr, ConnectionInfo, Value};
use tokio::sync::Notify;
use welcomedly_core::redact::redact_url;

use super::{Inner, Link};
use crate::error::Error;

/// The number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16_384;

/// CRC16 (XMODEM), as the cluster spec names.
const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_XMODEM);

/// Most nodes the map keeps (a cluster is tens of nodes; the bound keeps a bad answer small).
const MAX_NODES: usize = 1_000;

/// The slot of `key`, as a Redis Cluster computes it (the hash tag rule). Same as
/// `crate::slot::key_slot`, kept here until the two branches meet.
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let tag = match key.iter().position(|b| *b == b'{') {
        Some(open) => {
            let rest = key.get(open + 1..).unwrap_or_default();
            match rest.iter().position(|b| *b == b'}') {
                Some(0) | None => key,
                Some(close) => rest.get(..close).unwrap_or(key),
            }
        }
        None => key,
    };
    CRC16.checksum(tag) % SLOTS
}

/// Slot ranges and the master serving each; every node (masters first).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ShardMap {
    /// `(first slot, last slot, master host, master port)`, sorted by first slot.
    ranges: Vec<(u16, u16, String, u16)>,
    /// Every node the map names, masters first, no duplicates.
    nodes: Vec<(String, u16)>,
}

impl ShardMap {
    /// Parses a `CLUSTER SLOTS` answer: `[[start, end, [host, port, id, ..], replicas..], ..]`.
    pub(crate) fn parse(value: &Value) -> Option<Self> {
        let Value::Array(ranges) = value else {
            return None;
        };
        let mut map = Self::default();
        let mut replicas = Vec::new();
        for range in ranges {
            let Value::Array(items) = range else {
                return None;
            };
            let mut items = items.iter();
            let start = as_int(items.next()?)?;
            let end = as_int(items.next()?)?;
            let (start, end) = (u16::try_from(start).ok()?, u16::try_from(end).ok()?);
            let master = as_node(items.next()?)?;
            for replica in items {
                if let Some(node) = as_node(replica) {
                    replicas.push(node);
                }
            }
            if !map.nodes.contains(&master) {
                map.nodes.push(master.clone());
            }
            map.ranges.push((start, end, master.0, master.1));
        }
        for node in replicas {
            if !map.nodes.contains(&node) {
                map.nodes.push(node);
            }
        }
        map.nodes.truncate(MAX_NODES);
        map.ranges.sort_by_key(|r| r.0);
        Some(map)
    }

    /// The master serving `slot`.
    pub(crate) fn master_for(&self, slot: u16) -> Option<(&str, u16)> {
        self.ranges
            .iter()
            .find(|(start, end, ..)| (*start..=*end).contains(&slot))
            .map(|(_, _, host, port)| (host.as_str(), *port))
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

/// `[host, port, ...]`; an empty host (a node that does not know its own address yet) is
/// skipped.
fn as_node(v: &Value) -> Option<(String, u16)> {
    let Value::Array(items) = v else {
        return None;
    };
    let mut items = items.iter();
    let host = match items.next()? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    let port = u16::try_from(as_int(items.next()?)?).ok()?;
    (!host.is_empty() && !host.eq_ignore_ascii_case("?")).then_some((host, port))
}

impl Inner {
    /// Every cluster node the link knows of (from its last slot map), with the seed nodes'
    /// credentials; empty before the first map or off a cluster.
    pub(crate) fn cluster_nodes(&self) -> Vec<ConnectionInfo> {
        let (Some(map), Some(base)) = (
            self.shards.load_full(),
            self.target.nodes().and_then(<[_]>::first),
        ) else {
            return Vec::new();
        };
        map.nodes
            .iter()
            .map(|(host, port)| {
                base.clone()
                    .set_addr(ConnectionAddr::Tcp(host.clone(), *port))
            })
            .collect()
    }

    /// The masters of the last slot map, with the seed nodes' credentials (`None`: no map).
    pub(crate) fn cluster_masters(&self) -> Option<Vec<ConnectionInfo>> {
        let map = self.shards.load_full()?;
        let base = self.target.nodes().and_then(<[_]>::first)?;
        let mut masters: Vec<ConnectionInfo> = Vec::new();
        for (_, _, host, port) in &map.ranges {
            let addr = ConnectionAddr::Tcp(host.clone(), *port);
            if !masters.iter().any(|m| m.addr() == &addr) {
                masters.push(base.clone().set_addr(addr));
            }
        }
        (!masters.is_empty()).then_some(masters)
    }

    /// The slot map may be out of date (a `MOVED`, a failover): fetched again on next use.
    pub(crate) fn shards_stale(&self) {
        self.shards_stale.store(true, Ordering::Release);
    }
}

impl Link {
    /// The cluster's slot map, fetched when missing or stale (one fetch at a time).
    pub(crate) async fn shards(&self) -> Result<Arc<ShardMap>, Error> {
        let inner = &self.inner;
        if !inner.shards_stale.load(Ordering::Acquire)
            && let Some(map) = inner.shards.load_full()
        {
            return Ok(map);
        }
        let _one = inner.shards_fetch.lock().await;
        if !inner.shards_stale.load(Ordering::Acquire)
            && let Some(map) = inner.shards.load_full()
        {
            return Ok(map);
        }
        // Before the fetch: a `MOVED` seen while it runs marks the new map stale again.
        inner.shards_stale.store(false, Ordering::Release);
        let fetched = self.fetch_shards().await;
        match fetched {
            Ok(map) => {
                let map = Arc::new(map);
                inner.shards.store(Some(map.clone()));
                Ok(map)
            }
            Err(e) => {
                inner.shards_stale.store(true, Ordering::Release);
                Err(e)
            }
        }
    }

    /// `CLUSTER SLOTS` through the link's cluster connection, within the connect timeout.
    async fn fetch_shards(&self) -> Result<ShardMap, Error> {
        let budget = self.inner.config.connect_timeout;
        let Some(hot) = self.inner.hot.load_full() else {
            return Err(Error::not_connected());
        };
        let Some(conn) = hot.conn.as_cluster() else {
            return Err(Error::config("not a Redis Cluster"));
        };
        fetch(conn, budget).await.map_err(Error::unavailable)
    }
}

/// `CLUSTER SLOTS`, asked of three random nodes at once, the first answer taken, within
/// `budget`: one frozen node does not hold the answer up. (Not of every node by address:
/// redis-rs rebuilds its slot map for an address it does not route to, which stalls every
/// call while a node is frozen.)
pub(crate) async fn fetch(conn: &ClusterConnection, budget: Duration) -> Result<ShardMap, String> {
    let mut asks: FuturesUnordered<_> = (0..3)
        .map(|_| {
            let mut conn = conn.clone();
            async move {
                conn.route_command(
                    redis::cmd("CLUSTER").arg("SLOTS").clone(),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                )
                .await
            }
        })
        .collect();
    let mut last = "no node answered CLUSTER SLOTS in time".to_owned();
    let first = async {
        while let Some(answer) = asks.next().await {
            match answer.map(|v| ShardMap::parse(&v)) {
                Ok(Some(map)) => return Some(map),
                Ok(None) => {
                    last = "the Redis Cluster answered CLUSTER SLOTS in an unexpected shape: check that the nodes are Redis or Valkey cluster nodes".to_owned();
                }
                Err(e) => {
                    last = format!("CLUSTER SLOTS failed: {}", redact_url(&e.to_string()));
                }
            }
        }
        None
    };
    match tokio::time::timeout(budget, first).await {
        Ok(Some(map)) => Ok(map),
        _ => Err(last),
    }
}

/// Whether the cluster connection reaches a master for each of `slots` within `budget` (a
/// `PING` routed by its own slot map): `false` when it still sends them to a frozen node.
async fn reaches(conn: &ClusterConnection, slots: &[u16], budget: Duration) -> bool {
    let pings = slots.iter().map(|slot| {
        let mut conn = conn.clone();
        let route = Route::new(*slot, SlotAddr::Master);
        async move {
            matches!(
                tokio::time::timeout(
                    budget,
                    conn.route_command(
                        redis::cmd("PING").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    ),
                )
                .await,
                Ok(Ok(_))
            )
        }
    });
    futures_util::future::join_all(pings)
        .await
        .into_iter()
        .all(|ok| ok)
}

/// The topology watch, one task per cluster link. redis-rs' cluster connection refreshes its
/// slot map on `MOVED`, `READONLY` or a refused connection, never on calls that time out: a
/// frozen master (SIGSTOP, a stalled VM) replaced by its replica would keep every call to its
/// slots timing out. So when calls run past their budget, this asks the cluster for its slot
/// map (at most once per `min_outage`); when the masters changed since the connection's map,
/// it checks that the connection reaches the slots that moved (a `PING` routed by its own
/// map); only if it does not is a new cluster connection made and swapped in (calls in flight
/// finish on the old one). A dead node, which redis-rs notices and routes around itself, does
/// not cost a new connection.
pub(crate) async fn watch(link: Weak<Inner>, poke: Arc<Notify>) {
    loop {
        poke.notified().await;
        let Some(inner) = link.upgrade() else { return };
        let pause = inner.config.min_outage.max(Duration::from_millis(100));
        if let Some(hot) = inner.hot.load_full()
            && let Some(conn) = hot.conn.as_cluster()
        {
            match fetch(conn, inner.config.connect_timeout).await {
                Ok(now) => {
                    let now = Arc::new(now);
                    inner.shards.store(Some(now.clone()));
                    let was = hot.map.load_full();
                    let moved: Vec<u16> = now
                        .ranges
                        .iter()
                        .filter(|r| was.as_ref().is_none_or(|was| !was.ranges.contains(r)))
                        .map(|r| r.0)
                        .collect();
                    if !moved.is_empty() {
                        if reaches(
                            conn,
                            &moved,
                            inner.config.budget.max(Duration::from_millis(50)),
                        )
                        .await
                        {
                            // Followed already (redis-rs saw a `MOVED` or a refused node).
                            hot.map.store(Some(now));
                        } else if inner
                            .hot
                            .load()
                            .as_ref()
                            .is_some_and(|h| Arc::ptr_eq(h, &hot))
                        {
                            tracing::info!(
                                slots = moved.len(),
                                "the Redis Cluster's masters changed and the cluster connection still routes to the old ones: making a new one"
                            );
                            if let Err(e) = Inner::attempt(&inner).await {
                                tracing::warn!(error = %e, "cannot make a new Redis Cluster connection yet: the current one stays");
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "the topology watch got no slot map"),
            }
        }
        drop(inner);
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn slots_follow_the_cluster_spec() {
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
    }

    #[test]
    fn a_slot_map_names_the_master_of_each_slot() {
        let node =
            |host: &str, port: i64| Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]);
        let value = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("127.0.0.1", 7001),
                node("127.0.0.1", 7004),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
        ]);
        let map = ShardMap::parse(&value).unwrap();
        assert_eq!(map.master_for(0), Some(("127.0.0.1", 7000)));
        assert_eq!(map.master_for(5461), Some(("127.0.0.1", 7001)));
        assert_eq!(map.master_for(16383), Some(("127.0.0.1", 7001)));
        assert_eq!(map.nodes.len(), 4);
        assert_eq!(map.nodes.first(), Some(&("127.0.0.1".to_owned(), 7001)));
        assert!(ShardMap::parse(&Value::Int(3)).is_none());
    }
}
