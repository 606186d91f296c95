//! Rolling restarts under POST load, as in production: NGINX retries a GET that failed on one
//! instance on the next one, but never a POST it has already sent, so every request a draining
//! instance loses is a 502 the client sees.
//!
//! - behind a real NGINX (`least_conn`, with and without upstream `keepalive 64`), three
//!   `call_center` instances are SIGTERMed and restarted in turn on their port while keep-alive
//!   clients POST `/auth/login`: at most one failed request in each set-up (the kernel can still
//!   reset a connection whose handshake completes between the drain's last `accept` and its
//!   `close`, a window of a few microseconds);
//! - with the listening socket held by the test and passed to each process as systemd does
//!   (fd 3, `LISTEN_FDS=1`, `LISTEN_PID`), restarts lose nothing at all.
//!
//! NGINX must be installed (`.ci/test` installs it when run as root). `DRAIN_NGINX_ROUNDS=<n>`
//! restarts every instance n times instead of once, to measure failure rates.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use welcomedly_testkit::{Nginx, NginxConfig, free_port};

/// Concurrent keep-alive clients: enough to keep every instance busy on two cores.
const CLIENTS: usize = 12;
/// The instances' drain: NGINX OSS has no active health checks, so the grace period is only what
/// it takes for `Connection: close` to empty NGINX's pool of connections to the instance.
const GRACE_MS: &str = "400";
const DEADLINE_MS: &str = "3000";
/// Load between two restarts, so each restarted instance takes traffic again. Longer than
/// NGINX's `fail_timeout` (1 s): the refused connects of one drain mark that instance down for
/// that long, and two instances marked down at once would leave NGINX with no live upstream
/// although only one is down, as in a rolling restart done faster than the proxy's health
/// checks allow.
const SETTLE: Duration = Duration::from_millis(1100);
/// A login POST the example refuses cheaply (422: no password, so no argon2 verification),
/// keeping the load at tens of thousands of requests per run.
const WRONG_LOGIN: &str = r#"{"username":"load-test"}"#;

/// `cargo test` builds the examples next to the test binaries: target/<profile>/examples/.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    profile_dir.join("examples").join("call_center")
}

fn rounds() -> usize {
    std::env::var("DRAIN_NGINX_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn example(id: &str, port: u16) -> Command {
    let mut cmd = Command::new(example_binary());
    cmd.env_clear()
        .env("PORT", port.to_string())
        .env("WELCOMEDLY_INSTANCE_ID", id)
        // The load sends a distinct X-Forwarded-For per request: the login limit (5 failures a
        // minute per client IP) never answers 429.
        .env("TRUSTED_PROXIES", "127.0.0.1/32")
        .env("RUST_LOG", "warn")
        .env("WELCOMEDLY_DRAIN_GRACE_MS", GRACE_MS)
        .env("WELCOMEDLY_DRAIN_DEADLINE_MS", DEADLINE_MS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// One `call_center` process.
struct Instance {
    child: Child,
}

impl Instance {
    /// Binds `port` itself; waits until it accepts.
    fn bind(id: &str, port: u16) -> Instance {
        let child = example(id, port)
            .spawn()
            .expect("the example binary is built by cargo test");
        let instance = Instance { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "instance {id} did not start listening on {port}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        instance
    }

    /// Takes `listener` as systemd passes a socket: fd 3, `LISTEN_FDS=1`, `LISTEN_PID` = its pid.
    /// The shell moves the socket (given as stdin, which std passes without `unsafe`) to fd 3 and
    /// sets `LISTEN_PID` to its own pid, which `exec` keeps.
    fn activated(id: &str, listener: &std::net::TcpListener) -> Instance {
        let port = listener.local_addr().unwrap().port();
        let fd = OwnedFd::from(listener.try_clone().unwrap());
        let cmd = example(id, port);
        let program = cmd.get_program().to_owned();
        let mut shell = Command::new("/bin/sh");
        shell
            .arg("-c")
            .arg(r#"exec 3<&0 0</dev/null; export LISTEN_FDS=1 LISTEN_PID=$$; exec "$0""#)
            .arg(program)
            .env_clear()
            .envs(
                cmd.get_envs()
                    .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
            )
            .stdin(Stdio::from(fd))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = shell.spawn().expect("/bin/sh starts the example");
        Instance { child }
    }

    /// SIGTERM, then wait for the drain to finish and the process to exit.
    fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Unexpected statuses (502, 503, 504, 429, ...) and transport errors, with a count each.
    failures: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn fail(&self, what: String) {
        *self.failures.lock().unwrap().entry(what).or_default() += 1;
    }

    fn failed(&self) -> u64 {
        self.failures.lock().unwrap().values().sum()
    }

    fn summary(&self) -> String {
        format!(
            "{} failed of {} requests {:?}",
            self.failed(),
            self.failed() + self.ok.load(Ordering::Relaxed),
            self.failures.lock().unwrap()
        )
    }
}

/// `CLIENTS` keep-alive HTTP/1.1 clients POSTing wrong logins to `addr` until `stop`, each
/// request from a distinct client IP (X-Forwarded-For). A client reconnects after a response
/// with `Connection: close` (the request was answered) or after an error (counted).
fn start_load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let next_ip = Arc::new(AtomicU64::new(1));
    (0..CLIENTS)
        .map(|_| {
            let (stop, tally, next_ip) = (stop.clone(), tally.clone(), next_ip.clone());
            tokio::spawn(async move {
                let mut conn = None;
                while !stop.load(Ordering::Relaxed) {
                    let sender = match &mut conn {
                        Some(sender) => sender,
                        None => match connect(addr).await {
                            Ok(sender) => conn.insert(sender),
                            Err(err) => {
                                tally.fail(format!("connect: {err}"));
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        },
                    };
                    let n = next_ip.fetch_add(1, Ordering::Relaxed);
                    let ip = Ipv4Addr::from(0x0a00_0000_u32 | (n as u32 & 0x00ff_ffff));
                    let req = Request::post("/auth/login")
                        .header("host", "call-center")
                        .header("content-type", "application/json")
                        .header("x-forwarded-for", ip.to_string())
                        .body(Full::new(Bytes::from_static(WRONG_LOGIN.as_bytes())))
                        .unwrap();
                    if sender.ready().await.is_err() {
                        // Closed by the other side between requests: nothing was sent.
                        conn = None;
                        continue;
                    }
                    match sender.send_request(req).await {
                        Ok(res) => {
                            let status = res.status();
                            let close = res
                                .headers()
                                .get("connection")
                                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                            match res.into_body().collect().await {
                                Ok(_) if status == StatusCode::UNPROCESSABLE_ENTITY => {
                                    tally.ok.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(_) => tally.fail(format!("status {status}")),
                                Err(err) => tally.fail(format!("body: {err}")),
                            }
                            if close {
                                conn = None;
                            }
                        }
                        Err(err) => {
                            tally.fail(format!("request: {err}"));
                            conn = None;
                        }
                    }
                }
            })
        })
        .collect()
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> std::io::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn stop_load(stop: &AtomicBool, clients: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .expect("a client hung")
            .unwrap();
    }
}

/// Blocking work (waiting for a process, sleeping between restarts) off the clients' runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Three instances behind NGINX, each SIGTERMed and restarted in turn `rounds()` times under
/// POST load; returns what the clients saw and NGINX's error log.
async fn rolling_restart_behind_nginx(keepalive: Option<u32>) -> (Arc<Tally>, String) {
    let ports: Vec<u16> = (0..3).map(|_| free_port().unwrap()).collect();
    let mut instances: Vec<Instance> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| Instance::bind(&format!("cc-{i}"), *port))
        .collect();
    let mut config = NginxConfig::least_conn(&ports);
    if let Some(n) = keepalive {
        config = config.keepalive(n);
    }
    let nginx = Nginx::start(&config).unwrap_or_else(|err| panic!("{err:?}"));
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, nginx.port()));

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = start_load(addr, stop.clone(), tally.clone());
    tokio::time::sleep(SETTLE).await;
    for round in 0..rounds() {
        for (i, &port) in ports.iter().enumerate() {
            let mut old = instances.remove(i);
            let (status, new) = blocking(move || {
                let status = old.terminate();
                (status, Instance::bind(&format!("cc-{i}-{round}"), port))
            })
            .await;
            assert!(status.success(), "instance {i} exited with {status}");
            instances.insert(i, new);
            tokio::time::sleep(SETTLE).await;
        }
    }
    stop_load(&stop, clients).await;
    let log = nginx.error_log();
    (tally, log)
}

/// NGINX's lines about connections an instance reset or closed under it (retried or not).
fn nginx_resets(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("reset by peer") || l.contains("prematurely closed"))
        .take(5)
        .collect()
}

fn nginx_upstream_errors(log: &str) -> BTreeMap<&'static str, usize> {
    [
        "upstream prematurely closed connection",
        "reset by peer",
        "Connection refused",
        "no live upstreams",
    ]
    .into_iter()
    .map(|needle| (needle, log.matches(needle).count()))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_behind_nginx_with_upstream_keepalive_loses_at_most_one_post() {
    let (tally, log) = rolling_restart_behind_nginx(Some(64)).await;
    eprintln!(
        "keepalive 64: {}; nginx: {:?} {:#?}",
        tally.summary(),
        nginx_upstream_errors(&log),
        nginx_resets(&log)
    );
    assert!(
        tally.ok.load(Ordering::Relaxed) > 1000,
        "{}",
        tally.summary()
    );
    assert!(
        tally.failed() <= rounds() as u64,
        "{}\n{log}",
        tally.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_behind_nginx_without_upstream_keepalive_loses_at_most_one_post() {
    let (tally, log) = rolling_restart_behind_nginx(None).await;
    eprintln!(
        "no keepalive: {}; nginx: {:?} {:#?}",
        tally.summary(),
        nginx_upstream_errors(&log),
        nginx_resets(&log)
    );
    assert!(
        tally.ok.load(Ordering::Relaxed) > 1000,
        "{}",
        tally.summary()
    );
    assert!(
        tally.failed() <= rounds() as u64,
        "{}\n{log}",
        tally.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_with_a_socket_held_as_systemd_does_lose_no_post() {
    // systemd's `restart` of a socket-activated service: the socket unit keeps the listening
    // socket; the old process drains and exits, then the new one takes the same socket. The
    // connections that arrive in between wait in its accept queue.
    let port = free_port().unwrap();
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    let mut instance = Instance::activated("cc-socket-0", &listener);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = start_load(addr, stop.clone(), tally.clone());
    tokio::time::sleep(SETTLE).await;
    let listener = Arc::new(listener);
    for restart in 1..=3 * rounds() {
        let held = listener.clone();
        let (status, next) = blocking(move || {
            let status = instance.terminate();
            (
                status,
                Instance::activated(&format!("cc-socket-{restart}"), &held),
            )
        })
        .await;
        assert!(status.success(), "exit status {status}");
        instance = next;
        tokio::time::sleep(SETTLE).await;
    }
    stop_load(&stop, clients).await;
    eprintln!("socket activation: {}", tally.summary());
    assert!(
        tally.ok.load(Ordering::Relaxed) > 1000,
        "{}",
        tally.summary()
    );
    assert_eq!(tally.failed(), 0, "{}", tally.summary());
    drop(instance);
}
