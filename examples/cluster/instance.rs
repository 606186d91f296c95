//! One `call_center` child process: started with the cluster's environment, probed over HTTP,
//! stopped with SIGTERM (it drains) and, past a deadline, SIGKILL. Its guard kills it on drop,
//! so a panic leaves no instance behind.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a (re)start may take until `/health/ready` answers 200: the first start hashes the
/// demo passwords and connects to Redis and PostgreSQL.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one HTTP probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an instance may drain after SIGTERM before it is killed (its drain deadline is 5 s).
pub(crate) const DRAIN_WAIT: Duration = Duration::from_secs(8);

/// An instance and (while it runs) its process.
#[derive(Debug)]
pub(crate) struct Instance {
    pub(crate) index: usize,
    pub(crate) id: String,
    pub(crate) port: u16,
    pub(crate) log: PathBuf,
    child: Option<Child>,
    /// How the last run ended, for `status`.
    exit: Option<ExitStatus>,
}

/// What `status` says about an instance.
#[derive(Debug)]
pub(crate) enum State {
    Ready,
    NotReady(String),
    Down(String),
}

impl Instance {
    pub(crate) fn new(index: usize, port: u16, log: PathBuf) -> Self {
        Self {
            index,
            id: format!("cc-{index}"),
            port,
            log,
            child: None,
            exit: None,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Spawns the binary with `env` (plus `PORT` and the instance id); stdout and stderr go to
    /// the instance's log.
    pub(crate) fn spawn(&mut self, binary: &Path, env: &[(String, String)]) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| {
                format!(
                    "cannot open {} ({e}): check the temp dir",
                    self.log.display()
                )
            })?;
        let err = log
            .try_clone()
            .map_err(|e| format!("cannot share {} ({e})", self.log.display()))?;
        let child = Command::new(binary)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PORT", self.port.to_string())
            .env("WELCOMEDLY_INSTANCE_ID", &self.id)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {} ({e}): build it with `cargo build --example call_center`",
                    binary.display()
                )
            })?;
        self.child = Some(child);
        self.exit = None;
        Ok(())
    }

    /// Waits until `/health/ready` answers 200.
    pub(crate) fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "instance {} exited during start-up ({status}); the end of its log:\n{}",
                    self.index,
                    self.log_tail()
                ));
            }
            if matches!(get(self.port, "/health/ready"), Ok(response) if response.status == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "instance {} was not ready within {READY_TIMEOUT:?}; the end of its log:\n{}",
                    self.index,
                    self.log_tail()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the log (the temp dir is gone once a failed start has torn down).
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let skip = lines.len().saturating_sub(15);
        lines.get(skip..).unwrap_or_default().join("\n")
    }

    /// Whether the process has exited (and records how).
    fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                self.exit = Some(status);
                Some(status)
            }
            _ => None,
        }
    }

    pub(crate) fn is_running(&mut self) -> bool {
        self.exited();
        self.child.is_some()
    }

    pub(crate) fn state(&mut self) -> State {
        if !self.is_running() {
            return State::Down(match self.exit {
                Some(status) => format!("exited: {status}"),
                None => "not started".to_owned(),
            });
        }
        match get(self.port, "/health/ready") {
            Ok(response) if response.status == 200 => State::Ready,
            Ok(response) => State::NotReady(format!("/health/ready answered {}", response.status)),
            Err(error) => State::NotReady(format!("/health/ready failed: {error}")),
        }
    }

    /// SIGKILL, as a crash would.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.exit = child.wait().ok();
        }
    }

    /// Sends SIGTERM (the instance drains) without waiting.
    pub(crate) fn begin_stop(&mut self) {
        if self.is_running()
            && let Some(child) = &self.child
        {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Waits until `deadline` for a stop begun with [`begin_stop`](Self::begin_stop), then
    /// kills. Returns whether it exited by itself.
    pub(crate) fn finish_stop(&mut self, deadline: Instant) -> bool {
        while self.child.is_some() {
            if self.exited().is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                self.kill();
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// SIGTERM, then SIGKILL after [`DRAIN_WAIT`].
    pub(crate) fn stop(&mut self) -> bool {
        self.begin_stop();
        self.finish_stop(Instant::now() + DRAIN_WAIT)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Teardown normally stopped it already; on a panic, drain briefly, then kill.
        if self.child.is_some() {
            self.begin_stop();
            self.finish_stop(Instant::now() + Duration::from_secs(2));
        }
    }
}

/// An HTTP response, as much of it as the launcher needs.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
}

/// `GET path` on `127.0.0.1:port` with `Connection: close`.
pub(crate) fn get(port: u16, path: &str) -> std::io::Result<Response> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    )?;
    // The status line is all we read: the first 12 bytes, `HTTP/1.1 200`.
    let mut head = [0_u8; 12];
    stream.read_exact(&mut head)?;
    let status = std::str::from_utf8(head.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("the answer is not an HTTP/1.1 status line"))?;
    Ok(Response { status })
}
