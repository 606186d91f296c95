//! [`router`]: the health endpoints as an axum [`Router`](axum::Router).

use super::service::{HEALTH_PATH, LIVE_PATH, READY_PATH};
use super::{HealthRegistry, HealthService};

/// An axum router serving `/health`, `/health/live` and `/health/ready` from `registry` (see
/// [`HealthService`] for what each answers). Merge it into the application's router; it works
/// with any router state.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use welcomedly_core::health::{self, HealthRegistry};
/// use welcomedly_core::InstanceId;
///
/// let registry = HealthRegistry::new(InstanceId::generate(), "1.0.0", Duration::from_secs(2));
/// let app: Router = Router::new()
///     .route("/api/ping", get(|| async { "pong" }))
///     .merge(health::router(registry));
/// # let _ = app;
/// ```
pub fn router<S>(registry: HealthRegistry) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let service = HealthService::new(registry);
    axum::Router::new()
        .route_service(HEALTH_PATH, service.clone())
        .route_service(LIVE_PATH, service.clone())
        .route_service(READY_PATH, service)
}
