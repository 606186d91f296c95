//! [`CrossOriginLayer`]: the builder and its shared state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{Request, StatusCode};
use tower::Layer;

use super::check::{BypassPattern, Refusal, Rules, TrustedOrigin};
use super::service::CrossOrigin;
use crate::problem::Problem;

/// Refuses cross-origin unsafe requests from browsers with `403 Forbidden` and a problem+json
/// body, as Go 1.25's `http.CrossOriginProtection`; see the [module docs](super) for the rules.
/// Its own builder: [`new`](Self::new), then [`trusted_origins`](Self::trusted_origins) and
/// [`insecure_bypass`](Self::insecure_bypass). Cloning shares the counters.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct CrossOriginLayer {
    pub(super) shared: Arc<Shared>,
}

/// What the layer's services share.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) rules: Rules,
    refused_fetch_metadata: AtomicU64,
    refused_origin: AtomicU64,
}

/// Requests a [`CrossOriginLayer`] refused since it was built, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CrossOriginStats {
    /// Refused because `Sec-Fetch-Site` named another origin.
    pub refused_fetch_metadata: u64,
    /// Refused because `Origin` did not match the host (no `Sec-Fetch-Site`).
    pub refused_origin: u64,
}

impl CrossOriginLayer {
    /// The protection with no trusted origin and no bypass: only same-origin unsafe requests
    /// from browsers pass (and every request that is not from a browser).
    pub fn new() -> Self {
        Self::default()
    }

    fn update(self, f: impl FnOnce(&mut Rules)) -> Self {
        let mut rules = Rules {
            trusted: self.shared.rules.trusted.clone(),
            bypass: self.shared.rules.bypass.clone(),
        };
        f(&mut rules);
        Self {
            shared: Arc::new(Shared {
                rules,
                ..Shared::default()
            }),
        }
    }

    /// Also lets through unsafe requests whose `Origin` is exactly one of `origins` (Go's
    /// `AddTrustedOrigin`), such as an admin console served from another host.
    pub fn trusted_origins(self, origins: impl IntoIterator<Item = TrustedOrigin>) -> Self {
        self.update(|r| r.trusted.extend(origins))
    }

    /// Also lets through every request matching `pattern`, whatever its origin (Go's
    /// `AddInsecureBypassPattern`): for routes other sites must be able to post to, such as an
    /// identity provider's callback, which must then defend themselves.
    pub fn insecure_bypass(self, pattern: BypassPattern) -> Self {
        self.update(|r| r.bypass.push(pattern))
    }

    /// Go's `Check`: whether this layer would let `req` through, and if not, why.
    ///
    /// # Errors
    ///
    /// The [`Refusal`] the layer would answer with a 403.
    pub fn check<B>(&self, req: &Request<B>) -> Result<(), Refusal> {
        self.shared
            .rules
            .check(req.method(), req.uri(), req.headers())
    }

    /// The refusals since the layer was built.
    pub fn stats(&self) -> CrossOriginStats {
        CrossOriginStats {
            refused_fetch_metadata: self.shared.refused_fetch_metadata.load(Ordering::Relaxed),
            refused_origin: self.shared.refused_origin.load(Ordering::Relaxed),
        }
    }
}

impl Shared {
    /// Counts a refusal and gives its problem+json answer.
    pub(super) fn refused(&self, refusal: Refusal) -> Problem {
        let counter = match refusal {
            Refusal::FetchMetadata => &self.refused_fetch_metadata,
            Refusal::OriginMismatch => &self.refused_origin,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Only the reason: the path and Origin are the client's text.
        tracing::debug!(reason = refusal.as_str(), "cross-origin request refused");
        Problem::new(StatusCode::FORBIDDEN)
            .detail(refusal.to_string())
            .extension("reason", refusal.as_str())
    }
}

impl<S> Layer<S> for CrossOriginLayer {
    type Service = CrossOrigin<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CrossOrigin {
            inner,
            shared: self.shared.clone(),
        }
    }
}
