//! [`DrainLayer`]: counts requests in flight, hands handlers a [`DrainSignal`], asks HTTP/1 clients
//! to leave (`Connection: close`) once draining has started, and cuts what is still running when
//! the drain deadline passes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;

use super::signal::{InFlight, Shared};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CUT_MESSAGE: &str = "the server is shutting down and this request did not finish before \
     its drain deadline; retry it (another instance will answer)\n";

/// The error a response body ends with when the drain deadline cuts it: the client sees a
/// truncated response (the connection is closed without a clean end), never a falsely complete one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DeadlineExceeded;

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "response cut at the drain deadline; a long-lived stream should end at \
             DrainSignal::closing so it finishes cleanly, or raise the drain deadline",
        )
    }
}

impl std::error::Error for DeadlineExceeded {}

/// Applies [`DrainService`]; get one from [`Drain::layer`](super::Drain::layer).
/// [`serve`](super::serve) applies it for you.
#[derive(Debug, Clone)]
#[must_use]
pub struct DrainLayer {
    shared: Arc<Shared>,
}

impl DrainLayer {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl<S> tower::Layer<S> for DrainLayer {
    type Service = DrainService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DrainService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Counts each request as in flight until its response body is dropped, inserts a
/// [`DrainSignal`](super::DrainSignal) into the request extensions, adds `Connection: close` to
/// every HTTP/1 response once draining has started (so a keep-alive client, such as a load
/// balancer's upstream pool, sends its next request elsewhere instead of on a connection this
/// instance will close under it), and at the drain deadline
/// answers a still-pending request with `503` and ends a still-streaming body with
/// [`DeadlineExceeded`].
#[derive(Debug, Clone)]
pub struct DrainService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B, ResBody> tower::Service<Request<B>> for DrainService<S>
where
    S: tower::Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Body,
    ResBody::Data: From<Bytes>,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<DrainBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.shared.signal());
        let guard = InFlight::new(&self.shared);
        // HTTP/2 has no `Connection` header (a GOAWAY does that job).
        let http1 = req.version() <= Version::HTTP_11;
        ResponseFuture {
            http1,
            inner: self.inner.call(req),
            cut: self.shared.cut_notified(),
            shared: Arc::clone(&self.shared),
            guard: Some(guard),
        }
    }
}

pin_project! {
    /// Response future of [`DrainService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        cut: OwnedNotified,
        shared: Arc<Shared>,
        guard: Option<InFlight>,
        http1: bool,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body,
    ResBody::Data: From<Bytes>,
{
    type Output = Result<Response<DrainBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if !this.shared.is_cut() {
            if let Poll::Ready(result) = this.inner.poll(cx) {
                let guard = this.guard.take();
                let shared = Arc::clone(this.shared);
                let close = *this.http1 && shared.is_draining();
                return Poll::Ready(result.map(|mut res| {
                    if close {
                        // Checked when the response is ready, not when the request came in: a
                        // request that started before the signal and ends during the drain must
                        // still release its connection.
                        res.headers_mut()
                            .insert(CONNECTION, HeaderValue::from_static("close"));
                    }
                    res.map(|body| DrainBody::new(body, shared, guard))
                }));
            }
            if this.cut.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        // The deadline passed before the handler answered: the handler is dropped with this
        // future, and the client learns to retry elsewhere.
        this.guard.take();
        Poll::Ready(Ok(cut_response()))
    }
}

fn cut_response<B>() -> Response<DrainBody<B>> {
    let mut res = Response::new(DrainBody {
        kind: Kind::Message {
            text: Some(Bytes::from_static(CUT_MESSAGE.as_bytes())),
        },
    });
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = res.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    res
}

pin_project! {
    /// Response body of [`DrainService`]: the inner body, ended with [`DeadlineExceeded`] if it is
    /// still streaming at the drain deadline.
    pub struct DrainBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
            #[pin]
            cut: OwnedNotified,
            shared: Arc<Shared>,
            // Held until the body is dropped: a stream is in flight as long as it is open.
            guard: Option<InFlight>,
        },
        Message {
            text: Option<Bytes>,
        },
    }
}

impl<B> DrainBody<B> {
    fn new(body: B, shared: Arc<Shared>, guard: Option<InFlight>) -> Self {
        Self {
            kind: Kind::Inner {
                body,
                cut: shared.cut_notified(),
                shared,
                guard,
            },
        }
    }
}

impl<B> fmt::Debug for DrainBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainBody").finish_non_exhaustive()
    }
}

impl<B> Body for DrainBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner {
                body,
                mut cut,
                shared,
                ..
            } => {
                // The flag first: an endless stream is always ready, so waiting for the inner
                // body to be pending before looking at the cut would never see it.
                if shared.is_cut() {
                    return Poll::Ready(Some(Err(DeadlineExceeded.into())));
                }
                if let Poll::Ready(frame) = body.poll_frame(cx) {
                    return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
                }
                ready!(cut.as_mut().poll(cx));
                Poll::Ready(Some(Err(DeadlineExceeded.into())))
            }
            KindProj::Message { text } => {
                Poll::Ready(text.take().map(|t| Ok(Frame::data(B::Data::from(t)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body, .. } => body.is_end_stream(),
            Kind::Message { text } => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body, .. } => body.size_hint(),
            Kind::Message { text } => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use std::convert::Infallible;
    use std::time::Duration;

    use http_body_util::{BodyExt as _, Full};
    use tower::{Layer as _, ServiceExt as _};

    use super::*;
    use crate::drain::{DrainPhase, DrainSignal};

    /// A body that never yields a frame and never ends: an SSE stream with nothing to say.
    struct Silent;

    impl Body for Silent {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_body_counts_as_in_flight_until_the_deadline_cuts_it() {
        let shared = Shared::new();
        let service = DrainLayer::new(Arc::clone(&shared)).layer(tower::service_fn(
            |_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Silent)) },
        ));

        let res = service.oneshot(Request::new(())).await.unwrap();
        assert_eq!(shared.in_flight(), 1, "the response body is still open");
        // Pinned: the body holds an intrusive waiter (`OwnedNotified`), so it is `!Unpin`.
        let mut body = Box::pin(res.into_body());

        let cutter = Arc::clone(&shared);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cutter.enter(DrainPhase::Deadline);
        });
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.downcast_ref::<DeadlineExceeded>().is_some(), "{err}");
        drop(body);
        assert_eq!(shared.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_pending_at_the_deadline_is_answered_503() {
        let shared = Shared::new();
        let service = DrainLayer::new(Arc::clone(&shared)).layer(tower::service_fn(
            |_req: Request<()>| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"late"))))
            },
        ));
        let cutter = Arc::clone(&shared);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cutter.enter(DrainPhase::Deadline);
        });

        let res = service.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[CONNECTION], "close");
        assert_eq!(
            shared.in_flight(),
            0,
            "the dropped handler is no longer in flight"
        );
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, CUT_MESSAGE.as_bytes());
    }

    #[tokio::test]
    async fn handlers_find_the_drain_signal_and_finished_bodies_pass_through() {
        let shared = Shared::new();
        let service = DrainLayer::new(Arc::clone(&shared)).layer(tower::service_fn(
            |req: Request<()>| async move {
                let signal = req.extensions().get::<DrainSignal>().cloned().unwrap();
                let text = format!("{:?}", signal.phase());
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
            },
        ));
        shared.enter(DrainPhase::Draining);

        let res = service.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "Draining");
        assert_eq!(shared.in_flight(), 0);
    }

    #[tokio::test]
    async fn responses_ask_http1_clients_to_close_once_draining() {
        let shared = Shared::new();
        let service = DrainLayer::new(Arc::clone(&shared)).layer(tower::service_fn(
            |_req: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            },
        ));
        let res = service.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.headers().get(CONNECTION), None, "not draining yet");

        shared.enter(DrainPhase::Draining);
        let res = service.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.headers()[CONNECTION], "close");
        let mut h2 = Request::new(());
        *h2.version_mut() = Version::HTTP_2;
        let res = service.oneshot(h2).await.unwrap();
        assert_eq!(
            res.headers().get(CONNECTION),
            None,
            "HTTP/2 has no Connection header"
        );
    }

    #[test]
    fn layer_service_future_and_body_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<DrainLayer>();
        send_sync::<
            DrainService<
                tower::util::BoxCloneSyncService<Request<()>, Response<Full<Bytes>>, Infallible>,
            >,
        >();
        send::<ResponseFuture<std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>>>();
        send::<DrainBody<Full<Bytes>>>();
        send_sync::<DrainSignal>();
        send_sync::<super::super::Drain>();
        send_sync::<super::super::ListenConfig>();
    }
}
