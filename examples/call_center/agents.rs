//! Logins with shared sessions, agents' live status on the event bus, and the SSE stream every
//! instance serves.
//!
//! - `POST /auth/login` is in `login.rs`; `POST /auth/logout` ends the session
//!   (`?everywhere=true`: every session of the user); `GET /api/me` names the user (401 without
//!   a session).
//! - `PUT /api/agents/me/status` publishes the change on the bus (a durable topic; in Redis, or
//!   the bus's local mode on the embedded default); every instance applies it to its board;
//!   `GET /api/agents` lists the agents with status and presence; `GET /api/events` streams the
//!   changes as SSE (`Last-Event-ID` resumes on any instance with Redis; one past the end of
//!   the topic streams from now after a `gap` notice). Both need a login (who is on which call
//!   is the call center's business), and a user holds at most 8 streams per instance.
//! - A stream ends with its session: logout (at once), "log out everywhere" on any instance or
//!   an expiry (within a heartbeat, `WELCOMEDLY_SSE_HEARTBEAT_MS`, default 15 s), after a last
//!   `session_ended` event; its slot is freed with it. An open stream does not slide the
//!   session's idle expiry (watching the board is not activity: an unattended screen still
//!   logs out).
//! - The stream also says when this instance's feature flags changed (a `flags` event whose
//!   data is the flag set's version, one per version): the board reads its flags again through
//!   OFREP bulk evaluation with `If-None-Match`, so a flag flipped on any instance re-renders
//!   every board it changes.
//! - And it carries the guarded rollouts' view (`rollout` events, at most one a second, only
//!   when it changed; see `rollouts`): a decision taken on any instance reaches every board.
//! - Presence is who is connected, as Phoenix Presence and Socket.IO mean it: an agent is
//!   online while at least one of their event streams is open on a live instance (tabs and
//!   instances counted: membership's per-instance refcounts, or `LocalPresence` on the
//!   embedded default). A closed connection is noticed when it closes (hyper reads the EOF of
//!   a streaming connection), so the agent goes offline at once; an instance that dies takes
//!   its agents with it within the membership timeout. Joins and leaves go to every board over
//!   the bus (ephemeral topic `agents.presence`) as `presence` events; each stream starts with
//!   the whole picture in its `hello` event. Status and presence are independent: an agent may
//!   be `available` and offline (the board closed) or `offline` and connected.
//! - The board lives in each instance's memory, fed by the bus: an instance rebuilds it at
//!   start-up from the topic's retained history (`subscribe_from_oldest`), so one started after
//!   a change shows it too.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Json, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use welcomedly_cluster::bus::sse::SseStream;
use welcomedly_cluster::bus::{Bus, Delivery, Subscription, Topic};
use welcomedly_cluster::membership::{
    ClusterPresence, LocalPresence, Membership, PresenceChange, PresenceDiff, PresenceGuard,
};
use welcomedly_cluster::session::Session;
use welcomedly_core::drain::DrainSignal;
use welcomedly_flags::Flags;

use crate::login::DEMO_USERS;
use crate::problem::Problem;
use crate::rollouts::RolloutBoard;

/// The seeds' seven agent states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AgentStatus {
    Available,
    OnCall,
    Paused,
    AfterCallWork,
    Offline,
    OnBreak,
    InTraining,
}

/// One status change, as published on the bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StatusChanged {
    pub(crate) agent: String,
    pub(crate) status: AgentStatus,
    pub(crate) instance: String,
    pub(crate) at_ms: u64,
}

/// Where status changes travel: the cluster bus (Redis), or on the embedded default the bus's
/// local mode (same API and semantics, this process only).
pub(crate) struct Events {
    pub(crate) bus: Bus,
    pub(crate) topic: Topic<StatusChanged>,
}

/// Who is connected: the cluster's membership (Redis), or this process alone.
enum Presence {
    Cluster(Membership),
    Local(LocalPresence),
}

impl Presence {
    fn join(&self, agent: &str) -> Result<PresenceGuard, welcomedly_cluster::Error> {
        match self {
            Presence::Cluster(m) => m.join(agent),
            Presence::Local(l) => l.join(agent),
        }
    }

    fn diffs(&self) -> tokio::sync::broadcast::Receiver<PresenceDiff> {
        match self {
            Presence::Cluster(m) => m.presence_diffs(),
            Presence::Local(l) => l.diffs(),
        }
    }

    /// Who is connected to a live instance.
    async fn snapshot(&self) -> Result<ClusterPresence, welcomedly_cluster::Error> {
        match self {
            Presence::Cluster(m) => m.cluster_presence().await,
            Presence::Local(l) => Ok(l.snapshot()),
        }
    }
}

/// The presence of every agent as the board reads it: agent → the instances holding a stream.
fn presence_json(presence: &ClusterPresence) -> serde_json::Value {
    presence
        .keys()
        .map(|k| {
            let instances: Vec<&str> = presence.instances_of(k).collect();
            (k.to_owned(), serde_json::json!(instances))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Shared state of the agent routes.
pub(crate) struct Agents {
    events: Events,
    /// Ephemeral: a presence diff matters to those listening now; a board that was not gets
    /// the whole picture when its stream (re)starts.
    presence_topic: Topic<PresenceDiff>,
    board: Mutex<BTreeMap<String, BoardEntry>>,
    presence: Presence,
    streams: StreamSlots,
    instance: String,
    drain: DrainSignal,
    /// This instance's feature flags: the stream tells the board when they change.
    flags: Flags,
    /// The guarded rollouts' view: the stream sends it when it changes (`rollout` events).
    rollouts: Arc<RolloutBoard>,
}

/// An agent's last status on this instance's board, with the change's sequence number on the
/// bus topic (the order every instance agrees on; publishers' clocks may disagree).
#[derive(Clone)]
struct BoardEntry {
    change: StatusChanged,
    seq: Option<u64>,
}

/// The most event streams one user may hold open on one instance (tabs, devices); the next
/// one is refused with 429 until one closes.
const MAX_STREAMS_PER_USER: usize = 8;

/// Open event streams per user on this instance.
#[derive(Default)]
struct StreamSlots(Arc<Mutex<BTreeMap<String, usize>>>);

/// One open stream's slot, released when the stream's body is dropped.
struct StreamSlot {
    slots: Arc<Mutex<BTreeMap<String, usize>>>,
    user: String,
}

impl StreamSlots {
    fn take(&self, user: &str) -> Option<StreamSlot> {
        let mut slots = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let open = slots.entry(user.to_owned()).or_insert(0);
        if *open >= MAX_STREAMS_PER_USER {
            return None;
        }
        *open += 1;
        Some(StreamSlot {
            slots: self.0.clone(),
            user: user.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = slots.get_mut(&self.user) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                slots.remove(&self.user);
            }
        }
    }
}

impl Agents {
    pub(crate) fn new(
        events: Events,
        membership: Option<Membership>,
        instance: String,
        drain: DrainSignal,
        flags: Flags,
        rollouts: Arc<RolloutBoard>,
    ) -> Result<Arc<Self>, welcomedly_cluster::Error> {
        let presence = match membership {
            Some(m) => Presence::Cluster(m),
            None => Presence::Local(LocalPresence::new(instance.clone())),
        };
        Ok(Arc::new(Self {
            events,
            presence_topic: Topic::ephemeral("agents.presence")?,
            board: Mutex::new(BTreeMap::new()),
            presence,
            streams: StreamSlots::default(),
            instance,
            drain,
            flags,
            rollouts,
        }))
    }

    /// Publishes this instance's presence diffs (its streams opening and closing, the
    /// instances it reaped) on the bus, so every board sees every change.
    async fn forward_presence(
        self: Arc<Self>,
        mut diffs: tokio::sync::broadcast::Receiver<PresenceDiff>,
    ) {
        loop {
            match diffs.recv().await {
                Ok(diff) => {
                    if let Err(e) = self.events.bus.publish(&self.presence_topic, &diff).await {
                        tracing::warn!(error = %e, "a presence change was not shared with the other instances: their boards catch up when their streams reconnect");
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "presence changes were not shared (too many at once): boards catch up when their streams reconnect"
                    );
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Applies every change published anywhere to this instance's board, for as long as the
    /// process runs: the retained history first, then live changes. Also shares this
    /// instance's presence changes.
    pub(crate) async fn follow(self: Arc<Self>) {
        // Subscribed here, before anything can join, so no diff falls before the task starts.
        tokio::spawn(self.clone().forward_presence(self.presence.diffs()));
        let mut sub = self
            .events
            .bus
            .subscribe_from_oldest(&self.events.topic)
            .await;
        while let Some(delivery) = sub.recv().await {
            match delivery {
                // In the topic's order, whatever the publishers' clocks say.
                Delivery::Event(e) => self.apply(e.data, e.offset.map(|o| o.sequence()), true),
                Delivery::Gap(gap) => {
                    tracing::warn!(
                        ?gap,
                        "missed agent status changes: the board may be behind until the next ones"
                    )
                }
                other => tracing::debug!(?other, "agent status feed"),
            }
        }
    }

    /// Puts `change` on the board: always when it comes from the topic in order (`in_order`),
    /// else (this instance's own change, applied before the topic delivers it) only when it is
    /// newer by sequence number than what the board holds.
    fn apply(&self, change: StatusChanged, seq: Option<u64>, in_order: bool) {
        let mut board = self.board.lock().unwrap_or_else(PoisonError::into_inner);
        let newer = match (board.get(&change.agent).and_then(|e| e.seq), seq) {
            (Some(old), Some(new)) => new > old,
            _ => true,
        };
        if in_order || newer {
            board.insert(change.agent.clone(), BoardEntry { change, seq });
        }
    }
}

pub(crate) fn routes(agents: Arc<Agents>) -> Router {
    Router::new()
        .route("/auth/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/agents", get(list))
        .route("/api/agents/me/status", put(set_status))
        .route("/api/events", get(events))
        .with_state(agents)
}

#[derive(Deserialize)]
struct LogoutQuery {
    everywhere: Option<bool>,
}

async fn logout(session: Session, Query(q): Query<LogoutQuery>) -> Response {
    let result = if q.everywhere.unwrap_or(false) {
        session.log_out_everywhere().await.map(|n| n as usize)
    } else {
        session.log_out().await.map(|()| 1)
    };
    match result {
        Ok(ended) => {
            Json(serde_json::json!({ "logged_out": true, "sessions_ended": ended })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// The logged-in user, or the response to send instead (401, or 503 when the store is down).
pub(crate) async fn user(session: &Session) -> Result<String, Response> {
    match session.user_id().await {
        Ok(Some(user)) => Ok(user.0.to_string()),
        Ok(None) => Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "you are not logged in: POST /auth/login first and send the session cookie",
        )
        .into_response()),
        Err(e) => Err(e.into_response()),
    }
}

async fn me(State(agents): State<Arc<Agents>>, session: Session) -> Response {
    match user(&session).await {
        Ok(user) => Json(serde_json::json!({
            "user": user,
            "served_by": agents.instance,
        }))
        .into_response(),
        Err(res) => res,
    }
}

#[derive(Deserialize)]
struct SetStatus {
    status: AgentStatus,
}

async fn set_status(
    State(agents): State<Arc<Agents>>,
    session: Session,
    body: Result<Json<SetStatus>, JsonRejection>,
) -> Response {
    let agent = match user(&session).await {
        Ok(user) => user,
        Err(res) => return res,
    };
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => return Problem::from(rejection).into_response(),
    };
    let change = StatusChanged {
        agent: agent.clone(),
        status: body.status,
        instance: agents.instance.clone(),
        at_ms: now_ms(),
    };
    let offset = match agents
        .events
        .bus
        .publish(&agents.events.topic, &change)
        .await
    {
        Ok(offset) => offset,
        Err(e) => {
            tracing::warn!(error = %e, "could not publish a status change");
            return Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the status change could not be shared with the other instances (the event bus is unreachable): retry in a moment",
            )
            .into_response();
        }
    };
    let seq = offset.map(|o| o.sequence());
    agents.apply(change.clone(), seq, false);
    Json(serde_json::json!({
        "agent": change.agent,
        "status": change.status,
        "instance": change.instance,
        "at_ms": change.at_ms,
        "seq": seq,
    }))
    .into_response()
}

async fn list(State(agents): State<Arc<Agents>>, session: Session) -> Response {
    // Who is on which call is the call center's business: logged-in users only.
    if let Err(res) = user(&session).await {
        return res;
    }
    // `null` while it cannot be read (Redis down): unknown, not offline.
    let presence = match agents.presence.snapshot().await {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read who is connected");
            None
        }
    };
    let board = agents
        .board
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let list: Vec<serde_json::Value> = DEMO_USERS
        .iter()
        .map(|name| {
            let entry = board.get(*name);
            let status = entry.map_or(AgentStatus::Offline, |e| e.change.status);
            let online = presence.as_ref().map(|p| p.contains(name));
            serde_json::json!({
                "agent": name,
                "status": status,
                "since_ms": entry.map(|e| e.change.at_ms),
                "changed_on": entry.map(|e| e.change.instance.clone()),
                "seq": entry.and_then(|e| e.seq),
                "online": online,
            })
        })
        .collect();
    Json(serde_json::json!({ "agents": list, "served_by": agents.instance })).into_response()
}

async fn events(
    State(agents): State<Arc<Agents>>,
    session: Session,
    headers: HeaderMap,
) -> Response {
    let user = match user(&session).await {
        Ok(user) => user,
        Err(res) => return res,
    };
    // The stream ends with the session (checked at every heartbeat, without sliding it).
    let watch = match session.watch().await {
        Ok(Some(watch)) => watch,
        Ok(None) => {
            return Problem::new(
                StatusCode::UNAUTHORIZED,
                "you are not logged in: POST /auth/login first and send the session cookie",
            )
            .into_response();
        }
        Err(e) => return e.into_response(),
    };
    let Some(slot) = agents.streams.take(&user) else {
        return Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "you already have {MAX_STREAMS_PER_USER} event streams open on this instance: close a board tab and retry"
            ),
        )
        .into_response();
    };
    let Events { bus, topic } = &agents.events;
    // Listen to presence changes first, then join, then read the picture: a change is either
    // in the picture or comes after it (joins and leaves of one instance are idempotent on the
    // board, so one in both is harmless).
    let diffs = bus.subscribe(&agents.presence_topic).await;
    let guard = match agents.presence.join(&user) {
        Ok(guard) => Some(guard),
        Err(e) => {
            tracing::warn!(error = %e, "could not record the agent's presence");
            None
        }
    };
    let picture = agents.presence.snapshot().await.ok();
    // First on every connection: which instance holds this stream, and who is connected.
    // `retry`: a browser whose stream broke (this instance died) reconnects after 1 s, not
    // the browsers' default 3 s, through the load balancer to an instance that lives.
    let hello = SseEvent::default()
        .event("hello")
        .retry(std::time::Duration::from_secs(1))
        .json_data(serde_json::json!({
            "instance": agents.instance,
            "presence": picture.as_ref().map(presence_json),
        }))
        .unwrap_or_default();
    let response = SseStream::new(bus, topic)
        .resume_from(&headers)
        .drain(agents.drain.clone())
        .first(hello)
        .end_with_session(watch)
        // The application's own events: presence diffs, flag changes and the guarded
        // rollouts' view.
        .merge(presence_events(agents.clone(), diffs))
        .merge(flag_events(agents.flags.clone()))
        .merge(agents.rollouts.events())
        .respond()
        .await;
    // The slot and the presence are released when the stream's body is dropped: the client
    // closed the connection (hyper notices at once), the session ended, drain, shutdown.
    response.map(|body| {
        use futures_util::StreamExt;
        let held = (slot, guard);
        axum::body::Body::from_stream(body.into_data_stream().map(move |chunk| {
            let _held = &held;
            chunk
        }))
    })
}

/// Presence diffs as SSE events: `presence` (`{"agent","instance","online"}`: whether the
/// agent has a stream on that instance), or `presence_snapshot` (`{"presence":{…}}`: the whole
/// picture again) after diffs were lost.
fn presence_events(
    agents: Arc<Agents>,
    diffs: Subscription<PresenceDiff>,
) -> impl futures_util::Stream<Item = SseEvent> + Send + 'static {
    futures_util::stream::unfold((agents, diffs), |(agents, mut diffs)| async move {
        loop {
            let event = match diffs.recv().await? {
                Delivery::Event(e) => {
                    let diff = e.data;
                    SseEvent::default()
                        .event("presence")
                        .json_data(serde_json::json!({
                            "agent": diff.key,
                            "instance": diff.instance,
                            "online": diff.change == PresenceChange::Joined,
                        }))
                }
                Delivery::Interrupted | Delivery::Dropped { .. } => {
                    let Ok(picture) = agents.presence.snapshot().await else {
                        continue;
                    };
                    SseEvent::default()
                        .event("presence_snapshot")
                        .json_data(serde_json::json!({ "presence": presence_json(&picture) }))
                }
                _ => continue,
            };
            match event {
                Ok(event) => return Some((event, (agents, diffs))),
                Err(e) => tracing::warn!(error = %e, "a presence event does not encode"),
            }
        }
    })
}

/// `flags` events (data: the flag set's version) whenever this instance installs a flag set
/// that changes a flag: an admin write on any instance reaches every instance through the flag
/// store's push, and each instance's streams tell their boards, which read their flags again
/// (OFREP bulk with `If-None-Match`: a change that does not touch this user costs a `304`).
/// One event per version, however many flags it changed.
fn flag_events(flags: Flags) -> impl futures_util::Stream<Item = SseEvent> + Send + 'static {
    let changes = flags.subscribe();
    futures_util::stream::unfold(
        (flags, changes, 0u64),
        |(flags, mut changes, last)| async move {
            loop {
                let version = match changes.recv().await {
                    Ok(change) => change.version,
                    // Changes were missed: the board re-reads anyway.
                    Err(RecvError::Lagged(_)) => flags.version(),
                    Err(RecvError::Closed) => return None,
                };
                if version == last {
                    continue;
                }
                let event = SseEvent::default().event("flags").data(version.to_string());
                return Some((event, (flags, changes, version)));
            }
        },
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
