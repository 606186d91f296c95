//! The [`RateLimit`] service: matches policies, asks the backend, rejects or calls the inner
//! service.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use smallvec::SmallVec;
use tower::Service;

use super::backend::{Check, DecisionSource, Decisions, RateLimitBackend, admits};
use super::future::ResponseFuture;
use super::headers::limit_header;
use super::key::Key;
use super::layer::Shared;
use super::response::{HeaderMode, RATELIMIT, RATELIMIT_POLICY, ResponseBody, rejection};
use super::stats::PolicyStats;

/// The policies a request matched, by index, with its key for each.
pub(crate) type Matched = SmallVec<[(usize, Key); 2]>;

/// A service enforcing rate-limit policies; built by [`RateLimitLayer`](super::RateLimitLayer).
pub struct RateLimit<S, B> {
    inner: S,
    shared: Arc<Shared<B>>,
}

impl<S, B> RateLimit<S, B> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<B>>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, B> Clone for RateLimit<S, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, B> fmt::Debug for RateLimit<S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("policies", &self.shared.policies.len())
            .finish()
    }
}

impl<S, B, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S, B>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    B: RateLimitBackend,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Keyed limits reject; they never apply backpressure here.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let matched = match_request(&self.shared, &req);
        let decided = match matched.as_slice() {
            [] => return ResponseFuture::calling(self.inner.call(req), None),
            // The common case, one policy: no list of checks to build.
            [(i, key)] => match self.shared.policies.get(*i) {
                Some(policy) => decide(&self.shared, &[Check::new(policy, key)]),
                None => return ResponseFuture::calling(self.inner.call(req), None),
            },
            _ => decide(&self.shared, &checks(&self.shared, &matched)),
        };
        match decided {
            Ok(Verdict::Reject(rejection)) => ResponseFuture::rejected(rejection),
            Ok(Verdict::Admit(admit)) => ResponseFuture::calling(self.inner.call(req), admit),
            Err(fut) => {
                // The ready service goes with the request; this one gets a clone to make ready.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::acquiring(fut, inner, req, matched, self.shared.clone())
            }
        }
    }
}

/// Asks the backend and, when it answers on the first poll (a synchronous backend such as the
/// local one), the verdict: the service is then called directly, with no state machine and no
/// clone of the inner service. Otherwise the backend's pending future.
fn decide<B: RateLimitBackend>(
    shared: &Arc<Shared<B>>,
    checks: &[Check<'_>],
) -> Result<Verdict<B>, B::Future> {
    let mut fut = shared.backend.acquire(checks);
    match Pin::new(&mut fut).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => Ok(verdict(shared, result, checks)),
        Poll::Pending => Err(fut),
    }
}

/// The policies `req` matches, with its key for each. `otherwise` policies apply when no other
/// policy both matched the route and found a key: an anonymous request to a user-keyed route
/// falls through to them instead of being limited by nothing.
fn match_request<B, ReqB>(shared: &Shared<B>, req: &Request<ReqB>) -> Matched {
    let mut matched = Matched::new();
    for spec in shared.policies.iter().filter(|p| !p.policy.otherwise) {
        if spec.policy.matches_route(req)
            && let Some(key) = spec.extract_key(req)
        {
            matched.push((spec.index(), key));
        }
    }
    if matched.is_empty() {
        for spec in shared.policies.iter().filter(|p| p.policy.otherwise) {
            if spec.policy.matches_route(req)
                && let Some(key) = spec.extract_key(req)
            {
                matched.push((spec.index(), key));
            }
        }
    }
    matched
}

pub(crate) fn checks<'a, B>(
    shared: &'a Shared<B>,
    matched: &'a Matched,
) -> SmallVec<[Check<'a>; 2]> {
    let mut checks = SmallVec::new();
    for (i, key) in matched {
        if let Some(policy) = shared.policies.get(*i) {
            checks.push(Check::new(policy, key));
        }
    }
    checks
}

/// Work left for the response of an admitted request.
pub(crate) struct Admit<B> {
    headers: Option<(HeaderValue, HeaderValue)>,
    // Boxed: only policies charging by status need it, and it keeps the future small.
    deferred: Option<Box<Deferred<B>>>,
}

/// The reservations of policies that charge only some response statuses: each was charged at
/// admission (so concurrent requests cannot all pass on one unspent quota) and is refunded when
/// the response's status is not one it charges. A response that never comes — the service
/// failed, or the request was dropped — keeps its charge: a client cannot dodge the limit by
/// hanging up.
struct Deferred<B> {
    shared: Arc<Shared<B>>,
    /// Policy index, key, and who charged it (the refund goes back there).
    reserved: SmallVec<[(usize, Key, DecisionSource); 1]>,
}

impl<B: RateLimitBackend> Admit<B> {
    /// Adds the headers and refunds the reservations the response's status does not charge.
    pub(crate) fn finish<ResB>(self, res: &mut Response<ResB>) {
        if let Some((policy, limit)) = self.headers {
            let headers = res.headers_mut();
            headers.insert(RATELIMIT_POLICY.clone(), policy);
            headers.insert(RATELIMIT.clone(), limit);
        }
        if let Some(d) = self.deferred {
            let status = res.status();
            for (i, key, charged_by) in &d.reserved {
                if let Some(spec) = d.shared.policies.get(*i)
                    && !spec.charges_status(status)
                {
                    d.shared.backend.refund(spec, key, *charged_by);
                }
            }
        }
    }
}

/// A 429 to send: boxed, so the admitted path's future stays small.
pub(crate) type Rejection = Box<(http::response::Parts, Bytes)>;

pub(crate) enum Verdict<B> {
    Reject(Rejection),
    Admit(Option<Admit<B>>),
}

pub(crate) fn verdict<B: RateLimitBackend>(
    shared: &Arc<Shared<B>>,
    result: Result<Decisions, super::backend::BackendError>,
    checks: &[Check<'_>],
) -> Verdict<B> {
    let stats = |i: usize| shared.stats.get(i);
    let decisions = match result {
        Ok(d) if d.len() == checks.len() => d,
        other => {
            for c in checks {
                if let Some(s) = stats(c.policy.index()) {
                    PolicyStats::bump(&s.store_errors);
                }
            }
            match other {
                Err(e) => tracing::warn!(error = %e, "rate-limit backend failed: request admitted"),
                Ok(_) => tracing::warn!(
                    "rate-limit backend returned the wrong number of decisions: request admitted"
                ),
            }
            return Verdict::Admit(None);
        }
    };
    let admitted = admits(checks, &decisions);
    for (check, d) in checks.iter().zip(&decisions) {
        let Some(s) = stats(check.policy.index()) else {
            continue;
        };
        match d.source {
            DecisionSource::Store | DecisionSource::LocalShare => {}
            DecisionSource::Fallback => PolicyStats::bump(&s.fallbacks),
            DecisionSource::FailOpen | DecisionSource::FailClosed => {
                PolicyStats::bump(&s.store_errors)
            }
        }
        if !d.allowed && check.policy.is_shadow() {
            PolicyStats::bump(&s.shadow_limited);
        } else if !d.allowed {
            PolicyStats::bump(&s.limited);
        } else if admitted {
            PolicyStats::bump(&s.admitted);
        }
    }
    if !admitted {
        // Answer with the live policy that makes the client wait longest.
        let rejecting = checks
            .iter()
            .zip(&decisions)
            .filter(|(c, d)| !d.allowed && !c.policy.is_shadow())
            .max_by_key(|(_, d)| d.retry_after);
        if let Some((check, d)) = rejecting {
            return Verdict::Reject(Box::new(rejection(check.policy, d, shared.headers)));
        }
    }
    let headers = if shared.headers == HeaderMode::Always {
        // The tightest live policy: the one closest to rejecting.
        checks
            .iter()
            .zip(&decisions)
            // A fail-open decision knows nothing about the quota: say nothing rather than r=0.
            .filter(|(c, d)| {
                d.allowed && !c.policy.is_shadow() && d.source != DecisionSource::FailOpen
            })
            .min_by_key(|(_, d)| (d.remaining, std::cmp::Reverse(d.reset)))
            .and_then(|(c, d)| {
                let p = c.policy;
                let limit = limit_header(&p.quoted_name, &p.limit_headers, d)?;
                Some((p.policy_header.clone(), limit))
            })
    } else {
        None
    };
    let deferred = if shared.charges_at_response {
        // Only what the store charged can be refunded: an allowed decision of the store (or of
        // the local fallback standing in for it, or of the instance's local share of it),
        // never a fail-open admission.
        let reserved: SmallVec<[(usize, Key, DecisionSource); 1]> = checks
            .iter()
            .zip(&decisions)
            .filter(|(c, d)| {
                c.policy.charges_at_response()
                    && c.charge
                    && d.allowed
                    && matches!(
                        d.source,
                        DecisionSource::Store
                            | DecisionSource::Fallback
                            | DecisionSource::LocalShare
                    )
            })
            .map(|(c, d)| (c.policy.index(), c.key.clone(), d.source))
            .collect();
        (!reserved.is_empty()).then(|| {
            Box::new(Deferred {
                shared: shared.clone(),
                reserved,
            })
        })
    } else {
        None
    };
    if headers.is_none() && deferred.is_none() {
        Verdict::Admit(None)
    } else {
        Verdict::Admit(Some(Admit { headers, deferred }))
    }
}
