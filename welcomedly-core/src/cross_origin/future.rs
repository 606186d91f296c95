//! The response future and body of [`CrossOrigin`](super::CrossOrigin).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http::response::Parts;
use pin_project_lite::pin_project;

pin_project! {
    /// The response future of [`CrossOrigin`](super::CrossOrigin): the inner service's, or the
    /// 403 at once.
    #[project = FutureProj]
    #[allow(missing_docs)] // the variants' fields are documented on the variants
    pub enum ResponseFuture<F> {
        /// Allowed: the inner service answers.
        Inner { #[pin] fut: F },
        /// Refused: the 403 (taken when returned).
        Refused { refusal: Option<(Parts, Bytes)> },
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn inner(fut: F) -> Self {
        Self::Inner { fut }
    }

    pub(super) fn refused(parts: Parts, body: Bytes) -> Self {
        Self::Refused {
            refusal: Some((parts, body)),
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inner { .. } => f.write_str("ResponseFuture::Inner"),
            Self::Refused { .. } => f.write_str("ResponseFuture::Refused"),
        }
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResponseBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FutureProj::Inner { fut } => fut
                .poll(cx)
                .map(|r| r.map(|res| res.map(ResponseBody::inner))),
            FutureProj::Refused { refusal } => match refusal.take() {
                Some((parts, body)) => {
                    Poll::Ready(Ok(Response::from_parts(parts, ResponseBody::own(body))))
                }
                // Polled again after completing: never completes again.
                None => Poll::Pending,
            },
        }
    }
}

/// The response body of [`CrossOrigin`](super::CrossOrigin): the service's own body, or the
/// body of a 403 refusal ([`OrBytes::own`](crate::body::OrBytes::own)).
pub type ResponseBody<B> = crate::body::OrBytes<B>;
