//! Logins with shared sessions, agents' live status on the event bus, and the SSE stream every
//! instance serves.
//!
//! - `POST /auth/login` is in `login.rs`; `POST /auth/logout` ends the session
//!   (`?everywhere=true`: every session of the user); `GET /api/me` names the user (401 without
//!   a session).
//! - `PUT /api/agents/me/status` publishes the change on the bus (a durable topic; in Redis, or
//!   the bus's local mode on the embedded default); every instance applies it to its board;
//!   `GET /api/agents` lists the agents with status and presence; `GET /api/events` streams the
//!   changes as SSE (`Last-Event-ID` resumes on any instance with Redis). Both need a login
//!   (who is on which call is the call center's business), and a user holds at most 8 streams
//!   per instance.
//! - Presence: an agent whose status is not `offline` is present on the instance that took the
//!   change (membership's presence, so it vanishes with that instance: no ghosts).
//! - The board lives in each instance's memory, fed by the bus: an instance rebuilds it at
//!   start-up from the topic's retained history (`subscribe_from_oldest`), so one started after
//!   a change shows it too.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Json, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use welcomedly_cluster::bus::{Bus, Delivery, Topic};
use welcomedly_cluster::membership::{Membership, PresenceGuard};
use welcomedly_cluster::session::Session;
use welcomedly_core::drain::DrainSignal;

use crate::login::DEMO_USERS;
use crate::problem::Problem;

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

/// Shared state of the agent routes.
pub(crate) struct Agents {
    events: Events,
    board: Mutex<BTreeMap<String, BoardEntry>>,
    membership: Option<Membership>,
    presence: Mutex<BTreeMap<String, PresenceGuard>>,
    streams: StreamSlots,
    instance: String,
    drain: DrainSignal,
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
    ) -> Arc<Self> {
        Arc::new(Self {
            events,
            board: Mutex::new(BTreeMap::new()),
            membership,
            presence: Mutex::new(BTreeMap::new()),
            streams: StreamSlots::default(),
            instance,
            drain,
        })
    }

    /// Applies every change published anywhere to this instance's board, for as long as the
    /// process runs: the retained history first, then live changes.
    pub(crate) async fn follow(self: Arc<Self>) {
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
async fn user(session: &Session) -> Result<String, Response> {
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
    if let Some(m) = &agents.membership {
        let mut presence = agents
            .presence
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if body.status == AgentStatus::Offline {
            presence.remove(&agent);
        } else if !presence.contains_key(&agent) {
            match m.join(agent.clone()) {
                Ok(guard) => {
                    presence.insert(agent.clone(), guard);
                }
                Err(e) => tracing::warn!(error = %e, "could not record the agent's presence"),
            }
        }
    }
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
    let presence = match &agents.membership {
        Some(m) => m.cluster_presence().await.ok(),
        None => None,
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
            let online = match &presence {
                Some(p) => p.contains(name),
                None => status != AgentStatus::Offline,
            };
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
    // First on every connection: which instance holds this stream (the board shows it).
    // `retry`: a browser whose stream broke (this instance died) reconnects after 1 s, not
    // the browsers' default 3 s, through the load balancer to an instance that lives.
    let hello = axum::response::sse::Event::default()
        .event("hello")
        .retry(std::time::Duration::from_secs(1))
        .json_data(serde_json::json!({ "instance": agents.instance }))
        .unwrap_or_default();
    let response = welcomedly_cluster::bus::sse::stream_starting_with(
        bus,
        topic,
        &headers,
        Some(agents.drain.clone()),
        hello,
    )
    .await;
    // The slot is released when the stream's body is dropped (client gone, drain, shutdown).
    response.map(|body| {
        use futures_util::StreamExt;
        axum::body::Body::from_stream(body.into_data_stream().map(move |chunk| {
            let _held = &slot;
            chunk
        }))
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
