//! The command line: `--instances N`, `--replicas M`, `--password P`, `--no-nginx`,
//! `--redis single|sentinel|cluster`, `--no-build`, `--help`, parsed by hand (no
//! argument-parser dependency for six flags).

use crate::redis::RedisKind;

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    /// How many `call_center` instances (default 3).
    pub(crate) instances: usize,
    /// How many PostgreSQL streaming replicas (default 2).
    pub(crate) replicas: usize,
    /// The demo users' password (default `welcomedly-demo`).
    pub(crate) password: String,
    /// Start NGINX in front when it is installed (default true).
    pub(crate) nginx: bool,
    /// Build `call_center` before starting it (default true).
    pub(crate) build: bool,
    /// The Redis topology (default one node).
    pub(crate) redis: RedisKind,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            instances: 3,
            replicas: 2,
            password: "welcomedly-demo".to_owned(),
            nginx: true,
            build: true,
            redis: RedisKind::Single,
        }
    }
}

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    Run(Options),
    Help,
}

const MAX_INSTANCES: usize = 32;
const MAX_REPLICAS: usize = 8;

pub(crate) const USAGE: &str = "\
cargo run --example cluster [-- OPTIONS]

Starts Redis, a PostgreSQL primary with streaming replicas, several call_center instances and
NGINX in front (when installed), all on free loopback ports in temp dirs, then reads fault
commands from stdin (type `help`). Ctrl-C, SIGTERM or `quit` tears everything down; the end of
stdin does not (so `cargo run --example cluster < /dev/null &` keeps running until a signal).

OPTIONS
  --instances N   call_center instances to run (default 3, at most 32)
  --replicas M    PostgreSQL streaming replicas (default 2, at most 8; 0 for none)
  --password P    the demo users' password (default welcomedly-demo)
  --no-nginx      do not start NGINX, even when it is installed
  --redis KIND    the Redis topology: single (default), sentinel (a primary, a replica and three
                  sentinels) or cluster (a Redis Cluster, 3 masters with a replica each)
  --no-build      do not run `cargo build --example call_center` first (use the binary as built)
  -h, --help      this text
";

/// Parses the arguments after the program name.
pub(crate) fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Parsed, String> {
    let mut options = Options::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value: see --help"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--instances" => {
                options.instances = count(&value("--instances")?, "--instances", 1, MAX_INSTANCES)?;
            }
            "--replicas" => {
                options.replicas = count(&value("--replicas")?, "--replicas", 0, MAX_REPLICAS)?;
            }
            "--password" => {
                let password = value("--password")?;
                if password.is_empty() {
                    return Err(
                        "--password must not be empty: give the demo users a password".into(),
                    );
                }
                options.password = password;
            }
            "--redis" => options.redis = RedisKind::parse(&value("--redis")?)?,
            "--no-nginx" => options.nginx = false,
            "--no-build" => options.build = false,
            other => {
                return Err(format!(
                    "unknown argument `{other}`: run `cargo run --example cluster -- --help`"
                ));
            }
        }
    }
    Ok(Parsed::Run(options))
}

fn count(text: &str, flag: &str, min: usize, max: usize) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{flag} `{text}` is not a number from {min} to {max}"
        )),
    }
}
