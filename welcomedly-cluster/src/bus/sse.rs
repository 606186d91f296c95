//! Server-sent events for a bus topic (`axum` feature): what a browser's `EventSource` needs
//! to follow a topic across instances.
//!
//! - every durable event is sent with `id:` = its [`Offset`]; a browser that reconnects — to
//!   this instance or any other behind the load balancer — sends it back as `Last-Event-ID`
//!   and the stream resumes right after it, from Redis, missing nothing that is retained;
//! - events carry the JSON the publisher serialized as `data:` (default event type, so
//!   `EventSource.onmessage` gets them); notices have their own event types:
//!   `gap` (`{"reason":"trimmed","missed":N}` or `{"reason":"epoch_changed"}` — reload the
//!   state), `dropped` (`{"count":N}`) and `interrupted` (ephemeral topics);
//! - a comment line every [`heartbeat`](super::BusConfig::heartbeat) keeps proxies from
//!   closing an idle stream;
//! - the stream ends cleanly when the server starts closing ([`DrainSignal::closing`]), so the
//!   browser reconnects to an instance that stays.
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

use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use welcomedly_core::drain::DrainSignal;

use super::subscription::{Feed, RawDelivery};
use super::{Bus, Gap, Offset, Tier, Topic};

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
/// [`closing`](DrainSignal::closing) when one is given.
pub async fn stream<T>(
    bus: &Bus,
    topic: &Topic<T>,
    headers: &HeaderMap,
    drain: Option<DrainSignal>,
) -> Response {
    stream_inner(bus, topic, headers, drain, None).await
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
    stream_inner(bus, topic, headers, drain, Some(first)).await
}

async fn stream_inner<T>(
    bus: &Bus,
    topic: &Topic<T>,
    headers: &HeaderMap,
    drain: Option<DrainSignal>,
    first: Option<SseEvent>,
) -> Response {
    let from = match topic.tier() {
        Tier::Durable => last_event_id(headers),
        _ => None,
    };
    let feed = bus.feed(topic.shared_name(), topic.tier(), from).await;
    let events = futures_util::stream::unfold(feed, |mut feed: Feed| async move {
        let delivery = feed.recv().await?;
        Some((Ok::<_, Infallible>(to_sse(delivery)), feed))
    });
    let events = futures_util::stream::iter(first.map(Ok)).chain(events);
    let end = async move {
        match drain {
            Some(d) => d.closing().await,
            None => std::future::pending().await,
        }
    };
    Sse::new(events.take_until(end))
        .keep_alive(KeepAlive::new().interval(bus.heartbeat()).text("hb"))
        .into_response()
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
        RawDelivery::Gap(_) => SseEvent::default()
            .event("gap")
            .data(r#"{"reason":"epoch_changed"}"#),
        RawDelivery::Dropped(count) => SseEvent::default()
            .event("dropped")
            .data(format!(r#"{{"count":{count}}}"#)),
        RawDelivery::Interrupted => SseEvent::default().event("interrupted").data("{}"),
    }
}
