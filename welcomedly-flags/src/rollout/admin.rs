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
use crate::admin::{AdminAuth, ApiError, authorize, check_key};

/// The largest plan accepted.
const MAX_BODY: usize = 64 * 1024;

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

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::Invalid(errors) => Self::invalid(
                format!(
                    "the rollout plan has {} problem(s); nothing was started: fix them and retry",
                    errors.problems().len()
                ),
                errors,
            ),
            RolloutError::NotFound => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            RolloutError::Conflict(_) => Self::new(StatusCode::CONFLICT, e.to_string()),
            RolloutError::Unavailable(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        }
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
        authorize(r.auth.as_ref(), &headers)?;
        check_key(&flag)?;
        let status = r.agent.status(&flag).await?;
        Ok::<_, ApiError>(json(StatusCode::OK, &status))
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
        let actor = authorize(r.auth.as_ref(), &headers)?;
        check_key(&flag)?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the plan must be UTF-8 JSON"))?;
        let plan = Plan::from_json(text).map_err(|e| ApiError::from(RolloutError::Invalid(e)))?;
        r.agent.start_rollout(&flag, plan, &actor).await?;
        let status = r.agent.status(&flag).await?;
        Ok::<_, ApiError>(json(StatusCode::CREATED, &status))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn operate(
    State(r): St,
    headers: HeaderMap,
    Path((flag, action)): Path<(String, String)>,
) -> Response {
    let run = async {
        let actor = authorize(r.auth.as_ref(), &headers)?;
        check_key(&flag)?;
        let action = match action.as_str() {
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "abort" => Action::Abort,
            _ => {
                return Err(ApiError::new(
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
