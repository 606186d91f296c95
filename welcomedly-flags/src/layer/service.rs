//! [`FlagsLayer`] and its service: pin a snapshot, build the context, set [`RequestFlags`].

use std::fmt;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use std::future::Future;
use std::pin::Pin;
use std::task::ready;
use std::time::Instant;

use http::{HeaderName, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::request::{Attributes, RequestFlags, RequestInfo, cut};
use crate::Flags;
use crate::rollout::attribution::{Attribution, Recording};
use welcomedly_core::DeferredUser;

type AttributeFn = dyn Fn(&RequestInfo<'_>, &mut Attributes) + Send + Sync;

/// Sets a [`RequestFlags`] extension on every request: the current snapshot (loaded once) and
/// the request's context. See the [module docs](super).
#[derive(Clone)]
#[must_use]
pub struct FlagsLayer {
    shared: Arc<Shared>,
}

struct Shared {
    flags: Flags,
    key_header: Option<HeaderName>,
    attributes: Option<Arc<AttributeFn>>,
    attribution: Option<Attribution>,
}

impl FlagsLayer {
    /// A layer over `flags`, keying requests by welcomedly-core's `UserId` extension (requests
    /// without one are anonymous).
    pub fn new(flags: Flags) -> Self {
        Self {
            shared: Arc::new(Shared {
                flags,
                key_header: None,
                attributes: None,
                attribution: None,
            }),
        }
    }

    /// Takes the targeting key from header `name` when the request has no `UserId` (for
    /// instance a device id a client sends). Client-chosen text: at most
    /// [`MAX_ATTR_LEN`](super::MAX_ATTR_LEN) bytes are used.
    ///
    /// Off by default, and not an identity: any caller can name any key and so pick any
    /// targeted variant. Never let a flag keyed this way open a route or data (a
    /// [`FlagGateLayer`](super::FlagGateLayer) in front of something private); use it for
    /// anonymous experiments, or behind an explicit development setting.
    pub fn key_header(self, name: HeaderName) -> Self {
        self.update(|s| s.key_header = Some(name))
    }

    /// Fills each request's attributes (country, plan, app version, …) from its head.
    pub fn attributes(
        self,
        f: impl Fn(&RequestInfo<'_>, &mut Attributes) + Send + Sync + 'static,
    ) -> Self {
        self.update(|s| s.attributes = Some(Arc::new(f)))
    }

    /// Counts each request that evaluated a guarded flag (through [`RequestFlags`]) for the arm
    /// it was served, with its status and latency: the input of a guarded
    /// [rollout](crate::rollout). Requests pay nothing while no flag is guarded.
    pub fn attribution(self, attribution: Attribution) -> Self {
        self.update(|s| s.attribution = Some(attribution))
    }

    fn update(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = match Arc::try_unwrap(self.shared) {
            Ok(shared) => shared,
            Err(arc) => Shared {
                flags: arc.flags.clone(),
                key_header: arc.key_header.clone(),
                attributes: arc.attributes.clone(),
                attribution: arc.attribution.clone(),
            },
        };
        f(&mut shared);
        Self {
            shared: Arc::new(shared),
        }
    }
}

impl fmt::Debug for FlagsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlagsLayer")
            .field("version", &self.shared.flags.version())
            .field("key_header", &self.shared.key_header)
            .field("attributes", &self.shared.attributes.is_some())
            .finish()
    }
}

impl<S> Layer<S> for FlagsLayer {
    type Service = FlagsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FlagsService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`FlagsLayer`].
#[derive(Clone)]
pub struct FlagsService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for FlagsService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlagsService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResB> Service<Request<B>> for FlagsService<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        let user = user_key(&req);
        // No user yet: a lazily loaded session says where to look it up, when a flag is
        // evaluated (RequestFlags::resolve), not now.
        let deferred = match user {
            Some(_) => None,
            None => req.extensions().get::<DeferredUser>().cloned(),
        };
        let fallback = shared.key_header.as_ref().and_then(|name| {
            let value = req.headers().get(name)?.to_str().ok()?.trim();
            (!value.is_empty()).then(|| cut(value).into())
        });
        let mut attributes = Attributes::default();
        if let Some(f) = &shared.attributes {
            let info = RequestInfo {
                method: req.method(),
                uri: req.uri(),
                headers: req.headers(),
                extensions: req.extensions(),
            };
            f(&info, &mut attributes);
        }
        let recording = shared
            .attribution
            .as_ref()
            .and_then(Attribution::pin)
            .map(Recording::new);
        let flags = RequestFlags::new(
            shared.flags.snapshot(),
            user,
            deferred,
            fallback,
            attributes,
            recording,
        );
        let record = flags
            .is_recording()
            .then(|| (flags.clone(), Instant::now()));
        req.extensions_mut().insert(flags);
        ResponseFuture {
            inner: self.inner.call(req),
            record,
        }
    }
}

pin_project! {
    /// The response future of [`FlagsService`]: the inner future, and the request's record
    /// when a flag is guarded.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        record: Option<(RequestFlags, Instant)>,
    }
}

impl<F: fmt::Debug> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        if let Some((flags, started)) = this.record.take() {
            let status = out.as_ref().ok().map(|r| r.status().as_u16());
            flags.finish(status, started.elapsed());
        }
        Poll::Ready(out)
    }
}

fn user_key<B>(req: &Request<B>) -> Option<Box<str>> {
    req.extensions()
        .get::<welcomedly_core::UserId>()
        .map(|u| cut(&u.0).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Snapshot;
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    fn flags() -> Flags {
        Flags::new(
            Snapshot::compile_json(
                r#"{"flags": {
                    "beta": {"variants": {"on": true, "off": false},
                             "targets": [{"variant": "on", "values": ["alice"]}],
                             "rules": [{"clauses": [{"attribute": "country", "op": "in", "values": ["DE"]}],
                                        "serve": {"variant": "on"}}],
                             "fallthrough": {"variant": "off"}},
                    "theme": {"variants": {"dark": "dark", "light": "light"},
                              "fallthrough": {"variant": "light"}}}}"#,
                7,
            )
            .unwrap(),
        )
    }

    async fn seen(layer: FlagsLayer, req: Request<()>) -> RequestFlags {
        let svc = layer.layer(service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(http::Response::new(
                req.extensions().get::<RequestFlags>().cloned(),
            ))
        }));
        svc.oneshot(req).await.unwrap().into_body().unwrap()
    }

    #[tokio::test]
    async fn the_user_id_is_the_key_and_attributes_come_from_the_closure() {
        let layer = FlagsLayer::new(flags())
            .key_header(HeaderName::from_static("x-device"))
            .attributes(|req, attrs| {
                if let Some(c) = req.headers.get("x-country").and_then(|v| v.to_str().ok()) {
                    attrs.insert("country", c);
                }
            });
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(welcomedly_core::UserId::new("alice"));
        req.headers_mut()
            .insert("x-device", "dev-1".parse().unwrap());
        let f = seen(layer.clone(), req).await;
        assert_eq!(f.key(), Some("alice"));
        assert!(f.is_enabled("beta"));
        assert_eq!(f.snapshot().version(), 7);

        let mut req = Request::new(());
        req.headers_mut()
            .insert("x-device", "dev-1".parse().unwrap());
        req.headers_mut().insert("x-country", "DE".parse().unwrap());
        let f = seen(layer.clone(), req).await;
        assert_eq!(f.key(), Some("dev-1"));
        assert!(f.is_enabled("beta"), "the country rule");
        assert_eq!(f.string_value("theme", "x").value, "light");

        let f = seen(layer, Request::new(())).await;
        assert_eq!(f.key(), None);
        assert!(!f.is_enabled("beta"));
        let all = f.evaluate_all();
        assert_eq!(all["beta"]["value"], false);
        assert_eq!(all["theme"]["variant"], "light");
        assert_eq!(all.as_object().unwrap().len(), 2);
    }

    /// A user that costs a lookup: counted, so a test can say none was made.
    fn deferred(user: &'static str, lookups: &Arc<std::sync::atomic::AtomicUsize>) -> DeferredUser {
        let lookups = lookups.clone();
        DeferredUser::new(move || {
            lookups.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Some(welcomedly_core::UserId::new(user)) }
        })
    }

    #[tokio::test]
    async fn a_deferred_user_is_looked_up_once_and_only_when_a_flag_is_evaluated() {
        let lookups = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let layer = FlagsLayer::new(flags()).key_header(HeaderName::from_static("x-device"));
        let mut req = Request::new(());
        req.extensions_mut().insert(deferred("alice", &lookups));
        req.headers_mut()
            .insert("x-device", "dev-1".parse().unwrap());
        let f = seen(layer.clone(), req).await;
        // The layer looked nothing up; until resolved, the context is the one without the user.
        assert_eq!(lookups.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(!f.is_resolved());
        assert_eq!(f.key(), Some("dev-1"));
        f.resolve().await;
        f.resolve().await;
        assert_eq!(lookups.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(f.key(), Some("alice"));
        assert!(f.is_enabled("beta"));

        // A known user wins: no lookup at all.
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(welcomedly_core::UserId::new("bob"));
        req.extensions_mut().insert(deferred("alice", &lookups));
        let f = seen(layer, req).await;
        assert!(f.is_resolved());
        f.resolve().await;
        assert_eq!(f.key(), Some("bob"));
        assert_eq!(lookups.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_request_keeps_its_snapshot_while_flags_change() {
        let flags = flags();
        let f = seen(FlagsLayer::new(flags.clone()), Request::new(())).await;
        flags.replace(Snapshot::empty());
        assert_eq!(f.snapshot().version(), 7);
        assert_eq!(f.evaluate_all().as_object().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn client_text_is_capped() {
        let layer = FlagsLayer::new(flags()).key_header(HeaderName::from_static("x-device"));
        let mut req = Request::new(());
        req.headers_mut()
            .insert("x-device", "d".repeat(10_000).parse().unwrap());
        let f = seen(layer, req).await;
        assert_eq!(
            f.key().map(str::len),
            Some(super::super::request::MAX_ATTR_LEN)
        );
    }
}
