//! Real `redis-server` instances on free loopback ports.
//!
//! ```no_run
//! use welcomedly_testkit::RedisServer;
//!
//! let redis = RedisServer::start()?;
//! redis.command(&["SET", "greeting", "hello"])?;
//! assert_eq!(redis.command(&["GET", "greeting"])?, "hello");
//!
//! redis.kill()?; // SIGKILL: clients see the connection drop
//! assert!(!redis.is_running());
//! redis.restart()?; // same port, empty data set
//! assert_eq!(redis.command(&["GET", "greeting"])?, "");
//! # Ok::<(), welcomedly_testkit::Error>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{self, POLL};
use crate::resp::{self, Reply};
use crate::{Error, ports};

/// How long a start may take before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a graceful stop may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports a first start tries when the port turns out to be taken.
const PORT_ATTEMPTS: usize = 10;
/// How long one readiness probe waits: short, because whoever answers on a port our server failed
/// to bind may never reply.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// How long a restart keeps retrying its old port.
const RESTART_PORT_WAIT: Duration = Duration::from_secs(5);

/// A `redis-server` child process in its own temp dir, on its own loopback port.
///
/// Persistence is off (`--save "" --appendonly no`), so a restart starts empty. Dropping it
/// kills the server and removes the temp dir, also when a test panics. All methods take `&self`,
/// so a server can be shared (e.g. in an `Arc`) with the code under test.
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    log: PathBuf,
    child: Mutex<Option<Child>>,
    // Last: dropped after the child is dead.
    dir: TempDir,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

enum Launch {
    PortTaken,
    Failed(Error),
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers.
    ///
    /// # Errors
    ///
    /// `redis-server` is not installed, no port is free, or the server did not come up (the error
    /// carries its log tail).
    pub fn start() -> Result<Self, Error> {
        let binary = process::find_on_path("redis-server").ok_or_else(|| {
            Error::not_installed(
                "redis-server (on PATH)",
                "install Redis (apt-get install -y redis-server)",
            )
        })?;
        let dir = process::temp_dir("welcomedly-redis-")?;
        let log = dir.path().join("redis.log");
        for _ in 0..PORT_ATTEMPTS {
            let port = ports::free_port()?;
            match launch(&binary, dir.path(), &log, port) {
                Ok(child) => {
                    return Ok(Self {
                        binary,
                        port,
                        log,
                        child: Mutex::new(Some(child)),
                        dir,
                    });
                }
                Err(Launch::PortTaken) => continue,
                Err(Launch::Failed(error)) => return Err(error),
            }
        }
        Err(Error::no_free_port(PORT_ATTEMPTS))
    }

    /// The server's port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's log file (stdout and stderr of every start).
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Runs one command on a fresh connection and returns the reply as text (see
    /// [`Reply::to_text`]: a nil reply is the empty string; use [`query`](Self::query) to tell
    /// nil from empty).
    ///
    /// # Errors
    ///
    /// The server is not reachable, or answered with an error reply.
    pub fn command(&self, args: &[&str]) -> Result<String, Error> {
        self.query(args).map(|reply| reply.to_text())
    }

    /// Runs one command on a fresh connection and returns the structured reply.
    ///
    /// # Errors
    ///
    /// The server is not reachable, or answered with an error reply.
    pub fn query(&self, args: &[&str]) -> Result<Reply, Error> {
        resp::request(self.port, args)
    }

    /// Whether the server process is alive.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.lock().as_mut().is_some_and(process::is_alive)
    }

    /// Stops the server gracefully (`SHUTDOWN NOSAVE`), killing it if it does not exit in time.
    /// Does nothing if it is not running.
    ///
    /// # Errors
    ///
    /// The server did not exit within 10 s and was killed instead.
    pub fn stop(&self) -> Result<(), Error> {
        let mut guard = self.lock();
        let Some(mut child) = guard.take() else {
            return Ok(());
        };
        // The server closes the connection without a reply when it shuts down.
        let _ = resp::request(self.port, &["SHUTDOWN", "NOSAVE"]);
        if process::wait_timeout(&mut child, STOP_TIMEOUT).is_some() {
            return Ok(());
        }
        process::kill_and_reap(&mut child);
        Err(Error::timeout(
            format_args!(
                "redis-server on 127.0.0.1:{} ignored SHUTDOWN for {STOP_TIMEOUT:?} and was killed",
                self.port
            ),
            None,
        ))
    }

    /// Kills the server with SIGKILL, as a crash would. Does nothing if it is not running.
    ///
    /// # Errors
    ///
    /// Never in practice; kept fallible for symmetry with [`stop`](Self::stop).
    pub fn kill(&self) -> Result<(), Error> {
        if let Some(mut child) = self.lock().take() {
            process::kill_and_reap(&mut child);
        }
        Ok(())
    }

    /// Starts the server again on the same port (after [`stop`](Self::stop) or
    /// [`kill`](Self::kill); a running server is killed first). The data set starts empty.
    ///
    /// # Errors
    ///
    /// The port stayed taken for 5 s, or the server did not come up.
    pub fn restart(&self) -> Result<(), Error> {
        let mut guard = self.lock();
        if let Some(mut old) = guard.take() {
            process::kill_and_reap(&mut old);
        }
        let deadline = Instant::now() + RESTART_PORT_WAIT;
        loop {
            match launch(&self.binary, self.dir.path(), &self.log, self.port) {
                Ok(child) => {
                    *guard = Some(child);
                    return Ok(());
                }
                Err(Launch::PortTaken) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100));
                }
                Err(Launch::PortTaken) => {
                    return Err(Error::start_failed(
                        format_args!(
                            "redis-server could not bind 127.0.0.1:{} again within \
                             {RESTART_PORT_WAIT:?}: another process took the port",
                            self.port
                        ),
                        &self.log,
                        process::log_tail(&self.log, 0),
                    ));
                }
                Err(Launch::Failed(error)) => return Err(error),
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        // A panic while holding the lock leaves the child handle intact; keep using it.
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.lock().take() {
            process::kill_and_reap(&mut child);
        }
    }
}

/// Spawns `redis-server` on `port` and waits until it is the process answering there.
fn launch(binary: &Path, dir: &Path, log: &Path, port: u16) -> Result<Child, Launch> {
    let (stdout, stderr, log_start) = process::open_log(log).map_err(Launch::Failed)?;
    let port_arg = port.to_string();
    let mut child = Command::new(binary)
        .args(["--port", &port_arg, "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "no", "--daemonize", "no", "--dir"])
        .arg(dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|source| {
            Launch::Failed(Error::io(
                format_args!("spawning {}", binary.display()),
                "check that redis-server is executable",
                source,
            ))
        })?;

    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = process::log_tail(log, log_start);
            if tail.contains("Address already in use") {
                return Err(Launch::PortTaken);
            }
            return Err(Launch::Failed(Error::start_failed(
                format_args!("redis-server on 127.0.0.1:{port} exited during start-up ({status})"),
                log,
                tail,
            )));
        }
        // Another test's server may own the port if ours failed to bind and has not exited
        // yet: only our own process id counts as up.
        if let Ok(info) = resp::request_within(port, &["INFO", "server"], PROBE_TIMEOUT) {
            let pid_line = format!("process_id:{}", child.id());
            if info.to_text().lines().any(|line| line.trim() == pid_line) {
                return Ok(child);
            }
        }
        if Instant::now() >= deadline {
            process::kill_and_reap(&mut child);
            return Err(Launch::Failed(Error::timeout(
                format_args!(
                    "redis-server on 127.0.0.1:{port} did not answer within {START_TIMEOUT:?}"
                ),
                Some((log, process::log_tail(log, log_start))),
            )));
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn a_taken_port_is_detected_so_the_caller_can_move_on() {
        let Some(binary) = process::find_on_path("redis-server") else {
            eprintln!("redis-server not installed; skipping");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("redis.log");
        let holder = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = holder.local_addr().unwrap().port();
        assert!(matches!(
            launch(&binary, dir.path(), &log, port),
            Err(Launch::PortTaken)
        ));
        drop(holder);
        let mut child = match launch(&binary, dir.path(), &log, port) {
            Ok(child) => child,
            Err(Launch::PortTaken) => panic!("port still taken"),
            Err(Launch::Failed(error)) => panic!("{error}"),
        };
        process::kill_and_reap(&mut child);
    }
}
