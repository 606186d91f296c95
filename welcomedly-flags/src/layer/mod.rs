//! Flags in HTTP services: [`FlagsLayer`] pins one snapshot per request and builds its
//! evaluation context; [`FlagGateLayer`] turns a route off while its flag is off.
//!
//! - **One snapshot per request**: the layer loads the current [`Snapshot`](crate::Snapshot)
//!   once, so every decision a request makes is consistent even if an update lands while it
//!   runs. Handlers read [`RequestFlags`] from the request extensions (with the `axum` feature it
//!   is also an extractor).
//! - **Context from the request**: the targeting key is the authenticated user
//!   (welcomedly-core's `UserId` extension, set by a session or auth layer) or, failing that, a
//!   header you name; attributes come from a closure over the request head.
//! - **Lazy**: nothing is evaluated until a handler asks. Evaluation is allocation-free and takes
//!   tens of nanoseconds, so repeated questions are answered again from the pinned snapshot
//!   rather than memoised behind a lock (same snapshot, same context: the same answer).
//! - **Kill switch for routes**: [`FlagGateLayer`] answers `404` (configurable) with an
//!   `application/problem+json` body while the flag is off for the request's context.
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use tower::{Layer, ServiceExt, service_fn};
//! use welcomedly_flags::layer::{FlagGateLayer, FlagsLayer, RequestFlags};
//! use welcomedly_flags::{Flags, Snapshot};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let flags = Flags::new(Snapshot::compile_json(
//!     r#"{"flags": {"stats": {"variants": {"on": true, "off": false},
//!                             "targets": [{"variant": "on", "values": ["alice"]}],
//!                             "fallthrough": {"variant": "off"}}}}"#,
//!     1,
//! )?);
//! let handler = service_fn(|req: Request<String>| async move {
//!     let flags = req.extensions().get::<RequestFlags>().cloned();
//!     let new_ui = flags.is_some_and(|f| f.is_enabled("stats"));
//!     Ok::<_, std::convert::Infallible>(Response::new(format!("new ui: {new_ui}")))
//! });
//! let svc = FlagsLayer::new(flags.clone())
//!     .key_header(http::HeaderName::from_static("x-user"))
//!     .layer(FlagGateLayer::new("stats").layer(handler));
//!
//! let alice = Request::get("/stats").header("x-user", "alice").body(String::new())?;
//! assert_eq!(svc.clone().oneshot(alice).await?.status(), StatusCode::OK);
//! let bob = Request::get("/stats").header("x-user", "bob").body(String::new())?;
//! assert_eq!(svc.oneshot(bob).await?.status(), StatusCode::NOT_FOUND);
//! # Ok(())
//! # }
//! ```

mod gate;
mod request;
mod service;

pub use gate::{FlagGate, FlagGateLayer, GateBody, GateFuture};
pub use request::{Attributes, MAX_ATTR_LEN, OwnedAttr, RequestFlags, RequestInfo};
pub use service::{FlagsLayer, FlagsService, ResponseFuture};
