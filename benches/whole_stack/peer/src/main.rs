//! The whole-stack bench's peer: what a typical axum service with shared sessions in Redis
//! does per request. `PORT=3001 REDIS_URL=redis://127.0.0.1:6379/ whole-stack-peer`.
//!
//! - `GET /api/ping`: `{"pong":true}` (readiness);
//! - `POST /auth/login`: starts a session holding `user = "agent"` (one write), sets the
//!   cookie;
//! - `GET /me`: reads `user` from the session (one Redis `GET` per request, no write), 401
//!   without a session.
//!
//! No rate limit, no telemetry, no access log: the peer's figure is what a session read costs
//! in a plain stack.

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tower_sessions::{Session, SessionManagerLayer};
use tower_sessions_redis_store::RedisStore;
use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};

async fn me(session: Session) -> impl IntoResponse {
    match session.get::<String>("user").await {
        Ok(Some(user)) => (StatusCode::OK, Json(serde_json::json!({ "user": user }))),
        Ok(None) => (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "error": "no session" })),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": "session store" })),
        ),
    }
}

async fn login(session: Session) -> impl IntoResponse {
    match session.insert("user", "agent").await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT").unwrap_or_else(|_| "3001".into()).parse()?;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    // fred's pool: the store's documented setup (one pool shared by every request).
    let pool = Pool::new(Config::from_url(&url)?, None, None, None, 6)?;
    pool.init().await?;
    let sessions = SessionManagerLayer::new(RedisStore::new(pool)).with_secure(false);
    let app = Router::new()
        .route("/me", get(me))
        .route("/api/me", get(me))
        .route("/auth/login", post(login))
        .route("/api/ping", get(|| async { Json(serde_json::json!({ "pong": true })) }))
        .layer(sessions);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
