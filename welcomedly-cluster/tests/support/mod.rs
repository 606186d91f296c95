//! Shared by the session tests (`tests/sessions.rs`, `tests/session_cache.rs`,
//! `tests/failover_components.rs`), not a test target itself: the handlers an instance serves,
//! the instance itself, and one request sent to it.
// Each test crate that includes this uses only some of it; unwrap and panics are allowed by
// the including crate's own `#![allow]`.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use http_body_util::BodyExt;
use tower::ServiceExt;
use welcomedly_cluster::session::{RedisSessionStore, Session, SessionError, SessionLayer};
use welcomedly_redis::{Backoff, LinkConfig};

/// A handler's query parameters.
pub type Params = Query<HashMap<String, String>>;

/// `POST /login?user=…`
pub async fn login(session: Session, Query(q): Params) -> Result<&'static str, SessionError> {
    session.log_in(q["user"].as_str()).await?;
    Ok("ok")
}

/// `POST /logout`
pub async fn logout(session: Session) -> Result<&'static str, SessionError> {
    session.log_out().await?;
    Ok("ok")
}

/// `POST /logout-everywhere`: how many sessions it ended.
pub async fn logout_everywhere(session: Session) -> Result<String, SessionError> {
    Ok(session.log_out_everywhere().await?.to_string())
}

/// `GET /me`: the user, or 401.
pub async fn me(session: Session) -> Result<axum::response::Response, SessionError> {
    Ok(match session.user_id().await? {
        Some(user) => user.0.to_string().into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    })
}

/// `PUT /set?k=…&v=…`
pub async fn set(session: Session, Query(q): Params) -> Result<&'static str, SessionError> {
    session.insert(&q["k"], &q["v"]).await?;
    Ok("ok")
}

/// `GET /get?k=…`: the value, or `-`.
pub async fn read(session: Session, Query(q): Params) -> Result<String, SessionError> {
    Ok(session
        .get::<String>(&q["k"])
        .await?
        .unwrap_or_else(|| "-".to_owned()))
}

/// The routes of the handlers above (login, logout, logout everywhere, me, set, get).
pub fn session_routes() -> Router {
    Router::new()
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .route("/me", get(me))
        .route("/set", put(set))
        .route("/get", get(read))
}

/// One instance of the service: its own store, its own connection to the shared Redis.
pub struct Instance {
    pub app: Router,
    pub store: RedisSessionStore,
    pub layer: SessionLayer,
}

/// A noisy shared box (and failovers): a generous budget, fast reconnects.
pub fn tuned(mut link_config: LinkConfig) -> LinkConfig {
    link_config.budget = Duration::from_millis(300);
    link_config.backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    link_config.min_outage = Duration::from_millis(20);
    link_config
}

/// What an instance answered, and how long it took.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    pub took: Duration,
}

impl Answer {
    /// `name=value` of the Set-Cookie, if any.
    pub fn cookie(&self) -> Option<String> {
        self.headers
            .get(header::SET_COOKIE)
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
    }
}

/// Sends `method uri` to `i`, with `cookie` if any.
pub async fn send(i: &Instance, method: &str, uri: &str, cookie: Option<&str>) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    let start = Instant::now();
    let res = i
        .app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let took = start.elapsed();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        took,
    }
}

/// Logs `user` in on `i`: the session cookie (`name=value`).
pub async fn log_in(i: &Instance, user: &str) -> String {
    let a = send(i, "POST", &format!("/login?user={user}"), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    a.cookie().unwrap()
}
