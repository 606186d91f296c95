//! The response future and body of [`CrossOrigin`](super::CrossOrigin).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http::response::Parts;
use http_body::{Body, Frame, SizeHint};
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
                .map(|r| r.map(|res| res.map(|body| ResponseBody::Inner { body }))),
            FutureProj::Refused { refusal } => match refusal.take() {
                Some((parts, body)) => Poll::Ready(Ok(Response::from_parts(
                    parts,
                    ResponseBody::Refused { body: Some(body) },
                ))),
                // Polled again after completing: never completes again.
                None => Poll::Pending,
            },
        }
    }
}

pin_project! {
    /// The body of [`CrossOrigin`](super::CrossOrigin)'s responses: the inner service's, or the
    /// refusal's problem+json.
    #[project = BodyProj]
    #[allow(missing_docs)] // the variants' fields are documented on the variants
    pub enum ResponseBody<B> {
        /// The inner service's body.
        Inner { #[pin] body: B },
        /// The refusal's problem+json body (taken when sent).
        Refused { body: Option<Bytes> },
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inner { body } => f.debug_tuple("Inner").field(body).finish(),
            Self::Refused { .. } => f.write_str("Refused"),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            BodyProj::Inner { body } => body.poll_frame(cx),
            BodyProj::Refused { body } => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Inner { body } => body.is_end_stream(),
            Self::Refused { body } => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Inner { body } => body.size_hint(),
            Self::Refused { body } => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
