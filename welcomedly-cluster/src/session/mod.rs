//! Shared sessions: any instance serves any user, no sticky sessions.
//!
//! [`SessionLayer`] puts a [`Session`] handle in every request's extensions (with the `axum`
//! feature, `Session` is an extractor). Handlers `get`, `insert` and `remove` serde values,
//! [`log_in`](Session::log_in) (which cycles the id against fixation),
//! [`log_out`](Session::log_out) and [`log_out_everywhere`](Session::log_out_everywhere).
//!
//! | what | cost |
//! |---|---|
//! | request without a session cookie | no store call, ever |
//! | request with a cookie whose handler never touches the session | no store call (unless [`SessionConfig::load_eagerly`]); feature flags look the user up (one load) only on routes that evaluate a flag, through the `DeferredUser` the layer leaves in the request |
//! | first read of a session | one round trip: load **and** slide the idle expiry (once a quarter of it has passed) in one script; none when the instance's session cache holds it (Redis store, see [`RedisSessionStore`]) |
//! | changed values | one more round trip at the end, writing the changed keys only |
//! | a new session (first write, login) | two round trips on Redis (index entry and the replaced session's end at once, then the session: one key each, so one Redis Cluster slot each; see [`RedisSessionStore`]) |
//!
//! - **Stores**: [`MemoryStore`] (one process, the embedded default) and
//!   [`RedisSessionStore`] (every instance). Ids are 128 bits from the OS CSPRNG; stores name a
//!   session by a SHA-256 digest of its id, so a Redis dump or `MONITOR` leaks no live cookie.
//! - **No lost updates**: each key is its own field, and a write touches only the keys the
//!   request changed: two concurrent requests changing different keys both persist. A write to
//!   a session that was logged out meanwhile is dropped, never reviving it.
//! - **Cookies**: `HttpOnly`, `SameSite=Lax`, `Secure` (configurable for local HTTP), path,
//!   optional domain, optional HMAC-SHA-256 signing with key rotation (keys of at least 16
//!   bytes). Named `__Host-wd_session` whenever it is `Secure` with path `/` and no domain, so a
//!   sibling subdomain cannot plant one. A malformed, forged or unknown cookie is no session
//!   (debug log, counted in [`SessionLayer::stats`], exported at `/metrics` by
//!   [`SessionLayer::register_metrics`]); so are several cookies of the name, and then none is
//!   deleted (a removal would only hit this host's own, the legitimate one).
//! - **Expiry**: idle (sliding) and absolute; a per-user index, bounded and cleaned on every
//!   login, for "log out everywhere".
//! - **Streams end with their session**: [`Session::watch`] follows a session from a
//!   long-lived connection; [`SessionWatch::ended`] resolves on a logout (at once in this
//!   process, at the next check elsewhere) or an expiry, without sliding the idle expiry. The
//!   event bus's SSE helper uses it (`bus::sse::SseStream::end_with_session`).
//! - **Store down**: every Redis call has a budget (default 50 ms); a request that needs the
//!   session gets `503` problem+json with `Retry-After` ([`SessionError`]), anonymous requests
//!   are unaffected. The Redis store runs on the instance's `welcomedly_redis::Link`, which
//!   notices a closed connection when it closes and reconnects in the background, so the first
//!   request after Redis answers again is served.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, header};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use welcomedly_cluster::session::{Session, SessionConfig, SessionLayer, SessionStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = SessionLayer::new(SessionStore::memory(), SessionConfig::default())?;
//! let app = ServiceBuilder::new().layer(layer).service(service_fn(|req: Request<String>| async move {
//!     let session = req.extensions().get::<Session>().cloned().expect("inside the layer");
//!     let visits: u32 = session.get("visits").await?.unwrap_or(0);
//!     session.insert("visits", &(visits + 1)).await?;
//!     Ok::<_, welcomedly_cluster::session::SessionError>(Response::new(format!("visit {}", visits + 1)))
//! }));
//!
//! let res = app.clone().oneshot(Request::new(String::new())).await?;
//! let cookie = res.headers()[header::SET_COOKIE].to_str()?.split(';').next().unwrap().to_owned();
//! let again = Request::builder().header(header::COOKIE, cookie).body(String::new())?;
//! let res = app.oneshot(again).await?;
//! assert!(res.headers().get(header::SET_COOKIE).is_none(), "same session, no new cookie");
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "axum")]
mod axum;
mod config;
mod cookie;
mod error;
mod handle;
mod id;
mod layer;
mod metrics;
mod store;
mod watch;

pub use self::config::SessionConfig;
pub use self::error::SessionError;
pub use self::handle::{Session, SessionStats};
pub use self::layer::{ResponseFuture, SessionBody, SessionLayer, SessionService};
pub use self::store::{
    LOAD_SCRIPT, MemoryStore, RedisSessionConfig, RedisSessionStore, SessionCacheStats,
    SessionStore,
};
pub use self::watch::SessionWatch;

#[cfg(test)]
mod tests;
