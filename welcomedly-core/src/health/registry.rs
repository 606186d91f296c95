//! [`HealthRegistry`]: the named checks of one instance and its draining flag.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::flight::{Checks, Flight};
use super::{CheckOutcome, CheckReport, HealthCheck, HealthReport, ReadinessReport};
use crate::{CoreConfig, InstanceId};

/// Whether a check's failure takes the instance out of the load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Affects {
    /// An unhealthy result makes `/health` and `/health/ready` answer 503 (a dependency the
    /// instance cannot serve without, such as the database primary). The default.
    #[default]
    Readiness,
    /// Reported in `/health` only (a dependency the instance can do without, such as one replica
    /// among several).
    Nothing,
}

struct Entry {
    name: String,
    check: Arc<dyn HealthCheck>,
    affects: Affects,
    timeout: Option<Duration>,
}

struct Inner {
    instance_id: InstanceId,
    version: String,
    started: Instant,
    default_timeout: Duration,
    draining: AtomicBool,
    /// Wakes the readiness callers waiting on a run when draining starts, so they answer 503
    /// at once instead of after the run.
    drained: Notify,
    checks: RwLock<Vec<Entry>>,
    /// The run of every check in progress, shared by concurrent [`HealthRegistry::report`]s.
    report_flight: Flight,
    /// The run of the readiness checks in progress, shared by concurrent
    /// [`HealthRegistry::readiness`] calls.
    readiness_flight: Flight,
}

/// The named health checks of one instance, its identity, and whether it is draining.
///
/// Cloning is cheap (an `Arc`); every clone sees the same checks and the same draining flag, so
/// crates that own a dependency register their checks on a clone at start-up.
///
/// ```
/// use std::time::Duration;
/// use welcomedly_core::InstanceId;
/// use welcomedly_core::health::{check_fn, Affects, CheckOutcome, HealthRegistry};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let registry = HealthRegistry::new(InstanceId::new("api-1"), "1.2.0", Duration::from_secs(2));
/// registry.register("db", check_fn(|| async { CheckOutcome::Healthy }), Affects::Readiness);
/// registry.register(
///     "replica-1",
///     check_fn(|| async { CheckOutcome::unhealthy("connection refused") }),
///     Affects::Nothing,
/// );
///
/// let report = registry.report().await;
/// assert!(report.is_ready()); // the replica does not affect readiness
/// assert_eq!(serde_json::to_value(&report).unwrap()["status"], "degraded");
/// # }
/// ```
#[derive(Clone)]
pub struct HealthRegistry {
    inner: Arc<Inner>,
}

impl fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let checks = self
            .inner
            .checks
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("HealthRegistry")
            .field("instance_id", &self.inner.instance_id)
            .field("version", &self.inner.version)
            .field("default_timeout", &self.inner.default_timeout)
            .field("draining", &self.is_draining())
            .field(
                "checks",
                &checks.iter().map(|e| &e.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl HealthRegistry {
    /// A registry with no checks. `default_timeout` bounds each check that has no timeout of its
    /// own; the uptime counts from now.
    pub fn new(
        instance_id: InstanceId,
        version: impl Into<String>,
        default_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                instance_id,
                version: version.into(),
                started: Instant::now(),
                default_timeout,
                draining: AtomicBool::new(false),
                drained: Notify::new(),
                checks: RwLock::new(Vec::new()),
                report_flight: Flight::default(),
                readiness_flight: Flight::default(),
            }),
        }
    }

    /// A registry with the instance id, service version and check timeout of `config`.
    pub fn from_config(config: &CoreConfig) -> Self {
        Self::new(
            config.instance_id.clone(),
            config.service_version.clone(),
            config.health_check_timeout,
        )
    }

    /// Add a check under `name`, bounded by the registry's default timeout. A check already
    /// registered under the same name is replaced (so a reconnecting client can re-register).
    pub fn register(&self, name: impl Into<String>, check: impl HealthCheck, affects: Affects) {
        self.insert(name.into(), Arc::new(check), affects, None);
    }

    /// Like [`register`](Self::register), with a timeout of its own for this check.
    pub fn register_with_timeout(
        &self,
        name: impl Into<String>,
        check: impl HealthCheck,
        affects: Affects,
        timeout: Duration,
    ) {
        self.insert(name.into(), Arc::new(check), affects, Some(timeout));
    }

    fn insert(
        &self,
        name: String,
        check: Arc<dyn HealthCheck>,
        affects: Affects,
        timeout: Option<Duration>,
    ) {
        let entry = Entry {
            name,
            check,
            affects,
            timeout,
        };
        let mut checks = self
            .inner
            .checks
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match checks.iter_mut().find(|e| e.name == entry.name) {
            Some(existing) => *existing = entry,
            None => checks.push(entry),
        }
    }

    /// Remove the check registered under `name`; `false` when there was none.
    pub fn deregister(&self, name: &str) -> bool {
        let mut checks = self
            .inner
            .checks
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let before = checks.len();
        checks.retain(|e| e.name != name);
        checks.len() != before
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &InstanceId {
        &self.inner.instance_id
    }

    /// The service version reported by `/health`.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// Mark the instance as draining: from now on readiness fails and `/health` says
    /// `"draining"`. Called by [`drain`](crate::drain) when the shutdown signal arrives; there is
    /// no way back (a draining process is about to exit).
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.inner.drained.notify_waiters();
    }

    /// Whether [`start_draining`](Self::start_draining) was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Run every check concurrently, each bounded by its timeout, and collect the results.
    ///
    /// Single flight: while a run is in progress, further calls (from any clone) await that
    /// run instead of starting their own, so a burst of `/health` requests probes each
    /// dependency once. A call made after the run finished starts a new one; nothing is cached.
    /// The run belongs to no single caller: dropping the call that started it leaves the others
    /// their answer, and dropping all of them cancels it. A check registered while a run is in
    /// progress is in the next run, not in this one.
    ///
    /// A check that panics is reported unhealthy (`"the check panicked: <message>"`); the other
    /// lines of the report are unaffected.
    pub async fn report(&self) -> HealthReport {
        let run = self
            .inner
            .report_flight
            .join_or_start(|| self.start_run(|_| true));
        let checks = run.await;
        // The draining flag is read now, not when the run started.
        self.build(checks)
    }

    /// The readiness verdict: runs only the checks that affect readiness, and none at all while
    /// draining (the answer is 503 whatever they say).
    ///
    /// Single flight like [`report`](Self::report), but with a run of its own: it runs only the
    /// readiness checks, so a probe never waits on a slow check that cannot change its answer.
    /// A readiness check thus runs at most twice at a time (once for each endpoint). The
    /// draining flag is read at call time, and a call waiting on a run answers 503 as soon as
    /// [`start_draining`](Self::start_draining) is called, without waiting for the run.
    pub async fn readiness(&self) -> ReadinessReport {
        // Created before the flag is read: `notify_waiters` reaches a `Notified` from its
        // creation on, so a drain starting between the read and the wait is not missed.
        let drained = self.inner.drained.notified();
        if self.is_draining() {
            return self.build(BTreeMap::new()).readiness();
        }
        let run = self
            .inner
            .readiness_flight
            .join_or_start(|| self.start_run(|affects| affects == Affects::Readiness));
        let checks = tokio::select! {
            checks = run => checks,
            // The checks' verdict no longer matters; leaving drops this caller's share of the
            // run (and cancels it if it was the last one).
            () = drained => BTreeMap::new(),
        };
        self.build(checks).readiness()
    }

    fn build(&self, checks: BTreeMap<String, CheckReport>) -> HealthReport {
        HealthReport::new(
            self.is_draining(),
            self.inner.instance_id.to_string(),
            self.inner.version.clone(),
            self.inner.started.elapsed(),
            checks,
        )
    }

    /// A run of the checks `wanted` selects, as registered now.
    fn start_run(&self, wanted: impl Fn(Affects) -> bool) -> BoxFuture<'static, Checks> {
        // Snapshot the checks so the lock is not held across an await (a check may be slow, and
        // a registration during a report must not wait for it); the run then owns all it needs,
        // so any of its waiters can drive it.
        let selected: Vec<_> = {
            let checks = self
                .inner
                .checks
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            checks
                .iter()
                .filter(|e| wanted(e.affects))
                .map(|e| {
                    let timeout = e.timeout.unwrap_or(self.inner.default_timeout);
                    (e.name.clone(), Arc::clone(&e.check), e.affects, timeout)
                })
                .collect()
        };
        let runs = selected
            .into_iter()
            .map(|(name, check, affects, timeout)| async move {
                let started = Instant::now();
                // A panicking check must cost its own line in the report, not the whole
                // /health response. `check()` is called inside the guarded future because an
                // implementation may panic before it returns its future, not only while polled.
                let probe = AssertUnwindSafe(async move { check.check().await }).catch_unwind();
                let outcome = match tokio::time::timeout(timeout, probe).await {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(payload)) => CheckOutcome::Unhealthy(panicked(&*payload)),
                    Err(_) => CheckOutcome::unhealthy(format!(
                        "timed out after {} ms",
                        timeout.as_millis()
                    )),
                };
                (name, CheckReport::new(outcome, started.elapsed(), affects))
            });
        let all = futures_util::future::join_all(runs);
        Box::pin(async move { all.await.into_iter().collect() })
    }
}

/// The error text of a check that panicked, with the panic message when the payload is text
/// (a `&str` or a `String`: what `panic!`, `expect` and `unwrap` carry).
fn panicked(payload: &(dyn Any + Send)) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    match message {
        Some(message) => format!("the check panicked: {message}"),
        None => "the check panicked".to_owned(),
    }
}
