//! A real PostgreSQL primary with streaming replicas on free loopback ports.
//!
//! [`PgCluster::start`] runs `initdb` (trust auth, `wal_level = replica`, hot standby,
//! `fsync = off`), starts the primary, takes one `pg_basebackup -R -X stream` per replica (each
//! with its own replication slot, so a stopped replica can always catch up) and starts the
//! replicas. Everything lives in one temp dir; dropping the cluster stops every server
//! (`pg_ctl stop -m immediate`) and removes the dir, also when a test panics. When the tests run
//! as root, the servers run as the `postgres` OS user.
//!
//! ```no_run
//! use std::time::Duration;
//! use welcomedly_testkit::{Node, PgCluster};
//!
//! let pg = PgCluster::start(1)?;
//! pg.psql(Node::Primary, "CREATE TABLE t (id int)")?;
//! pg.psql(Node::Primary, "INSERT INTO t VALUES (1)")?;
//! pg.wait_replica_caught_up(0, Duration::from_secs(5))?;
//! assert_eq!(pg.psql(Node::Replica(0), "SELECT count(*) FROM t")?, "1");
//!
//! pg.kill_replica(0)?; // like a crash: connections are refused
//! assert!(pg.psql(Node::Replica(0), "SELECT 1").is_err());
//! pg.restart_replica(0)?; // same port, same data: it catches up again
//! # Ok::<(), welcomedly_testkit::Error>(())
//! ```

mod binaries;
mod node;

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use self::binaries::PgBinaries;
use self::node::{Launch, PgEnv, PgNode, Shutdown};
use crate::process::{self, POLL};
use crate::run_as::RunAs;
use crate::{Error, ports};

/// How many fresh ports a first start tries when a port turns out to be taken.
const PORT_ATTEMPTS: usize = 10;
/// How long [`PgCluster::set_replay_delay`] waits for the new setting to be visible.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`PgCluster::promote`] waits for the replica to leave recovery.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// A node of a [`PgCluster`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    /// The primary (read-write).
    Primary,
    /// The replica with this index, `0..replica_count()` (read-only hot standby).
    Replica(usize),
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Primary => f.write_str("primary"),
            Self::Replica(index) => write!(f, "replica {index}"),
        }
    }
}

/// A running PostgreSQL primary and its streaming replicas, each a child process of the test.
///
/// Connect as user `postgres` to database `postgres` (trust auth, no password). All methods take
/// `&self`, so a cluster can be shared (e.g. in an `Arc`) with the code under test.
#[derive(Debug)]
pub struct PgCluster {
    env: PgEnv,
    primary: PgNode,
    replicas: Vec<PgNode>,
    // Last: removed after every server is down.
    dir: TempDir,
}

impl PgCluster {
    /// Starts a primary and `replicas` streaming replicas and waits until each accepts
    /// connections.
    ///
    /// # Errors
    ///
    /// A PostgreSQL program is missing, the tests run as root without a `postgres` OS user,
    /// `initdb` or `pg_basebackup` failed, or a server did not come up (the error carries its
    /// log tail).
    pub fn start(replicas: usize) -> Result<Self, Error> {
        let bins = PgBinaries::find()?;
        let run_as = RunAs::for_postgres()?;
        let dir = process::temp_dir("welcomedly-pg-")?;
        if let Some(user) = run_as {
            // The temp dir is already 0700; the server user must own it to create data dirs
            // and sockets in it.
            user.chown(dir.path())?;
        }
        let env = PgEnv {
            bins,
            run_as,
            base: dir.path().to_path_buf(),
        };

        let primary_dir = env.base.join("primary");
        PgEnv::run(
            env.server_command(&env.bins.initdb)
                .arg("-D")
                .arg(&primary_dir)
                .args(["-U", "postgres", "--auth=trust", "--no-sync"])
                .args(["--locale=C", "--encoding=UTF8"]),
            "initdb",
        )?;
        configure_primary(&env.base, &primary_dir, replicas)?;

        let primary =
            start_on_free_port(&env, "primary", &primary_dir, &env.base.join("primary.log"))?;
        let mut cluster = Self {
            env,
            primary,
            replicas: Vec::with_capacity(replicas),
            dir,
        };
        // From here on, an error drops `cluster`, which stops whatever already runs.
        cluster.clone_replicas(replicas)?;
        cluster.start_replicas(replicas)?;
        Ok(cluster)
    }

    /// Takes the replicas' base backups, all at once.
    fn clone_replicas(&self, count: usize) -> Result<(), Error> {
        let port = self.primary.port.to_string();
        let children: Vec<(usize, std::io::Result<Child>)> = (0..count)
            .map(|index| {
                let child = self
                    .env
                    .server_command(&self.env.bins.pg_basebackup)
                    .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-D"])
                    .arg(self.env.base.join(format!("replica{index}")))
                    // -R writes standby.signal and primary_conninfo; -C -S a slot that keeps
                    // the WAL this replica still needs while it is stopped.
                    .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"])
                    .args(["-C", "-S", &format!("replica_{index}")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn();
                (index, child)
            })
            .collect();
        // Wait for every backup before reporting the first failure, so none is left running.
        let mut first_error = None;
        for (index, child) in children {
            let what = format!("pg_basebackup for replica {index}");
            let result = match child.and_then(Child::wait_with_output) {
                Ok(output) if output.status.success() => Ok(()),
                Ok(output) => Err(Error::command_failed(
                    format_args!("{what} failed ({})", output.status),
                    &String::from_utf8_lossy(&output.stderr),
                    "see the primary's log in the cluster's temp dir; run the test again if it \
                     was a transient failure",
                )),
                Err(source) => Err(Error::io(
                    what,
                    "check that PostgreSQL is installed correctly",
                    source,
                )),
            };
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Starts every replica at once, then waits for each, moving to a new port on a collision.
    fn start_replicas(&mut self, count: usize) -> Result<(), Error> {
        let mut log_starts = Vec::with_capacity(count);
        for index in 0..count {
            let node = PgNode::new(
                format!("replica {index}"),
                self.env.base.join(format!("replica{index}")),
                self.env.base.join(format!("replica{index}.log")),
                ports::free_port()?,
            );
            log_starts.push(node.spawn(&self.env)?);
            self.replicas.push(node);
        }
        for (node, log_start) in self.replicas.iter_mut().zip(log_starts) {
            let mut outcome = node.wait_ready(log_start);
            for _ in 0..PORT_ATTEMPTS {
                if !matches!(outcome, Err(Launch::PortTaken)) {
                    break;
                }
                node.port = ports::free_port()?;
                outcome = node
                    .spawn(&self.env)
                    .map_err(Launch::Failed)
                    .and_then(|log_start| node.wait_ready(log_start));
            }
            match outcome {
                Ok(()) => {}
                Err(Launch::PortTaken) => return Err(Error::no_free_port(PORT_ATTEMPTS)),
                Err(Launch::Failed(error)) => return Err(error),
            }
        }
        Ok(())
    }

    /// How many replicas the cluster has.
    #[must_use]
    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    /// The temp dir holding every data dir, log and socket.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres` for the primary.
    #[must_use]
    pub fn primary_url(&self) -> String {
        url(self.primary.port)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres` for replica `index`.
    ///
    /// # Errors
    ///
    /// No such replica.
    pub fn replica_url(&self, index: usize) -> Result<String, Error> {
        self.replica(index).map(|node| url(node.port))
    }

    /// The URLs of all replicas, in index order.
    #[must_use]
    pub fn replica_urls(&self) -> Vec<String> {
        self.replicas.iter().map(|node| url(node.port)).collect()
    }

    /// The URL of `node`.
    ///
    /// # Errors
    ///
    /// No such replica.
    pub fn url(&self, node: Node) -> Result<String, Error> {
        self.node(node).map(|node| url(node.port))
    }

    /// The primary's port on 127.0.0.1.
    #[must_use]
    pub fn primary_port(&self) -> u16 {
        self.primary.port
    }

    /// Replica `index`'s port on 127.0.0.1.
    ///
    /// # Errors
    ///
    /// No such replica.
    pub fn replica_port(&self, index: usize) -> Result<u16, Error> {
        self.replica(index).map(|node| node.port)
    }

    /// The port of `node`.
    ///
    /// # Errors
    ///
    /// No such replica.
    pub fn port(&self, node: Node) -> Result<u16, Error> {
        self.node(node).map(|node| node.port)
    }

    /// The log file of `node` (its stderr, across restarts).
    ///
    /// # Errors
    ///
    /// No such replica.
    pub fn log_path(&self, node: Node) -> Result<&Path, Error> {
        self.node(node).map(|node| node.log.as_path())
    }

    /// Runs `sql` with `psql -At` on `node` and returns its trimmed output: one line per row,
    /// columns separated by `|`.
    ///
    /// `sql` runs as one query string, so several statements form one implicit transaction
    /// (which statements such as `ALTER SYSTEM` refuse: run those alone).
    ///
    /// # Errors
    ///
    /// No such replica, or `psql` failed (the error includes its stderr: a stopped node gives
    /// "Connection refused").
    pub fn psql(&self, node: Node, sql: &str) -> Result<String, Error> {
        let target = self.node(node)?;
        let output = self
            .env
            .client_command()
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &target.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", sql])
            .output()
            .map_err(|source| {
                Error::io(
                    "spawning psql",
                    "check that PostgreSQL's client is installed",
                    source,
                )
            })?;
        if !output.status.success() {
            return Err(Error::command_failed(
                format_args!(
                    "psql on the {node} (127.0.0.1:{}) running `{sql}` failed ({})",
                    target.port, output.status
                ),
                &String::from_utf8_lossy(&output.stderr),
                "check the SQL, and that the node is running (not stopped or killed)",
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Whether `node`'s server process is alive (`false` for a replica that does not exist).
    #[must_use]
    pub fn is_running(&self, node: Node) -> bool {
        self.node(node).is_ok_and(PgNode::is_running)
    }

    /// Stops `node` cleanly (`pg_ctl stop -m fast`). Does nothing if it is not running.
    ///
    /// # Errors
    ///
    /// No such replica, or it did not stop within 30 s (it was SIGKILLed).
    pub fn stop(&self, node: Node) -> Result<(), Error> {
        self.node(node)?.shutdown(&self.env, Shutdown::Fast)
    }

    /// Stops `node` as abruptly as a crash (`pg_ctl stop -m immediate`: no checkpoint, backends
    /// quit at once; the next start runs crash recovery). Does nothing if it is not running.
    ///
    /// # Errors
    ///
    /// No such replica, or it did not stop within 30 s (it was SIGKILLed).
    pub fn kill(&self, node: Node) -> Result<(), Error> {
        self.node(node)?.shutdown(&self.env, Shutdown::Immediate)
    }

    /// Starts `node` again on the same port with the same data dir (stopping it first if it
    /// runs) and waits until it accepts connections.
    ///
    /// # Errors
    ///
    /// No such replica, the port stayed taken for 5 s, or the server did not come up.
    pub fn restart(&self, node: Node) -> Result<(), Error> {
        self.node(node)?.restart(&self.env)
    }

    /// [`stop`](Self::stop) for replica `index`.
    ///
    /// # Errors
    ///
    /// See [`stop`](Self::stop).
    pub fn stop_replica(&self, index: usize) -> Result<(), Error> {
        self.stop(Node::Replica(index))
    }

    /// [`kill`](Self::kill) for replica `index`.
    ///
    /// # Errors
    ///
    /// See [`kill`](Self::kill).
    pub fn kill_replica(&self, index: usize) -> Result<(), Error> {
        self.kill(Node::Replica(index))
    }

    /// [`restart`](Self::restart) for replica `index`.
    ///
    /// # Errors
    ///
    /// See [`restart`](Self::restart).
    pub fn restart_replica(&self, index: usize) -> Result<(), Error> {
        self.restart(Node::Replica(index))
    }

    /// Freezes every process of `node` with SIGSTOP: the postmaster first (so it forks no new
    /// backend), then each process it forked — client backends, the WAL sender or receiver, the
    /// checkpointer and the other background processes. A frozen node accepts TCP connections in
    /// the kernel but never answers them, and open connections hang mid-query: clients see
    /// timeouts, not refused connections, as with a node stuck in I/O or a suspended VM. A
    /// paused replica stops receiving WAL; a paused primary stops streaming it.
    ///
    /// [`resume`](Self::resume) undoes it; [`stop`](Self::stop), [`kill`](Self::kill),
    /// [`restart`](Self::restart) and dropping the cluster resume a paused node first, so nothing
    /// stays frozen. Pausing a paused node does nothing.
    ///
    /// # Errors
    ///
    /// No such replica, the node is not running ([`Error::is_not_running`]), or `kill -STOP`
    /// failed.
    pub fn pause(&self, node: Node) -> Result<(), Error> {
        self.node(node)?.pause()
    }

    /// Lets every process of a [paused](Self::pause) node run again (SIGCONT, the postmaster
    /// last). Does nothing if it is not paused.
    ///
    /// # Errors
    ///
    /// No such replica, or `kill -CONT` failed.
    pub fn resume(&self, node: Node) -> Result<(), Error> {
        self.node(node)?.resume()
    }

    /// Whether `node` is [paused](Self::pause) (`false` for a replica that does not exist).
    #[must_use]
    pub fn is_paused(&self, node: Node) -> bool {
        self.node(node).is_ok_and(PgNode::is_paused)
    }

    /// [`pause`](Self::pause) for replica `index`.
    ///
    /// # Errors
    ///
    /// See [`pause`](Self::pause).
    pub fn pause_replica(&self, index: usize) -> Result<(), Error> {
        self.pause(Node::Replica(index))
    }

    /// [`resume`](Self::resume) for replica `index`.
    ///
    /// # Errors
    ///
    /// See [`resume`](Self::resume).
    pub fn resume_replica(&self, index: usize) -> Result<(), Error> {
        self.resume(Node::Replica(index))
    }

    /// Promotes replica `index` to a primary (`pg_ctl promote`) and waits until it accepts
    /// writes (`pg_is_in_recovery()` is false), as a failover would.
    ///
    /// Nothing else changes: the old primary keeps running and accepting writes (kill or stop it
    /// first to model a real failover rather than a split brain), the other replicas keep
    /// following the old primary, and the promoted node is still `Node::Replica(index)` with the
    /// same port and URL. A restart keeps it a primary (promotion removed its `standby.signal`).
    ///
    /// # Errors
    ///
    /// No such replica, it is not running or is paused ([`Error::is_not_running`]), `pg_ctl
    /// promote` failed (for instance because it was promoted already), or it still was in
    /// recovery after 30 s.
    pub fn promote(&self, index: usize) -> Result<(), Error> {
        let replica = self.replica(index)?;
        if !replica.is_running() || replica.is_paused() {
            return Err(Error::not_running(
                format_args!("replica {index} (127.0.0.1:{})", replica.port),
                "restart or resume it before promoting it",
            ));
        }
        // `-W`: do not let pg_ctl wait; we wait for what matters to clients, a writable node.
        PgEnv::run(
            self.env
                .server_command(&self.env.bins.pg_ctl)
                .args(["promote", "-W", "-s", "-D"])
                .arg(&replica.data_dir),
            format_args!("pg_ctl promote for replica {index}"),
        )?;
        let node = Node::Replica(index);
        let deadline = Instant::now() + PROMOTE_TIMEOUT;
        loop {
            let last = self.psql(node, "SELECT pg_is_in_recovery()");
            if matches!(&last, Ok(answer) if answer == "f") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let state = match last {
                    Ok(answer) => format!("pg_is_in_recovery() = {answer}"),
                    Err(error) => format!("it does not answer: {error}"),
                };
                return Err(Error::timeout(
                    format_args!(
                        "replica {index} was still in recovery {PROMOTE_TIMEOUT:?} after \
                         `pg_ctl promote` ({state})"
                    ),
                    Some((&replica.log, process::log_tail(&replica.log, 0))),
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Makes replica `index` apply each commit only `delay` after it happened on the primary
    /// (`recovery_min_apply_delay`), to simulate replication lag; `Duration::ZERO` removes the
    /// delay. Returns once the new value is in effect. The setting survives restarts.
    ///
    /// # Errors
    ///
    /// No such replica, the replica is not running, or the reload did not take effect in 10 s.
    pub fn set_replay_delay(&self, index: usize, delay: Duration) -> Result<(), Error> {
        let node = Node::Replica(index);
        let millis = delay.as_millis();
        self.psql(
            node,
            &format!("ALTER SYSTEM SET recovery_min_apply_delay = '{millis}ms'"),
        )?;
        self.psql(node, "SELECT pg_reload_conf()")?;
        // The reload is asynchronous; a new session sees the postmaster's new value, and the
        // startup process (which applies the delay) was signalled before that.
        let expected = millis.to_string();
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        loop {
            let current = self.psql(
                node,
                "SELECT setting FROM pg_settings WHERE name = 'recovery_min_apply_delay'",
            )?;
            if current == expected {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::timeout(
                    format_args!(
                        "replica {index} still has recovery_min_apply_delay = {current} ms after \
                         {RELOAD_TIMEOUT:?}, expected {expected} ms"
                    ),
                    None,
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// The last WAL position replica `index` has replayed (`pg_last_wal_replay_lsn()`, e.g.
    /// `0/3000148`); compare positions with [`parse_lsn`].
    ///
    /// # Errors
    ///
    /// No such replica, or the query failed.
    pub fn replay_lsn(&self, index: usize) -> Result<String, Error> {
        self.psql(Node::Replica(index), "SELECT pg_last_wal_replay_lsn()")
    }

    /// The end of the primary's WAL: `pg_current_wal_insert_lsn()`, which includes every commit
    /// so far. (The write position `pg_current_wal_lsn()` can trail the last commit by a few
    /// milliseconds, because the cluster runs with `synchronous_commit = off`.)
    ///
    /// # Errors
    ///
    /// The query failed.
    pub fn primary_lsn(&self) -> Result<String, Error> {
        self.psql(Node::Primary, "SELECT pg_current_wal_insert_lsn()")
    }

    /// Waits until replica `index` has replayed everything committed on the primary when the
    /// call began (up to [`primary_lsn`](Self::primary_lsn)).
    ///
    /// # Errors
    ///
    /// No such replica, the primary is down, or the replica did not get there within `timeout`
    /// (for instance because of a replay delay).
    pub fn wait_replica_caught_up(&self, index: usize, timeout: Duration) -> Result<(), Error> {
        self.replica(index)?;
        let target = self.primary_lsn()?;
        let deadline = Instant::now() + timeout;
        let check = format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn");
        loop {
            let last = self.psql(Node::Replica(index), &check);
            if matches!(&last, Ok(answer) if answer == "t") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let replayed = match self.replay_lsn(index) {
                    Ok(lsn) => format!("it replayed up to {lsn}"),
                    Err(error) => format!("it does not answer: {error}"),
                };
                return Err(Error::timeout(
                    format_args!(
                        "replica {index} did not replay up to the primary's {target} within \
                         {timeout:?} ({replayed})"
                    ),
                    None,
                ));
            }
            thread::sleep(POLL);
        }
    }

    fn replica(&self, index: usize) -> Result<&PgNode, Error> {
        self.replicas
            .get(index)
            .ok_or_else(|| Error::no_such_replica(index, self.replicas.len()))
    }

    fn node(&self, node: Node) -> Result<&PgNode, Error> {
        match node {
            Node::Primary => Ok(&self.primary),
            Node::Replica(index) => self.replica(index),
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Signal every server first so they go down in parallel, then reap them.
        let nodes: Vec<&PgNode> = self.replicas.iter().chain([&self.primary]).collect();
        for node in &nodes {
            node.begin_shutdown(&self.env, Shutdown::Immediate);
        }
        for node in nodes {
            let _ = node.finish_shutdown();
        }
    }
}

/// A WAL position such as `16/B374D848` as a number, to compare positions; `None` if malformed.
///
/// ```
/// use welcomedly_testkit::parse_lsn;
///
/// assert_eq!(parse_lsn("0/3000148"), Some(0x0300_0148));
/// assert!(parse_lsn("1/0") > parse_lsn("0/FFFFFFFF"));
/// assert_eq!(parse_lsn("nonsense"), None);
/// ```
#[must_use]
pub fn parse_lsn(lsn: &str) -> Option<u64> {
    let (high, low) = lsn.trim().split_once('/')?;
    let high = u32::from_str_radix(high, 16).ok()?;
    let low = u32::from_str_radix(low, 16).ok()?;
    Some((u64::from(high) << 32) | u64::from(low))
}

fn url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// Appends the test settings to the primary's configuration; replicas copy it.
fn configure_primary(base: &Path, data_dir: &Path, replicas: usize) -> Result<(), Error> {
    let socket_dir = base.display().to_string().replace('\'', "''");
    // Two WAL senders per concurrent `pg_basebackup -X stream`, one per running replica.
    let senders = replicas * 2 + 4;
    let slots = replicas + 4;
    let settings = format!(
        "\n# welcomedly-testkit\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = '{socket_dir}'\n\
         wal_level = replica\n\
         max_wal_senders = {senders}\n\
         max_replication_slots = {slots}\n\
         hot_standby = on\n\
         fsync = off\n\
         synchronous_commit = off\n\
         shared_buffers = '16MB'\n\
         # Asynchronous commits reach the replicas only once flushed: flush often.\n\
         wal_writer_delay = '10ms'\n\
         # Concurrent base backups each force a checkpoint, which may recycle WAL another\n\
         # backup still streams: keep enough of it.\n\
         wal_keep_size = '256MB'\n\
         # A restarted primary is found again quickly.\n\
         wal_retrieve_retry_interval = '100ms'\n"
    );
    let hba = "local all all trust\n\
               host all all 127.0.0.1/32 trust\n\
               local replication all trust\n\
               host replication all 127.0.0.1/32 trust\n";
    let write = || -> std::io::Result<()> {
        OpenOptions::new()
            .append(true)
            .open(data_dir.join("postgresql.conf"))?
            .write_all(settings.as_bytes())?;
        // Overwriting keeps the file's owner (the server user).
        fs::write(data_dir.join("pg_hba.conf"), hba)
    };
    write().map_err(|source| {
        Error::io(
            format_args!("configuring {}", data_dir.display()),
            "check that the temp dir is writable",
            source,
        )
    })
}

/// Starts a node on a free port, moving to another port when the chosen one is taken.
fn start_on_free_port(
    env: &PgEnv,
    label: &str,
    data_dir: &Path,
    log: &Path,
) -> Result<PgNode, Error> {
    for _ in 0..PORT_ATTEMPTS {
        let node = PgNode::new(
            label.to_owned(),
            data_dir.to_path_buf(),
            log.to_path_buf(),
            ports::free_port()?,
        );
        let log_start = node.spawn(env)?;
        match node.wait_ready(log_start) {
            Ok(()) => return Ok(node),
            Err(Launch::PortTaken) => continue,
            Err(Launch::Failed(error)) => return Err(error),
        }
    }
    Err(Error::no_free_port(PORT_ATTEMPTS))
}

#[cfg(test)]
mod tests {

    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn a_taken_port_is_detected_so_the_caller_can_move_on() {
        let cluster = match PgCluster::start(0) {
            Ok(cluster) => cluster,
            Err(error) if error.is_not_installed() => {
                eprintln!("{error}; skipping");
                return;
            }
            Err(error) => panic!("{error}"),
        };
        cluster.stop(Node::Primary).unwrap();
        let holder = TcpListener::bind((Ipv4Addr::LOCALHOST, cluster.primary_port())).unwrap();
        let log_start = cluster.primary.spawn(&cluster.env).unwrap();
        assert!(matches!(
            cluster.primary.wait_ready(log_start),
            Err(Launch::PortTaken)
        ));
        assert!(!cluster.is_running(Node::Primary));
        drop(holder);
        cluster.restart(Node::Primary).unwrap();
        assert_eq!(cluster.psql(Node::Primary, "SELECT 1").unwrap(), "1");
    }

    #[test]
    fn out_of_range_replicas_are_errors_not_panics() {
        // No servers needed: build the error the same way the accessors do.
        let error = Error::no_such_replica(3, 2);
        assert!(error.is_no_such_replica());
        assert!(error.to_string().contains("replica 3 does not exist"));
        assert_eq!(Node::Replica(3).to_string(), "replica 3");
        assert_eq!(Node::Primary.to_string(), "primary");
    }
}
