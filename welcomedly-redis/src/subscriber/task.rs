//! The subscriber's one task: connects, restores every wanted channel in one `SUBSCRIBE`, keeps
//! the subscribed set in step with the wanted one, reads messages, pings, and resubscribes with
//! the link's minimum outage and backoff.

use std::collections::HashSet;
use std::fmt;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use redis::ConnectionAddr;
use redis::aio::{PubSub, PubSubSink, PubSubStream};
use tokio::time::{Instant, MissedTickBehavior};
use welcomedly_core::redact::redact_url;

use super::Shared;
use crate::classify::{Failure, classify};

/// How often an idle pub/sub connection is pinged, so a frozen Redis (which keeps the socket
/// open) is noticed within `failure_threshold` of these.
const PING_EVERY: Duration = Duration::from_secs(1);

/// Why a connection was given up.
struct Ended {
    /// Dropped for failures (pings, a failed `SUBSCRIBE`): wait `min_outage` first.
    hold_off: bool,
    why: String,
}

/// The task. Holds the subscriber weakly between steps; the link aborts it when dropped.
pub(super) async fn run(shared: Weak<Shared>) {
    let Some(config) = shared.upgrade().map(|s| s.config.clone()) else {
        return;
    };
    let mut delays = config.backoff.delays();
    let mut hold_off = false;
    let mut attempts = 0u32;
    let mut generation = 0u64;
    loop {
        // No channel wanted: no connection needed until one is.
        loop {
            let Some(strong) = shared.upgrade() else {
                return;
            };
            let notified = strong.wake.notified();
            if strong.wants_any() {
                break;
            }
            // Held while waiting: the link aborts this task when it is dropped.
            notified.await;
        }
        if std::mem::take(&mut hold_off) {
            tokio::time::sleep(config.min_outage).await;
        }
        let Some(strong) = shared.upgrade() else {
            return;
        };
        // Each node within the connect timeout; on a cluster every node in turn.
        let within = config.connect_timeout
            * strong.target.nodes().map_or(1, |n| n.len().clamp(1, 8)) as u32;
        let opened = tokio::time::timeout(within, open(&strong)).await;
        let pubsub = match opened {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!(
                "connecting to Redis at {} for pub/sub took longer than {} ms",
                config.topology,
                within.as_millis()
            )),
        };
        let (mut sink, stream, addr) = match pubsub {
            Ok((p, addr)) => {
                let (sink, stream) = p.split();
                (sink, stream, addr)
            }
            Err(e) => {
                attempts += 1;
                strong.failed_attempts.fetch_add(1, Ordering::Relaxed);
                if attempts.is_multiple_of(10) {
                    tracing::warn!(error = %e, attempts, "Redis pub/sub still unreachable");
                } else {
                    tracing::debug!(error = %e, attempts, "Redis pub/sub still unreachable");
                }
                drop(strong);
                retry_after(&shared, delays.next_delay()).await;
                continue;
            }
        };
        let mut on_conn = HashSet::new();
        // Counted and connected before the subscriptions are told `Subscribed`, so none sees
        // that first.
        generation += 1;
        strong.connections.fetch_add(1, Ordering::Relaxed);
        strong.connected.send_replace(true);
        // Every wanted channel, in one `SUBSCRIBE`.
        if let Err(ended) = sync(&strong, &mut sink, &mut on_conn).await {
            strong.connected.send_replace(false);
            attempts += 1;
            strong.failed_attempts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %ended.why, attempts, "Redis pub/sub: subscribing failed");
            strong.lost();
            drop(strong);
            retry_after(&shared, delays.next_delay()).await;
            continue;
        }
        if generation > 1 {
            tracing::info!(
                attempts,
                generation,
                "Redis pub/sub is back: every channel is subscribed again"
            );
        }
        attempts = 0;
        delays = config.backoff.delays();
        drop(strong);
        let since = Instant::now();
        let ended = follow(&shared, sink, stream, on_conn, &config, addr).await;
        let Some(strong) = shared.upgrade() else {
            return;
        };
        strong.connected.send_replace(false);
        strong.lost();
        // On a cluster, the next attempt starts at the next node: this one may be dead.
        if strong.target.nodes().is_some() {
            strong.next_node.fetch_add(1, Ordering::Relaxed);
        }
        let Some(ended) = ended else { return };
        tracing::warn!(
            error = %ended.why,
            generation,
            "the Redis pub/sub connection was lost: messages published until it is back are missed (subscribers are told); resubscribing"
        );
        // A connection closed as soon as it was made (a client limit Redis enforces on every
        // new one) is not reopened in a busy loop.
        hold_off = ended.hold_off || since.elapsed() < config.min_outage;
    }
}

/// Waits `delay` before the next attempt, or less: until the link has made a connection (Redis
/// answers again, so trying now is worth it).
async fn retry_after(shared: &Weak<Shared>, delay: Duration) {
    let Some((link, mut attempts)) = shared.upgrade().and_then(|s| {
        let link = s.link.clone();
        let attempts = link.upgrade()?.attempts();
        Some((link, attempts))
    }) else {
        tokio::time::sleep(delay).await;
        return;
    };
    let link_back = async {
        while attempts.changed().await.is_ok() {
            if link.upgrade().is_some_and(|l| l.is_up()) {
                return;
            }
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = link_back => {}
    }
}

/// A pub/sub connection on our own socket (the link's handshake: `AUTH`, `SELECT`), each
/// attempt within the link's connect timeout.
///
/// On a Redis Cluster, classic `SUBSCRIBE` on any one node receives what is published on every
/// node (Redis broadcasts `PUBLISH` over the cluster bus), so the subscriber needs one node,
/// any: it tries the node that worked last, then the others in turn (seed nodes, then nodes
/// learned from the slot map); a lost node makes it move to the next one.
async fn open(shared: &Shared) -> Result<(PubSub, ConnectionAddr), String> {
    let timeout = shared.config.connect_timeout;
    let Some(seeds) = shared.target.nodes() else {
        let info = shared.target.resolve(timeout).await?;
        return open_at(shared, &info)
            .await
            .map(|p| (p, info.addr().clone()));
    };
    let mut candidates = seeds.to_vec();
    if let Some(link) = shared.link.upgrade() {
        for node in link.cluster_nodes() {
            if !candidates.iter().any(|c| c.addr() == node.addr()) {
                candidates.push(node);
            }
        }
    }
    let n = candidates.len().max(1);
    let first = shared.next_node.load(Ordering::Relaxed) % n;
    let mut last = String::new();
    for i in 0..n {
        let at = (first + i) % n;
        let Some(info) = candidates.get(at) else {
            continue;
        };
        match tokio::time::timeout(timeout, open_at(shared, info)).await {
            Ok(Ok(pubsub)) => {
                shared.next_node.store(at, Ordering::Relaxed);
                return Ok((pubsub, info.addr().clone()));
            }
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = format!(
                    "connecting to Redis Cluster node {} for pub/sub took longer than {} ms",
                    info.addr(),
                    timeout.as_millis()
                );
            }
        }
    }
    // Next time, start past the first one tried.
    shared.next_node.store(first + 1, Ordering::Relaxed);
    Err(last)
}

/// One pub/sub connection to the node at `info`.
async fn open_at(shared: &Shared, info: &redis::ConnectionInfo) -> Result<PubSub, String> {
    let cannot = |e: &dyn fmt::Display| {
        redact_url(&format!(
            "cannot connect to Redis at {} ({}) for pub/sub: {e}",
            shared.config.topology,
            info.addr()
        ))
        .into_owned()
    };
    let settings = info.redis_settings();
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| cannot(&e))?;
            let _ = stream.set_nodelay(true);
            PubSub::new(settings, stream).await.map_err(|e| cannot(&e))
        }
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| cannot(&e))?;
            PubSub::new(settings, stream).await.map_err(|e| cannot(&e))
        }
        _ => Err(cannot(&"this kind of address is not supported")),
    }
}

/// Brings the connection's channels in step with the wanted ones: one `UNSUBSCRIBE` for the
/// channels nobody wants any more, one `SUBSCRIBE` for the new ones.
async fn sync(
    shared: &Shared,
    sink: &mut PubSubSink,
    on_conn: &mut HashSet<String>,
) -> Result<(), Ended> {
    let (gone, new) = {
        let mut state = shared.lock();
        let gone: Vec<String> = on_conn
            .iter()
            .filter(|c| state.channels.get(*c).is_none_or(|ch| ch.subs.is_empty()))
            .cloned()
            .collect();
        // A channel unsubscribed here and wanted again later gets a fresh entry, subscribed
        // by a later `SUBSCRIBE`: it never counts as acknowledged by this one.
        state.channels.retain(|_, ch| !ch.subs.is_empty());
        let new: Vec<String> = state
            .channels
            .iter()
            .filter(|(name, ch)| !ch.confirmed && !on_conn.contains(*name))
            .map(|(name, _)| name.clone())
            .collect();
        (gone, new)
    };
    let within = shared.config.connect_timeout;
    if !gone.is_empty() {
        for c in &gone {
            on_conn.remove(c);
        }
        command(within, "UNSUBSCRIBE", sink.unsubscribe(&gone)).await?;
    }
    if !new.is_empty() {
        command(within, "SUBSCRIBE", sink.subscribe(&new)).await?;
        on_conn.extend(new.iter().cloned());
        let _ = shared.confirmed(&new);
    }
    Ok(())
}

async fn command(
    within: Duration,
    name: &str,
    call: impl Future<Output = redis::RedisResult<()>>,
) -> Result<(), Ended> {
    match tokio::time::timeout(within, call).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            let text = redact_url(&e.to_string()).into_owned();
            if classify(&e) == Failure::Server {
                // Redis refused (an ACL on a channel): a new connection would not change that.
                tracing::error!(error = %text, "Redis refused {name} on the pub/sub connection: check the user's channel permissions");
            }
            Err(Ended {
                hold_off: true,
                why: format!("{name} failed: {text}"),
            })
        }
        Err(_) => Err(Ended {
            hold_off: true,
            why: format!("{name} took longer than {} ms", within.as_millis()),
        }),
    }
}

/// Reads messages and follows changes until the connection fails (`Some`) or the subscriber is
/// gone (`None`).
async fn follow(
    shared: &Weak<Shared>,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    mut on_conn: HashSet<String>,
    config: &crate::LinkConfig,
    addr: ConnectionAddr,
) -> Option<Ended> {
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let threshold = config.failure_threshold.max(1);
    let mut failures = 0u32;
    // Held for the connection's life only (the link aborts this task when it is dropped).
    let strong = shared.upgrade()?;
    // On Sentinel: the link reconnecting elsewhere means the master moved; a subscription on
    // the old one (alive, demoted or isolated) would receive nothing published on the new one.
    let follows_master = matches!(config.topology, crate::Topology::Sentinel { .. });
    let mut link_attempts = strong
        .link
        .upgrade()
        .filter(|_| follows_master)
        .map(|l| l.attempts());
    let master_moved = async |attempts: &mut Option<tokio::sync::watch::Receiver<u64>>| {
        let Some(attempts) = attempts.as_mut() else {
            return std::future::pending::<()>().await;
        };
        while attempts.changed().await.is_ok() {
            let moved = strong
                .link
                .upgrade()
                .and_then(|l| l.current_addr())
                .is_some_and(|now| now != addr);
            if moved {
                return;
            }
        }
        std::future::pending::<()>().await;
    };
    loop {
        tokio::select! {
            () = master_moved(&mut link_attempts) => {
                return Some(Ended { hold_off: false, why: "the link follows a new master: resubscribing there".to_owned() });
            }
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return Some(Ended { hold_off: false, why: "Redis closed the connection".to_owned() });
                };
                strong.deliver(msg.get_channel_name(), msg.get_payload_bytes());
            }
            () = strong.wake.notified() => {
                if strong.closed.load(Ordering::Acquire) {
                    return None;
                }
                if let Err(ended) = sync(&strong, &mut sink, &mut on_conn).await {
                    return Some(ended);
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(config.budget, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => failures = 0,
                    _ => {
                        failures += 1;
                        if failures >= threshold {
                            return Some(Ended {
                                hold_off: true,
                                why: format!("{failures} pings in a row went unanswered within {} ms", config.budget.as_millis()),
                            });
                        }
                    }
                }
            }
        }
    }
}
