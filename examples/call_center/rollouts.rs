//! The board's view of guarded rollouts: `GET /api/rollouts` and the `rollout` events of
//! `GET /api/events`.
//!
//! The rollout admin API (`/admin/rollouts/{flag}`) needs the admin token, which never sits in a
//! browser. The board reads a narrower, read-only view instead, behind its session like its
//! other `/api` routes (401 without a login): for each active or recent rollout its flag, state
//! (`running`, `paused`, `frozen`, `completed`, `rolled_back`, `aborted`), stage index and
//! share, every stage's share, each arm's requests, error ratio and latency quantile (the
//! current stage, fleet-wide), and the last decision with a one-line reason. No plan, no
//! operator's evidence beyond that line.
//!
//! Which rollouts: the ones this instance's agent follows (active, from Redis), the flags whose
//! decisions came over the bus since this instance started (topic `rollouts`, published by the
//! instance that took each decision: so a decision taken anywhere shows everywhere), and the
//! demo's own guarded flag `new-checkout`; at most [`MAX_SHOWN`] flags, only well-formed keys
//! (the bus is written by our instances, but a key is checked before it is kept all the same).
//!
//! One watcher per instance (not per stream) reads the statuses: when a decision arrives on the
//! bus, and once a second while a rollout is followed (arm counts change every second). It
//! publishes the view only when it changed; each stream then sends at most one `rollout` event
//! per second (the latest view; those in between are coalesced). With Redis down the agent
//! reports `frozen` with why, and the view says so.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Json, State};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::watch;
use welcomedly_cluster::bus::{Bus, Delivery, Topic};
use welcomedly_cluster::session::Session;
use welcomedly_flags::rollout::agent::{DecisionEvent, RolloutAgent};
use welcomedly_flags::rollout::controller::{Action, Decision};
use welcomedly_flags::rollout::sequential::Verdict;

use crate::checkout::CHECKOUT_FLAG;

/// The most rollouts the view shows (the agent runs at most 16 at once).
pub(crate) const MAX_SHOWN: usize = 16;
/// The most `rollout` events one stream sends per second.
const EVENT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the watcher reads the statuses while a rollout is followed.
const REFRESH: Duration = Duration::from_secs(1);
/// The longest flag key kept (the admin API's limit).
const MAX_KEY_LEN: usize = 128;

/// This instance's view of the rollouts and its subscribers.
pub(crate) struct RolloutBoard {
    agent: Option<Arc<RolloutAgent>>,
    /// Flags shown besides the followed ones, most recent decision first, at most
    /// [`MAX_SHOWN`].
    recent: Mutex<Vec<String>>,
    view: watch::Sender<Arc<Value>>,
}

impl RolloutBoard {
    /// The view over `agent` (none without Redis: the view stays empty).
    pub(crate) fn new(agent: Option<Arc<RolloutAgent>>) -> Arc<Self> {
        let (view, _) = watch::channel(Arc::new(json!({ "rollouts": [] })));
        Arc::new(Self {
            agent,
            recent: Mutex::new(vec![CHECKOUT_FLAG.to_owned()]),
            view,
        })
    }

    /// Follows the decisions on `bus` (topic `rollouts`) and refreshes the view, for as long as
    /// the process runs.
    pub(crate) async fn watch(self: Arc<Self>, bus: Bus) {
        let Some(agent) = self.agent.clone() else {
            return;
        };
        let topic = match Topic::<DecisionEvent>::ephemeral("rollouts") {
            Ok(topic) => topic,
            Err(e) => {
                tracing::warn!(error = %e, "the board's rollout panel cannot follow the decisions: it shows this instance's view only");
                return;
            }
        };
        let mut decisions = bus.subscribe(&topic).await;
        let mut every = tokio::time::interval(REFRESH);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A read at start-up: a rollout that ended before this instance started shows too.
        let mut due = true;
        loop {
            tokio::select! {
                delivery = decisions.recv() => match delivery {
                    Some(Delivery::Event(e)) => {
                        self.remember(&e.data.flag);
                        due = true;
                    }
                    // Decisions may have been missed: read again.
                    Some(_) => due = true,
                    None => return,
                },
                _ = every.tick() => {
                    let followed = agent.followed();
                    for flag in &followed {
                        self.remember(flag);
                    }
                    due |= !followed.is_empty();
                }
            }
            if due {
                due = false;
                let view = Arc::new(self.read().await);
                self.view.send_if_modified(|old| {
                    if **old == *view {
                        false
                    } else {
                        *old = view;
                        true
                    }
                });
            }
        }
    }

    /// Keeps `flag` among the shown ones (first), when it is a well-formed key.
    fn remember(&self, flag: &str) {
        if !is_flag_key(flag) {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.first().is_some_and(|f| f == flag) {
            return;
        }
        recent.retain(|f| f != flag);
        recent.insert(0, flag.to_owned());
        recent.truncate(MAX_SHOWN);
    }

    /// The view now: `{"rollouts": [...]}`, by flag.
    async fn read(&self) -> Value {
        let Some(agent) = &self.agent else {
            return json!({ "rollouts": [] });
        };
        let mut flags = agent.followed();
        flags.extend(
            self.recent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        flags.sort_unstable();
        flags.dedup();
        flags.truncate(MAX_SHOWN);
        let mut rollouts = Vec::with_capacity(flags.len());
        for flag in flags {
            // Not found: never started (or not readable and never seen by this instance).
            if let Ok(status) = agent.status(&flag).await {
                rollouts.push(view_of(&status));
            }
        }
        json!({ "rollouts": rollouts })
    }

    /// `rollout` events for one stream: the view whenever it changed, at most one per
    /// [`EVENT_INTERVAL`] (the latest one; those in between are coalesced).
    pub(crate) fn events(&self) -> impl futures_util::Stream<Item = SseEvent> + Send + 'static {
        let mut changes = self.view.subscribe();
        // What the page reads on `hello` (GET /api/rollouts): only later changes are sent.
        let seen = changes.borrow_and_update().clone();
        futures_util::stream::unfold(
            (changes, seen, None::<tokio::time::Instant>),
            |(mut changes, mut seen, mut sent)| async move {
                loop {
                    changes.changed().await.ok()?;
                    if let Some(at) = sent {
                        tokio::time::sleep_until(at + EVENT_INTERVAL).await;
                    }
                    let view = changes.borrow_and_update().clone();
                    if *view == *seen {
                        continue;
                    }
                    match SseEvent::default().event("rollout").json_data(&*view) {
                        Ok(event) => {
                            seen = view;
                            sent = Some(tokio::time::Instant::now());
                            return Some((event, (changes, seen, sent)));
                        }
                        Err(e) => tracing::warn!(error = %e, "a rollout event does not encode"),
                    }
                }
            },
        )
    }
}

/// `GET /api/rollouts` (a login needed).
pub(crate) fn routes(board: Arc<RolloutBoard>) -> Router {
    Router::new()
        .route("/api/rollouts", get(list))
        .with_state(board)
}

async fn list(State(board): State<Arc<RolloutBoard>>, session: Session) -> Response {
    if let Err(res) = crate::agents::user(&session).await {
        return res;
    }
    Json(board.read().await).into_response()
}

/// A flag key as the admin API accepts it: 1-128 letters, digits, `-`, `_`, `.`, starting
/// with a letter or digit.
fn is_flag_key(key: &str) -> bool {
    key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The value at `pointer` in `v` (JSON Pointer), or `null`.
fn field(v: &Value, pointer: &str) -> Value {
    v.pointer(pointer).cloned().unwrap_or(Value::Null)
}

/// The board's view of one rollout, from the agent's status.
fn view_of(status: &Value) -> Value {
    let stages: Vec<Value> = status
        .pointer("/plan/stages")
        .and_then(Value::as_array)
        .map(|s| s.iter().map(|stage| field(stage, "/percent")).collect())
        .unwrap_or_default();
    let arm = |name: &str| {
        let a = field(status, &format!("/arms/{name}"));
        json!({
            "requests": field(&a, "/requests"),
            "errors": field(&a, "/errors"),
            "errorRatio": field(&a, "/errorRatio"),
            "latencyQuantile": field(&a, "/latencyQuantile"),
            "latencyMs": field(&a, "/latencyMs"),
        })
    };
    let arms = if status.get("arms").is_some_and(Value::is_object) {
        json!({ "control": arm("control"), "treatment": arm("treatment") })
    } else {
        Value::Null
    };
    let last = status
        .get("decisions")
        .and_then(Value::as_array)
        .and_then(|d| d.last())
        .and_then(|d| serde_json::from_value::<Decision>(d.clone()).ok());
    json!({
        "flag": field(status, "/flag"),
        "state": field(status, "/state"),
        "frozenBecause": field(status, "/frozenBecause"),
        "stage": field(status, "/stage"),
        "percent": field(status, "/percent"),
        "stages": stages,
        "arms": arms,
        "lastDecision": last.map(|d| json!({
            "action": d.action.as_str(),
            "stage": d.stage,
            "percent": d.percent,
            "actor": d.actor,
            "atMs": d.at_ms,
            "reason": reason(&d),
        })),
    })
}

/// One line saying why a decision was taken.
fn reason(d: &Decision) -> String {
    let guards = |regressions_only: bool| {
        d.evidence
            .iter()
            .filter(|g| !regressions_only || g.evidence.verdict == Verdict::Regression)
            .map(|g| {
                format!(
                    "{} {:.2} % on the treatment vs {:.2} % on the control ({} / {} requests, ln Λ {:.2} of {:.2})",
                    g.guard,
                    g.evidence.treatment_rate * 100.0,
                    g.evidence.control_rate * 100.0,
                    g.treatment.trials,
                    g.control.trials,
                    g.evidence.statistic,
                    g.evidence.threshold,
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    match d.action {
        Action::Start => format!("started by {}", d.actor),
        Action::Advance => format!("the guards held: {}", guards(false)),
        Action::Complete => format!("every stage passed: {}", guards(false)),
        Action::Rollback => format!("a regression: {}", guards(true)),
        Action::Pause => format!("paused by {}", d.actor),
        Action::Resume => format!("resumed by {}", d.actor),
        Action::Abort => format!("aborted by {}", d.actor),
        _ => format!("{} by {}", d.action.as_str(), d.actor),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_keys_are_kept_and_at_most_sixteen() {
        let board = RolloutBoard::new(None);
        board.remember("<script>");
        board.remember("");
        board.remember(&"a".repeat(200));
        for i in 0..40 {
            board.remember(&format!("flag-{i}"));
        }
        let recent = board.recent.lock().unwrap().clone();
        assert_eq!(recent.len(), MAX_SHOWN);
        assert_eq!(recent.first().map(String::as_str), Some("flag-39"));
        assert!(recent.iter().all(|f| is_flag_key(f)));
    }

    #[test]
    fn the_view_keeps_the_board_fields_only() {
        let status = json!({
            "flag": "new-checkout", "state": "frozen", "frozenBecause": "Redis is down",
            "stage": 1, "percent": 25.0, "stages": 3,
            "arms": {
                "control": {"requests": 10, "errors": 1, "errorRatio": 0.1, "counter": 0,
                            "latencyQuantile": 0.95, "latencyMs": 2.5},
                "treatment": {"requests": 5, "errors": 0, "errorRatio": 0.0, "counter": 0,
                              "latencyQuantile": 0.95, "latencyMs": null}
            },
            "decisions": [
                {"atMs": 1, "action": "start", "stage": 0, "percent": 5.0, "actor": "admin"},
                {"atMs": 2, "action": "advance", "stage": 0, "percent": 25.0, "actor": "controller",
                 "evidence": [{"guard": "errorRatio",
                    "control": {"trials": 600, "events": 6}, "treatment": {"trials": 300, "events": 3},
                    "evidence": {"verdict": "holds", "statistic": -1.5, "threshold": 2.99,
                                 "controlRate": 0.01, "treatmentRate": 0.01}}]}
            ],
            "plan": {"stages": [{"percent": 5.0}, {"percent": 25.0}, {"percent": 100.0}]}
        });
        let v = view_of(&status);
        assert_eq!(v["state"], "frozen");
        assert_eq!(v["frozenBecause"], "Redis is down");
        assert_eq!(v["stages"], json!([5.0, 25.0, 100.0]));
        assert_eq!(v["arms"]["treatment"]["requests"], 5);
        assert!(v["arms"]["control"].get("counter").is_none());
        assert!(v.get("plan").is_none());
        let last = &v["lastDecision"];
        assert_eq!(last["action"], "advance");
        assert_eq!(
            last["reason"],
            "the guards held: errorRatio 1.00 % on the treatment vs 1.00 % on the control (300 / 600 requests, ln Λ -1.50 of 2.99)"
        );
    }
}
