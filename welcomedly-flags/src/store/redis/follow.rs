//! The follower: the one task that turns the store's subscription into [`Notice`]s. It
//! announces each published version, asks for a reload on every (re)subscription, lost
//! message and link state change, and reads the version every poll interval to catch a message
//! lost on the way.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use super::Inner;
use super::subscriber::{Delivery, Subscription};

/// How often the link's state is looked at (an atomic load): losing or regaining Redis makes
/// the sync reload at once, so it reports itself stale without waiting for the next poll.
const LINK_CHECK: Duration = Duration::from_millis(100);

/// The capacity of the subscription's buffer: announcements are tiny and a burst only needs
/// the latest one; an overflow is a reload.
pub(super) const CAPACITY: usize = 64;

/// Waits (when Redis answers, up to the store's budget) for the first subscription, so a store
/// returned by `RedisStore::new` already hears announcements, then returns the follower loop
/// to spawn. Holds the store weakly: dropping the store ends it.
pub(super) async fn start(
    inner: &Arc<Inner>,
    mut subscription: Subscription,
) -> impl Future<Output = ()> + Send + 'static {
    if inner.link.is_connected()
        && let Ok(first) = tokio::time::timeout(inner.budget, subscription.recv()).await
    {
        match first {
            // Nobody follows the store yet: nothing to reload.
            Some(Delivery::Subscribed { .. }) => {
                inner.subscribed.store(true, Ordering::Release);
            }
            Some(_) => {}
            None => {
                tracing::warn!("the flag store's subscriber ended: changes arrive by polling only");
            }
        }
    }
    run(Arc::downgrade(inner), subscription, inner.poll_interval)
}

async fn run(inner: Weak<Inner>, subscription: Subscription, poll_interval: Duration) {
    let mut subscription = Some(subscription);
    let start = Instant::now();
    let mut poll = tokio::time::interval_at(start + poll_interval, poll_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut link_check = tokio::time::interval_at(start + LINK_CHECK, LINK_CHECK);
    link_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let Some(mut was_connected) = inner.upgrade().map(|s| s.link.is_connected()) else {
        return;
    };
    loop {
        tokio::select! {
            delivery = next(&mut subscription) => {
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                match delivery {
                    Some(delivery) => on_delivery(&strong, delivery),
                    None => {
                        tracing::warn!("the flag store's subscriber ended: changes arrive by polling only");
                        subscription = None;
                        strong.subscribed.store(false, Ordering::Release);
                        strong.resync();
                    }
                }
            }
            _ = poll.tick() => {
                let Some(strong) = inner.upgrade() else {
                    return;
                };
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
            _ = link_check.tick() => {
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                let connected = strong.link.is_connected();
                if connected != was_connected {
                    was_connected = connected;
                    // Lost: the sync tries, fails and reports itself stale. Back: it reloads
                    // now rather than at its next retry.
                    strong.resync();
                }
            }
        }
    }
}

async fn next(subscription: &mut Option<Subscription>) -> Option<Delivery> {
    match subscription {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

fn on_delivery(inner: &Inner, delivery: Delivery) {
    match delivery {
        Delivery::Subscribed { outage } => {
            if inner.subscribed.swap(true, Ordering::AcqRel) {
                inner.resubscriptions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    outage_ms = outage.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    "the flag store's subscription is back: reloading the flag set"
                );
            }
            // Whatever was published while we were not subscribed is unknown: reload.
            inner.resync();
        }
        Delivery::Message(payload) => {
            let version = std::str::from_utf8(&payload)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok());
            match version {
                Some(version) => {
                    inner.announce(version);
                }
                None => {
                    tracing::warn!(
                        channel = %inner.keys.channel,
                        "a message on the flag channel is not a version number: ignored, reloading to be safe (only the store should publish there)"
                    );
                    inner.resync();
                }
            }
        }
        Delivery::Lagged(missed) => {
            tracing::info!(
                missed,
                "flag announcements overflowed the subscription's buffer: reloading"
            );
            inner.resync();
        }
        #[allow(unreachable_patterns)]
        _ => inner.resync(),
    }
}
