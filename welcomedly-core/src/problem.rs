//! [`Problem`]: every error response of Welcomedly's layers and routers is an RFC 9457 problem
//! details object, `Content-Type: application/problem+json`, built here.
//!
//! The members `type` (`about:blank` unless set), `title` (the status's reason phrase unless
//! set), `status`, `detail` and `instance`, then any extension members. The body is written by
//! serde_json, so quotes, backslashes and control characters in a detail or an extension value
//! are escaped: client text cannot break out of a string. Headers that go with the problem
//! (`Retry-After`, `Cache-Control`, …) ride on it to the response.
//!
//! ```
//! use std::time::Duration;
//! use http::{Response, StatusCode};
//! use welcomedly_core::problem::Problem;
//!
//! let res: Response<bytes::Bytes> = Problem::new(StatusCode::SERVICE_UNAVAILABLE)
//!     .detail("the database is unavailable: retry after the number of seconds in Retry-After")
//!     .extension("check", "db")
//!     .retry_after(Duration::from_millis(1500))
//!     .into_response();
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! assert_eq!(res.headers()["retry-after"], "2");
//! let body: serde_json::Value = serde_json::from_slice(res.body())?;
//! assert_eq!(body["type"], "about:blank");
//! assert_eq!(body["title"], "Service Unavailable");
//! assert_eq!(body["status"], 503);
//! assert_eq!(body["check"], "db");
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use serde_json::{Map, Value};

/// The media type of a problem details object (RFC 9457, section 3).
pub static APPLICATION_PROBLEM_JSON: HeaderValue =
    HeaderValue::from_static("application/problem+json");

/// The members the RFC defines; an extension member of one of these names is ignored.
const STANDARD_MEMBERS: [&str; 5] = ["type", "title", "status", "detail", "instance"];

/// An RFC 9457 problem details response, built member by member. Cheap to build; the body is
/// serialized when the response is made ([`into_response`](Self::into_response)) or asked for
/// ([`body`](Self::body)).
#[derive(Debug, Clone)]
#[must_use]
pub struct Problem {
    status: StatusCode,
    type_uri: Cow<'static, str>,
    title: Option<Cow<'static, str>>,
    detail: Option<Cow<'static, str>>,
    instance: Option<Cow<'static, str>>,
    extensions: Map<String, Value>,
    headers: HeaderMap,
}

impl Problem {
    /// A problem answered with `status`: `type` `about:blank`, `title` the status's reason
    /// phrase (`"Error"` for a status without one), no detail.
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            type_uri: Cow::Borrowed("about:blank"),
            title: None,
            detail: None,
            instance: None,
            extensions: Map::new(),
            headers: HeaderMap::new(),
        }
    }

    /// The `type` member: a URI naming the kind of problem (documentation for it, ideally).
    /// Default `about:blank`, which means "nothing more than the status".
    pub fn type_uri(mut self, uri: impl Into<Cow<'static, str>>) -> Self {
        self.type_uri = uri.into();
        self
    }

    /// The `title` member: a short summary, the same for every occurrence of the type. Default
    /// the status's reason phrase, as RFC 9457 asks for `about:blank`.
    pub fn title(mut self, title: impl Into<Cow<'static, str>>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// The `detail` member: what went wrong this time and what the client can do about it.
    /// Written for the client: never a secret, a host name or a source error's text.
    pub fn detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The `instance` member: a URI naming this occurrence (for instance a request id's URN).
    pub fn instance(mut self, instance: impl Into<Cow<'static, str>>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// An extension member `name` (a later one of the same name replaces it). A name of a
    /// member the RFC defines (`type`, `title`, `status`, `detail`, `instance`) is ignored: set
    /// those with their own methods.
    pub fn extension(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        let name = name.into();
        if !STANDARD_MEMBERS.contains(&name.as_str()) {
            self.extensions.insert(name, value.into());
        }
        self
    }

    /// A header sent with the problem (it replaces one of the same name set before, and is
    /// never allowed to replace `Content-Type`).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        if name != CONTENT_TYPE {
            self.headers.insert(name, value);
        }
        self
    }

    /// `Retry-After` in whole seconds, rounded up and at least 1: a client that waits that
    /// long is not early, and never retries at once.
    pub fn retry_after(self, wait: Duration) -> Self {
        let secs = wait
            .as_secs()
            .saturating_add(u64::from(wait.subsec_nanos() > 0))
            .max(1);
        self.header(RETRY_AFTER, HeaderValue::from(secs))
    }

    /// The status answered.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `detail` member, if set.
    pub fn detail_text(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The `application/problem+json` body: the standard members, then the extensions.
    pub fn body(&self) -> Bytes {
        let mut map = Map::with_capacity(5 + self.extensions.len());
        map.insert("type".into(), Value::from(self.type_uri.as_ref()));
        let title = match &self.title {
            Some(title) => title.as_ref(),
            None => self.status.canonical_reason().unwrap_or("Error"),
        };
        map.insert("title".into(), Value::from(title));
        map.insert("status".into(), Value::from(self.status.as_u16()));
        if let Some(detail) = &self.detail {
            map.insert("detail".into(), Value::from(detail.as_ref()));
        }
        if let Some(instance) = &self.instance {
            map.insert("instance".into(), Value::from(instance.as_ref()));
        }
        for (name, value) in &self.extensions {
            map.insert(name.clone(), value.clone());
        }
        Bytes::from(Value::Object(map).to_string())
    }

    /// The response head (status, `Content-Type: application/problem+json` and the headers
    /// set) and the body, for a middleware that answers with its own body type.
    pub fn into_parts(self) -> (http::response::Parts, Bytes) {
        let body = self.body();
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = self.status;
        parts.headers = self.headers;
        parts
            .headers
            .insert(CONTENT_TYPE, APPLICATION_PROBLEM_JSON.clone());
        (parts, body)
    }

    /// The whole response, in any body type made from bytes.
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let (parts, body) = self.into_parts();
        Response::from_parts(parts, B::from(body))
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::response::IntoResponse for Problem {
    fn into_response(self) -> axum::response::Response {
        Problem::into_response(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use http::header::CACHE_CONTROL;

    use super::*;

    fn json(p: &Problem) -> Value {
        serde_json::from_slice(&p.body()).unwrap()
    }

    #[test]
    fn defaults_follow_the_status() {
        let p = Problem::new(StatusCode::NOT_FOUND);
        assert_eq!(
            json(&p),
            serde_json::json!({"type": "about:blank", "title": "Not Found", "status": 404})
        );
        // A status without a reason phrase still has a title.
        let odd = json(&Problem::new(StatusCode::from_u16(599).unwrap()));
        assert_eq!(odd["title"], "Error");
        assert_eq!(odd["status"], 599);
    }

    #[test]
    fn every_member_is_written_and_client_text_is_escaped() {
        let hostile = "a \"quoted\" \\ path\n</script>\u{0}";
        let p = Problem::new(StatusCode::BAD_REQUEST)
            .type_uri("https://example.com/probs/bad-key")
            .title("Bad key")
            .detail(format!("no such key {hostile}"))
            .instance("urn:request:42")
            .extension("key", hostile)
            .extension(
                "problems",
                serde_json::json!([{"path": "flags.a", "message": "m"}]),
            );
        let text = String::from_utf8(p.body().to_vec()).unwrap();
        // One line of JSON: the newline and NUL are escaped, the quotes cannot end a string.
        assert!(!text.contains('\n') && !text.contains('\u{0}'), "{text}");
        assert!(
            text.contains(r#"\"quoted\""#) && text.contains(r"\u0000"),
            "{text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "https://example.com/probs/bad-key");
        assert_eq!(v["title"], "Bad key");
        assert_eq!(v["status"], 400);
        assert_eq!(v["detail"], format!("no such key {hostile}"));
        assert_eq!(v["instance"], "urn:request:42");
        assert_eq!(v["key"], hostile);
        assert_eq!(v["problems"][0]["path"], "flags.a");
        assert_eq!(
            p.detail_text(),
            Some(format!("no such key {hostile}").as_str())
        );
    }

    #[test]
    fn an_extension_cannot_overwrite_a_standard_member() {
        let v = json(
            &Problem::new(StatusCode::FORBIDDEN)
                .extension("status", 200)
                .extension("type", "x")
                .extension("title", "x")
                .extension("detail", "x")
                .extension("instance", "x")
                .extension("reason", "origin"),
        );
        assert_eq!(v["status"], 403);
        assert_eq!(v["type"], "about:blank");
        assert_eq!(v["title"], "Forbidden");
        assert!(v.get("detail").is_none() && v.get("instance").is_none());
        assert_eq!(v["reason"], "origin");
    }

    #[test]
    fn the_response_carries_status_content_type_and_headers() {
        let res: Response<Bytes> = Problem::new(StatusCode::TOO_MANY_REQUESTS)
            .header(CACHE_CONTROL, HeaderValue::from_static("no-store"))
            .header(CONTENT_TYPE, HeaderValue::from_static("text/html"))
            .retry_after(Duration::from_millis(2001))
            .into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(res.headers().get_all(CONTENT_TYPE).iter().count(), 1);
        assert_eq!(res.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(res.headers()[RETRY_AFTER], "3");
        let v: Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(v["status"], 429);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_never_zero() {
        for (wait, want) in [
            (Duration::ZERO, "1"),
            (Duration::from_millis(1), "1"),
            (Duration::from_secs(1), "1"),
            (Duration::from_millis(1500), "2"),
            (Duration::from_secs(60), "60"),
            (Duration::MAX, "18446744073709551615"),
        ] {
            let (parts, _) = Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                .retry_after(wait)
                .into_parts();
            assert_eq!(parts.headers[RETRY_AFTER], want, "{wait:?}");
        }
    }
}
