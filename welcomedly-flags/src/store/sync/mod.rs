//! [`FlagSync`]: keeps an application snapshot current from a [`FlagStore`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use welcomedly_core::backoff::{Backoff, Delays};
use welcomedly_core::health::{CheckFuture, HealthCheck};

use super::{Document, FlagStore, StoreError, snapshot_file};

mod metrics;
mod status;
mod worker;

use status::Shared;
pub use status::SyncHealth;
use worker::{Outcome, Worker};

/// Settings of a [`FlagSync`], plain data with documented defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SyncConfig {
    /// How long [`FlagSync::start`] waits for the store to answer before it gives up (or falls
    /// back to the snapshot file). Default 10 s.
    pub startup_timeout: Duration,
    /// A file holding the last applied document, rewritten atomically (temporary file +
    /// rename) after each apply and read at startup when the store is unreachable or its
    /// document invalid. Default none.
    pub snapshot_file: Option<PathBuf>,
    /// First delay before retrying a failed load; doubles per failure up to
    /// [`max_retry_interval`](Self::max_retry_interval), jittered to 50–100 %. Default 100 ms.
    pub retry_interval: Duration,
    /// Upper bound of the retry delay. Default 5 s.
    pub max_retry_interval: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            startup_timeout: Duration::from_secs(10),
            snapshot_file: None,
            retry_interval: Duration::from_millis(100),
            max_retry_interval: Duration::from_secs(5),
        }
    }
}

impl SyncConfig {
    /// The defaults with this snapshot file.
    #[must_use]
    pub fn with_snapshot_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.snapshot_file = Some(path.into());
        self
    }

    /// The defaults with this startup timeout.
    #[must_use]
    pub fn with_startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }
}

/// Keeps an application snapshot current from a store.
///
/// The sync knows no flag types: it hands the stored JSON to the application's `compile`
/// (parse + validate + build the snapshot) and the result to its `apply` (swap it in). So:
///
/// - **Push**: each announced version ([`FlagStore::changes`]) is loaded, compiled and applied.
///   A version equal to the served one is ignored; a higher one loads the latest document (so a
///   gap in the announcements costs nothing more); a lower one is checked, since versions only
///   grow unless the store was reset. A new announcement epoch (reconnect, resubscribe, a
///   failed version check in the store) forces a full reload.
/// - **Off the async threads**: `compile` runs on tokio's blocking pool (`spawn_blocking`), at
///   start, on every update and from the snapshot file, so compiling a large flag set never
///   stalls the requests an async worker thread serves.
/// - **Invalid documents**: `compile` returning `Err` rejects the version; the last good
///   snapshot keeps serving; the reason (cut to 512 bytes) is logged and reported through
///   [`FlagSyncHandle::last_error`] and the health check until a valid version is applied.
/// - **Store down**: the last snapshot keeps serving; the sync reports itself stale and retries
///   with exponential backoff and jitter until the store answers.
/// - **Store empty while a version is served** (a Redis restarted without persistence): the
///   served version stays, the health check says so; the next document written to the store is
///   applied, whatever its version.
/// - **Startup**: waits up to [`SyncConfig::startup_timeout`] for the store, then fails with an
///   [`is_unavailable`](StoreError::is_unavailable) error — or, with a
///   [`snapshot_file`](SyncConfig::snapshot_file), starts from the last applied document
///   saved there and catches up once the store answers.
#[derive(Debug)]
#[non_exhaustive]
pub struct FlagSync;

impl FlagSync {
    /// Loads the store's document (waiting up to [`SyncConfig::startup_timeout`]), compiles
    /// and applies it, then follows the store in a background task until the returned handle
    /// is dropped. A store holding nothing (version 0) applies nothing: the application starts
    /// from its own empty snapshot.
    ///
    /// # Errors
    ///
    /// - [`is_unavailable`](StoreError::is_unavailable): the store did not answer in time and
    ///   no usable snapshot file is configured;
    /// - [`is_rejected`](StoreError::is_rejected): the stored document failed `compile` and no
    ///   usable snapshot file is configured;
    /// - [`is_corrupt`](StoreError::is_corrupt): the store's data is not the store's;
    /// - [`is_config`](StoreError::is_config): zero retry interval, or no tokio runtime.
    pub async fn start<T, E, C, A>(
        store: Arc<dyn FlagStore>,
        compile: C,
        apply: A,
        config: SyncConfig,
    ) -> Result<FlagSyncHandle, StoreError>
    where
        C: Fn(&str, u64) -> Result<T, E> + Send + Sync + 'static,
        A: Fn(T) + Send + Sync + 'static,
        T: Send + 'static,
        E: fmt::Display + 'static,
    {
        if config.retry_interval.is_zero() {
            return Err(StoreError::config(
                "the flag sync retry interval is zero: a dead store would be retried in a busy loop; use at least a few milliseconds (default 100 ms)",
            ));
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(StoreError::config(
                "FlagSync must start inside a tokio runtime (it follows the store in the background)",
            ));
        };
        let mut notices = store.changes();
        // Marked seen before the first load: anything announced from here on is caught.
        let seen_epoch = notices.borrow_and_update().epoch;
        let backoff = Backoff::new(config.retry_interval, config.max_retry_interval);
        let worker = Worker {
            shared: Arc::new(Shared::new(store.describe())),
            store,
            compile: Arc::new(compile),
            apply,
            snapshot_file: config.snapshot_file.clone(),
        };

        let pending = match first_load(&worker, &config, &mut backoff.delays()).await {
            Ok(doc) => match worker.offer(doc).await {
                Outcome::Rejected => {
                    let rejected = worker.shared.problems().rejected.clone();
                    let message = rejected.clone().map(|(_, m)| m).unwrap_or_default();
                    from_snapshot(&worker, &config, StoreError::rejected(message)).await?;
                    // Still rejected: the store's version is not retried until it changes.
                    worker.shared.problems().rejected = rejected;
                    false
                }
                _ => false,
            },
            Err(e) => {
                worker.unreachable(&e);
                from_snapshot(&worker, &config, e).await?;
                true
            }
        };
        let view = SyncHealth {
            shared: worker.shared.clone(),
        };
        let task = runtime.spawn(worker::run(worker, notices, seen_epoch, pending, backoff));
        Ok(FlagSyncHandle {
            view,
            task: task.abort_handle(),
        })
    }
}

/// The first load, retried with backoff until the startup timeout.
async fn first_load<C, A>(
    worker: &Worker<C, A>,
    config: &SyncConfig,
    delays: &mut Delays,
) -> Result<Document, StoreError> {
    let started = tokio::time::Instant::now();
    let deadline = started + config.startup_timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let error = match tokio::time::timeout(remaining, worker.store.load()).await {
            Ok(Ok(doc)) => return Ok(doc),
            Ok(Err(e)) if e.is_unavailable() => e,
            Ok(Err(e)) => return Err(e),
            Err(_) => StoreError::unavailable(format!(
                "{} did not answer before the startup timeout",
                worker.store.describe()
            )),
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(StoreError::unavailable_because(
                format!(
                    "{} did not answer within the {} ms startup timeout ({attempts} attempts): check that it runs and is reachable, raise SyncConfig::startup_timeout, or set SyncConfig::snapshot_file to start from the last applied flag set",
                    worker.store.describe(),
                    config.startup_timeout.as_millis()
                ),
                error,
            ));
        }
        tracing::debug!(error = %error, attempts, "the flag store is not answering yet");
        tokio::time::sleep(delays.next_delay().min(deadline - now)).await;
    }
}

/// Startup without the store's document: apply the snapshot file, or fail with `cause`.
async fn from_snapshot<C, A, T, E>(
    worker: &Worker<C, A>,
    config: &SyncConfig,
    cause: StoreError,
) -> Result<(), StoreError>
where
    C: Fn(&str, u64) -> Result<T, E> + Send + Sync + 'static,
    A: Fn(T) + Send + Sync + 'static,
    T: Send + 'static,
    E: fmt::Display,
{
    let Some(path) = config.snapshot_file.clone() else {
        return Err(cause);
    };
    let read_path = path.clone();
    let saved = tokio::task::spawn_blocking(move || snapshot_file::read(&read_path))
        .await
        .unwrap_or_else(|e| Err(format!("the snapshot reader failed: {e}")));
    let failed = |why: String| {
        let message = format!(
            "{cause} (the snapshot file {} could not be used either: {why})",
            path.display()
        );
        if cause.is_unavailable() {
            StoreError::unavailable(message)
        } else {
            StoreError::rejected(message)
        }
    };
    let saved = saved.map_err(&failed)?;
    let (doc, compiled) = worker.compile_off_thread(saved.doc).await;
    let compiled =
        compiled.map_err(|e| failed(format!("its version {} fails compile: {e}", doc.version)))?;
    tracing::warn!(
        version = doc.version,
        saved_at_unix_ms = saved.saved_at_unix_ms,
        path = %path.display(),
        cause = %cause,
        "starting from the flag snapshot file"
    );
    worker.install(compiled, &doc).await;
    worker.shared.from_snapshot.store(true, Ordering::Relaxed);
    Ok(())
}

/// A running [`FlagSync`]. Dropping it stops the sync (the last applied snapshot stays wherever
/// `apply` put it). Its health check reports `Degraded` while the snapshot may be out of date.
#[derive(Debug)]
pub struct FlagSyncHandle {
    view: SyncHealth,
    task: tokio::task::AbortHandle,
}

impl FlagSyncHandle {
    /// A cloneable view for the health registry and metrics (does not keep the sync running).
    pub fn health(&self) -> SyncHealth {
        self.view.clone()
    }

    /// The version of the snapshot being served (0 when none was ever applied).
    pub fn applied_version(&self) -> u64 {
        self.view.applied_version()
    }

    /// The version last read from the store.
    pub fn store_version(&self) -> u64 {
        self.view.store_version()
    }

    /// Whether the store could not be read on the last attempt.
    pub fn is_stale(&self) -> bool {
        self.view.is_stale()
    }

    /// How long the store has been unreachable (zero when it is not).
    pub fn staleness(&self) -> Duration {
        self.view.staleness()
    }

    /// The current problem, if any (see [`SyncHealth::last_error`]).
    pub fn last_error(&self) -> Option<String> {
        self.view.last_error()
    }

    /// Full reloads after a reconnect, resubscribe or failed check.
    pub fn resyncs(&self) -> u64 {
        self.view.resyncs()
    }

    /// Documents refused by compile.
    pub fn rejected_payloads(&self) -> u64 {
        self.view.rejected_payloads()
    }

    /// Snapshots applied.
    pub fn applies(&self) -> u64 {
        self.view.applies()
    }

    /// Whether the sync started from the snapshot file.
    pub fn started_from_snapshot(&self) -> bool {
        self.view.started_from_snapshot()
    }

    /// Waits until a version at least `version` is applied, up to `timeout`; returns whether
    /// it was. (After a store reset versions restart low: this compares numbers only.)
    pub async fn wait_for_version(&self, version: u64, timeout: Duration) -> bool {
        let mut rx = self.view.shared.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= version))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops the sync now (the same as dropping the handle).
    pub fn shutdown(self) {}
}

impl Drop for FlagSyncHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HealthCheck for FlagSyncHandle {
    fn check(&self) -> CheckFuture<'_> {
        self.view.check()
    }
}

#[cfg(test)]
mod tests;
