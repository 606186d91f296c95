//! Wiring: configuration, telemetry, health, rate limits, routes, drain.

use std::error::Error;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Json};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use welcomedly_cluster::bus::{BusConfig, Topic};
use welcomedly_cluster::membership::{Membership, MembershipConfig};
use welcomedly_cluster::rate_limit::{RedisBackend, RedisRateLimitConfig};
use welcomedly_cluster::session::{
    RedisSessionConfig, RedisSessionStore, SessionConfig, SessionLayer, SessionStore,
};
use welcomedly_core::CoreConfig;
use welcomedly_core::client_ip::ClientIpLayer;
use welcomedly_core::config::{EnvReader, MIN_SECRET_LEN};
use welcomedly_core::cross_origin::{CrossOriginLayer, TrustedOrigin};
use welcomedly_core::drain::{self, DrainConfig};
use welcomedly_core::health::{self, Affects, HealthRegistry};
use welcomedly_core::rate_limit::backend::RateLimitBackend;
use welcomedly_core::rate_limit::{KeySource, LocalBackend, Policy, Quota, RateLimitLayer};
use welcomedly_core::telemetry::Telemetry;

use std::sync::Arc;

use welcomedly_db::RouterConfig;
use welcomedly_redis::{Link, LinkConfig};

use crate::agents;
use crate::board;
use crate::campaigns;
use crate::checkout;
use crate::flags;
use crate::login;
use crate::problem::{self, Problem};
use crate::rollouts;

const DEFAULT_DEMO_PASSWORD: &str = "welcomedly-demo";
/// The largest upload accepted (the seeds capped uploads too).
const MAX_UPLOAD_BYTES: usize = 1024 * 1024;

pub(crate) async fn run() -> Result<(), Box<dyn Error>> {
    // One reader for every component's variables: a bad start lists all of them at once.
    let mut env = EnvReader::from_env();
    let core = CoreConfig::read(&mut env);
    let redis = RedisRateLimitConfig::read(&mut env);
    // The one Redis link (REDIS_URL) that every Redis-backed component runs on.
    let link_config = LinkConfig::read(&mut env);
    let session_store_config = RedisSessionConfig::read(&mut env);
    let membership = MembershipConfig::read(&mut env);
    // Secrets: at least MIN_SECRET_LEN bytes; a refused one is reported by length, never shown.
    let admin_token = env.secret("WELCOMEDLY_ADMIN_TOKEN");
    // OFREP is read-only evaluation for the app's own clients: open unless a key is set.
    let ofrep_token = env.secret("WELCOMEDLY_OFREP_TOKEN");
    let session_config = SessionConfig::read(&mut env);
    let database = RouterConfig::read(&mut env);
    let consistency_secret = env.secret("WELCOMEDLY_CONSISTENCY_SECRET");
    let web = WebConfig::read(&mut env);
    // WELCOMEDLY_BUS_PUBSUB: sharded (default) or classic pub/sub for ephemeral topics on a
    // Redis Cluster.
    let bus_config = BusConfig::read(&mut env);
    // Event streams: a comment line and a check of the stream's session per heartbeat.
    let sse_heartbeat = env.read(
        "WELCOMEDLY_SSE_HEARTBEAT_MS",
        std::time::Duration::from_secs(15),
        |v| {
            welcomedly_core::config::parse_millis(v)
                .filter(|d| !d.is_zero())
                .ok_or("is not a usable heartbeat: expected a whole number of milliseconds greater than 0, such as 15000")
        },
    );
    let fault = env.read(
        "WELCOMEDLY_DEMO_FAULT",
        checkout::Fault::default(),
        checkout::Fault::parse,
    );
    let (
        (config, link_config, session_store_config),
        redis,
        (admin_token, ofrep_token),
        membership,
        session_config,
        database,
        consistency_secret,
        (web, bus_config, fault),
        sse_heartbeat,
    ) = env.finish((
        (core, link_config, session_store_config),
        redis,
        (admin_token, ofrep_token),
        membership,
        session_config,
        database,
        consistency_secret,
        (web, bus_config, fault),
        sse_heartbeat,
    ))?;
    // Read-your-writes cookies name WAL positions: signed with a public secret, anyone could
    // forge a far-future one and make each of their reads wait for replicas. A random secret
    // per process would break the guarantee across instances (a cookie from one is refused by
    // the others), silently. So refuse to start instead.
    if database.is_some() && consistency_secret.is_none() {
        return Err(format!(
            "WELCOMEDLY_CONSISTENCY_SECRET is not set while DATABASE_URL is: set it to at least {MIN_SECRET_LEN} random bytes, the same on every instance (for instance the output of `openssl rand -hex 32`), so read-your-writes cookies cannot be forged"
        )
        .into());
    }
    // Load the session before the routes run, so the feature flags (and any limit keyed by
    // user) see the logged-in user rather than a header.
    let mut session_config = session_config;
    session_config.load_eagerly = true;
    let telemetry = Telemetry::from_config(&config).init()?;
    let registry = HealthRegistry::from_config(&config);
    let drain = drain::Drain::new(registry.clone(), DrainConfig::from(&config));
    drain.register_metrics(telemetry.metrics().meter());
    // The one Redis link every Redis-backed component runs on (REDIS_URL), built first so each
    // component below is built from it. `/health` names Redis once, here.
    let link = match link_config {
        Some(c) => {
            let link = Link::connect(c).await?;
            // Degraded, not unready: anonymous requests are still served while Redis is down.
            registry.register("redis", link.clone(), Affects::Nothing);
            link.register_metrics(telemetry.metrics().meter());
            Some(link)
        }
        None => None,
    };
    // Password hashing on a small fixed pool of threads (see login.rs), started before the
    // demo users are hashed on it.
    let logins = login::Logins::start(demo_password()).await?;

    let features = flags::start(
        link.as_ref(),
        &registry,
        telemetry.metrics().meter(),
        config.instance_id.as_str(),
    )
    .await?;
    let flag_routes = flags::routes(&features, admin_token, ofrep_token);
    let flags_layer = flags::layer(&features, web.dev_identity_header);
    if web.dev_identity_header {
        tracing::warn!(
            "WELCOMEDLY_DEV_IDENTITY_HEADER=true: x-user-id names anonymous callers for feature flags; any client can pick any flag variant, so never use it outside development"
        );
    }
    // Membership: a heartbeat in Redis; the live count feeds the rate limiter's fallback share
    // (no WELCOMEDLY_INSTANCES to keep in sync by hand), and the instance leaves at drain.
    let membership = match &link {
        Some(link) => {
            let m = Membership::new(link, membership, config.instance_id.clone()).await?;
            registry.register("membership", m.clone(), Affects::Nothing);
            Some(m)
        }
        None => None,
    };
    // Sessions and the event bus: in Redis (any instance serves any user, events reach every
    // instance), or in this process on the embedded default.
    let (session_store, bus) = match &link {
        Some(link) => {
            let store = RedisSessionStore::new(link, session_store_config).await?;
            let mut bus = bus_config;
            bus.heartbeat = sse_heartbeat;
            // No health check of its own: the link's ("redis") reports the outage.
            let bus = bus.build(link).await?;
            (SessionStore::from(store), bus)
        }
        None => {
            let mut bus = BusConfig::new();
            bus.heartbeat = sse_heartbeat;
            (SessionStore::memory(), bus.build_local()?)
        }
    };
    bus.register_metrics(telemetry.metrics().meter());
    // Guarded-rollout decisions this instance takes go on the bus (topic `rollouts`), so a
    // board or any subscriber on any instance sees a rollout advance or roll back.
    if let Some(agent) = &features.rollouts {
        let mut decisions = agent.decisions();
        let topic = Topic::ephemeral("rollouts")?;
        let bus = bus.clone();
        tokio::spawn(async move {
            loop {
                match decisions.recv().await {
                    Ok(event) => {
                        if let Err(e) = bus.publish(&topic, &event).await {
                            tracing::warn!(error = %e, "a rollout decision could not be published on the bus");
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
    // The board's view of the rollouts: followed from the bus, refreshed while one runs.
    let rollout_board = rollouts::RolloutBoard::new(features.rollouts.clone());
    tokio::spawn(rollout_board.clone().watch(bus.clone()));
    let events = agents::Events {
        bus,
        topic: Topic::durable("agents.status")?,
    };
    let agents = agents::Agents::new(
        events,
        membership.clone(),
        config.instance_id.to_string(),
        drain.signal(),
        features.flags.clone(),
        rollout_board.clone(),
    )?;
    tokio::spawn(agents.clone().follow());
    // Campaigns through the DB router (PostgreSQL primary + replicas from DATABASE_URL and
    // DATABASE_REPLICA_URLS, or an in-memory SQLite).
    let db = campaigns::connect(database, &registry, telemetry.metrics().meter()).await?;
    // Set whenever there is PostgreSQL (checked above). The embedded SQLite has no replicas and
    // records no position, so its layer only needs a key nobody knows: a random one.
    let secret = match consistency_secret {
        Some(secret) => secret.into_bytes(),
        None => random_key()?,
    };
    let campaign_routes = campaigns::routes(Arc::new(db), &secret, session_config.secure);
    let sessions = SessionLayer::new(session_store, session_config)?;
    sessions.register_metrics(telemetry.metrics().meter());
    // The board's page and assets read no session: they go with `/api/ping`, outside the
    // session layer, so loading them costs no session load (cookie or not).
    let assets = board::routes(config.instance_id.as_str());
    let feature_routes = flag_routes
        .merge(checkout::routes(flags::checkout_layer(&features), fault))
        .merge(agents::routes(agents))
        .merge(rollouts::routes(rollout_board))
        .merge(login::routes(logins))
        .merge(campaign_routes);
    // The layers every route has, outermost first: telemetry sees every request, including
    // 429s, 404s and 403s; the client address is resolved once; a browser page of another
    // origin cannot make a user's browser log out, change a status or create a campaign (403
    // before any session or limit is touched).
    let edge = Edge {
        telemetry: telemetry.http_layer(),
        client_ip: ClientIpLayer::from_config(&config),
        cross_origin: CrossOriginLayer::new().trusted_origins(web.trusted_origins.clone()),
    };
    let api = match &link {
        Some(link) => {
            // On the link: `/health` names Redis once (the `redis` check); the limiter's own
            // state is its `welcomedly_rate_limit_backend_degraded` gauge.
            let backend = RedisBackend::new(link, shared_locally(redis, &web)).await?;
            if let Some(m) = &membership {
                m.feed(backend.live_instances());
            }
            backend.register_metrics(telemetry.metrics().meter());
            api_routes(
                rate_limits(web.api_per_minute, web.general_per_minute)
                    .backend(backend)
                    .build()?,
                &telemetry,
                &edge,
                feature_routes,
                assets,
                flags_layer,
                sessions,
            )
        }
        None => api_routes(
            rate_limits(web.api_per_minute, web.general_per_minute)
                .backend(LocalBackend::new())
                .build()?,
            &telemetry,
            &edge,
            feature_routes,
            assets,
            flags_layer,
            sessions,
        ),
    };

    // `api` has the edge layers already (in the same stack as its own); health and metrics
    // get them alone.
    let app = api.merge(
        health::router(registry.clone())
            .merge(telemetry.metrics().router())
            .layer(
                tower::ServiceBuilder::new()
                    .layer(edge.telemetry.clone())
                    .layer(edge.client_ip.clone())
                    .layer(edge.cross_origin.clone()),
            ),
    );

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
    if let Some(m) = &membership {
        m.leave_when_draining(drain.signal())?;
    }
    drain.serve(listener, app, drain::shutdown_signal()).await?;
    tracing::info!("drained, bye");
    Ok(())
}

/// The example's own web settings.
struct WebConfig {
    /// `WELCOMEDLY_TRUSTED_ORIGINS`: origins (`https://admin.example.com`, comma-separated)
    /// whose pages may send unsafe requests too; default none (this site's pages only).
    trusted_origins: Vec<TrustedOrigin>,
    /// `WELCOMEDLY_DEV_IDENTITY_HEADER`: `x-user-id` names anonymous callers for feature flags
    /// (development only); default `false`.
    dev_identity_header: bool,
    /// `WELCOMEDLY_API_PER_MINUTE`: the `api` policy's quota per user (or client address);
    /// default 200. Load tests that send every request as one user raise it. In Redis mode the
    /// policy (and `general`) takes local-first shares, and at 1 024 or more leases of busy
    /// users' budgets too (`shared_locally`).
    api_per_minute: u32,
    /// `WELCOMEDLY_GENERAL_PER_MINUTE`: the `general` policy's quota (every other route: the
    /// board, the admin APIs) per user or client address; default 100. Scripts that poll the
    /// admin API from one address raise it.
    general_per_minute: u32,
    /// `WELCOMEDLY_RATE_LIMIT_LOCAL_FIRST`: in Redis mode, whether `api` and `general` take
    /// local-first shares (`shared_locally`); default `true`. `false` decides every request of
    /// theirs in Redis (to compare, or where a client stuck to one instance must get every
    /// last request of its quota).
    local_first: bool,
}

impl WebConfig {
    fn read(env: &mut EnvReader<'_>) -> Self {
        let trusted_origins = env.read("WELCOMEDLY_TRUSTED_ORIGINS", Vec::new(), |v| {
            v.split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::parse::<TrustedOrigin>)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("is not a list of origins: {e}; separate several with commas"))
        });
        let dev_identity_header = env.read("WELCOMEDLY_DEV_IDENTITY_HEADER", false, |v| match v {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err("is not a boolean: expected true (development only) or false"),
        });
        let api_per_minute = env.read("WELCOMEDLY_API_PER_MINUTE", 200, |v| {
            v.parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or("is not a quota: expected a whole number of requests per minute greater than 0, such as 200")
        });
        let general_per_minute = env.read("WELCOMEDLY_GENERAL_PER_MINUTE", 100, |v| {
            v.parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or("is not a quota: expected a whole number of requests per minute greater than 0, such as 100")
        });
        let local_first = env.read("WELCOMEDLY_RATE_LIMIT_LOCAL_FIRST", true, |v| match v {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err("is not a boolean: expected true (the default) or false"),
        });
        Self {
            trusted_origins,
            dev_identity_header,
            local_first,
            api_per_minute,
            general_per_minute,
        }
    }
}

/// 32 random bytes from the operating system.
fn random_key() -> Result<Vec<u8>, String> {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    let mut key = vec![0u8; 32];
    OsRng.try_fill_bytes(&mut key).map_err(|e| {
        format!("the operating system refused randomness for a signing key ({e}): check the host's entropy source")
    })?;
    Ok(key)
}

/// Opts the per-user `api` and `general` policies into the Redis backend's local shares:
///
/// - **local-first shares** (at every quota of at least
///   [`LOCAL_FIRST_MIN_BURST`](welcomedly_cluster::rate_limit::LOCAL_FIRST_MIN_BURST) a minute,
///   so at the defaults of 200 and 100): each instance admits a key's first requests from its own
///   small share of the key's budget (1/64 of it, all instances together at most 1/8) without
///   a Redis call, and the rest of the budget is the key's pool in Redis. Anonymous traffic,
///   one request or a few per address, then costs Redis nothing; the limit is never exceeded
///   (the pool is the budget less every share); a client whose requests all reach one instance
///   is refused early by at most the other instances' shares (2 of 100 on 3 instances);
/// - **leases** when a quota is high (at least
///   [`LEASE_MIN_BURST`](welcomedly_cluster::rate_limit::LEASE_MIN_BURST) a minute, such as a
///   load test's `WELCOMEDLY_API_PER_MINUTE=100000000`): an instance then spends a slice (1/64)
///   of a busy user's pool locally, one Redis call per slice instead of one per request; a user
///   may be refused early by at most one slice per instance, for at most a second.
///
/// `WELCOMEDLY_RATE_LIMIT_LOCAL_FIRST=false` leaves the local-first shares off.
fn shared_locally(mut redis: RedisRateLimitConfig, web: &WebConfig) -> RedisRateLimitConfig {
    use welcomedly_cluster::rate_limit::{LEASE_MIN_BURST, LOCAL_FIRST_MIN_BURST};
    for (policy, per_minute) in [
        ("api", web.api_per_minute),
        ("general", web.general_per_minute),
    ] {
        if web.local_first && u64::from(per_minute) >= LOCAL_FIRST_MIN_BURST {
            redis = redis.local_first(policy);
        }
        if u64::from(per_minute) >= LEASE_MIN_BURST {
            redis = redis.lease(policy);
        }
    }
    redis
}

/// The seeds' limits, with logins split three ways and the API and everything else counted per
/// logged-in user:
///
/// - `login`: every login, 20/min per client IP (bounds the hashing one address can ask for),
///   except those answered 503 (our outage, not the client's doing);
/// - `login-failures`: failed logins (401), 5/min per client IP and account (the digest
///   `login::account_key` derives from the body): one person's typos behind a NAT throttle that
///   name only, never everyone behind the address;
/// - `login-account`: failed logins, 10/min per account from every address (cluster-wide with
///   Redis), the same for unknown names, so a 429 does not say whether a user exists;
/// - `upload` 3/min per client IP;
/// - `api` 200/min and `general` 100/min (`WELCOMEDLY_API_PER_MINUTE`,
///   `WELCOMEDLY_GENERAL_PER_MINUTE`) per logged-in user (all their tabs and devices, on every
///   instance), per client IP for anonymous requests. The user is the one the session layer
///   loaded eagerly (it runs outside the limits on the routes that use the session), so this
///   adds no store call; a request whose session ended (logout) is anonymous again and counts
///   against its address, while the user's budget refills on its own: logging out and in does
///   not reset it.
fn rate_limits(
    api_per_minute: u32,
    general_per_minute: u32,
) -> welcomedly_core::rate_limit::RateLimitBuilder<LocalBackend> {
    let account = || KeySource::Derived(login::ACCOUNT_KEY.into());
    RateLimitLayer::builder()
        .policy(
            Policy::new("login", Quota::per_minute(20))
                .method(http::Method::POST)
                .path(login::LOGIN_PATH)
                .key(KeySource::ClientIp)
                // A 503 is our failure (no session store, a full hashing pool), not the
                // client's: a user retrying through an outage keeps their logins.
                .refund_statuses([StatusCode::SERVICE_UNAVAILABLE]),
        )
        .policy(
            Policy::new("login-failures", Quota::per_minute(5))
                .method(http::Method::POST)
                .path(login::LOGIN_PATH)
                .key(KeySource::Composite(vec![KeySource::ClientIp, account()]))
                .charge_only_statuses([StatusCode::UNAUTHORIZED]),
        )
        .policy(
            Policy::new("login-account", Quota::per_minute(10))
                .method(http::Method::POST)
                .path(login::LOGIN_PATH)
                .key(account())
                .charge_only_statuses([StatusCode::UNAUTHORIZED]),
        )
        .policy(
            Policy::new("upload", Quota::per_minute(3))
                .method(http::Method::POST)
                .path("/api/upload"),
        )
        .policy(
            Policy::new("api", Quota::per_minute(api_per_minute))
                .path_prefix("/api")
                .key(KeySource::UserOrClientIp),
        )
        .policy(
            Policy::new("general", Quota::per_minute(general_per_minute))
                .otherwise()
                .key(KeySource::UserOrClientIp),
        )
}

/// The application's routes behind the rate limits (health and metrics are merged outside them:
/// a load balancer polls them), in this order from the outside in:
///
/// - routes that use the session (`features`): the login's account key, then the session layer
///   (loading the session eagerly, so the user is known), then the limits (keyed by that user),
///   then the feature flags (which see the user too);
/// - `/api/ping`, `/api/upload`, the board's page and assets (`assets`) and the fallback of
///   unknown paths: the limits only, no session layer, so a request there never costs a
///   session load, cookie or not (and is keyed by its address).
///
/// Both groups share one limit layer, so one budget. Each group's stack starts with the
/// `edge` layers (telemetry, client address, cross-origin check), in the same
/// `Router::layer`.
fn api_routes<B: RateLimitBackend>(
    limits: RateLimitLayer<B>,
    telemetry: &welcomedly_core::telemetry::TelemetryGuard,
    edge: &Edge,
    features: Router,
    assets: Router,
    flags_layer: welcomedly_flags::layer::FlagsLayer,
    sessions: SessionLayer,
) -> Router {
    limits.register_metrics(telemetry.metrics().meter());
    let features = features
        .method_not_allowed_fallback(problem::method_not_allowed)
        // One stack, outermost first, the edge's layers included: axum boxes each layer it
        // applies around every route (and clones the boxes on every request), so one
        // `Router::layer` per route is cheaper than one per group of layers.
        .layer(
            tower::ServiceBuilder::new()
                .layer(edge.telemetry.clone())
                .layer(edge.client_ip.clone())
                .layer(edge.cross_origin.clone())
                .layer(axum::middleware::from_fn(login::account_key))
                .layer(sessions)
                .layer(limits.clone())
                .layer(flags_layer),
        );
    let plain = assets
        .route(
            "/api/ping",
            get(|| async { Json(serde_json::json!({ "pong": true })) }),
        )
        .route(
            "/api/upload",
            post(upload).layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES)),
        )
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(
            tower::ServiceBuilder::new()
                .layer(edge.telemetry.clone())
                .layer(edge.client_ip.clone())
                .layer(edge.cross_origin.clone())
                .layer(limits),
        );
    features.merge(plain)
}

/// The layers every route has, outside its own: see where `run` builds them.
struct Edge {
    telemetry: welcomedly_core::telemetry::HttpTelemetryLayer,
    client_ip: ClientIpLayer,
    cross_origin: CrossOriginLayer,
}

/// Takes a file as the raw request body (at most 1 MiB, else 413) and answers with its size.
/// A stand-in for the seeds' multipart upload: what matters here is that it is rate limited
/// (3 per minute per client) and size capped.
async fn upload(body: Result<Bytes, BytesRejection>) -> Response {
    match body {
        Ok(bytes) if bytes.is_empty() => Problem::new(
            StatusCode::BAD_REQUEST,
            "the upload is empty: send the file as the request body",
        )
        .into_response(),
        Ok(bytes) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "bytes": bytes.len() })),
        )
            .into_response(),
        Err(rejection) => Problem::from(rejection).into_response(),
    }
}

/// At most `max` characters of `text`, with control characters replaced, and `…` when cut.
pub(crate) fn capped(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
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
