//! [`FlagGateLayer`]: a route that exists only while its flag is on (a kill switch for routes).

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::response::Parts;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use welcomedly_core::body::OrBytes;
use welcomedly_core::problem::Problem;

use super::RequestFlags;

/// Answers requests whose boolean flag is off (for the request's context, from the
/// [`RequestFlags`] that [`FlagsLayer`](super::FlagsLayer) set) with `404` and a
/// problem+json body, without calling the route. A request without [`RequestFlags`] (the
/// `FlagsLayer` is missing) is treated as off: a gated feature is never exposed by a wiring
/// mistake.
#[derive(Debug, Clone)]
#[must_use]
pub struct FlagGateLayer {
    key: std::sync::Arc<str>,
    status: StatusCode,
}

impl FlagGateLayer {
    /// A gate on boolean flag `key`, answering `404 Not Found` while it is off.
    pub fn new(key: impl Into<std::sync::Arc<str>>) -> Self {
        Self {
            key: key.into(),
            status: StatusCode::NOT_FOUND,
        }
    }

    /// The status answered while the flag is off (for instance `503` for a feature that is
    /// switched off for maintenance rather than hidden).
    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

impl<S> Layer<S> for FlagGateLayer {
    type Service = FlagGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FlagGate {
            inner,
            gate: self.clone(),
        }
    }
}

/// The service of [`FlagGateLayer`].
#[derive(Debug, Clone)]
pub struct FlagGate<S> {
    inner: S,
    gate: FlagGateLayer,
}

impl<S, B, ResB> Service<Request<B>> for FlagGate<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<GateBody<ResB>>;
    type Error = S::Error;
    type Future = GateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let flags = req.extensions().get::<RequestFlags>();
        if let Some(flags) = flags.filter(|f| !f.is_resolved()) {
            // The user is still to be looked up (a lazily loaded session): look it up, then
            // decide. The ready inner service goes with the request, a clone stays.
            let flags = flags.clone();
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            let key = self.gate.key.clone();
            return GateFuture::Resolving {
                fut: Box::pin(async move {
                    flags.resolve().await;
                    flags.is_enabled(&key).then(|| inner.call(req))
                }),
                gate: Some(self.gate.clone()),
            };
        }
        let on = flags.is_some_and(|f| f.is_enabled(&self.gate.key));
        if on {
            GateFuture::Inner {
                fut: self.inner.call(req),
            }
        } else {
            GateFuture::Gated {
                response: Some(gated(self.gate.status, &self.gate.key)),
            }
        }
    }
}

/// The gate's answer while the flag is off: a problem naming the flag (a key of the
/// application's own, never client text).
fn gated(status: StatusCode, key: &str) -> (Parts, Bytes) {
    Problem::new(status)
        .detail(format!(
            "this feature is switched off (flag \"{key}\"): it is not available for you right now"
        ))
        .into_parts()
}

pin_project! {
    /// The response future of [`FlagGate`].
    #[project = GateFutureProj]
    #[allow(missing_docs)] // the variants' fields are documented on the variants
    pub enum GateFuture<F> {
        /// The flag is on: the route answers.
        Inner { #[pin] fut: F },
        /// The flag is off: the gate's answer.
        Gated { response: Option<(Parts, Bytes)> },
        /// The request's user is being looked up: then the route's future, or the gate's
        /// answer (`None`).
        Resolving {
            fut: Pin<Box<dyn Future<Output = Option<F>> + Send>>,
            gate: Option<FlagGateLayer>,
        },
    }
}

impl<F, ResB, E> Future for GateFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<GateBody<ResB>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        if let GateFutureProj::Resolving { fut, gate } = self.as_mut().project() {
            let next = match std::task::ready!(fut.as_mut().poll(cx)) {
                Some(fut) => GateFuture::Inner { fut },
                None => GateFuture::Gated {
                    response: gate.take().map(|g| gated(g.status, &g.key)),
                },
            };
            self.set(next);
        }
        match self.project() {
            GateFutureProj::Inner { fut } => {
                fut.poll(cx).map(|r| r.map(|res| res.map(OrBytes::inner)))
            }
            GateFutureProj::Resolving { .. } => Poll::Pending,
            GateFutureProj::Gated { response } => match response.take() {
                Some((parts, body)) => {
                    Poll::Ready(Ok(Response::from_parts(parts, OrBytes::own(body))))
                }
                // Polled again after completing: never completes again.
                None => Poll::Pending,
            },
        }
    }
}

/// The body of [`FlagGate`]'s responses: the route's, or the gate's problem+json
/// ([`OrBytes::own`]).
pub type GateBody<B> = OrBytes<B>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::FlagsLayer;
    use crate::{Flags, Snapshot};
    use http_body_util::BodyExt;
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    fn svc(
        flags: &Flags,
    ) -> impl Service<Request<()>, Response = Response<GateBody<String>>, Error = Infallible> + Clone
    {
        let route = service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::from("stats")))
        });
        FlagsLayer::new(flags.clone()).layer(FlagGateLayer::new("stats").layer(route))
    }

    fn compile(enabled: bool) -> Snapshot {
        Snapshot::compile_json(
            &format!(
                r#"{{"flags": {{"stats": {{"enabled": {enabled}, "variants": {{"on": true, "off": false}},
                    "fallthrough": {{"variant": "on"}}}}}}}}"#
            ),
            1,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn the_route_answers_while_its_flag_is_on_and_the_gate_once_it_is_killed() {
        let flags = Flags::new(compile(true));
        let res = svc(&flags).oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        flags.replace(compile(false));
        let res = svc(&flags).oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let p: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(p["status"], 404);
        assert!(p["detail"].as_str().unwrap().contains("stats"));
    }

    /// A lazily loaded session's user: the gate looks it up before deciding (the flag
    /// targets alice only).
    #[tokio::test]
    async fn the_gate_looks_up_a_deferred_user_before_deciding() {
        let flags = Flags::new(
            Snapshot::compile_json(
                r#"{"flags": {"stats": {"variants": {"on": true, "off": false},
                    "targets": [{"variant": "on", "values": ["alice"]}],
                    "fallthrough": {"variant": "off"}}}}"#,
                1,
            )
            .unwrap(),
        );
        for (user, status) in [("alice", StatusCode::OK), ("bob", StatusCode::NOT_FOUND)] {
            let mut req = Request::new(());
            req.extensions_mut()
                .insert(welcomedly_core::DeferredUser::new(move || async move {
                    Some(welcomedly_core::UserId::new(user))
                }));
            let res = svc(&flags).oneshot(req).await.unwrap();
            assert_eq!(res.status(), status, "{user}");
        }
    }

    #[tokio::test]
    async fn without_the_flags_layer_the_route_stays_closed() {
        let route = service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        });
        let gate = FlagGateLayer::new("stats")
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .layer(route);
        let res = gate.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
