//! Ephemeral topics on Redis pub/sub: one forwarder per topic with local subscribers, from the
//! topic's channel on the link's shared subscriber to the topic's local broadcast. It tells the
//! local subscribers when the pub/sub connection is lost ([`Signal::Interrupted`]: events
//! published until it is back are lost, at most once) and ends, unsubscribing the channel, when
//! the last local subscriber is gone.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::{broadcast, watch};
use welcomedly_redis::Delivery;

use super::{Entry, Inner, Signal};

/// The forwarder of `topic`. Holds the bus weakly: dropping the bus ends it.
pub(super) async fn forward(
    inner: Weak<Inner>,
    topic: Arc<str>,
    mut subscription: welcomedly_redis::Subscription,
    mut connected: watch::Receiver<bool>,
    tx: broadcast::Sender<Signal>,
    subscribed: watch::Sender<bool>,
) {
    let check_every = match inner.upgrade() {
        Some(strong) => strong.block,
        None => return,
    };
    // Subscribed at least once, and the local subscribers were told of the loss since the last
    // time the channel was subscribed.
    let mut ever = false;
    let mut told = false;
    connected.borrow_and_update();
    loop {
        tokio::select! {
            delivery = subscription.recv() => {
                let Some(delivery) = delivery else { return };
                let Some(strong) = inner.upgrade() else { return };
                match delivery {
                    Delivery::Message(payload) => match std::str::from_utf8(&payload) {
                        Ok(json) => strong.deliver_ephemeral(
                            &topic,
                            Entry { payload: json.into(), offset: None },
                        ),
                        Err(_) => {
                            strong.stats.malformed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(topic = %topic, "a message on a bus channel is not UTF-8 JSON: skipped (only the bus should publish there)");
                        }
                    },
                    Delivery::Subscribed { outage } => {
                        // A short outage may not have been seen on `connected`: tell now.
                        if outage.is_some() && ever && !told {
                            let _ = tx.send(Signal::Interrupted);
                        }
                        ever = true;
                        told = false;
                        subscribed.send_replace(true);
                    }
                    Delivery::Lagged(n) => {
                        // This instance fell behind Redis: every local subscriber lost them.
                        strong.stats.dropped.fetch_add(n, Ordering::Relaxed);
                        let _ = tx.send(Signal::Interrupted);
                    }
                    _ => {}
                }
            }
            changed = connected.changed() => {
                if changed.is_err() {
                    return;
                }
                let up = *connected.borrow_and_update();
                if !up {
                    subscribed.send_replace(false);
                    if ever && !told {
                        told = true;
                        let _ = tx.send(Signal::Interrupted);
                    }
                }
            }
            () = tokio::time::sleep(check_every) => {}
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.release_ephemeral(&topic, &tx) {
            return;
        }
    }
}
