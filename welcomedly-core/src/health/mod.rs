//! Health: a registry of named async checks and the `/health`, `/health/live` and
//! `/health/ready` endpoints a load balancer and an orchestrator poll.
//!
//! - A [`HealthCheck`] probes one dependency (Redis, the database primary, one replica, …) and
//!   answers [`CheckOutcome::Healthy`], [`Degraded`](CheckOutcome::Degraded) (working but
//!   impaired: never fails readiness) or [`Unhealthy`](CheckOutcome::Unhealthy). Implement the
//!   trait, or wrap a closure with [`check_fn`].
//! - A [`HealthRegistry`] holds the checks, each registered as affecting readiness
//!   ([`Affects::Readiness`]) or not ([`Affects::Nothing`]), with a per-check timeout. Its
//!   [`report`](HealthRegistry::report) runs them concurrently and measures each one's latency.
//! - Single flight: concurrent calls share one run of the checks instead of each starting their
//!   own, so hammering `/health` cannot multiply the load on Redis or the database. `/health` and
//!   `/health/ready` have a run each (readiness runs only the readiness checks); a call after a
//!   run has finished starts a new one (nothing is cached), and the run survives the caller that
//!   started it being dropped. Draining is read at call time: readiness turns 503 at once, also
//!   for the calls waiting on a run.
//! - A check that panics is reported unhealthy (`"the check panicked: <message>"`) and the rest
//!   of the report and the HTTP answer are unaffected; a check that outlives its timeout is
//!   reported unhealthy too (`"timed out after <n> ms"`).
//! - [`HealthService`] (tower) and, with the `axum` feature, [`router`] serve the endpoints:
//!
//! | path | runs | answers |
//! |---|---|---|
//! | `GET /health` | every check | [`HealthReport`] JSON; 200 when ready, else 503 |
//! | `GET /health/live` | nothing | 200 `{"status":"ok"}` while the process runs |
//! | `GET /health/ready` | readiness checks (none while draining) | [`ReadinessReport`] JSON; 200 or 503 |
//!
//! Ready means: not draining (see [`drain`](crate::drain)), and no readiness check unhealthy.
//! Liveness never depends on a dependency: a Redis outage must not make an orchestrator restart
//! every instance at once.
//!
//! ```
//! use std::time::Duration;
//! use welcomedly_core::health::{check_fn, Affects, CheckOutcome, HealthRegistry, Status};
//! use welcomedly_core::InstanceId;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let registry = HealthRegistry::new(InstanceId::new("api-1"), "1.0.0", Duration::from_secs(2));
//! registry.register(
//!     "redis",
//!     check_fn(|| async { CheckOutcome::degraded("rate limiter on local fallback") }),
//!     Affects::Readiness,
//! );
//!
//! let report = registry.report().await;
//! assert_eq!(report.status(), Status::Degraded);
//! assert!(report.is_ready()); // degraded still serves
//!
//! registry.start_draining();
//! assert_eq!(registry.readiness().await.status(), Status::Draining);
//! # }
//! ```

mod check;
mod flight;
mod registry;
mod report;
#[cfg(feature = "axum")]
mod router;
mod service;

pub use check::{CheckFuture, CheckOutcome, FnCheck, HealthCheck, check_fn};
pub use registry::{Affects, HealthRegistry};
pub use report::{CheckReport, CheckStatus, HealthReport, ReadinessReport, Status};
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use router::router;
pub use service::{HEALTH_PATH, HealthService, LIVE_PATH, READY_PATH, ResponseFuture};
