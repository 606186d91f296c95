//! [`ConsistencyLayer`]: carries each client's read-your-writes [`Token`] in a signed cookie,
//! so their next request, on any instance, reads at least their own last write.
//!
//! Handlers find a [`Consistency`] in the request extensions: [`Consistency::token`] for
//! [`Router::read_after`](crate::Router::read_after), [`Consistency::record`] after a write.
//! A recorded token goes back in a `Set-Cookie`; a malformed, forged or expired cookie is
//! ignored (the request then reads like a first visit).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use http::{Request, Response};
//! use tower::{Layer, ServiceExt, service_fn};
//! use welcomedly_db::{Consistency, ConsistencyLayer, Token};
//!
//! let layer = ConsistencyLayer::new(b"a secret every instance shares");
//! let svc = layer.layer(service_fn(|req: Request<()>| async move {
//!     let c = req.extensions().get::<Consistency>().cloned();
//!     if let Some(c) = c {
//!         // after a write: c.record(router.token().await?)
//!         c.record(Token::new(1, 0x0300_0148));
//!     }
//!     Ok::<_, std::convert::Infallible>(Response::new(()))
//! }));
//! let res = svc.oneshot(Request::new(())).await.unwrap();
//! assert!(res.headers()["set-cookie"].to_str().unwrap().starts_with("wd_rw="));
//! # }
//! ```

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;

use crate::consistency::{Token, TokenSigner};

/// The client's token for this request (from their cookie) and what handlers recorded.
#[derive(Debug, Clone, Default)]
pub struct Consistency {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    incoming: Option<Token>,
    recorded: Option<Token>,
}

impl Consistency {
    /// A handle carrying `incoming` (e.g. in tests or without the layer).
    pub fn new(incoming: Option<Token>) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                incoming,
                recorded: None,
            })),
        }
    }

    /// The latest token this client is known to need: its cookie's, or one recorded during
    /// this request.
    pub fn token(&self) -> Option<Token> {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match (s.incoming, s.recorded) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Records the token of a write this request made (kept: the later of all recorded).
    pub fn record(&self, token: Token) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.recorded = Some(s.recorded.map_or(token, |t| t.max(token)));
    }

    fn recorded(&self) -> Option<Token> {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.recorded.map(|r| s.incoming.map_or(r, |i| i.max(r)))
    }
}

struct Settings {
    signer: TokenSigner,
    cookie: Cow<'static, str>,
    ttl: Duration,
    secure: bool,
}

/// Carries each client's [`Token`] in a signed cookie and gives handlers a [`Consistency`]
/// handle in the request extensions: [`Consistency::token`] for reads, [`Consistency::record`]
/// after a write. A malformed, forged or expired cookie is ignored.
#[derive(Clone)]
#[must_use]
pub struct ConsistencyLayer {
    settings: Arc<Settings>,
}

impl std::fmt::Debug for ConsistencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsistencyLayer")
            .field("cookie", &self.settings.cookie)
            .field("ttl", &self.settings.ttl)
            .field("secure", &self.settings.secure)
            .finish_non_exhaustive()
    }
}

impl ConsistencyLayer {
    /// A layer signing with `secret` (shared by every instance), cookie `wd_rw`, valid 60 s
    /// (replicas normally catch up far sooner; afterwards any node will do), not `Secure`.
    ///
    /// The secret is what stops a client from forging a far-future position that makes its
    /// every read wait for replicas: take it from the deployment's secrets, random and at least
    /// `welcomedly_core::config::MIN_SECRET_LEN` (16) bytes, never a default written in code.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            settings: Arc::new(Settings {
                signer: TokenSigner::new(secret),
                cookie: Cow::Borrowed("wd_rw"),
                ttl: Duration::from_secs(60),
                secure: false,
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Settings)) -> Self {
        let s = &*self.settings;
        let mut settings = Settings {
            signer: s.signer.clone(),
            cookie: s.cookie.clone(),
            ttl: s.ttl,
            secure: s.secure,
        };
        f(&mut settings);
        Self {
            settings: Arc::new(settings),
        }
    }

    /// The cookie's name (default `wd_rw`).
    pub fn cookie_name(self, name: impl Into<Cow<'static, str>>) -> Self {
        let name = name.into();
        self.with(|s| s.cookie = name)
    }

    /// How long a token stays valid (default 60 s).
    pub fn ttl(self, ttl: Duration) -> Self {
        self.with(|s| s.ttl = ttl)
    }

    /// Marks the cookie `Secure` (sent over HTTPS only). Default off.
    pub fn secure(self, secure: bool) -> Self {
        self.with(|s| s.secure = secure)
    }
}

impl<S> tower::Layer<S> for ConsistencyLayer {
    type Service = ConsistencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConsistencyService {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// The service [`ConsistencyLayer`] makes.
#[derive(Clone)]
pub struct ConsistencyService<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> std::fmt::Debug for ConsistencyService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsistencyService")
            .field("cookie", &self.settings.cookie)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The token of the request's first cookie of the name, if its signature holds. Only that one
/// is verified: a browser sends one (the layer sets a single name and path), and verifying
/// every copy let one request of 6,000 forged cookies buy 6,000 HMACs (5.3 ms).
fn incoming<B>(req: &Request<B>, settings: &Settings) -> Option<Token> {
    let (_, value) = req
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == settings.cookie)?;
    settings.signer.verify(value.trim(), unix_now())
}

impl<S, B, ResBody> tower::Service<Request<B>> for ConsistencyService<S>
where
    S: tower::Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let consistency = Consistency::new(incoming(&req, &self.settings));
        req.extensions_mut().insert(consistency.clone());
        ResponseFuture {
            inner: self.inner.call(req),
            consistency,
            settings: self.settings.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`ConsistencyService`]: adds the `Set-Cookie` when a handler
    /// recorded a token.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        consistency: Consistency,
        settings: Arc<Settings>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        if let Some(token) = this.consistency.recorded() {
            let s = &**this.settings;
            let value = s.signer.sign(&token, unix_now() + s.ttl.as_secs());
            let cookie = format!(
                "{}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
                s.cookie,
                s.ttl.as_secs(),
                if s.secure { "; Secure" } else { "" }
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                res.headers_mut().append(SET_COOKIE, v);
            }
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tower::{Layer, ServiceExt, service_fn};

    async fn seen(
        layer: &ConsistencyLayer,
        cookie: Option<&str>,
    ) -> (Option<Token>, Option<String>) {
        let svc = layer.layer(service_fn(|req: Request<()>| async move {
            let c = req.extensions().get::<Consistency>().cloned().unwrap();
            let seen = c.token();
            Ok::<_, std::convert::Infallible>(Response::new(seen))
        }));
        let mut req = Request::new(());
        if let Some(c) = cookie {
            req.headers_mut()
                .insert(COOKIE, HeaderValue::from_str(c).unwrap());
        }
        let res = svc.oneshot(req).await.unwrap();
        let set = res
            .headers()
            .get(SET_COOKIE)
            .map(|v| v.to_str().unwrap().to_owned());
        (res.into_body(), set)
    }

    #[tokio::test]
    async fn a_recorded_token_comes_back_in_the_next_request() {
        let layer = ConsistencyLayer::new(b"k");
        let svc = layer.layer(service_fn(|req: Request<()>| async move {
            let c = req.extensions().get::<Consistency>().cloned().unwrap();
            c.record(Token::new(1, 500));
            c.record(Token::new(1, 400));
            Ok::<_, std::convert::Infallible>(Response::new(()))
        }));
        let res = svc.oneshot(Request::new(())).await.unwrap();
        let set = res.headers()[SET_COOKIE].to_str().unwrap();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Lax"),
            "{set}"
        );
        let pair = set.split(';').next().unwrap();
        let cookie = format!("other=1; {pair}");
        let (token, set) = seen(&layer, Some(&cookie)).await;
        assert_eq!(token, Some(Token::new(1, 500)));
        assert_eq!(set, None, "nothing recorded, nothing set");
    }

    #[tokio::test]
    async fn malformed_and_forged_cookies_are_ignored() {
        let layer = ConsistencyLayer::new(b"k");
        let forged = TokenSigner::new(b"not the key").sign(&Token::new(1, 9), u64::MAX / 2);
        for cookie in [
            "wd_rw=".to_owned(),
            "wd_rw=garbage".to_owned(),
            format!("wd_rw={forged}"),
            "wd_rw=1-2-3-00000000000000000000000000000000".to_owned(),
        ] {
            assert_eq!(seen(&layer, Some(&cookie)).await.0, None, "{cookie}");
        }
        assert_eq!(seen(&layer, None).await.0, None);
    }

    #[tokio::test]
    async fn only_the_first_cookie_of_the_name_is_verified() {
        let layer = ConsistencyLayer::new(b"a secret every instance shares");
        let signer = TokenSigner::new(b"a secret every instance shares");
        let good = format!("wd_rw={}", signer.sign(&Token::new(1, 500), u64::MAX / 2));
        let later = format!("wd_rw={}", signer.sign(&Token::new(1, 900), u64::MAX / 2));
        // The first one counts; a later one, valid or not, is never looked at.
        let (token, _) = seen(&layer, Some(&format!("{good}; {later}"))).await;
        assert_eq!(token, Some(Token::new(1, 500)));
        // A bogus first cookie hides a valid later one: no token (reads like a first visit).
        let (token, _) = seen(&layer, Some(&format!("wd_rw=bogus; {later}"))).await;
        assert_eq!(token, None);
    }

    #[test]
    fn the_service_and_future_are_send_and_sync() {
        fn both<T: Send + Sync>() {}
        type Svc =
            ConsistencyService<tower::util::BoxCloneSyncService<Request<()>, Response<()>, ()>>;
        both::<Svc>();
        both::<Consistency>();
        both::<ConsistencyLayer>();
    }
}
