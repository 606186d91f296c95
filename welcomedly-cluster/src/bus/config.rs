//! [`BusConfig`]: the bus's settings, and building a bus from them.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;
use welcomedly_core::config::{ConfigError, EnvReader};
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
    /// channel `wd:bus:e:t` (on a cluster with sharded pub/sub `wd:bus:e:{<tag>}:t`, see
    /// [`PubSubMode`]). Same character set as topic names.
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
    /// Which Redis pub/sub carries ephemeral topics on a Redis Cluster. Default
    /// [`PubSubMode::Sharded`]. On one node or Sentinel both modes are classic pub/sub.
    pub pubsub: PubSubMode,
}

/// Which pub/sub ephemeral topics use on a Redis Cluster ([`BusConfig::pubsub`]).
///
/// **Sharded** (the default): each topic's channel carries a hash tag (one of 64 tags spread
/// evenly over the slots, picked by the topic's own slot), is published with `SPUBLISH` to the
/// master serving that slot and subscribed with `SSUBSCRIBE` there
/// ([`Link::sharded_subscriber`]). A message travels from the publisher to one master and from
/// it to the instances listening on that topic only: Redis egress follows interest, and adding
/// masters adds pub/sub capacity. The costs: one pub/sub connection per master that serves a
/// subscribed topic (at most one per master), and a resubscription, with the
/// [`Interrupted`](super::Delivery::Interrupted) notice classic pub/sub also gives on an
/// outage, when the topic's slot migrates or its shard fails over.
///
/// **Classic**: `PUBLISH`/`SUBSCRIBE` on one connection to any node. Redis broadcasts every
/// `PUBLISH` over the cluster bus to every node, whoever listens: every node carries every
/// message, so pub/sub does not scale with masters. Its one advantage: slot migrations and
/// failovers never touch the subscription (only the loss of its node does). Choose it for a
/// cluster whose Redis cannot run sharded pub/sub (before 7.0), or to mix with older
/// publishers on the unchanged channel names (`{prefix}:e:{topic}`; sharded ones are
/// `{prefix}:e:{tag}:{topic}`). Every instance must use the same mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PubSubMode {
    /// `PUBLISH` / `SUBSCRIBE`: every message reaches every cluster node.
    Classic,
    /// `SPUBLISH` / `SSUBSCRIBE` on the topic's master (on a Redis Cluster).
    #[default]
    Sharded,
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
            pubsub: PubSubMode::default(),
        }
    }

    /// Reads the settings from the environment: `WELCOMEDLY_BUS_PUBSUB` = `sharded` (default)
    /// or `classic` (see [`PubSubMode`]); defaults elsewhere.
    ///
    /// # Errors
    ///
    /// Every invalid variable, as welcomedly-core's `ConfigError`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut env = EnvReader::from_env();
        let config = Self::read(&mut env);
        env.finish(config)
    }

    /// [`from_env`](Self::from_env) through a shared reader, so a service reports the problems
    /// of all its components' variables at once.
    pub fn read(env: &mut EnvReader<'_>) -> Self {
        let pubsub = env.read(
            "WELCOMEDLY_BUS_PUBSUB",
            PubSubMode::default(),
            |v: &str| match v.trim().to_ascii_lowercase().as_str() {
                "sharded" => Ok(PubSubMode::Sharded),
                "classic" => Ok(PubSubMode::Classic),
                _ => Err("is not a pub/sub mode: expected `sharded` or `classic`".to_owned()),
            },
        );
        Self {
            pubsub,
            ..Self::new()
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
        let sharded = self.pubsub == PubSubMode::Sharded && link.is_cluster();
        let inner = self.into_inner(Backend::Redis(link.clone()), backoff, sharded);
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
        let inner = self.into_inner(Backend::Memory(memory), Backoff::default(), false);
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

    fn into_inner(self, backend: Backend, backoff: Backoff, sharded: bool) -> Arc<Inner> {
        Arc::new(Inner {
            backend,
            names: Names {
                prefix: self.key_prefix,
                sharded,
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
