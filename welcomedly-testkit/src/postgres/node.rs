//! One PostgreSQL server process (primary or replica): launching it, waiting until it accepts
//! connections, pausing it, stopping it.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::binaries::PgBinaries;
use crate::Error;
use crate::process::{self, POLL, Signal};
use crate::run_as::RunAs;

/// How long a start (including crash recovery after a kill) may take.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a shutdown may take before the postmaster is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restart keeps retrying its old port.
const RESTART_PORT_WAIT: Duration = Duration::from_secs(5);

/// Libpq variables that would change where or how helper programs connect.
const PG_ENV: [&str; 10] = [
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGSERVICE",
    "PGSSLMODE",
    "PGPASSFILE",
];

/// What every PostgreSQL program of one cluster shares: the programs, the OS user, the temp dir.
#[derive(Debug)]
pub(crate) struct PgEnv {
    pub(crate) bins: PgBinaries,
    pub(crate) run_as: Option<RunAs>,
    pub(crate) base: PathBuf,
}

impl PgEnv {
    /// A command for a server-side program, run as the server user, in the cluster's dir.
    pub(crate) fn server_command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir(&self.base)
            // The server user cannot read root's home; nothing there is needed.
            .env("HOME", &self.base)
            .stdin(Stdio::null());
        for var in PG_ENV {
            command.env_remove(var);
        }
        if let Some(user) = self.run_as {
            user.apply(&mut command);
        }
        command
    }

    /// A command for `psql`, run as the current user (trust auth over TCP needs no OS user).
    pub(crate) fn client_command(&self) -> Command {
        let mut command = Command::new(&self.bins.psql);
        command.env("PGCONNECT_TIMEOUT", "5").stdin(Stdio::null());
        for var in PG_ENV {
            command.env_remove(var);
        }
        command
    }

    /// Runs `command` to completion; a failure carries its stderr.
    pub(crate) fn run(command: &mut Command, what: impl fmt::Display) -> Result<(), Error> {
        let output = command.output().map_err(|source| {
            Error::io(
                format_args!("spawning {what}"),
                "check that PostgreSQL is installed correctly",
                source,
            )
        })?;
        if output.status.success() {
            return Ok(());
        }
        Err(Error::command_failed(
            format_args!("{what} failed ({})", output.status),
            &String::from_utf8_lossy(&output.stderr),
            "check the PostgreSQL installation and that the temp dir is writable",
        ))
    }
}

/// Why a launch did not produce a ready server.
pub(crate) enum Launch {
    /// Another process holds the port; try another (or wait).
    PortTaken,
    Failed(Error),
}

/// How hard to stop a server (`pg_ctl stop -m <mode>`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Shutdown {
    /// Disconnect clients, checkpoint, exit.
    Fast,
    /// Quit at once, like a crash; the next start runs crash recovery.
    Immediate,
}

/// A primary or replica: its data dir, port, log and (while running) its postmaster process.
#[derive(Debug)]
pub(crate) struct PgNode {
    pub(crate) label: String,
    pub(crate) data_dir: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) port: u16,
    child: Mutex<Option<Child>>,
    paused: AtomicBool,
}

impl PgNode {
    pub(crate) fn new(label: String, data_dir: PathBuf, log: PathBuf, port: u16) -> Self {
        Self {
            label,
            data_dir,
            log,
            port,
            child: Mutex::new(None),
            paused: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// SIGSTOPs the postmaster, then every process it forked (backends, WAL sender or receiver,
    /// checkpointer, …). The postmaster goes first so it cannot fork a new backend in between.
    pub(crate) fn pause(&self) -> Result<(), Error> {
        let mut guard = self.lock();
        let Some(pid) = guard
            .as_mut()
            .and_then(|child| process::is_alive(child).then(|| child.id()))
        else {
            return Err(Error::not_running(
                format_args!("postgres ({}) on 127.0.0.1:{}", self.label, self.port),
                "restart it before pausing it",
            ));
        };
        let postmaster = pid;
        let what = format!("postgres ({})", self.label);
        process::signal(&[postmaster], Signal::Stop, &what)?;
        self.paused.store(true, Ordering::SeqCst);
        process::signal(&process::descendants(postmaster), Signal::Stop, &what)
    }

    /// SIGCONTs every process of a paused node, the postmaster last. Does nothing if not paused.
    pub(crate) fn resume(&self) -> Result<(), Error> {
        let guard = self.lock();
        self.resume_pid(guard.as_ref().map(Child::id))
    }

    fn resume_pid(&self, postmaster: Option<u32>) -> Result<(), Error> {
        if !self.paused.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let Some(postmaster) = postmaster else {
            return Ok(());
        };
        let what = format!("postgres ({})", self.label);
        let children = process::signal(&process::descendants(postmaster), Signal::Cont, &what);
        process::signal(&[postmaster], Signal::Cont, &what).and(children)
    }

    pub(crate) fn is_running(&self) -> bool {
        self.lock().as_mut().is_some_and(process::is_alive)
    }

    /// Spawns the postmaster (stdout and stderr to the log); returns where this start's log begins.
    pub(crate) fn spawn(&self, env: &PgEnv) -> Result<u64, Error> {
        let (stdout, stderr, log_start) = process::open_log(&self.log)?;
        let child = env
            .server_command(&env.bins.postgres)
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-p", &self.port.to_string()])
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|source| {
                Error::io(
                    format_args!("spawning postgres for the {}", self.label),
                    "check that PostgreSQL is installed correctly",
                    source,
                )
            })?;
        *self.lock() = Some(child);
        Ok(log_start)
    }

    /// Waits until the postmaster says it accepts connections. On failure the child is reaped.
    pub(crate) fn wait_ready(&self, log_start: u64) -> Result<(), Launch> {
        let mut guard = self.lock();
        let Some(child) = guard.as_mut() else {
            return Err(Launch::Failed(Error::start_failed(
                format_args!("the {} was stopped while starting", self.label),
                &self.log,
                process::log_tail(&self.log, log_start),
            )));
        };
        let pid = child.id();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                *guard = None;
                let tail = process::log_tail(&self.log, log_start);
                if tail.contains("could not create any TCP/IP sockets")
                    || tail.contains("Address already in use")
                {
                    return Err(Launch::PortTaken);
                }
                return Err(Launch::Failed(Error::start_failed(
                    format_args!(
                        "postgres ({}) on 127.0.0.1:{} exited during start-up ({status})",
                        self.label, self.port
                    ),
                    &self.log,
                    tail,
                )));
            }
            if accepts_connections(&self.data_dir, pid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                process::kill_and_reap(child);
                *guard = None;
                return Err(Launch::Failed(Error::timeout(
                    format_args!(
                        "postgres ({}) on 127.0.0.1:{} did not accept connections within \
                         {START_TIMEOUT:?}",
                        self.label, self.port
                    ),
                    Some((&self.log, process::log_tail(&self.log, log_start))),
                )));
            }
            thread::sleep(POLL);
        }
    }

    /// Starts on this node's port, retrying for a while if it is still taken.
    pub(crate) fn restart(&self, env: &PgEnv) -> Result<(), Error> {
        self.shutdown(env, Shutdown::Fast)?;
        let deadline = Instant::now() + RESTART_PORT_WAIT;
        loop {
            let log_start = self.spawn(env)?;
            match self.wait_ready(log_start) {
                Ok(()) => return Ok(()),
                Err(Launch::PortTaken) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100));
                }
                Err(Launch::PortTaken) => {
                    return Err(Error::start_failed(
                        format_args!(
                            "postgres ({}) could not bind 127.0.0.1:{} again within \
                             {RESTART_PORT_WAIT:?}: another process took the port",
                            self.label, self.port
                        ),
                        &self.log,
                        process::log_tail(&self.log, log_start),
                    ));
                }
                Err(Launch::Failed(error)) => return Err(error),
            }
        }
    }

    /// Asks the postmaster to shut down without waiting. Returns whether one was running.
    pub(crate) fn begin_shutdown(&self, env: &PgEnv, mode: Shutdown) -> bool {
        let mut guard = self.lock();
        let Some(child) = guard.as_mut() else {
            return false;
        };
        if !process::is_alive(child) {
            return true;
        }
        // A frozen postmaster would not act on pg_ctl's signal, and SIGKILLing it would leave its
        // frozen backends behind for good.
        let _ = self.resume_pid(Some(child.id()));
        let mode = match mode {
            Shutdown::Fast => "fast",
            Shutdown::Immediate => "immediate",
        };
        // pg_ctl signals the postmaster, which takes its backends down with it; SIGKILL would
        // orphan them. We wait for our own child instead of letting pg_ctl poll (`-W`).
        let signalled = env
            .server_command(&env.bins.pg_ctl)
            .args(["stop", "-W", "-s", "-m", mode, "-D"])
            .arg(&self.data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !signalled {
            let _ = child.kill();
        }
        true
    }

    /// Waits for a shutdown begun by [`begin_shutdown`](Self::begin_shutdown); SIGKILLs the
    /// postmaster if it takes too long.
    pub(crate) fn finish_shutdown(&self) -> Result<(), Error> {
        let Some(mut child) = self.lock().take() else {
            return Ok(());
        };
        self.paused.store(false, Ordering::SeqCst);
        if process::wait_timeout(&mut child, STOP_TIMEOUT).is_some() {
            return Ok(());
        }
        process::kill_and_reap(&mut child);
        Err(Error::timeout(
            format_args!(
                "postgres ({}) on 127.0.0.1:{} did not shut down within {STOP_TIMEOUT:?} and \
                 was killed",
                self.label, self.port
            ),
            None,
        ))
    }

    pub(crate) fn shutdown(&self, env: &PgEnv, mode: Shutdown) -> Result<(), Error> {
        if self.begin_shutdown(env, mode) {
            self.finish_shutdown()
        } else {
            Ok(())
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        // A panic while holding the lock leaves the child handle intact; keep using it.
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `postmaster.pid` says process `pid` accepts connections.
///
/// Line 1 is the postmaster's pid and line 8 its status: `ready` on a primary, `standby` on a hot
/// standby that accepts read-only connections (this is what `pg_ctl start -w` waits for). Checking
/// the pid means a server of another test on the same port can never be mistaken for ours.
fn accepts_connections(data_dir: &Path, pid: u32) -> bool {
    let Ok(text) = fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let mut lines = text.lines();
    let owner = lines
        .next()
        .and_then(|line| line.trim().parse::<u32>().ok());
    let status = lines.nth(6).map(str::trim);
    owner == Some(pid) && matches!(status, Some("ready" | "standby"))
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn reads_readiness_from_postmaster_pid() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!accepts_connections(dir.path(), 42));
        let pid_file = |status: &str| {
            format!("42\n/data\n1700000000\n20001\n/tmp\n127.0.0.1\n  1234     5\n{status}\n")
        };
        fs::write(dir.path().join("postmaster.pid"), pid_file("starting")).unwrap();
        assert!(!accepts_connections(dir.path(), 42));
        fs::write(dir.path().join("postmaster.pid"), pid_file("ready   ")).unwrap();
        assert!(accepts_connections(dir.path(), 42));
        assert!(!accepts_connections(dir.path(), 43));
        fs::write(dir.path().join("postmaster.pid"), pid_file("standby ")).unwrap();
        assert!(accepts_connections(dir.path(), 42));
    }
}
