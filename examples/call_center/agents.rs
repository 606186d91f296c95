//! Logins with shared sessions, agents' live status on the event bus, and the SSE stream every
//! instance serves.
//!
//! - `POST /auth/login` checks an argon2 hash (off the async threads) and logs the session in
//!   (a new id: no fixation); `POST /auth/logout` ends it (`?everywhere=true`: every session of
//!   the user); `GET /api/me` names the user (401 without a session).
//! - `PUT /api/agents/me/status` publishes the change on the bus (a durable topic; in Redis, or
//!   the bus's local mode on the embedded default); every instance applies it to its board;
//!   `GET /api/agents` lists the agents with status and presence; `GET /api/events` streams the
//!   changes as SSE (`Last-Event-ID` resumes on any instance with Redis).
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

/// The demo users: name → argon2 hash of the demo password.
pub(crate) struct Users {
    hashes: BTreeMap<&'static str, String>,
    /// Verified against for unknown names, so a login takes as long whoever it names.
    dummy: String,
}

pub(crate) const DEMO_USERS: [&str; 2] = ["agent", "supervisor"];

impl Users {
    /// Hashes `password` for each demo user (argon2id, a random salt each), off the async
    /// threads.
    pub(crate) async fn seed(password: String) -> Result<Self, String> {
        tokio::task::spawn_blocking(move || {
            let hash = |pw: &str| -> Result<String, String> {
                use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
                let salt = SaltString::generate(&mut OsRng);
                argon2::Argon2::default()
                    .hash_password(pw.as_bytes(), &salt)
                    .map(|h| h.to_string())
                    .map_err(|e| format!("cannot hash the demo password: {e}"))
            };
            let mut hashes = BTreeMap::new();
            for user in DEMO_USERS {
                hashes.insert(user, hash(&password)?);
            }
            Ok(Users {
                hashes,
                dummy: hash("not the password of anyone")?,
            })
        })
        .await
        .map_err(|e| format!("hashing the demo passwords failed: {e}"))?
    }

    /// Whether `password` is `user`'s, checked off the async threads.
    async fn verify(self: &Arc<Self>, user: &str, password: String) -> bool {
        let known = self.hashes.contains_key(user);
        let users = self.clone();
        let user = user.to_owned();
        tokio::task::spawn_blocking(move || {
            use argon2::password_hash::{PasswordHash, PasswordVerifier};
            let stored = users.hashes.get(user.as_str()).unwrap_or(&users.dummy);
            PasswordHash::new(stored).is_ok_and(|h| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false)
            && known
    }
}

/// Where status changes travel: the cluster bus (Redis), or on the embedded default the bus's
/// local mode (same API and semantics, this process only).
pub(crate) struct Events {
    pub(crate) bus: Bus,
    pub(crate) topic: Topic<StatusChanged>,
}

/// Shared state of the agent routes.
pub(crate) struct Agents {
    pub(crate) users: Arc<Users>,
    events: Events,
    board: Mutex<BTreeMap<String, StatusChanged>>,
    membership: Option<Membership>,
    presence: Mutex<BTreeMap<String, PresenceGuard>>,
    instance: String,
    drain: DrainSignal,
}

impl Agents {
    pub(crate) fn new(
        users: Users,
        events: Events,
        membership: Option<Membership>,
        instance: String,
        drain: DrainSignal,
    ) -> Arc<Self> {
        Arc::new(Self {
            users: Arc::new(users),
            events,
            board: Mutex::new(BTreeMap::new()),
            membership,
            presence: Mutex::new(BTreeMap::new()),
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
                Delivery::Event(e) => self.apply(e.data),
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

    fn apply(&self, change: StatusChanged) {
        let mut board = self.board.lock().unwrap_or_else(PoisonError::into_inner);
        // Keep the newest: a late delivery of an older change never overwrites a newer one.
        if board
            .get(&change.agent)
            .is_none_or(|old| old.at_ms <= change.at_ms)
        {
            board.insert(change.agent.clone(), change);
        }
    }
}

pub(crate) fn routes(agents: Arc<Agents>) -> Router {
    Router::new()
        .route("/auth/login", post(login))
        .route("/auth/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/agents", get(list))
        .route("/api/agents/me/status", put(set_status))
        .route("/api/events", get(events))
        .with_state(agents)
}

#[derive(Deserialize)]
pub(crate) struct Login {
    username: String,
    password: String,
}

/// The longest part of a client-chosen user name written to the log.
const MAX_LOGGED_USERNAME: usize = 32;

async fn login(
    State(agents): State<Arc<Agents>>,
    session: Session,
    body: Result<Json<Login>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => return Problem::from(rejection).into_response(),
    };
    if !agents.users.verify(&body.username, body.password).await {
        // The name is the client's choice: logged capped, never whole.
        tracing::info!(
            user = %crate::app::capped(&body.username, MAX_LOGGED_USERNAME),
            user_len = body.username.len(),
            "login refused"
        );
        return Problem::new(
            StatusCode::UNAUTHORIZED,
            "unknown user or wrong password: check both and retry (failed logins are rate limited)",
        )
        .into_response();
    }
    if let Err(e) = session.log_in(body.username.as_str()).await {
        return e.into_response();
    }
    tracing::info!(user = %body.username, "login");
    Json(serde_json::json!({ "user": body.username })).into_response()
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
    if let Err(e) = agents
        .events
        .bus
        .publish(&agents.events.topic, &change)
        .await
    {
        tracing::warn!(error = %e, "could not publish a status change");
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the status change could not be shared with the other instances (the event bus is unreachable): retry in a moment",
        )
        .into_response();
    }
    agents.apply(change.clone());
    Json(change).into_response()
}

async fn list(State(agents): State<Arc<Agents>>) -> Response {
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
            let status = entry.map_or(AgentStatus::Offline, |e| e.status);
            let online = match &presence {
                Some(p) => p.contains(name),
                None => status != AgentStatus::Offline,
            };
            serde_json::json!({
                "agent": name,
                "status": status,
                "since_ms": entry.map(|e| e.at_ms),
                "changed_on": entry.map(|e| e.instance.clone()),
                "online": online,
            })
        })
        .collect();
    Json(serde_json::json!({ "agents": list, "served_by": agents.instance })).into_response()
}

async fn events(State(agents): State<Arc<Agents>>, headers: HeaderMap) -> Response {
    let Events { bus, topic } = &agents.events;
    // First on every connection: which instance holds this stream (the board shows it).
    let hello = axum::response::sse::Event::default()
        .event("hello")
        .json_data(serde_json::json!({ "instance": agents.instance }))
        .unwrap_or_default();
    welcomedly_cluster::bus::sse::stream_starting_with(
        bus,
        topic,
        &headers,
        Some(agents.drain.clone()),
        hello,
    )
    .await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
