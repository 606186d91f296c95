//! [`SessionError`]: why a session operation failed, and the HTTP answer it maps to.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::CACHE_CONTROL;
use http::{HeaderValue, Response, StatusCode};
use welcomedly_core::problem::Problem;

/// A session operation failed. Opaque: ask with the `is_*` predicates, answer the client with
/// [`to_response`](Self::to_response) (or, with the `axum` feature, `?` in a handler):
/// a store that is down or slower than its budget is a `503` with `Retry-After`, never a silent
/// logout.
#[derive(Debug)]
pub struct SessionError {
    kind: Kind,
    message: String,
    retry_after: Duration,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unavailable,
    Value,
    NoLayer,
}

impl SessionError {
    pub(crate) fn unavailable(
        message: impl Into<String>,
        retry_after: Duration,
        source: Option<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self {
            kind: Kind::Unavailable,
            message: message.into(),
            retry_after: retry_after.max(Duration::from_secs(1)),
            source,
        }
    }

    pub(crate) fn value(key: &str, source: serde_json::Error) -> Self {
        Self {
            kind: Kind::Value,
            message: format!(
                "the session value {key:?} does not (de)serialize as the requested type: read it with the type it was written with, or remove it"
            ),
            retry_after: Duration::ZERO,
            source: Some(Box::new(source)),
        }
    }

    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn no_layer() -> Self {
        Self {
            kind: Kind::NoLayer,
            message:
                "no session in the request extensions: install SessionLayer outside this route"
                    .to_owned(),
            retry_after: Duration::ZERO,
            source: None,
        }
    }

    /// Whether the session store is down, slower than its budget, or full: retry after
    /// [`retry_after`](Self::retry_after); nothing was lost.
    pub fn is_unavailable(&self) -> bool {
        self.kind == Kind::Unavailable
    }

    /// Whether a value did not serialize or deserialize as the type asked for (a bug in the
    /// application, or data written by another version of it).
    pub fn is_value(&self) -> bool {
        self.kind == Kind::Value
    }

    /// Whether the request did not pass through a `SessionLayer` (a wiring bug).
    pub fn is_no_layer(&self) -> bool {
        self.kind == Kind::NoLayer
    }

    /// How long a client should wait before retrying (at least 1 s when unavailable, zero
    /// otherwise).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// `503 Service Unavailable` when the store is unavailable, `500` otherwise.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Value | Kind::NoLayer => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `application/problem+json` answer (with `Retry-After` on a 503). The body never
    /// holds the source's text (it may name hosts); the log does.
    pub fn to_response<B: From<Bytes>>(&self) -> Response<B> {
        let status = self.status();
        let detail = match self.kind {
            Kind::Unavailable => {
                "The session store is unavailable: retry after the number of seconds in the Retry-After header. You are still logged in."
            }
            Kind::Value | Kind::NoLayer => {
                "The session could not be used because of a server error."
            }
        };
        let problem = Problem::new(status)
            .detail(detail)
            .header(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.kind == Kind::Unavailable {
            problem.retry_after(self.retry_after).into_response()
        } else {
            problem.into_response()
        }
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for SessionError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_TYPE, RETRY_AFTER};

    #[test]
    fn unavailable_is_a_503_problem_with_retry_after() {
        let e = SessionError::unavailable("down", Duration::from_millis(1500), None);
        let res: Response<Bytes> = e.to_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[RETRY_AFTER], "2");
        assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
        let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(body["status"], 503);
        let v = SessionError::value("k", serde_json::from_str::<u8>("x").unwrap_err());
        assert!(v.is_value() && v.source().is_some());
        assert_eq!(v.to_response::<Bytes>().status(), 500);
    }
}
