//! The call-center service: every Welcomedly capability that has landed, in one axum app.
//!
//! Run it (no Redis, no PostgreSQL needed; embedded defaults):
//!
//! ```sh
//! cargo run --example call_center
//! curl -i localhost:3000/api/ping
//! curl -s localhost:3000/health | jq
//! curl -s localhost:3000/metrics | grep http_server_request_duration
//! curl -i -X POST localhost:3000/auth/login -H 'content-type: application/json' \
//!      -d '{"username":"agent","password":"wrong"}'   # the 6th failure for this name: 429
//! curl -c jar -X POST localhost:3000/auth/login -H 'content-type: application/json' \
//!      -d '{"username":"agent","password":"welcomedly-demo"}'
//! curl -b jar -X PUT localhost:3000/api/agents/me/status -H 'content-type: application/json' \
//!      -d '{"status":"on_call"}'                     # seen by `curl -N -b jar localhost:3000/api/events`
//! curl -c sup -X POST localhost:3000/auth/login -H 'content-type: application/json' \
//!      -d '{"username":"supervisor","password":"welcomedly-demo"}'
//! curl -b sup -X POST localhost:3000/api/campaigns -H 'content-type: application/json' \
//!      -d '{"name":"spring"}'                        # 401 without a login, 403 for an agent
//! curl -b sup 'localhost:3000/api/campaigns?limit=20' # newest first; ?after=<next> for the next page
//! curl -b sup localhost:3000/api/flags               # the flags as the logged-in user sees them
//! curl -i -X POST localhost:3000/auth/logout -H 'origin: https://evil.example'   # 403: cross-origin
//! ```
//!
//! Unsafe requests (`POST`, `PUT`, `DELETE`, …) that a browser sends from a page of another
//! origin are refused with 403 on every route (`Sec-Fetch-Site`, else `Origin` against `Host`;
//! welcomedly-core's `cross_origin`); `WELCOMEDLY_TRUSTED_ORIGINS` (comma-separated
//! `https://host[:port]`) lists origins whose pages may. Clients that send neither header
//! (curl, servers) are not browsers and pass. Over HTTPS settings the session cookie is
//! `__Host-wd_session`.
//!
//! Logins hash on a small fixed pool of threads (a full queue answers `503` + `Retry-After`) and
//! are limited per address (20/min), per address and account (5 failures/min) and per account
//! (10 failures/min, any address); `api` and `general` count per logged-in user, per address
//! when anonymous (login.rs, `app::rate_limits`).
//!
//! With `REDIS_URL` set, sessions, the event bus, membership, feature flags and the rate limits
//! are shared by every instance through Redis (limits fall back to `limit / live instances`
//! locally while Redis is down; client keys appear in Redis only as digests, keyed by
//! `WELCOMEDLY_RATE_LIMIT_SECRET` when set). With `DATABASE_URL` (+ `DATABASE_REPLICA_URLS`)
//! campaigns go through the replica-aware router, and `WELCOMEDLY_CONSISTENCY_SECRET` (the same
//! on every instance) is required: without it the start is refused, as a public or per-process
//! secret would let clients forge read-your-writes positions or break them across instances.
//! Without `DATABASE_URL`, an in-memory SQLite. `WELCOMEDLY_ADMIN_TOKEN` enables
//! `/admin/flags` and, with `REDIS_URL`, the guarded rollouts under `/admin/rollouts/{flag}`
//! (`GET /api/checkout` is the demo route behind the guarded flag `new-checkout`;
//! `WELCOMEDLY_DEMO_FAULT=errors=0.05` or `latency_ms=50` makes its new path fail that share of
//! requests or add that latency). OFREP (`POST /ofrep/v1/evaluate/flags[/{key}]`) is open to the app's own
//! clients unless `WELCOMEDLY_OFREP_TOKEN` is set (then a bearer token or `X-API-Key`; never
//! the admin token). Every secret (those four, `WELCOMEDLY_SESSION_KEYS`) needs at least 16
//! bytes, and a refused one is reported by its length, never its value.
//! `WELCOMEDLY_SESSION_SECURE=false` for plain-HTTP cookies. `WELCOMEDLY_DEV_IDENTITY_HEADER=true`
//! (development only) lets `x-user-id` name anonymous callers for feature flags; otherwise the
//! flag identity is the logged-in user. Other settings: `PORT`
//! (3000), `TRUSTED_PROXIES` (CIDRs of the load balancers), `TRUSTED_PROXY_HEADER`
//! (`x-forwarded-for`, the default, or `forwarded`), `WELCOMEDLY_DEMO_PASSWORD`,
//! `WELCOMEDLY_ACCESS_LOG` (`info` default, `off`, …), `WELCOMEDLY_LOG_FORMAT` (`json` /
//! `pretty`), `RUST_LOG`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `WELCOMEDLY_DRAIN_GRACE_MS`,
//! `WELCOMEDLY_DRAIN_DEADLINE_MS`, `WELCOMEDLY_SSE_HEARTBEAT_MS` (15000: the event streams'
//! heartbeat, and how soon a stream ends after its session ended on another instance or
//! expired), `WELCOMEDLY_BUS_PUBSUB` (`sharded`, the default, or `classic`: the pub/sub of
//! ephemeral bus topics on a Redis Cluster), `WELCOMEDLY_HEADER_READ_TIMEOUT_MS` (10 s for a first request head),
//! `WELCOMEDLY_IDLE_TIMEOUT_MS` (75 s between keep-alive requests: above the proxy's),
//! `WELCOMEDLY_MAX_CONNECTIONS` (10 000) and `WELCOMEDLY_MAX_CONNECTIONS_PER_CLIENT` (256;
//! `TRUSTED_PROXIES` exempt); over a cap a connection gets an immediate 503. SIGTERM drains and
//! exits 0. Every error is
//! `application/problem+json`.

mod agents;
mod app;
mod board;
mod campaigns;
mod checkout;
mod flags;
mod login;
mod problem;
mod rollouts;

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match app::run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Telemetry may not be up yet: say it on stderr too.
            eprintln!("call_center: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
