//! [`ClientIpLayer`] and its service [`SetClientIp`]: resolve the client address once per request
//! and leave it in the request extensions as [`ClientIp`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use super::{ForwardingHeader, TrustedProxies, resolve};

/// The client address of a request, as resolved by [`ClientIpLayer`]: a request extension.
///
/// Absent when the layer did not know the peer address (see [`SetClientIp`]). With the `axum`
/// feature it is also an extractor, rejecting with [`MissingClientIp`] (500) when it is absent
/// (a wiring mistake).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

impl fmt::Display for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The address of the TCP peer of a connection: a request extension a server inserts so that
/// [`SetClientIp`] knows who sent the request. (Under axum, serving with
/// `into_make_service_with_connect_info::<SocketAddr>()` provides it instead.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// Applies [`SetClientIp`]: resolves every request's client address through the trusted proxies
/// and inserts it as a [`ClientIp`] extension.
#[must_use]
#[derive(Debug, Clone, Default)]
pub struct ClientIpLayer {
    trusted: TrustedProxies,
    header: ForwardingHeader,
}

impl ClientIpLayer {
    /// A layer believing the `X-Forwarded-For` header of `trusted` peers only (see
    /// [`header`](Self::header) for proxies that write `Forwarded`).
    pub fn new(trusted: TrustedProxies) -> Self {
        Self {
            trusted,
            header: ForwardingHeader::XForwardedFor,
        }
    }

    /// The trusted proxies and their header from `config` (env `TRUSTED_PROXIES` and
    /// `TRUSTED_PROXY_HEADER`).
    pub fn from_config(config: &crate::CoreConfig) -> Self {
        Self::new(config.trusted_proxies.clone()).header(config.trusted_proxy_header)
    }

    /// Replaces the trusted proxies.
    pub fn trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = trusted;
        self
    }

    /// The forwarding header the trusted proxies write, the only one read. Default
    /// [`ForwardingHeader::XForwardedFor`].
    pub fn header(mut self, header: ForwardingHeader) -> Self {
        self.header = header;
        self
    }
}

impl<S> Layer<S> for ClientIpLayer {
    type Service = SetClientIp<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SetClientIp {
            inner,
            trusted: self.trusted.clone(),
            header: self.header,
        }
    }
}

/// Inserts the resolved [`ClientIp`] into each request's extensions, then calls the inner service.
///
/// The peer address comes from a [`PeerAddr`] extension or, with the `axum` feature, from axum's
/// `ConnectInfo<SocketAddr>`. When neither is present nothing is inserted: there is no address to
/// trust, and a guessed one would be worse than none (the rate limiter treats the key as unknown).
/// Made by [`ClientIpLayer`].
#[derive(Debug, Clone)]
pub struct SetClientIp<S> {
    inner: S,
    trusted: TrustedProxies,
    header: ForwardingHeader,
}

impl<S> SetClientIp<S> {
    /// Wraps `inner`, believing the `header` of `trusted` peers only.
    pub fn new(inner: S, trusted: TrustedProxies, header: ForwardingHeader) -> Self {
        Self {
            inner,
            trusted,
            header,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, consuming the middleware.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for SetClientIp<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(peer) = peer_ip(&req) {
            let ip = resolve(peer, req.headers(), &self.trusted, self.header);
            req.extensions_mut().insert(ClientIp(ip));
        }
        self.inner.call(req)
    }
}

fn peer_ip<B>(req: &Request<B>) -> Option<IpAddr> {
    let ext = req.extensions();
    if let Some(PeerAddr(addr)) = ext.get::<PeerAddr>() {
        return Some(addr.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) =
        ext.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(addr.ip());
    }
    None
}

/// The rejection of the [`ClientIp`] extractor (with the `axum` feature): no [`ClientIpLayer`]
/// ran before the handler, or it did not know the peer address. A wiring mistake, answered 500.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MissingClientIp;

impl MissingClientIp {
    /// `500 Internal Server Error`: the service is wired wrong, not the request.
    pub fn status(&self) -> http::StatusCode {
        http::StatusCode::INTERNAL_SERVER_ERROR
    }

    /// What to fix.
    pub fn body_text(&self) -> &'static str {
        "client address unknown: add ClientIpLayer and serve with \
         into_make_service_with_connect_info::<SocketAddr>() or insert PeerAddr"
    }
}

impl fmt::Display for MissingClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.body_text())
    }
}

impl std::error::Error for MissingClientIp {}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for MissingClientIp {
    fn into_response(self) -> axum::response::Response {
        (self.status(), self.body_text()).into_response()
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = MissingClientIp;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .ok_or(MissingClientIp)
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    /// A service answering with the `ClientIp` it was given.
    fn echo() -> impl Service<Request<()>, Response = Option<ClientIp>, Error = Infallible> + Clone
    {
        tower::service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(req.extensions().get::<ClientIp>().copied())
        })
    }

    fn request(peer: Option<&str>, xff: Option<&str>) -> Request<()> {
        let mut req = Request::new(());
        if let Some(peer) = peer {
            req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
        }
        if let Some(xff) = xff {
            req.headers_mut()
                .insert("x-forwarded-for", xff.parse().unwrap());
        }
        req
    }

    fn layer() -> ClientIpLayer {
        ClientIpLayer::new("10.0.0.0/8".parse().unwrap())
    }

    #[tokio::test]
    async fn trusted_peer_forwarding_header_is_walked() {
        let svc = layer().layer(echo());
        let got = svc
            .oneshot(request(Some("10.0.0.1:5000"), Some("6.6.6.6, 203.0.113.9")))
            .await
            .unwrap();
        assert_eq!(got, Some(ClientIp("203.0.113.9".parse().unwrap())));
    }

    #[tokio::test]
    async fn untrusted_peer_is_the_client() {
        let svc = layer().layer(echo());
        let got = svc
            .oneshot(request(Some("[::ffff:198.51.100.7]:5000"), Some("6.6.6.6")))
            .await
            .unwrap();
        assert_eq!(got, Some(ClientIp("198.51.100.7".parse().unwrap())));
    }

    #[tokio::test]
    async fn unknown_peer_inserts_nothing() {
        let svc = layer().layer(echo());
        let got = svc.oneshot(request(None, Some("6.6.6.6"))).await.unwrap();
        assert_eq!(got, None);
    }

    #[tokio::test]
    async fn a_forged_client_ip_extension_is_replaced() {
        let svc = layer().layer(echo());
        let mut req = request(Some("198.51.100.7:1"), None);
        req.extensions_mut()
            .insert(ClientIp("6.6.6.6".parse().unwrap()));
        let got = svc.oneshot(req).await.unwrap();
        assert_eq!(got, Some(ClientIp("198.51.100.7".parse().unwrap())));
    }

    #[cfg(feature = "axum")]
    #[tokio::test]
    async fn axum_connect_info_is_the_peer() {
        let svc = layer().layer(echo());
        let mut req = request(None, Some("203.0.113.9"));
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo::<SocketAddr>(
                "10.0.0.1:5000".parse().unwrap(),
            ));
        let got = svc.oneshot(req).await.unwrap();
        assert_eq!(got, Some(ClientIp("203.0.113.9".parse().unwrap())));
    }

    #[cfg(feature = "axum")]
    #[tokio::test]
    async fn axum_extractor() {
        use axum::extract::FromRequestParts;
        let (mut parts, ()) = request(None, None).into_parts();
        let rejection = ClientIp::from_request_parts(&mut parts, &())
            .await
            .unwrap_err();
        assert_eq!(rejection, MissingClientIp);
        assert_eq!(rejection.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        assert!(rejection.body_text().contains("ClientIpLayer"));
        parts
            .extensions
            .insert(ClientIp("192.0.2.1".parse().unwrap()));
        let ip = ClientIp::from_request_parts(&mut parts, &()).await.unwrap();
        assert_eq!(ip.to_string(), "192.0.2.1");
    }

    #[test]
    fn services_and_layers_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ClientIpLayer>();
        // `()` stands for any Send + Sync inner service: the middleware adds nothing that is not.
        assert_send_sync::<SetClientIp<()>>();
        assert_send_sync::<ClientIp>();
        assert_send_sync::<PeerAddr>();
        assert_send_sync::<TrustedProxies>();
    }
}
