//! Drain against a real TCP server and a real HTTP client: readiness turns 503 at once, a request
//! in flight completes, new connections are refused after the grace period, and an endless stream
//! cannot hold shutdown past the deadline. These run in real time with short phases.
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Extension;
use axum::routing::get;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use welcomedly_core::InstanceId;
use welcomedly_core::drain::{self, Drain, DrainConfig, DrainPhase, DrainSignal};
use welcomedly_core::health::{self, HealthRegistry};

fn registry() -> HealthRegistry {
    HealthRegistry::new(
        InstanceId::new("drain-test"),
        "0.0.0",
        Duration::from_secs(1),
    )
}

/// A shutdown future the test fires, instead of a real signal to the test process.
fn trigger() -> (
    oneshot::Sender<()>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

async fn connect(addr: SocketAddr) -> io::Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> Response<Incoming> {
    sender.ready().await.unwrap();
    let req = Request::get(path).body(Empty::new()).unwrap();
    sender.send_request(req).await.unwrap()
}

async fn text(res: Response<Incoming>) -> (StatusCode, String) {
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Wait (bounded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(2);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Connect until the server refuses (the listener is closed asynchronously after the grace
/// period, so a connect right at that moment may still land in the backlog).
async fn until_refused(addr: SocketAddr) -> io::Error {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        match TcpStream::connect(addr).await {
            Err(err) => return err,
            Ok(_) => {
                assert!(
                    Instant::now() < until,
                    "new connections still accepted after grace"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A stream of SSE-like events every 20 ms, forever.
fn endless_events() -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send {
    futures_util::stream::unfold(0u64, |n| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some((Ok(Bytes::from(format!("data: {n}\n\n"))), n + 1))
    })
}

fn spawn_serve(
    listener: TcpListener,
    app: Router,
    registry: HealthRegistry,
    config: DrainConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<(io::Result<()>, Instant)> {
    tokio::spawn(async move {
        let result = drain::serve(listener, app, registry, config, shutdown).await;
        (result, Instant::now())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_completes_while_ready_already_answers_503() {
    let registry = registry();
    let started = Arc::new(Notify::new());
    let slow_started = Arc::clone(&started);
    let finished = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let slow_finished = Arc::clone(&finished);
    let app = Router::new()
        .route(
            "/slow",
            get(move || {
                let started = Arc::clone(&slow_started);
                let finished = Arc::clone(&slow_finished);
                async move {
                    started.notify_one();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    *finished.lock().unwrap() = Some(Instant::now());
                    "slow done"
                }
            }),
        )
        .merge(health::router(registry.clone()));
    let (listener, addr) = bind().await;
    let (fire, shutdown) = trigger();
    let grace = Duration::from_millis(300);
    let config = DrainConfig::new(grace, Duration::from_secs(3));
    let server = spawn_serve(listener, app, registry.clone(), config, shutdown);

    // Before the signal the instance is ready: the 503 below is the drain's doing.
    let mut probe = connect(addr).await.unwrap();
    assert_eq!(
        text(send(&mut probe, "/health/ready").await).await.0,
        StatusCode::OK
    );
    drop(probe);

    let mut slow_conn = connect(addr).await.unwrap();
    let slow = tokio::spawn(async move {
        let res = text(send(&mut slow_conn, "/slow").await).await;
        (res, Instant::now())
    });
    started.notified().await;

    fire.send(()).unwrap();
    let signalled = Instant::now();
    eventually("registry draining", || registry.is_draining()).await;

    // A new connection during the grace period is still served, and readiness is already off.
    let mut during_grace = connect(addr).await.unwrap();
    let (status, body) = text(send(&mut during_grace, "/health/ready").await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains(r#""status":"draining""#), "{body}");
    // Draining: every response asks the client to take its next request elsewhere.
    assert!(during_grace.is_closed() || during_grace.ready().await.is_err());
    let mut during_grace = connect(addr).await.unwrap();
    let (status, _) = text(send(&mut during_grace, "/health/live").await).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "liveness must stay 200 while draining"
    );
    assert!(
        signalled.elapsed() < grace,
        "the probes must run inside the grace period"
    );

    // The request that was in flight when the signal arrived completes normally.
    let ((status, body), slow_done) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "slow done");
    assert!(
        slow_done - signalled > grace,
        "the slow request outlived the grace period"
    );

    // After the grace period nobody new gets in.
    let refused = until_refused(addr).await;
    assert_eq!(
        refused.kind(),
        io::ErrorKind::ConnectionRefused,
        "{refused}"
    );

    let (result, returned) = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve must return once connections are done")
        .unwrap();
    result.unwrap();
    let handler_done = finished.lock().unwrap().expect("the slow handler finished");
    assert!(
        returned >= handler_done,
        "serve returned before the in-flight request finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_stream_does_not_hold_shutdown_beyond_the_deadline() {
    let registry = registry();
    let app = Router::new().route(
        "/events",
        get(|| async { Body::from_stream(endless_events()) }),
    );
    let (listener, addr) = bind().await;
    let (fire, shutdown) = trigger();
    let (grace, deadline) = (Duration::from_millis(100), Duration::from_millis(300));
    let server = spawn_serve(
        listener,
        app,
        registry,
        DrainConfig::new(grace, deadline),
        shutdown,
    );

    let mut conn = connect(addr).await.unwrap();
    let res = send(&mut conn, "/events").await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data(), "the stream is open");
    let reader = tokio::spawn(async move {
        loop {
            match body.frame().await {
                Some(Ok(_)) => {}
                Some(Err(_)) => return (true, Instant::now()),
                None => return (false, Instant::now()),
            }
        }
    });

    fire.send(()).unwrap();
    let signalled = Instant::now();
    let (result, returned) = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("an open stream held shutdown")
        .unwrap();
    result.unwrap();
    let took = returned - signalled;
    assert!(
        took >= grace + deadline,
        "returned after {took:?}: the stream was not given its deadline"
    );
    assert!(
        took < grace + deadline + Duration::from_millis(800),
        "returned after {took:?}: the stream was not cut at the deadline"
    );

    // The client sees a truncated stream (an error), never a falsely complete one.
    let (errored, ended) = tokio::time::timeout(Duration::from_secs(2), reader)
        .await
        .unwrap()
        .unwrap();
    assert!(errored, "a cut stream must end with an error");
    assert!(ended - signalled < grace + deadline + Duration::from_millis(800));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_at_closing_finishes_cleanly_long_before_the_deadline() {
    let registry = registry();
    let drain = Drain::new(
        registry.clone(),
        DrainConfig::new(Duration::from_millis(100), Duration::from_secs(30)),
    );
    let observer = drain.signal();
    let app = Router::new().route(
        "/events",
        get(|Extension(signal): Extension<DrainSignal>| async move {
            let events = endless_events().take_until(async move { signal.closing().await });
            Body::from_stream(events)
        }),
    );
    let (listener, addr) = bind().await;
    let (fire, shutdown) = trigger();
    let server = tokio::spawn(async move {
        let result = drain.serve(listener, app, shutdown).await;
        (result, Instant::now())
    });

    let mut conn = connect(addr).await.unwrap();
    let res = send(&mut conn, "/events").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(observer.phase(), DrainPhase::Serving);

    fire.send(()).unwrap();
    let signalled = Instant::now();
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), text(res))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("data: 0\n\n"), "{body}");
    assert!(observer.phase() >= DrainPhase::Closing);

    let (result, returned) = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    result.unwrap();
    assert!(
        returned - signalled < Duration::from_secs(2),
        "a stream that ends at closing must not wait for the 30 s deadline"
    );
    assert_eq!(
        observer.phase(),
        DrainPhase::Closing,
        "no deadline cut was needed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_still_running_at_the_deadline_is_answered_503() {
    let registry = registry();
    let app = Router::new().route(
        "/stuck",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            "never"
        }),
    );
    let (listener, addr) = bind().await;
    let (fire, shutdown) = trigger();
    let config = DrainConfig::new(Duration::from_millis(50), Duration::from_millis(200));
    let server = spawn_serve(listener, app, registry, config, shutdown);

    let mut conn = connect(addr).await.unwrap();
    let pending = tokio::spawn(async move { send(&mut conn, "/stuck").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    fire.send(()).unwrap();

    let res = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["connection"], "close");
    let (_, body) = text(res).await;
    assert!(body.contains("drain deadline"), "{body}");

    let (result, _) = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    result.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_do_not_hold_shutdown() {
    let registry = registry();
    let app = Router::new().route("/ping", get(|| async { "pong" }));
    let (listener, addr) = bind().await;
    let (fire, shutdown) = trigger();
    let grace = Duration::from_millis(100);
    let config = DrainConfig::new(grace, Duration::from_secs(30));
    let server = spawn_serve(listener, app, registry, config, shutdown);

    let mut idle = connect(addr).await.unwrap();
    assert_eq!(text(send(&mut idle, "/ping").await).await.0, StatusCode::OK);

    fire.send(()).unwrap();
    let signalled = Instant::now();
    let (result, returned) = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    result.unwrap();
    let took = returned - signalled;
    assert!(
        took >= grace,
        "returned after {took:?}, before the grace period ended"
    );
    assert!(
        took < Duration::from_secs(2),
        "an idle connection held shutdown for {took:?}"
    );
}

/// One raw HTTP/1.1 POST on a fresh connection: the status and the `Connection` header of the
/// answer, or the I/O error a client would see (a reset connection).
async fn raw_post(addr: SocketAddr, body: &str) -> io::Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = TcpStream::connect(addr).await?;
    let req = format!(
        "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    // The server closes after the answer (Connection: close), so read to the end.
    stream.read_to_end(&mut raw).await?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no response head in {raw:?}")))?;
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no status in {head:?}")))?;
    let connection = head
        .lines()
        .find_map(|l| l.strip_prefix("connection: "))
        .unwrap_or("")
        .to_owned();
    Ok((status, connection, body.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_queued_when_the_grace_period_ends_are_served_not_reset() {
    // The server runs on its own single-threaded runtime, which a handler then blocks across the
    // end of the grace period: the POSTs sent meanwhile sit unread in the kernel's accept queue
    // (or in accepted connections nobody has read yet) when accepting stops. Closing the listener
    // on them, or closing a connection before reading its request, resets them; a load balancer
    // does not retry a POST it has sent.
    let registry = registry();
    let (fire, shutdown) = trigger();
    let grace = Duration::from_millis(300);
    let (addr_tx, addr_rx) = oneshot::channel();
    let server_registry = registry.clone();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = Router::new()
                .route(
                    "/block",
                    get(|| async {
                        std::thread::sleep(Duration::from_millis(600));
                        "unblocked"
                    }),
                )
                .route("/echo", axum::routing::post(|body: String| async { body }))
                .merge(health::router(server_registry.clone()));
            let (listener, addr) = bind().await;
            addr_tx.send(addr).unwrap();
            let config = DrainConfig::new(grace, Duration::from_secs(3));
            drain::serve(listener, app, server_registry, config, shutdown).await
        })
    });
    let addr = addr_rx.await.unwrap();

    fire.send(()).unwrap();
    let signalled = Instant::now();
    eventually("registry draining", || registry.is_draining()).await;
    let mut blocker = connect(addr).await.unwrap();
    let blocked = tokio::spawn(async move { text(send(&mut blocker, "/block").await).await });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let posts: Vec<_> = (0..8)
        .map(|i| {
            tokio::spawn(raw_post(
                addr,
                Box::leak(format!("call {i}").into_boxed_str()),
            ))
        })
        .collect();
    let (status, _) = blocked.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        signalled.elapsed() > grace,
        "the server was blocked past the end of the grace period"
    );
    for (i, post) in posts.into_iter().enumerate() {
        let (status, connection, body) = post.await.unwrap().unwrap_or_else(|err| {
            panic!("POST {i}, queued when the grace period ended, was lost: {err}")
        });
        assert_eq!(status, 200);
        assert_eq!(
            connection, "close",
            "draining: the client must not reuse it"
        );
        assert_eq!(body, format!("call {i}"));
    }

    // Then the listener is closed: a new connection is refused, not queued.
    let refused = until_refused(addr).await;
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    server.join().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_opened_during_grace_is_not_closed_before_its_first_request() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // A load balancer opens a connection to send a request; closing it at the end of the grace
    // period before reading would reset that request (hyper closes a connection it has read
    // nothing from at once on a graceful shutdown).
    let registry = registry();
    let app = Router::new().route("/echo", axum::routing::post(|body: String| async { body }));
    let (listener, addr) = bind().await;
    let (fire, shutdown) = trigger();
    let grace = Duration::from_millis(100);
    let config = DrainConfig::new(grace, Duration::from_secs(3));
    let server = spawn_serve(listener, app, registry.clone(), config, shutdown);

    fire.send(()).unwrap();
    eventually("registry draining", || registry.is_draining()).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The grace period ends while the connection is open and silent.
    tokio::time::sleep(grace + Duration::from_millis(200)).await;
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\n\r\nlate")
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("connection: close"), "{raw}");
    assert!(raw.ends_with("late"), "{raw}");

    let (result, _) = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    result.unwrap();
}
