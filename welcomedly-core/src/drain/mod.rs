//! Drain: shut an instance down without losing a request, so a rolling restart behind a load
//! balancer is invisible to clients.
//!
//! When the shutdown signal arrives ([`shutdown_signal`]: SIGTERM or SIGINT; tests inject their own
//! future):
//!
//! 1. **at once** the [`HealthRegistry`](crate::health::HealthRegistry) starts draining:
//!    `/health/ready` answers 503 and `/health` says `"draining"`, while `/health/live` stays 200;
//!    every HTTP/1 response from now on carries `Connection: close`, so keep-alive clients (a load
//!    balancer's upstream pool) open their next connection elsewhere instead of reusing one this
//!    instance is about to close;
//! 2. **during [`grace`](DrainConfig::grace)** the server still accepts and serves, so requests the
//!    load balancer sends before it notices readiness failing are not refused;
//! 3. **then** it accepts what is already in the kernel's accept queue and closes the listener
//!    (new connections are refused, which a load balancer retries elsewhere even for a POST),
//!    waits for the first request of connections that have not sent one yet, closes idle
//!    keep-alive connections and lets in-flight requests finish; long-lived handlers see
//!    [`DrainSignal::closing`] and should end their streams;
//! 4. **at [`deadline`](DrainConfig::deadline) after the grace period** whatever is still running
//!    is cut by the [`DrainLayer`] (a pending request gets a 503, a streaming body ends with
//!    [`DeadlineExceeded`]), so an open SSE stream can never hold shutdown forever;
//! 5. [`serve`] / [`Drain::run`] return `Ok(())`, and `main` exits 0.
//!
//! Each phase is logged at info level with the number of requests still in flight.
//!
//! **What can still be lost**, and how to lose nothing. Closing a listener resets the
//! connections the kernel queued on it after the last `accept`; [`serve`] closes it right after
//! an `accept` that found the queue empty, so only a connection whose handshake completes in
//! those few microseconds is reset. A keep-alive connection idle for the whole grace period is
//! closed when the grace period ends, and a client that picks it at that instant sees it close.
//! Neither happens when the listening socket outlives the process: run under systemd socket
//! activation (a `.socket` unit with `ListenStream=`, or any supervisor that holds the socket
//! and passes it as fd 3 with `LISTEN_FDS=1`), and [`ListenConfig::listen`] takes that socket;
//! connections that arrive while one process drains and the next starts wait in the queue.
//! Without a supervisor, [`ListenConfig::reuse_port`] lets the new process listen on the port
//! before the old one is told to stop; Linux hands the old listener's queue over on `close` when
//! `net.ipv4.tcp_migrate_req = 1`, and resets it otherwise.
//!
#![cfg_attr(feature = "axum", doc = "```no_run")]
#![cfg_attr(not(feature = "axum"), doc = "```ignore")]
//! // The whole `main` of a service (with the `axum` feature).
//! use axum::{routing::get, Router};
//! use welcomedly_core::drain::{self, DrainConfig, ListenConfig};
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
//!     // The socket systemd passed (LISTEN_FDS), or 0.0.0.0:<PORT>.
//!     let listener = ListenConfig::from(&config).listen()?;
//!     drain::serve(listener, app, registry, DrainConfig::from(&config), drain::shutdown_signal())
//!         .await
//! }
//! ```
//!
//! The systemd units for it (`systemctl restart call-center` then keeps the socket and its
//! queue; `Restart=always` restarts it after it drains):
//!
//! ```ini
//! # call-center.socket
//! [Socket]
//! ListenStream=3000
//! Backlog=1024
//!
//! # call-center.service
//! [Service]
//! ExecStart=/usr/local/bin/call-center
//! KillSignal=SIGTERM
//! TimeoutStopSec=40
//! ```
//!
//! Handlers that hold a response open (SSE, long polling) take a [`DrainSignal`], from
//! [`Drain::signal`] or from the request extensions (`Extension<DrainSignal>` in axum), and end
//! their stream at [`DrainSignal::closing`].

#[cfg(feature = "axum")]
mod accept;
mod layer;
mod listen;
mod run;
mod signal;

use std::time::Duration;

use crate::CoreConfig;

pub use layer::{DeadlineExceeded, DrainBody, DrainLayer, DrainService, ResponseFuture};
pub use listen::ListenConfig;
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
