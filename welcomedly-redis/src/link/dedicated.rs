//! Dedicated connections: a deadpool-redis pool owned by the link, for callers that hold a
//! connection for a while.

use deadpool_redis::{Connection, Manager, Pool, PoolError, Runtime, Timeouts};
use redis::AsyncConnectionConfig;
use welcomedly_core::redact::redact_url;

use super::Link;
use crate::error::Error;

/// Connections the pool holds at most (held ones and idle ones).
const MAX_DEDICATED: usize = 32;

impl Link {
    /// A connection of its own, from a pool the link owns (built on first use, same Redis and
    /// credentials, at most 32 connections), for a caller that holds it for a while: blocking
    /// reads (`XREAD BLOCK`, `BLPOP`), `WATCH`/`MULTI`/`EXEC`. Dropping it returns it to the
    /// pool; it is checked with a `PING` (and `UNWATCH`) before it is handed out again.
    ///
    /// Which to use:
    /// - [`query`](Self::query) and friends for everything else: the shared multiplexed
    ///   connection, with the link's budget, threshold and retry;
    /// - [`subscriber`](Self::subscriber) for pub/sub;
    /// - `dedicated` only when a command would stall or corrupt the shared connection. The
    ///   caller bounds its own calls on it (a blocking command's timeout plus a margin) and
    ///   drops the connection after a transport error: the pool then makes a new one.
    ///
    /// # Errors
    ///
    /// [`Error::is_not_connected`] when no connection could be made (or none freed) within the
    /// link's [`connect_timeout`](crate::LinkConfig::connect_timeout).
    pub async fn dedicated(&self) -> Result<Connection, Error> {
        let pool = self.pool()?;
        pool.get().await.map_err(|e| {
            let why = match e {
                PoolError::Timeout(_) => format!(
                    "no dedicated Redis connection within {} ms (Redis is slow or unreachable, or {MAX_DEDICATED} are held)",
                    self.inner.config.connect_timeout.as_millis()
                ),
                PoolError::Backend(e) => {
                    format!("cannot open a dedicated Redis connection: {e}")
                }
                other => format!("cannot get a dedicated Redis connection: {other}"),
            };
            Error::unavailable(redact_url(&why).into_owned())
        })
    }

    fn pool(&self) -> Result<&Pool, Error> {
        if let Some(pool) = self.inner.pool.get() {
            return Ok(pool);
        }
        let config = &self.inner.config;
        // The caller bounds its calls (a blocking read outlives any fixed timeout here).
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(None);
        let manager = Manager::new_with_config(self.inner.info.clone(), connection)
            .map_err(|_| Error::config("cannot build the dedicated connection pool for this Redis URL: check REDIS_URL"))?;
        let timeouts = Timeouts {
            wait: Some(config.connect_timeout),
            create: Some(config.connect_timeout),
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
        Ok(self.inner.pool.get_or_init(|| pool))
    }
}
