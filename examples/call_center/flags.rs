//! Feature flags in the call center: the store (Redis when `REDIS_URL` is set, else memory),
//! seeded demo flags, the sync that keeps this instance's snapshot current, and the routes that
//! use them.

use std::error::Error;
use std::sync::Arc;

use axum::Router;
use axum::extract::Json;
use axum::http::StatusCode;
use axum::routing::{any, get};
use welcomedly_core::health::{Affects, HealthRegistry};
use welcomedly_flags::admin::{self, BearerToken};
use welcomedly_flags::layer::{FlagsLayer, RequestFlags};
use welcomedly_flags::ofrep::{self, OfrepConfig, OfrepKey, OpenAccess};
use welcomedly_flags::rollout::{
    self,
    agent::{AgentConfig, RolloutAgent},
    attribution::Attribution,
    store::RolloutStore,
};
use welcomedly_flags::store::{
    Change, FlagStore, FlagSyncHandle, MemoryStore, RedisStore, RedisStoreConfig, SyncConfig,
    sync_flags,
};
use welcomedly_flags::{Flags, Snapshot};

use crate::problem::Problem;
use welcomedly_redis::Link;

/// The flags a new user sees working: campaign statistics rolled out to half of the users (and
/// always to `supervisor`), behind a kill switch (`enabled`); a board theme; the new checkout
/// path (off until a guarded rollout advances it).
const SEED: &str = r#"{
  "flags": {
    "campaign-stats": {
      "variants": { "on": true, "off": false },
      "targets": [{ "variant": "on", "values": ["supervisor"] }],
      "fallthrough": { "rollout": { "variants": [
        { "variant": "on", "weight": 50000 }, { "variant": "off", "weight": 50000 }
      ] } }
    },
    "board-theme": {
      "variants": { "light": "light", "dark": "dark" },
      "fallthrough": { "variant": "light" }
    },
    "new-checkout": {
      "description": "The new checkout path of GET /api/checkout: roll it out with POST /admin/rollouts/new-checkout",
      "variants": { "on": true, "off": false },
      "fallthrough": { "variant": "off" }
    }
  }
}"#;

/// The flag that gates `GET /api/stats` (campaign statistics, in `campaigns`).
pub(crate) const STATS_FLAG: &str = "campaign-stats";

/// This instance's flags and what keeps them current.
pub(crate) struct FeatureFlags {
    pub(crate) flags: Flags,
    pub(crate) store: Arc<dyn FlagStore>,
    /// Which arm of a guarded flag served each request (given to every flags layer).
    pub(crate) attribution: Attribution,
    /// Guarded rollouts: with Redis only (the fleet's counts and the one acting instance
    /// live there).
    pub(crate) rollouts: Option<Arc<RolloutAgent>>,
    // Dropping it stops the sync: held for the life of the process.
    _sync: FlagSyncHandle,
}

/// Opens the store (on the instance's Redis link, whose health check names Redis), seeds it
/// when it is empty, and starts following it.
pub(crate) async fn start(
    link: Option<&Link>,
    registry: &HealthRegistry,
    meter: &opentelemetry::metrics::Meter,
    instance_id: &str,
) -> Result<FeatureFlags, Box<dyn Error>> {
    let store: Arc<dyn FlagStore> = match link {
        Some(link) => Arc::new(RedisStore::new(link, RedisStoreConfig::default()).await?),
        None => Arc::new(MemoryStore::new()),
    };
    seed(store.as_ref()).await;
    let flags = Flags::new(Snapshot::empty());
    let sync = sync_flags(store.clone(), &flags, SyncConfig::default()).await?;
    // Stale flags (Redis unreachable) degrade the instance but never take it out of rotation:
    // the last good snapshot keeps serving.
    registry.register("flags", sync.health(), Affects::Nothing);
    sync.health().register_metrics(meter);
    let attribution = Attribution::new();
    let rollouts = link.map(|link| {
        // The lease holder the rollout status names: this instance (`x-instance-id`).
        let mut config = AgentConfig::default();
        config.instance = instance_id.to_owned();
        let agent = RolloutAgent::start(
            RolloutStore::new(link.clone()),
            store.clone(),
            attribution.clone(),
            config,
        );
        agent.register_metrics(meter);
        Arc::new(agent)
    });
    Ok(FeatureFlags {
        flags,
        store,
        attribution,
        rollouts,
        _sync: sync,
    })
}

/// Writes the demo flags into an empty store. Instances starting together race for it through
/// the store's compare-and-set: one wins, the others see a conflict and keep its version.
async fn seed(store: &dyn FlagStore) {
    match store.load().await {
        Ok(doc) if doc.version > 0 => {}
        Ok(_) => {
            let change = Change::new("call_center", "seeded the demo flags");
            match store.write(0, SEED.to_owned(), change).await {
                Ok(version) => tracing::info!(version, "seeded the demo feature flags"),
                Err(e) if e.is_conflict() => {}
                Err(e) => tracing::warn!(error = %e, "could not seed the demo feature flags"),
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read the flag store to seed it"),
    }
}

/// `GET /api/flags` (every flag for the caller), the OFREP endpoint (`POST
/// /ofrep/v1/evaluate/flags[/{key}]`: open, or behind `ofrep_token` as a bearer token or
/// `X-API-Key` when `WELCOMEDLY_OFREP_TOKEN` is set) and, when `admin_token` is set, the admin
/// API under `/admin/flags`. [`layer`] goes around these and every other feature route.
///
/// OFREP only evaluates (it changes nothing) and is meant for the app's own clients (the
/// browser, mobile apps, other services): the context is the caller's to choose, so it shows
/// any context's values, which is what a web OFREP provider asks for. It is open by default
/// and never shares the admin token: a token that can change flags must not sit in a browser.
pub(crate) fn routes(
    features: &FeatureFlags,
    admin_token: Option<String>,
    ofrep_token: Option<String>,
) -> Router {
    let mut router = Router::new().route(
        "/api/flags",
        get(|flags: RequestFlags| async move {
            Json(serde_json::json!({
                "user": flags.key(),
                "version": flags.snapshot().version(),
                "flags": flags.evaluate_all(),
            }))
        }),
    );
    router = match ofrep_token {
        Some(token) => router.merge(ofrep::router(
            features.flags.clone(),
            OfrepKey::new(token),
            OfrepConfig::default(),
        )),
        None => router.merge(ofrep::router(
            features.flags.clone(),
            OpenAccess,
            OfrepConfig::default(),
        )),
    };
    if let Some(token) = admin_token {
        router = router.merge(admin::router(
            features.store.clone(),
            BearerToken::new(token.clone(), "admin"),
            "/admin/flags",
        ));
        router = match &features.rollouts {
            Some(agent) => router.merge(rollout::admin::router(
                agent.clone(),
                BearerToken::new(token, "admin"),
                "/admin/rollouts",
            )),
            None => router.route(
                "/admin/rollouts/{*rest}",
                any(|| async {
                    Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "guarded rollouts need Redis (the fleet's counts and the acting instance live there): set REDIS_URL",
                    )
                }),
            ),
        };
    }
    router
}

/// The flags layer of `GET /api/checkout` (see `checkout`): counted for guarded rollouts.
pub(crate) fn checkout_layer(features: &FeatureFlags) -> FlagsLayer {
    FlagsLayer::new(features.flags.clone()).attribution(features.attribution.clone())
}

/// One snapshot and targeting context per request, for every route inside it (a flag gate such
/// as the one on `GET /api/stats` reads them).
///
/// The caller is the logged-in user (the session layer, loading eagerly, puts its `UserId` in
/// the request); an anonymous caller is anonymous. Only with `dev_identity_header`
/// (`WELCOMEDLY_DEV_IDENTITY_HEADER=true`, for scripts in development) does the `x-user-id`
/// header name an anonymous caller: any client could name anyone, so it is off by default.
pub(crate) fn layer(features: &FeatureFlags, dev_identity_header: bool) -> FlagsLayer {
    let layer = FlagsLayer::new(features.flags.clone()).attribution(features.attribution.clone());
    if dev_identity_header {
        layer.key_header(http::HeaderName::from_static("x-user-id"))
    } else {
        layer
    }
}
