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
//!      -d '{"username":"agent","password":"wrong"}'   # the 6th failure within a minute: 429
//! ```
//!
//! With `REDIS_URL` set, rate limits are shared by every instance through Redis (and fall back
//! to `limit / WELCOMEDLY_INSTANCES` locally while Redis is down; client keys appear in Redis
//! only as digests, keyed by `WELCOMEDLY_RATE_LIMIT_SECRET` when set). Other settings: `PORT`
//! (3000), `TRUSTED_PROXIES` (CIDRs of the load balancers), `TRUSTED_PROXY_HEADER`
//! (`x-forwarded-for`, the default, or `forwarded`), `WELCOMEDLY_DEMO_PASSWORD`,
//! `WELCOMEDLY_ACCESS_LOG` (`info` default, `off`, …), `WELCOMEDLY_LOG_FORMAT` (`json` /
//! `pretty`), `RUST_LOG`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `WELCOMEDLY_DRAIN_GRACE_MS`,
//! `WELCOMEDLY_DRAIN_DEADLINE_MS`. SIGTERM drains and exits 0. Every error is
//! `application/problem+json`.

mod agents;
mod app;
mod campaigns;
mod flags;
mod problem;

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
