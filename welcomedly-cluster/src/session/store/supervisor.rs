//! The session store's Redis connection: one multiplexed connection for every request (no
//! per-request pool checkout and its `PING`), replaced by one supervisor task when it fails.
//!
//! The discipline of the rate-limit backend: a call is bounded by the budget; the connection
//! is dropped after `failure_threshold` transport failures in a row (at once on `READONLY`,
//! `LOADING`, `MASTERDOWN`), only if it is still the one that failed (generation check); the
//! supervisor then waits `min_outage` and reconnects with exponential backoff and jitter.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, RedisError, Script, ServerErrorKind};
use tokio::sync::Notify;

/// The connection requests use, with the generation it was made in.
pub(super) struct Hot {
    pub(super) conn: MultiplexedConnection,
    generation: u64,
}

/// What a failed call says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// I/O error or timeout: counts towards the threshold.
    Transport,
    /// A Redis that cannot serve this connection (failover, loading): replace it now.
    Replace,
    /// An answer a new connection would not fix (`OOM`, a script error): keep it.
    Server,
}

pub(super) fn classify(e: &RedisError) -> Failure {
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::ReadOnly
            | ServerErrorKind::BusyLoading
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::TryAgain,
        )
        | ErrorKind::AuthenticationFailed => Failure::Replace,
        ErrorKind::Server(_)
        | ErrorKind::Extension
        | ErrorKind::Parse
        | ErrorKind::UnexpectedReturnType => Failure::Server,
        _ => Failure::Transport,
    }
}

pub(super) struct Settings {
    pub(super) budget: Duration,
    pub(super) failure_threshold: u32,
    pub(super) min_outage: Duration,
    pub(super) reconnect_interval: Duration,
    pub(super) max_reconnect_interval: Duration,
    /// Loaded at every connect, so the first request's `EVALSHA` does not meet `NOSCRIPT`.
    pub(super) scripts: Vec<Script>,
}

pub(super) struct Connection {
    pool: deadpool_redis::Pool,
    hot: ArcSwapOption<Hot>,
    pub(super) settings: Settings,
    consecutive: AtomicU32,
    failures: AtomicU64,
    generations: AtomicU64,
    wake: Arc<Notify>,
    supervisor: OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(task) = self.supervisor.get() {
            task.abort();
        }
    }
}

impl Connection {
    /// Tries a first connection (an unreachable Redis is not an error: requests that need it
    /// get 503 until the supervisor connects) and starts the supervisor.
    pub(super) async fn start(
        pool: deadpool_redis::Pool,
        settings: Settings,
        runtime: &tokio::runtime::Handle,
    ) -> Arc<Self> {
        let this = Arc::new(Self {
            pool,
            hot: ArcSwapOption::empty(),
            settings,
            consecutive: AtomicU32::new(0),
            failures: AtomicU64::new(0),
            generations: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
            supervisor: OnceLock::new(),
        });
        let connected = match this.connect().await {
            Ok(conn) => {
                this.publish(conn);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis is unreachable: requests that use a session get 503 until it answers");
                false
            }
        };
        let task = runtime.spawn(supervise(
            Arc::downgrade(&this),
            this.wake.clone(),
            connected,
        ));
        let _ = this.supervisor.set(task.abort_handle());
        this
    }

    pub(super) fn hot(&self) -> Option<Arc<Hot>> {
        self.hot.load_full()
    }

    pub(super) fn is_connected(&self) -> bool {
        self.hot.load().is_some()
    }

    pub(super) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(super) fn connections_made(&self) -> u64 {
        self.generations.load(Ordering::Relaxed)
    }

    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let timeout = self.settings.budget.max(Duration::from_secs(1));
        let conn = tokio::time::timeout(timeout, self.pool.get())
            .await
            .map_err(|_| "connecting to Redis timed out".to_owned())?
            .map_err(|e| {
                welcomedly_core::redact::redact_url(&format!("cannot connect to Redis: {e}"))
                    .into_owned()
            })?;
        let mut conn = deadpool_redis::Connection::take(conn);
        for script in &self.settings.scripts {
            tokio::time::timeout(timeout, script.prepare_invoke().load_async(&mut conn))
                .await
                .map_err(|_| "loading the session scripts into Redis timed out".to_owned())?
                .map_err(|e| format!("cannot load the session scripts into Redis: {e}"))?;
        }
        Ok(conn)
    }

    fn publish(&self, conn: MultiplexedConnection) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        self.consecutive.store(0, Ordering::Relaxed);
        self.hot.store(Some(Arc::new(Hot { conn, generation })));
    }

    pub(super) fn succeeded(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// A call on `hot` failed: count it and, per its kind and the threshold, drop that
    /// connection — only that one: a replacement made meanwhile stays.
    pub(super) fn failed(&self, hot: &Arc<Hot>, failure: Failure, error: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let drop_it = match failure {
            Failure::Server => {
                tracing::warn!(error, "Redis refused a session call");
                false
            }
            Failure::Replace => true,
            Failure::Transport => {
                let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                n >= self.settings.failure_threshold
            }
        };
        if !drop_it {
            tracing::debug!(error, "a session call failed");
            return;
        }
        let current = self.hot.compare_and_swap(hot, None::<Arc<Hot>>);
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, hot)) {
            tracing::warn!(
                error,
                generation = hot.generation,
                "Redis failed: requests that use a session get 503 until it answers"
            );
            self.wake.notify_one();
        }
    }
}

/// The one task that reconnects (see the module docs). Holds the connection weakly, so
/// dropping the store ends it.
async fn supervise(inner: Weak<Connection>, wake: Arc<Notify>, mut connected: bool) {
    loop {
        if connected {
            wake.notified().await;
            let Some(strong) = inner.upgrade() else {
                return;
            };
            if strong.is_connected() {
                continue;
            }
            let pause = strong.settings.min_outage;
            drop(strong);
            tokio::time::sleep(pause).await;
        }
        let mut delay = match inner.upgrade() {
            Some(strong) => strong.settings.reconnect_interval,
            None => return,
        };
        let mut attempts = 0u32;
        loop {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            match strong.connect().await {
                Ok(conn) => {
                    strong.publish(conn);
                    tracing::info!(attempts, "Redis answers again: sessions are served again");
                    break;
                }
                Err(e) => {
                    attempts += 1;
                    if attempts.is_multiple_of(10) {
                        tracing::warn!(error = %e, attempts, "Redis still unreachable");
                    } else {
                        tracing::debug!(error = %e, attempts, "Redis still unreachable");
                    }
                }
            }
            let max = strong.settings.max_reconnect_interval;
            drop(strong);
            tokio::time::sleep(jittered(delay)).await;
            delay = delay.saturating_mul(2).min(max);
        }
        connected = true;
    }
}

/// `delay` scaled to a random 50–100 %.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(0.5 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_to_full() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100));
        }
    }
}
