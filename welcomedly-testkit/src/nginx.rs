//! A real `nginx` reverse proxy on a free loopback port, in front of servers the test runs.
//!
//! One process (`master_process off`), everything (config, pid, error log, temp files) in a temp
//! dir, so it runs as root or as an ordinary user and leaves the machine's own NGINX alone.
//!
//! ```no_run
//! use welcomedly_testkit::{Nginx, NginxConfig, free_port};
//!
//! let ports = [free_port()?, free_port()?];
//! // ... start the instances on `ports` ...
//! let nginx = Nginx::start(&NginxConfig::least_conn(&ports).keepalive(64))?;
//! println!("send requests to 127.0.0.1:{}", nginx.port());
//! assert!(!nginx.error_log().contains("prematurely closed"));
//! # Ok::<(), welcomedly_testkit::Error>(())
//! ```

use std::fmt;
use std::fs;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{self, POLL};
use crate::{Error, ports};

/// How long a start may take before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports a start tries when the port turns out to be taken.
const PORT_ATTEMPTS: usize = 10;
/// Where Debian puts the binary (not on an ordinary user's `PATH`).
const DEBIAN_BINARY: &str = "/usr/sbin/nginx";

/// What the proxy in front of the instances looks like: one `upstream` with `least_conn`.
///
/// ```
/// use std::time::Duration;
/// use welcomedly_testkit::NginxConfig;
///
/// // What `cargo run --example cluster` puts in front of its instances.
/// let config = NginxConfig::least_conn(&[21000, 21001])
///     .keepalive(32)
///     .max_fails(2)
///     .fail_timeout(Duration::from_secs(3))
///     .forwarded_for()
///     .buffering(false) // server-sent events reach the client at once
///     .read_timeout(Duration::from_secs(3600));
/// # let _ = config;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct NginxConfig {
    upstreams: Vec<u16>,
    keepalive: Option<u32>,
    max_fails: u32,
    fail_timeout: Duration,
    forwarded_for: bool,
    buffering: bool,
    read_timeout: Option<Duration>,
}

impl NginxConfig {
    /// `least_conn` over `127.0.0.1:<port>` for each port, no upstream keep-alive (a connection
    /// per request), `max_fails=1 fail_timeout=1s`, no `X-Forwarded-For`, NGINX's own defaults
    /// for buffering (on) and the read timeout (60 s).
    pub fn least_conn(ports: &[u16]) -> Self {
        Self {
            upstreams: ports.to_vec(),
            keepalive: None,
            max_fails: 1,
            fail_timeout: Duration::from_secs(1),
            forwarded_for: false,
            buffering: true,
            read_timeout: None,
        }
    }

    /// Passive health checks: after `max_fails` failed attempts within the
    /// [`fail_timeout`](Self::fail_timeout), a server is skipped for that long (`max_fails=N`;
    /// default 1, 0 turns the accounting off).
    pub fn max_fails(mut self, max_fails: u32) -> Self {
        self.max_fails = max_fails;
        self
    }

    /// The window of [`max_fails`](Self::max_fails) and how long a failed server is skipped
    /// (`fail_timeout=`; default 1 s). Rounded down to whole seconds, at least 1 s: NGINX takes no
    /// smaller unit here.
    pub fn fail_timeout(mut self, fail_timeout: Duration) -> Self {
        self.fail_timeout = fail_timeout;
        self
    }

    /// Appends the client's address to `X-Forwarded-For`
    /// (`proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for`), so instances that trust
    /// `127.0.0.1/32` as a proxy see the real client. Off by default.
    pub fn forwarded_for(mut self) -> Self {
        self.forwarded_for = true;
        self
    }

    /// `false` passes every byte of a response on as soon as the upstream sends it
    /// (`proxy_buffering off`), which server-sent events and other streams need; `true` (the
    /// default, NGINX's own) collects the response in buffers first.
    pub fn buffering(mut self, buffering: bool) -> Self {
        self.buffering = buffering;
        self
    }

    /// How long NGINX waits between two reads from an upstream before it gives up on the
    /// response (`proxy_read_timeout`, whole seconds, at least 1 s; NGINX's default is 60 s).
    /// Raise it for long-lived streams that may stay silent for long.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = Some(timeout);
        self
    }

    /// Keep up to `connections` idle upstream connections per worker (`keepalive N`, with HTTP/1.1
    /// and an empty `Connection` header to the upstreams, as NGINX's docs prescribe).
    pub fn keepalive(mut self, connections: u32) -> Self {
        self.keepalive = Some(connections);
        self
    }

    fn render(&self, dir: &Path, port: u16) -> String {
        let dir = dir.display();
        // Whole seconds: NGINX rejects `ms` here.
        let fail_timeout = self.fail_timeout.as_secs().max(1);
        let max_fails = self.max_fails;
        let servers: String = self
            .upstreams
            .iter()
            .map(|p| {
                format!(
                    "    server 127.0.0.1:{p} max_fails={max_fails} fail_timeout={fail_timeout}s;\n"
                )
            })
            .collect();
        let mut location = String::new();
        if self.forwarded_for {
            location
                .push_str("      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n");
        }
        if !self.buffering {
            location.push_str("      proxy_buffering off;\n");
        }
        if let Some(timeout) = self.read_timeout {
            let secs = timeout.as_secs().max(1);
            location.push_str(&format!("      proxy_read_timeout {secs}s;\n"));
        }
        let (keepalive, upstream_http) = match self.keepalive {
            Some(n) => (
                format!("    keepalive {n};\n"),
                "      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n",
            ),
            None => (String::new(), ""),
        };
        format!(
            "daemon off;\n\
             master_process off;\n\
             pid {dir}/nginx.pid;\n\
             error_log {dir}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
             \x20 access_log off;\n\
             \x20 client_body_temp_path {dir}/client_body;\n\
             \x20 proxy_temp_path {dir}/proxy;\n\
             \x20 fastcgi_temp_path {dir}/fastcgi;\n\
             \x20 uwsgi_temp_path {dir}/uwsgi;\n\
             \x20 scgi_temp_path {dir}/scgi;\n\
             \x20 upstream app {{\n\
             \x20   least_conn;\n\
             {servers}{keepalive}\
             \x20 }}\n\
             \x20 server {{\n\
             \x20   listen 127.0.0.1:{port};\n\
             \x20   location / {{\n\
             \x20     proxy_pass http://app;\n\
             {upstream_http}\
             {location}\
             \x20   }}\n\
             \x20 }}\n\
             }}\n"
        )
    }
}

/// An `nginx` child process proxying a free loopback port to the configured upstreams. Dropping
/// it kills NGINX and removes its temp dir.
pub struct Nginx {
    port: u16,
    child: Child,
    error_log: PathBuf,
    // Last: dropped after the child is dead.
    dir: TempDir,
}

impl fmt::Debug for Nginx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nginx")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Nginx {
    /// Starts NGINX with `config` on a free port and waits until it accepts connections.
    ///
    /// # Errors
    ///
    /// `nginx` is not installed, no port is free, or NGINX did not come up (the error carries its
    /// log tail).
    pub fn start(config: &NginxConfig) -> Result<Self, Error> {
        let binary = process::find_on_path("nginx")
            .or_else(|| {
                let debian = PathBuf::from(DEBIAN_BINARY);
                process::is_executable(&debian).then_some(debian)
            })
            .ok_or_else(|| {
                Error::not_installed(
                    "nginx (on PATH or /usr/sbin/nginx)",
                    "install NGINX (apt-get install -y nginx; .ci/test does it when run as root)",
                )
            })?;
        let dir = process::temp_dir("welcomedly-nginx-")?;
        let error_log = dir.path().join("error.log");
        let out_log = dir.path().join("nginx.out");
        for _ in 0..PORT_ATTEMPTS {
            let port = ports::free_port()?;
            let conf = dir.path().join("nginx.conf");
            fs::write(&conf, config.render(dir.path(), port)).map_err(|source| {
                Error::io(
                    format_args!("writing {}", conf.display()),
                    "check that the temp dir is writable",
                    source,
                )
            })?;
            let (stdout, stderr, from) = process::open_log(&out_log)?;
            let mut cmd = Command::new(&binary);
            cmd.arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(&error_log)
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr);
            let mut child = cmd.spawn().map_err(|source| {
                Error::io(
                    format_args!("starting {}", binary.display()),
                    "check that nginx is executable",
                    source,
                )
            })?;
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if !process::is_alive(&mut child) {
                    let tail = process::log_tail(&out_log, from);
                    if tail.contains("Address already in use") {
                        break;
                    }
                    return Err(Error::start_failed(
                        format_args!("nginx exited during start-up on port {port}"),
                        &out_log,
                        tail,
                    ));
                }
                if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                    return Ok(Self {
                        port,
                        child,
                        error_log,
                        dir,
                    });
                }
                if Instant::now() >= deadline {
                    process::kill_and_reap(&mut child);
                    return Err(Error::timeout(
                        format_args!(
                            "nginx did not accept on port {port} within {START_TIMEOUT:?}"
                        ),
                        Some((&out_log, process::log_tail(&out_log, from))),
                    ));
                }
                thread::sleep(POLL);
            }
        }
        Err(Error::no_free_port(PORT_ATTEMPTS))
    }

    /// The proxy's port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What NGINX has written to its error log so far (upstream errors are logged at `error`).
    #[must_use]
    pub fn error_log(&self) -> String {
        fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        process::kill_and_reap(&mut self.child);
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn keepalive_adds_the_upstream_pool_and_http_1_1() {
        let dir = Path::new("/tmp/x");
        let plain = NginxConfig::least_conn(&[21000, 21001]).render(dir, 22000);
        assert!(plain.contains("least_conn;"));
        assert!(plain.contains("server 127.0.0.1:21001 max_fails=1 fail_timeout=1s;"));
        assert!(plain.contains("listen 127.0.0.1:22000;"));
        assert!(!plain.contains("keepalive"));
        let pooled = NginxConfig::least_conn(&[21000])
            .keepalive(64)
            .render(dir, 22000);
        assert!(pooled.contains("keepalive 64;"));
        assert!(pooled.contains("proxy_http_version 1.1;"));
        assert!(pooled.contains("proxy_set_header Connection \"\";"));
        assert!(!pooled.contains("proxy_buffering"));
        assert!(!pooled.contains("X-Forwarded-For"));
    }

    #[test]
    fn streaming_and_health_check_settings_are_rendered() {
        let text = NginxConfig::least_conn(&[21000])
            .max_fails(3)
            .fail_timeout(Duration::from_millis(2500))
            .forwarded_for()
            .buffering(false)
            .read_timeout(Duration::from_secs(3600))
            .render(Path::new("/tmp/x"), 22000);
        assert!(
            text.contains("server 127.0.0.1:21000 max_fails=3 fail_timeout=2s;"),
            "{text}"
        );
        assert!(text.contains("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"));
        assert!(text.contains("proxy_buffering off;"));
        assert!(text.contains("proxy_read_timeout 3600s;"));
    }
}
