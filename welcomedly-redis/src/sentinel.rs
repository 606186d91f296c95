//! Sentinel: where the master is now, and when that changes.
//!
//! - [`Sentinels::resolve_master`] asks the Sentinels in turn (the one that answered last
//!   first, each within a share of the time allowed) `SENTINEL GET-MASTER-ADDR-BY-NAME`,
//!   connects to the node named and checks with `ROLE` that it says `master` (a Sentinel's view
//!   may be stale during a failover): a node that is not master is never used; the Sentinels
//!   are asked again after a short backoff, within the time allowed.
//! - [`watch_switches`] is one pub/sub connection to a Sentinel per link, subscribed to
//!   `+switch-master`, with its own reconnect loop (threshold of unanswered pings, backoff with
//!   jitter, the next Sentinel after a failure): when the Sentinels announce a new master, the
//!   link replaces its connections at once instead of waiting for its backoff to run out.
//!
//! Credentials: the master's (user, password) and database come from the topology's URL. The
//! Sentinels are reached without credentials when given as `host:port`; a Sentinel given as
//! `redis://[user:password@]host:port` is authenticated with those (Sentinel's own
//! `requirepass`). TLS is not built in.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSub};
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo,
};
use tokio::time::{Instant, MissedTickBehavior};
use welcomedly_core::backoff::Backoff;
use welcomedly_core::redact::redact_url;

use crate::config::RedisUrl;
use crate::link::info_at;

/// The `+switch-master` channel: `<master name> <old ip> <old port> <new ip> <new port>`.
const SWITCH_MASTER: &str = "+switch-master";
/// How often the watch connection is pinged, so a frozen Sentinel is left for another.
const PING_EVERY: Duration = Duration::from_secs(1);
/// The schedule of asking again when the node the Sentinels name does not say `master` yet.
const NOT_MASTER_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(10),
    max: Duration::from_millis(100),
};
/// The least time one Sentinel is given when several are left to ask (a loaded Sentinel
/// answers in a few milliseconds; this keeps a tiny timeout from starving every one).
const MIN_SHARE: Duration = Duration::from_millis(20);
/// Sentinels at most (a few suffice: any of them knows the master).
const MAX_SENTINELS: usize = 64;

/// A node's address as the Sentinels give it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Addr {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Addr {
    /// Whether `addr` (a connection's address) is this one.
    pub(crate) fn is(&self, addr: &ConnectionAddr) -> bool {
        matches!(addr, ConnectionAddr::Tcp(host, port) if *host == self.host && *port == self.port)
    }
}

/// One Sentinel: how to reach it, and how to name it in messages (no password).
struct Node {
    name: String,
    info: ConnectionInfo,
    /// A connection kept for the next question (dropped after any failure): during an outage
    /// the link asks often, and a new TCP connection per question would churn the Sentinel.
    conn: std::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Node {
    fn new(name: String, info: ConnectionInfo) -> Self {
        Self {
            name,
            info,
            conn: std::sync::Mutex::new(None),
        }
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The Sentinels of one master, with the one that answered last (asked first next time).
pub(crate) struct Sentinels {
    nodes: Vec<Node>,
    master: String,
    /// The master's credentials, database and protocol (its address comes from the Sentinels).
    settings: RedisConnectionInfo,
    /// The Sentinel that answered last.
    preferred: AtomicUsize,
}

impl fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sentinels")
            .field("sentinels", &self.names())
            .field("master", &self.master)
            .finish_non_exhaustive()
    }
}

impl Sentinels {
    /// The Sentinels at `sentinels` (`host:port`, or `redis://[user:password@]host:port` for a
    /// Sentinel that wants credentials) that monitor `master`; `url` carries the master's
    /// credentials and database (its host is ignored).
    pub(crate) fn new(sentinels: &[String], master: &str, url: &RedisUrl) -> Result<Self, String> {
        if sentinels.is_empty() {
            return Err(
                "no Sentinel is configured: list at least one as host:port (REDIS_SENTINELS)"
                    .to_owned(),
            );
        }
        if sentinels.len() > MAX_SENTINELS {
            return Err(format!(
                "{} Sentinels are configured: list at most {MAX_SENTINELS} (any of them leads to the master)",
                sentinels.len()
            ));
        }
        if master.is_empty() {
            return Err("the Sentinel master name is empty: give the name of `sentinel monitor <name> …` (REDIS_SENTINEL_MASTER)".to_owned());
        }
        let nodes = sentinels
            .iter()
            .map(|s| sentinel_node(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            nodes,
            master: master.to_owned(),
            settings: info_at(url, "127.0.0.1", 6379)?.redis_settings().clone(),
            preferred: AtomicUsize::new(0),
        })
    }

    /// The master's name.
    pub(crate) fn master(&self) -> &str {
        &self.master
    }

    fn names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    /// The Sentinel to ask first: the one that answered last.
    fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed) % self.nodes.len().max(1)
    }

    /// How to connect to the master at `addr` (credentials and database from the URL).
    pub(crate) fn info_for(&self, addr: &Addr) -> Result<ConnectionInfo, String> {
        tcp_info(addr).map(|info| info.set_redis_settings(self.settings.clone()))
    }

    /// Asks Sentinel `i` where the master is, within `within`.
    async fn ask(&self, i: usize, within: Duration) -> Result<Addr, String> {
        let node = self.nodes.get(i).ok_or("no such Sentinel")?;
        let deadline = Instant::now() + within;
        let cached = node.cached().clone();
        // A kept connection the Sentinel has closed (restarted) earns one fresh try.
        let mut fresh = cached.is_none();
        let mut conn = match cached {
            Some(conn) => conn,
            None => connect(&node.info, within).await?,
        };
        loop {
            let reply = tokio::time::timeout_at(
                deadline,
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(&self.master)
                    .query_async::<Option<(String, u16)>>(&mut conn),
            )
            .await;
            let failed = match reply {
                Ok(Ok(answer)) => {
                    *node.cached() = Some(conn);
                    let Some((host, port)) = answer else {
                        return Err(format!(
                            "does not monitor a master named {:?} (check REDIS_SENTINEL_MASTER against `sentinel monitor`)",
                            self.master
                        ));
                    };
                    // The one that answered last is asked first next time (a frozen Sentinel
                    // listed first costs its share of the timeout once, not on every
                    // reconnect).
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(Addr { host, port });
                }
                Ok(Err(e)) if !fresh && (e.is_connection_dropped() || e.is_io_error()) => short(&e),
                Ok(Err(e)) => {
                    *node.cached() = None;
                    return Err(short(&e));
                }
                Err(_) => {
                    *node.cached() = None;
                    return Err(format!("did not answer within {} ms", within.as_millis()));
                }
            };
            *node.cached() = None;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(failed);
            }
            conn = connect(&node.info, left).await?;
            fresh = true;
        }
    }

    /// Where the master is now, checked: asks the Sentinels in turn (the one that answered last
    /// first, each within a share of `timeout`), connects to the node named and keeps it only if
    /// `ROLE` says `master`. A node that says otherwise (a Sentinel's stale view during a
    /// failover) is not used: the Sentinels are asked again after a short backoff, within
    /// `timeout`.
    ///
    /// The error names every Sentinel tried and what each said (no password).
    pub(crate) async fn resolve_master(&self, timeout: Duration) -> Result<ConnectionInfo, String> {
        let deadline = Instant::now() + timeout;
        let n = self.nodes.len();
        let mut delays = NOT_MASTER_BACKOFF.delays();
        let mut said: Vec<String> = Vec::new();
        loop {
            said.clear();
            // A node found not (yet) master: asking again soon is worth it.
            let mut not_master = false;
            let first = self.preferred();
            // Nodes already checked this round (several Sentinels usually agree).
            let mut checked: Vec<Addr> = Vec::new();
            for k in 0..n {
                let i = (first + k) % n;
                let Some(node) = self.nodes.get(i) else {
                    continue;
                };
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    said.push(format!("{}: not asked (out of time)", node.name));
                    continue;
                }
                let share = (left / u32::try_from(n - k).unwrap_or(1))
                    .max(MIN_SHARE)
                    .min(left);
                let addr = match self.ask(i, share).await {
                    Ok(addr) => addr,
                    Err(e) => {
                        said.push(format!("{}: {e}", node.name));
                        continue;
                    }
                };
                if checked.contains(&addr) {
                    said.push(format!("{}: {addr} (checked above)", node.name));
                    continue;
                }
                let info = match self.info_for(&addr) {
                    Ok(info) => info,
                    Err(e) => {
                        said.push(format!("{}: {e}", node.name));
                        continue;
                    }
                };
                let left = deadline.saturating_duration_since(Instant::now());
                match role(&info, left).await {
                    Ok(role) if role == "master" => return Ok(info),
                    Ok(role) => {
                        not_master = true;
                        // What a node says goes into logs: bounded.
                        let role: String = role.chars().take(16).collect();
                        said.push(format!(
                            "{}: {addr}, which says it is {role:?}, not master (a failover may be under way)",
                            node.name
                        ));
                    }
                    Err(e) => said.push(format!("{}: {addr}, which {e}", node.name)),
                }
                checked.push(addr);
            }
            let pause = delays.next_delay();
            if !not_master || Instant::now() + pause >= deadline {
                return Err(format!(
                    "no master {:?} found through the Sentinels within {} ms ({}): check that the Sentinels run and agree on a master; the link keeps asking",
                    self.master,
                    timeout.as_millis(),
                    said.join("; ")
                ));
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// A TCP address as redis-rs takes it (the conversion cannot fail; its type says it may).
fn tcp_info(addr: &Addr) -> Result<ConnectionInfo, String> {
    (addr.host.clone(), addr.port)
        .into_connection_info()
        .map_err(|e| format!("cannot use address {addr}: {}", short(&e)))
}

/// One Sentinel from `host:port` or `redis://[user:password@]host:port`.
fn sentinel_node(text: &str) -> Result<Node, String> {
    let text = text.trim();
    if text.contains("://") {
        let info = text.into_connection_info().map_err(|_| {
            format!(
                "cannot use Sentinel {}: expected host:port or redis://[user:password@]host:port",
                redact_url(text)
            )
        })?;
        let name = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Addr {
                host: host.clone(),
                port: *port,
            }
            .to_string(),
            _ => {
                return Err(format!(
                    "cannot use Sentinel {}: a Sentinel is reached over TCP (redis://host:port)",
                    redact_url(text)
                ));
            }
        };
        return Ok(Node::new(name, info));
    }
    let bad =
        || format!("cannot use Sentinel {text:?}: expected host:port, such as sentinel-1:26379");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
    if host.is_empty() || host.contains(['/', '@']) {
        return Err(bad());
    }
    let addr = Addr {
        host: host.to_owned(),
        port,
    };
    let info = tcp_info(&addr)?;
    Ok(Node::new(addr.to_string(), info))
}

/// A connection for one or two commands, within `within` (connect and answers).
async fn connect(info: &ConnectionInfo, within: Duration) -> Result<MultiplexedConnection, String> {
    let client = redis::Client::open(info.clone()).map_err(|e| short(&e))?;
    // Every question is bounded by its caller (a kept connection outlives this `within`).
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(within))
        .set_response_timeout(None);
    match tokio::time::timeout(
        within,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(format!("cannot be reached ({})", short(&e))),
        Err(_) => Err(format!(
            "cannot be reached within {} ms",
            within.as_millis()
        )),
    }
}

/// What `ROLE` says the node at `info` is (`master`, `slave`, `sentinel`).
async fn role(info: &ConnectionInfo, within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    let mut conn = connect(info, within).await?;
    let reply = tokio::time::timeout_at(
        deadline,
        redis::cmd("ROLE").query_async::<Vec<redis::Value>>(&mut conn),
    )
    .await;
    match reply {
        Ok(Ok(items)) => items
            .into_iter()
            .next()
            .and_then(|first| redis::from_redis_value::<String>(first).ok())
            .ok_or_else(|| "answered ROLE with an unexpected reply".to_owned()),
        Ok(Err(e)) => Err(format!("refused ROLE ({})", short(&e))),
        Err(_) => Err(format!(
            "did not answer ROLE within {} ms",
            within.as_millis()
        )),
    }
}

/// A Redis error's text, redacted and bounded (it ends up in logs).
fn short(e: &redis::RedisError) -> String {
    let text = redact_url(&e.to_string()).into_owned();
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", text.get(..at).unwrap_or("")),
        None => text,
    }
}

/// A `+switch-master` message for `master`: the new master's address.
fn parse_switch(master: &str, payload: &[u8]) -> Option<Addr> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut words = text.split_ascii_whitespace();
    if words.next()? != master {
        return None;
    }
    let (_old_host, _old_port) = (words.next()?, words.next()?);
    let host = words.next()?.to_owned();
    let port = words.next()?.parse().ok()?;
    words.next().is_none().then_some(Addr { host, port })
}

/// The settings of the watch loop (the link's).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WatchSettings {
    /// Unanswered pings in a row before the connection is given up.
    pub(crate) failure_threshold: u32,
    /// The least time between giving up a connection for failures and the next attempt.
    pub(crate) min_outage: Duration,
    /// Delays between failed attempts.
    pub(crate) backoff: Backoff,
    /// The longest a connection attempt (and a ping's answer) may take.
    pub(crate) connect_timeout: Duration,
}

/// Why a watch connection was given up.
struct Ended {
    hold_off: bool,
    why: String,
}

/// The watch loop: one pub/sub connection to a Sentinel subscribed to `+switch-master`, for
/// the life of the link (the link aborts it when dropped). `on_master(addr)` is called with the
/// master's address each time the Sentinels announce a switch, and after every (re)subscribe
/// with the address the Sentinel gives then (a switch announced while this connection was down
/// is not missed); the link ignores an address it is already connected to.
pub(crate) async fn watch_switches<F>(
    sentinels: std::sync::Arc<Sentinels>,
    settings: WatchSettings,
    on_master: F,
) where
    F: Fn(Addr) + Send + Sync + 'static,
{
    let n = sentinels.nodes.len().max(1);
    let mut delays = settings.backoff.delays();
    let mut hold_off = false;
    let mut attempts = 0u32;
    let mut generation = 0u64;
    // After a failure the next Sentinel is tried: a dead one is not retried first.
    let mut next = sentinels.preferred();
    loop {
        if std::mem::take(&mut hold_off) {
            tokio::time::sleep(settings.min_outage).await;
        }
        let i = next % n;
        next = i + 1;
        let Some(node) = sentinels.nodes.get(i) else {
            return;
        };
        let within = settings.connect_timeout;
        let opened = tokio::time::timeout(within, open_watch(&node.info)).await;
        let pubsub = match opened {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                attempts += 1;
                log_attempt(attempts, &node.name, &e);
                tokio::time::sleep(delays.next_delay()).await;
                continue;
            }
            Err(_) => {
                attempts += 1;
                log_attempt(
                    attempts,
                    &node.name,
                    &format!("no subscription within {} ms", within.as_millis()),
                );
                tokio::time::sleep(delays.next_delay()).await;
                continue;
            }
        };
        generation += 1;
        if attempts > 0 || generation > 1 {
            tracing::info!(
                sentinel = %node.name,
                attempts,
                generation,
                "watching the Sentinels for failovers again"
            );
        }
        attempts = 0;
        delays = settings.backoff.delays();
        // A switch announced while no connection listened: the Sentinel's view now.
        match sentinels.ask(i, within).await {
            Ok(addr) => on_master(addr),
            Err(e) => {
                tracing::debug!(sentinel = %node.name, error = %e, "a Sentinel did not say where the master is")
            }
        }
        let since = Instant::now();
        let ended = follow(pubsub, &sentinels, settings, &on_master).await;
        tracing::warn!(
            sentinel = %node.name,
            error = %ended.why,
            generation,
            "the connection watching the Sentinels for failovers was lost: another Sentinel is tried (a failover meanwhile is still followed, later)"
        );
        next = i + 1;
        hold_off = ended.hold_off || since.elapsed() < settings.min_outage;
    }
}

fn log_attempt(attempts: u32, sentinel: &str, error: &str) {
    if attempts.is_multiple_of(10) {
        tracing::warn!(
            sentinel,
            error,
            attempts,
            "no Sentinel reachable to watch for failovers"
        );
    } else {
        tracing::debug!(
            sentinel,
            error,
            attempts,
            "a Sentinel is unreachable to watch for failovers"
        );
    }
}

/// A pub/sub connection to the Sentinel at `info`, subscribed to `+switch-master`.
async fn open_watch(info: &ConnectionInfo) -> Result<PubSub, String> {
    let client = redis::Client::open(info.clone()).map_err(|e| short(&e))?;
    let mut pubsub = client.get_async_pubsub().await.map_err(|e| short(&e))?;
    pubsub
        .subscribe(SWITCH_MASTER)
        .await
        .map_err(|e| format!("SUBSCRIBE {SWITCH_MASTER} failed: {}", short(&e)))?;
    Ok(pubsub)
}

/// Reads `+switch-master` until the connection fails.
async fn follow<F>(
    pubsub: PubSub,
    sentinels: &Sentinels,
    settings: WatchSettings,
    on_master: &F,
) -> Ended
where
    F: Fn(Addr),
{
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let threshold = settings.failure_threshold.max(1);
    let within = settings.connect_timeout.min(PING_EVERY);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return Ended { hold_off: false, why: "the Sentinel closed the connection".to_owned() };
                };
                if let Some(addr) = parse_switch(sentinels.master(), msg.get_payload_bytes()) {
                    tracing::info!(master = sentinels.master(), to = %addr, "the Sentinels announced a new master: following it");
                    on_master(addr);
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(within, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => failures = 0,
                    _ => {
                        failures += 1;
                        if failures >= threshold {
                            return Ended {
                                hold_off: true,
                                why: format!("{failures} pings in a row went unanswered within {} ms", within.as_millis()),
                            };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_messages_for_our_master_only() {
        let addr = parse_switch("mymaster", b"mymaster 127.0.0.1 6379 127.0.0.1 6380");
        assert_eq!(
            addr,
            Some(Addr {
                host: "127.0.0.1".into(),
                port: 6380
            })
        );
        assert_eq!(
            parse_switch("mymaster", b"other 127.0.0.1 6379 127.0.0.1 6380"),
            None
        );
        assert_eq!(parse_switch("mymaster", b"mymaster 127.0.0.1 6379"), None);
        assert_eq!(
            parse_switch("mymaster", b"mymaster 127.0.0.1 6379 ::1 x"),
            None
        );
        assert_eq!(parse_switch("mymaster", b"mymaster a 1 b 2 extra"), None);
    }

    #[test]
    fn sentinels_and_credentials_from_the_settings() {
        let s = Sentinels::new(
            &["127.0.0.1:26379".into(), "[::1]:26380".into()],
            "mymaster",
            &"redis://app:hunter2@ignored:1/3".into(),
        )
        .unwrap();
        assert_eq!(s.names(), ["127.0.0.1:26379", "[::1]:26380"]);
        let info = s
            .info_for(&Addr {
                host: "10.0.0.5".into(),
                port: 6380,
            })
            .unwrap();
        assert_eq!(info.addr(), &ConnectionAddr::Tcp("10.0.0.5".into(), 6380));
        assert_eq!(info.redis_settings().db(), 3);
        assert_eq!(info.redis_settings().username(), Some("app"));
        assert_eq!(info.redis_settings().password(), Some("hunter2"));
        assert!(!format!("{s:?}").contains("hunter2"));
        // A Sentinel with its own credentials, never printed.
        let s = Sentinels::new(
            &["redis://:s3cret@127.0.0.1:26379".into()],
            "m",
            &"redis://".into(),
        )
        .unwrap();
        assert_eq!(s.names(), ["127.0.0.1:26379"]);
        assert!(!format!("{s:?}").contains("s3cret"));
        for bad in ["sentinel", "host:0", ":26379", "host:port", "a/b:1"] {
            let e = Sentinels::new(&[bad.into()], "m", &"redis://".into()).unwrap_err();
            assert!(e.contains("host:port"), "{e}");
        }
        let e = Sentinels::new(&[], "m", &"redis://".into()).unwrap_err();
        assert!(e.contains("at least one"), "{e}");
        let e = Sentinels::new(&["a:1".into()], "m", &"http://:hunter2@x/".into()).unwrap_err();
        assert!(!e.contains("hunter2") && e.contains("redis://"), "{e}");
    }

    #[tokio::test]
    async fn every_sentinel_tried_is_named_with_what_it_said() {
        // Two ports nothing listens on (bound then closed), and a plain Redis-speaking nothing.
        let closed = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (a, b) = (closed(), closed());
        let s = Sentinels::new(
            &[format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}")],
            "mymaster",
            &"redis://:hunter2@/0".into(),
        )
        .unwrap();
        let e = s
            .resolve_master(Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(e.contains(&format!("127.0.0.1:{a}")), "{e}");
        assert!(e.contains(&format!("127.0.0.1:{b}")), "{e}");
        assert!(e.contains("mymaster"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    fn port_of(info: &ConnectionInfo) -> u16 {
        match info.addr() {
            ConnectionAddr::Tcp(_, port) => *port,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_master_is_found_checked_and_followed_through_a_failover() {
        use welcomedly_testkit::RedisSentinel;
        let group = std::sync::Arc::new(
            tokio::task::spawn_blocking(RedisSentinel::start)
                .await
                .unwrap()
                .unwrap(),
        );
        let primary = group.primary().unwrap();
        // A dead Sentinel first in the list: skipped.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut addrs = vec![format!("127.0.0.1:{dead}")];
        addrs.extend(group.sentinel_addrs());
        let sentinels = std::sync::Arc::new(
            Sentinels::new(&addrs, group.master_name(), &"redis://".into()).unwrap(),
        );
        let info = sentinels
            .resolve_master(Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(port_of(&info), primary);
        // The one that answered is asked first next time.
        assert_eq!(sentinels.preferred(), 1);

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let settings = WatchSettings {
            failure_threshold: 3,
            min_outage: Duration::from_millis(250),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(1),
        };
        let watch = tokio::spawn(watch_switches(sentinels.clone(), settings, move |addr| {
            let _ = tx.send(addr);
        }));
        // The view at subscribe time first.
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.port, primary);

        // Graceful failover: the replica is promoted, the old master demoted.
        let g = group.clone();
        let failover = tokio::task::spawn_blocking(move || g.failover().map(drop));
        let switched = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_ne!(switched.port, primary);
        let info = sentinels
            .resolve_master(Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(port_of(&info), switched.port);
        assert_eq!(role(&info, Duration::from_secs(1)).await.unwrap(), "master");
        failover.await.unwrap().unwrap();
        watch.abort();

        // A master demoted behind the Sentinels' back (their view is stale): never used; the
        // error says what the node said.
        let g = group.clone();
        let new = switched.port;
        tokio::task::spawn_blocking(move || {
            g.command_on(new, &["REPLICAOF", "127.0.0.1", &primary.to_string()])
        })
        .await
        .unwrap()
        .unwrap();
        // A budget a loaded box cannot spend before asking (300 ms ran out before the first
        // Sentinel answered under a full test run).
        let e = sentinels
            .resolve_master(Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(e.contains("not master"), "{e}");
        assert!(e.contains(&format!("127.0.0.1:{new}")), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_connection_to_a_restarted_sentinel_is_replaced_at_once() {
        use welcomedly_testkit::RedisSentinel;
        let group = std::sync::Arc::new(
            tokio::task::spawn_blocking(RedisSentinel::start)
                .await
                .unwrap()
                .unwrap(),
        );
        let primary = group.primary().unwrap();
        let port = group.sentinel_ports()[0];
        // One Sentinel only: a failed question would be a failed resolve.
        let sentinels = Sentinels::new(
            &[format!("127.0.0.1:{port}")],
            group.master_name(),
            &"redis://".into(),
        )
        .unwrap();
        let info = sentinels
            .resolve_master(Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(port_of(&info), primary);
        assert!(sentinels.nodes[0].cached().is_some());
        let g = group.clone();
        tokio::task::spawn_blocking(move || g.restart(port))
            .await
            .unwrap()
            .unwrap();
        let info = sentinels
            .resolve_master(Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(port_of(&info), primary);
    }
}
