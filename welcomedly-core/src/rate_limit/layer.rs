//! [`RateLimitLayer`] and its builder.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use opentelemetry::metrics::Meter;
use tower::Layer;

use super::backend::{BackendError, LocalBackend, RateLimitBackend};
use super::headers::{LimitHeaders, policy_header};
use super::policy::{Policy, PolicySpec};
use super::quota::Quota;
use super::response::{HeaderMode, problem_body};
use super::service::RateLimit;
use super::stats::{self, PolicyStats, PolicyStatsSnapshot};

/// Why a [`RateLimitLayer`] could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// The builder has no policy.
    NoPolicies,
    /// A policy's name is empty or not printable ASCII without `"` and `\`.
    InvalidName {
        /// The name.
        name: String,
    },
    /// Two policies share a name.
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A policy's quota has a zero count, burst or period (or overflows).
    InvalidQuota {
        /// The policy.
        policy: String,
    },
    /// The backend refused the policies.
    Backend(BackendError),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPolicies => f.write_str(
                "the rate-limit layer has no policy: add one with RateLimitLayer::builder().policy(..)",
            ),
            Self::InvalidName { name } => write!(
                f,
                "rate-limit policy name {name:?} is invalid: use 1-64 printable ASCII characters without '\"' or '\\'"
            ),
            Self::DuplicateName { name } => write!(
                f,
                "two rate-limit policies are named {name:?}: give each policy its own name"
            ),
            Self::InvalidQuota { policy } => write!(
                f,
                "rate-limit policy {policy:?} has a zero count, burst or period: use at least 1 request per non-zero period"
            ),
            Self::Backend(_) => f.write_str("the rate-limit backend refused the policies"),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Backend(e) => Some(e),
            _ => None,
        }
    }
}

/// What every service clone of one layer shares.
pub(crate) struct Shared<B> {
    pub(crate) policies: Box<[Arc<PolicySpec>]>,
    pub(crate) stats: Box<[PolicyStats]>,
    pub(crate) backend: B,
    pub(crate) headers: HeaderMode,
    /// Whether any policy charges only after seeing the response status.
    pub(crate) charges_at_response: bool,
}

/// A tower layer enforcing named rate-limit policies; see the [module docs](super).
#[must_use]
pub struct RateLimitLayer<B = LocalBackend> {
    pub(crate) shared: Arc<Shared<B>>,
}

impl<B> Clone for RateLimitLayer<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl RateLimitLayer {
    /// A builder with the in-process [`LocalBackend`].
    pub fn builder() -> RateLimitBuilder<LocalBackend> {
        RateLimitBuilder {
            policies: Vec::new(),
            backend: LocalBackend::new(),
            headers: HeaderMode::Always,
        }
    }
}

impl<B: RateLimitBackend> RateLimitLayer<B> {
    /// The policies, in the order they were added.
    pub fn policies(&self) -> &[Arc<PolicySpec>] {
        &self.shared.policies
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.shared.backend
    }

    /// Each policy's counters.
    pub fn stats(&self) -> Vec<PolicyStatsSnapshot> {
        snapshot(&self.shared)
    }

    /// Exports the counters as OpenTelemetry instruments of `meter` (read at each collection, so
    /// the request path only bumps atomics): `welcomedly.rate_limit.requests{policy,outcome}`,
    /// `.store_errors`, `.fallbacks`, `.keys`, `.evicted_keys`.
    pub fn register_metrics(&self, meter: &Meter) {
        let shared = self.shared.clone();
        stats::register(meter, move || snapshot(&shared));
    }
}

fn snapshot<B: RateLimitBackend>(shared: &Shared<B>) -> Vec<PolicyStatsSnapshot> {
    shared
        .policies
        .iter()
        .zip(shared.stats.iter())
        .map(|(p, s)| {
            PolicyStatsSnapshot::new(
                p.name(),
                s,
                shared.backend.key_count(p),
                shared.backend.evicted_keys(p),
            )
        })
        .collect()
}

impl<S, B> Layer<S> for RateLimitLayer<B> {
    type Service = RateLimit<S, B>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.shared.clone())
    }
}

impl<B: fmt::Debug> fmt::Debug for RateLimitLayer<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("policies", &self.shared.policies)
            .field("backend", &self.shared.backend)
            .field("headers", &self.shared.headers)
            .finish()
    }
}

/// Builds a [`RateLimitLayer`]: policies, backend and header mode, validated once by
/// [`build`](Self::build).
#[must_use]
#[derive(Debug)]
pub struct RateLimitBuilder<B> {
    policies: Vec<Policy>,
    backend: B,
    headers: HeaderMode,
}

impl<B: RateLimitBackend> RateLimitBuilder<B> {
    /// Adds a policy. A request is checked against every policy whose route it matches (and,
    /// when none does, against the `otherwise` policies) and admitted only if all admit it.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policies.push(policy);
        self
    }

    /// When `RateLimit-Policy` / `RateLimit` headers are sent (default: always).
    pub fn headers(mut self, mode: HeaderMode) -> Self {
        self.headers = mode;
        self
    }

    /// Uses another backend (welcomedly-cluster's Redis backend, a `LocalBackend` on a test
    /// clock).
    pub fn backend<B2: RateLimitBackend>(self, backend: B2) -> RateLimitBuilder<B2> {
        RateLimitBuilder {
            policies: self.policies,
            backend,
            headers: self.headers,
        }
    }

    /// Validates the policies and prepares the backend.
    pub fn build(self) -> Result<RateLimitLayer<B>, BuildError> {
        if self.policies.is_empty() {
            return Err(BuildError::NoPolicies);
        }
        let mut names = HashSet::new();
        let mut specs = Vec::with_capacity(self.policies.len());
        for (index, policy) in self.policies.into_iter().enumerate() {
            let name = policy.name.to_string();
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| (b.is_ascii_graphic() || b == b' ') && b != b'"' && b != b'\\');
            if !valid {
                return Err(BuildError::InvalidName { name });
            }
            if !names.insert(name.clone()) {
                return Err(BuildError::DuplicateName { name });
            }
            let gcra = policy
                .quota
                .gcra()
                .ok_or_else(|| BuildError::InvalidQuota {
                    policy: name.clone(),
                })?;
            let quoted = format!("\"{name}\"");
            let (q, w) = policy_window(&policy.quota);
            let policy_header = policy_header(&quoted, q, w)
                .ok_or_else(|| BuildError::InvalidName { name: name.clone() })?;
            specs.push(Arc::new(PolicySpec {
                index,
                gcra,
                policy_header,
                problem_body: problem_body(&name),
                limit_headers: LimitHeaders::new(&quoted, &gcra),
                quoted_name: quoted.into(),
                policy,
            }));
        }
        self.backend.prepare(&specs).map_err(BuildError::Backend)?;
        let stats = specs.iter().map(|_| PolicyStats::default()).collect();
        let charges_at_response = specs.iter().any(|p| p.charges_at_response());
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                policies: specs.into(),
                charges_at_response,
                stats,
                backend: self.backend,
                headers: self.headers,
            }),
        })
    }
}

/// The `q` and `w` of a quota's `RateLimit-Policy`: the window in whole seconds (the header's
/// unit), rounded up, and the quota scaled to that window, rounded down (never promising more
/// than the policy admits). `1 per 100 ms` is `q=10;w=1`, `3 per 1.5 s` is `q=4;w=2`.
fn policy_window(quota: &Quota) -> (u64, u64) {
    let period = quota.period().as_nanos().max(1);
    let w = period.div_ceil(1_000_000_000).max(1);
    let q = u128::from(quota.count()) * w * 1_000_000_000 / period;
    (
        u64::try_from(q).unwrap_or(u64::MAX),
        u64::try_from(w).unwrap_or(u64::MAX),
    )
}

#[cfg(test)]
mod window_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sub_second_and_fractional_windows_scale_the_quota() {
        assert_eq!(policy_window(&Quota::per_second(10)), (10, 1));
        assert_eq!(policy_window(&Quota::per_minute(5)), (5, 60));
        assert_eq!(
            policy_window(&Quota::new(1, Duration::from_millis(100))),
            (10, 1)
        );
        assert_eq!(
            policy_window(&Quota::new(3, Duration::from_millis(1500))),
            (4, 2)
        );
        let governor = governor::Quota::per_second(std::num::NonZeroU32::new(10).unwrap());
        assert_eq!(policy_window(&Quota::from(governor)), (10, 1));
    }

    #[test]
    fn the_header_carries_the_scaled_quota() {
        let l = RateLimitLayer::builder()
            .policy(Policy::new(
                "fast",
                Quota::new(1, Duration::from_millis(100)),
            ))
            .build()
            .unwrap();
        assert_eq!(l.policies()[0].policy_header, "\"fast\";q=10;w=1");
    }
}
