//! The HTTP/1 server behind [`serve`](super::serve): an accept loop and per-connection tasks that
//! follow the drain phases so that no request already sent to this instance is lost.
//!
//! Why not `axum::serve(..).with_graceful_shutdown(..)`: at its signal it stops accepting and
//! calls hyper's `graceful_shutdown` on every connection. hyper closes at once a connection it
//! has read nothing from yet (and one idle between requests), even when the client's request is
//! already in the socket buffer, so a connection accepted in the last moments of the grace period
//! is reset with its request unread; and the connections still in the kernel's accept queue are
//! reset when the listener is dropped. A load balancer retries neither for a POST.
//!
//! Here, at the end of the grace period:
//! 1. the accept queue is emptied with non-blocking `accept` calls until `EAGAIN`, and the
//!    listener is closed right after the last one, so the only connections the kernel can still
//!    reset are those whose handshake completes between that `accept` and `close` (measured
//!    under load on 2 cores, debug build: 7–18 µs, 1.3 ms once when the thread was preempted).
//!    Closing this process's descriptor of an inherited socket resets nothing: systemd (or the
//!    supervisor) holds another, and the queue waits for the next process;
//! 2. a connection that has not sent a request yet is given [`FIRST_REQUEST_WAIT`] for it (the
//!    connection was opened to send one) before being shut down;
//! 3. a connection that has served a request is shut down gracefully: one busy finishes its
//!    response and closes; one idle is closed. Every response since the signal carried
//!    `Connection: close` (see the drain layer), so an idle one has been idle for the whole grace
//!    period: its client did not pick it for as long, the one remaining (narrow) race on a
//!    keep-alive connection.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::DrainSignal;
use super::run::AFTER_CUT;

/// At the end of the grace period, how long a connection that has not sent its first request
/// yet may take to send it (it is served, with `Connection: close`) before it is closed.
const FIRST_REQUEST_WAIT: Duration = Duration::from_secs(1);

/// After an accept error other than a connection's own (such as `EMFILE`), how long to wait
/// before accepting again, so a full file table does not spin the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serve `app` on `listener` through the drain phases seen by `signal`; resolves when every
/// connection is closed (or, after the deadline, when [`AFTER_CUT`] has passed as well).
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    signal: DrainSignal,
) -> io::Result<()> {
    // Finalises the routes once, not on every request.
    let app = app.with_state(());
    // Every connection task holds a receiver; `closed()` resolves when the last one is gone.
    let (alive, alive_rx) = watch::channel(());
    let spawn = |stream: TcpStream, peer: SocketAddr| {
        tokio::spawn(connection(
            stream,
            peer,
            app.clone(),
            signal.clone(),
            alive_rx.clone(),
        ));
    };

    let mut closing = pin!(signal.closing());
    loop {
        tokio::select! {
            biased;
            () = &mut closing => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => spawn(stream, peer),
                Err(err) if is_connection_error(&err) => {}
                Err(err) => {
                    tracing::error!(error = %err, "accept failed; retrying shortly");
                    tokio::select! {
                        () = &mut closing => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            },
        }
    }

    let (queued, closed_after) = drain_accept_queue(listener)?;
    tracing::info!(
        queued = queued.len(),
        close_after_last_accept_ns = u64::try_from(closed_after.as_nanos()).unwrap_or(u64::MAX),
        "accept queue emptied and listener closed"
    );
    for (stream, peer) in queued {
        if let Err(err) = stream.set_nonblocking(true) {
            tracing::warn!(error = %err, %peer, "dropping a queued connection that cannot be made non-blocking");
            continue;
        }
        match TcpStream::from_std(stream) {
            Ok(stream) => spawn(stream, peer),
            Err(err) => {
                tracing::warn!(error = %err, %peer, "dropping a queued connection the runtime cannot register");
            }
        }
    }

    drop(alive_rx);
    let mut deadline = pin!(signal.deadline());
    tokio::select! {
        () = alive.closed() => {}
        () = &mut deadline => {
            // The layer has cut what was running; give the connections a moment to say so.
            let _ = tokio::time::timeout(AFTER_CUT, alive.closed()).await;
        }
    }
    Ok(())
}

/// Accept everything already in the kernel's queue without waiting, then close the listener.
///
/// The syscalls go straight to the socket: the runtime's readiness flag can lag behind a
/// connection that has just completed its handshake, and trusting it would close the listener on
/// top of that connection. Returns the connections taken and the time between the `accept` that
/// found the queue empty and the `close` (the window in which the kernel can still queue, and
/// then reset, a connection).
fn drain_accept_queue(
    listener: TcpListener,
) -> io::Result<(Vec<(std::net::TcpStream, SocketAddr)>, Duration)> {
    // Non-blocking, as tokio leaves it.
    let listener = listener.into_std()?;
    let mut queued = Vec::new();
    let empty_at = loop {
        match listener.accept() {
            Ok(conn) => queued.push(conn),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break Instant::now(),
            Err(err) if is_connection_error(&err) || err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                tracing::error!(error = %err, "accept failed while emptying the accept queue; closing the listener");
                break Instant::now();
            }
        }
    };
    drop(listener);
    Ok((queued, empty_at.elapsed()))
}

fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One HTTP/1 connection, shut down at the drain phases as the module docs describe.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    signal: DrainSignal,
    _alive: watch::Receiver<()>,
) {
    // Latency over throughput for small responses, as hyper's and axum's users expect.
    let _ = stream.set_nodelay(true);
    let started = Arc::new(AtomicBool::new(false));
    let service = ConnectionService {
        app,
        peer,
        started: Arc::clone(&started),
    };
    // No timer, as in axum::serve: with one, hyper closes a keep-alive connection idle for 30 s
    // (its header read timeout), under a load balancer that may be sending on it right then.
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
        .with_upgrades();
    let mut conn = pin!(conn);

    tokio::select! {
        result = conn.as_mut() => return log_end(result, peer),
        () = signal.closing() => {}
    }
    if !started.load(Ordering::Acquire) {
        // Opened to send a request that may already be in the socket buffer, unread: hyper would
        // close such a connection at once.
        tokio::select! {
            result = conn.as_mut() => return log_end(result, peer),
            () = tokio::time::sleep(FIRST_REQUEST_WAIT) => {}
            () = signal.deadline() => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        result = conn.as_mut() => return log_end(result, peer),
        () = signal.deadline() => {}
    }
    // The layer cuts the responses still running; let them be written, but not forever.
    if let Ok(result) = tokio::time::timeout(AFTER_CUT, conn).await {
        log_end(result, peer);
    }
}

fn log_end(result: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(err) = result {
        tracing::debug!(error = %err, %peer, "connection ended with an error");
    }
}

/// The app as one connection's service: adds `ConnectInfo<SocketAddr>` (as
/// `into_make_service_with_connect_info` does) and notes that a request has started.
#[derive(Clone)]
struct ConnectionService {
    app: Router,
    peer: SocketAddr,
    started: Arc<AtomicBool>,
}

impl tower::Service<http::Request<Incoming>> for ConnectionService {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = <Router as tower::Service<http::Request<Incoming>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower::Service::<http::Request<Incoming>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, mut req: http::Request<Incoming>) -> Self::Future {
        self.started.store(true, Ordering::Release);
        req.extensions_mut().insert(ConnectInfo(self.peer));
        self.app.call(req)
    }
}
