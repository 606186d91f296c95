//! The bus's shared (hot) connection for non-blocking calls — publishing and catching up —
//! with the house's reconnect discipline: a time budget on every call, the connection dropped
//! after `failure_threshold` transport failures in a row (only if it is still the one that
//! failed), and one supervisor that reconnects with backoff and jitter.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind};
use tokio::sync::Notify;

use crate::Error;

/// The connection calls use, with the generation it was made in.
pub(super) struct Hot {
    conn: MultiplexedConnection,
    generation: u64,
}

pub(super) struct Link {
    client: redis::Client,
    hot: ArcSwapOption<Hot>,
    pub(super) budget: Duration,
    threshold: u32,
    pub(super) reconnect_interval: Duration,
    pub(super) max_reconnect_interval: Duration,
    consecutive: AtomicU32,
    generations: AtomicU64,
    pub(super) failures: AtomicU64,
    wake: Notify,
}

/// The cause of a bus error when Redis did not answer at all (no connection, or too slow).
#[derive(Debug)]
struct NoAnswer;

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no answer from Redis")
    }
}

impl std::error::Error for NoAnswer {}

/// A Redis error without a Redis-side cause: it is unreachable or slower than the budget.
pub(super) fn unavailable(message: impl Into<String>) -> Error {
    Error::redis(message, NoAnswer)
}

/// Whether a failure says the connection itself is bad.
fn is_transport(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::ReadOnly
            | ServerErrorKind::BusyLoading
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::TryAgain,
        )
        | ErrorKind::AuthenticationFailed => true,
        ErrorKind::Server(_)
        | ErrorKind::Extension
        | ErrorKind::Parse
        | ErrorKind::UnexpectedReturnType => false,
        _ => true,
    }
}

/// `delay` scaled to a random 50–100 %, so instances do not reconnect in lockstep.
pub(super) fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(0.5 + fastrand::f64() * 0.5)
}

impl Link {
    pub(super) fn new(
        client: redis::Client,
        budget: Duration,
        threshold: u32,
        reconnect_interval: Duration,
        max_reconnect_interval: Duration,
    ) -> Self {
        Self {
            client,
            hot: ArcSwapOption::empty(),
            budget,
            threshold: threshold.max(1),
            reconnect_interval,
            max_reconnect_interval: max_reconnect_interval.max(reconnect_interval),
            consecutive: AtomicU32::new(0),
            generations: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    pub(super) fn client(&self) -> &redis::Client {
        &self.client
    }

    pub(super) fn is_connected(&self) -> bool {
        self.hot.load().is_some()
    }

    /// A new multiplexed connection whose every call times out after `response_timeout`.
    pub(super) async fn open(
        &self,
        response_timeout: Duration,
    ) -> Result<MultiplexedConnection, Error> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.budget.max(Duration::from_secs(1))))
            .set_response_timeout(Some(response_timeout));
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout(self.budget.max(Duration::from_secs(1)), connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(Error::redis(
                "cannot connect to the bus's Redis: check that it runs and is reachable",
                e,
            )),
            Err(_) => Err(unavailable(
                "connecting to the bus's Redis timed out: check that it runs and is reachable",
            )),
        }
    }

    /// Runs one call on the hot connection within the budget.
    pub(super) async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, Error>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let Some(hot) = self.hot.load_full() else {
            return Err(unavailable(format!(
                "cannot {what}: the bus's Redis is unreachable (reconnecting in the background); retry later"
            )));
        };
        match tokio::time::timeout(self.budget, f(hot.conn.clone())).await {
            Ok(Ok(value)) => {
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
                Ok(value)
            }
            Ok(Err(e)) => {
                self.failed(&hot, is_transport(&e));
                Err(Error::redis(format!("cannot {what}: Redis failed"), e))
            }
            Err(_) => {
                self.failed(&hot, true);
                Err(unavailable(format!(
                    "cannot {what}: Redis answered slower than the {} ms budget",
                    self.budget.as_millis()
                )))
            }
        }
    }

    fn failed(&self, hot: &Arc<Hot>, transport: bool) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if !transport {
            return;
        }
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if n < self.threshold {
            return;
        }
        let current = self.hot.compare_and_swap(hot, None::<Arc<Hot>>);
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, hot)) {
            tracing::warn!(
                generation = hot.generation,
                "the bus's Redis connection failed: publishing fails fast until it is back"
            );
            self.wake.notify_one();
        }
    }

    fn install(&self, conn: MultiplexedConnection) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        self.consecutive.store(0, Ordering::Relaxed);
        self.hot.store(Some(Arc::new(Hot { conn, generation })));
    }

    /// Tries a first connection (an unreachable Redis is not an error: the supervisor keeps
    /// trying); returns whether it worked.
    pub(super) async fn connect_first(&self) -> bool {
        match self.open(self.budget).await {
            Ok(conn) => {
                self.install(conn);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the bus's Redis is unreachable at start: connecting in the background");
                false
            }
        }
    }

    /// The one task that reconnects the hot connection.
    pub(super) async fn supervise(self: Arc<Self>, mut connected: bool) {
        loop {
            if connected {
                self.wake.notified().await;
                if self.hot.load().is_some() {
                    continue;
                }
            }
            let mut delay = self.reconnect_interval;
            let mut attempts = 0u32;
            loop {
                tokio::time::sleep(jittered(delay)).await;
                match self.open(self.budget).await {
                    Ok(conn) => {
                        self.install(conn);
                        tracing::info!(attempts, "the bus's Redis connection is back");
                        break;
                    }
                    Err(e) => {
                        attempts += 1;
                        if attempts.is_multiple_of(10) {
                            tracing::warn!(error = %e, attempts, "the bus's Redis is still unreachable");
                        } else {
                            tracing::debug!(error = %e, attempts, "the bus's Redis is still unreachable");
                        }
                    }
                }
                delay = delay.saturating_mul(2).min(self.max_reconnect_interval);
            }
            connected = true;
        }
    }
}
