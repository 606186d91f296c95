//! The drain phases, the [`DrainSignal`] handlers await, and the process's [`shutdown_signal`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

/// Where a draining server is, in order: a later phase implies the earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DrainPhase {
    /// No shutdown signal yet.
    Serving,
    /// The signal arrived: readiness answers 503, connections are still accepted (grace period).
    Draining,
    /// The grace period is over: no new connections; in-flight requests and open streams are
    /// finishing, bounded by the deadline.
    Closing,
    /// The deadline passed: responses still in flight are cut.
    Deadline,
}

/// State shared by [`Drain`](super::Drain), its layer and every [`DrainSignal`].
#[derive(Debug)]
pub(super) struct Shared {
    phase: watch::Sender<DrainPhase>,
    /// Set when draining starts; read by the layer on every response (cheaper than the watch).
    draining: AtomicBool,
    /// Set (before `cut_notify` fires) when the deadline passes; checked first by every body so
    /// one created after the notification is cut too.
    cut: AtomicBool,
    cut_notify: Arc<Notify>,
    in_flight: AtomicUsize,
}

impl Shared {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            phase: watch::Sender::new(DrainPhase::Serving),
            draining: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            cut_notify: Arc::new(Notify::new()),
            in_flight: AtomicUsize::new(0),
        })
    }

    pub(super) fn signal(&self) -> DrainSignal {
        DrainSignal {
            rx: self.phase.subscribe(),
        }
    }

    pub(super) fn enter(&self, phase: DrainPhase) {
        if phase >= DrainPhase::Draining {
            self.draining.store(true, Ordering::SeqCst);
        }
        if phase == DrainPhase::Deadline {
            self.cut.store(true, Ordering::SeqCst);
            self.cut_notify.notify_waiters();
        }
        self.phase.send_replace(phase);
    }

    pub(super) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(super) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// A future that completes when the deadline cuts responses; it observes a cut that happens
    /// any time after this call, even before it is first polled.
    pub(super) fn cut_notified(&self) -> tokio::sync::futures::OwnedNotified {
        Arc::clone(&self.cut_notify).notified_owned()
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// Counts one request in flight from the moment the layer sees it until its response body is
/// dropped (or the request is dropped unanswered).
#[derive(Debug)]
pub(super) struct InFlight(Arc<Shared>);

impl InFlight {
    pub(super) fn new(shared: &Arc<Shared>) -> Self {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(shared))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A cloneable view of the drain, for long-lived handlers (SSE streams, long polls, WebSocket
/// loops) that must end on their own when the instance shuts down.
///
/// Get one from [`Drain::signal`](super::Drain::signal), or in a handler behind the drain layer
/// from the request extensions (axum: `Extension<DrainSignal>`).
///
/// **Which moment to use.** A stream should end at [`closing`](Self::closing), the end of the grace
/// period: by then the load balancer has seen readiness fail and the server accepts no new
/// connection, so the client's reconnect (an `EventSource` reconnects by itself) lands on another
/// instance. Ending at [`draining`](Self::draining) instead would let the reconnect come back here
/// during the grace period. A stream still open at [`deadline`](Self::deadline) is cut with an
/// error by the drain layer anyway; ending it at `closing` is the clean way.
///
/// Every wait also resolves when the [`Drain`](super::Drain) and its layer are gone (the server
/// has stopped, so a stream has nothing left to wait for).
///
/// ```
/// use std::time::Duration;
/// use futures_util::StreamExt as _;
/// use welcomedly_core::drain::DrainSignal;
///
/// /// One tick a second until the server starts closing.
/// fn ticks(drain: DrainSignal) -> impl futures_util::Stream<Item = String> {
///     let ticks = futures_util::stream::unfold(0u64, |n| async move {
///         tokio::time::sleep(Duration::from_secs(1)).await;
///         Some((format!("data: {n}\n\n"), n + 1))
///     });
///     ticks.take_until(async move { drain.closing().await })
/// }
/// # let _ = ticks;
/// ```
#[derive(Debug, Clone)]
pub struct DrainSignal {
    rx: watch::Receiver<DrainPhase>,
}

impl DrainSignal {
    /// The current phase.
    pub fn phase(&self) -> DrainPhase {
        *self.rx.borrow()
    }

    /// Whether the shutdown signal has arrived (any phase after [`DrainPhase::Serving`]).
    pub fn is_draining(&self) -> bool {
        self.phase() >= DrainPhase::Draining
    }

    /// Resolves when the shutdown signal arrives (readiness turns 503).
    pub async fn draining(&self) {
        self.reached(DrainPhase::Draining).await;
    }

    /// Resolves when the grace period ends and the server stops accepting connections: the
    /// moment for a long-lived stream to end.
    pub async fn closing(&self) {
        self.reached(DrainPhase::Closing).await;
    }

    /// Resolves when the deadline passes and in-flight responses are cut.
    pub async fn deadline(&self) {
        self.reached(DrainPhase::Deadline).await;
    }

    async fn reached(&self, phase: DrainPhase) {
        let mut rx = self.rx.clone();
        // `Err` means the sender is gone: the server has stopped, so resolving is right.
        let _ = rx.wait_for(|current| *current >= phase).await;
    }
}

/// Resolves when the process receives SIGTERM (what an orchestrator sends) or SIGINT (Ctrl-C).
///
/// Pass it to [`serve`](super::serve) or [`Drain::run`](super::Drain::run); tests pass a future of
/// their own instead. When a signal handler cannot be installed, the error is logged and that
/// signal is ignored (the future never resolves because of it): a server must not shut down for
/// lack of a handler.
///
/// ```no_run
/// # #[tokio::main] async fn main() {
/// welcomedly_core::drain::shutdown_signal().await;
/// println!("shutting down");
/// # }
/// ```
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT; Ctrl-C will not drain the server");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                if stream.recv().await.is_none() {
                    // The signal driver is gone (runtime shutting down): no SIGTERM can come.
                    std::future::pending::<()>().await;
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM; the server will not drain on it");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
