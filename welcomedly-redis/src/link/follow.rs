//! Following a Sentinel failover at once: the task that watches the Sentinels for
//! `+switch-master` (see [`crate::sentinel::watch_switches`]) tells the link, which drops a
//! connection to any other node without a hold-off and cuts its reconnect delay short. The
//! subscriber and the dedicated pool follow the link (the subscriber resubscribes when the link
//! reconnects elsewhere; a dedicated connection made before the link reconnected is not handed
//! out again).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Inner;
use crate::sentinel::{Addr, WatchSettings, watch_switches};

impl Inner {
    /// On Sentinel, starts the task watching the Sentinels for failovers (one pub/sub
    /// connection per link; aborted when the link is dropped).
    pub(super) fn watch_sentinels(this: &Arc<Self>) {
        let Some(sentinels) = this.target.sentinels() else {
            return;
        };
        let c = &this.config;
        let settings = WatchSettings {
            failure_threshold: c.failure_threshold,
            min_outage: c.min_outage,
            backoff: c.backoff,
            connect_timeout: c.connect_timeout,
        };
        let weak = Arc::downgrade(this);
        let task = this
            .runtime
            .spawn(watch_switches(sentinels.clone(), settings, move |addr| {
                if let Some(inner) = weak.upgrade() {
                    inner.master_is(&addr);
                }
            }));
        let _ = this.watch.set(task.abort_handle());
    }

    /// The Sentinels name `addr` as the master. A connection to another node (a demoted or
    /// dead master) is dropped now and replaced at once, without the hold-off a failing
    /// connection gets; a reconnect delay under way is cut short (the subscriber follows the
    /// link there).
    /// Nothing happens when the link is already there (the watcher reports the master after
    /// every resubscribe, and the link may have found it first).
    pub(crate) fn master_is(&self, addr: &Addr) {
        match self.hot.load_full() {
            Some(hot) if hot.addr.as_ref().is_some_and(|a| addr.is(a)) => {}
            Some(hot) => {
                self.counters.switches.fetch_add(1, Ordering::Relaxed);
                // Generation check inside: only this connection is dropped, never a
                // replacement made meanwhile.
                self.drop_connection(&hot, false, "the Sentinels announced a new master");
                self.switched.notify_one();
            }
            // No connection (the old master died): try the one announced now. Not counted:
            // the watch also reports the master after every resubscribe.
            None => self.switched.notify_one(),
        }
    }
}
