//! What the layer writes: `RateLimit-Policy` / `RateLimit` / `Retry-After` headers and the 429
//! `application/problem+json` response.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Response, StatusCode};

use super::backend::Decision;
use super::headers::limit_header;
use super::policy::PolicySpec;
use super::quota::ceil_secs;
use crate::problem::{APPLICATION_PROBLEM_JSON, Problem};

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): the policy's quota and window.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers): remaining requests and seconds to reset.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// When the `RateLimit-Policy` and `RateLimit` headers are sent (`Retry-After` is always sent
/// with a 429).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderMode {
    /// On every response of a limited route (the default).
    #[default]
    Always,
    /// Only on 429 responses.
    OnRejection,
    /// Never (only `Retry-After` on 429).
    Never,
}

/// The 429 answer for the rejecting policy, without its body type yet.
pub(crate) fn rejection(
    spec: &PolicySpec,
    decision: &Decision,
    mode: HeaderMode,
) -> (http::response::Parts, Bytes) {
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = StatusCode::TOO_MANY_REQUESTS;
    let h = &mut parts.headers;
    h.insert(CONTENT_TYPE, APPLICATION_PROBLEM_JSON.clone());
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Never earlier than the real time, and never 0: a client retrying at once would be refused.
    let wait = ceil_secs(u64::try_from(decision.retry_after.as_nanos()).unwrap_or(u64::MAX)).max(1);
    h.insert(RETRY_AFTER, HeaderValue::from(wait));
    if mode != HeaderMode::Never {
        h.insert(RATELIMIT_POLICY.clone(), spec.policy_header.clone());
        if let Some(v) = limit_header(&spec.quoted_name, &spec.limit_headers, decision) {
            h.insert(RATELIMIT.clone(), v);
        }
    }
    (parts, spec.problem_body.clone())
}

/// The problem+json body naming the policy, computed once per policy.
pub(crate) fn problem_body(name: &str) -> Bytes {
    Problem::new(StatusCode::TOO_MANY_REQUESTS)
        .detail(format!(
            "Too many requests for rate-limit policy \"{name}\": wait the number of seconds in the Retry-After header, then retry."
        ))
        .extension("policy", name)
        .body()
}

/// The response body of [`RateLimit`](super::RateLimit): the service's own body, or the body
/// of a 429 rejection ([`OrBytes::own`](crate::body::OrBytes::own)).
pub type ResponseBody<B> = crate::body::OrBytes<B>;
