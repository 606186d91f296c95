//! [`CrossOrigin`]: the service of [`CrossOriginLayer`](super::CrossOriginLayer).

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

use super::future::{ResponseBody, ResponseFuture};
use super::layer::Shared;

/// Answers refused requests with a 403 problem+json without calling the inner service; passes
/// the others through untouched.
#[derive(Debug, Clone)]
pub struct CrossOrigin<S> {
    pub(super) inner: S,
    pub(super) shared: Arc<Shared>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for CrossOrigin<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match self
            .shared
            .rules
            .check(req.method(), req.uri(), req.headers())
        {
            Ok(()) => ResponseFuture::inner(self.inner.call(req)),
            Err(refusal) => {
                let (parts, body) = self.shared.refused(refusal).into_parts();
                ResponseFuture::refused(parts, body)
            }
        }
    }
}
