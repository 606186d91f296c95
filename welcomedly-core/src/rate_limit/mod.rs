//! Rate limiting: one tower layer, many named policies (route class → quota → key).
//!
//! - **GCRA** per key, on a monotonic clock that tests replace ([`ManualClock`], [`TokioClock`]).
//! - **Several policies per request**: a request is admitted only if every matching policy admits
//!   it, and a rejected request **consumes nothing** from any policy (peek, then commit).
//! - **Immediate 429** (never backpressure in `poll_ready`) with an `application/problem+json`
//!   body naming the policy, `Retry-After` in whole seconds rounded up (a client that waits that
//!   long is admitted), and the IETF draft `RateLimit-Policy` / `RateLimit` headers, also on
//!   admitted responses ([`HeaderMode`]).
//! - **Keys** by client IP (IPv6 cut to /64; use `ClientIpLayer` so forged forwarding headers
//!   cannot move the key), authenticated user ([`UserId`](crate::UserId)), the user when logged in and the IP
//!   otherwise ([`KeySource::UserOrClientIp`]), header (values over [`MAX_HEADER_KEY_LEN`] bytes
//!   share one key), a key an outer layer derived from the body ([`DerivedKey`]), one global
//!   key, or several.
//! - **Unknown paths**: with axum, put the fallback inside the limits
//!   (`Router::new().route(..).fallback(not_found).layer(limits)`) so scanners meet the
//!   `otherwise` policy, and merge health and metrics routes after the layer (see
//!   [`Policy::otherwise`]).
//! - **Bounded memory**: a per-policy cap on stored keys with amortised eviction.
//! - **Shadow mode** and **charging by response status** per policy (reserved at admission,
//!   refunded when the status is not charged, so concurrent requests cannot all slip through
//!   on one unspent quota; [`Policy::refund_statuses`] for the statuses that are our failure,
//!   such as a `503` when a dependency is down, so an outage spends no client's budget; the
//!   refund goes back to whichever store charged, see
//!   [`RateLimitBackend::refund`](backend::RateLimitBackend::refund)); per-policy counters
//!   ([`RateLimitLayer::stats`], [`RateLimitLayer::register_metrics`]).
//! - **Pluggable state** ([`backend::RateLimitBackend`]): in memory ([`LocalBackend`], the
//!   default) or, with welcomedly-cluster, in Redis so that N instances share one limit.
//!
//! The types an application configures limits with are here; the interface a backend
//! implements ([`Check`](backend::Check), [`Decision`](backend::Decision),
//! [`PolicySpec`](backend::PolicySpec), …) is in [`backend`].
//!
//! ```
//! use http::{Method, Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use welcomedly_core::client_ip::{ClientIp, ClientIpLayer, TrustedProxies};
//! use welcomedly_core::rate_limit::{KeySource, Policy, Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limits = RateLimitLayer::builder()
//!     // 5 failed logins per minute per client IP.
//!     .policy(Policy::new("login", Quota::per_minute(5))
//!         .method(Method::POST)
//!         .path("/auth/login")
//!         .charge_only_statuses([StatusCode::UNAUTHORIZED]))
//!     .policy(Policy::new("api", Quota::per_minute(200)).path_prefix("/api"))
//!     .policy(Policy::new("upload", Quota::per_minute(3)).path_prefix("/api/upload"))
//!     .policy(Policy::new("general", Quota::per_minute(100)).otherwise())
//!     .build()?;
//!
//! let svc = ServiceBuilder::new()
//!     .layer(limits)
//!     .service(service_fn(|_req: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
//!     }));
//!
//! let mut req = Request::get("/api/agents").body(String::new())?;
//! // Normally inserted by `ClientIpLayer` from the peer address and trusted proxies.
//! req.extensions_mut().insert(ClientIp("203.0.113.7".parse()?));
//! let res = svc.oneshot(req).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.headers()["ratelimit"], "\"api\";r=199;t=1");
//! assert_eq!(res.headers()["ratelimit-policy"], "\"api\";q=200;w=60");
//! # Ok(())
//! # }
//! ```

pub mod backend;
mod clock;
mod future;
mod headers;
mod key;
mod layer;
mod policy;
mod quota;
mod response;
mod service;
mod stats;
mod store;

#[cfg(test)]
mod tests;

pub use backend::LocalBackend;
pub use clock::{Clock, ManualClock, MonotonicClock, TokioClock};
pub use future::ResponseFuture;
pub use key::{DerivedKey, KeySource, MAX_HEADER_KEY_LEN};
pub use layer::{BuildError, RateLimitBuilder, RateLimitLayer};
pub use policy::{FailureMode, Policy};
pub use quota::Quota;
pub use response::{HeaderMode, RATELIMIT, RATELIMIT_POLICY, ResponseBody};
pub use service::RateLimit;
pub use stats::PolicyStatsSnapshot;

/// Moved to the crate root: [`welcomedly_core::UserId`](crate::UserId).
#[deprecated(since = "0.1.0", note = "use welcomedly_core::UserId")]
pub type UserId = crate::UserId;

/// Moved to the crate root: [`welcomedly_core::DeferredUser`](crate::DeferredUser).
#[deprecated(since = "0.1.0", note = "use welcomedly_core::DeferredUser")]
pub type DeferredUser = crate::DeferredUser;
