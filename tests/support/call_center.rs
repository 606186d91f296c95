//! Shared by the integration tests that run the call-center example as a process: start an
//! instance, send raw HTTP/1.1 requests, log in, open event streams.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `cargo test` builds the examples next to the test binaries: target/<profile>/examples/.
pub fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    profile_dir.join("examples").join("call_center")
}

pub struct Instance {
    pub child: Child,
    pub port: u16,
}

impl Instance {
    pub fn start(envs: &[(&str, String)]) -> Instance {
        Self::start_logging(envs, None)
    }

    /// Starts the example; with `stdout`, its stdout (the JSON log) goes to that file.
    pub fn start_logging(envs: &[(&str, String)], stdout: Option<&std::path::Path>) -> Instance {
        let port = welcomedly_testkit::free_port().unwrap();
        let mut cmd = Command::new(example_binary());
        cmd.env_clear()
            .env("PORT", port.to_string())
            .env("RUST_LOG", "warn")
            .env("WELCOMEDLY_DRAIN_GRACE_MS", "300")
            .env("WELCOMEDLY_DRAIN_DEADLINE_MS", "2000")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        if let Some(path) = stdout {
            cmd.stdout(std::fs::File::create(path).unwrap());
        }
        let child = cmd
            .spawn()
            .expect("the example binary is built by cargo test");
        let mut instance = Instance { child, port };
        // Ready when it answers HTTP (liveness runs no check), not merely when the port is open.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !instance.is_live() {
            if let Some(status) = instance.child.try_wait().unwrap() {
                panic!("the example exited during start-up ({status})");
            }
            assert!(
                Instant::now() < deadline,
                "the example did not start answering /health/live"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        instance
    }

    /// Whether `GET /health/live` answers 200.
    fn is_live(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut raw = String::new();
        write!(
            s,
            "GET /health/live HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
        )
        .is_ok()
            && s.read_to_string(&mut raw).is_ok()
            && raw.starts_with("HTTP/1.1 200")
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        self.request_with(
            method,
            path,
            &[("content-type", "application/json")],
            body.unwrap_or(""),
        )
    }

    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Response {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        write!(s, "{head}content-length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut raw = String::new();
        if let Err(e) = s.read_to_string(&mut raw) {
            panic!(
                "{method} {path}: reading the response failed ({e}); the instance on port {} {}; read so far: {raw:?}",
                self.port,
                match Command::new("kill")
                    .args(["-0", &self.child.id().to_string()])
                    .status()
                {
                    Ok(st) if st.success() => "is still running",
                    _ => "is gone",
                }
            );
        }
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap()[9..12].parse().unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Response {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the example did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The `name=value` of the session cookie a response sets.
pub fn session_cookie(r: &Response) -> String {
    let set = r
        .headers
        .iter()
        .find(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no session cookie in {:?}", r.headers));
    set.split(';').next().unwrap().to_owned()
}

/// Opens `GET /api/events` on `app` and returns the first status change's `data:` line received
/// within `within`, after `trigger` ran (once the stream is open).
pub fn first_event(
    app: &Instance,
    cookie: &str,
    within: Duration,
    trigger: impl FnOnce(),
) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    write!(
        s,
        "GET /api/events HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\ncookie: {cookie}\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    let mut trigger = Some(trigger);
    loop {
        match s.read(&mut buf) {
            Ok(0) => panic!("the event stream ended: {}", String::from_utf8_lossy(&raw)),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        assert!(!text.starts_with("HTTP/1.1 4"), "{text}");
        if text.contains("\r\n\r\n")
            && let Some(t) = trigger.take()
        {
            t();
        }
        // A status change (the `hello` and `presence` events name agents too, never a status).
        if let Some(line) = text
            .lines()
            .find(|l| l.starts_with("data:") && l.contains(r#""status":"#))
        {
            return line.to_owned();
        }
        assert!(
            start.elapsed() < within,
            "no event within {within:?}: {text}"
        );
    }
}

pub fn log_in(app: &Instance, user: &str) -> String {
    let body = format!(r#"{{"username":"{user}","password":"welcomedly-demo"}}"#);
    let r = app.request("POST", "/auth/login", Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    session_cookie(&r)
}

/// Opens `GET /api/events` with `cookie` and returns the connection and the response head.
pub fn open_stream(app: &Instance, cookie: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /api/events HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\ncookie: {cookie}\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&raw).contains("\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the head");
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    (s, text)
}

/// The cookie named `name` that a response sets, as `name=value`.
pub fn cookie_named(r: &Response, name: &str) -> Option<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.split(';').next().unwrap_or_default().to_owned())
        .find(|c| c.starts_with(&format!("{name}=")))
}
