//! [`Subscription`]: one local subscriber's view of a topic, with its own bounded queue, its
//! drop count and — for durable topics — its own position, from which it catches up from Redis
//! after a lag, a reconnect or a resume.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;

use welcomedly_core::backoff::jittered;
use welcomedly_redis::Retry;

use super::offset::{Offset, StreamId};
use super::{Entry, Inner, Signal, Tier};

/// Why a durable subscriber missed events it cannot get any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Gap {
    /// It fell behind what the stream retains (`retention`): exactly `missed` events were
    /// trimmed before it read them.
    Trimmed {
        /// How many events are gone.
        missed: u64,
    },
    /// The topic's epoch changed: Redis lost the stream's history (restarted without
    /// persistence, flushed, failed over to a replica that had not received it). How many
    /// events were lost is unknown; reload whatever state the events describe.
    EpochChanged,
    /// The offset asked to resume from is past the end of the topic (a forged or corrupted
    /// `Last-Event-ID`, or one from a history Redis lost without changing the epoch): the
    /// subscription starts from now instead. What happened before is unknown to this
    /// subscriber; reload whatever state the events describe.
    PastTheEnd,
}

/// What [`Subscription::recv`] hands out: an event, or an explicit notice of what was lost.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Delivery<T> {
    /// An event.
    Event(Event<T>),
    /// This subscriber's queue overflowed (it read slower than events came) and `count` events
    /// were dropped for it alone. Ephemeral topics only: a durable subscription re-reads what
    /// it lagged behind from Redis instead.
    Dropped {
        /// Events dropped since the last delivery.
        count: u64,
    },
    /// Durable: events between the last delivered one and the next are gone for good.
    Gap(Gap),
    /// Ephemeral: the instance's pub/sub connection to Redis was lost; events published until
    /// it is back (it resubscribes by itself) are lost — at most once.
    Interrupted,
    /// An event whose data did not decode as `T` (an incompatible publisher): skipped.
    Undecodable {
        /// Its offset, on a durable topic.
        offset: Option<Offset>,
        /// What serde said.
        reason: String,
    },
}

/// One event with its offset (durable topics).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Event<T> {
    /// The event.
    pub data: T,
    /// Its position in the topic: `Some` on durable topics.
    pub offset: Option<Offset>,
}

/// The undecoded form of a delivery, for the SSE helper (which passes the JSON through).
#[derive(Debug, Clone)]
pub(super) enum RawDelivery {
    Event(Entry),
    Dropped(u64),
    Gap(Gap),
    Interrupted,
}

/// A subscription to a topic. Each has its own bounded queue (the bus's `capacity`): a slow
/// subscriber never slows the others or the bus; what it loses is counted and reported.
///
/// Ends (`recv` returns `None`) when the bus is [closed](super::Bus::close).
pub struct Subscription<T> {
    feed: Feed,
    _event: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.feed.topic)
            .field("tier", &self.feed.tier)
            .field("position", &self.feed.cursor)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> Subscription<T> {
    pub(super) fn new(feed: Feed) -> Self {
        Self {
            feed,
            _event: PhantomData,
        }
    }

    /// The next event or notice; `None` once the bus is closed.
    ///
    /// Cancel-safe for ephemeral topics. On durable topics, cancelling while it catches up
    /// from Redis loses nothing either: the position only moves when an event is handed out.
    pub async fn recv(&mut self) -> Option<Delivery<T>> {
        let raw = self.feed.recv().await?;
        Some(match raw {
            RawDelivery::Event(entry) => match serde_json::from_str::<T>(&entry.payload) {
                Ok(data) => Delivery::Event(Event {
                    data,
                    offset: entry.offset,
                }),
                Err(e) => {
                    tracing::warn!(topic = %self.feed.topic, error = %e, "a bus event does not decode as this subscription's type: skipped");
                    Delivery::Undecodable {
                        offset: entry.offset,
                        reason: e.to_string(),
                    }
                }
            },
            RawDelivery::Dropped(count) => Delivery::Dropped { count },
            RawDelivery::Gap(gap) => Delivery::Gap(gap),
            RawDelivery::Interrupted => Delivery::Interrupted,
        })
    }

    /// The offset of the last durable event handed out (or the start position): store it to
    /// resume with [`Bus::subscribe_from`](super::Bus::subscribe_from).
    pub fn position(&self) -> Option<Offset> {
        self.feed.cursor
    }

    /// Events dropped for this subscriber so far (each drop was also reported by a
    /// [`Delivery::Dropped`]).
    pub fn dropped(&self) -> u64 {
        self.feed.dropped
    }
}

/// Whether `offset` is the event right after `cursor` (same epoch assumed); never overflows,
/// whatever number a client put in its `Last-Event-ID`.
fn follows(offset: Offset, cursor: Offset) -> bool {
    cursor.n.checked_add(1) == Some(offset.n)
}

/// Where a durable feed starts.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Start {
    /// The last event before the start (`None`: unknown, the first event seen starts).
    pub(super) cursor: Option<Offset>,
    /// The start is the beginning of a stream that was empty: any epoch is fine.
    pub(super) fresh: bool,
    /// Read from Redis before the live feed.
    pub(super) catching_up: bool,
    /// A notice to hand out before anything else (the asked start was unusable).
    pub(super) notice: Option<Gap>,
}

/// The untyped subscription machinery.
pub(super) struct Feed {
    inner: Arc<Inner>,
    topic: Arc<str>,
    tier: Tier,
    rx: broadcast::Receiver<Signal>,
    /// Durable: whether the topic's reader knows where it starts (see `DurableTopic`).
    positioned: watch::Receiver<bool>,
    /// Durable: the last event handed out; `None` when the start position is unknown (Redis was
    /// unreachable at subscribe time), then the first event seen sets it.
    cursor: Option<Offset>,
    /// Durable: the position is the start of a stream that was empty at subscribe time, whose
    /// epoch is not known yet: the first event sets it, whatever its epoch and number.
    fresh: bool,
    /// Durable: events fetched from Redis, not yet handed out.
    pending: VecDeque<Entry>,
    /// Durable: the live feed may have skipped something; read from Redis before going on.
    catching_up: bool,
    /// Consecutive failed catch-up reads, for the retry delay.
    failed_fetches: u32,
    dropped: u64,
    /// Handed out first: why the subscription does not start where it was asked to.
    notice: Option<Gap>,
}

impl Feed {
    pub(super) fn new(
        inner: Arc<Inner>,
        topic: Arc<str>,
        tier: Tier,
        rx: broadcast::Receiver<Signal>,
        positioned: watch::Receiver<bool>,
        start: Start,
    ) -> Self {
        let Start {
            cursor,
            fresh,
            catching_up,
            notice,
        } = start;
        Self {
            inner,
            topic,
            tier,
            rx,
            positioned,
            cursor,
            fresh,
            pending: VecDeque::new(),
            catching_up,
            failed_fetches: 0,
            dropped: 0,
            notice,
        }
    }

    pub(super) async fn recv(&mut self) -> Option<RawDelivery> {
        if self.tier == Tier::Ephemeral {
            return self.recv_ephemeral().await;
        }
        if let Some(gap) = self.notice.take() {
            self.inner.stats.gaps.fetch_add(1, Ordering::Relaxed);
            return Some(RawDelivery::Gap(gap));
        }
        loop {
            if let Some(entry) = self.pending.pop_front() {
                if let Some(delivery) = self.accept(entry) {
                    return Some(delivery);
                }
                continue;
            }
            if self.catching_up {
                if self.inner.closed.load(Ordering::Acquire) {
                    return None;
                }
                self.fetch().await;
                continue;
            }
            match self.rx.recv().await {
                Ok(Signal::Event(entry)) => {
                    let Some(offset) = entry.offset else { continue };
                    match self.cursor {
                        None => {
                            self.cursor = Some(offset);
                            return Some(RawDelivery::Event(entry));
                        }
                        Some(_) if self.fresh && offset.n == 1 => {
                            self.fresh = false;
                            self.cursor = Some(offset);
                            return Some(RawDelivery::Event(entry));
                        }
                        Some(_) if self.fresh => self.catching_up = true,
                        Some(c) if offset.epoch == c.epoch && offset.id <= c.id => {}
                        Some(c) if offset.epoch == c.epoch && follows(offset, c) => {
                            self.cursor = Some(offset);
                            return Some(RawDelivery::Event(entry));
                        }
                        // A discontinuity on the live feed (the reader started after us,
                        // reconnected, or the epoch changed): Redis says what really happened.
                        Some(_) => self.catching_up = true,
                    }
                }
                Ok(Signal::Interrupted) => {}
                Err(RecvError::Lagged(n)) => {
                    if self.cursor.is_some() {
                        self.inner.stats.recovered.fetch_add(n, Ordering::Relaxed);
                        self.catching_up = true;
                    } else {
                        self.count_drop(n);
                        return Some(RawDelivery::Dropped(n));
                    }
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    async fn recv_ephemeral(&mut self) -> Option<RawDelivery> {
        match self.rx.recv().await {
            Ok(Signal::Event(entry)) => Some(RawDelivery::Event(entry)),
            Ok(Signal::Interrupted) => Some(RawDelivery::Interrupted),
            Err(RecvError::Lagged(n)) => {
                self.count_drop(n);
                Some(RawDelivery::Dropped(n))
            }
            Err(RecvError::Closed) => None,
        }
    }

    fn count_drop(&mut self, n: u64) {
        self.dropped += n;
        self.inner.stats.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Checks one entry read from Redis against the position.
    fn accept(&mut self, entry: Entry) -> Option<RawDelivery> {
        let offset = entry.offset?;
        let Some(c) = self.cursor else {
            self.cursor = Some(offset);
            return Some(RawDelivery::Event(entry));
        };
        if self.fresh {
            self.fresh = false;
            self.cursor = Some(offset);
            return Some(RawDelivery::Event(entry));
        }
        if offset.epoch != c.epoch {
            // Read the new epoch from its beginning: ids from the old one say nothing.
            self.cursor = Some(Offset {
                id: StreamId::ZERO,
                epoch: offset.epoch,
                n: 0,
            });
            self.pending.clear();
            self.catching_up = true;
            // Whatever the new epoch retains comes next; its own start is not a further gap.
            self.fresh = true;
            self.inner.stats.gaps.fetch_add(1, Ordering::Relaxed);
            return Some(RawDelivery::Gap(Gap::EpochChanged));
        }
        if offset.id <= c.id {
            return None;
        }
        if follows(offset, c) {
            self.cursor = Some(offset);
            return Some(RawDelivery::Event(entry));
        }
        self.inner.stats.gaps.fetch_add(1, Ordering::Relaxed);
        // Checked: a position comes from a client (`Last-Event-ID`), so any number may be here.
        let gap = if offset.n > c.n {
            Gap::Trimmed {
                missed: offset.n.saturating_sub(c.n).saturating_sub(1),
            }
        } else {
            // A lower sequence number under a newer id: Redis lost acknowledged events (a
            // failover to a replica that was behind) and numbering went on from there.
            Gap::EpochChanged
        };
        self.cursor = Some(Offset {
            n: offset.n.saturating_sub(1),
            ..c
        });
        self.pending.push_front(entry);
        Some(RawDelivery::Gap(gap))
    }

    /// One catch-up read from Redis after the position; retried with backoff while Redis fails.
    async fn fetch(&mut self) {
        let after = self.cursor.map_or(StreamId::ZERO, |c| c.id);
        let key = self.inner.names.stream(&self.topic);
        let batch = self.inner.batch;
        let result = match self.inner.link() {
            Some(link) => link
                .call(Retry::Once, |conn| {
                    super::stream::range_after(conn, key.clone(), after, batch)
                })
                .await
                .map_err(|e| super::redis_error("catch up on a durable topic", e)),
            None => Ok(self
                .inner
                .memory()
                .map(|m| m.range_after(&self.topic, after, batch))),
        };
        match result {
            Ok(Some(reads)) => {
                self.failed_fetches = 0;
                let full = reads.len() >= batch;
                let mut last = after;
                for read in reads {
                    last = read.id;
                    match read.entry {
                        Some(entry) => self.pending.push_back(entry),
                        None => {
                            self.inner.stats.malformed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if self.pending.is_empty() && last != after {
                    // Only malformed entries: step over them.
                    if let Some(c) = self.cursor.as_mut() {
                        c.id = last;
                    }
                }
                self.catching_up = full;
                if !full && !*self.positioned.borrow() {
                    // The reader has not read where it starts yet: read once more after it
                    // has (or after a while, if it cannot reach Redis yet).
                    self.catching_up = true;
                    let wait = self.inner.block;
                    if let Ok(Err(_)) =
                        tokio::time::timeout(wait, self.positioned.wait_for(|p| *p)).await
                    {
                        // The reader is gone (the bus was closed): the live feed says so.
                        self.catching_up = false;
                    }
                }
            }
            Ok(None) => {
                self.inner.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = %self.topic, "a bus stream answered XRANGE in an unexpected shape: going on with live events");
                self.catching_up = false;
            }
            Err(e) => {
                self.failed_fetches = self.failed_fetches.saturating_add(1);
                if self.failed_fetches == 1 {
                    tracing::debug!(topic = %self.topic, error = %e, "a durable subscriber cannot catch up yet: retrying");
                }
                let backoff = self.inner.backoff;
                let delay = backoff
                    .initial
                    .saturating_mul(1 << self.failed_fetches.min(6))
                    .min(backoff.max)
                    .max(Duration::from_millis(1));
                tokio::time::sleep(jittered(delay)).await;
            }
        }
    }
}
