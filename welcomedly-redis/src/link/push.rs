//! Push connections: a RESP3 connection of its own, to the node the shared connection reaches,
//! whose server pushes (client-side caching's invalidations) go to a caller's sender.

use std::fmt;
use std::time::Duration;

use redis::aio::{AsyncPushSender, MultiplexedConnection};
use redis::{AsyncConnectionConfig, ProtocolVersion};
use welcomedly_core::redact::redact_url;

use super::Link;
use crate::error::Error;

/// A RESP3 connection of its own made by [`Link::push_connection`], with the generation of the
/// shared connection it was made alongside. Redis sends its pushes (`invalidate`, …) to the
/// sender given there; when the connection ends, the sender receives a
/// [`PushKind::Disconnection`](redis::PushKind::Disconnection) at once.
pub struct PushConnection {
    conn: MultiplexedConnection,
    generation: u64,
}

impl fmt::Debug for PushConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushConnection")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl PushConnection {
    /// The connection, to send commands on (`CLIENT TRACKING …`, `PING`).
    pub fn conn(&mut self) -> &mut MultiplexedConnection {
        &mut self.conn
    }

    /// The [`Link::connection_generation`] of the shared connection when this one was made:
    /// while the two are equal, both reach the same node.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl Link {
    /// The generation of the shared connection now (each new connection has a higher one),
    /// `None` while there is none. A cheap read: compare it with
    /// [`PushConnection::generation`] to know the link has not moved (a reconnection, a
    /// Sentinel failover) since a push connection was made.
    pub fn connection_generation(&self) -> Option<u64> {
        self.inner().hot.load().as_ref().map(|h| h.generation)
    }

    /// A RESP3 connection of its own to the node the shared connection reaches now (one node,
    /// or the Sentinels' master the link follows), same credentials and database, that hands
    /// every server push to `push`, for server-assisted client-side caching (`CLIENT TRACKING
    /// … BCAST`) or RESP3 pub/sub. `push` runs on the connection's reader task: it must not
    /// block. The caller owns the connection (not pooled) and pings it to notice a frozen
    /// Redis; its end is pushed as [`PushKind::Disconnection`](redis::PushKind::Disconnection).
    ///
    /// # Errors
    ///
    /// [`Error::is_not_connected`] while the link has no connection or when this one could not
    /// be made within the link's connect timeout; [`Error::is_config`] on a Redis Cluster (a
    /// push connection reaches one node: ask each node's owner of the keys instead).
    pub async fn push_connection(
        &self,
        push: impl AsyncPushSender,
    ) -> Result<PushConnection, Error> {
        let inner = self.inner();
        if inner.target.nodes().is_some() {
            return Err(Error::config(
                "a push connection reaches one node, and this link is a Redis Cluster: open one per node instead",
            ));
        }
        let Some((addr, generation)) = inner
            .hot
            .load()
            .as_ref()
            .and_then(|h| Some((h.addr.clone()?, h.generation)))
        else {
            return Err(Error::not_connected());
        };
        let timeout = inner.config.connect_timeout;
        let base = inner
            .target
            .resolve(timeout)
            .await
            .map_err(|e| Error::unavailable(redact_url(&e).into_owned()))?;
        let settings = base
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = base.set_addr(addr).set_redis_settings(settings);
        let place = info.addr().to_string();
        let cannot = |e: &dyn fmt::Display| {
            Error::unavailable(
                redact_url(&format!(
                    "cannot open a RESP3 push connection to Redis at {place}: {e}; check that Redis is 6.0 or newer and reachable"
                ))
                .into_owned(),
            )
        };
        let client = redis::Client::open(info.clone()).map_err(|e| cannot(&e))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout.max(Duration::from_millis(100))))
            .set_push_sender(push);
        let conn = tokio::time::timeout(
            timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| cannot(&format_args!("no answer within {} ms", timeout.as_millis())))?
        .map_err(|e| cannot(&e))?;
        Ok(PushConnection { conn, generation })
    }
}
