//! One `redis-server` child process (a cluster node, a replica, a sentinel) that can be killed,
//! frozen and started again on the same ports: the part `RedisCluster` and `RedisSentinel`
//! share.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use crate::Error;
use crate::process::{self, Signal};
use crate::redis::{Launch, launch_with};

/// How many fresh ports a first start tries when a port turns out to be taken.
const PORT_ATTEMPTS: usize = 10;
/// How long a restart keeps retrying its old port.
const RESTART_PORT_WAIT: Duration = Duration::from_secs(5);

/// The arguments of one start: the port, what goes before the standard arguments (a config file,
/// `--sentinel`) and what goes after them (`--option value` pairs).
pub(crate) struct Args {
    pub(crate) port: u16,
    pub(crate) before: Vec<OsString>,
    pub(crate) after: Vec<String>,
}

/// A `redis-server` child in its own directory. Dropping it kills the process.
pub(crate) struct RedisProcess {
    binary: PathBuf,
    dir: PathBuf,
    log: PathBuf,
    args: Args,
    child: Option<Child>,
    paused: bool,
}

impl RedisProcess {
    /// Starts a server in `dir` (created if missing); `args` picks fresh ports and the arguments
    /// for each attempt, so a port another process took in the meantime is simply skipped.
    pub(crate) fn start(
        binary: &Path,
        dir: PathBuf,
        mut args: impl FnMut() -> Result<Args, Error>,
    ) -> Result<Self, Error> {
        std::fs::create_dir_all(&dir).map_err(|source| {
            Error::io(
                format_args!("creating {}", dir.display()),
                "check that the temp dir is writable",
                source,
            )
        })?;
        let log = dir.join("redis.log");
        for _ in 0..PORT_ATTEMPTS {
            let attempt = args()?;
            match launch(binary, &dir, &log, &attempt) {
                Ok(child) => {
                    return Ok(Self {
                        binary: binary.to_path_buf(),
                        dir,
                        log,
                        args: attempt,
                        child: Some(child),
                        paused: false,
                    });
                }
                Err(Launch::PortTaken) => continue,
                Err(Launch::Failed(error)) => return Err(error),
            }
        }
        Err(Error::no_free_port(PORT_ATTEMPTS))
    }

    /// The port on 127.0.0.1.
    pub(crate) fn port(&self) -> u16 {
        self.args.port
    }

    /// The arguments after the standard ones (`--cluster-port 21001`, …).
    pub(crate) fn args_after(&self) -> &[String] {
        &self.args.after
    }

    /// The server's log file.
    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// Whether the process is alive (also while paused).
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(process::is_alive)
    }

    /// Whether the process is frozen by [`pause`](Self::pause).
    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    fn describe(&self) -> String {
        format!("redis-server on 127.0.0.1:{}", self.args.port)
    }

    /// SIGKILL, as a crash would. Does nothing if it is not running.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_and_reap(&mut child);
        }
        self.paused = false;
    }

    /// SIGSTOP: connections are accepted, nothing is answered. Pausing twice does nothing.
    pub(crate) fn pause(&mut self) -> Result<(), Error> {
        if self.paused {
            return Ok(());
        }
        let Some(pid) = self
            .child
            .as_mut()
            .and_then(|child| process::is_alive(child).then(|| child.id()))
        else {
            return Err(Error::not_running(
                self.describe(),
                "restart it before pausing it",
            ));
        };
        process::signal(&[pid], Signal::Stop, self.describe())?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONT. Does nothing if it is not paused.
    pub(crate) fn resume(&mut self) -> Result<(), Error> {
        if !self.paused {
            return Ok(());
        }
        self.paused = false;
        match &self.child {
            Some(child) => process::signal(&[child.id()], Signal::Cont, self.describe()),
            None => Ok(()),
        }
    }

    /// Starts the process again with the same ports and arguments (killing it first if it
    /// runs). What it keeps on disk (a cluster node's `nodes.conf`, a sentinel's rewritten
    /// config) survives; its data set does not (persistence is off).
    pub(crate) fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        let deadline = Instant::now() + RESTART_PORT_WAIT;
        loop {
            match launch(&self.binary, &self.dir, &self.log, &self.args) {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(Launch::PortTaken) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100));
                }
                Err(Launch::PortTaken) => {
                    return Err(Error::start_failed(
                        format_args!(
                            "{} could not bind its ports again within {RESTART_PORT_WAIT:?}: \
                             another process took one",
                            self.describe()
                        ),
                        &self.log,
                        process::log_tail(&self.log, 0),
                    ));
                }
                Err(Launch::Failed(error)) => return Err(error),
            }
        }
    }
}

fn launch(binary: &Path, dir: &Path, log: &Path, args: &Args) -> Result<Child, Launch> {
    let before: Vec<&std::ffi::OsStr> = args.before.iter().map(OsString::as_os_str).collect();
    let after: Vec<&str> = args.after.iter().map(String::as_str).collect();
    launch_with(binary, dir, log, args.port, &before, &after)
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
