//! [`Drain`]: drives a server through the drain phases; [`serve`] does it for axum.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use super::limits::ConnStats;
use super::signal::Shared;
use super::{DrainConfig, DrainLayer, DrainPhase, DrainSignal};
use crate::health::HealthRegistry;

/// After the deadline cuts what is left, how long the server may take to write the cut and close
/// those connections before [`Drain::run`] returns anyway (a client that stopped reading can hold
/// a connection; it must not hold the process).
pub(super) const AFTER_CUT: Duration = Duration::from_secs(1);

/// Resolves when the server must stop accepting connections (the grace period is over); given to
/// the server by [`Drain::run`].
pub struct StopAccepting {
    // Boxed once per server: it is the signal future of axum's (or hyper-util's) graceful
    // shutdown, which must be `Send + 'static` and nameable here.
    inner: Pin<Box<dyn Future<Output = ()> + Send + 'static>>,
}

impl fmt::Debug for StopAccepting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopAccepting").finish_non_exhaustive()
    }
}

impl Future for StopAccepting {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

/// Graceful shutdown of one server: readiness off at once, accept during the grace period, let
/// in-flight requests finish, cut what is left at the deadline.
///
/// Create it before building the application so handlers can get a [`DrainSignal`]; run the
/// server with [`Drain::serve`] (axum) or [`Drain::run`] (any server with a graceful-shutdown
/// future, such as hyper-util's). See the [module docs](super) for the timeline.
pub struct Drain {
    registry: HealthRegistry,
    config: DrainConfig,
    shared: Arc<Shared>,
    connections: Arc<ConnStats>,
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("config", &self.config)
            .field("phase", &self.signal().phase())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl Drain {
    /// A drain that flips `registry` to draining when the shutdown signal arrives.
    pub fn new(registry: HealthRegistry, config: DrainConfig) -> Self {
        Self {
            registry,
            config,
            shared: Shared::new(),
            connections: Arc::default(),
        }
    }

    /// A handle long-lived handlers await to end their streams (see [`DrainSignal`]).
    pub fn signal(&self) -> DrainSignal {
        self.shared.signal()
    }

    /// The layer that counts in-flight requests, gives handlers a [`DrainSignal`] and cuts what
    /// is left at the deadline. Apply it to the whole application so it sees every request
    /// (in axum `Router::layer`, which also covers the fallback); [`Drain::serve`] applies it
    /// itself.
    pub fn layer(&self) -> DrainLayer {
        DrainLayer::new(Arc::clone(&self.shared))
    }

    /// Requests seen by the layer whose response body has not been dropped yet.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// Connections [`Drain::serve`] has open now (admitted under the caps, not closed yet).
    pub fn connections_open(&self) -> usize {
        self.connections.open.load(Ordering::Relaxed)
    }

    /// Report the connections of [`Drain::serve`] through `meter`:
    /// `welcomedly.connections.open` (gauge), `welcomedly.connections.refused` (counter, by
    /// `reason`: `global` or `per_client` cap) and `welcomedly.connections.timed_out` (counter, by
    /// `phase`: `first_request` for a head not sent within the header-read timeout, `idle` for a
    /// keep-alive connection idle past the idle timeout).
    ///
    /// ```
    /// use welcomedly_core::drain::{Drain, DrainConfig};
    /// use welcomedly_core::health::HealthRegistry;
    /// use welcomedly_core::telemetry::Metrics;
    /// use welcomedly_core::InstanceId;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let registry = HealthRegistry::new(InstanceId::new("a"), "1", std::time::Duration::from_secs(2));
    /// let drain = Drain::new(registry, DrainConfig::default());
    /// let metrics = Metrics::new()?;
    /// drain.register_metrics(metrics.meter());
    /// assert!(metrics.encode()?.contains("welcomedly_connections_open"));
    /// # Ok(()) }
    /// ```
    pub fn register_metrics(&self, meter: &Meter) {
        let weak = Arc::downgrade(&self.connections);
        let _open = meter
            .u64_observable_gauge("welcomedly.connections.open")
            .with_description("HTTP connections open now")
            .with_callback(move |o| {
                if let Some(stats) = weak.upgrade() {
                    let open = stats.open.load(Ordering::Relaxed);
                    o.observe(u64::try_from(open).unwrap_or(u64::MAX), &[]);
                }
            })
            .build();
        let weak = Arc::downgrade(&self.connections);
        let _refused = meter
            .u64_observable_counter("welcomedly.connections.refused")
            .with_description("HTTP connections refused with a 503 over a cap, by cap")
            .with_callback(move |o| {
                if let Some(stats) = weak.upgrade() {
                    let global = stats.refused_global.load(Ordering::Relaxed);
                    let per_client = stats.refused_per_client.load(Ordering::Relaxed);
                    o.observe(global, &[KeyValue::new("reason", "global")]);
                    o.observe(per_client, &[KeyValue::new("reason", "per_client")]);
                }
            })
            .build();
        let weak = Arc::downgrade(&self.connections);
        let _timed_out = meter
            .u64_observable_counter("welcomedly.connections.timed_out")
            .with_description(
                "HTTP connections closed for sending no request head in time, by phase",
            )
            .with_callback(move |o| {
                if let Some(stats) = weak.upgrade() {
                    let first = stats.first_request_timeouts.load(Ordering::Relaxed);
                    let idle = stats.idle_timeouts.load(Ordering::Relaxed);
                    o.observe(first, &[KeyValue::new("phase", "first_request")]);
                    o.observe(idle, &[KeyValue::new("phase", "idle")]);
                }
            })
            .build();
    }

    /// Run `server` until `shutdown` resolves, then drain it.
    ///
    /// `server` receives a [`StopAccepting`] future to use as its graceful-shutdown signal: it
    /// resolves when the grace period ends, and the server must then stop accepting, finish its
    /// connections and resolve. Returns the server's own result if it stops before the signal,
    /// `Ok(())` after a drain (also when the deadline had to cut responses).
    ///
    /// A server of your own gets the layer's `Connection: close` during the grace period, but
    /// not what [`serve`] does when accepting stops (empty the accept queue before closing the
    /// listener, wait for the first request of a connection that has not sent one): without
    /// those, a POST sent at that moment can be reset. Nor does it get the header-read and idle
    /// timeouts or the connection caps of [`DrainConfig`]: those are [`serve`]'s.
    ///
    /// ```
    /// use std::time::Duration;
    /// use welcomedly_core::drain::{Drain, DrainConfig};
    /// use welcomedly_core::health::HealthRegistry;
    /// use welcomedly_core::InstanceId;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
    /// let registry = HealthRegistry::new(InstanceId::new("a"), "1", Duration::from_secs(2));
    /// let drain = Drain::new(registry.clone(), DrainConfig::new(Duration::ZERO, Duration::from_secs(1)));
    /// // A stand-in server: stops as soon as it is told to.
    /// drain
    ///     .run(async {}, |stop_accepting| async move {
    ///         stop_accepting.await;
    ///         Ok(())
    ///     })
    ///     .await?;
    /// assert!(registry.is_draining());
    /// # Ok(()) }
    /// ```
    pub async fn run<F, Fut>(self, shutdown: impl Future<Output = ()>, server: F) -> io::Result<()>
    where
        F: FnOnce(StopAccepting) -> Fut,
        Fut: Future<Output = io::Result<()>>,
    {
        let stop = {
            let signal = self.signal();
            StopAccepting {
                inner: Box::pin(async move { signal.closing().await }),
            }
        };
        let mut server = pin!(server(stop));
        let (grace, deadline) = (self.config.grace, self.config.deadline);

        tokio::select! {
            result = &mut server => {
                tracing::info!("server stopped before any shutdown signal");
                return result;
            }
            () = shutdown => {}
        }

        self.registry.start_draining();
        self.shared.enter(DrainPhase::Draining);
        tracing::info!(
            grace_ms = millis(grace),
            in_flight = self.in_flight(),
            "draining started: readiness answers 503, still accepting connections during the grace period"
        );

        tokio::select! {
            result = &mut server => {
                tracing::info!("server stopped during the grace period");
                return result;
            }
            () = tokio::time::sleep(grace) => {}
        }

        self.shared.enter(DrainPhase::Closing);
        tracing::info!(
            deadline_ms = millis(deadline),
            in_flight = self.in_flight(),
            "grace period over: no new connections, waiting for in-flight requests"
        );

        if let Ok(result) = tokio::time::timeout(deadline, &mut server).await {
            tracing::info!("all connections closed");
            return result;
        }

        let cut = self.in_flight();
        self.shared.enter(DrainPhase::Deadline);
        tracing::info!(
            in_flight = cut,
            "drain deadline hit: cutting the requests and streams still open"
        );
        match tokio::time::timeout(AFTER_CUT, &mut server).await {
            Ok(_) => tracing::info!("all connections closed after the cut"),
            Err(_) => tracing::info!(
                in_flight = self.in_flight(),
                "connections still open after the cut; stopping anyway"
            ),
        }
        Ok(())
    }

    /// Serve `app` on `listener` until `shutdown` resolves, then drain (see [`serve`]).
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        app: axum::Router,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let layer = self.layer();
        let signal = self.signal();
        let config = self.config.clone();
        let connections = Arc::clone(&self.connections);
        // The accept loop follows the phases itself (it must empty the accept queue before the
        // listener closes), so it watches the signal rather than `StopAccepting`.
        self.run(shutdown, |_stop_accepting| async move {
            super::accept::serve(listener, app, layer, signal, &config, connections).await
        })
        .await
    }
}

/// Serve `app` on `listener` until `shutdown` resolves, then drain: readiness off at once, keep
/// accepting for `config.grace`, stop accepting and let in-flight requests finish for up to
/// `config.deadline`, cut what is left, return `Ok(())`.
///
/// The app gets the drain layer (so handlers can take an `Extension<DrainSignal>`) and
/// `ConnectInfo<SocketAddr>` (so the client-IP layer can read the peer). Use [`Drain::serve`]
/// instead when handlers need the [`DrainSignal`] before the server starts.
///
/// The server speaks HTTP/1.1 (what load balancers speak to their upstreams; upgrades such as
/// WebSocket work). When the grace period ends it accepts what the kernel has already queued
/// before closing the listener, and serves the first request of connections that have not sent
/// it yet, instead of resetting them (see the [module docs](super) for what remains).
///
/// ```no_run
/// use axum::{routing::get, Router};
/// use welcomedly_core::drain::{self, DrainConfig, ListenConfig};
/// use welcomedly_core::health::{self, HealthRegistry};
/// use welcomedly_core::CoreConfig;
///
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let config = CoreConfig::default();
/// let registry = HealthRegistry::from_config(&config);
/// let app = Router::new()
///     .route("/api/ping", get(|| async { "pong" }))
///     .merge(health::router(registry.clone()));
/// let listener = ListenConfig::from(&config).listen()?;
/// drain::serve(listener, app, registry, DrainConfig::from(&config), drain::shutdown_signal()).await
/// # }
/// ```
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    registry: HealthRegistry,
    config: DrainConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    Drain::new(registry, config)
        .serve(listener, app, shutdown)
        .await
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {

    use tokio::time::Instant;

    use super::*;
    use crate::InstanceId;

    fn setup(grace_ms: u64, deadline_ms: u64) -> (HealthRegistry, Drain) {
        let registry = HealthRegistry::new(InstanceId::new("t"), "0", Duration::from_secs(1));
        let config = DrainConfig::new(
            Duration::from_millis(grace_ms),
            Duration::from_millis(deadline_ms),
        );
        (registry.clone(), Drain::new(registry, config))
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_flips_at_the_signal_and_accepting_stops_after_grace() {
        let (registry, drain) = setup(5_000, 30_000);
        let signal = drain.signal();
        let (fire, fired) = tokio::sync::oneshot::channel::<()>();
        let start = Instant::now();
        let watcher = {
            let registry = registry.clone();
            let signal = signal.clone();
            tokio::spawn(async move {
                signal.draining().await;
                let draining_at = start.elapsed();
                assert!(
                    registry.is_draining(),
                    "readiness must be off when draining starts"
                );
                signal.closing().await;
                (draining_at, start.elapsed())
            })
        };
        let run = tokio::spawn(drain.run(
            async move {
                let _ = fired.await;
            },
            |stop| async move {
                stop.await;
                // In-flight requests take 2 s to finish after accepting stops.
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok(())
            },
        ));

        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!registry.is_draining(), "nothing happens before the signal");
        fire.send(()).unwrap();

        let (draining_at, closing_at) = watcher.await.unwrap();
        assert_eq!(draining_at, Duration::from_secs(10));
        assert_eq!(closing_at, Duration::from_secs(15));
        run.await.unwrap().unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(17));
        assert_eq!(
            signal.phase(),
            DrainPhase::Closing,
            "finished before the deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_never_finishes_is_abandoned_after_deadline_and_cut() {
        let (_, drain) = setup(100, 300);
        let signal = drain.signal();
        let start = Instant::now();
        drain
            .run(async {}, |_stop| std::future::pending::<io::Result<()>>())
            .await
            .unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(400) + AFTER_CUT,
            "grace + deadline + the bounded wait after the cut"
        );
        assert_eq!(signal.phase(), DrainPhase::Deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_error_before_the_signal_is_returned() {
        let (registry, drain) = setup(100, 300);
        let err = drain
            .run(std::future::pending(), |_stop| async {
                Err(io::Error::other("accept failed"))
            })
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "accept failed");
        assert!(!registry.is_draining());
    }
}
