//! Real `redis-server` instances on free loopback ports.
//!
//! ```no_run
//! use std::time::Duration;
//! use welcomedly_testkit::RedisServer;
//!
//! let redis = RedisServer::start()?;
//! redis.command(&["SET", "greeting", "hello"])?;
//! assert_eq!(redis.command(&["GET", "greeting"])?, "hello");
//!
//! redis.pause()?; // SIGSTOP: connections are accepted, nothing is answered
//! let timeout = Duration::from_millis(200);
//! assert!(redis.query_within(&["PING"], timeout).unwrap_err().is_io());
//! redis.resume()?; // SIGCONT: everything queued is answered
//!
//! redis.kill()?; // SIGKILL: clients see the connection drop
//! assert!(!redis.is_running());
//! redis.restart()?; // same port, empty data set
//! assert_eq!(redis.command(&["GET", "greeting"])?, "");
//! # Ok::<(), welcomedly_testkit::Error>(())
//! ```

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{self, POLL, Signal};
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
    paused: AtomicBool,
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

/// Why a [`launch_with`] failed.
pub(crate) enum Launch {
    /// Another process holds the port (or the cluster bus port): try other ports.
    PortTaken,
    /// Anything else.
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
                        paused: AtomicBool::new(false),
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

    /// [`query`](Self::query) with its own connect, read and write timeout (instead of 5 s), to
    /// see that a [paused](Self::pause) server does not answer.
    ///
    /// # Errors
    ///
    /// The server is not reachable or did not answer within `timeout` ([`Error::is_io`]), or it
    /// answered with an error reply.
    pub fn query_within(&self, args: &[&str], timeout: Duration) -> Result<Reply, Error> {
        resp::request_within(self.port, args, timeout)
    }

    /// Whether the server process is alive (also while [paused](Self::pause)).
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.lock().as_mut().is_some_and(process::is_alive)
    }

    /// Whether the server is [paused](Self::pause).
    #[must_use]
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Freezes the server with SIGSTOP, like a process stuck in a long GC pause or a VM that was
    /// suspended: the kernel still accepts TCP connections (they queue in the listen backlog) and
    /// takes in what clients send, but nothing is answered until [`resume`](Self::resume).
    /// Clients see timeouts, not refused connections. Pausing a paused server does nothing.
    ///
    /// [`stop`](Self::stop), [`kill`](Self::kill), [`restart`](Self::restart) and dropping the
    /// handle work on a paused server too.
    ///
    /// # Errors
    ///
    /// The server is not running ([`Error::is_not_running`]), or `kill -STOP` failed.
    pub fn pause(&self) -> Result<(), Error> {
        let mut guard = self.lock();
        let Some(pid) = guard
            .as_mut()
            .and_then(|child| process::is_alive(child).then(|| child.id()))
        else {
            return Err(Error::not_running(
                format_args!("redis-server on 127.0.0.1:{}", self.port),
                "restart it before pausing it",
            ));
        };
        process::signal(&[pid], Signal::Stop, self.describe())?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Lets a [paused](Self::pause) server run again (SIGCONT); it answers every queued request.
    /// Does nothing if it is not paused or not running.
    ///
    /// # Errors
    ///
    /// `kill -CONT` failed.
    pub fn resume(&self) -> Result<(), Error> {
        let guard = self.lock();
        self.resume_locked(&guard)
    }

    fn resume_locked(&self, guard: &Option<Child>) -> Result<(), Error> {
        if !self.paused.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        match guard {
            Some(child) => process::signal(&[child.id()], Signal::Cont, self.describe()),
            None => Ok(()),
        }
    }

    fn describe(&self) -> String {
        format!("redis-server on 127.0.0.1:{}", self.port)
    }

    /// Stops the server gracefully (`SHUTDOWN NOSAVE`), killing it if it does not exit in time.
    /// Does nothing if it is not running.
    ///
    /// # Errors
    ///
    /// The server did not exit within 10 s and was killed instead.
    pub fn stop(&self) -> Result<(), Error> {
        let mut guard = self.lock();
        // A frozen server would never read SHUTDOWN.
        let resumed = self.resume_locked(&guard);
        let Some(mut child) = guard.take() else {
            return resumed;
        };
        if resumed.is_err() {
            process::kill_and_reap(&mut child);
            return resumed;
        }
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
        // SIGKILL ends a stopped process too.
        if let Some(mut child) = self.lock().take() {
            process::kill_and_reap(&mut child);
        }
        self.paused.store(false, Ordering::SeqCst);
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
        self.paused.store(false, Ordering::SeqCst);
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
    launch_with(binary, dir, log, port, &[], &[])
}

/// [`launch`] with arguments before the standard ones (a config file must come first, then
/// `--sentinel`) and after them (extra `--option value` pairs, e.g. cluster mode).
pub(crate) fn launch_with(
    binary: &Path,
    dir: &Path,
    log: &Path,
    port: u16,
    before: &[&OsStr],
    after: &[&str],
) -> Result<Child, Launch> {
    let (stdout, stderr, log_start) = process::open_log(log).map_err(Launch::Failed)?;
    let port_arg = port.to_string();
    let mut child = Command::new(binary)
        .args(before)
        .args(["--port", &port_arg, "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "no", "--daemonize", "no", "--dir"])
        .arg(dir)
        .args(after)
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
