//! [`OrBytes`]: the response body of a middleware that either passes the inner service's
//! response on or answers by itself with a short body it built (a problem+json rejection).
//!
//! The rate limiter (429), the cross-origin protection (403), the session layer (503) and
//! welcomedly-flags' gate (404) all answer that way; one body type keeps them from boxing on
//! the hot path.
//!
//! ```
//! use bytes::Bytes;
//! use http_body::Body;
//! use welcomedly_core::body::OrBytes;
//!
//! let own: OrBytes<String> = OrBytes::own(Bytes::from_static(b"{\"status\":429}"));
//! assert_eq!(own.size_hint().exact(), Some(14));
//! let inner = OrBytes::inner(String::from("hello"));
//! assert!(!inner.is_end_stream());
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The inner service's body, or a body the middleware answered with itself. The variants
    /// are private (as tower-http's `limit::ResponseBody`): build one with [`inner`](Self::inner)
    /// or [`own`](Self::own).
    #[derive(Debug)]
    pub struct OrBytes<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        // Taken when sent.
        Own { body: Option<Bytes> },
    }
}

impl<B> OrBytes<B> {
    /// The inner service's `body`, passed on as it is.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A body of the middleware's own (a problem+json rejection).
    pub fn own(body: Bytes) -> Self {
        Self {
            kind: Kind::Own { body: Some(body) },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for OrBytes<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Own { body } => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Own { body } => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Own { body } => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
