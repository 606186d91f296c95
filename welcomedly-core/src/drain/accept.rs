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
//!
//! Slow and numerous clients, at any time:
//! - a connection that has not sent a complete request head within
//!   [`header_read_timeout`](super::DrainConfig::header_read_timeout) of being accepted is
//!   closed (a task of this module's); a keep-alive connection whose next request head is not
//!   complete within [`idle_timeout`](super::DrainConfig::idle_timeout) of its last response is
//!   closed (hyper's `header_read_timeout`, which runs only while hyper waits for a head, never
//!   while a response streams). The second also bounds a slowly sent later head: such a
//!   connection holds no more than an idle one may;
//! - the caps of [`limits`](super::limits) refuse the excess with a 503 written without reading
//!   the request, then a short lingering close (shut down writing, discard what the client sent
//!   for up to [`REFUSAL_LINGER`]) so the client reads the answer instead of a reset;
//! - accept errors are logged at most once per interval (see [`accept_errors`](super::accept_errors)).

use std::convert::Infallible;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::accept_errors::{ACCEPT_ERROR_LOG_INTERVAL, AcceptErrorLog};
use super::layer::{DrainBody, DrainLayer, DrainService, ResponseFuture as DrainFuture};
use super::limits::{ConnStats, ConnectionLimits, Permit, Refusal};
use super::run::AFTER_CUT;
use super::{DrainConfig, DrainSignal, nofile};
use crate::problem::Problem;
use tower::Layer as _;

/// At the end of the grace period, how long a connection that has not sent its first request
/// yet may take to send it (it is served, with `Connection: close`) before it is closed.
const FIRST_REQUEST_WAIT: Duration = Duration::from_secs(1);

/// After an accept error other than a connection's own (such as `EMFILE`), how long to wait
/// before accepting again, so a full file table does not spin the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How long a refused connection is kept after its 503, discarding what the client sends, so
/// that closing it does not reset the connection before the client has read the answer.
const REFUSAL_LINGER: Duration = Duration::from_millis(250);

/// At most this many refused connections linger at once (each holds a descriptor, out of the
/// reserve kept under the open-file limit); beyond it a refused connection is closed right after
/// its 503 (and what its client had already sent is discarded): a client whose request arrives
/// after that may see a reset instead of the 503.
const REFUSALS_LINGERING_MAX: usize = 128;

/// At most this many bytes are read and discarded from a refused connection.
const REFUSAL_DISCARD_MAX: usize = 64 * 1024;

/// TCP keep-alive on every accepted connection: after this long without a segment from the
/// client, the kernel probes it...
const KEEPALIVE_IDLE: Duration = Duration::from_secs(20);
/// ...every this often...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// ...and closes it after this many unanswered probes: a client that vanished without closing
/// (power cut, network gone, a NAT that forgot the flow) is noticed ≈ 30 s after its last
/// segment instead of never (an idle keep-alive connection, a quiet event stream).
const KEEPALIVE_RETRIES: u32 = 2;
/// How long data written to a connection may stay unacknowledged before the kernel gives up on
/// it (`TCP_USER_TIMEOUT`, Linux): an event stream writing to a vanished client fails after this
/// long instead of after the ≈ 15 minutes of the kernel's retransmissions, so its stream ends,
/// its session's presence goes away and its place under the caps is freed.
const UNACKED_DATA_TIMEOUT: Duration = Duration::from_secs(30);

/// Sets what [`KEEPALIVE_IDLE`] and [`UNACKED_DATA_TIMEOUT`] describe on an accepted socket.
/// Best effort: a platform without these options keeps the kernel's defaults.
fn notice_vanished_peers(stream: &TcpStream) -> io::Result<()> {
    let socket = SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    socket.set_tcp_keepalive(&keepalive)?;
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    socket.set_tcp_user_timeout(Some(UNACKED_DATA_TIMEOUT))?;
    Ok(())
}

/// What every connection task needs, built once per server.
struct Shared {
    app: DrainService<Router>,
    signal: DrainSignal,
    http: http1::Builder,
    header_read_timeout: Duration,
    limits: Arc<ConnectionLimits>,
    lingering: AtomicUsize,
}

/// Serve `app` on `listener` through the drain phases seen by `signal`; resolves when every
/// connection is closed (or, after the deadline, when [`AFTER_CUT`] has passed as well).
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    drain: DrainLayer,
    signal: DrainSignal,
    config: &DrainConfig,
    stats: Arc<ConnStats>,
) -> io::Result<()> {
    let mut http = http1::Builder::new();
    // hyper's header-read timer runs while it waits for a request head: from the accept, and
    // from the end of each response. It is the idle timeout of keep-alive connections (no
    // shorter than the first request's own timeout, so each setting means what it says).
    http.timer(TokioTimer::new())
        .header_read_timeout(config.idle_timeout.max(config.header_read_timeout));
    let shared = Arc::new(Shared {
        // Finalises the routes once, not on every request. The drain layer wraps the whole
        // router once, rather than through `Router::layer`, which would box it around every
        // route and clone that box on every request.
        app: drain.layer(app.with_state(())),
        signal: signal.clone(),
        http,
        header_read_timeout: config.header_read_timeout,
        limits: connection_limits(config, stats),
        lingering: AtomicUsize::new(0),
    });
    // Every connection task holds a receiver; `closed()` resolves when the last one is gone.
    let (alive, alive_rx) = watch::channel(());
    let mut refusals = AcceptErrorLog::new(ACCEPT_ERROR_LOG_INTERVAL);
    let mut spawn = |stream: TcpStream, peer: SocketAddr| match shared.limits.admit(peer.ip()) {
        Ok(permit) => {
            tokio::spawn(connection(
                stream,
                peer,
                Arc::clone(&shared),
                permit,
                alive_rx.clone(),
            ));
        }
        Err(refusal) => {
            if let Some(suppressed) = refusals.on_error(Instant::now()) {
                tracing::warn!(
                    reason = refusal.as_str(),
                    %peer,
                    suppressed,
                    "refusing connections over the cap with a 503 (at most one such line per \
                     interval, `suppressed` counts the refusals left out); raise \
                     WELCOMEDLY_MAX_CONNECTIONS(_PER_CLIENT), or list a load balancer's network \
                     in TRUSTED_PROXIES, if these clients are legitimate"
                );
            }
            refuse(stream, refusal, &shared);
        }
    };

    let mut accept_errors = AcceptErrorLog::new(ACCEPT_ERROR_LOG_INTERVAL);
    let mut closing = pin!(signal.closing());
    loop {
        tokio::select! {
            biased;
            () = &mut closing => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    accept_errors.accepted();
                    spawn(stream, peer);
                }
                Err(err) if is_connection_error(&err) => {}
                Err(err) => {
                    accept_errors.error(&err);
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

/// The caps for this server: the configured ones, the global one lowered to fit under the
/// open-file limit (raised to its hard limit first).
fn connection_limits(config: &DrainConfig, stats: Arc<ConnStats>) -> Arc<ConnectionLimits> {
    let nofile = nofile::raise();
    let configured = config.max_connections.get();
    let fit = nofile
        .connections_that_fit()
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX).max(1));
    let max = match fit {
        Some(fit) if fit < configured => {
            tracing::warn!(
                configured,
                lowered_to = fit,
                open_file_limit = nofile.soft,
                reserved = nofile::RESERVED_DESCRIPTORS,
                "the connection cap (WELCOMEDLY_MAX_CONNECTIONS) is above what the open-file \
                 limit allows: lowered, so a flood meets a 503 rather than \"too many open \
                 files\"; raise the hard limit (LimitNOFILE= in the systemd unit, ulimit -Hn) \
                 to allow more"
            );
            fit
        }
        _ => configured,
    };
    tracing::info!(
        max_connections = max,
        max_connections_per_client = config.max_connections_per_client.get(),
        per_client_exempt = %config.per_client_exempt,
        header_read_timeout_ms = millis(config.header_read_timeout),
        idle_timeout_ms = millis(config.idle_timeout),
        open_file_limit = nofile.soft,
        "connection limits"
    );
    ConnectionLimits::new(
        max,
        config.max_connections_per_client.get(),
        config.per_client_exempt.clone(),
        stats,
    )
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The answer to a refused connection: a complete HTTP/1.1 503 that closes the connection.
fn refusal_response(refusal: Refusal) -> &'static [u8] {
    fn build(detail: &'static str) -> Vec<u8> {
        let body = Problem::new(http::StatusCode::SERVICE_UNAVAILABLE)
            .detail(detail)
            .body();
        let mut response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
             retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        response
    }
    static GLOBAL: LazyLock<Vec<u8>> =
        LazyLock::new(|| build("this server has too many connections open: retry in a moment"));
    static PER_CLIENT: LazyLock<Vec<u8>> = LazyLock::new(|| {
        build("too many connections open from your address: close some, then retry")
    });
    match refusal {
        Refusal::Global => &GLOBAL,
        Refusal::PerClient => &PER_CLIENT,
    }
}

/// Answer a refused connection with a 503, without reading its request or ever waiting on the
/// client to write it, then close it (lingering briefly while few refusals do).
fn refuse(stream: TcpStream, refusal: Refusal, shared: &Arc<Shared>) {
    // A new socket's send buffer is empty: the short answer fits, or is dropped.
    let _ = stream.try_write(refusal_response(refusal));
    // The client sees the end of the answer.
    let _ = SockRef::from(&stream).shutdown(Shutdown::Write);
    // Closing over unread bytes resets the connection (the client may lose the answer): discard
    // what has already arrived, without waiting.
    let mut buf = [0u8; 4096];
    let mut discarded = 0;
    while discarded < REFUSAL_DISCARD_MAX {
        match stream.try_read(&mut buf) {
            Ok(n) if n > 0 => discarded += n,
            _ => break,
        }
    }
    let lingering = shared.lingering.fetch_add(1, Ordering::AcqRel);
    if lingering >= REFUSALS_LINGERING_MAX {
        shared.lingering.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_LINGER, discard_until_eof(&stream)).await;
        shared.lingering.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Read and drop what the client sends until it closes or [`REFUSAL_DISCARD_MAX`] bytes have
/// come.
async fn discard_until_eof(stream: &TcpStream) {
    let mut buf = [0u8; 4096];
    let mut discarded = 0;
    while discarded < REFUSAL_DISCARD_MAX {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => discarded += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// One HTTP/1 connection, closed when its first request head is late, and shut down at the
/// drain phases as the module docs describe.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    permit: Permit,
    _alive: watch::Receiver<()>,
) {
    // Latency over throughput for small responses, as hyper's and axum's users expect.
    let _ = stream.set_nodelay(true);
    if let Err(e) = notice_vanished_peers(&stream) {
        tracing::debug!(%peer, error = %e, "cannot set TCP keep-alive on a connection");
    }
    let started = Arc::new(AtomicBool::new(false));
    let service = ConnectionService {
        app: shared.app.clone(),
        peer,
        started: Arc::clone(&started),
    };
    let conn = shared
        .http
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
        .with_upgrades();
    let mut conn = pin!(conn);
    let signal = &shared.signal;

    let mut first_request = pin!(tokio::time::sleep(shared.header_read_timeout));
    let mut waiting_for_first = true;
    let mut closing = pin!(signal.closing());
    loop {
        tokio::select! {
            result = conn.as_mut() => return log_end(result, peer, &permit),
            () = &mut closing => break,
            () = &mut first_request, if waiting_for_first => {
                waiting_for_first = false;
                if !started.load(Ordering::Acquire) {
                    // Dropping the connection closes it: a slow (or silent) client holds a
                    // descriptor and a place under the caps for this long at most.
                    permit
                        .stats()
                        .first_request_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "closing a connection that sent no complete request head in time");
                    return;
                }
            }
        }
    }
    if !started.load(Ordering::Acquire) {
        // Opened to send a request that may already be in the socket buffer, unread: hyper would
        // close such a connection at once.
        tokio::select! {
            result = conn.as_mut() => return log_end(result, peer, &permit),
            () = tokio::time::sleep(FIRST_REQUEST_WAIT) => {}
            () = signal.deadline() => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        result = conn.as_mut() => return log_end(result, peer, &permit),
        () = signal.deadline() => {}
    }
    // The layer cuts the responses still running; let them be written, but not forever.
    if let Ok(result) = tokio::time::timeout(AFTER_CUT, conn).await {
        log_end(result, peer, &permit);
    }
}

fn log_end(result: Result<(), hyper::Error>, peer: SocketAddr, permit: &Permit) {
    if let Err(err) = result {
        if err.is_timeout() {
            // hyper's header-read timer: idle past `idle_timeout` between requests.
            permit.stats().idle_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(error = %err, %peer, "connection ended with an error");
    }
}

/// The app as one connection's service: adds `ConnectInfo<SocketAddr>` (as
/// `into_make_service_with_connect_info` does) and notes that a request has started.
#[derive(Clone)]
struct ConnectionService {
    app: DrainService<Router>,
    peer: SocketAddr,
    started: Arc<AtomicBool>,
}

impl tower::Service<http::Request<Incoming>> for ConnectionService {
    type Response = http::Response<DrainBody<axum::body::Body>>;
    type Error = Infallible;
    type Future = DrainFuture<<Router as tower::Service<http::Request<Incoming>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower::Service::<http::Request<Incoming>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, mut req: http::Request<Incoming>) -> Self::Future {
        self.started.store(true, Ordering::Release);
        req.extensions_mut().insert(ConnectInfo(self.peer));
        self.app.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_probe_idle_peers_and_bound_unacknowledged_data() -> io::Result<()>
    {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let _client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        let socket = SockRef::from(&server);
        assert!(
            !socket.keepalive()?,
            "the kernel's default: no probes at all"
        );

        notice_vanished_peers(&server)?;
        assert!(socket.keepalive()?);
        assert_eq!(socket.tcp_keepalive_time()?, KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_keepalive_interval()?, KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries()?, KEEPALIVE_RETRIES);
        #[cfg(target_os = "linux")]
        assert_eq!(socket.tcp_user_timeout()?, Some(UNACKED_DATA_TIMEOUT));
        Ok(())
    }

    /// The refusal is a complete HTTP/1.1 answer whose body is the problem its length says.
    #[test]
    fn a_refused_connection_gets_a_whole_problem_json_503() -> Result<(), Box<dyn std::error::Error>>
    {
        for refusal in [Refusal::Global, Refusal::PerClient] {
            let text = std::str::from_utf8(refusal_response(refusal))?;
            let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of head")?;
            assert!(
                head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
                "{head}"
            );
            assert!(
                head.contains("\r\ncontent-type: application/problem+json\r\n"),
                "{head}"
            );
            assert!(head.contains("\r\nretry-after: 1\r\n"), "{head}");
            assert!(
                head.contains(&format!("\r\ncontent-length: {}", body.len())),
                "{head}"
            );
            let problem: serde_json::Value = serde_json::from_str(body)?;
            assert_eq!(problem["status"], 503);
            assert_eq!(problem["title"], "Service Unavailable");
            assert!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("retry")),
                "{body}"
            );
        }
        Ok(())
    }
}
