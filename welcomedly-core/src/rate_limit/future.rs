//! The response future of [`RateLimit`](super::RateLimit).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use super::backend::RateLimitBackend;
use super::layer::Shared;
use super::response::ResponseBody;
use super::service::{Admit, Matched, Rejection, Verdict, checks, verdict};

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
        // An asynchronous backend (Redis) is deciding. Boxed: this state is large and only
        // remote backends, whose round trip dwarfs an allocation, reach it.
        Acquiring {
            state: Box<Acquiring<S, ReqB, B>>,
        },
        Calling {
            #[pin]
            fut: S::Future,
            admit: Option<Admit<B>>,
        },
        Rejected {
            rejection: Option<Rejection>,
        },
    }
}

struct Acquiring<S, ReqB, B: RateLimitBackend> {
    fut: B::Future,
    call: Option<(S, Request<ReqB>)>,
    matched: Matched,
    shared: Arc<Shared<B>>,
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

    pub(crate) fn rejected(rejection: Rejection) -> Self {
        Self {
            kind: Kind::Rejected {
                rejection: Some(rejection),
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
                state: Box::new(Acquiring {
                    fut,
                    call: Some((service, req)),
                    matched,
                    shared,
                }),
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
                KindProj::Acquiring { state } => {
                    let result = ready!(Pin::new(&mut state.fut).poll(cx));
                    // `call` is only taken here, right before leaving this state.
                    let Some((mut service, req)) = state.call.take() else {
                        return Poll::Pending;
                    };
                    let verdict = {
                        let checks = checks(&state.shared, &state.matched);
                        verdict(&state.shared, result, &checks)
                    };
                    let next = match verdict {
                        Verdict::Reject(rejection) => Kind::Rejected {
                            rejection: Some(rejection),
                        },
                        Verdict::Admit(admit) => Kind::Calling {
                            fut: service.call(req),
                            admit,
                        },
                    };
                    kind.set(next);
                }
                KindProj::Calling { fut, admit } => {
                    let mut res = ready!(fut.poll(cx))?;
                    if let Some(admit) = admit.take() {
                        admit.finish(&mut res);
                    }
                    return Poll::Ready(Ok(res.map(ResponseBody::inner)));
                }
                KindProj::Rejected { rejection } => {
                    // A future polled again after completing never completes again.
                    let Some(rejection) = rejection.take() else {
                        return Poll::Pending;
                    };
                    let (parts, body) = *rejection;
                    return Poll::Ready(Ok(Response::from_parts(parts, ResponseBody::own(body))));
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
