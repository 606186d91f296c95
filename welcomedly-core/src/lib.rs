//! # welcomedly-core
//!
//! What every instance of a horizontally scaled tower/axum service needs, with no Redis and no
//! database: telemetry (JSON logs, request ids, OpenTelemetry traces and Prometheus metrics),
//! health and readiness, graceful drain, client-IP extraction behind trusted proxies and a keyed,
//! multi-policy rate-limiting layer whose backend other crates (welcomedly-cluster) can replace.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | [`CoreConfig`], loadable from environment variables with validation |
//! | [`cross_origin`] | refuses cross-origin unsafe requests from browsers (`Sec-Fetch-Site`, `Origin`) |
//! | [`instance`] | [`InstanceId`], the identity of this process in the cluster |
//! | [`telemetry`] | tracing + OpenTelemetry setup, request id, request span, HTTP metrics |
//! | [`health`] | a registry of named checks; `/health`, `/health/live`, `/health/ready` |
//! | [`drain`] | SIGTERM handling: readiness off, grace period, in-flight completion, deadline |
//! | [`client_ip`] | the client address, walking the operator's forwarding header through trusted proxies |
//! | [`problem`] | [`Problem`](problem::Problem): the RFC 9457 `application/problem+json` error response every layer answers with |
//! | [`rate_limit`] | named policies, GCRA, `RateLimit` headers, pluggable backend |
//! | [`redact`] | passwords out of URLs shown in errors and logs |
//! | [`user`] | [`UserId`] and [`DeferredUser`]: the request's user, set by an auth layer, read by limits and flags |

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backoff;
pub mod body;
pub mod client_ip;
pub mod config;
pub mod cross_origin;
pub mod drain;
pub mod health;
pub mod instance;
pub mod problem;
pub mod rate_limit;
pub mod redact;
pub mod telemetry;
pub mod user;

pub use config::CoreConfig;
pub use instance::InstanceId;
pub use user::{DeferredUser, UserId};
