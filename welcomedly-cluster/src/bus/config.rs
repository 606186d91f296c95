//! [`BusConfig`]: the bus's settings, and building a bus from them.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;
use welcomedly_redis::{Backoff, Link};

use super::{Backend, Bus, Counters, Inner, MAX_TOPIC_LEN, Names, memory, stream, topic};
use crate::Error;

/// Settings of the event bus, plain data with documented defaults. Where Redis is and how the
/// connection behaves (budget, reconnects) are the [`Link`]'s settings
/// ([`LinkConfig`](welcomedly_redis::LinkConfig)), not the bus's.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BusConfig {
    /// Prefix of every key and channel. Default `"wd:bus"`: durable topic `t` lives in
    /// `wd:bus:{t}:s` (stream) and `wd:bus:{t}:m` (epoch and sequence), ephemeral topic `t` on
    /// channel `wd:bus:e:t`. Same character set as topic names.
    pub key_prefix: String,
    /// Each subscriber's queue: events it may fall behind by before it loses some (ephemeral)
    /// or re-reads them from Redis (durable). Default 1024.
    pub capacity: usize,
    /// Events a durable topic keeps (`XADD MAXLEN ~`; Redis may keep a few more). A subscriber
    /// further behind than this gets [`Gap::Trimmed`](super::Gap::Trimmed). Default 10 000.
    pub retention: u64,
    /// The largest event, serialized. Default 64 KiB.
    pub max_event_bytes: usize,
    /// How long a durable reader's `XREAD BLOCK` waits before it checks whether it still has
    /// subscribers. Default 2 s.
    pub block: Duration,
    /// Entries read per `XREAD` / `XRANGE` call. Default 256.
    pub batch: usize,
    /// SSE: how often a comment line is sent on a stream, so proxies keep it open; a stream
    /// that ends with its session (`sse::SseStream::end_with_session`) also reads the session
    /// once per heartbeat, so this bounds how long it outlives a logout on another instance
    /// or an expiry. Default 15 s.
    pub heartbeat: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl BusConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self {
            key_prefix: "wd:bus".to_owned(),
            capacity: 1024,
            retention: 10_000,
            max_event_bytes: 64 * 1024,
            block: Duration::from_secs(2),
            batch: 256,
            heartbeat: Duration::from_secs(15),
        }
    }

    /// Builds the bus on `link`: publishing and catch-up reads are calls on the link (within
    /// its budget), live ephemeral events come through the link's
    /// [`Subscriber`](welcomedly_redis::Subscriber), and each durable topic with local
    /// subscribers is followed by an `XREAD BLOCK` on a
    /// [dedicated](welcomedly_redis::Link::dedicated) connection. An unreachable Redis is not
    /// an error: publishing fails fast until the link reconnects.
    ///
    /// # Errors
    ///
    /// A configuration error for an invalid prefix or setting.
    pub async fn build(self, link: &Link) -> Result<Bus, Error> {
        self.validate()?;
        let publish = Script::new(stream::PUBLISH);
        // Loaded on every new connection, so the first publish after a Redis restart does not
        // meet NOSCRIPT. A failure here only costs one NOSCRIPT round trip later.
        if let Err(e) = link.preload(&publish).await {
            tracing::debug!(error = %e, "the bus's publish script is not loaded yet");
        }
        let backoff = link.config().backoff;
        let inner = self.into_inner(Backend::Redis(link.clone()), backoff);
        Ok(Bus { inner })
    }

    /// A bus within this process only, without Redis — for a single instance (the embedded
    /// default when no Redis is configured) and tests. Same API and semantics: durable topics
    /// keep [`retention`](Self::retention) events in memory with offsets, catch-up and gap
    /// notices; the history does not survive the process (a browser resuming with an offset
    /// of a previous process gets [`Gap::EpochChanged`](super::Gap::EpochChanged)).
    ///
    /// # Errors
    ///
    /// A configuration error for an invalid setting.
    ///
    /// ```
    /// use welcomedly_cluster::bus::{BusConfig, Delivery, Topic};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let bus = BusConfig::new().build_local().unwrap();
    /// let topic = Topic::<String>::durable("greetings").unwrap();
    /// let mut sub = bus.subscribe(&topic).await;
    /// let offset = bus.publish(&topic, &"hello".to_owned()).await.unwrap();
    /// let Some(Delivery::Event(event)) = sub.recv().await else { panic!() };
    /// assert_eq!((event.data.as_str(), event.offset), ("hello", offset));
    /// # }
    /// ```
    pub fn build_local(self) -> Result<Bus, Error> {
        self.validate()?;
        let memory = memory::Memory::new(self.retention);
        let inner = self.into_inner(Backend::Memory(memory), Backoff::default());
        Ok(Bus { inner })
    }

    fn validate(&self) -> Result<(), Error> {
        topic::validate(&self.key_prefix).map_err(|_| {
            Error::invalid(format!(
                "the bus key prefix {:?} is not usable: 1 to {MAX_TOPIC_LEN} ASCII letters, digits and _ - . : /",
                self.key_prefix
            ))
        })?;
        let zero = [("block", self.block), ("heartbeat", self.heartbeat)];
        if let Some((name, _)) = zero.iter().find(|(_, d)| d.is_zero()) {
            return Err(Error::invalid(format!(
                "the bus setting {name} is zero: use at least a few milliseconds (see BusConfig's defaults)"
            )));
        }
        if self.capacity == 0 || self.batch == 0 || self.retention == 0 {
            return Err(Error::invalid(
                "the bus capacity, batch and retention must be at least 1 (defaults 1024, 256, 10 000)",
            ));
        }
        Ok(())
    }

    fn into_inner(self, backend: Backend, backoff: Backoff) -> Arc<Inner> {
        Arc::new(Inner {
            backend,
            names: Names {
                prefix: self.key_prefix,
            },
            backoff,
            publish: Script::new(stream::PUBLISH),
            capacity: self.capacity,
            retention: self.retention,
            max_event_bytes: self.max_event_bytes,
            block: self.block,
            batch: self.batch,
            heartbeat: self.heartbeat,
            ephemeral: Mutex::new(HashMap::new()),
            durable: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            stats: Counters::default(),
            tasks: Mutex::new(Vec::new()),
        })
    }
}
