//! [`SessionLayer`], its service and response future, and the response body that can carry a
//! 503 when the changes could not be written.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::SET_COOKIE;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::config::SessionConfig;
use super::cookie::{CookieCodec, Presented};
use super::handle::{CookieChange, Counters, Finish, Session, SessionStats, Shared};
use super::store::SessionStore;
use crate::Error;
use welcomedly_core::DeferredUser;

/// Puts a [`Session`] in every request's extensions and, when the handler changed it, writes
/// the changes and sets the cookie on the response. See the [module docs](super).
#[derive(Debug, Clone)]
#[must_use]
pub struct SessionLayer {
    pub(super) shared: Arc<Shared>,
}

impl SessionLayer {
    /// A layer over `store` with `config`'s cookie and expiry settings.
    ///
    /// # Errors
    ///
    /// An invalid setting (cookie name, path or domain; a signing key under 16 bytes; a zero
    /// timeout), with what to use instead.
    pub fn new(store: impl Into<SessionStore>, config: SessionConfig) -> Result<Self, Error> {
        let codec = CookieCodec::new(&config)?;
        if config.idle_timeout.is_zero() || config.absolute_timeout.is_zero() {
            return Err(Error::invalid(
                "a session timeout is zero: every session would end at once; use minutes for the idle timeout and hours for the absolute one (defaults 30 min, 12 h)",
            ));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                store: store.into(),
                codec,
                idle: config.idle_timeout,
                absolute: config.absolute_timeout,
                max_per_user: config.max_sessions_per_user.max(1),
                eager: config.load_eagerly,
                counters: Counters::default(),
            }),
        })
    }

    /// The counters since the layer was built (cookies refused, unknown sessions, loads,
    /// writes).
    pub fn stats(&self) -> SessionStats {
        self.shared.counters.snapshot()
    }

    /// The store this layer uses.
    pub fn store(&self) -> &SessionStore {
        &self.shared.store
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`SessionLayer`].
#[derive(Debug, Clone)]
pub struct SessionService<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for SessionService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<SessionBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let shared = &self.shared;
        let (presented, cookie) = match shared.codec.find(req.headers()) {
            Presented::None => (None, CookieChange::Keep),
            Presented::Id(id) => (Some(id), CookieChange::Keep),
            Presented::Malformed => {
                shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("malformed session cookie: treated as no session");
                (None, CookieChange::Remove)
            }
            Presented::Ambiguous => {
                shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "several session cookies: treated as no session, none deleted (a removal would only hit this host's own)"
                );
                (None, CookieChange::Keep)
            }
            Presented::Forged => {
                shared.counters.forged.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("session cookie with a bad signature: treated as no session");
                (None, CookieChange::Remove)
            }
        };
        let session = Session::new(shared.clone(), presented, cookie);
        req.extensions_mut().insert(session.clone());
        if shared.eager && presented.is_some() {
            // Load before the inner service runs, so the layers inside see the user.
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            return ResponseFuture::Boxed {
                fut: Box::pin(async move {
                    if let Some(user) = session.preload().await {
                        req.extensions_mut().insert(user);
                    }
                    let res = inner.call(req).await?;
                    Ok(finish(session, res).await)
                }),
            };
        }
        if presented.is_some() {
            // Lazy: layers inside that need the user only sometimes (feature flags) look it
            // up when they do; a request that never asks costs no store call.
            let handle = session.clone();
            req.extensions_mut().insert(DeferredUser::new(move || {
                let handle = handle.clone();
                async move { handle.preload().await }
            }));
        }
        ResponseFuture::Inner {
            fut: self.inner.call(req),
            session: Some(session),
        }
    }
}

async fn finish<B>(session: Session, res: Response<B>) -> Response<SessionBody<B>> {
    match session.finish().await {
        Ok(cookie) => with_cookie(res, cookie),
        Err(e) => {
            tracing::debug!(error = %e, "the session changes could not be written: answering 503");
            let (parts, body) = e.to_response::<Bytes>().into_parts();
            Response::from_parts(parts, SessionBody::own(body))
        }
    }
}

fn with_cookie<B>(res: Response<B>, cookie: Option<http::HeaderValue>) -> Response<SessionBody<B>> {
    let mut res = res.map(SessionBody::inner);
    if let Some(c) = cookie {
        res.headers_mut().append(SET_COOKIE, c);
    }
    res
}

pin_project! {
    /// The response future of [`SessionService`]: the inner future, then, only when the
    /// session changed, a boxed write.
    #[project = FutureProj]
    #[allow(missing_docs)] // variants are internal states
    pub enum ResponseFuture<F, B, E> {
        /// The inner service is running.
        Inner { #[pin] fut: F, session: Option<Session> },
        /// Eager load, or writing the changes.
        Boxed { fut: BoxFuture<Result<Response<SessionBody<B>>, E>> },
    }
}

impl<F, B, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Send + 'static,
    E: Send + 'static,
{
    type Output = Result<Response<SessionBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                FutureProj::Inner { fut, session } => {
                    let res = ready!(fut.poll(cx))?;
                    let Some(session) = session.take() else {
                        return Poll::Ready(Ok(with_cookie(res, None)));
                    };
                    match session.try_finish() {
                        Finish::Done(cookie) => return Poll::Ready(Ok(with_cookie(res, cookie))),
                        Finish::Write => {
                            let fut: BoxFuture<Result<Response<SessionBody<B>>, E>> =
                                Box::pin(async move { Ok(finish(session, res).await) });
                            self.set(ResponseFuture::Boxed { fut });
                        }
                    }
                }
                FutureProj::Boxed { fut } => return fut.as_mut().poll(cx),
            }
        }
    }
}

/// The response body of [`SessionService`]: the inner service's, or a 503 problem when the
/// session changes could not be written ([`OrBytes::own`](welcomedly_core::body::OrBytes::own)).
pub type SessionBody<B> = welcomedly_core::body::OrBytes<B>;
