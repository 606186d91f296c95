//! Clauses: one test of one context attribute.
//!
//! A clause matches when the attribute satisfies the operator for *any* of its values; `negate`
//! inverts the result. A context without the attribute (or with a value of another type, e.g. a
//! number for `startsWith`) never matches, negated or not, so "country not in [DE]" does not
//! select contexts that have no country. `inSegment` tests the context itself and takes
//! segment keys as values; negation applies to it as usual.
//!
//! ```
//! use welcomedly_flags::model::{Clause, Op};
//!
//! let clause: Clause = serde_json::from_str(
//!     r#"{ "attribute": "version", "op": "semverGreaterThan", "values": ["2.0.0"], "negate": true }"#,
//! )?;
//! assert_eq!(clause.op, Op::SemverGreaterThan);
//! assert!(clause.negate);
//! # Ok::<(), serde_json::Error>(())
//! ```

use serde::{Deserialize, Serialize};

/// A test of one attribute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Clause {
    /// The context attribute (`targetingKey` for the key). Required for every operator except
    /// `inSegment`, which must not have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    /// The operator.
    pub op: Op,
    /// Operands; the clause matches when any of them does. At least one.
    pub values: Vec<serde_json::Value>,
    /// Inverts the result (for a present attribute of the right type).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub negate: bool,
}

impl Clause {
    /// A clause on `attribute`.
    pub fn new(attribute: impl Into<String>, op: Op, values: Vec<serde_json::Value>) -> Clause {
        Clause {
            attribute: Some(attribute.into()),
            op,
            values,
            negate: false,
        }
    }

    /// The same clause, negated.
    #[must_use]
    pub fn negated(mut self) -> Clause {
        self.negate = !self.negate;
        self
    }
}

/// Clause operators. Operand types are checked by validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum Op {
    /// Equal to the single operand (string, number or boolean).
    Equals,
    /// Equal to any operand (strings, numbers or booleans).
    In,
    /// A string starting with an operand.
    StartsWith,
    /// A string ending with an operand.
    EndsWith,
    /// A string containing an operand.
    Contains,
    /// A string matching an operand, a regular expression (`regex` crate syntax, unanchored).
    /// Bounded: see [`MAX_REGEX_PATTERNS`](crate::validate::MAX_REGEX_PATTERNS),
    /// [`MAX_REGEX_LEN`](crate::validate::MAX_REGEX_LEN) and
    /// [`MAX_REGEX_COMPILED`](crate::validate::MAX_REGEX_COMPILED).
    Matches,
    /// A number below an operand.
    LessThan,
    /// A number at most an operand.
    LessThanOrEqual,
    /// A number above an operand.
    GreaterThan,
    /// A number at least an operand.
    GreaterThanOrEqual,
    /// A semantic version (a string) equal to an operand, by semver precedence.
    SemverEqual,
    /// A semantic version below an operand.
    SemverLessThan,
    /// A semantic version above an operand.
    SemverGreaterThan,
    /// A date (RFC 3339 string or unix milliseconds) before an operand (same two forms).
    Before,
    /// A date after an operand.
    After,
    /// The context is in one of the segments named by the operands.
    InSegment,
}

impl Op {
    /// The operator's JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Equals => "equals",
            Op::In => "in",
            Op::StartsWith => "startsWith",
            Op::EndsWith => "endsWith",
            Op::Contains => "contains",
            Op::Matches => "matches",
            Op::LessThan => "lessThan",
            Op::LessThanOrEqual => "lessThanOrEqual",
            Op::GreaterThan => "greaterThan",
            Op::GreaterThanOrEqual => "greaterThanOrEqual",
            Op::SemverEqual => "semverEqual",
            Op::SemverLessThan => "semverLessThan",
            Op::SemverGreaterThan => "semverGreaterThan",
            Op::Before => "before",
            Op::After => "after",
            Op::InSegment => "inSegment",
        }
    }
}
