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
//! # The hard open-file limit; the server raises its soft limit to it at start.
//! LimitNOFILE=65536
//! ```
//!
//! **Slow and numerous clients.** The server of [`serve`] also closes a connection that does not
//! send its first request head within a timeout, and a keep-alive connection idle past another
//! (longer than the load balancer's), caps the connections open in all and per client address
//! (a clean 503 for the excess; the load balancer's network exempt), raises the soft open-file
//! limit at start and logs accept errors at most once per 10 s: see [`DrainConfig`], and
//! [`Drain::register_metrics`] for the counts.
//!
//! Handlers that hold a response open (SSE, long polling) take a [`DrainSignal`], from
//! [`Drain::signal`] or from the request extensions (`Extension<DrainSignal>` in axum), and end
//! their stream at [`DrainSignal::closing`].

#[cfg(feature = "axum")]
mod accept;
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
mod accept_errors;
mod layer;
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
mod limits;
mod listen;
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
mod nofile;
mod run;
mod signal;

use std::num::NonZeroUsize;
use std::time::Duration;

use crate::CoreConfig;
use crate::client_ip::TrustedProxies;

pub use layer::{DeadlineExceeded, DrainBody, DrainLayer, DrainService, ResponseFuture};
pub use listen::ListenConfig;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use run::serve;
pub use run::{Drain, StopAccepting};
pub use signal::{DrainPhase, DrainSignal, shutdown_signal};

/// How long each drain phase may last, and how the accept loop of [`serve`] / [`Drain::serve`]
/// guards against slow and numerous clients.
///
/// ```
/// use std::time::Duration;
/// use welcomedly_core::drain::DrainConfig;
///
/// let config = DrainConfig::default();
/// assert_eq!(config.grace, Duration::from_secs(5));
/// assert_eq!(config.deadline, Duration::from_secs(30));
/// assert_eq!(config.header_read_timeout, Duration::from_secs(10));
/// assert_eq!(config.idle_timeout, Duration::from_secs(75));
/// assert_eq!(config.max_connections.get(), 10_000);
/// assert_eq!(config.max_connections_per_client.get(), 256);
/// assert!(config.per_client_exempt.is_empty());
/// ```
///
/// **Timeouts and the load balancer.** A connection must send the head of its first request
/// within [`header_read_timeout`](Self::header_read_timeout) of being accepted, and a keep-alive
/// connection must send the head of its next request within
/// [`idle_timeout`](Self::idle_timeout) of the previous response, or it is closed. A response
/// (an event stream included) is never cut by either. Keep `idle_timeout` *longer* than the
/// idle timeout of the load balancer's upstream connections (NGINX's `keepalive_timeout` in the
/// `upstream` block, 60 s by default; an AWS ALB's idle timeout, 60 s by default): the proxy then
/// always closes an idle connection first. The other way round, the proxy can send a request on
/// a connection at the moment this server closes it, and NGINX never retries a POST it has sent.
///
/// **Vanished clients.** A client that disappears without closing its connection (power cut,
/// network gone) sends nothing more, so no timeout above notices it while a response streams.
/// Every accepted connection has TCP keep-alive (a probe after 20 s of silence, every 5 s, closed
/// after 2 unanswered) and, on Linux, `TCP_USER_TIMEOUT` of 30 s (written data unacknowledged
/// that long closes it): its event stream ends and its place under the caps is freed within
/// about 30 s, not after the kernel's ≈ 15 minutes of retransmissions.
///
/// **Caps.** At most [`max_connections`](Self::max_connections) are open at once, and at most
/// [`max_connections_per_client`](Self::max_connections_per_client) from one client address (an
/// IPv4 address, or an IPv6 /64). The excess is accepted and answered at once with a 503
/// (`Retry-After: 1`, `Connection: close`) without reading the request. A load balancer's
/// address carries many clients: list it in [`per_client_exempt`](Self::per_client_exempt)
/// (`From<&CoreConfig>` takes `TRUSTED_PROXIES`), nothing is detected. At start the soft
/// open-file limit (`RLIMIT_NOFILE`) is raised to the hard limit, and the global cap is lowered,
/// with a warning, to leave 256 descriptors of it to the rest of the process.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainConfig {
    /// After the signal, how long the server keeps accepting while readiness already answers 503,
    /// so the load balancer notices before connections are refused. Make it longer than the load
    /// balancer's health-check interval times its failure threshold. Default 5 s.
    pub grace: Duration,
    /// After the grace period, how long in-flight requests and open streams may take before they
    /// are cut. Default 30 s.
    pub deadline: Duration,
    /// How long a new connection may take to send its first request's head (request line and
    /// headers) before it is closed without an answer. Behind a load balancer the proxy sends at
    /// once; a browser that preconnects sends within seconds. Default 10 s.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may stay idle after a response (including the time to
    /// receive the next request's head) before it is closed. Keep it longer than the load
    /// balancer's upstream idle timeout (see above). Default 75 s (NGINX and AWS ALB: 60 s).
    pub idle_timeout: Duration,
    /// The most connections open at once; the excess is refused with a 503. Lowered at start to
    /// fit under the open-file limit. Default 10 000.
    pub max_connections: NonZeroUsize,
    /// The most connections open at once from one client address (IPv4 address or IPv6 /64)
    /// outside [`per_client_exempt`](Self::per_client_exempt). A NAT (an office) shares one
    /// address; a browser holds up to 6 connections per origin. Default 256.
    pub max_connections_per_client: NonZeroUsize,
    /// Peer networks the per-client cap does not apply to: the load balancers in front of this
    /// server, whose address carries many clients. They still count against
    /// [`max_connections`](Self::max_connections). Default none; `From<&CoreConfig>` takes
    /// `trusted_proxies` (`TRUSTED_PROXIES`).
    pub per_client_exempt: TrustedProxies,
}

impl DrainConfig {
    /// A config with this grace period and deadline, the other settings at their defaults.
    pub fn new(grace: Duration, deadline: Duration) -> Self {
        Self {
            grace,
            deadline,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            per_client_exempt: TrustedProxies::none(),
        }
    }
}

/// [`DrainConfig::header_read_timeout`]'s default.
pub(crate) const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// [`DrainConfig::idle_timeout`]'s default.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// [`DrainConfig::max_connections`]' default.
pub(crate) const DEFAULT_MAX_CONNECTIONS: NonZeroUsize = NonZeroUsize::MIN.saturating_add(9_999);
/// [`DrainConfig::max_connections_per_client`]'s default.
pub(crate) const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: NonZeroUsize =
    NonZeroUsize::MIN.saturating_add(255);

impl Default for DrainConfig {
    fn default() -> Self {
        Self::new(Duration::from_secs(5), Duration::from_secs(30))
    }
}

impl From<&CoreConfig> for DrainConfig {
    /// The drain and connection settings of the core config; its `trusted_proxies` are exempt
    /// from the per-client cap.
    fn from(config: &CoreConfig) -> Self {
        Self {
            grace: config.drain_grace,
            deadline: config.drain_deadline,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            max_connections: config.max_connections,
            max_connections_per_client: config.max_connections_per_client,
            per_client_exempt: config.trusted_proxies.clone(),
        }
    }
}
