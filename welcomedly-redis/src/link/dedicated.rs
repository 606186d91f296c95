//! Dedicated connections: pools owned by the link (deadpool, with our manager), for callers
//! that hold a connection for a while. One pool on one node or a Sentinel's master (which
//! connects wherever the Sentinels say the master is now); one pool per node on a cluster.

use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, Weak};

use deadpool::Runtime;
use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult, Timeouts};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, ConnectionAddr, Pipeline, RedisFuture, Value};
use welcomedly_core::redact::redact_url;

use super::shards::key_slot;
use super::{Inner, Link};
use crate::error::Error;

/// Connections one pool holds at most (held ones and idle ones).
const MAX_DEDICATED: usize = 32;

/// Pools one link keeps at most (one per cluster node it was asked for).
const MAX_POOLS: usize = 64;

pub(crate) type Pool = managed::Pool<Manager>;

/// A connection of its own from the link's pool (see [`Link::dedicated`]). Use it as a
/// redis-rs async connection (`cmd.query_async(&mut *conn)` or through `Deref`); dropping it
/// returns it to the pool. On a cluster a `MOVED`, `ASK` or `READONLY` answer on it (the slot
/// moved, the node was demoted) makes the next [`Link::dedicated_for`] look the key's node up
/// again.
pub struct Dedicated {
    obj: Object<Manager>,
    link: Weak<Inner>,
}

impl fmt::Debug for Dedicated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dedicated").finish_non_exhaustive()
    }
}

impl Deref for Dedicated {
    type Target = MultiplexedConnection;

    fn deref(&self) -> &MultiplexedConnection {
        &self.obj.conn
    }
}

impl DerefMut for Dedicated {
    fn deref_mut(&mut self) -> &mut MultiplexedConnection {
        &mut self.obj.conn
    }
}

impl Dedicated {
    /// Tells the link what an answer on this connection says about the slot map: a
    /// redirection, a demoted or failing node, a lost connection make it look again.
    fn saw(&self, result: Result<&Value, &redis::RedisError>) {
        use redis::{ErrorKind, ServerErrorKind};
        let moved = |kind: Option<ServerErrorKind>, code: &str| {
            matches!(
                kind,
                Some(
                    ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::TryAgain
                )
            ) || code == "UNBLOCKED"
        };
        let stale = match result {
            // redis-rs hands server errors back as values (converted later).
            Ok(Value::ServerError(e)) => moved(e.kind(), e.code()),
            Ok(_) => false,
            Err(e) => {
                let kind = match e.kind() {
                    ErrorKind::Server(kind) => Some(kind),
                    _ => None,
                };
                moved(kind, e.code().unwrap_or_default())
                    || e.is_connection_dropped()
                    || e.is_io_error()
            }
        };
        if stale && let Some(link) = self.link.upgrade() {
            link.shards_stale();
        }
    }
}

impl ConnectionLike for Dedicated {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.obj.conn.req_packed_command(cmd).await;
            self.saw(result.as_ref());
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .obj
                .conn
                .req_packed_commands(pipeline, offset, count)
                .await;
            match &result {
                Ok(values) => values.iter().for_each(|v| self.saw(Ok(v))),
                Err(e) => self.saw(Err(e)),
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.obj.conn.get_db()
    }
}

/// So a `&mut Dedicated` can be handed to code taking a connection by value.
impl ConnectionLike for &mut Dedicated {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        (**self).req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        (**self).req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        (**self).get_db()
    }
}

/// A pooled connection and the link connection it was made alongside.
pub(crate) struct Pooled {
    conn: MultiplexedConnection,
    /// The link's connection count when it was made: on one node or Sentinel, a connection
    /// made before the link reconnected (a failover, a restart) may reach the old master and
    /// is not handed out again.
    made_at: u64,
}

/// Makes dedicated connections: to `node` on a cluster, else wherever the link's target is now.
pub(crate) struct Manager {
    link: Weak<Inner>,
    node: Option<(String, u16)>,
    connection: AsyncConnectionConfig,
    pings: AtomicU64,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager").field("node", &self.node).finish()
    }
}

impl managed::Manager for Manager {
    type Type = Pooled;
    type Error = String;

    async fn create(&self) -> Result<Pooled, String> {
        let inner = self
            .link
            .upgrade()
            .ok_or_else(|| "the Redis link is gone".to_owned())?;
        let timeout = inner.config.connect_timeout;
        let info = match (&self.node, inner.target.nodes().and_then(<[_]>::first)) {
            (Some((host, port)), Some(base)) => base
                .clone()
                .set_addr(ConnectionAddr::Tcp(host.clone(), *port)),
            _ => inner.target.resolve(timeout).await?,
        };
        let made_at = inner.connections.load(Ordering::Acquire);
        let place = match &self.node {
            Some(_) => format!("Redis Cluster node {}", info.addr()),
            None => format!("{} ({})", inner.config.topology, info.addr()),
        };
        drop(inner);
        let cannot = |e: &dyn fmt::Display| {
            redact_url(&format!(
                "cannot open a dedicated connection to {place}: {e}"
            ))
            .into_owned()
        };
        let client = redis::Client::open(info.clone()).map_err(|e| cannot(&e))?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.connection)
            .await
            .map_err(|e| cannot(&e))?;
        Ok(Pooled { conn, made_at })
    }

    async fn recycle(&self, pooled: &mut Pooled, _: &Metrics) -> RecycleResult<String> {
        if self.node.is_none()
            && self
                .link
                .upgrade()
                .is_some_and(|l| l.connections.load(Ordering::Acquire) != pooled.made_at)
        {
            return Err(RecycleError::message(
                "made before the link reconnected: it may reach an old master",
            ));
        }
        let n = self.pings.fetch_add(1, Ordering::Relaxed).to_string();
        // One round trip: drop any `WATCH` a holder left, prove the connection answers.
        let (answer,): (String,) = redis::pipe()
            .cmd("UNWATCH")
            .ignore()
            .cmd("PING")
            .arg(&n)
            .query_async(&mut pooled.conn)
            .await
            .map_err(|e| RecycleError::Backend(redact_url(&e.to_string()).into_owned()))?;
        if answer == n {
            Ok(())
        } else {
            Err(RecycleError::message("a PING answered something else"))
        }
    }
}

impl Link {
    /// A connection of its own, from a pool the link owns (built on first use, same Redis and
    /// credentials, at most 32 connections), for a caller that holds it for a while: blocking
    /// reads (`XREAD BLOCK`, `BLPOP`), `WATCH`/`MULTI`/`EXEC`. Dropping it returns it to the
    /// pool; it is checked with a `PING` (and `UNWATCH`) before it is handed out again. On
    /// Sentinel it reaches the master the Sentinels name now, and a connection made before
    /// the link last reconnected is not handed out again.
    ///
    /// On a Redis Cluster use [`dedicated_for`](Self::dedicated_for) (a connection reaches one
    /// node); `dedicated` there gives a connection to the node serving slot 0.
    ///
    /// Which to use:
    /// - [`query`](Self::query) and friends for everything else: the shared connection, with
    ///   the link's budget, threshold and retry;
    /// - [`subscriber`](Self::subscriber) for pub/sub;
    /// - `dedicated` only when a command would stall or corrupt the shared connection. The
    ///   caller bounds its own calls on it (a blocking command's timeout plus a margin) and
    ///   drops the connection after a transport error: the pool then makes a new one.
    ///
    /// # Errors
    ///
    /// [`Error::is_not_connected`] when no connection could be made (or none freed) within the
    /// link's [`connect_timeout`](crate::LinkConfig::connect_timeout).
    pub async fn dedicated(&self) -> Result<Dedicated, Error> {
        if self.inner.target.nodes().is_some() {
            return self.dedicated_on_cluster(b"").await;
        }
        let pool = self.pool(None)?;
        self.checkout(&pool).await
    }

    /// A dedicated connection (see [`dedicated`](Self::dedicated)) to the node serving `key`:
    /// on a Redis Cluster the master of the key's slot, from that node's pool (the slot map is
    /// cached, and looked up again after a `MOVED`/`ASK`/`READONLY` or a lost node on a
    /// dedicated connection); elsewhere the same as `dedicated`. After an error on it, drop it
    /// and call this again.
    ///
    /// # Errors
    ///
    /// As [`dedicated`](Self::dedicated); on a cluster also when the slot map could not be
    /// had or names no master for the slot (the cluster is being reconfigured: retry).
    pub async fn dedicated_for(&self, key: &[u8]) -> Result<Dedicated, Error> {
        if self.inner.target.nodes().is_none() {
            return self.dedicated().await;
        }
        self.dedicated_on_cluster(key).await
    }

    async fn dedicated_on_cluster(&self, key: &[u8]) -> Result<Dedicated, Error> {
        let map = self.shards().await?;
        let slot = key_slot(key);
        let Some((host, port)) = map.master_for(slot) else {
            self.inner.shards_stale();
            return Err(Error::unavailable(format!(
                "the Redis Cluster's slot map names no master for slot {slot}: the cluster is being reconfigured (or not every slot is assigned); retry"
            )));
        };
        let pool = self.pool(Some((host.to_owned(), port)))?;
        let conn = self.checkout(&pool).await;
        if conn.is_err() {
            // The node may be dead and replaced: look again next time.
            self.inner.shards_stale();
        }
        conn
    }

    async fn checkout(&self, pool: &Pool) -> Result<Dedicated, Error> {
        let obj = pool.get().await.map_err(|e| {
            let why = match e {
                PoolError::Timeout(_) => format!(
                    "no dedicated Redis connection within {} ms (Redis is slow or unreachable, or {MAX_DEDICATED} are held)",
                    self.inner.config.connect_timeout.as_millis()
                ),
                PoolError::Backend(e) => e,
                other => format!("cannot get a dedicated Redis connection: {other}"),
            };
            Error::unavailable(redact_url(&why).into_owned())
        })?;
        Ok(Dedicated {
            obj,
            link: Arc::downgrade(&self.inner),
        })
    }

    /// The pool for `node` (`None`: the link's target), built on first use.
    fn pool(&self, node: Option<(String, u16)>) -> Result<Pool, Error> {
        let mut pools = self
            .inner
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(pool) = pools.get(&node) {
            return Ok(pool.clone());
        }
        if pools.len() >= MAX_POOLS {
            // Nodes come and go over a long life: forget the pools of idle ones.
            pools.retain(|_, p| p.status().size > 0);
            if pools.len() >= MAX_POOLS {
                return Err(Error::unavailable(format!(
                    "dedicated Redis connections are held to {MAX_POOLS} nodes already: release some"
                )));
            }
        }
        let config = &self.inner.config;
        // The caller bounds its calls (a blocking read outlives any fixed timeout here).
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(None);
        let manager = Manager {
            link: Arc::downgrade(&self.inner),
            node: node.clone(),
            connection,
            pings: AtomicU64::new(0),
        };
        let timeouts = Timeouts {
            wait: Some(config.connect_timeout),
            // Sentinel: resolving the master, then connecting.
            create: Some(config.connect_timeout * 2),
            recycle: Some(config.connect_timeout),
        };
        let pool = Pool::builder(manager)
            .max_size(MAX_DEDICATED)
            .timeouts(timeouts)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| {
                Error::config(format!(
                    "cannot build the dedicated Redis connection pool: {e}"
                ))
            })?;
        pools.insert(node, pool.clone());
        Ok(pool)
    }
}

/// Closes every pool (the link is gone).
pub(crate) fn close_all(pools: &std::sync::Mutex<HashMap<Option<(String, u16)>, Pool>>) {
    for pool in pools
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
    {
        pool.close();
    }
}
