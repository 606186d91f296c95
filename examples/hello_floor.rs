//! The floor for `benches/whole_stack`: bare axum answering `GET /api/ping` with
//! `{"pong":true}` on `PORT` (3000), no middleware at all.

use axum::Router;
use axum::routing::get;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(3000);
    let app = Router::new().route(
        "/api/ping",
        get(|| async { axum::Json(serde_json::json!({ "pong": true })) }),
    );
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    axum::serve(listener, app).await
}
