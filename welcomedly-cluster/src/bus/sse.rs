//! Server-sent events for a bus topic (`axum` feature): what a browser's `EventSource` needs
//! to follow a topic across instances.
//!
//! - every durable event is sent with `id:` = its [`Offset`]; a browser that reconnects — to
//!   this instance or any other behind the load balancer — sends it back as `Last-Event-ID`
//!   and the stream resumes right after it, from Redis, missing nothing that is retained;
//! - events carry the JSON the publisher serialized as `data:` (default event type, so
//!   `EventSource.onmessage` gets them); notices have their own event types:
//!   `gap` (`{"reason":"trimmed","missed":N}`, `{"reason":"epoch_changed"}` or
//!   `{"reason":"past_the_end"}` — reload the state), `dropped` (`{"count":N}`) and
//!   `interrupted` (ephemeral topics);
//! - a `Last-Event-ID` past the end of the topic (forged, or from a lost history) streams from
//!   now, after a `gap` notice with reason `past_the_end`; numbers are checked, never wrapped;
//! - a comment line every [`heartbeat`](super::BusConfig::heartbeat) keeps proxies from
//!   closing an idle stream;
//! - the stream ends cleanly when the server starts closing ([`DrainSignal::closing`]), so the
//!   browser reconnects to an instance that stays;
//! - with [`SseStream::end_with_session`], it ends when the session that opened it ends —
//!   logout, "log out everywhere" on any instance, idle or absolute expiry — at once for an
//!   end in this process, else within a heartbeat (one session read per heartbeat, which does
//!   not slide the idle expiry), after a last `session_ended` event (`{}`). Whatever the
//!   stream holds (a per-user slot, a presence guard) is released with it;
//! - [`SseStream::merge`] interleaves events of the application's own (presence diffs, say)
//!   with the topic's.
//!
//! ```no_run
//! use axum::{extract::State, http::HeaderMap, routing::get, Extension, Router};
//! use serde::{Deserialize, Serialize};
//! use welcomedly_cluster::bus::{sse, Bus, Topic};
//! use welcomedly_core::drain::DrainSignal;
//!
//! #[derive(Serialize, Deserialize)]
//! struct StatusChanged { agent: String, status: String }
//!
//! async fn events(
//!     State((bus, topic)): State<(Bus, Topic<StatusChanged>)>,
//!     drain: Option<Extension<DrainSignal>>,
//!     headers: HeaderMap,
//! ) -> axum::response::Response {
//!     sse::stream(&bus, &topic, &headers, drain.map(|Extension(d)| d)).await
//! }
//!
//! # fn app(bus: Bus) -> Router {
//! let topic = Topic::<StatusChanged>::durable("agents.status").unwrap();
//! Router::new().route("/api/events", get(events)).with_state((bus, topic))
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use welcomedly_core::drain::DrainSignal;

use super::subscription::{Feed, RawDelivery};
use super::{Bus, Gap, Offset, Tier, Topic};
use crate::session::SessionWatch;

/// The `Last-Event-ID` of a reconnecting browser, when it is an offset of this bus.
pub fn last_event_id(headers: &HeaderMap) -> Option<Offset> {
    let value = headers.get("last-event-id")?.to_str().ok()?;
    match value.trim().parse() {
        Ok(offset) => Some(offset),
        Err(_) => {
            tracing::debug!("a Last-Event-ID that is not a bus offset: streaming from now");
            None
        }
    }
}

/// An SSE response following `topic`: from the request's `Last-Event-ID` when it carries an
/// offset (durable topics), from now otherwise; ends at `drain`'s
/// [`closing`](DrainSignal::closing) when one is given. [`SseStream`] has the other options.
pub async fn stream<T>(
    bus: &Bus,
    topic: &Topic<T>,
    headers: &HeaderMap,
    drain: Option<DrainSignal>,
) -> Response {
    let mut s = SseStream::new(bus, topic).resume_from(headers);
    if let Some(d) = drain {
        s = s.drain(d);
    }
    s.respond().await
}

/// Like [`stream`], with `first` sent before any event of the topic, on every (re)connection:
/// say which instance holds the stream, or hand the client a snapshot to apply before the
/// changes. Give it an event type (`SseEvent::default().event("hello")`) so that
/// `EventSource.onmessage` keeps seeing only the topic's events.
///
/// ```no_run
/// # use axum::http::HeaderMap;
/// # use welcomedly_cluster::bus::{sse, Bus, Topic};
/// # async fn events(bus: Bus, topic: Topic<String>, headers: HeaderMap) -> axum::response::Response {
/// let hello = axum::response::sse::Event::default()
///     .event("hello")
///     .data(r#"{"instance":"call-center-1"}"#);
/// sse::stream_starting_with(&bus, &topic, &headers, None, hello).await
/// # }
/// ```
pub async fn stream_starting_with<T>(
    bus: &Bus,
    topic: &Topic<T>,
    headers: &HeaderMap,
    drain: Option<DrainSignal>,
    first: SseEvent,
) -> Response {
    let mut s = SseStream::new(bus, topic).resume_from(headers).first(first);
    if let Some(d) = drain {
        s = s.drain(d);
    }
    s.respond().await
}

/// An SSE response following a bus topic, with every option: resume from `Last-Event-ID`, a
/// first event, an end at drain, an end with the session, events of the application's own
/// merged in. [`stream`] and [`stream_starting_with`] are the short forms.
///
/// ```no_run
/// # use axum::http::HeaderMap;
/// # use axum::response::IntoResponse;
/// # use welcomedly_cluster::bus::{sse::SseStream, Bus, Topic};
/// # use welcomedly_cluster::session::Session;
/// # async fn events(bus: Bus, topic: Topic<String>, headers: HeaderMap, session: Session)
/// #     -> Result<axum::response::Response, welcomedly_cluster::session::SessionError> {
/// let Some(watch) = session.watch().await? else {
///     return Ok(axum::http::StatusCode::UNAUTHORIZED.into_response());
/// };
/// Ok(SseStream::new(&bus, &topic)
///     .resume_from(&headers)
///     .end_with_session(watch)
///     .respond()
///     .await)
/// # }
/// ```
#[must_use = "nothing is streamed until `respond` is awaited"]
pub struct SseStream<'a, T> {
    bus: &'a Bus,
    topic: &'a Topic<T>,
    from: Option<Offset>,
    drain: Option<DrainSignal>,
    first: Option<SseEvent>,
    session: Option<SessionWatch>,
    extra: Option<BoxStream<'static, SseEvent>>,
    heartbeat: Duration,
}

impl<T> fmt::Debug for SseStream<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseStream")
            .field("topic", &self.topic.name())
            .field("from", &self.from)
            .field("drain", &self.drain.is_some())
            .field("first", &self.first.is_some())
            .field("session", &self.session)
            .field("merged", &self.extra.is_some())
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

impl<'a, T> SseStream<'a, T> {
    /// A stream of `topic` from now, with the bus's [`heartbeat`](super::BusConfig::heartbeat).
    pub fn new(bus: &'a Bus, topic: &'a Topic<T>) -> Self {
        Self {
            bus,
            topic,
            from: None,
            drain: None,
            first: None,
            session: None,
            extra: None,
            heartbeat: bus.heartbeat(),
        }
    }

    /// Resumes after the request's `Last-Event-ID` when it is an offset of this bus (durable
    /// topics; ignored on ephemeral ones). An offset past the end of the topic streams from
    /// now, after a `gap` notice (`past_the_end`).
    pub fn resume_from(mut self, headers: &HeaderMap) -> Self {
        self.from = match self.topic.tier() {
            Tier::Durable => last_event_id(headers),
            _ => None,
        };
        self
    }

    /// Ends the stream at `drain`'s [`closing`](DrainSignal::closing), so the browser
    /// reconnects to an instance that stays.
    pub fn drain(mut self, drain: DrainSignal) -> Self {
        self.drain = Some(drain);
        self
    }

    /// Sends `first` before any event, on every (re)connection (see [`stream_starting_with`]).
    pub fn first(mut self, first: SseEvent) -> Self {
        self.first = Some(first);
        self
    }

    /// Ends the stream when the session ends (logout here or on another instance, expiry):
    /// at once for an end in this process, else at the next heartbeat, each heartbeat reading
    /// the session once without sliding its idle expiry. A last `session_ended` event is sent
    /// first, so a page can ask for a login instead of reconnecting.
    pub fn end_with_session(mut self, watch: SessionWatch) -> Self {
        self.session = Some(watch);
        self
    }

    /// Interleaves `events` (the application's own: presence diffs, notices) with the topic's;
    /// the stream goes on when they run out. Call it once per source: every merged source is
    /// kept (interleaved fairly with the others), not only the last one.
    pub fn merge(mut self, events: impl Stream<Item = SseEvent> + Send + 'static) -> Self {
        self.extra = Some(match self.extra.take() {
            Some(earlier) => futures_util::stream::select(earlier, events).boxed(),
            None => events.boxed(),
        });
        self
    }

    /// Sets the heartbeat (a comment line, and the session check): default the bus's
    /// [`heartbeat`](super::BusConfig::heartbeat), at least 10 ms.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every.max(Duration::from_millis(10));
        self
    }

    /// Subscribes (reading where the topic ends: one Redis call) and returns the response.
    pub async fn respond(self) -> Response {
        let feed = self
            .bus
            .feed(self.topic.shared_name(), self.topic.tier(), self.from)
            .await;
        let heartbeat = self.heartbeat;
        let drain = self.drain;
        let end: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            match drain {
                Some(d) => d.closing().await,
                None => std::future::pending().await,
            }
        });
        let session_end: Pin<Box<dyn Future<Output = ()> + Send>> = match self.session {
            Some(mut watch) => Box::pin(async move { watch.ended(heartbeat).await }),
            None => Box::pin(std::future::pending()),
        };
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let state = State {
            feed,
            first: self.first,
            extra: self.extra,
            ticks,
            end,
            session_end,
            done: false,
        };
        let events = futures_util::stream::unfold(state, |mut st| async move {
            let event = st.next().await?;
            Some((Ok::<_, Infallible>(event), st))
        });
        Sse::new(events).into_response()
    }
}

/// One open stream: what it waits on.
struct State {
    feed: Feed,
    first: Option<SseEvent>,
    extra: Option<BoxStream<'static, SseEvent>>,
    ticks: tokio::time::Interval,
    /// Drain: ends the stream.
    end: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The session ended: a last event, then the end. Kept across events (a fresh future per
    /// event would push its next check back every time).
    session_end: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
}

impl State {
    async fn next(&mut self) -> Option<SseEvent> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        loop {
            let extra = async {
                match self.extra.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = &mut self.end => return None,
                () = &mut self.session_end => {
                    self.done = true;
                    return Some(SseEvent::default().event("session_ended").data("{}"));
                }
                delivery = self.feed.recv() => return delivery.map(to_sse),
                event = extra => match event {
                    Some(event) => return Some(event),
                    None => self.extra = None,
                },
                _ = self.ticks.tick() => return Some(SseEvent::default().comment("hb")),
            }
        }
    }
}

fn to_sse(delivery: RawDelivery) -> SseEvent {
    match delivery {
        RawDelivery::Event(entry) => {
            let event = SseEvent::default().data(&*entry.payload);
            match entry.offset {
                Some(offset) => event.id(offset.to_string()),
                None => event,
            }
        }
        RawDelivery::Gap(Gap::Trimmed { missed }) => SseEvent::default()
            .event("gap")
            .data(format!(r#"{{"reason":"trimmed","missed":{missed}}}"#)),
        RawDelivery::Gap(Gap::PastTheEnd) => SseEvent::default()
            .event("gap")
            .data(r#"{"reason":"past_the_end"}"#),
        RawDelivery::Gap(_) => SseEvent::default()
            .event("gap")
            .data(r#"{"reason":"epoch_changed"}"#),
        RawDelivery::Dropped(count) => SseEvent::default()
            .event("dropped")
            .data(format!(r#"{{"count":{count}}}"#)),
        RawDelivery::Interrupted => SseEvent::default().event("interrupted").data("{}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::Arc;

    use axum::body::Body;
    use http_body_util::BodyExt;

    use super::*;
    use crate::bus::BusConfig;
    use crate::bus::offset::StreamId;
    use crate::session::{MemoryStore, Session, SessionConfig, SessionLayer, SessionStore};

    /// The text of the frames a body yields within `within` (virtual time), and whether it
    /// ended.
    async fn read(body: &mut Body, within: Duration) -> (String, bool) {
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return (text, false),
                Ok(None) => return (text, true),
                Ok(Some(frame)) => {
                    if let Ok(data) = frame.unwrap().into_data() {
                        text.push_str(&String::from_utf8_lossy(&data));
                    }
                }
            }
        }
    }

    fn with_last_event_id(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("last-event-id", id.parse().unwrap());
        h
    }

    #[tokio::test]
    async fn a_last_event_id_past_the_end_gets_a_notice_then_live_events() {
        let bus = BusConfig::new().build_local().unwrap();
        let topic = Topic::<String>::durable("t").unwrap();
        let mut last = None;
        for i in 0..3 {
            last = bus.publish(&topic, &format!("old {i}")).await.unwrap();
        }
        let tip = last.unwrap();
        let past = [
            // The sequence number at u64::MAX: `+ 1` overflowed (a panic in debug builds).
            Offset { n: u64::MAX, ..tip },
            Offset {
                id: StreamId { ms: 0, seq: 0 },
                n: u64::MAX,
                ..tip
            },
            // An id past the end: nothing after it would ever come (a silent stream).
            Offset {
                id: StreamId {
                    ms: u64::MAX,
                    seq: u64::MAX,
                },
                ..tip
            },
        ];
        for offset in past {
            let headers = with_last_event_id(&offset.to_string());
            let mut body = stream(&bus, &topic, &headers, None).await.into_body();
            let (text, ended) = read(&mut body, Duration::from_millis(100)).await;
            assert!(!ended);
            assert!(
                text.contains("event: gap\ndata: {\"reason\":\"past_the_end\"}"),
                "{offset}: {text:?}"
            );
            assert!(!text.contains("old"), "no replay of the history: {text:?}");
            bus.publish(&topic, &"new".to_owned()).await.unwrap();
            let (text, _) = read(&mut body, Duration::from_millis(100)).await;
            assert!(text.contains("data: \"new\""), "{offset}: {text:?}");
        }
        // A real offset still resumes right after it.
        let headers = with_last_event_id(&tip.to_string());
        let mut body = stream(&bus, &topic, &headers, None).await.into_body();
        let (text, _) = read(&mut body, Duration::from_millis(100)).await;
        assert!(
            !text.contains("gap") && text.contains("\"new\""),
            "{text:?}"
        );
    }

    /// A logged-in session of `user` through a layer over `store`, and its watch.
    async fn logged_in(store: SessionStore, user: &str) -> (Session, SessionWatch) {
        let layer = SessionLayer::new(store, SessionConfig::default()).unwrap();
        let session = layer.session_for_tests();
        session.log_in(user).await.unwrap();
        let watch = session.watch().await.unwrap().unwrap();
        (session, watch)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_with_its_session() {
        let bus = BusConfig::new().build_local().unwrap();
        let topic = Topic::<String>::durable("t").unwrap();
        let heartbeat = bus.heartbeat();
        let memory = MemoryStore::new();

        // Logged out in this process: at once, after a last `session_ended` event.
        let (session, watch) = logged_in(memory.clone().into(), "ana").await;
        let mut body = SseStream::new(&bus, &topic)
            .end_with_session(watch)
            .respond()
            .await
            .into_body();
        let (_, ended) = read(&mut body, heartbeat * 3).await;
        assert!(!ended, "a live session keeps its stream");
        session.log_out().await.unwrap();
        let (text, ended) = read(&mut body, Duration::from_millis(1)).await;
        assert!(ended && text.contains("event: session_ended"), "{text:?}");

        // Logged out everywhere on another instance (the same sessions, another process):
        // within a heartbeat.
        let (_, watch) = logged_in(memory.clone().into(), "ana").await;
        let mut body = SseStream::new(&bus, &topic)
            .end_with_session(watch)
            .respond()
            .await
            .into_body();
        let (other, _) = logged_in(memory.clone().into(), "ana").await;
        other.log_out_everywhere().await.unwrap();
        let (text, ended) = read(&mut body, heartbeat + Duration::from_millis(1)).await;
        assert!(ended && text.contains("event: session_ended"), "{text:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_within_a_heartbeat_of_the_idle_expiry() {
        let bus = BusConfig::new().build_local().unwrap();
        let topic = Topic::<String>::durable("t").unwrap();
        let heartbeat = Duration::from_secs(1);
        let now = Arc::new(std::sync::atomic::AtomicU64::new(1_000_000));
        let clock = now.clone();
        let memory =
            MemoryStore::new().with_clock(move || clock.load(std::sync::atomic::Ordering::Relaxed));
        let (_, watch) = logged_in(memory.into(), "ana").await;
        let mut body = SseStream::new(&bus, &topic)
            .heartbeat(heartbeat)
            .end_with_session(watch)
            .respond()
            .await
            .into_body();
        let (text, ended) = read(&mut body, heartbeat * 5).await;
        assert!(!ended && text.contains(": hb"), "heartbeats: {text:?}");
        // Past the 30 min idle timeout (the stream's checks did not slide it).
        now.fetch_add(30 * 60 * 1000 + 1, std::sync::atomic::Ordering::Relaxed);
        let (text, ended) = read(&mut body, heartbeat + Duration::from_millis(1)).await;
        assert!(ended && text.contains("event: session_ended"), "{text:?}");
    }

    #[tokio::test]
    async fn merged_events_are_interleaved() {
        let bus = BusConfig::new().build_local().unwrap();
        let topic = Topic::<String>::durable("t").unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<SseEvent>();
        let extra =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|e| (e, rx)) },
            );
        let mut body = SseStream::new(&bus, &topic)
            .merge(extra)
            .respond()
            .await
            .into_body();
        tx.send(SseEvent::default().event("presence").data("{}"))
            .unwrap();
        bus.publish(&topic, &"x".to_owned()).await.unwrap();
        let (text, _) = read(&mut body, Duration::from_millis(100)).await;
        assert!(
            text.contains("event: presence") && text.contains("\"x\""),
            "{text:?}"
        );
        drop(tx);
        bus.publish(&topic, &"y".to_owned()).await.unwrap();
        let (text, ended) = read(&mut body, Duration::from_millis(100)).await;
        assert!(!ended && text.contains("\"y\""), "{text:?}");
    }
    /// Several `merge` calls: every source reaches the stream (the first one was dropped when
    /// a second was merged).
    #[tokio::test]
    async fn every_merged_source_is_kept() {
        let bus = BusConfig::new().build_local().unwrap();
        let topic = Topic::<String>::durable("t").unwrap();
        let source = |rx: tokio::sync::mpsc::UnboundedReceiver<SseEvent>| {
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|e| (e, rx)) },
            )
        };
        let (tx_a, rx_a) = tokio::sync::mpsc::unbounded_channel::<SseEvent>();
        let (tx_b, rx_b) = tokio::sync::mpsc::unbounded_channel::<SseEvent>();
        let (tx_c, rx_c) = tokio::sync::mpsc::unbounded_channel::<SseEvent>();
        let mut body = SseStream::new(&bus, &topic)
            .merge(source(rx_a))
            .merge(source(rx_b))
            .merge(source(rx_c))
            .respond()
            .await
            .into_body();
        tx_a.send(SseEvent::default().event("a").data("{}"))
            .unwrap();
        tx_b.send(SseEvent::default().event("b").data("{}"))
            .unwrap();
        tx_c.send(SseEvent::default().event("c").data("{}"))
            .unwrap();
        let (text, ended) = read(&mut body, Duration::from_millis(100)).await;
        assert!(!ended, "{text:?}");
        for name in ["event: a", "event: b", "event: c"] {
            assert!(text.contains(name), "{name} missing: {text:?}");
        }
        // One source running out leaves the others.
        drop(tx_a);
        tx_b.send(SseEvent::default().event("b2").data("{}"))
            .unwrap();
        let (text, ended) = read(&mut body, Duration::from_millis(100)).await;
        assert!(!ended && text.contains("event: b2"), "{text:?}");
    }
}
