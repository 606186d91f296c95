//! Drain: shut an instance down without losing a request, so a rolling restart behind a load
//! balancer is invisible to clients.
//!
//! When the shutdown signal arrives ([`shutdown_signal`]: SIGTERM or SIGINT; tests inject their own
//! future):
//!
//! 1. **at once** the [`HealthRegistry`](crate::health::HealthRegistry) starts draining:
//!    `/health/ready` answers 503 and `/health` says `"draining"`, while `/health/live` stays 200;
//! 2. **during [`grace`](DrainConfig::grace)** the server still accepts and serves, so requests the
//!    load balancer sends before it notices readiness failing are not refused;
//! 3. **then** it stops accepting connections, closes idle keep-alive connections and lets
//!    in-flight requests finish; long-lived handlers see [`DrainSignal::closing`] and should end
//!    their streams;
//! 4. **at [`deadline`](DrainConfig::deadline) after the grace period** whatever is still running
//!    is cut by the [`DrainLayer`] (a pending request gets a 503, a streaming body ends with
//!    [`DeadlineExceeded`]), so an open SSE stream can never hold shutdown forever;
//! 5. [`serve`] / [`Drain::run`] return `Ok(())`, and `main` exits 0.
//!
//! Each phase is logged at info level with the number of requests still in flight.
//!
#![cfg_attr(feature = "axum", doc = "```no_run")]
#![cfg_attr(not(feature = "axum"), doc = "```ignore")]
//! // The whole `main` of a service (with the `axum` feature).
//! use axum::{routing::get, Router};
//! use welcomedly_core::drain::{self, DrainConfig};
//! use welcomedly_core::health::{self, HealthRegistry};
//! use welcomedly_core::CoreConfig;
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let config = CoreConfig::default();
//!     let registry = HealthRegistry::from_config(&config);
//!     let app = Router::new()
//!         .route("/api/ping", get(|| async { "pong" }))
//!         .merge(health::router(registry.clone()));
//!     let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.port)).await?;
//!     drain::serve(listener, app, registry, DrainConfig::from(&config), drain::shutdown_signal())
//!         .await
//! }
//! ```
//!
//! Handlers that hold a response open (SSE, long polling) take a [`DrainSignal`], from
//! [`Drain::signal`] or from the request extensions (`Extension<DrainSignal>` in axum), and end
//! their stream at [`DrainSignal::closing`].

mod layer;
mod run;
mod signal;

use std::time::Duration;

use crate::CoreConfig;

pub use layer::{DeadlineExceeded, DrainBody, DrainLayer, DrainService, ResponseFuture};
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use run::serve;
pub use run::{Drain, StopAccepting};
pub use signal::{DrainPhase, DrainSignal, shutdown_signal};

/// How long each drain phase may last.
///
/// ```
/// use std::time::Duration;
/// use welcomedly_core::drain::DrainConfig;
///
/// let config = DrainConfig::default();
/// assert_eq!(config.grace, Duration::from_secs(5));
/// assert_eq!(config.deadline, Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainConfig {
    /// After the signal, how long the server keeps accepting while readiness already answers 503,
    /// so the load balancer notices before connections are refused. Make it longer than the load
    /// balancer's health-check interval times its failure threshold. Default 5 s.
    pub grace: Duration,
    /// After the grace period, how long in-flight requests and open streams may take before they
    /// are cut. Default 30 s.
    pub deadline: Duration,
}

impl DrainConfig {
    /// A config with this grace period and deadline.
    pub fn new(grace: Duration, deadline: Duration) -> Self {
        Self { grace, deadline }
    }
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self::new(Duration::from_secs(5), Duration::from_secs(30))
    }
}

impl From<&CoreConfig> for DrainConfig {
    /// `drain_grace` and `drain_deadline` of the core config.
    fn from(config: &CoreConfig) -> Self {
        Self::new(config.drain_grace, config.drain_deadline)
    }
}
