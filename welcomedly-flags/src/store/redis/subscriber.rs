//! Interim subscriber, until welcomedly-redis has the shared one (`Link::subscriber`), with
//! the same shape so the store switches by changing one import: one task per subscription owns
//! a pub/sub connection opened from the link's settings (URL, connect timeout, backoff),
//! delivers `Subscribed` on every (re)subscription, each message, and `Lagged` when the buffer
//! overflowed; it pings to find a silently dead connection and resubscribes with the link's
//! backoff. Dropping the [`Subscription`] ends the task.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use welcomedly_redis::redis::{self, aio::PubSub};
use welcomedly_redis::{Link, LinkConfig};

/// How often the pub/sub connection is pinged, so a silently dead one is replaced.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// What a subscription receives.
#[derive(Debug)]
#[non_exhaustive]
pub(super) enum Delivery {
    /// (Re)subscribed: anything published before may have been missed. `outage` is how long
    /// the subscription was down (`None` for the first one).
    Subscribed { outage: Option<Duration> },
    /// One message on the channel.
    Message(Bytes),
    /// This many messages were dropped because the buffer was full.
    Lagged(u64),
}

/// One channel's deliveries. Dropping it unsubscribes.
pub(super) struct Subscription {
    rx: mpsc::Receiver<Delivery>,
    task: tokio::task::AbortHandle,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscription {
    /// The next delivery; `None` once the subscriber ended.
    pub(super) async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }
}

/// Subscribes to `channel` in the background (never fails, never waits). Must run inside a
/// tokio runtime.
pub(super) fn subscribe(link: &Link, channel: String, capacity: usize) -> Subscription {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let task = tokio::spawn(run(link.config().clone(), channel, tx));
    Subscription {
        rx,
        task: task.abort_handle(),
    }
}

async fn open(client: &redis::Client, channel: &str) -> redis::RedisResult<PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

async fn run(config: LinkConfig, channel: String, tx: mpsc::Sender<Delivery>) {
    // The link already parsed this URL: it cannot fail here.
    let Ok(client) = redis::Client::open(config.url.expose()) else {
        tracing::error!(url = %config.url, "the flag store cannot subscribe: the Redis URL does not parse");
        return;
    };
    let mut lost_at: Option<Instant> = None;
    loop {
        let mut delays = config.backoff.delays();
        let mut attempts = 0u32;
        let pubsub = loop {
            match tokio::time::timeout(config.connect_timeout, open(&client, &channel)).await {
                Ok(Ok(p)) => break p,
                Ok(Err(e)) => {
                    attempts += 1;
                    let e = welcomedly_core::redact::redact_url(&e.to_string()).into_owned();
                    if attempts.is_multiple_of(10) {
                        tracing::warn!(error = %e, attempts, "the flag store still cannot subscribe");
                    } else {
                        tracing::debug!(error = %e, attempts, "the flag store cannot subscribe yet");
                    }
                }
                Err(_) => {
                    attempts += 1;
                    tracing::debug!(
                        attempts,
                        "subscribing took longer than the link's connect timeout"
                    );
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(delays.next_delay()).await;
        };
        let outage = lost_at.map(|t| t.elapsed());
        if tx.send(Delivery::Subscribed { outage }).await.is_err() {
            return;
        }
        let reason = match follow(pubsub, &tx, &config).await {
            Some(reason) => reason,
            None => return,
        };
        tracing::warn!(
            reason,
            "the flag store's subscription was lost: flags serve from the last snapshot, resubscribing"
        );
        lost_at = Some(Instant::now());
    }
}

/// Reads messages until the subscription fails (`Some(why)`) or the receiver is gone (`None`).
async fn follow(
    pubsub: PubSub,
    tx: &mpsc::Sender<Delivery>,
    config: &LinkConfig,
) -> Option<&'static str> {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ping_failures = 0u32;
    let mut lagged = 0u64;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return Some("the connection closed");
                };
                if lagged > 0 {
                    match tx.try_send(Delivery::Lagged(lagged)) {
                        Ok(()) => lagged = 0,
                        Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return None,
                    }
                }
                let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                match tx.try_send(Delivery::Message(payload)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => lagged += 1,
                    Err(mpsc::error::TrySendError::Closed(_)) => return None,
                }
            }
            _ = ping.tick() => {
                if tx.is_closed() {
                    return None;
                }
                match tokio::time::timeout(config.connect_timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => ping_failures = 0,
                    _ => {
                        ping_failures += 1;
                        if ping_failures >= config.failure_threshold.max(1) {
                            return Some("pings failed or timed out");
                        }
                    }
                }
            }
        }
    }
}
