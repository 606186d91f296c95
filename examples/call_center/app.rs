//! Wiring: configuration, telemetry, health, rate limits, routes, drain.

use std::error::Error;

use axum::Router;
use axum::extract::Json;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use welcomedly_cluster::rate_limit::RedisRateLimitConfig;
use welcomedly_core::CoreConfig;
use welcomedly_core::client_ip::ClientIpLayer;
use welcomedly_core::drain::{self, DrainConfig};
use welcomedly_core::health::{self, Affects, HealthRegistry};
use welcomedly_core::rate_limit::{
    KeySource, LocalBackend, Policy, Quota, RateLimitBackend, RateLimitLayer,
};
use welcomedly_core::telemetry::Telemetry;

const DEFAULT_DEMO_PASSWORD: &str = "welcomedly-demo";

pub(crate) async fn run() -> Result<(), Box<dyn Error>> {
    let config = CoreConfig::from_env()?;
    let telemetry = Telemetry::from_config(&config).init()?;
    let registry = HealthRegistry::from_config(&config);
    let password = demo_password();

    let api = match std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => {
            let mut redis = RedisRateLimitConfig::new(url);
            redis.instances = instances()?;
            let backend = redis.build().await?;
            registry.register("rate_limit", backend.clone(), Affects::Nothing);
            api_routes(
                rate_limits().backend(backend).build()?,
                &telemetry,
                password,
            )
        }
        None => api_routes(
            rate_limits().backend(LocalBackend::new()).build()?,
            &telemetry,
            password,
        ),
    };

    let app = Router::new()
        .merge(api)
        .merge(health::router(registry.clone()))
        .merge(telemetry.metrics().router())
        // Outermost last: telemetry sees every request, including 429s and 404s.
        .layer(ClientIpLayer::new(config.trusted_proxies.clone()))
        .layer(telemetry.http_layer());

    // The socket systemd passed (LISTEN_FDS), so a restart keeps its queue; else 0.0.0.0:PORT.
    let listener = drain::ListenConfig::from(&config).listen().map_err(|e| {
        format!(
            "cannot listen on port {} (set PORT to a free port): {e}",
            config.port
        )
    })?;
    tracing::info!(
        port = config.port,
        instance_id = %config.instance_id,
        "call center listening"
    );
    drain::serve(
        listener,
        app,
        registry,
        DrainConfig::from(&config),
        drain::shutdown_signal(),
    )
    .await?;
    tracing::info!("drained, bye");
    Ok(())
}

/// The seeds' limits: login 5/min (failed logins only), uploads 3/min, the API 200/min and
/// everything else 100/min, per client IP.
fn rate_limits() -> welcomedly_core::rate_limit::RateLimitBuilder<LocalBackend> {
    RateLimitLayer::builder()
        .policy(
            Policy::new("login", Quota::per_minute(5))
                .method(http::Method::POST)
                .path("/auth/login")
                .key(KeySource::ClientIp)
                .charge_only_statuses([StatusCode::UNAUTHORIZED]),
        )
        .policy(Policy::new("upload", Quota::per_minute(3)).path_prefix("/api/upload"))
        .policy(Policy::new("api", Quota::per_minute(200)).path_prefix("/api"))
        .policy(Policy::new("general", Quota::per_minute(100)).otherwise())
}

/// The application's own routes, behind the rate limits (health and metrics are not limited:
/// a load balancer polls them).
fn api_routes<B: RateLimitBackend>(
    limits: RateLimitLayer<B>,
    telemetry: &welcomedly_core::telemetry::TelemetryGuard,
    password: String,
) -> Router {
    limits.register_metrics(telemetry.metrics().meter());
    Router::new()
        .route(
            "/api/ping",
            get(|| async { Json(serde_json::json!({ "pong": true })) }),
        )
        .route(
            "/auth/login",
            post(move |Json(body): Json<Login>| login(body, password.clone())),
        )
        .layer(limits)
}

#[derive(Deserialize)]
struct Login {
    username: String,
    password: String,
}

/// A stub until sessions land: checks the demo credentials and answers 200 or 401.
async fn login(body: Login, password: String) -> impl IntoResponse {
    let known = matches!(body.username.as_str(), "supervisor" | "agent");
    if known && constant_time_eq(body.password.as_bytes(), password.as_bytes()) {
        tracing::info!(user = %body.username, "login");
        (
            StatusCode::OK,
            Json(
                serde_json::json!({ "user": body.username, "session": "sessions are coming with welcomedly-cluster" }),
            ),
        )
    } else {
        tracing::info!(user = %body.username, "login refused");
        (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "error": "unknown user or wrong password" })),
        )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn demo_password() -> String {
    match std::env::var("WELCOMEDLY_DEMO_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
    {
        Some(p) => p,
        None => {
            tracing::warn!(
                "WELCOMEDLY_DEMO_PASSWORD is not set: the demo users log in with the default password; set it before exposing this service"
            );
            DEFAULT_DEMO_PASSWORD.to_owned()
        }
    }
}

fn instances() -> Result<u32, String> {
    match std::env::var("WELCOMEDLY_INSTANCES").ok().filter(|v| !v.is_empty()) {
        None => Ok(1),
        Some(v) => v.trim().parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
            format!("WELCOMEDLY_INSTANCES={v:?} is not a valid instance count: expected an integer >= 1")
        }),
    }
}
