//! The route label of a request: the matched route template, never the raw path.
//!
//! ```
//! use welcomedly_core::telemetry::RouteLabel;
//!
//! // A framework-agnostic router inserts the template it matched into the request extensions.
//! let mut request = http::Request::new(());
//! request.extensions_mut().insert(RouteLabel::from_static("/users/{id}"));
//! assert_eq!(request.extensions().get::<RouteLabel>().unwrap().as_str(), "/users/{id}");
//! ```

use std::fmt;
use std::sync::Arc;

use opentelemetry::Value;

/// The label of requests that matched no route. Every unmatched path shares it, so a scanner
/// probing random paths cannot create unbounded metric series.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The route template a request matched (such as `/users/{id}`), inserted into the request
/// extensions by a router that runs *before* [`HttpTelemetryLayer`](super::HttpTelemetryLayer).
///
/// With the `axum` feature the layer reads axum's `MatchedPath` itself when added with
/// `Router::layer`; this type is for other routers. A request without either is labelled
/// [`UNMATCHED_ROUTE`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RouteLabel(Label);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Label {
    Static(&'static str),
    Shared(Arc<str>),
}

impl RouteLabel {
    /// A label known at compile time (no allocation).
    pub const fn from_static(template: &'static str) -> Self {
        Self(Label::Static(template))
    }

    /// A label built at run time. Pass route *templates* only: a label derived from the raw path
    /// creates one metric series per distinct path.
    pub fn new(template: impl Into<Arc<str>>) -> Self {
        Self(Label::Shared(template.into()))
    }

    /// The template as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Label::Static(s) => s,
            Label::Shared(s) => s,
        }
    }

    /// The label as an OpenTelemetry attribute value, without copying the text.
    pub(crate) fn to_value(&self) -> Value {
        match &self.0 {
            Label::Static(s) => Value::from(*s),
            Label::Shared(s) => Value::from(Arc::clone(s)),
        }
    }
}

impl fmt::Debug for RouteLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RouteLabel").field(&self.as_str()).finish()
    }
}

impl fmt::Display for RouteLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The route of one request as the layer keeps it until the response.
#[derive(Clone)]
pub(crate) enum Route {
    Label(RouteLabel),
    #[cfg(feature = "axum")]
    Matched(axum::extract::MatchedPath),
}

impl Route {
    /// axum's `MatchedPath` first, then a [`RouteLabel`], else [`UNMATCHED_ROUTE`].
    pub(crate) fn of(extensions: &http::Extensions) -> Self {
        #[cfg(feature = "axum")]
        if let Some(matched) = extensions.get::<axum::extract::MatchedPath>() {
            return Self::Matched(matched.clone());
        }
        match extensions.get::<RouteLabel>() {
            Some(label) => Self::Label(label.clone()),
            None => Self::Label(RouteLabel::from_static(UNMATCHED_ROUTE)),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Label(label) => label.as_str(),
            #[cfg(feature = "axum")]
            Self::Matched(matched) => matched.as_str(),
        }
    }

    pub(crate) fn to_value(&self) -> Value {
        match self {
            Self::Label(label) => label.to_value(),
            // MatchedPath does not hand out its Arc<str>: one small copy per request.
            #[cfg(feature = "axum")]
            Self::Matched(matched) => Value::from(matched.as_str().to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlabelled_requests_are_unmatched() {
        let extensions = http::Extensions::new();
        assert_eq!(Route::of(&extensions).as_str(), UNMATCHED_ROUTE);
    }

    #[test]
    fn a_label_is_used() {
        let mut extensions = http::Extensions::new();
        extensions.insert(RouteLabel::new("/a/{b}"));
        let route = Route::of(&extensions);
        assert_eq!(route.as_str(), "/a/{b}");
        assert_eq!(route.to_value().as_str(), "/a/{b}");
    }
}
