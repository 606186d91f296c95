//! The cluster's slot map as the link knows it (`CLUSTER SLOTS`, asked of one node), for
//! what redis-rs' cluster connection does not expose: which node serves a key's slot
//! ([`Link::dedicated_for`](super::Link::dedicated_for)) and which nodes exist (the
//! subscriber's candidates). Cached; marked stale on `MOVED`, `ASK`, `READONLY` or a lost
//! node seen on a dedicated connection, and fetched again on the next use.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crc::{CRC_16_XMODEM, Crc};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ConnectionAddr, ConnectionInfo, Value};

use super::{Inner, Link, Retry};
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

    /// `CLUSTER SLOTS` of one node (a random one: another one on a retry), within the connect
    /// timeout.
    async fn fetch_shards(&self) -> Result<ShardMap, Error> {
        let budget = self.inner.config.connect_timeout;
        let per_try = (budget / 3).max(Duration::from_millis(20));
        let value: Value = self
            .call_within(budget, Retry::Once, |c| async move {
                let Some(mut conn) = c.as_cluster().cloned() else {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "not a Redis Cluster",
                    )));
                };
                let mut last = None;
                for _ in 0..3 {
                    let ask = conn.route_command(
                        redis::cmd("CLUSTER").arg("SLOTS").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    );
                    match tokio::time::timeout(per_try, ask).await {
                        Ok(Ok(v)) => return Ok(v),
                        Ok(Err(e)) => last = Some(e),
                        Err(_) => {}
                    }
                }
                Err(last.unwrap_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::Io, "CLUSTER SLOTS timed out"))
                }))
            })
            .await?;
        ShardMap::parse(&value).ok_or_else(|| {
            Error::unavailable(
                "the Redis Cluster answered CLUSTER SLOTS in an unexpected shape: check that the nodes are Redis or Valkey cluster nodes",
            )
        })
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
