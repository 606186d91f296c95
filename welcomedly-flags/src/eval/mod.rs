//! What an evaluation returns, in OpenFeature's vocabulary: the value, the variant, the reason
//! and an error code.
//!
//! The caller always gets a usable value: on any error, and when a flag is disabled or serves no
//! variant, it is the caller's default. `""`, `0`, `false` and `{}` are values like any other.
//!
//! | situation | value | [`Reason::as_str`] | error |
//! |---|---|---|---|
//! | flag without targeting, fixed fallthrough | the variant's | `STATIC` | |
//! | a target or a rule served a fixed variant | the variant's | `TARGETING_MATCH` | |
//! | a rollout (in a rule or the fallthrough) assigned it | the variant's | `SPLIT` | |
//! | no target or rule matched, fixed fallthrough | the variant's | `DEFAULT` | |
//! | no match and no fallthrough | caller's default | `DEFAULT` | |
//! | a prerequisite did not serve a required variant | caller's default | `DEFAULT` | |
//! | the flag is disabled (kill switch) | caller's default | `DISABLED` | |
//! | unknown flag | caller's default | `ERROR` | `FLAG_NOT_FOUND` |
//! | the flag's variants have another type | caller's default | `ERROR` | `TYPE_MISMATCH` |
//!
//! [`Reason`] keeps the detail OpenFeature's strings drop (which rule, which prerequisite).
//!
//! ```
//! use welcomedly_flags::{Context, Match, Reason, Snapshot};
//!
//! let snapshot = Snapshot::compile_json(r#"{ "flags": { "checkout": {
//!   "variants": { "v1": "classic", "v2": "one-page" },
//!   "rules": [{ "clauses": [{ "attribute": "plan", "op": "equals", "values": ["pro"] }],
//!               "serve": { "variant": "v2" } }],
//!   "fallthrough": { "variant": "v1" }
//! } } }"#, 1)?;
//! let eval = snapshot.string_value("checkout", &Context::new("u1").with("plan", "pro"), "classic");
//! assert_eq!(eval.value, "one-page");
//! assert_eq!(eval.variant, Some("v2"));
//! assert_eq!(eval.reason, Reason::TargetingMatch(Match::Rule(0)));
//! assert_eq!(eval.reason.as_str(), "TARGETING_MATCH");
//! # Ok::<(), welcomedly_flags::ValidationErrors>(())
//! ```

mod clause;
mod date;
mod semver;

pub(crate) use self::clause::{CompiledClause, CompiledSegment, KeySet, Regexes, SegmentIndex};
#[cfg(feature = "flagd")]
pub(crate) use self::semver::{OwnedSemver, Semver};

/// The result of evaluating a flag.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Evaluation<'a, T> {
    /// The value: the served variant's, or the caller's default.
    pub value: T,
    /// The served variant's name; `None` when the caller's default was returned.
    pub variant: Option<&'a str>,
    /// Why this value.
    pub reason: Reason<'a>,
    /// Set when the reason is [`Reason::Error`].
    pub error: Option<ErrorCode>,
}

impl<'a, T> Evaluation<'a, T> {
    pub(crate) fn failed(default: T, code: ErrorCode) -> Evaluation<'a, T> {
        Evaluation {
            value: default,
            variant: None,
            reason: Reason::Error,
            error: Some(code),
        }
    }

    /// Whether the evaluation failed (the value is then the caller's default).
    pub fn is_error(&self) -> bool {
        self.error.is_some()
    }
}

/// What matched, for [`Reason::TargetingMatch`] and [`Reason::Split`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Match {
    /// The targeting key is in the flag's `targets`.
    Target,
    /// The rule at this index in the flag's `rules`.
    Rule(usize),
    /// The fallthrough.
    Fallthrough,
    /// A flagd targeting expression (JsonLogic) named the variant.
    Expression,
}

/// Why an evaluation returned its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason<'a> {
    /// The flag has no prerequisites, targets or rules and serves a fixed fallthrough (`STATIC`).
    Static,
    /// A target or a rule serving a fixed variant matched (`TARGETING_MATCH`).
    TargetingMatch(Match),
    /// A percentage rollout assigned the variant (`SPLIT`).
    Split(Match),
    /// Nothing matched; the flag's fixed fallthrough variant was served (`DEFAULT`, as flagd
    /// reports its default variant).
    Fallthrough,
    /// Nothing matched and the flag has no fallthrough: the caller's default (`DEFAULT`). Not an
    /// error.
    Default,
    /// The named prerequisite flag did not serve a required variant: the caller's default
    /// (`DEFAULT`: the flag is switched off for this context, which is not an error).
    PrerequisiteFailed(&'a str),
    /// The flag's kill switch is off: the caller's default (`DISABLED`).
    Disabled,
    /// See [`Evaluation::error`] (`ERROR`).
    Error,
}

impl Reason<'_> {
    /// The OpenFeature reason string.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::TargetingMatch(_) => "TARGETING_MATCH",
            Reason::Split(_) => "SPLIT",
            Reason::Fallthrough | Reason::Default | Reason::PrerequisiteFailed(_) => "DEFAULT",
            Reason::Disabled => "DISABLED",
            Reason::Error => "ERROR",
        }
    }
}

/// OpenFeature error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No flag has this key (`FLAG_NOT_FOUND`).
    FlagNotFound,
    /// The flag's variants are not of the requested type (`TYPE_MISMATCH`).
    TypeMismatch,
    /// A value could not be parsed (`PARSE_ERROR`); for providers that parse on evaluation.
    ParseError,
    /// Anything else (`GENERAL`).
    General,
}

impl ErrorCode {
    /// The OpenFeature error code string.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::TypeMismatch => "TYPE_MISMATCH",
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::General => "GENERAL",
        }
    }
}
