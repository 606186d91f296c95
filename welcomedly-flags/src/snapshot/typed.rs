//! The typed evaluation API (OpenFeature's `resolve*` calls).

use serde_json::Value;

use super::{FlagType, Snapshot};
use crate::context::Context;
use crate::eval::{ErrorCode, Evaluation, Reason};

impl Snapshot {
    #[inline]
    fn typed<'a, T>(
        &'a self,
        key: &str,
        ctx: &Context<'_>,
        default: T,
        accepts: fn(FlagType) -> bool,
        read: impl Fn(&'a Value) -> Option<T>,
    ) -> Evaluation<'a, T> {
        #[cfg(feature = "flagd")]
        if let Some(f) = &self.flagd {
            return f.set.typed(key, ctx, default, accepts, read).evaluation;
        }
        let Some((id, flag)) = self.flag(key) else {
            return Evaluation::failed(default, ErrorCode::FlagNotFound);
        };
        if !accepts(flag.kind) {
            return Evaluation::failed(default, ErrorCode::TypeMismatch);
        }
        let (served, reason) = match flag.static_variant {
            Some(v) => (Some(v), Reason::Static),
            None => self.resolve(id, ctx, 0),
        };
        let Some(v) = served else {
            return Evaluation {
                value: default,
                variant: None,
                reason,
                error: None,
            };
        };
        match flag.variants.get(v as usize) {
            Some((name, value)) => match read(value) {
                Some(value) => Evaluation {
                    value,
                    variant: Some(name),
                    reason,
                    error: None,
                },
                None => Evaluation::failed(default, ErrorCode::TypeMismatch),
            },
            None => Evaluation::failed(default, ErrorCode::General),
        }
    }

    /// Evaluates a boolean flag.
    pub fn bool_value(&self, key: &str, ctx: &Context<'_>, default: bool) -> Evaluation<'_, bool> {
        self.typed(key, ctx, default, |t| t == FlagType::Bool, Value::as_bool)
    }

    /// Evaluates a string flag.
    pub fn string_value<'a>(
        &'a self,
        key: &str,
        ctx: &Context<'_>,
        default: &'a str,
    ) -> Evaluation<'a, &'a str> {
        self.typed(key, ctx, default, |t| t == FlagType::String, Value::as_str)
    }

    /// Evaluates an integer flag (a flag with a fractional variant is a `TYPE_MISMATCH`).
    pub fn int_value(&self, key: &str, ctx: &Context<'_>, default: i64) -> Evaluation<'_, i64> {
        self.typed(key, ctx, default, |t| t == FlagType::Int, Value::as_i64)
    }

    /// Evaluates a number flag (integer variants are converted).
    pub fn float_value(&self, key: &str, ctx: &Context<'_>, default: f64) -> Evaluation<'_, f64> {
        self.typed(
            key,
            ctx,
            default,
            |t| matches!(t, FlagType::Int | FlagType::Float),
            Value::as_f64,
        )
    }

    /// Evaluates an object (or array) flag.
    pub fn object_value<'a>(
        &'a self,
        key: &str,
        ctx: &Context<'_>,
        default: &'a Value,
    ) -> Evaluation<'a, &'a Value> {
        self.typed(key, ctx, default, |t| t == FlagType::Object, Some)
    }

    /// Evaluates a flag of any type, giving the served variant's JSON value (`None` when the
    /// caller's default applies): for code that reports every flag, such as a "flags for the
    /// current user" endpoint.
    pub fn json_value<'a>(
        &'a self,
        key: &str,
        ctx: &Context<'_>,
    ) -> Evaluation<'a, Option<&'a Value>> {
        self.typed(key, ctx, None, |_| true, |v| Some(Some(v)))
    }
}
