//! [`RequestFlags`]: the snapshot and context one request evaluates against.

use std::fmt;
use std::sync::{Arc, OnceLock};

use welcomedly_core::DeferredUser;

use crate::rollout::attribution::Recording;
use crate::{AttrValue, Context, Evaluation, Snapshot};

/// An owned attribute value, kept for the request's lifetime.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum OwnedAttr {
    /// Text.
    Str(Box<str>),
    /// An integer.
    Int(i64),
    /// A number.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl OwnedAttr {
    fn as_value(&self) -> AttrValue<'_> {
        match self {
            Self::Str(s) => AttrValue::Str(s),
            Self::Int(i) => AttrValue::Int(*i),
            Self::Float(f) => AttrValue::Float(*f),
            Self::Bool(b) => AttrValue::Bool(*b),
        }
    }
}

impl From<&str> for OwnedAttr {
    fn from(v: &str) -> Self {
        Self::Str(v.into())
    }
}

impl From<String> for OwnedAttr {
    fn from(v: String) -> Self {
        Self::Str(v.into())
    }
}

impl From<i64> for OwnedAttr {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<f64> for OwnedAttr {
    fn from(v: f64) -> Self {
        Self::Float(v)
    }
}

impl From<bool> for OwnedAttr {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

/// The longest attribute text and targeting key taken from a request: longer values (client
/// text) are cut, so a request cannot make the context arbitrarily large.
pub const MAX_ATTR_LEN: usize = 256;

/// The attributes of a request's context, filled by the closure given to
/// [`FlagsLayer::attributes`](super::FlagsLayer::attributes).
#[derive(Debug, Default, Clone)]
pub struct Attributes {
    items: Vec<(Box<str>, OwnedAttr)>,
}

impl Attributes {
    /// Sets attribute `name`, replacing an earlier value; text longer than [`MAX_ATTR_LEN`]
    /// bytes is cut at a character boundary.
    pub fn insert(&mut self, name: &str, value: impl Into<OwnedAttr>) {
        let value = match value.into() {
            OwnedAttr::Str(s) if s.len() > MAX_ATTR_LEN => OwnedAttr::Str(cut(&s).into()),
            v => v,
        };
        match self.items.iter_mut().find(|(n, _)| &**n == name) {
            Some(slot) => slot.1 = value,
            None => self.items.push((name.into(), value)),
        }
    }

    /// Attribute `name`.
    pub fn get(&self, name: &str) -> Option<&OwnedAttr> {
        self.items
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v)
    }
}

pub(crate) fn cut(s: &str) -> &str {
    let mut end = MAX_ATTR_LEN.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// What the attribute closure sees of a request: its head, without the body.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestInfo<'a> {
    /// The method.
    pub method: &'a http::Method,
    /// The URI.
    pub uri: &'a http::Uri,
    /// The headers.
    pub headers: &'a http::HeaderMap,
    /// The extensions (the authenticated user, the client IP, …).
    pub extensions: &'a http::Extensions,
}

/// The flags of one request: one pinned [`Snapshot`] and the request's context. A request
/// extension set by [`FlagsLayer`](super::FlagsLayer); cheap to clone.
///
/// When the request's user is not known yet (a session that loads lazily puts a
/// `welcomedly_core::DeferredUser` in the extensions instead of a `UserId`), the
/// user is looked up by [`resolve`](Self::resolve), once, on the first request that needs it:
/// the axum extractor and [`FlagGateLayer`](super::FlagGateLayer) call it, so a route that
/// evaluates no flag costs no lookup. Code that takes `RequestFlags` from the extensions itself
/// awaits [`resolve`](Self::resolve) before evaluating; until then the context is the one
/// without the user (the key header's, or anonymous).
#[derive(Clone)]
pub struct RequestFlags {
    inner: Arc<Inner>,
}

struct Inner {
    snapshot: Arc<Snapshot>,
    /// The user, once known (set at once when the request had a `UserId`).
    user: OnceLock<Option<Box<str>>>,
    /// Where the user is looked up, when it was not known at the layer.
    deferred: Option<DeferredUser>,
    /// The key header's value, for requests without a user.
    fallback: Option<Box<str>>,
    attributes: Attributes,
    recording: Option<Recording>,
}

impl RequestFlags {
    pub(crate) fn new(
        snapshot: Arc<Snapshot>,
        user: Option<Box<str>>,
        deferred: Option<DeferredUser>,
        fallback: Option<Box<str>>,
        attributes: Attributes,
        recording: Option<Recording>,
    ) -> Self {
        let known = OnceLock::new();
        if user.is_some() || deferred.is_none() {
            let _ = known.set(user);
        }
        let deferred = if known.get().is_some() {
            None
        } else {
            deferred
        };
        Self {
            inner: Arc::new(Inner {
                snapshot,
                user: known,
                deferred,
                fallback,
                attributes,
                recording,
            }),
        }
    }

    /// Adds the finished request to the arms of the guarded flags it evaluated.
    pub(crate) fn finish(&self, status: Option<u16>, elapsed: std::time::Duration) {
        if let Some(r) = &self.inner.recording {
            r.finish(status, elapsed);
        }
    }

    pub(crate) fn is_recording(&self) -> bool {
        self.inner.recording.is_some()
    }

    fn note<'a, T>(&'a self, key: &str, eval: Evaluation<'a, T>) -> Evaluation<'a, T> {
        if let Some(r) = &self.inner.recording {
            r.note(key, eval.variant, &eval.reason);
        }
        eval
    }

    /// Counts application counter `name` (a failed payment, …) for the arms of the guarded
    /// flags this request was served, when a rollout plan guards that counter. Free otherwise.
    pub fn count(&self, name: &str) {
        if let Some(r) = &self.inner.recording {
            r.count(name);
        }
    }

    /// Looks up the request's user when it was deferred (a lazily loaded session), so that
    /// the decisions after it are the user's; at once otherwise. A failed lookup (the store is
    /// down) leaves the request without a user: its decisions are the anonymous ones.
    pub async fn resolve(&self) {
        if self.inner.user.get().is_some() {
            return;
        }
        let Some(deferred) = &self.inner.deferred else {
            return;
        };
        let user = deferred.resolve().await.map(|u| cut(&u.0).into());
        let _ = self.inner.user.set(user);
    }

    /// Whether the user is still to be looked up ([`resolve`](Self::resolve) not awaited yet on
    /// a request whose user was deferred).
    pub fn is_resolved(&self) -> bool {
        self.inner.user.get().is_some()
    }

    /// The snapshot every decision of this request uses.
    pub fn snapshot(&self) -> &Snapshot {
        &self.inner.snapshot
    }

    /// The targeting key: the user, else the key header's value, if the request had one.
    pub fn key(&self) -> Option<&str> {
        self.inner
            .user
            .get()
            .and_then(Option::as_deref)
            .or(self.inner.fallback.as_deref())
    }

    /// The request's evaluation context, for the snapshot's typed calls.
    pub fn context(&self) -> Context<'_> {
        let mut ctx = match self.key() {
            Some(key) => Context::new(key),
            None => Context::anonymous(),
        };
        for (name, value) in &self.inner.attributes.items {
            ctx.set(name, value.as_value());
        }
        ctx
    }

    /// Whether boolean flag `key` is on for this request (`false` when it is off, unknown or
    /// not boolean).
    pub fn is_enabled(&self, key: &str) -> bool {
        self.bool_value(key, false).value
    }

    /// Boolean flag `key` with `default`, as an [`Evaluation`] (value, variant, reason).
    pub fn bool_value(&self, key: &str, default: bool) -> Evaluation<'_, bool> {
        self.note(
            key,
            self.snapshot().bool_value(key, &self.context(), default),
        )
    }

    /// String flag `key` with `default`.
    pub fn string_value<'a>(&'a self, key: &str, default: &'a str) -> Evaluation<'a, &'a str> {
        self.note(
            key,
            self.snapshot().string_value(key, &self.context(), default),
        )
    }

    /// Integer flag `key` with `default`.
    pub fn int_value(&self, key: &str, default: i64) -> Evaluation<'_, i64> {
        self.note(
            key,
            self.snapshot().int_value(key, &self.context(), default),
        )
    }

    /// Every flag evaluated for this request, as JSON: `{"<key>": {"value", "variant",
    /// "reason", "error"?}}`, sorted by key (what an "/api/flags" endpoint serves). A flag
    /// whose default applies has `"value": null`.
    pub fn evaluate_all(&self) -> serde_json::Value {
        let ctx = self.context();
        let snapshot = self.snapshot();
        let mut keys: Vec<&str> = snapshot.keys().collect();
        keys.sort_unstable();
        let mut out = serde_json::Map::new();
        for key in keys {
            let e = snapshot.json_value(key, &ctx);
            let mut entry = serde_json::Map::new();
            entry.insert("value".into(), e.value.cloned().unwrap_or_default());
            entry.insert(
                "variant".into(),
                e.variant.map_or(serde_json::Value::Null, |v| v.into()),
            );
            entry.insert("reason".into(), e.reason.as_str().into());
            if let Some(code) = e.error {
                entry.insert("error".into(), code.as_str().into());
            }
            out.insert(key.to_owned(), serde_json::Value::Object(entry));
        }
        serde_json::Value::Object(out)
    }
}

impl fmt::Debug for RequestFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestFlags")
            .field("version", &self.snapshot().version())
            .field("key", &self.key())
            .field("attributes", &self.inner.attributes)
            .finish()
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestFlags {
    type Rejection = (http::StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let flags = parts.extensions.get::<RequestFlags>().cloned().ok_or((
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "no flags for this request: add welcomedly_flags::layer::FlagsLayer around the route",
        ))?;
        flags.resolve().await;
        Ok(flags)
    }
}
