//! The follower: the one task that turns the store's subscription (on the link's shared
//! subscriber) into [`Notice`](crate::store::Notice)s. It announces each published version,
//! asks for a reload on every (re)subscription, lost subscription and dropped message, and
//! reads the version every poll interval to catch a message lost on the way.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use welcomedly_redis::{Delivery, Subscription};

use super::Inner;

/// The capacity of the subscription's buffer: announcements are tiny and a burst only needs
/// the latest one; an overflow is a reload.
pub(super) const CAPACITY: usize = 64;

/// Waits (when Redis answers, up to the store's budget) for the first subscription, so a store
/// returned by `RedisStore::new` already hears announcements, then returns the follower loop
/// to spawn. Holds the store weakly: dropping the store ends it.
pub(super) async fn start(
    inner: &Arc<Inner>,
    mut subscription: Subscription,
    connected: watch::Receiver<bool>,
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
    run(
        Arc::downgrade(inner),
        subscription,
        connected,
        inner.poll_interval,
    )
}

async fn run(
    inner: Weak<Inner>,
    subscription: Subscription,
    mut connected: watch::Receiver<bool>,
    poll_interval: Duration,
) {
    let mut subscription = Some(subscription);
    let mut poll = tokio::time::interval_at(Instant::now() + poll_interval, poll_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    connected.mark_unchanged();
    let mut watching = true;
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
                match strong.read_version_and_digest().await {
                    Ok((version, digest)) => {
                        if strong.announce(version) {
                            tracing::info!(version, "the version check found a version no announcement brought (a lost message)");
                        } else if strong.is_reused(version, digest.as_deref()) {
                            tracing::warn!(version, "the version check found version {version} with other content than the one loaded: a write was lost (a failover?) and its number reused; reloading");
                            strong.resync();
                        }
                    }
                    // The sync reloads, fails, and reports itself stale until Redis answers.
                    Err(e) => {
                        tracing::debug!(error = %e, "the flag version check failed");
                        strong.resync();
                    }
                }
            }
            changed = connected.changed(), if watching => {
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                if !*connected.borrow_and_update() && strong.subscribed.swap(false, Ordering::AcqRel) {
                    // Lost: messages published from now on are missed. The sync reloads now
                    // (and, if Redis is gone, reports itself stale) and again on `Subscribed`.
                    tracing::warn!("the flag store's subscription was lost: flags serve from the last snapshot until it is back");
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
            inner.subscribed.store(true, Ordering::Release);
            // `None` on the subscription's first `Subscribed`, the outage after a reconnect.
            if let Some(outage) = outage {
                inner.resubscriptions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    outage_ms = u64::try_from(outage.as_millis()).unwrap_or(u64::MAX),
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
                    // Each version is published once: a version announced again was written
                    // again (a write lost in a failover, its number reused), so reload and
                    // let the sync compare the content. At worst (the version check announced
                    // it first) one load too many.
                    if !inner.announce(version) {
                        tracing::info!(
                            version,
                            "version {version} was published again: reloading to compare its content"
                        );
                        inner.resync();
                    }
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
        _ => inner.resync(),
    }
}
