//! The sharded subscriber's tasks: one supervisor that routes every wanted channel to the master
//! serving its slot (the link's slot map), and one connection task per such master that
//! `SSUBSCRIBE`s there and reads what it sends.
//!
//! **Why our own socket and RESP3.** Each node connection is a plain TCP stream framed by
//! redis-rs' `ValueCodec`, spoken in RESP3 (`HELLO 3`): pushes (`smessage`, `ssubscribe`,
//! `sunsubscribe`) are told apart from replies by their type, so one connection carries the
//! subscriptions, the `PING`s and the periodic check (`PUBSUB SHARDNUMSUB`, `CLIENT INFO`) on
//! the owning node itself. redis-rs' own connections are not used: its `aio::PubSub` has no
//! `SSUBSCRIBE`, and its multiplexed pipeline takes every `sunsubscribe` push for the reply to
//! the oldest command in flight (`PushKind::has_reply`), so the unsolicited one Redis sends on a
//! slot migration or failover would be paired with an unrelated `PING` or check.
//!
//! **What resubscribes.** An unsolicited `sunsubscribe` (the slot migrated, the shard failed
//! over), an `SSUBSCRIBE` answered with `MOVED`/`ASK`/`TRYAGAIN`/`CLUSTERDOWN`, a lost or
//! frozen node connection, and the periodic check all mark the slot map stale and send the
//! channel again to the master the fresh map names. Attempts after a failure wait the link's
//! backoff (exponential, jittered); connection events carry a generation so a late event of a
//! replaced connection changes nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use redis::{ConnectionAddr, ConnectionInfo, PushKind, ServerErrorKind, Value};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::codec::Framed;
use welcomedly_core::redact::redact_url;

use super::Shared;
use crate::slot::key_slot;

/// How often every subscribed channel is checked against the server, by default.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(5);

/// How often a node connection is pinged, so a frozen node (which keeps the socket open) is
/// noticed within `failure_threshold` of these.
const PING_EVERY: Duration = Duration::from_secs(1);

/// A node, by the address the slot map names.
type Addr = (String, u16);

/// What a node connection tells the supervisor.
#[derive(Debug)]
enum Event {
    Up {
        node: Addr,
        generation: u64,
    },
    Confirmed {
        node: Addr,
        generation: u64,
        channel: String,
    },
    /// A `sunsubscribe` nobody asked for.
    Unsolicited {
        node: Addr,
        generation: u64,
        channel: String,
    },
    Refused {
        node: Addr,
        generation: u64,
        channel: String,
        redirected: bool,
        why: String,
    },
    /// The check found these channels not subscribed on the connection.
    Missing {
        node: Addr,
        generation: u64,
        channels: Vec<String>,
    },
    Down {
        node: Addr,
        generation: u64,
        why: String,
        /// Dropped for failures (pings): wait `min_outage` first.
        hold_off: bool,
    },
}

/// What the supervisor asks of a node connection.
#[derive(Debug)]
enum Command {
    Subscribe(String),
    Unsubscribe(String),
    Check,
}

struct Node {
    tx: mpsc::UnboundedSender<Command>,
    generation: u64,
    up: bool,
    task: tokio::task::AbortHandle,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The supervisor's view.
struct Routes {
    nodes: HashMap<Addr, Node>,
    /// Channel → the node it was sent to (acknowledged or not yet) and that connection's
    /// generation.
    assigned: HashMap<String, (Addr, u64)>,
    generations: u64,
    /// No new routing before this (a failure's backoff).
    retry_at: Option<Instant>,
    failures: u32,
    delays: welcomedly_core::backoff::Delays,
    /// A channel was resubscribed after a migration, failover or lost node: check soon, since
    /// an `SSUBSCRIBE` that reached the old master in the instant before its demotion may stay
    /// on it (a replica, which still receives the shard's messages, so nothing else tells).
    check_soon: bool,
}

/// How soon the check runs after a resubscription.
const CHECK_SOON: Duration = Duration::from_secs(1);

/// The supervisor. Holds the subscriber weakly between steps; the link aborts it when dropped
/// (and its node connections with it: each ends when its command channel closes).
pub(super) async fn run(shared: Weak<Shared>) {
    let Some(config) = shared.upgrade().map(|s| s.config.clone()) else {
        return;
    };
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let mut routes = Routes {
        nodes: HashMap::new(),
        assigned: HashMap::new(),
        generations: 0,
        retry_at: None,
        failures: 0,
        delays: config.backoff.delays(),
        check_soon: false,
    };
    let mut next_check = Instant::now() + CHECK_EVERY;
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if strong.closed.load(Ordering::Acquire) {
            return;
        }
        let notified = strong.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        route(&shared, &strong, &mut routes, &events_tx).await;
        let check_every = Duration::from_millis(strong.check_every.load(Ordering::Relaxed).max(50));
        next_check = next_check.min(Instant::now() + check_every);
        if std::mem::take(&mut routes.check_soon) {
            next_check = next_check.min(Instant::now() + CHECK_SOON);
        }
        // `strong` is held while waiting: the link aborts this task when it is dropped.
        let retry = async {
            match routes.retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut notified => {}
            event = events.recv() => {
                let Some(event) = event else { return };
                handle(&strong, &mut routes, event);
                // Every event already queued, before routing again.
                while let Ok(event) = events.try_recv() {
                    handle(&strong, &mut routes, event);
                }
            }
            () = tokio::time::sleep_until(next_check) => {
                next_check = Instant::now() + check_every;
                check(&strong, &mut routes).await;
            }
            () = retry => {
                routes.retry_at = None;
            }
        }
    }
}

/// Sends every wanted channel that is not routed to its master; unsubscribes channels nobody
/// wants; closes node connections that serve no channel.
async fn route(
    weak: &Weak<Shared>,
    shared: &Shared,
    routes: &mut Routes,
    events: &mpsc::UnboundedSender<Event>,
) {
    let wanted: HashSet<String> = shared.wanted().into_iter().collect();
    let gone: Vec<String> = routes
        .assigned
        .keys()
        .filter(|c| !wanted.contains(*c))
        .cloned()
        .collect();
    for channel in gone {
        if let Some((node, _)) = routes.assigned.remove(&channel)
            && let Some(n) = routes.nodes.get(&node)
        {
            let _ = n.tx.send(Command::Unsubscribe(channel));
        }
    }
    let new: Vec<&String> = wanted
        .iter()
        .filter(|c| !routes.assigned.contains_key(*c))
        .collect();
    let waiting = routes.retry_at.is_some_and(|at| Instant::now() < at);
    if !new.is_empty() && !waiting {
        match slot_map(shared).await {
            Ok((map, base)) => {
                for channel in new {
                    let slot = key_slot(channel.as_bytes());
                    let Some((host, port)) = map.master_for(slot) else {
                        // A slot no master serves (the cluster is down for it): try later.
                        failed(shared, routes, "no master serves the channel's slot yet");
                        break;
                    };
                    let node = (host.to_owned(), port);
                    let generation = match routes.nodes.get(&node) {
                        Some(n) => n.generation,
                        None => {
                            routes.generations += 1;
                            let generation = routes.generations;
                            let (tx, rx) = mpsc::unbounded_channel();
                            let info = base
                                .clone()
                                .set_addr(ConnectionAddr::Tcp(node.0.clone(), node.1));
                            let task = shared.runtime.spawn(connection(
                                weak.clone(),
                                node.clone(),
                                info,
                                generation,
                                rx,
                                events.clone(),
                            ));
                            routes.nodes.insert(
                                node.clone(),
                                Node {
                                    tx,
                                    generation,
                                    up: false,
                                    task: task.abort_handle(),
                                },
                            );
                            generation
                        }
                    };
                    if let Some(n) = routes.nodes.get(&node) {
                        let _ = n.tx.send(Command::Subscribe(channel.clone()));
                    }
                    routes.assigned.insert(channel.clone(), (node, generation));
                }
            }
            Err(why) => failed(shared, routes, &why),
        }
    }
    // Egress follows interest: a node that serves none of our channels keeps no connection.
    let used: HashSet<&Addr> = routes.assigned.values().map(|(n, _)| n).collect();
    routes.nodes.retain(|addr, _| used.contains(addr));
    let all_routed = wanted.iter().all(|c| routes.assigned.contains_key(c));
    let up = !wanted.is_empty() && all_routed && routes.nodes.values().all(|n| n.up);
    shared.connected.send_if_modified(|now| {
        let changed = *now != up;
        *now = up;
        changed
    });
}

/// The link's slot map (fetched again when stale) and the seed node's connection settings.
async fn slot_map(
    shared: &Shared,
) -> Result<
    (
        std::sync::Arc<crate::link::shards::ShardMap>,
        ConnectionInfo,
    ),
    String,
> {
    let Some(link) = crate::Link::upgrade(&shared.link) else {
        return Err("the link is gone".to_owned());
    };
    let Some(base) = shared.target.nodes().and_then(<[_]>::first).cloned() else {
        return Err("sharded pub/sub needs a Redis Cluster".to_owned());
    };
    // The node connections are plain TCP: never send a TLS cluster's credentials in clear.
    if !matches!(base.addr(), ConnectionAddr::Tcp(..)) {
        return Err(
            "sharded pub/sub connects to cluster nodes over plain TCP only: use classic pub/sub (the bus's PubSubMode::Classic) for this cluster"
                .to_owned(),
        );
    }
    let map = link
        .shards()
        .await
        .map_err(|e| format!("cannot read the cluster's slot map: {e}"))?;
    Ok((map, base))
}

/// A routing step failed: the next one waits the link's backoff.
fn failed(shared: &Shared, routes: &mut Routes, why: &str) {
    routes.failures += 1;
    shared.failed_attempts.fetch_add(1, Ordering::Relaxed);
    let delay = routes.delays.next_delay();
    routes.retry_at = Some(Instant::now() + delay);
    if routes.failures.is_multiple_of(10) {
        tracing::warn!(error = %why, attempts = routes.failures, "Redis sharded pub/sub: channels still not subscribed");
    } else {
        tracing::debug!(error = %why, attempts = routes.failures, "Redis sharded pub/sub: will try again");
    }
}

/// Whether an event comes from the node connection a channel is routed to now.
fn current(routes: &Routes, channel: &str, node: &Addr, generation: u64) -> bool {
    routes
        .assigned
        .get(channel)
        .is_some_and(|(n, g)| n == node && *g == generation)
}

fn stale(shared: &Shared) {
    if let Some(link) = shared.link.upgrade() {
        link.shards_stale();
    }
}

fn handle(shared: &Shared, routes: &mut Routes, event: Event) {
    match event {
        Event::Up { node, generation } => {
            if let Some(n) = routes.nodes.get_mut(&node)
                && n.generation == generation
            {
                n.up = true;
                shared.connections.fetch_add(1, Ordering::Relaxed);
            }
        }
        Event::Confirmed {
            node,
            generation,
            channel,
        } => {
            if current(routes, &channel, &node, generation) {
                let again = shared.confirmed(std::slice::from_ref(&channel));
                shared.resubscribed.fetch_add(again, Ordering::Relaxed);
                routes.check_soon |= again > 0;
                routes.failures = 0;
                routes.delays = shared.config.backoff.delays();
            }
        }
        Event::Unsolicited {
            node,
            generation,
            channel,
        } => {
            if current(routes, &channel, &node, generation) {
                shared.unsolicited.fetch_add(1, Ordering::Relaxed);
                tracing::info!(node = %format!("{}:{}", node.0, node.1), "Redis unsubscribed a sharded channel (its slot migrated or its shard failed over): subscribing it on the slot's new owner");
                routes.assigned.remove(&channel);
                shared.lost_channels(&[channel]);
                stale(shared);
            }
        }
        Event::Refused {
            node,
            generation,
            channel,
            redirected,
            why,
        } => {
            if current(routes, &channel, &node, generation) {
                routes.assigned.remove(&channel);
                stale(shared);
                if redirected {
                    shared.redirections.fetch_add(1, Ordering::Relaxed);
                    failed(shared, routes, &why);
                } else {
                    tracing::error!(error = %why, "Redis refused SSUBSCRIBE: check the user's channel permissions");
                    failed(shared, routes, &why);
                }
            }
        }
        Event::Missing {
            node,
            generation,
            channels,
        } => {
            let missing: Vec<String> = channels
                .into_iter()
                .filter(|c| current(routes, c, &node, generation))
                .collect();
            if !missing.is_empty() {
                shared
                    .repairs
                    .fetch_add(missing.len() as u64, Ordering::Relaxed);
                tracing::warn!(
                    channels = missing.len(),
                    "the periodic check found sharded channels Redis no longer counts for this connection: subscribing them again"
                );
                for c in &missing {
                    routes.assigned.remove(c);
                }
                shared.lost_channels(&missing);
                stale(shared);
            }
        }
        Event::Down {
            node,
            generation,
            why,
            hold_off,
        } => {
            let Some(n) = routes.nodes.get(&node) else {
                return;
            };
            if n.generation != generation {
                return;
            }
            let was_up = n.up;
            routes.nodes.remove(&node);
            let lost: Vec<String> = routes
                .assigned
                .iter()
                .filter(|(_, (n, g))| *n == node && *g == generation)
                .map(|(c, _)| c.clone())
                .collect();
            for c in &lost {
                routes.assigned.remove(c);
            }
            shared.lost_channels(&lost);
            stale(shared);
            if was_up {
                tracing::warn!(error = %why, node = %format!("{}:{}", node.0, node.1), channels = lost.len(), "a Redis sharded pub/sub connection was lost: messages published until it is back are missed (subscribers are told); resubscribing");
            }
            if hold_off {
                // Dropped for failures (a frozen node): at least `min_outage`, and the backoff
                // if it keeps failing.
                failed(shared, routes, &why);
                let floor = Instant::now() + shared.config.min_outage;
                routes.retry_at = routes.retry_at.map(|at| at.max(floor));
            } else if was_up {
                // Redis closed a working connection (a killed node, a `CLIENT KILL`): try at
                // once with a fresh slot map.
                routes.retry_at = None;
            } else {
                failed(shared, routes, &why);
            }
        }
    }
}

/// The periodic check: the slot map is fetched again, channels whose slot another master
/// serves now are moved there, and every node connection checks what the server counts for it.
async fn check(shared: &Shared, routes: &mut Routes) {
    if routes.assigned.is_empty() {
        return;
    }
    stale(shared);
    if let Ok((map, _)) = slot_map(shared).await {
        let moved: Vec<String> = routes
            .assigned
            .iter()
            .filter(|(c, (node, _))| {
                shared.is_confirmed(c)
                    && map
                        .master_for(key_slot(c.as_bytes()))
                        .is_some_and(|(h, p)| (h, p) != (node.0.as_str(), node.1))
            })
            .map(|(c, _)| c.clone())
            .collect();
        if !moved.is_empty() {
            shared
                .repairs
                .fetch_add(moved.len() as u64, Ordering::Relaxed);
            tracing::warn!(
                channels = moved.len(),
                "the periodic check found sharded channels subscribed on a node that no longer serves their slot: moving them"
            );
            for c in &moved {
                if let Some((node, _)) = routes.assigned.remove(c)
                    && let Some(n) = routes.nodes.get(&node)
                {
                    let _ = n.tx.send(Command::Unsubscribe(c.clone()));
                }
            }
            shared.lost_channels(&moved);
        }
    }
    for n in routes.nodes.values() {
        if n.up {
            let _ = n.tx.send(Command::Check);
        }
    }
}

/// What a node connection waits an answer for, in order.
#[derive(Debug)]
enum Pending {
    Subscribe(String),
    Unsubscribe(String),
    Ping,
    NumSub(Vec<String>),
    ClientInfo,
}

/// One node connection: connects, `HELLO 3`, then follows the supervisor's commands and reads
/// what the node sends until the connection fails or the supervisor no longer wants it.
async fn connection(
    shared: Weak<Shared>,
    node: Addr,
    info: ConnectionInfo,
    generation: u64,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
) {
    let Some(config) = shared.upgrade().map(|s| s.config.clone()) else {
        return;
    };
    let down = |why: String, hold_off: bool| Event::Down {
        node: node.clone(),
        generation,
        why: redact_url(&why).into_owned(),
        hold_off,
    };
    let timeout = config.connect_timeout;
    let at = format!("{}:{}", node.0, node.1);
    let stream = match tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((node.0.as_str(), node.1)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = events.send(down(
                format!("cannot connect to Redis Cluster node {at} for sharded pub/sub: {e}"),
                false,
            ));
            return;
        }
        Err(_) => {
            let _ = events.send(down(
                format!(
                    "connecting to Redis Cluster node {at} for sharded pub/sub took longer than {} ms",
                    timeout.as_millis()
                ),
                false,
            ));
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, redis::ValueCodec::default());
    let mut pending: VecDeque<Pending> = VecDeque::new();
    // `HELLO 3` with the link's credentials: RESP3, so pushes and replies share the connection.
    let settings = info.redis_settings();
    let mut hello = redis::cmd("HELLO");
    hello.arg(3);
    if let Some(password) = settings.password() {
        hello
            .arg("AUTH")
            .arg(settings.username().unwrap_or("default"))
            .arg(password);
    }
    hello.arg("SETNAME").arg("welcomedly-sharded-pubsub");
    let greeted = tokio::time::timeout(timeout, async {
        framed.send(hello.get_packed_command()).await?;
        framed
            .next()
            .await
            .unwrap_or_else(|| Err(redis::RedisError::from(std::io::Error::other("closed"))))
    })
    .await;
    match greeted {
        Ok(Ok(Value::ServerError(e))) => {
            let _ = events.send(down(
                format!(
                    "Redis Cluster node {at} refused HELLO 3 for sharded pub/sub ({}): check the credentials and that the node is Redis 7 or later",
                    e.code()
                ),
                true,
            ));
            return;
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            let _ = events.send(down(
                format!("greeting Redis Cluster node {at} for sharded pub/sub failed: {e}"),
                false,
            ));
            return;
        }
        Err(_) => {
            let _ = events.send(down(
                format!(
                    "Redis Cluster node {at} did not answer HELLO within {} ms",
                    timeout.as_millis()
                ),
                true,
            ));
            return;
        }
    }
    let _ = events.send(Event::Up {
        node: node.clone(),
        generation,
    });
    let mut subscribed: HashSet<String> = HashSet::new();
    let mut missing: Vec<String> = Vec::new();
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let threshold = config.failure_threshold.max(1);
    let mut unanswered = 0u32;
    loop {
        let mut out: Vec<(redis::Cmd, Pending)> = Vec::new();
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { return };
                match command {
                    Command::Subscribe(c) => {
                        let mut cmd = redis::cmd("SSUBSCRIBE");
                        cmd.arg(&c);
                        out.push((cmd, Pending::Subscribe(c)));
                    }
                    Command::Unsubscribe(c) => {
                        subscribed.remove(&c);
                        let mut cmd = redis::cmd("SUNSUBSCRIBE");
                        cmd.arg(&c);
                        out.push((cmd, Pending::Unsubscribe(c)));
                    }
                    Command::Check => {
                        if !subscribed.is_empty() {
                            let channels: Vec<String> = subscribed.iter().cloned().collect();
                            let mut numsub = redis::cmd("PUBSUB");
                            numsub.arg("SHARDNUMSUB").arg(&channels);
                            out.push((numsub, Pending::NumSub(channels)));
                            let mut client = redis::cmd("CLIENT");
                            client.arg("INFO");
                            out.push((client, Pending::ClientInfo));
                        }
                    }
                }
            }
            frame = framed.next() => {
                let value = match frame {
                    Some(Ok(v)) => v,
                    Some(Err(e)) => {
                        let _ = events.send(down(format!("the sharded pub/sub connection to {at} failed: {e}"), false));
                        return;
                    }
                    None => {
                        let _ = events.send(down(format!("Redis Cluster node {at} closed the sharded pub/sub connection"), false));
                        return;
                    }
                };
                let Some(strong) = shared.upgrade() else { return };
                match value {
                    Value::Push { kind, data } => match kind {
                        PushKind::SMessage | PushKind::Message => {
                            if let (Some(channel), Some(payload)) = (data.first().and_then(bytes), data.get(1).and_then(bytes)) {
                                strong.deliver(&String::from_utf8_lossy(channel), payload);
                            }
                        }
                        PushKind::SSubscribe => {
                            let channel = data.first().and_then(bytes).map(|b| String::from_utf8_lossy(b).into_owned());
                            if matches!(pending.front(), Some(Pending::Subscribe(_))) {
                                pending.pop_front();
                            }
                            if let Some(channel) = channel {
                                subscribed.insert(channel.clone());
                                let _ = events.send(Event::Confirmed { node: node.clone(), generation, channel });
                            }
                        }
                        PushKind::SUnsubscribe => {
                            let channel = data.first().and_then(bytes).map(|b| String::from_utf8_lossy(b).into_owned());
                            let solicited = matches!(
                                (pending.front(), &channel),
                                (Some(Pending::Unsubscribe(asked)), Some(c)) if asked == c
                            );
                            if solicited {
                                pending.pop_front();
                            } else if let Some(channel) = channel
                                && !strong.ignore_unsolicited.load(Ordering::Relaxed)
                            {
                                subscribed.remove(&channel);
                                let _ = events.send(Event::Unsolicited { node: node.clone(), generation, channel });
                            }
                        }
                        _ => {}
                    },
                    Value::ServerError(e) => match pending.pop_front() {
                        Some(Pending::Subscribe(channel)) => {
                            let redirected = matches!(
                                e.kind(),
                                Some(ServerErrorKind::Moved | ServerErrorKind::Ask | ServerErrorKind::TryAgain | ServerErrorKind::ClusterDown)
                            );
                            let _ = events.send(Event::Refused {
                                node: node.clone(),
                                generation,
                                channel,
                                redirected,
                                why: format!("Redis Cluster node {at} answered SSUBSCRIBE with {}", e.code()),
                            });
                        }
                        Some(Pending::Ping) => unanswered = 0,
                        Some(Pending::NumSub(_)) => missing.clear(),
                        _ => {}
                    },
                    value => match pending.pop_front() {
                        Some(Pending::Ping) => unanswered = 0,
                        Some(Pending::NumSub(channels)) => {
                            missing = not_counted(&channels, &value);
                        }
                        Some(Pending::ClientInfo) => {
                            let counted = client_info_ssub(&value);
                            let mut lost = std::mem::take(&mut missing);
                            // The server counts fewer shard channels for this connection than
                            // it acknowledged, yet each is counted somewhere (other clients):
                            // which ones is unknown, so all are subscribed again.
                            if lost.is_empty() && counted.is_some_and(|n| n < subscribed.len()) {
                                lost = subscribed.iter().cloned().collect();
                            }
                            if !lost.is_empty() {
                                for c in &lost {
                                    subscribed.remove(c);
                                }
                                let _ = events.send(Event::Missing { node: node.clone(), generation, channels: lost });
                            }
                        }
                        _ => {}
                    },
                }
            }
            _ = ping.tick() => {
                if unanswered >= threshold {
                    let _ = events.send(down(format!("{unanswered} pings in a row went unanswered by {at}"), true));
                    return;
                }
                unanswered += 1;
                out.push((redis::cmd("PING").clone(), Pending::Ping));
            }
        }
        for (cmd, what) in out {
            pending.push_back(what);
            match tokio::time::timeout(timeout, framed.send(cmd.get_packed_command())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = events.send(down(format!("writing to {at} failed: {e}"), false));
                    return;
                }
                Err(_) => {
                    let _ = events.send(down(
                        format!(
                            "writing to {at} took longer than {} ms",
                            timeout.as_millis()
                        ),
                        true,
                    ));
                    return;
                }
            }
        }
    }
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

/// The channels `PUBSUB SHARDNUMSUB` counts no subscriber for (a flat array or, in RESP3, a
/// map of channel → count).
fn not_counted(asked: &[String], value: &Value) -> Vec<String> {
    let mut counts: HashMap<Vec<u8>, i64> = HashMap::new();
    match value {
        Value::Map(pairs) => {
            for (k, v) in pairs {
                if let (Some(k), Some(v)) = (bytes(k), int(v)) {
                    counts.insert(k.to_vec(), v);
                }
            }
        }
        Value::Array(items) => {
            for pair in items.chunks(2) {
                if let [k, v] = pair
                    && let (Some(k), Some(v)) = (bytes(k), int(v))
                {
                    counts.insert(k.to_vec(), v);
                }
            }
        }
        _ => return Vec::new(),
    }
    asked
        .iter()
        .filter(|c| counts.get(c.as_bytes()).is_some_and(|n| *n == 0))
        .cloned()
        .collect()
}

/// The `ssub=` field of `CLIENT INFO`: shard channels this connection is subscribed to.
fn client_info_ssub(value: &Value) -> Option<usize> {
    let text = match value {
        Value::VerbatimString { text, .. } => text.as_str(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?,
        Value::SimpleString(s) => s.as_str(),
        _ => return None,
    };
    text.split_ascii_whitespace()
        .find_map(|f| f.strip_prefix("ssub="))
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn shardnumsub_answers_name_the_channels_nobody_counts() {
        let asked = vec!["a".to_owned(), "b".to_owned()];
        let map = Value::Map(vec![(bulk("a"), Value::Int(0)), (bulk("b"), Value::Int(2))]);
        assert_eq!(not_counted(&asked, &map), vec!["a".to_owned()]);
        let array = Value::Array(vec![bulk("a"), Value::Int(1), bulk("b"), Value::Int(0)]);
        assert_eq!(not_counted(&asked, &array), vec!["b".to_owned()]);
    }

    #[test]
    fn client_info_tells_the_shard_channels_of_the_connection() {
        let v = Value::VerbatimString {
            format: redis::VerbatimFormat::Text,
            text: "id=7 addr=127.0.0.1:5 sub=0 psub=0 ssub=3 multi=-1\n".to_owned(),
        };
        assert_eq!(client_info_ssub(&v), Some(3));
        assert_eq!(client_info_ssub(&bulk("id=7 sub=0")), None);
    }
}
