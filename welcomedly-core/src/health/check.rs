//! The [`HealthCheck`] trait, its outcome, and [`check_fn`] for closures.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

/// The future a [`HealthCheck`] returns: boxed, because health is not a hot path and a boxed
/// future keeps the trait object-safe (the registry stores `Arc<dyn HealthCheck>`).
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = CheckOutcome> + Send + 'a>>;

/// What one run of a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The dependency works.
    Healthy,
    /// Working but impaired (for instance the rate limiter fell back to local limits because
    /// Redis is unreachable). Reported, but never fails readiness: the instance still serves.
    Degraded(String),
    /// Not working. Fails readiness when the check was registered with
    /// [`Affects::Readiness`](super::Affects::Readiness).
    Unhealthy(String),
}

impl CheckOutcome {
    /// [`CheckOutcome::Degraded`] with this reason.
    pub fn degraded(reason: impl Into<String>) -> Self {
        Self::Degraded(reason.into())
    }

    /// [`CheckOutcome::Unhealthy`] with this reason.
    pub fn unhealthy(reason: impl Into<String>) -> Self {
        Self::Unhealthy(reason.into())
    }

    /// `Healthy` for `Ok`, `Unhealthy` with the error's `Display` (and its sources) for `Err`:
    /// lets a check end with `CheckOutcome::from_result(client.ping().await)`.
    pub fn from_result<T, E: std::error::Error>(result: Result<T, E>) -> Self {
        match result {
            Ok(_) => Self::Healthy,
            Err(err) => {
                let mut reason = err.to_string();
                let mut source = err.source();
                while let Some(cause) = source {
                    reason.push_str(": ");
                    reason.push_str(&cause.to_string());
                    source = cause.source();
                }
                Self::Unhealthy(reason)
            }
        }
    }

    /// `true` for [`CheckOutcome::Unhealthy`].
    pub fn is_unhealthy(&self) -> bool {
        matches!(self, Self::Unhealthy(_))
    }
}

/// A named dependency check run by [`HealthRegistry`](super::HealthRegistry) on each `/health`
/// and `/health/ready` request.
///
/// Implement it for a type that holds a client (a Redis connection, a database pool) or build one
/// from a closure with [`check_fn`]. The registry applies the timeout and measures latency, so an
/// implementation only does the probe.
///
/// ```
/// use welcomedly_core::health::{CheckFuture, CheckOutcome, HealthCheck};
///
/// struct Disk;
///
/// impl HealthCheck for Disk {
///     fn check(&self) -> CheckFuture<'_> {
///         Box::pin(async {
///             match std::env::temp_dir().try_exists() {
///                 Ok(true) => CheckOutcome::Healthy,
///                 Ok(false) => CheckOutcome::unhealthy("temp dir is missing"),
///                 Err(err) => CheckOutcome::unhealthy(err.to_string()),
///             }
///         })
///     }
/// }
/// ```
pub trait HealthCheck: Send + Sync + 'static {
    /// Probe the dependency once.
    fn check(&self) -> CheckFuture<'_>;
}

/// A [`HealthCheck`] made from a closure returning a future; see [`check_fn`].
#[derive(Clone)]
pub struct FnCheck<F> {
    f: F,
}

impl<F> fmt::Debug for FnCheck<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnCheck").finish_non_exhaustive()
    }
}

/// A [`HealthCheck`] from a closure that returns a future of [`CheckOutcome`].
///
/// ```
/// use welcomedly_core::health::{check_fn, CheckOutcome};
///
/// let check = check_fn(|| async { CheckOutcome::Healthy });
/// # let _ = check;
/// ```
pub fn check_fn<F, Fut>(f: F) -> FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CheckOutcome> + Send + 'static,
{
    FnCheck { f }
}

impl<F, Fut> HealthCheck for FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CheckOutcome> + Send + 'static,
{
    fn check(&self) -> CheckFuture<'_> {
        Box::pin((self.f)())
    }
}

impl<T: HealthCheck + ?Sized> HealthCheck for std::sync::Arc<T> {
    fn check(&self) -> CheckFuture<'_> {
        (**self).check()
    }
}

impl<T: HealthCheck + ?Sized> HealthCheck for Box<T> {
    fn check(&self) -> CheckFuture<'_> {
        (**self).check()
    }
}
