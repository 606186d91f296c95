//! Cross-site request forgery protection without tokens: [`CrossOriginLayer`] refuses unsafe
//! requests that a browser sends on behalf of another origin's page, with `403 Forbidden` and an
//! `application/problem+json` body. The rules are those of Go 1.25's
//! `net/http.CrossOriginProtection`, in this order:
//!
//! 1. `GET`, `HEAD` and `OPTIONS` always pass (they must not change state).
//! 2. `Sec-Fetch-Site: same-origin` or `none` (typed in the address bar, a bookmark) passes;
//!    any other value (`cross-site`, `same-site`) is refused, unless the request is exempt.
//! 3. Without `Sec-Fetch-Site` (browsers before 2023), no `Origin` either passes: a same-origin
//!    request from such a browser, or no browser at all (curl, a server, a mobile app), which
//!    cannot ride a user's cookies.
//! 4. An `Origin` whose host (with its port) equals the request's host (`Host`, or the
//!    authority of an absolute request target) passes; any other is refused unless exempt.
//!
//! Exempt: a request whose `Origin` is one of the [`TrustedOrigin`]s, or whose path matches an
//! [`BypassPattern`]. Unlike a token, nothing is stored or rendered into pages, and a
//! `SameSite=Lax` cookie is no longer the only defence (it lets sibling subdomains through).
//!
//! Behind a proxy, step 4 needs the `Host` the browser sent (NGINX: `proxy_set_header Host
//! $http_host`, as `$host` drops the port); current browsers are decided at step 2 anyway.
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use tower::{Layer, ServiceExt, service_fn};
//! use welcomedly_core::cross_origin::CrossOriginLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = CrossOriginLayer::new()
//!     .trusted_origins(["https://admin.example.com".parse()?]);
//! let app = layer.layer(service_fn(|_req: Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(String::from("logged out")))
//! }));
//!
//! // A form on another site posts to /auth/logout: refused.
//! let forged = Request::post("/auth/logout")
//!     .header("host", "app.example.com")
//!     .header("origin", "https://evil.example")
//!     .header("sec-fetch-site", "cross-site")
//!     .body(String::new())?;
//! let res = app.clone().oneshot(forged).await?;
//! assert_eq!(res.status(), StatusCode::FORBIDDEN);
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//!
//! // The site's own page, and the trusted admin console: allowed.
//! let own = Request::post("/auth/logout")
//!     .header("sec-fetch-site", "same-origin")
//!     .body(String::new())?;
//! assert_eq!(app.clone().oneshot(own).await?.status(), StatusCode::OK);
//! let admin = Request::post("/auth/logout")
//!     .header("origin", "https://admin.example.com")
//!     .header("sec-fetch-site", "same-site")
//!     .body(String::new())?;
//! assert_eq!(app.oneshot(admin).await?.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```

mod check;
mod future;
mod layer;
mod service;

pub use check::{BypassPattern, InvalidSetting, Refusal, SEC_FETCH_SITE, TrustedOrigin};
pub use future::{ResponseBody, ResponseFuture};
pub use layer::{CrossOriginLayer, CrossOriginStats};
pub use service::CrossOrigin;

#[cfg(test)]
mod tests;
