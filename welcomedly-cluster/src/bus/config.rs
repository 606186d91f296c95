//! [`BusConfig`]: the bus's settings, and building a bus from them.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;
use welcomedly_core::redact::redact_url;

use super::link::Link;
use super::{Backend, Bus, Counters, Inner, MAX_TOPIC_LEN, Names, memory, pubsub, stream, topic};
use crate::Error;

/// Settings of the event bus, plain data with documented defaults.
#[derive(Clone)]
#[non_exhaustive]
pub struct BusConfig {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/`. No default. Shown with its password redacted
    /// in errors, logs and `Debug`.
    pub url: String,
    /// Prefix of every key and channel. Default `"wd:bus"`: durable topic `t` lives in
    /// `wd:bus:{t}:s` (stream) and `wd:bus:{t}:m` (epoch and sequence), ephemeral topic `t` on
    /// channel `wd:bus:e:t`. Same character set as topic names.
    pub key_prefix: String,
    /// The longest a publish or a catch-up read waits for Redis. Default 50 ms.
    pub budget: Duration,
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
    /// How often the pub/sub connection is pinged to find a silently dead one. Default 1 s.
    pub ping_interval: Duration,
    /// Failures in a row (calls or pings) before a connection is replaced. Default 3.
    pub failure_threshold: u32,
    /// First delay between reconnect attempts; doubles per failure up to
    /// [`max_reconnect_interval`](Self::max_reconnect_interval), each jittered to 50–100 %.
    /// Default 100 ms.
    pub reconnect_interval: Duration,
    /// Upper bound of the reconnect delay. Default 5 s.
    pub max_reconnect_interval: Duration,
    /// SSE: how often a comment line is sent on a stream, so proxies keep it open; a stream
    /// that ends with its session (`sse::SseStream::end_with_session`) also reads the session
    /// once per heartbeat, so this bounds how long it outlives a logout on another instance
    /// or an expiry. Default 15 s.
    pub heartbeat: Duration,
}

impl fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusConfig")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("budget", &self.budget)
            .field("capacity", &self.capacity)
            .field("retention", &self.retention)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("block", &self.block)
            .field("batch", &self.batch)
            .field("ping_interval", &self.ping_interval)
            .field("failure_threshold", &self.failure_threshold)
            .field("reconnect_interval", &self.reconnect_interval)
            .field("max_reconnect_interval", &self.max_reconnect_interval)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

impl BusConfig {
    /// Settings for the Redis at `url`, defaults elsewhere.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: "wd:bus".to_owned(),
            budget: Duration::from_millis(50),
            capacity: 1024,
            retention: 10_000,
            max_event_bytes: 64 * 1024,
            block: Duration::from_secs(2),
            batch: 256,
            ping_interval: Duration::from_secs(1),
            failure_threshold: 3,
            reconnect_interval: Duration::from_millis(100),
            max_reconnect_interval: Duration::from_secs(5),
            heartbeat: Duration::from_secs(15),
        }
    }

    /// Validates the settings, connects (an unreachable Redis is not an error: the bus
    /// connects in the background and publishing fails fast meanwhile) and starts the
    /// subscriber task. Must run inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// A configuration error for an invalid URL, prefix or setting.
    pub async fn build(self) -> Result<Bus, Error> {
        self.validate()?;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(Error::invalid(
                "the bus must be built inside a tokio runtime (it subscribes in the background)",
            ));
        };
        let client = redis::Client::open(self.url.as_str()).map_err(|e| {
            Error::config(
                format!(
                    "cannot use Redis URL {:?} for the bus: expected redis://[user:password@]host[:port][/db]",
                    redact_url(&self.url)
                ),
                e,
            )
        })?;
        let link = Arc::new(Link::new(
            client,
            self.budget,
            self.failure_threshold,
            self.reconnect_interval,
            self.max_reconnect_interval,
        ));
        let inner = self.into_inner(Backend::Redis(link.clone()));
        let connected = link.connect_first().await;
        let first = match pubsub::open(&inner).await {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "the bus cannot subscribe at start: retrying in the background");
                None
            }
        };
        let supervisor = runtime.spawn(link.supervise(connected));
        let subscriber = runtime.spawn(pubsub::run(Arc::downgrade(&inner), first));
        inner
            .tasks()
            .extend([supervisor.abort_handle(), subscriber.abort_handle()]);
        Ok(Bus { inner })
    }

    /// A bus within this process only, without Redis — for a single instance (the embedded
    /// default when no Redis is configured) and tests. Same API and semantics: durable topics
    /// keep [`retention`](Self::retention) events in memory with offsets, catch-up and gap
    /// notices; the history does not survive the process (a browser resuming with an offset
    /// of a previous process gets [`Gap::EpochChanged`](super::Gap::EpochChanged)). `url` and the Redis timings are not
    /// used.
    ///
    /// # Errors
    ///
    /// A configuration error for an invalid setting.
    ///
    /// ```
    /// use welcomedly_cluster::bus::{BusConfig, Delivery, Topic};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let bus = BusConfig::new("").build_local().unwrap();
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
        let inner = self.into_inner(Backend::Memory(memory));
        Ok(Bus { inner })
    }

    fn validate(&self) -> Result<(), Error> {
        topic::validate(&self.key_prefix).map_err(|_| {
            Error::invalid(format!(
                "the bus key prefix {:?} is not usable: 1 to {MAX_TOPIC_LEN} ASCII letters, digits and _ - . : /",
                self.key_prefix
            ))
        })?;
        let zero = [
            ("budget", self.budget),
            ("block", self.block),
            ("ping_interval", self.ping_interval),
            ("reconnect_interval", self.reconnect_interval),
            ("heartbeat", self.heartbeat),
        ];
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

    fn into_inner(self, backend: Backend) -> Arc<Inner> {
        Arc::new(Inner {
            backend,
            names: Names {
                prefix: self.key_prefix,
            },
            budget: self.budget,
            reconnect_interval: self.reconnect_interval,
            max_reconnect_interval: self.max_reconnect_interval.max(self.reconnect_interval),
            publish: Script::new(stream::PUBLISH),
            capacity: self.capacity,
            retention: self.retention,
            max_event_bytes: self.max_event_bytes,
            block: self.block,
            batch: self.batch,
            ping_interval: self.ping_interval,
            failure_threshold: self.failure_threshold.max(1),
            heartbeat: self.heartbeat,
            ephemeral: Mutex::new(HashMap::new()),
            durable: Mutex::new(HashMap::new()),
            subscribed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            stats: Counters::default(),
            tasks: Mutex::new(Vec::new()),
        })
    }
}
