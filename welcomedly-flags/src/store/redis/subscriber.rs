//! The subscriber: the one task that owns the store's pub/sub connection. It turns published
//! versions into [`Notice`]s, reads the version every poll interval to catch a lost message,
//! pings to find a silently dead connection, and resubscribes with backoff and jitter.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSub;
use tokio::time::{Instant, MissedTickBehavior};
use welcomedly_core::redact::redact_url;

use super::Inner;
use crate::store::StoreError;
use crate::store::backoff::Backoff;

/// A new pub/sub connection subscribed to the store's channel, within the budget.
pub(super) async fn open(inner: &Inner) -> Result<PubSub, StoreError> {
    let subscribe = async {
        let mut pubsub = inner.client.get_async_pubsub().await?;
        pubsub.subscribe(&inner.keys.channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    match tokio::time::timeout(inner.budget, subscribe).await {
        Ok(Ok(pubsub)) => Ok(pubsub),
        Ok(Err(e)) => Err(StoreError::unavailable_because(
            format!(
                "cannot subscribe to {} on {}: check that it runs and is reachable",
                inner.keys.channel, inner.name
            ),
            redact_url(&e.to_string()).into_owned(),
        )),
        Err(_) => Err(StoreError::unavailable(format!(
            "subscribing to {} on {} took longer than the {} ms budget",
            inner.keys.channel,
            inner.name,
            inner.budget.as_millis()
        ))),
    }
}

impl Inner {
    /// Announces `version` (only a change wakes the receivers).
    fn announce(&self, version: u64) -> bool {
        self.notices.send_if_modified(|n| {
            let changed = n.version != version;
            n.version = version;
            changed
        })
    }

    /// Tells receivers that announcements may have been lost: they reload.
    fn resync(&self) {
        self.notices
            .send_modify(|n| n.epoch = n.epoch.wrapping_add(1));
    }
}

/// The subscriber loop. Holds the store weakly (upgraded per event, never across the wait for
/// a message): dropping the store ends it.
pub(super) async fn run(inner: Weak<Inner>, mut first: Option<PubSub>) {
    loop {
        // The subscription made by `build` missed nothing: nobody could follow the store before.
        let (pubsub, fresh) = match first.take() {
            Some(p) => (p, false),
            None => match resubscribe(&inner).await {
                Some(p) => (p, true),
                None => return,
            },
        };
        let (generation, timing) = {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let generation = strong.generations.fetch_add(1, Ordering::Relaxed) + 1;
            strong.subscribed.store(true, Ordering::Release);
            if fresh {
                // Whatever was published while we were not subscribed is unknown: reload.
                strong.resync();
            }
            let timing = Timing {
                poll: strong.poll_interval,
                ping: strong.ping_interval,
                budget: strong.budget,
                threshold: strong.failure_threshold,
            };
            (generation, timing)
        };
        let Some(reason) = follow(&inner, pubsub, timing).await else {
            return;
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        strong.subscribed.store(false, Ordering::Release);
        strong.resync();
        tracing::warn!(
            generation,
            reason,
            "the flag store's subscription was lost: flags serve from the last snapshot, resubscribing"
        );
        let pause = strong.min_reconnect_pause;
        drop(strong);
        tokio::time::sleep(pause).await;
    }
}

#[derive(Clone, Copy)]
struct Timing {
    poll: Duration,
    ping: Duration,
    budget: Duration,
    threshold: u32,
}

/// Reads announcements until the subscription fails (`Some(why)`) or the store is dropped
/// (`None`).
async fn follow(inner: &Weak<Inner>, pubsub: PubSub, t: Timing) -> Option<&'static str> {
    let (mut sink, mut stream) = pubsub.split();
    let start = Instant::now();
    let mut poll = tokio::time::interval_at(start + t.poll, t.poll);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval_at(start + t.ping, t.ping);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ping_failures = 0u32;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return Some("the connection closed");
                };
                let strong = inner.upgrade()?;
                match msg.get_payload::<String>().ok().and_then(|t| t.trim().parse::<u64>().ok()) {
                    Some(version) => {
                        strong.announce(version);
                    }
                    None => {
                        tracing::warn!(
                            channel = %strong.keys.channel,
                            "a message on the flag channel is not a version number: ignored, reloading to be safe (only the store should publish there)"
                        );
                        strong.resync();
                    }
                }
            }
            _ = poll.tick() => {
                let strong = inner.upgrade()?;
                match strong.read_version().await {
                    Ok(version) => {
                        if strong.announce(version) {
                            tracing::info!(version, "the version check found a version no announcement brought (a lost message)");
                        }
                    }
                    // The sync reloads, fails, and reports itself stale until Redis answers.
                    Err(e) => {
                        tracing::debug!(error = %e, "the flag version check failed");
                        strong.resync();
                    }
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(t.budget, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => ping_failures = 0,
                    _ => {
                        inner.upgrade()?.failures.fetch_add(1, Ordering::Relaxed);
                        ping_failures += 1;
                        if ping_failures >= t.threshold {
                            return Some("pings failed or timed out");
                        }
                    }
                }
            }
        }
    }
}

/// Subscribes again with exponential backoff and jitter; `None` when the store was dropped.
async fn resubscribe(inner: &Weak<Inner>) -> Option<PubSub> {
    let mut backoff = {
        let strong = inner.upgrade()?;
        Backoff::new(strong.reconnect_interval, strong.max_reconnect_interval)
    };
    let mut attempts = 0u32;
    loop {
        let strong = inner.upgrade()?;
        match open(&strong).await {
            Ok(pubsub) => {
                strong.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(attempts, "the flag store's subscription is back");
                return Some(pubsub);
            }
            Err(e) => {
                attempts += 1;
                if attempts.is_multiple_of(10) {
                    tracing::warn!(error = %e, attempts, "the flag store still cannot subscribe");
                } else {
                    tracing::debug!(error = %e, attempts, "the flag store still cannot subscribe");
                }
            }
        }
        drop(strong);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
