//! The running cluster: Redis, PostgreSQL, the instances and NGINX, what `status` shows and what
//! each fault command does.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use welcomedly_testkit::{Nginx, NginxConfig, Node, PgCluster, free_port};

use crate::command::{Command, HELP};
use crate::instance::{DRAIN_WAIT, Instance, State};
use crate::options::Options;
use crate::redis::Redis;

/// How many times a first start moves an instance to a new port when it cannot listen.
const START_ATTEMPTS: usize = 3;

/// Everything that runs. Fields drop in order: the instances go first (they drain while Redis
/// and PostgreSQL are still up), so even a panic tears down in a sensible order.
#[derive(Debug)]
pub(crate) struct Stack {
    instances: Vec<Instance>,
    nginx: Option<Nginx>,
    pg: PgCluster,
    redis: Redis,
    binary: PathBuf,
    env: Vec<(String, String)>,
    lags: Vec<Duration>,
    admin_token: String,
    password: String,
    nginx_note: Option<String>,
    logs: TempDir,
}

/// Why the start stopped.
pub(crate) fn interrupted(flag: &AtomicBool) -> Result<(), String> {
    if flag.load(Ordering::SeqCst) {
        return Err(
            "interrupted by a signal while starting: everything started so far is stopped".into(),
        );
    }
    Ok(())
}

impl Stack {
    /// Starts every server and instance; on an error, what already runs is stopped (dropped).
    pub(crate) fn start(
        options: &Options,
        binary: &Path,
        stop: &AtomicBool,
    ) -> Result<Self, String> {
        let logs = tempfile::Builder::new()
            .prefix("welcomedly-cluster-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir ({e}): check TMPDIR or /tmp"))?;
        let failed = |what: &str| {
            let what = what.to_owned();
            move |e: welcomedly_testkit::Error| format!("{what}: {e}")
        };

        println!("{}", Redis::starting(options.redis));
        let redis = Redis::start(options.redis)?;
        interrupted(stop)?;
        println!(
            "starting PostgreSQL: a primary and {} streaming replica(s) ...",
            options.replicas
        );
        let pg = PgCluster::start(options.replicas).map_err(failed("starting PostgreSQL"))?;
        interrupted(stop)?;

        let admin_token = format!("adm-{}", random_hex(16)?);
        let mut env = redis.env();
        env.extend([
            ("DATABASE_URL".to_owned(), pg.primary_url()),
            // 127.0.0.1 is NGINX: trust its X-Forwarded-For to learn the real client.
            ("TRUSTED_PROXIES".to_owned(), "127.0.0.1/32".to_owned()),
            (
                "WELCOMEDLY_DEMO_PASSWORD".to_owned(),
                options.password.clone(),
            ),
            ("WELCOMEDLY_ADMIN_TOKEN".to_owned(), admin_token.clone()),
            // One per cluster, the same on every instance.
            ("WELCOMEDLY_CONSISTENCY_SECRET".to_owned(), random_hex(16)?),
            ("WELCOMEDLY_RATE_LIMIT_SECRET".to_owned(), random_hex(16)?),
            // Plain HTTP on loopback: cookies without `Secure`, or curl would not send them.
            ("WELCOMEDLY_SESSION_SECURE".to_owned(), "false".to_owned()),
            (
                "WELCOMEDLY_INSTANCES".to_owned(),
                options.instances.to_string(),
            ),
            // Short drains, so `stop`, `restart` and `quit` take seconds, not half a minute.
            ("WELCOMEDLY_DRAIN_GRACE_MS".to_owned(), "1000".to_owned()),
            ("WELCOMEDLY_DRAIN_DEADLINE_MS".to_owned(), "5000".to_owned()),
        ]);
        if options.replicas > 0 {
            env.push((
                "DATABASE_REPLICA_URLS".to_owned(),
                pg.replica_urls().join(","),
            ));
        }

        println!("starting {} call_center instance(s) ...", options.instances);
        let mut instances = Vec::with_capacity(options.instances);
        for index in 0..options.instances {
            let port = free_port().map_err(failed("finding a port"))?;
            let log = logs.path().join(format!("cc-{index}.log"));
            instances.push(Instance::new(index, port, log));
        }
        // The first instance alone, then the others at once: each creates its tables at start,
        // and concurrent `CREATE TABLE IF NOT EXISTS` can fail on PostgreSQL.
        let (first, others) = instances.split_at_mut(1.min(options.instances));
        for batch in [first, others] {
            for instance in batch.iter_mut() {
                instance.spawn(binary, &env)?;
            }
            for instance in batch.iter_mut() {
                let mut attempt = 1;
                loop {
                    interrupted(stop)?;
                    match instance.wait_ready() {
                        Ok(()) => break,
                        // Another process took the port between the check and the bind.
                        Err(_)
                            if attempt < START_ATTEMPTS
                                && log_says_cannot_listen(&instance.log) =>
                        {
                            attempt += 1;
                            instance.port = free_port().map_err(failed("finding a port"))?;
                            instance.spawn(binary, &env)?;
                        }
                        Err(error) => return Err(error),
                    }
                }
            }
        }

        let (nginx, nginx_note) = if options.nginx {
            let ports: Vec<u16> = instances.iter().map(|i| i.port).collect();
            let config = NginxConfig::least_conn(&ports)
                .keepalive(32)
                .max_fails(2)
                .fail_timeout(Duration::from_secs(2))
                .forwarded_for()
                // Server-sent events (/api/events) must reach the browser as they happen.
                .buffering(false)
                .read_timeout(Duration::from_secs(3600));
            match Nginx::start(&config) {
                Ok(nginx) => (Some(nginx), None),
                Err(error) if error.is_not_installed() => (
                    None,
                    Some(format!(
                        "NGINX is not installed ({error}); requests go straight to the instances. \
                         With NGINX (apt-get install -y nginx) the cluster gets one URL in front."
                    )),
                ),
                Err(error) => return Err(format!("starting NGINX: {error}")),
            }
        } else {
            (None, Some("NGINX not started (--no-nginx)".to_owned()))
        };

        Ok(Self {
            instances,
            nginx,
            lags: vec![Duration::ZERO; pg.replica_count()],
            pg,
            redis,
            binary: binary.to_path_buf(),
            env,
            admin_token,
            password: options.password.clone(),
            nginx_note,
            logs,
        })
    }

    /// What runs where, how to log in, and the commands.
    pub(crate) fn print_banner(&self) {
        let entry = match &self.nginx {
            Some(nginx) => format!("http://127.0.0.1:{}", nginx.port()),
            None => self
                .instances
                .first()
                .map_or_else(String::new, |i| format!("http://127.0.0.1:{}", i.port)),
        };
        println!();
        println!("Welcomedly local cluster");
        match &self.nginx {
            Some(nginx) => println!("  NGINX         http://127.0.0.1:{}/", nginx.port()),
            None => {
                if let Some(note) = &self.nginx_note {
                    println!("  {note}");
                }
            }
        }
        for instance in &self.instances {
            println!(
                "  instance {:<4} {}  ({}, log {})",
                instance.index,
                instance.url(),
                instance.id,
                instance.log.display()
            );
        }
        for line in self.redis.banner() {
            println!("{line}");
        }
        println!("  PG primary    {}", self.pg.primary_url());
        for (index, url) in self.pg.replica_urls().iter().enumerate() {
            println!("  PG replica {index:<2} {url}");
        }
        println!("  logs          {}", self.logs.path().display());
        println!();
        println!(
            "  demo users    agent, supervisor   password: {}",
            self.password
        );
        println!("  admin token   {}", self.admin_token);
        println!();
        println!("  curl -s {entry}/api/ping -i | grep x-instance-id");
        println!(
            "  curl -c jar -X POST {entry}/auth/login -H 'content-type: application/json' \
             -d '{{\"username\":\"agent\",\"password\":\"{}\"}}'",
            self.password
        );
        println!("  curl -N -b jar {entry}/api/events");
        println!(
            "  curl -H 'authorization: Bearer {}' {entry}/admin/flags",
            self.admin_token
        );
        println!();
        println!("{HELP}");
        println!();
        println!("cluster ready");
    }

    /// Runs one command and prints what happened.
    pub(crate) fn run(&mut self, command: Command) {
        let outcome = match command {
            ref redis if Redis::is_redis_command(redis) => self.redis.run(redis),
            Command::Nothing => Ok(String::new()),
            Command::Help => Ok(HELP.to_owned()),
            Command::Status => Ok(self.status()),
            Command::Kill(index) => self.instance(index).map(|instance| {
                instance.kill();
                format!("instance {index} killed (SIGKILL)")
            }),
            Command::Stop(index) => self.instance(index).map(|instance| {
                if instance.stop() {
                    format!("instance {index} drained and exited")
                } else {
                    format!("instance {index} did not exit within {DRAIN_WAIT:?} and was killed")
                }
            }),
            Command::Restart(index) => self.restart(index),
            Command::KillReplica(j) => {
                self.pg_result(self.pg.kill_replica(j), format!("replica {j} killed"))
            }
            Command::RestartReplica(j) => self.pg_result(
                self.pg.restart_replica(j),
                format!("replica {j} restarted on the same port"),
            ),
            Command::PauseReplica(j) => self.pg_result(
                self.pg.pause_replica(j),
                format!("replica {j} paused (SIGSTOP)"),
            ),
            Command::ResumeReplica(j) => {
                self.pg_result(self.pg.resume_replica(j), format!("replica {j} resumed"))
            }
            Command::Lag(j, delay) => {
                let outcome = self.pg.set_replay_delay(j, delay);
                if outcome.is_ok()
                    && let Some(lag) = self.lags.get_mut(j)
                {
                    *lag = delay;
                }
                let done = if delay.is_zero() {
                    format!("replica {j} applies commits at once again")
                } else {
                    format!(
                        "replica {j} applies each commit {} ms late",
                        delay.as_millis()
                    )
                };
                self.pg_result(outcome, done)
            }
            Command::Promote(j) => self.pg_result(
                self.pg.promote(j),
                format!(
                    "replica {j} promoted: it takes writes; the instances' router finds it when \
                     the primary is down"
                ),
            ),
            Command::KillPrimary => {
                self.pg_result(self.pg.kill(Node::Primary), "primary killed".to_owned())
            }
            Command::RestartPrimary => self.pg_result(
                self.pg.restart(Node::Primary),
                "primary restarted on the same port".to_owned(),
            ),
            Command::Quit => Ok(String::new()),
            // Every Redis command was handled above.
            other => Err(format!("`{}` is not handled here", other.name())),
        };
        match outcome {
            Ok(text) if text.is_empty() => {}
            Ok(text) => println!("{text}"),
            Err(error) => println!("error: {error}"),
        }
    }

    fn pg_result(
        &self,
        outcome: Result<(), welcomedly_testkit::Error>,
        done: String,
    ) -> Result<String, String> {
        outcome.map(|()| done).map_err(|e| e.to_string())
    }

    fn instance(&mut self, index: usize) -> Result<&mut Instance, String> {
        let count = self.instances.len();
        self.instances.get_mut(index).ok_or_else(|| {
            format!("there is no instance {index}: the cluster runs {count} (0..{count})")
        })
    }

    fn restart(&mut self, index: usize) -> Result<String, String> {
        let count = self.instances.len();
        let Self {
            instances,
            binary,
            env,
            ..
        } = self;
        let instance = instances.get_mut(index).ok_or_else(|| {
            format!("there is no instance {index}: the cluster runs {count} (0..{count})")
        })?;
        if instance.is_running() {
            instance.stop();
        }
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            instance.spawn(binary, env)?;
            match instance.wait_ready() {
                Ok(()) => {
                    return Ok(format!(
                        "instance {index} restarted on {} and ready in {:.1?}",
                        instance.url(),
                        started.elapsed()
                    ));
                }
                // The port may still be held for a moment by the old process's last sockets.
                Err(_) if attempt < START_ATTEMPTS && !instance.is_running() => {
                    attempt += 1;
                    thread::sleep(Duration::from_millis(500));
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn status(&mut self) -> String {
        let mut lines = Vec::new();
        for instance in &mut self.instances {
            let state = match instance.state() {
                State::Ready => "up, ready".to_owned(),
                State::NotReady(why) => format!("up, NOT ready ({why})"),
                State::Down(why) => format!("down ({why})"),
            };
            lines.push(format!(
                "instance {:<4} {}  {}  {state}",
                instance.index,
                instance.url(),
                instance.id
            ));
        }
        if let Some(nginx) = &self.nginx {
            lines.push(format!(
                "NGINX         http://127.0.0.1:{}/  up",
                nginx.port()
            ));
        }
        lines.push(format!(
            "PG primary    127.0.0.1:{}  {}",
            self.pg.primary_port(),
            self.node_state(Node::Primary)
        ));
        for j in 0..self.pg.replica_count() {
            let port = self.pg.replica_port(j).unwrap_or_default();
            let delay = self.lags.get(j).copied().unwrap_or_default();
            let lag = if delay.is_zero() {
                String::new()
            } else {
                format!(", replay delay {} ms", delay.as_millis())
            };
            lines.push(format!(
                "PG replica {j:<2} 127.0.0.1:{port}  {}{lag}",
                self.node_state(Node::Replica(j))
            ));
        }
        lines.extend(self.redis.status());
        lines.join("\n")
    }

    fn node_state(&self, node: Node) -> String {
        if self.pg.is_paused(node) {
            return "paused (SIGSTOP)".to_owned();
        }
        if !self.pg.is_running(node) {
            return "down".to_owned();
        }
        let sql = "SELECT CASE WHEN pg_is_in_recovery() \
                   THEN 'up, replica, replayed up to ' || pg_last_wal_replay_lsn() \
                   ELSE 'up, primary, WAL at ' || pg_current_wal_insert_lsn() END";
        self.pg
            .psql(node, sql)
            .unwrap_or_else(|error| format!("up, not answering ({error})"))
    }

    /// Drains the instances (SIGTERM, then SIGKILL after the deadline), then stops NGINX,
    /// PostgreSQL and Redis and removes the temp dirs.
    pub(crate) fn shutdown(mut self) {
        let mut running = 0;
        for instance in &mut self.instances {
            running += usize::from(instance.is_running());
        }
        println!("stopping {running} instance(s): SIGTERM, SIGKILL after {DRAIN_WAIT:?} ...");
        for instance in &mut self.instances {
            instance.begin_stop();
        }
        let deadline = Instant::now() + DRAIN_WAIT;
        for instance in &mut self.instances {
            if !instance.finish_stop(deadline) {
                println!(
                    "instance {} did not drain in time and was killed",
                    instance.index
                );
            }
        }
        println!("stopping NGINX, PostgreSQL and Redis ...");
        drop(self.nginx.take());
        self.redis.kill();
        drop(self);
        println!("everything stopped");
    }
}

fn log_says_cannot_listen(log: &Path) -> bool {
    std::fs::read_to_string(log).is_ok_and(|text| text.contains("cannot listen"))
}

/// `bytes` random bytes from the kernel, in hex.
fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buffer = vec![0_u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut buffer))
        .map_err(|e| format!("cannot read /dev/urandom for the secrets ({e})"))?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}
