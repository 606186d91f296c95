//! `GET /api/checkout`: a demo route whose new code path sits behind the guarded flag
//! `new-checkout`, and `WELCOMEDLY_DEMO_FAULT`, which makes that path fail a share of its
//! requests (`errors=0.05`) or add latency (`latency_ms=50`), or both (`errors=0.05,latency_ms=50`),
//! so a guarded rollout (`POST /admin/rollouts/new-checkout`) has something to catch.
//!
//! Bucketing key: the logged-in user when there is one (a user keeps their variant), else the
//! request's `x-request-id`. The route is stateless, so an anonymous caller loses nothing by
//! getting another path on its next request, and per-request assignment gives the guard
//! independent samples; this app sets no client-id cookie for anonymous callers, and a cookie
//! would make the first request of every new client unkeyed anyway. A client can choose its
//! request id and so its arm: harmless on a route that opens nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use welcomedly_flags::layer::{FlagsLayer, RequestFlags};

use crate::problem::Problem;

/// The guarded flag of the demo route.
pub(crate) const CHECKOUT_FLAG: &str = "new-checkout";

/// What `WELCOMEDLY_DEMO_FAULT` does to the new path.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Fault {
    /// The share of new-path requests answered 500, in [0, 1].
    errors: f64,
    /// Added to every new-path request.
    latency: Duration,
}

impl Fault {
    /// Parses `errors=0.05`, `latency_ms=50`, or both separated by a comma; empty = none.
    pub(crate) fn parse(text: &str) -> Result<Self, &'static str> {
        const WHAT: &str = "is not a demo fault: expected errors=<share 0..1>, latency_ms=<ms>, or both comma-separated (errors=0.05,latency_ms=50)";
        let mut fault = Fault::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or(WHAT)?;
            match name.trim() {
                "errors" => {
                    let share: f64 = value.trim().parse().map_err(|_| WHAT)?;
                    if !(0.0..=1.0).contains(&share) {
                        return Err(WHAT);
                    }
                    fault.errors = share;
                }
                "latency_ms" => {
                    let ms: u64 = value.trim().parse().map_err(|_| WHAT)?;
                    if ms > 60_000 {
                        return Err(WHAT);
                    }
                    fault.latency = Duration::from_millis(ms);
                }
                _ => return Err(WHAT),
            }
        }
        Ok(fault)
    }
}

struct Checkout {
    fault: Fault,
    /// New-path requests so far: the `errors` share fails exactly that fraction of them.
    served: AtomicU64,
}

impl Checkout {
    /// Whether the `n`-th new-path request fails: one each time `n × share` crosses an integer.
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    #[allow(clippy::cast_sign_loss)]
    fn fails(&self) -> bool {
        let n = self.served.fetch_add(1, Ordering::Relaxed) as f64;
        let share = self.fault.errors;
        ((n + 1.0) * share).floor() as u64 > (n * share).floor() as u64
    }
}

/// The route, with its own flags layer keyed as the module docs say (around the app's own).
pub(crate) fn routes(layer: FlagsLayer, fault: Fault) -> Router {
    if fault != Fault::default() {
        tracing::warn!(
            errors = fault.errors,
            latency_ms = u64::try_from(fault.latency.as_millis()).unwrap_or(u64::MAX),
            "WELCOMEDLY_DEMO_FAULT is set: the new checkout path fails or slows down on purpose"
        );
    }
    let state = Arc::new(Checkout {
        fault,
        served: AtomicU64::new(0),
    });
    Router::new().route(
        "/api/checkout",
        get(move |flags: RequestFlags| {
            let state = state.clone();
            async move { checkout(&state, &flags).await }
        })
        .layer(layer.key_header(http::HeaderName::from_static("x-request-id"))),
    )
}

async fn checkout(state: &Checkout, flags: &RequestFlags) -> Response {
    let eval = flags.bool_value(CHECKOUT_FLAG, false);
    if !eval.value {
        return Json(serde_json::json!({"path": "old", "variant": eval.variant})).into_response();
    }
    if !state.fault.latency.is_zero() {
        tokio::time::sleep(state.fault.latency).await;
    }
    if state.fails() {
        return Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the new checkout failed (WELCOMEDLY_DEMO_FAULT): a guarded rollout of new-checkout rolls it back",
        )
        .into_response();
    }
    Json(serde_json::json!({"path": "new", "variant": eval.variant})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!(Fault::parse("").unwrap(), Fault::default());
        let f = Fault::parse("errors=0.05, latency_ms=50").unwrap();
        assert_eq!((f.errors, f.latency), (0.05, Duration::from_millis(50)));
        for bad in ["errors", "errors=2", "latency_ms=-1", "boom=1"] {
            assert!(Fault::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_error_share_is_exact() {
        let c = Checkout {
            fault: Fault::parse("errors=0.05").unwrap(),
            served: AtomicU64::new(0),
        };
        assert_eq!((0..1000).filter(|_| c.fails()).count(), 50);
    }
}
