//! `cargo run --example cluster` as a user runs it: the built binary with two instances and one
//! replica, requests through its NGINX, fault commands on stdin, SIGINT at the end — and nothing
//! left listening afterwards.
//!
//! Build the examples first (`cargo test` does; `cargo test --test cluster_example` alone does
//! not): `cargo build --workspace --all-features --examples`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// `cargo test` builds the examples next to the test binaries: target/<profile>/examples/.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    profile_dir.join("examples").join(name)
}

/// The cluster process: its stdin, its stdout as lines, and a guard that SIGINTs (it tears its
/// servers down) and then kills it if the test fails half-way.
struct Cluster {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Cluster {
    fn start(args: &[&str]) -> Cluster {
        let binary = example_binary("cluster");
        assert!(
            binary.is_file() && example_binary("call_center").is_file(),
            "build the examples first: cargo build --workspace --all-features --examples"
        );
        // --no-build: a nested cargo would wait for the lock this `cargo test` holds.
        let mut child = Command::new(binary)
            .args(args)
            .arg("--no-build")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("cluster | {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Cluster {
            child,
            stdin: Some(stdin),
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line that `pred` accepts and returns it.
    fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("no line {what} within {timeout:?}"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the cluster closed its stdout before printing {what}")
                }
            }
        }
    }

    fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal("INT");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every `127.0.0.1:<port>` in `text`.
fn ports_in(text: &str) -> Vec<u16> {
    text.match_indices("127.0.0.1:")
        .filter_map(|(at, needle)| {
            let digits: String = text[at + needle.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

/// `GET path` with `Connection: close`: the status and the `x-instance-id` header.
fn get(port: u16, path: &str) -> (u16, Option<String>) {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, _) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let instance = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("x-instance-id"))
        .map(|(_, value)| value.trim().to_owned());
    (status, instance)
}

fn refuses_connections(port: u16) -> bool {
    matches!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
        Err(error) if error.kind() == ErrorKind::ConnectionRefused
    )
}

#[test]
fn the_cluster_serves_through_nginx_survives_faults_and_leaves_nothing_behind() {
    let mut cluster = Cluster::start(&["--instances", "2", "--replicas", "1"]);
    let nginx_line = cluster.wait_for("with the NGINX URL", Duration::from_secs(120), |l| {
        l.trim_start().starts_with("NGINX")
    });
    let nginx = ports_in(&nginx_line)[0];
    cluster.wait_for("`cluster ready`", Duration::from_secs(30), |l| {
        l == "cluster ready"
    });
    let printed: Vec<u16> = cluster.seen.iter().flat_map(|l| ports_in(l)).collect();
    // NGINX, 2 instances, Redis, the primary and the replica.
    let mut distinct = printed.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 6, "ports printed: {distinct:?}");
    assert!(
        cluster
            .seen
            .iter()
            .any(|l| l.contains("admin token") && l.len() > "  admin token   ".len() + 16),
        "no admin token printed"
    );

    // Through NGINX: ready, and answered by both instances.
    assert_eq!(get(nginx, "/health/ready").0, 200);
    let mut answered_by = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (status, instance) = get(nginx, "/api/ping");
        assert_eq!(status, 200);
        answered_by.insert(instance.unwrap());
    }
    assert_eq!(
        answered_by.into_iter().collect::<Vec<_>>(),
        ["cc-0", "cc-1"],
        "NGINX should spread requests over both instances"
    );

    // A crashed instance: NGINX keeps answering from the other one.
    cluster.send("kill 0");
    cluster.wait_for("confirming the kill", Duration::from_secs(10), |l| {
        l.contains("instance 0 killed")
    });
    for _ in 0..10 {
        let (status, instance) = get(nginx, "/api/ping");
        assert_eq!(status, 200);
        assert_eq!(instance.as_deref(), Some("cc-1"));
    }
    cluster.send("status");
    let line = cluster.wait_for("with instance 0's status", Duration::from_secs(20), |l| {
        l.starts_with("instance 0")
    });
    assert!(line.contains("down"), "{line}");
    let line = cluster.wait_for("with instance 1's status", Duration::from_secs(20), |l| {
        l.starts_with("instance 1")
    });
    assert!(line.contains("up, ready"), "{line}");

    // Unknown input prints help, and the cluster carries on.
    cluster.send("make me a sandwich");
    cluster.wait_for("`unknown command`", Duration::from_secs(10), |l| {
        l.starts_with("unknown command")
    });

    // Back on the same port; NGINX sends it requests again once its fail_timeout is over.
    cluster.send("restart 0");
    let line = cluster.wait_for("confirming the restart", Duration::from_secs(60), |l| {
        l.starts_with("instance 0 restarted") || l.starts_with("error")
    });
    assert!(line.contains("ready"), "{line}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, instance) = get(nginx, "/api/ping");
        assert_eq!(status, 200);
        if instance.as_deref() == Some("cc-0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "NGINX never sent a request to the restarted instance"
        );
        thread::sleep(Duration::from_millis(100));
    }

    // The end of stdin does not stop it ...
    drop(cluster.stdin.take());
    cluster.wait_for("`stdin closed`", Duration::from_secs(10), |l| {
        l.starts_with("stdin closed")
    });
    assert_eq!(get(nginx, "/api/ping").0, 200);
    assert!(cluster.child.try_wait().unwrap().is_none());

    // ... SIGINT does, and tears everything down.
    cluster.signal("INT");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = cluster.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the cluster did not exit within 30 s of SIGINT"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    eprintln!("teardown took {:?}", started.elapsed());
    for port in distinct {
        assert!(
            refuses_connections(port),
            "port {port} still accepts connections"
        );
    }
}

/// A request with an optional cookie and JSON body: the status, the `set-cookie` header's
/// `name=value`, and the body.
fn call(
    port: u16,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: &str,
) -> (u16, Option<String>, String) {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let cookie = cookie.map_or_else(String::new, |c| format!("cookie: {c}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n{cookie}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let set_cookie = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, value)| value.trim().split(';').next().unwrap().to_owned());
    (status, set_cookie, body.to_owned())
}

/// Polls `GET /api/me` with `cookie` on every instance until each answers 200 for `agent`,
/// within 15 s (a failover leaves the slot without a master for 1–3 s; 503s meanwhile).
fn wait_logged_in(ports: &[u16], cookie: &str, after: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for &port in ports {
        loop {
            let (status, _, body) = call(port, "GET", "/api/me", Some(cookie), "");
            if status == 200 {
                assert!(body.contains(r#""user":"agent""#), "{body}");
                break;
            }
            assert!(
                [503].contains(&status) && Instant::now() < deadline,
                "after {after}, instance on port {port} answers {status}: {body}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn the_cluster_runs_on_a_redis_cluster_through_a_failover_and_a_killed_master() {
    let mut cluster = Cluster::start(&[
        "--redis",
        "cluster",
        "--instances",
        "2",
        "--replicas",
        "0",
        "--no-nginx",
    ]);
    cluster.wait_for("`cluster ready`", Duration::from_secs(120), |l| {
        l == "cluster ready"
    });
    assert!(
        cluster.seen.iter().any(|l| l
            .trim_start()
            .starts_with("Redis         Cluster, nodes on ports")),
        "no Redis Cluster in the banner"
    );
    let instances: Vec<u16> = cluster
        .seen
        .iter()
        .filter(|l| l.trim_start().starts_with("instance "))
        .flat_map(|l| ports_in(l))
        .collect();
    assert_eq!(instances.len(), 2, "{:?}", cluster.seen);

    // Logged in on one instance, known on the other: the session is in the Redis Cluster.
    let (status, cookie, body) = call(
        instances[0],
        "POST",
        "/auth/login",
        None,
        r#"{"username":"agent","password":"welcomedly-demo"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let cookie = cookie.unwrap();
    wait_logged_in(&instances, &cookie, "logging in");

    // A graceful failover of slot 0's shard: roles swap, nothing is lost.
    cluster.send("failover 0");
    let line = cluster.wait_for("confirming the failover", Duration::from_secs(30), |l| {
        l.starts_with("CLUSTER FAILOVER") || l.starts_with("error")
    });
    assert!(line.starts_with("CLUSTER FAILOVER"), "{line}");
    wait_logged_in(&instances, &cookie, "failover 0");

    // A crashed master: its replica (the old master) takes over.
    cluster.send("kill-master 0");
    let line = cluster.wait_for("confirming the kill", Duration::from_secs(30), |l| {
        (l.starts_with("master ") && l.contains("killed")) || l.starts_with("error")
    });
    assert!(line.contains("promoted"), "{line}");
    let killed = ports_in(&format!("127.0.0.1:{}", &line["master ".len()..]))[0];
    wait_logged_in(&instances, &cookie, "kill-master 0");
    let (status, _, _) = call(instances[1], "GET", "/health/ready", None, "");
    assert_eq!(status, 200);

    // `status` shows the dead node and both instances ready.
    cluster.send("status");
    for i in 0..2 {
        let line = cluster.wait_for("with an instance's status", Duration::from_secs(20), |l| {
            l.starts_with(&format!("instance {i}"))
        });
        assert!(line.contains("up, ready"), "{line}");
    }
    let line = cluster.wait_for("with the killed node", Duration::from_secs(20), |l| {
        l.starts_with(&format!("Redis node    127.0.0.1:{killed} "))
    });
    assert!(line.contains("down"), "{line}");

    cluster.signal("INT");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = cluster.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the cluster did not exit within 30 s of SIGINT"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
