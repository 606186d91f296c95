//! Ephemeral topics on Redis pub/sub: the one task that owns the bus's subscriber connection.
//! It pattern-subscribes to every ephemeral channel of the bus's prefix once (so a local
//! subscriber never waits for a `SUBSCRIBE` round trip and never misses what is published right
//! after it subscribed), pings to find a silently dead connection, tells ephemeral subscribers
//! when the connection is lost ([`Signal::Interrupted`]) and resubscribes with backoff and
//! jitter.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSub;
use tokio::time::{Instant, MissedTickBehavior};

use super::link::jittered;
use super::{Entry, Inner};
use crate::Error;

/// A new pub/sub connection subscribed to the bus's ephemeral channels, within the budget.
pub(super) async fn open(inner: &Inner) -> Result<PubSub, Error> {
    let pattern = inner.names.ephemeral_pattern();
    let Some(link) = inner.link() else {
        return Err(Error::invalid(
            "an in-memory bus has no Redis to subscribe to",
        ));
    };
    let subscribe = async {
        let mut pubsub = link.client().get_async_pubsub().await?;
        pubsub.psubscribe(&pattern).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    let budget = link.budget.max(Duration::from_secs(1));
    match tokio::time::timeout(budget, subscribe).await {
        Ok(Ok(pubsub)) => Ok(pubsub),
        Ok(Err(e)) => Err(Error::redis(
            format!(
                "the bus cannot subscribe to {pattern}: check that Redis runs and is reachable"
            ),
            e,
        )),
        Err(_) => Err(super::link::unavailable(format!(
            "the bus's subscription to {pattern} took longer than {} ms",
            budget.as_millis()
        ))),
    }
}

/// The subscriber loop. Holds the bus weakly: dropping the bus ends it.
pub(super) async fn run(inner: Weak<Inner>, mut first: Option<PubSub>) {
    loop {
        let pubsub = match first.take() {
            Some(p) => p,
            None => match resubscribe(&inner).await {
                Some(p) => p,
                None => return,
            },
        };
        let (ping, budget, threshold) = {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            strong.subscribed.store(true, Ordering::Release);
            (
                strong.ping_interval,
                strong.budget.max(Duration::from_millis(200)),
                strong.failure_threshold,
            )
        };
        let Some(reason) = follow(&inner, pubsub, ping, budget, threshold).await else {
            return;
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        strong.subscribed.store(false, Ordering::Release);
        strong.interrupt_ephemeral();
        tracing::warn!(
            reason,
            "the bus's pub/sub connection was lost: ephemeral events published until it is back are lost (subscribers are told); resubscribing"
        );
    }
}

/// Reads messages until the subscription fails (`Some(why)`) or the bus is dropped (`None`).
async fn follow(
    inner: &Weak<Inner>,
    pubsub: PubSub,
    every: Duration,
    budget: Duration,
    threshold: u32,
) -> Option<&'static str> {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval_at(Instant::now() + every, every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return Some("the connection closed");
                };
                let strong = inner.upgrade()?;
                let channel = msg.get_channel_name();
                let Some(topic) = strong.names.ephemeral_topic(channel) else {
                    continue;
                };
                match std::str::from_utf8(msg.get_payload_bytes()) {
                    Ok(payload) => strong.deliver_ephemeral(topic, Entry { payload: payload.into(), offset: None }),
                    Err(_) => {
                        strong.stats.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(topic, "a message on a bus channel is not UTF-8 JSON: skipped (only the bus should publish there)");
                    }
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(budget, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => failures = 0,
                    _ => {
                        failures += 1;
                        if failures >= threshold {
                            return Some("pings failed or timed out");
                        }
                    }
                }
            }
        }
    }
}

/// Subscribes again with exponential backoff and jitter; `None` when the bus was dropped.
async fn resubscribe(inner: &Weak<Inner>) -> Option<PubSub> {
    let (mut delay, max) = {
        let strong = inner.upgrade()?;
        (strong.reconnect_interval, strong.max_reconnect_interval)
    };
    let mut attempts = 0u32;
    loop {
        tokio::time::sleep(jittered(delay)).await;
        let strong = inner.upgrade()?;
        match open(&strong).await {
            Ok(pubsub) => {
                strong.stats.resubscribes.fetch_add(1, Ordering::Relaxed);
                tracing::info!(attempts, "the bus's pub/sub subscription is back");
                return Some(pubsub);
            }
            Err(e) => {
                attempts += 1;
                if attempts.is_multiple_of(10) {
                    tracing::warn!(error = %e, attempts, "the bus still cannot subscribe");
                } else {
                    tracing::debug!(error = %e, attempts, "the bus still cannot subscribe");
                }
            }
        }
        drop(strong);
        delay = delay.saturating_mul(2).min(max);
    }
}
