//! The evaluation context: a targeting key and attributes, all borrowed.
//!
//! Up to eight attributes live inline, so building a context for a request allocates nothing.
//! The attribute `targetingKey` (see [`TARGETING_KEY`]) names the key itself in clauses and
//! rollouts.
//!
//! ```
//! use welcomedly_flags::{AttrValue, Context};
//!
//! let country = String::from("DE");
//! let ctx = Context::new("user-42")
//!     .with("country", country.as_str())
//!     .with("age", 42)
//!     .with("beta", true);
//! assert_eq!(ctx.get("country"), Some(AttrValue::Str("DE")));
//! assert_eq!(ctx.get("targetingKey"), Some(AttrValue::Str("user-42")));
//! assert_eq!(ctx.get("missing"), None);
//! ```

use smallvec::SmallVec;

pub use crate::model::TARGETING_KEY;

/// An attribute value. Dates are RFC 3339 strings or unix milliseconds ([`AttrValue::Int`]).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum AttrValue<'a> {
    /// A string (also semantic versions and RFC 3339 dates).
    Str(&'a str),
    /// An integer (also dates as unix milliseconds).
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A nested JSON value (an object or an array, or any JSON value a caller hands over as is):
    /// flagd targeting reads into it with dotted `var` paths such as `user.account.plan`. The
    /// native model's clauses see it as a value of another type (they do not match it).
    Json(&'a serde_json::Value),
}

impl<'a> From<&'a serde_json::Value> for AttrValue<'a> {
    /// Scalars become their own variants (so the native model's clauses see them); objects,
    /// arrays and `null` stay JSON.
    fn from(v: &'a serde_json::Value) -> Self {
        use serde_json::Value;
        match v {
            Value::String(s) => AttrValue::Str(s),
            Value::Bool(b) => AttrValue::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => AttrValue::Int(i),
                None => AttrValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            _ => AttrValue::Json(v),
        }
    }
}

impl<'a> From<&'a str> for AttrValue<'a> {
    fn from(v: &'a str) -> Self {
        AttrValue::Str(v)
    }
}

impl<'a> From<&'a String> for AttrValue<'a> {
    fn from(v: &'a String) -> Self {
        AttrValue::Str(v)
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for AttrValue<'_> {
            fn from(v: $t) -> Self {
                AttrValue::Int(i64::from(v))
            }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<u64> for AttrValue<'_> {
    fn from(v: u64) -> Self {
        i64::try_from(v).map_or(AttrValue::Float(v as f64), AttrValue::Int)
    }
}

impl From<f64> for AttrValue<'_> {
    fn from(v: f64) -> Self {
        AttrValue::Float(v)
    }
}

impl From<f32> for AttrValue<'_> {
    fn from(v: f32) -> Self {
        AttrValue::Float(f64::from(v))
    }
}

impl From<bool> for AttrValue<'_> {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

/// Who is asking: an optional targeting key and named attributes.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    key: Option<&'a str>,
    attrs: SmallVec<[(&'a str, AttrValue<'a>); 8]>,
}

impl<'a> Context<'a> {
    /// A context for targeting key `key` (a user id, a session id, …).
    pub fn new(key: &'a str) -> Context<'a> {
        Context {
            key: Some(key),
            attrs: SmallVec::new(),
        }
    }

    /// A context without a targeting key: targets, segment key lists and key-bucketed rollouts
    /// never match it.
    pub fn anonymous() -> Context<'a> {
        Context::default()
    }

    /// Sets attribute `name` (replacing an earlier value) and returns the context.
    #[must_use]
    pub fn with(mut self, name: &'a str, value: impl Into<AttrValue<'a>>) -> Context<'a> {
        self.set(name, value);
        self
    }

    /// Sets attribute `name`, replacing an earlier value. Setting `targetingKey` to a string sets
    /// the key.
    pub fn set(&mut self, name: &'a str, value: impl Into<AttrValue<'a>>) {
        let value = value.into();
        if let (TARGETING_KEY, AttrValue::Str(key)) = (name, value) {
            self.key = Some(key);
            return;
        }
        match self.attrs.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    /// A context from a JSON object (an OpenFeature evaluation context as flagd and OFREP send
    /// it): `targetingKey` (when a string) becomes the key, every other member an attribute,
    /// nested objects and arrays as [`AttrValue::Json`]. Anything but an object gives an
    /// anonymous context without attributes.
    ///
    /// ```
    /// use welcomedly_flags::{AttrValue, Context};
    ///
    /// let json = serde_json::json!({ "targetingKey": "u1", "plan": "pro", "user": { "age": 42 } });
    /// let ctx = Context::from_json(&json);
    /// assert_eq!(ctx.key(), Some("u1"));
    /// assert_eq!(ctx.get("plan"), Some(AttrValue::Str("pro")));
    /// assert!(matches!(ctx.get("user"), Some(AttrValue::Json(_))));
    /// ```
    pub fn from_json(value: &'a serde_json::Value) -> Context<'a> {
        let mut ctx = Context::anonymous();
        if let Some(members) = value.as_object() {
            for (name, v) in members {
                ctx.set(name, v);
            }
        }
        ctx
    }

    /// The targeting key.
    pub fn key(&self) -> Option<&'a str> {
        self.key
    }

    /// Attribute `name`; `targetingKey` gives the key.
    #[inline]
    pub fn get(&self, name: &str) -> Option<AttrValue<'a>> {
        if name == TARGETING_KEY {
            return self.key.map(AttrValue::Str);
        }
        self.attrs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// The attributes, in the order they were first set (the key excluded).
    pub fn attributes(&self) -> impl Iterator<Item = (&'a str, AttrValue<'a>)> + '_ {
        self.attrs.iter().copied()
    }
}
