//! Slow and numerous clients against the drain's accept loop, over real TCP: half-sent request
//! heads are closed after the header-read timeout while other clients are served, the per-client
//! and global connection caps refuse the excess with a 503, an exempt proxy is not capped per
//! client, and an idle keep-alive connection is closed after the idle timeout, not before.
//! A second client address is `127.0.0.2` (any 127.0.0.0/8 address is the loopback on Linux).
#![cfg(feature = "axum")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use welcomedly_core::InstanceId;
use welcomedly_core::drain::{Drain, DrainConfig};
use welcomedly_core::health::HealthRegistry;
use welcomedly_core::telemetry::Metrics;

const CLIENT_A: [u8; 4] = [127, 0, 0, 1];
const CLIENT_B: [u8; 4] = [127, 0, 0, 2];
const PING: &[u8] = b"GET /api/ping HTTP/1.1\r\nHost: test\r\n\r\n";

struct Server {
    addr: SocketAddr,
    metrics: Metrics,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl Server {
    async fn start(config: DrainConfig) -> Server {
        let registry = HealthRegistry::new(
            InstanceId::new("slow-clients"),
            "0.0.0",
            Duration::from_secs(1),
        );
        let drain = Drain::new(registry, config);
        let metrics = Metrics::new().unwrap();
        drain.register_metrics(metrics.meter());
        let app = Router::new()
            .route("/api/ping", get(|| async { "pong" }))
            .route(
                "/stream",
                get(|| async { Body::from_stream(slow_stream()) }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(drain.serve(listener, app, async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            metrics,
            stop: Some(stop),
            task,
        }
    }

    async fn connect(&self, from: [u8; 4]) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        socket.connect(self.addr).await.unwrap()
    }

    /// A fresh connection from `from` that sends a ping and reads the answer (keeps it open).
    async fn ping_from(&self, from: [u8; 4]) -> (TcpStream, u16) {
        let mut stream = self.connect(from).await;
        stream.write_all(PING).await.unwrap();
        let (status, _) = within(
            Duration::from_secs(5),
            "a ping answer",
            read_response(&mut stream),
        )
        .await
        .unwrap();
        (stream, status)
    }

    /// The value of one Prometheus series, 0 when absent.
    fn metric(&self, series: &str) -> u64 {
        let text = self.metrics.encode().unwrap();
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        within(Duration::from_secs(10), "the server to stop", self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn config() -> DrainConfig {
    // No grace: the servers stop at once at the end of each test.
    let mut config = DrainConfig::new(Duration::ZERO, Duration::from_secs(2));
    config.header_read_timeout = Duration::from_secs(10);
    config.idle_timeout = Duration::from_secs(30);
    config
}

fn cap(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Ten chunks, 100 ms apart: a response that streams for a second.
fn slow_stream() -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send {
    futures_util::stream::unfold(0u32, |n| async move {
        if n == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok(Bytes::from(format!("data: {n}\n\n"))), n + 1))
    })
}

/// Reads one response with a `content-length` or chunked body; returns the status and the raw
/// head. `Err` when the connection ends first.
async fn read_response(stream: &mut TcpStream) -> io::Result<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status: u16 = head[9..12].parse().unwrap();
    let done = |body: &[u8]| {
        if let Some(len) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
        {
            body.len() >= len.trim().parse::<usize>().unwrap()
        } else {
            body.ends_with(b"0\r\n\r\n")
        }
    };
    while !done(&buf[head_end..]) {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((status, head))
}

/// Waits until the server closes `stream` (EOF or reset); `Err` if it is still open at `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Result<(), &'static str> {
    let mut buf = [0u8; 1024];
    let wait = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .map_err(|_| "still open")
}

#[tokio::test]
async fn half_sent_heads_are_closed_after_the_header_timeout_while_ping_answers() {
    let header_timeout = Duration::from_millis(800);
    let mut config = config();
    config.header_read_timeout = header_timeout;
    config.max_connections_per_client = cap(10_000);
    let server = Server::start(config).await;

    // 300 connections from one host, each with a request head that never ends.
    let mut slow = Vec::new();
    for _ in 0..300 {
        // Before the connect: the server may accept (and start its timer) before it returns.
        let opened = Instant::now();
        let mut stream = server.connect(CLIENT_A).await;
        stream
            .write_all(b"GET /api/ping HTTP/1.1\r\nHost: test\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push((stream, opened));
    }
    // Meanwhile another client is served, and so is a head sent in pieces within the timeout.
    let (_b, status) = server.ping_from(CLIENT_B).await;
    assert_eq!(status, 200);
    let mut pieces = server.connect(CLIENT_A).await;
    for piece in PING.chunks(8) {
        pieces.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = read_response(&mut pieces).await.unwrap();
    assert_eq!(status, 200, "a head completed within the timeout is served");

    for (i, (stream, opened)) in slow.iter_mut().enumerate() {
        closed_within(stream, header_timeout + Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("half-sent connection {i}: {e}"));
        assert!(
            opened.elapsed() >= header_timeout,
            "connection {i} closed after {:?}, before the header-read timeout",
            opened.elapsed()
        );
    }
    let (_b, status) = server.ping_from(CLIENT_B).await;
    assert_eq!(status, 200);
    assert_eq!(
        server.metric("welcomedly_connections_timed_out_total{phase=\"first_request\""),
        300
    );
    server.stop().await;
}

#[tokio::test]
async fn the_per_client_cap_refuses_the_excess_and_others_still_get_in() {
    let mut config = config();
    config.max_connections_per_client = cap(5);
    let server = Server::start(config).await;

    let mut held = Vec::new();
    for _ in 0..5 {
        let (stream, status) = server.ping_from(CLIENT_A).await;
        assert_eq!(status, 200);
        held.push(stream);
    }
    // The sixth from the same address gets a 503 at once, then the connection closes.
    let mut excess = server.connect(CLIENT_A).await;
    excess.write_all(PING).await.unwrap();
    let (status, head) = within(
        Duration::from_secs(5),
        "the refusal",
        read_response(&mut excess),
    )
    .await
    .unwrap();
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    closed_within(&mut excess, Duration::from_secs(2))
        .await
        .unwrap();

    // Another address still gets in.
    let (_b, status) = server.ping_from(CLIENT_B).await;
    assert_eq!(status, 200);
    // Once one of the five closes, the address gets a place again.
    drop(held.pop());
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = server.connect(CLIENT_A).await;
        again.write_all(PING).await.unwrap();
        let (status, _) = read_response(&mut again).await.unwrap();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the freed place was never given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.metric("welcomedly_connections_refused_total{reason=\"per_client\"") >= 1);
    server.stop().await;
}

#[tokio::test]
async fn an_exempt_proxy_is_not_capped_per_client_but_the_global_cap_holds() {
    let mut config = config();
    config.max_connections_per_client = cap(2);
    config.max_connections = cap(6);
    config.per_client_exempt = "127.0.0.1/32".parse().unwrap();
    let server = Server::start(config).await;

    // The "load balancer" at 127.0.0.1 opens five connections: past the per-client cap of 2.
    let mut held = Vec::new();
    for i in 0..5 {
        let (stream, status) = server.ping_from(CLIENT_A).await;
        assert_eq!(status, 200, "proxy connection {i}");
        held.push(stream);
    }
    // 127.0.0.2 is capped per client: one place left globally, then the global cap.
    let (_b1, status) = server.ping_from(CLIENT_B).await;
    assert_eq!(status, 200);
    let (_b2, status) = server.ping_from(CLIENT_B).await;
    assert_eq!(
        status, 503,
        "the seventh connection is over the global cap of 6"
    );
    let (_a6, status) = server.ping_from(CLIENT_A).await;
    assert_eq!(
        status, 503,
        "the exempt proxy counts against the global cap too"
    );
    assert!(server.metric("welcomedly_connections_refused_total{reason=\"global\"") >= 2);
    assert_eq!(server.metric("welcomedly_connections_open{"), 6);
    server.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_not_before() {
    let idle = Duration::from_millis(1500);
    let mut config = config();
    // Shorter than the gap below: later requests are not held to the first one's timeout.
    config.header_read_timeout = Duration::from_millis(300);
    config.idle_timeout = idle;
    let server = Server::start(config).await;

    let (mut conn, status) = server.ping_from(CLIENT_A).await;
    assert_eq!(status, 200);
    // A load balancer reuses the connection after 1 s idle (its own keep-alive timeout is
    // shorter than the server's): it must still be open and serve.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    conn.write_all(PING).await.unwrap();
    let (status, _) = read_response(&mut conn).await.unwrap();
    assert_eq!(
        status, 200,
        "a connection reused within the idle timeout is served"
    );
    let idle_from = Instant::now();
    closed_within(&mut conn, idle + Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection must be closed after the idle timeout");
    assert!(
        idle_from.elapsed() >= idle,
        "closed after {:?} idle, before the idle timeout",
        idle_from.elapsed()
    );

    // A later request whose head never ends holds the connection no longer than idle.
    let (mut conn, _) = server.ping_from(CLIENT_A).await;
    conn.write_all(b"GET /api/ping HTTP/1.1\r\nHost: t")
        .await
        .unwrap();
    closed_within(&mut conn, idle + Duration::from_secs(5))
        .await
        .expect("a half-sent later head must be closed by the idle timeout");
    assert!(server.metric("welcomedly_connections_timed_out_total{phase=\"idle\"") >= 2);
    server.stop().await;
}

#[tokio::test]
async fn a_response_streaming_longer_than_both_timeouts_is_not_cut() {
    let mut config = config();
    config.header_read_timeout = Duration::from_millis(200);
    config.idle_timeout = Duration::from_millis(300);
    let server = Server::start(config).await;

    let mut conn = server.connect(CLIENT_A).await;
    conn.write_all(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (status, head) = within(
        Duration::from_secs(5),
        "the stream",
        read_response(&mut conn),
    )
    .await
    .expect("the whole stream arrives");
    assert_eq!(status, 200, "{head}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "it streamed for a second"
    );
    server.stop().await;
}
