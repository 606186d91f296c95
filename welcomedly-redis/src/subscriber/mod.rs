//! [`Subscriber`]: the link's one pub/sub connection, shared by every component of an instance
//! (the event bus, the flag store), with one resubscribe loop.
//!
//! ```no_run
//! use welcomedly_redis::{Delivery, Link, LinkConfig};
//!
//! # async fn run() -> Result<(), welcomedly_redis::Error> {
//! let link = Link::connect(LinkConfig::new("redis://127.0.0.1:6379/")).await?;
//! let mut sub = link.subscriber().subscribe("flags:changed", 64);
//! while let Some(delivery) = sub.recv().await {
//!     match delivery {
//!         // Subscribed (again): whatever was published before may be missed; reload.
//!         Delivery::Subscribed { outage } => println!("reload (outage {outage:?})"),
//!         Delivery::Message(payload) => println!("{payload:?}"),
//!         // This reader was too slow: messages were dropped; reload.
//!         Delivery::Lagged(n) => println!("missed {n}: reload"),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # How it behaves
//!
//! - **One connection** per link for every subscription to every channel, opened on the first
//!   [`subscribe`](Subscriber::subscribe); a channel several subscriptions want is subscribed
//!   once, and unsubscribed when the last of them is dropped.
//! - **A closed connection is noticed when it closes** (the connection's reader ends), and a
//!   silently dead one (a frozen Redis) by a `PING` every second: the link's
//!   [`failure_threshold`](crate::LinkConfig::failure_threshold) pings in a row without an
//!   answer within the link's [`budget`](crate::LinkConfig::budget) drop it.
//! - **One resubscribe loop** with the link's settings: a connection Redis closed is reopened
//!   at once; one dropped for failures after [`min_outage`](crate::LinkConfig::min_outage);
//!   failed attempts are spaced by the link's [`backoff`](crate::LinkConfig::backoff)
//!   (exponential, jittered), cut short when the link itself reconnects (Redis answers
//!   again). Every wanted channel is restored with one `SUBSCRIBE`.
//! - **Told, not hidden**: every subscription's first delivery on a connection is
//!   [`Delivery::Subscribed`], with how long the channel was not subscribed after an outage:
//!   what was published meanwhile is lost (pub/sub is at most once), so catch up from the
//!   source of truth then.
//! - **Bounded memory**: each subscription buffers at most its `capacity` messages; a slower
//!   reader gets [`Delivery::Lagged`] with the count it missed, never unbounded growth.
//!
//! **On a Redis Cluster** the subscriber uses classic `SUBSCRIBE` on one node, any node:
//! Redis broadcasts every `PUBLISH` to every node over the cluster bus, so one connection
//! receives every channel whatever its slot, and the subscriber needs nothing of the slot map.
//! It tries the node that worked last, then the others (seed nodes, then nodes the link
//! learned from the slot map); when its node dies or freezes it moves to the next one and
//! resubscribes. This is the default because it keeps one connection and one resubscribe loop
//! whatever the number of shards, and slot migrations and failovers never touch a
//! subscription; its cost is that the cluster bus carries every message to every node.
//! For sharded pub/sub (`SSUBSCRIBE` of each channel on its slot's master, one connection per
//! such master, a resubscribe on every unsolicited `sunsubscribe` a migration or failover
//! sends, a periodic check) use [`Link::sharded_subscriber`](crate::Link::sharded_subscriber):
//! the same [`Subscriber`] API and [`Delivery`]s.
//!
//! Use the subscriber for pub/sub, [`Link::query`](crate::Link::query) for commands and
//! [`Link::dedicated`](crate::Link::dedicated) for blocking commands and transactions.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::config::LinkConfig;
use crate::link::Target;

mod sharded;
mod task;

/// What a [`Subscription`] receives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// Subscribed on a (new) connection: from here on every message published on the channel
    /// is delivered. Anything published before may have been missed: catch up from the source
    /// of truth now.
    ///
    /// `outage`: `None` the first time; `Some(how long the channel was not subscribed)` after
    /// a reconnect.
    Subscribed {
        /// How long the channel was not subscribed (`None` on the first subscription).
        outage: Option<Duration>,
    },
    /// A message published on the channel.
    Message(Bytes),
    /// This subscription's buffer overflowed: `n` messages were dropped; catch up.
    Lagged(u64),
}

/// Counters of a link's [`Subscriber`] (see [`Subscriber::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberStats {
    /// Pub/sub connections made (subscribed).
    pub connections: u64,
    /// Connections made after the first: resubscribes after an outage.
    pub resubscribes: u64,
    /// Connection (or subscription) attempts that failed.
    pub failed_attempts: u64,
    /// Messages dropped for subscriptions whose buffer was full (each reported as
    /// [`Delivery::Lagged`]).
    pub lagged: u64,
    /// Channels wanted now.
    pub channels: u64,
    /// Subscriptions alive now.
    pub subscriptions: u64,
    /// Sharded only: `sunsubscribe`s Redis sent without being asked (the channel's slot
    /// migrated, or its shard failed over); each channel was subscribed again on its new owner.
    pub unsolicited_unsubscribes: u64,
    /// Sharded only: channels the periodic check found not subscribed (Redis no longer counted
    /// this connection, or the slot map names another owner) and subscribed again.
    pub repairs: u64,
    /// Sharded only: `SSUBSCRIBE`s answered with a redirection (`MOVED`, `ASK`, `TRYAGAIN`,
    /// `CLUSTERDOWN`): the slot map is fetched again and the channel sent to its owner.
    pub redirections: u64,
}

/// The link's pub/sub side: one connection shared by every [`Subscription`] of every clone of
/// the link (see the [module docs](self)). A cheap handle; get it with
/// [`Link::subscriber`](crate::Link::subscriber).
#[derive(Clone)]
pub struct Subscriber {
    shared: Arc<Shared>,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("connected", &self.is_connected())
            .field("stats", &self.stats())
            .finish()
    }
}

pub(crate) struct Shared {
    /// The link, to retry at once when it reconnects (Redis answers again).
    link: Weak<crate::link::Inner>,
    config: LinkConfig,
    /// Where to connect (the link's).
    target: Arc<Target>,
    /// On a cluster: the node to try first (the one that last worked, or the next after one
    /// that failed), an index into the candidates.
    next_node: AtomicUsize,
    runtime: tokio::runtime::Handle,
    state: Mutex<State>,
    /// Wakes the task: the set of wanted channels changed.
    wake: Notify,
    task: OnceLock<tokio::task::AbortHandle>,
    closed: AtomicBool,
    connected: watch::Sender<bool>,
    connections: AtomicU64,
    failed_attempts: AtomicU64,
    lagged: AtomicU64,
    /// Classic `SUBSCRIBE` on one node, or sharded `SSUBSCRIBE` on each channel's master.
    sharded: bool,
    /// Sharded: channels subscribed again after a loss (the classic subscriber counts
    /// connections instead).
    resubscribed: AtomicU64,
    unsolicited: AtomicU64,
    repairs: AtomicU64,
    redirections: AtomicU64,
    /// Sharded, tests only: ignore unsolicited `sunsubscribe`s (the bug of node-redis,
    /// StackExchange.Redis and redis-py), so a test shows what the periodic check repairs.
    ignore_unsolicited: AtomicBool,
    /// Sharded: how often subscriptions are checked against the server.
    check_every: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct State {
    channels: HashMap<String, Channel>,
    next_id: u64,
}

#[derive(Default)]
struct Channel {
    subs: Vec<Sub>,
    /// `SUBSCRIBE` acknowledged on the current connection.
    confirmed: bool,
    /// When the channel stopped being subscribed (a lost connection).
    lost_at: Option<Instant>,
}

struct Sub {
    id: u64,
    queue: Arc<Queue>,
    /// No `Subscribed` delivered yet.
    fresh: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters more than stopping delivery: keep going with its data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The link is gone: every subscription ends (`recv` answers `None`).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(task) = self.task.get() {
            task.abort();
        }
        let state = self.lock();
        for channel in state.channels.values() {
            for sub in &channel.subs {
                sub.queue.close();
            }
        }
    }

    fn start(self: &Arc<Self>) {
        self.task.get_or_init(|| {
            if self.sharded {
                self.runtime
                    .spawn(sharded::run(Arc::downgrade(self)))
                    .abort_handle()
            } else {
                self.runtime
                    .spawn(task::run(Arc::downgrade(self)))
                    .abort_handle()
            }
        });
    }

    /// Sharded: `channels` are no longer subscribed (their node's connection was lost, Redis
    /// unsubscribed them, or the check found them missing).
    fn lost_channels(&self, channels: &[String]) {
        let now = Instant::now();
        let mut state = self.lock();
        for name in channels {
            if let Some(ch) = state.channels.get_mut(name)
                && ch.confirmed
            {
                ch.confirmed = false;
                ch.lost_at = Some(now);
            }
        }
    }

    /// Sharded: every channel wanted now.
    fn wanted(&self) -> Vec<String> {
        let mut state = self.lock();
        state.channels.retain(|_, ch| !ch.subs.is_empty());
        state.channels.keys().cloned().collect()
    }

    /// Delivers `payload` published on `channel` to the channel's subscriptions.
    fn deliver(&self, channel: &str, payload: &[u8]) {
        let state = self.lock();
        let Some(ch) = state.channels.get(channel) else {
            return;
        };
        // A channel not (yet) acknowledged on this connection: its subscriptions have not been
        // told `Subscribed`, and messages must not come before that.
        if !ch.confirmed {
            return;
        }
        let payload = Bytes::copy_from_slice(payload);
        for sub in &ch.subs {
            if !sub.queue.push_message(payload.clone()) {
                self.lagged.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `SUBSCRIBE` of `channels` was acknowledged on the current connection; how many of them
    /// were subscribed before (a resubscription).
    fn confirmed(&self, channels: &[String]) -> u64 {
        let now = Instant::now();
        let mut again = 0;
        let mut state = self.lock();
        for name in channels {
            let Some(ch) = state.channels.get_mut(name) else {
                continue;
            };
            if ch.confirmed {
                continue;
            }
            ch.confirmed = true;
            let outage = ch.lost_at.take().map(|t| now.saturating_duration_since(t));
            again += u64::from(outage.is_some());
            for sub in &mut ch.subs {
                sub.queue
                    .push_subscribed(if sub.fresh { None } else { outage });
                sub.fresh = false;
            }
        }
        again
    }

    /// Whether `channel` is acknowledged now.
    fn is_confirmed(&self, channel: &str) -> bool {
        self.lock()
            .channels
            .get(channel)
            .is_some_and(|ch| ch.confirmed)
    }

    /// The connection is gone: every acknowledged channel is lost from now.
    fn lost(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        state.channels.retain(|_, ch| !ch.subs.is_empty());
        for ch in state.channels.values_mut() {
            if ch.confirmed {
                ch.confirmed = false;
                ch.lost_at = Some(now);
            }
        }
    }

    fn wants_any(&self) -> bool {
        self.lock().channels.values().any(|ch| !ch.subs.is_empty())
    }
}

impl Subscriber {
    pub(crate) fn new(
        config: LinkConfig,
        target: Arc<Target>,
        runtime: tokio::runtime::Handle,
        link: Weak<crate::link::Inner>,
    ) -> Self {
        Self::with_mode(config, target, runtime, link, false)
    }

    pub(crate) fn with_mode(
        config: LinkConfig,
        target: Arc<Target>,
        runtime: tokio::runtime::Handle,
        link: Weak<crate::link::Inner>,
        sharded: bool,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                link,
                config,
                target,
                next_node: AtomicUsize::new(0),
                runtime,
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                task: OnceLock::new(),
                closed: AtomicBool::new(false),
                connected: watch::channel(false).0,
                connections: AtomicU64::new(0),
                failed_attempts: AtomicU64::new(0),
                lagged: AtomicU64::new(0),
                sharded,
                resubscribed: AtomicU64::new(0),
                unsolicited: AtomicU64::new(0),
                repairs: AtomicU64::new(0),
                redirections: AtomicU64::new(0),
                ignore_unsolicited: AtomicBool::new(false),
                check_every: AtomicU64::new(
                    u64::try_from(sharded::CHECK_EVERY.as_millis()).unwrap_or(u64::MAX),
                ),
            }),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Registers interest in `channel` at once (never fails, never waits for Redis); the
    /// subscription's first delivery is [`Delivery::Subscribed`] once Redis has acknowledged
    /// `SUBSCRIBE` on a connection. `capacity` (at least 1) bounds the messages buffered for
    /// this subscription: a slower reader gets [`Delivery::Lagged`].
    ///
    /// The channel name is sent to Redis as given: never build it from client-controlled text
    /// without bounding it.
    pub fn subscribe(&self, channel: impl Into<String>, capacity: usize) -> Subscription {
        let channel = channel.into();
        let queue = Arc::new(Queue::new(capacity.max(1)));
        let shared = &self.shared;
        let id = {
            let mut state = shared.lock();
            let id = state.next_id;
            state.next_id += 1;
            if shared.closed.load(Ordering::Acquire) {
                queue.close();
            } else {
                let ch = state.channels.entry(channel.clone()).or_default();
                let mut fresh = true;
                if ch.confirmed {
                    queue.push_subscribed(None);
                    fresh = false;
                }
                ch.subs.push(Sub {
                    id,
                    queue: queue.clone(),
                    fresh,
                });
            }
            id
        };
        shared.start();
        shared.wake.notify_one();
        Subscription {
            shared: shared.clone(),
            channel,
            id,
            queue,
        }
    }

    /// Whether the pub/sub connection is up (subscribed).
    pub fn is_connected(&self) -> bool {
        *self.shared.connected.borrow()
    }

    /// Whether Redis has acknowledged `SUBSCRIBE` of `channel` on the current connection: a
    /// message published from now on reaches its subscriptions (after their
    /// [`Delivery::Subscribed`]). `false` for a channel nobody subscribes.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.shared
            .lock()
            .channels
            .get(channel)
            .is_some_and(|ch| ch.confirmed && !ch.subs.is_empty())
    }

    /// Follows [`is_connected`](Self::is_connected): turns `false` the moment the connection is
    /// lost (Redis closed it, or pings went unanswered), long before the subscriptions' next
    /// [`Delivery::Subscribed`] after the outage. For a component that tells its users at once
    /// that messages may be missed; a short outage may be seen only as that `Subscribed`.
    pub fn watch_connected(&self) -> watch::Receiver<bool> {
        self.shared.connected.subscribe()
    }

    /// Whether any subscription is alive (then the connection is wanted).
    pub(crate) fn is_wanted(&self) -> bool {
        self.shared.wants_any()
    }

    /// The subscriber's counters since the link was built.
    pub fn stats(&self) -> SubscriberStats {
        let s = &self.shared;
        let connections = s.connections.load(Ordering::Relaxed);
        let (channels, subscriptions) = {
            let state = s.lock();
            let live = state.channels.values().filter(|c| !c.subs.is_empty());
            let (mut channels, mut subs) = (0u64, 0u64);
            for c in live {
                channels += 1;
                subs += c.subs.len() as u64;
            }
            (channels, subs)
        };
        SubscriberStats {
            connections,
            resubscribes: if s.sharded {
                s.resubscribed.load(Ordering::Relaxed)
            } else {
                connections.saturating_sub(1)
            },
            failed_attempts: s.failed_attempts.load(Ordering::Relaxed),
            lagged: s.lagged.load(Ordering::Relaxed),
            channels,
            subscriptions,
            unsolicited_unsubscribes: s.unsolicited.load(Ordering::Relaxed),
            repairs: s.repairs.load(Ordering::Relaxed),
            redirections: s.redirections.load(Ordering::Relaxed),
        }
    }

    /// Whether this is the [sharded](crate::Link::sharded_subscriber) subscriber.
    pub fn is_sharded(&self) -> bool {
        self.shared.sharded
    }

    /// Sharded: how often every subscribed channel is checked against the server (see
    /// [`Link::sharded_subscriber`](crate::Link::sharded_subscriber)). Default 5 s; at least
    /// 50 ms. No effect on the classic subscriber.
    pub fn set_check_every(&self, every: Duration) {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(50);
        self.shared.check_every.store(ms, Ordering::Relaxed);
        self.shared.wake.notify_one();
    }

    /// Tests only: make the sharded subscriber ignore the `sunsubscribe`s Redis sends on its
    /// own (a slot migration, a failover), as node-redis, StackExchange.Redis and redis-py
    /// once did, so a test can show what that loses and what the periodic check repairs.
    #[doc(hidden)]
    pub fn ignore_unsolicited_unsubscribes(&self, ignore: bool) {
        self.shared
            .ignore_unsolicited
            .store(ignore, Ordering::Relaxed);
    }
}

/// Interest in one channel (see [`Subscriber::subscribe`]). Dropping it unsubscribes (Redis is
/// sent `UNSUBSCRIBE` when no other subscription wants the channel).
pub struct Subscription {
    shared: Arc<Shared>,
    channel: String,
    id: u64,
    queue: Arc<Queue>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next delivery; `None` only when the link is gone (every [`Link`](crate::Link) clone
    /// dropped).
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            if let Some(next) = self.queue.pop() {
                return next;
            }
            // One reader per queue: a push made since `pop` left a permit, so this returns.
            self.queue.ready.notified().await;
        }
    }

    /// The next delivery if one is buffered now (`Some(None)`: the link is gone).
    pub fn try_recv(&mut self) -> Option<Option<Delivery>> {
        self.queue.pop()
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let emptied = match state.channels.get_mut(&self.channel) {
            Some(ch) => {
                ch.subs.retain(|s| s.id != self.id);
                ch.subs.is_empty()
            }
            None => false,
        };
        drop(state);
        if emptied {
            self.shared.wake.notify_one();
        }
    }
}

/// One subscription's bounded buffer.
struct Queue {
    buf: Mutex<Buf>,
    ready: Notify,
}

struct Buf {
    items: VecDeque<Delivery>,
    /// Messages in `items` (control deliveries not counted).
    messages: usize,
    capacity: usize,
    /// Messages dropped since the last `Lagged` was queued.
    lagged: u64,
    closed: bool,
}

impl Queue {
    fn new(capacity: usize) -> Self {
        Self {
            buf: Mutex::new(Buf {
                items: VecDeque::new(),
                messages: 0,
                capacity,
                lagged: 0,
                closed: false,
            }),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Buf> {
        self.buf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a message; `false` when it was dropped (the buffer is full, or messages are being
    /// dropped until the reader has seen its `Lagged`, so it never reads a later message before
    /// learning about an earlier loss).
    fn push_message(&self, payload: Bytes) -> bool {
        let mut buf = self.lock();
        if buf.closed {
            return true;
        }
        let kept = if buf.lagged > 0 || buf.messages >= buf.capacity {
            buf.lagged += 1;
            false
        } else {
            buf.items.push_back(Delivery::Message(payload));
            buf.messages += 1;
            true
        };
        drop(buf);
        self.ready.notify_one();
        kept
    }

    fn push_subscribed(&self, outage: Option<Duration>) {
        let mut buf = self.lock();
        if buf.closed {
            return;
        }
        if buf.lagged > 0 {
            let n = std::mem::take(&mut buf.lagged);
            buf.items.push_back(Delivery::Lagged(n));
        }
        // Two reconnects the reader has not read yet are one (bounded memory): it catches up
        // once. A first `Subscribed` stays the first (`None`): that catch-up covers both.
        if let Some(Delivery::Subscribed { outage: last }) = buf.items.back_mut() {
            if let (Some(last), Some(more)) = (last.as_mut(), outage) {
                *last += more;
            }
        } else {
            buf.items.push_back(Delivery::Subscribed { outage });
        }
        drop(buf);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// `Some(Some(_))` a delivery, `Some(None)` closed and drained, `None` nothing yet.
    fn pop(&self) -> Option<Option<Delivery>> {
        let mut buf = self.lock();
        if let Some(d) = buf.items.pop_front() {
            if matches!(d, Delivery::Message(_)) {
                buf.messages -= 1;
            }
            return Some(Some(d));
        }
        if buf.lagged > 0 {
            return Some(Some(Delivery::Lagged(std::mem::take(&mut buf.lagged))));
        }
        buf.closed.then_some(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn a_full_queue_reports_lagged_before_any_later_message() {
        let q = Queue::new(2);
        assert!(q.push_message(msg("1")));
        assert!(q.push_message(msg("2")));
        assert!(!q.push_message(msg("3")));
        assert_eq!(q.pop(), Some(Some(Delivery::Message(msg("1")))));
        // Room again, but "4" comes after a loss the reader has not seen: dropped too.
        assert!(!q.push_message(msg("4")));
        assert_eq!(q.pop(), Some(Some(Delivery::Message(msg("2")))));
        assert_eq!(q.pop(), Some(Some(Delivery::Lagged(2))));
        assert!(q.push_message(msg("5")));
        assert_eq!(q.pop(), Some(Some(Delivery::Message(msg("5")))));
        assert_eq!(q.pop(), None);
        q.close();
        assert_eq!(q.pop(), Some(None));
    }

    #[test]
    fn handles_and_futures_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<Subscriber>();
        send_sync::<Subscription>();
        send_sync::<Delivery>();
        let queue = Arc::new(Queue::new(1));
        let (shared, _) = {
            let sub = Subscriber::new(
                LinkConfig::new("redis://127.0.0.1:1/"),
                Arc::new(
                    Target::new(&crate::config::Topology::Single(
                        "redis://127.0.0.1:1/".into(),
                    ))
                    .unwrap(),
                ),
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
                    .handle()
                    .clone(),
                Weak::new(),
            );
            (sub.shared.clone(), sub)
        };
        let mut subscription = Subscription {
            shared,
            channel: "c".to_owned(),
            id: 0,
            queue,
        };
        send(&subscription.recv());
    }

    #[test]
    fn unread_reconnects_fold_into_one() {
        let q = Queue::new(4);
        q.push_subscribed(None);
        q.push_subscribed(Some(Duration::from_millis(5)));
        assert_eq!(q.pop(), Some(Some(Delivery::Subscribed { outage: None })));
        q.push_subscribed(Some(Duration::from_millis(5)));
        q.push_subscribed(Some(Duration::from_millis(7)));
        assert_eq!(
            q.pop(),
            Some(Some(Delivery::Subscribed {
                outage: Some(Duration::from_millis(12))
            }))
        );
        assert_eq!(q.pop(), None);
    }
}
