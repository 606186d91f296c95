//! The rollout admin routes (features `axum` + `redis`), behind the same [`AdminAuth`] hook as
//! the flags admin API.
//!
//! | route | what |
//! |---|---|
//! | `POST {base}/{flag}` | start a guarded rollout with a [`Plan`] (JSON; `{}` or an empty body takes the defaults) → `201` and the status |
//! | `GET {base}/{flag}` | the status: `{"state", "stage", "percent", "arms", "decisions", "plan", …}` |
//! | `POST {base}/{flag}/pause`, `/resume`, `/abort` | an operator's action → the status |
//!
//! `state` is `running`, `paused`, `completed`, `rolled_back`, `aborted`, or `frozen` while
//! this instance cannot read Redis (`frozenBecause` says why; nothing is decided meanwhile).
//! Errors are `application/problem+json`: `422` with every plan problem listed, `404` for no
//! rollout, `409` when the action does not apply now, `503` when Redis or the flag store is
//! down.
//!
//! ```no_run
//! use std::sync::Arc;
//! use welcomedly_flags::admin::BearerToken;
//! use welcomedly_flags::rollout::{admin, agent::RolloutAgent};
//!
//! fn routes(agent: Arc<RolloutAgent>) -> axum::Router {
//!     admin::router(agent, BearerToken::new("s3cret", "admin"), "/admin/rollouts")
//! }
//! ```

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::agent::{RolloutAgent, RolloutError};
use super::controller::Action;
use super::plan::Plan;
use crate::ValidationErrors;
use crate::admin::AdminAuth;

/// The largest plan accepted.
const MAX_BODY: usize = 64 * 1024;
/// The longest flag key accepted.
const MAX_KEY_LEN: usize = 128;

struct Rollouts {
    agent: Arc<RolloutAgent>,
    auth: Box<dyn AdminAuth>,
}

type St = State<Arc<Rollouts>>;

/// The rollout routes under `base` (for instance `"/admin/rollouts"`), acting through
/// `agent` and authorising every request with `auth`.
pub fn router<S: Clone + Send + Sync + 'static>(
    agent: Arc<RolloutAgent>,
    auth: impl AdminAuth,
    base: &str,
) -> Router<S> {
    let base = base.trim_end_matches('/');
    let state = Arc::new(Rollouts {
        agent,
        auth: Box::new(auth),
    });
    Router::new()
        .route(&format!("{base}/{{flag}}"), get(status).post(start))
        .route(&format!("{base}/{{flag}}/{{action}}"), post(operate))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

struct Problem {
    status: StatusCode,
    detail: String,
    problems: Option<ValidationErrors>,
}

impl Problem {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            problems: None,
        }
    }
}

impl From<RolloutError> for Problem {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::Invalid(errors) => Self {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                detail: format!(
                    "the rollout plan has {} problem(s); nothing was started: fix them and retry",
                    errors.problems().len()
                ),
                problems: Some(errors),
            },
            RolloutError::NotFound => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            RolloutError::Conflict(_) => Self::new(StatusCode::CONFLICT, e.to_string()),
            RolloutError::Unavailable(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let (Some(problems), Some(map)) = (self.problems, body.as_object_mut()) {
            map.insert(
                "problems".into(),
                serde_json::to_value(problems.problems()).unwrap_or_default(),
            );
        }
        let mut res = (self.status, body.to_string()).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

fn authorize(r: &Rollouts, headers: &HeaderMap) -> Result<String, Problem> {
    let mut parts = http::Request::new(()).into_parts().0;
    parts.headers = headers.clone();
    r.auth.authorize(&parts).map_err(|d| Problem {
        status: d.status,
        detail: d.detail,
        problems: None,
    })
}

fn check_key(key: &str) -> Result<(), Problem> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "a flag key is 1-128 letters, digits, '-', '_' or '.', starting with a letter or digit",
        ))
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut res = (status, value.to_string()).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

async fn status(State(r): St, headers: HeaderMap, Path(flag): Path<String>) -> Response {
    let run = async {
        authorize(&r, &headers)?;
        check_key(&flag)?;
        let status = r.agent.status(&flag).await?;
        Ok::<_, Problem>(json(StatusCode::OK, &status))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn start(
    State(r): St,
    headers: HeaderMap,
    Path(flag): Path<String>,
    body: Bytes,
) -> Response {
    let run = async {
        let actor = authorize(&r, &headers)?;
        check_key(&flag)?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "the plan must be UTF-8 JSON"))?;
        let plan = Plan::from_json(text).map_err(|e| Problem::from(RolloutError::Invalid(e)))?;
        r.agent.start_rollout(&flag, plan, &actor).await?;
        let status = r.agent.status(&flag).await?;
        Ok::<_, Problem>(json(StatusCode::CREATED, &status))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn operate(
    State(r): St,
    headers: HeaderMap,
    Path((flag, action)): Path<(String, String)>,
) -> Response {
    let run = async {
        let actor = authorize(&r, &headers)?;
        check_key(&flag)?;
        let action = match action.as_str() {
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "abort" => Action::Abort,
            _ => {
                return Err(Problem::new(
                    StatusCode::NOT_FOUND,
                    "a rollout action is pause, resume or abort",
                ));
            }
        };
        r.agent.operate(&flag, action, &actor).await?;
        let status = r.agent.status(&flag).await?;
        Ok(json(StatusCode::OK, &status))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}
