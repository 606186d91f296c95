//! The response future of [`RateLimit`](super::RateLimit).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use super::backend::RateLimitBackend;
use super::layer::Shared;
use super::response::ResponseBody;
use super::service::{Admit, Matched, Verdict, verdict};

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit).
    pub struct ResponseFuture<S, ReqB, B>
    where
        S: Service<Request<ReqB>>,
        B: RateLimitBackend,
    {
        #[pin]
        kind: Kind<S, ReqB, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, ReqB, B>
    where
        S: Service<Request<ReqB>>,
        B: RateLimitBackend,
    {
        // An asynchronous backend (Redis) is deciding.
        Acquiring {
            fut: B::Future,
            call: Option<(S, Request<ReqB>)>,
            matched: Matched,
            shared: Arc<Shared<B>>,
        },
        Calling {
            #[pin]
            fut: S::Future,
            admit: Option<Admit<B>>,
        },
        Rejected {
            rejection: Option<(http::response::Parts, Bytes)>,
        },
    }
}

impl<S, ReqB, B> ResponseFuture<S, ReqB, B>
where
    S: Service<Request<ReqB>>,
    B: RateLimitBackend,
{
    pub(crate) fn calling(fut: S::Future, admit: Option<Admit<B>>) -> Self {
        Self {
            kind: Kind::Calling { fut, admit },
        }
    }

    pub(crate) fn rejected(parts: http::response::Parts, body: Bytes) -> Self {
        Self {
            kind: Kind::Rejected {
                rejection: Some((parts, body)),
            },
        }
    }

    pub(crate) fn acquiring(
        fut: B::Future,
        service: S,
        req: Request<ReqB>,
        matched: Matched,
        shared: Arc<Shared<B>>,
    ) -> Self {
        Self {
            kind: Kind::Acquiring {
                fut,
                call: Some((service, req)),
                matched,
                shared,
            },
        }
    }
}

impl<S, ReqB, ResB, B> Future for ResponseFuture<S, ReqB, B>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    B: RateLimitBackend,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            match kind.as_mut().project() {
                KindProj::Acquiring {
                    fut,
                    call,
                    matched,
                    shared,
                } => {
                    let result = ready!(Pin::new(fut).poll(cx));
                    // `call` is only taken here, right before leaving this state.
                    let Some((mut service, req)) = call.take() else {
                        return Poll::Pending;
                    };
                    let next = match verdict(shared, result, std::mem::take(matched)) {
                        Verdict::Reject(parts, body) => Kind::Rejected {
                            rejection: Some((parts, body)),
                        },
                        Verdict::Admit(admit) => Kind::Calling {
                            fut: service.call(req),
                            admit,
                        },
                    };
                    kind.set(next);
                }
                KindProj::Calling { fut, admit } => {
                    let res = ready!(fut.poll(cx))?;
                    let res = match admit.take() {
                        Some(admit) => admit.finish(res),
                        None => res,
                    };
                    return Poll::Ready(Ok(res.map(ResponseBody::inner)));
                }
                KindProj::Rejected { rejection } => {
                    // A future polled again after completing never completes again.
                    let Some((parts, body)) = rejection.take() else {
                        return Poll::Pending;
                    };
                    return Poll::Ready(Ok(Response::from_parts(
                        parts,
                        ResponseBody::rejection(body),
                    )));
                }
            }
        }
    }
}

impl<S, ReqB, B> std::fmt::Debug for ResponseFuture<S, ReqB, B>
where
    S: Service<Request<ReqB>>,
    B: RateLimitBackend,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
