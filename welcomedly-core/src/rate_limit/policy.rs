//! Named policies: which requests (route class), how many (quota), counted by what (key).

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, StatusCode};

use super::key::{Key, KeySource};
use super::quota::{Gcra, Quota};

/// What to do when the shared store (Redis) cannot decide in time. The local backend never
/// fails; welcomedly-cluster's Redis backend honours this per policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailureMode {
    /// Decide locally at `limit / live instances` until the store answers again (the default;
    /// the burst's share rounded up, at least 1, see [`Gcra::divided`]).
    #[default]
    LocalFallback,
    /// Admit every request while the store is down.
    FailOpen,
    /// Reject every request while the store is down (for limits that guard money or abuse).
    FailClosed,
}

#[derive(Debug, Clone)]
enum PathMatch {
    Any,
    Prefix(Cow<'static, str>),
    Exact(Cow<'static, str>),
    Route(Cow<'static, str>),
}

/// One named rate-limit policy: a route class, a quota and a key.
///
/// ```
/// use http::{Method, StatusCode};
/// use welcomedly_core::rate_limit::{KeySource, Policy, Quota};
///
/// // The seeds' login limit: 5 failed logins per minute per client IP.
/// let login = Policy::new("login", Quota::per_minute(5))
///     .method(Method::POST)
///     .path("/auth/login")
///     .key(KeySource::ClientIp)
///     .charge_only_statuses([StatusCode::UNAUTHORIZED]);
/// # let _ = login;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Policy {
    pub(crate) name: Cow<'static, str>,
    pub(crate) quota: Quota,
    methods: Vec<Method>,
    path: PathMatch,
    pub(crate) otherwise: bool,
    pub(crate) key: KeySource,
    pub(crate) ipv6_prefix: u8,
    pub(crate) shadow: bool,
    pub(crate) charge_statuses: Option<Vec<StatusCode>>,
    pub(crate) refund_statuses: Vec<StatusCode>,
    pub(crate) failure_mode: FailureMode,
    pub(crate) max_keys: usize,
}

impl Policy {
    /// A policy named `name` (shown in headers, the 429 body and metrics) applying `quota` to
    /// every request, keyed by client IP. Narrow it with [`method`](Self::method),
    /// [`path_prefix`](Self::path_prefix), [`path`](Self::path) or [`otherwise`](Self::otherwise).
    pub fn new(name: impl Into<Cow<'static, str>>, quota: Quota) -> Self {
        Self {
            name: name.into(),
            quota,
            methods: Vec::new(),
            path: PathMatch::Any,
            otherwise: false,
            key: KeySource::ClientIp,
            ipv6_prefix: 64,
            shadow: false,
            charge_statuses: None,
            refund_statuses: Vec::new(),
            failure_mode: FailureMode::LocalFallback,
            max_keys: 100_000,
        }
    }

    /// Only requests with this method (call again to allow several). Default: every method.
    pub fn method(mut self, method: Method) -> Self {
        self.methods.push(method);
        self
    }

    /// Only paths under `prefix`, on a segment boundary: `/api` matches `/api` and `/api/x`,
    /// not `/apix`.
    pub fn path_prefix(mut self, prefix: impl Into<Cow<'static, str>>) -> Self {
        let mut p: String = prefix.into().into_owned();
        while p.len() > 1 && p.ends_with('/') {
            p.pop();
        }
        self.path = PathMatch::Prefix(p.into());
        self
    }

    /// Only this exact path.
    pub fn path(mut self, path: impl Into<Cow<'static, str>>) -> Self {
        self.path = PathMatch::Exact(path.into());
        self
    }

    /// Only requests whose matched route template is `template` (e.g. `/api/agents/{id}`): axum's
    /// `MatchedPath` (with the `axum` feature, when the layer is added with `Router::layer`), or a
    /// [`RouteLabel`](crate::telemetry::RouteLabel) extension set by another router.
    pub fn route(mut self, template: impl Into<Cow<'static, str>>) -> Self {
        self.path = PathMatch::Route(template.into());
        self
    }

    /// Only requests that no other (non-`otherwise`) policy limits — none matched the route, or
    /// those that matched found no key (an anonymous request to a user-keyed route): the
    /// "general" limit of everything else.
    ///
    /// With axum, a request to an unknown path reaches the layer only if the layer wraps the
    /// router's fallback: add `.fallback(..)` before `.layer(limits)` (`Router::layer` wraps the
    /// fallback too), or apply the layer around the whole `Router` with
    /// `ServiceBuilder`/`Layer::layer`. Routes merged after `.layer(limits)` are not limited —
    /// the place for `/health` and `/metrics`, which a load balancer and Prometheus poll.
    pub fn otherwise(mut self) -> Self {
        self.otherwise = true;
        self
    }

    /// What requests are counted by. Default: [`KeySource::ClientIp`].
    pub fn key(mut self, key: KeySource) -> Self {
        self.key = key;
        self
    }

    /// IPv6 client addresses are cut to this prefix length (default 64, as one host usually owns
    /// a whole /64; 128 keeps the full address).
    pub fn ipv6_prefix(mut self, len: u8) -> Self {
        self.ipv6_prefix = len.min(128);
        self
    }

    /// Shadow mode: decide and count, never reject — to roll a new limit out safely.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// Charge a request only when its response has one of these statuses (a login limit that
    /// counts failed logins, 401, never locks out a user who types the password right). A request
    /// over the limit is still rejected before reaching the service.
    pub fn charge_only_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.charge_statuses = Some(statuses.into_iter().collect());
        self
    }

    /// Never charge a request whose response has one of these statuses: it is reserved at
    /// admission (so concurrent requests cannot overshoot) and refunded after such a response.
    /// For the statuses that mean *we* failed, not the client — `503` when a dependency of ours
    /// is down (the session store, a full hashing pool) — so a client retrying through our
    /// outage does not spend its budget. Takes precedence over
    /// [`charge_only_statuses`](Self::charge_only_statuses). Default: none (every admitted
    /// request is charged at once, the cheapest path).
    ///
    /// ```
    /// use http::{Method, StatusCode};
    /// use welcomedly_core::rate_limit::{Policy, Quota};
    ///
    /// // Every login counts, except those our own outage turned into a 503.
    /// let login = Policy::new("login", Quota::per_minute(20))
    ///     .method(Method::POST)
    ///     .path("/auth/login")
    ///     .refund_statuses([StatusCode::SERVICE_UNAVAILABLE]);
    /// # let _ = login;
    /// ```
    pub fn refund_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.refund_statuses = statuses.into_iter().collect();
        self
    }

    /// What the Redis backend does when Redis fails (default [`FailureMode::LocalFallback`]).
    pub fn on_store_failure(mut self, mode: FailureMode) -> Self {
        self.failure_mode = mode;
        self
    }

    /// The most keys the local limiter keeps for this policy (default 100 000, about 4 MB).
    /// Beyond it, expired state is swept and then the keys closest to a full quota are dropped,
    /// so a flood of distinct addresses cannot exhaust memory.
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = max;
        self
    }

    pub(crate) fn matches_route<B>(&self, req: &Request<B>) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method()) {
            return false;
        }
        let path = req.uri().path();
        match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Route(t) => matched_route(req).is_some_and(|r| r == t),
            PathMatch::Prefix(p) => match path.strip_prefix(p.as_ref()) {
                Some(rest) => rest.is_empty() || rest.starts_with('/') || p == "/",
                None => false,
            },
        }
    }
}

fn matched_route<B>(req: &Request<B>) -> Option<&str> {
    #[cfg(feature = "axum")]
    if let Some(m) = req.extensions().get::<axum::extract::MatchedPath>() {
        return Some(m.as_str());
    }
    req.extensions()
        .get::<crate::telemetry::RouteLabel>()
        .map(|r| r.as_str())
}

/// A built policy, as backends see it.
#[derive(Debug)]
pub struct PolicySpec {
    pub(crate) index: usize,
    pub(crate) policy: Policy,
    pub(crate) gcra: Gcra,
    pub(crate) policy_header: HeaderValue,
    pub(crate) problem_body: bytes::Bytes,
    pub(crate) quoted_name: Arc<str>,
    pub(crate) limit_headers: super::headers::LimitHeaders,
}

impl PolicySpec {
    /// Position of this policy in its layer (stable for the layer's life).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.policy.name
    }

    /// Its quota.
    pub fn quota(&self) -> Quota {
        self.policy.quota
    }

    /// Its GCRA parameters.
    pub fn gcra(&self) -> Gcra {
        self.gcra
    }

    /// What to do when a shared store fails.
    pub fn failure_mode(&self) -> FailureMode {
        self.policy.failure_mode
    }

    /// Whether the policy is in shadow mode.
    pub fn is_shadow(&self) -> bool {
        self.policy.shadow
    }

    /// The most keys kept locally.
    pub fn max_keys(&self) -> usize {
        self.policy.max_keys
    }

    pub(crate) fn extract_key<B>(&self, req: &Request<B>) -> Option<Key> {
        self.policy.key.extract(req, self.policy.ipv6_prefix)
    }

    pub(crate) fn charges_at_response(&self) -> bool {
        self.policy.charge_statuses.is_some() || !self.policy.refund_statuses.is_empty()
    }

    pub(crate) fn charges_status(&self, status: StatusCode) -> bool {
        if self.policy.refund_statuses.contains(&status) {
            return false;
        }
        self.policy
            .charge_statuses
            .as_ref()
            .is_none_or(|s| s.contains(&status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, path: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap()
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        let p = Policy::new("api", Quota::per_minute(1)).path_prefix("/api/");
        assert!(p.matches_route(&req(Method::GET, "/api")));
        assert!(p.matches_route(&req(Method::GET, "/api/agents?x=1")));
        assert!(!p.matches_route(&req(Method::GET, "/apix")));
        assert!(!p.matches_route(&req(Method::GET, "/")));
        let root = Policy::new("all", Quota::per_minute(1)).path_prefix("/");
        assert!(root.matches_route(&req(Method::GET, "/anything")));
    }

    #[test]
    fn route_templates_match_the_route_label() {
        let p = Policy::new("agent", Quota::per_minute(1)).route("/api/agents/{id}");
        let mut r = req(Method::GET, "/api/agents/7");
        assert!(!p.matches_route(&r));
        r.extensions_mut()
            .insert(crate::telemetry::RouteLabel::from_static(
                "/api/agents/{id}",
            ));
        assert!(p.matches_route(&r));
        let mut other = req(Method::GET, "/api/agents");
        other
            .extensions_mut()
            .insert(crate::telemetry::RouteLabel::from_static("/api/agents"));
        assert!(!p.matches_route(&other));
    }

    #[test]
    fn methods_and_exact_paths() {
        let p = Policy::new("login", Quota::per_minute(1))
            .method(Method::POST)
            .path("/auth/login");
        assert!(p.matches_route(&req(Method::POST, "/auth/login")));
        assert!(!p.matches_route(&req(Method::GET, "/auth/login")));
        assert!(!p.matches_route(&req(Method::POST, "/auth/login/x")));
    }
}
