//! [`FlagType`]: the type of a flag's variants, shared by the native model and flagd files.

use serde_json::Value;

/// The type of a flag's variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FlagType {
    /// Booleans.
    Bool,
    /// Strings.
    String,
    /// Integers (also readable as floats).
    Int,
    /// Numbers, at least one of which is not an integer.
    Float,
    /// JSON objects or arrays.
    Object,
}

impl FlagType {
    pub(crate) fn of(v: &Value) -> Option<FlagType> {
        Some(match v {
            Value::Null => return None,
            Value::Bool(_) => FlagType::Bool,
            Value::String(_) => FlagType::String,
            Value::Number(n) if n.is_i64() => FlagType::Int,
            Value::Number(_) => FlagType::Float,
            Value::Array(_) | Value::Object(_) => FlagType::Object,
        })
    }

    pub(crate) fn compatible(self, other: FlagType) -> bool {
        self.join(other).is_some()
    }

    /// The type of a flag with variants of both types.
    pub(crate) fn join(self, other: FlagType) -> Option<FlagType> {
        use FlagType::{Float, Int};
        match (self, other) {
            (Int, Float) | (Float, Int) => Some(Float),
            (a, b) if a == b => Some(a),
            _ => None,
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            FlagType::Bool => "a boolean",
            FlagType::String => "a string",
            FlagType::Int | FlagType::Float => "a number",
            FlagType::Object => "an object or array",
        }
    }
}
