//! flagd flag definitions: flagd's JSON flag files, their JsonLogic targeting compiled once
//! into an expression tree, evaluated with flagd's results.
//!
//! The format is flagd's (flagd.dev/reference/flag-definitions and the `flags.json` /
//! `targeting.json` schemas): `flags` with `state`, `variants` of one JSON type,
//! `defaultVariant` (a name, `null` or absent), `targeting` and `metadata`; `$evaluators`
//! reused through `{"$ref": "name"}`; flag-set `metadata` under each flag's own.
//!
//! Targeting is JsonLogic (jsonlogic.com's operators, `map`, `filter`, `reduce`, `all`, `some`,
//! `none` and `merge` included, and JavaScript coercions: `==` is loose,
//! `[]` and `""` are false, `"0"` is true) plus flagd's `fractional`, `starts_with`,
//! `ends_with`, `sem_ver` and the `$flagd.flagKey` / `$flagd.timestamp` variables. It is
//! compiled when the file is read, so evaluation walks a tree of nodes and allocates nothing
//! on the common paths (`var`, comparisons, `if`, `in`, string and version operators,
//! `fractional` including a `cat` bucketing value).
//!
//! Results, as flagd defines them:
//!
//! | situation | value | reason | error |
//! |---|---|---|---|
//! | no targeting (or `{}`) | the default variant's | `STATIC` | |
//! | targeting names a variant (a boolean result names `"true"` / `"false"`) | that variant's | `TARGETING_MATCH` | |
//! | targeting gives `null` (or a custom operator met bad input) | the default variant's | `DEFAULT` | |
//! | … and the flag has no default variant | caller's default | `DEFAULT` | |
//! | targeting names no variant | caller's default | `ERROR` | `GENERAL` |
//! | `state: DISABLED` | caller's default | `DISABLED` | |
//! | unknown operator, `$ref` to a missing evaluator, schema violation | caller's default | `ERROR` | `PARSE_ERROR` |
//! | unknown flag | caller's default | `ERROR` | `FLAG_NOT_FOUND` |
//! | the variant has another type | caller's default | `ERROR` | `TYPE_MISMATCH` |
//!
//! `""`, `0`, `0.0`, `false` and `{}` are values like any other. Every result carries the
//! flag's metadata.
//!
//! ```
//! use welcomedly_flags::Context;
//! use welcomedly_flags::flagd::FlagdSet;
//!
//! let set = FlagdSet::parse(r#"{
//!   "flags": {
//!     "new-checkout": {
//!       "state": "ENABLED",
//!       "variants": { "on": true, "off": false },
//!       "defaultVariant": "off",
//!       "targeting": { "if": [{ "$ref": "pro_users" }, "on",
//!                             { "fractional": [["on", 10], ["off", 90]] }] },
//!       "metadata": { "owner": "checkout-team" }
//!     }
//!   },
//!   "$evaluators": { "pro_users": { "==": [{ "var": "user.account.plan" }, "pro"] } },
//!   "metadata": { "flagSetId": "shop", "owner": "platform" }
//! }"#)?;
//!
//! let user = serde_json::json!({ "account": { "plan": "pro" } });
//! let ctx = Context::new("u-1").with("user", &user);
//! let details = set.bool_value("new-checkout", &ctx, false);
//! assert!(details.value);
//! assert_eq!(details.variant, Some("on"));
//! assert_eq!(details.reason.as_str(), "TARGETING_MATCH");
//! assert_eq!(details.metadata["owner"], "checkout-team");
//! assert_eq!(details.metadata["flagSetId"], "shop");
//! # Ok::<(), welcomedly_flags::flagd::FlagdError>(())
//! ```

mod compile;
mod eval;
mod export;
mod parse;
mod value;

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;

use foldhash::fast::RandomState;
use serde_json::{Map, Value};

use self::eval::Env;
pub use self::export::{Export, ExportNote, NoteKind, export};
use self::parse::{Compiled, FlagdFlag};
use self::value::Val;
use crate::context::Context;
use crate::eval::{ErrorCode, Evaluation, Match, Reason};
use crate::model::FlagType;

/// Bounds on what a flag file may make us spend (an admin API client writes these files).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlagdLimits {
    /// The largest file, in bytes. Default 4 MiB.
    pub max_bytes: usize,
    /// The most flags in one file. Default 10 000.
    pub max_flags: usize,
    /// The deepest nesting of one targeting expression, `$ref`s expanded. Default 64.
    pub max_depth: usize,
    /// The most expression nodes in one flag's targeting, `$ref`s expanded (a chain of
    /// evaluators that each use the next twice grows exponentially). Default 10 000.
    pub max_nodes_per_flag: usize,
    /// The most expression nodes in the whole file. Default 1 000 000.
    pub max_nodes: usize,
}

impl Default for FlagdLimits {
    fn default() -> FlagdLimits {
        FlagdLimits {
            max_bytes: 4 << 20,
            max_flags: 10_000,
            max_depth: 64,
            max_nodes_per_flag: 10_000,
            max_nodes: 1_000_000,
        }
    }
}

/// Why a flag file was refused as a whole (a flag with a problem of its own does not refuse
/// the file; see [`FlagdSet::problems`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlagdError {
    /// The file is larger than [`FlagdLimits::max_bytes`].
    TooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The file is not valid JSON (the parser's message, with line and column).
    Syntax(String),
    /// The file is JSON but not a flagd file (what is wrong and how to fix it).
    Shape(String),
    /// More flags than [`FlagdLimits::max_flags`].
    TooManyFlags {
        /// The number of flags in the file.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The targeting expressions together pass [`FlagdLimits::max_nodes`].
    TooManyNodes {
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for FlagdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlagdError::TooLarge { size, max } => write!(
                f,
                "the flagd file has {size} bytes, more than the {max} allowed; split it or raise FlagdLimits::max_bytes"
            ),
            FlagdError::Syntax(e) => {
                write!(f, "the flagd file is not valid JSON ({e}); fix the JSON")
            }
            FlagdError::Shape(e) => write!(f, "not a flagd flag file: {e}"),
            FlagdError::TooManyFlags { count, max } => write!(
                f,
                "the flagd file has {count} flags, more than the {max} allowed; split it or raise FlagdLimits::max_flags"
            ),
            FlagdError::TooManyNodes { max } => write!(
                f,
                "the flagd file's targeting expressions have more than {max} nodes in all ($refs expanded); simplify them or raise FlagdLimits::max_nodes"
            ),
        }
    }
}

impl std::error::Error for FlagdError {}

/// A flag of the file that evaluates as `PARSE_ERROR`, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlagProblem {
    /// The flag key.
    pub flag: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for FlagProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flag {:?}: {}", self.flag, self.message)
    }
}

/// An [`Evaluation`] with the flag's metadata (flag-set metadata overlaid with the flag's).
/// Dereferences to the evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Details<'a, T> {
    /// Value, variant, reason and error.
    pub evaluation: Evaluation<'a, T>,
    /// The flag's metadata; the flag-set metadata for an unknown or unparsable flag.
    pub metadata: &'a Map<String, Value>,
}

impl<'a, T> Deref for Details<'a, T> {
    type Target = Evaluation<'a, T>;

    fn deref(&self) -> &Evaluation<'a, T> {
        &self.evaluation
    }
}

/// A compiled flagd flag file. Immutable; share it behind an `Arc`.
#[derive(Debug)]
pub struct FlagdSet {
    index: HashMap<Box<str>, u32, RandomState>,
    flags: Box<[FlagdFlag]>,
    metadata: Map<String, Value>,
    problems: Vec<FlagProblem>,
}

/// Which variant a flag serves, before its value is read.
enum Served {
    Variant(u32, Reason<'static>),
    CallerDefault(Reason<'static>),
    Failed(ErrorCode),
}

impl FlagdSet {
    /// Reads and compiles a flagd flag file within the default [`FlagdLimits`].
    pub fn parse(text: &str) -> Result<FlagdSet, FlagdError> {
        FlagdSet::parse_with(text, &FlagdLimits::default())
    }

    /// Reads and compiles a flagd flag file within `limits`.
    pub fn parse_with(text: &str, limits: &FlagdLimits) -> Result<FlagdSet, FlagdError> {
        let parsed = parse::parse(text, limits)?;
        let index = (0u32..)
            .zip(&parsed.flags)
            .map(|(i, f)| (f.key.clone(), i))
            .collect();
        Ok(FlagdSet {
            index,
            flags: parsed.flags.into_boxed_slice(),
            metadata: parsed.metadata,
            problems: parsed.problems,
        })
    }

    /// Flags that evaluate as `PARSE_ERROR`, each with what is wrong.
    pub fn problems(&self) -> &[FlagProblem] {
        &self.problems
    }

    /// The flag-set metadata.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    /// The number of flags (including those with problems).
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    /// Whether the file has no flags.
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// Flag keys, in key order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.flags.iter().map(|f| &*f.key)
    }

    /// The type of flag `key`'s variants; `None` for an unknown flag, one with a problem or
    /// one without variants.
    pub fn flag_type(&self, key: &str) -> Option<FlagType> {
        self.compiled(key).ok()?.kind
    }

    /// Flag `key`'s metadata (flag-set metadata overlaid with the flag's own); the flag-set
    /// metadata for a flag with a problem; `None` for an unknown flag.
    pub fn flag_metadata(&self, key: &str) -> Option<&Map<String, Value>> {
        match self.flag(key)? {
            FlagdFlag { body: Ok(c), .. } => Some(&c.metadata),
            FlagdFlag { body: Err(_), .. } => Some(&self.metadata),
        }
    }

    #[inline]
    fn flag(&self, key: &str) -> Option<&FlagdFlag> {
        self.flags.get(*self.index.get(key)? as usize)
    }

    fn compiled(&self, key: &str) -> Result<&Compiled, ErrorCode> {
        match self.flag(key) {
            None => Err(ErrorCode::FlagNotFound),
            Some(FlagdFlag { body: Err(_), .. }) => Err(ErrorCode::ParseError),
            Some(FlagdFlag { body: Ok(c), .. }) => Ok(c),
        }
    }

    /// Runs the targeting: which variant, or the caller's default, and why.
    #[inline]
    fn serve(flag: &Compiled, key: &str, ctx: &Context<'_>) -> Served {
        let Some(targeting) = &flag.targeting else {
            return match flag.default_variant {
                Some(v) => Served::Variant(v, Reason::Static),
                None => Served::CallerDefault(Reason::Default),
            };
        };
        let budget = std::cell::Cell::new(eval::MAX_ITERATIONS);
        let env = Env::new(ctx, key, &budget);
        let result = eval::eval(targeting, &env).unwrap_or(Val::Null);
        if result.is_null() {
            return match flag.default_variant {
                Some(v) => Served::Variant(v, Reason::Fallthrough),
                None => Served::CallerDefault(Reason::Default),
            };
        }
        let mut buf = String::new();
        match result
            .variant_name(&mut buf)
            .and_then(|name| flag.variants.find(name))
        {
            Some(v) => Served::Variant(v, Reason::TargetingMatch(Match::Expression)),
            None => Served::Failed(ErrorCode::General),
        }
    }

    #[inline]
    pub(crate) fn typed<'a, T>(
        &'a self,
        key: &str,
        ctx: &Context<'_>,
        default: T,
        accepts: fn(FlagType) -> bool,
        read: impl Fn(&'a Value) -> Option<T>,
    ) -> Details<'a, T> {
        let failed = |default, code, metadata| Details {
            evaluation: Evaluation::failed(default, code),
            metadata,
        };
        let flag = match self.compiled(key) {
            Ok(flag) => flag,
            Err(code) => return failed(default, code, &self.metadata),
        };
        let metadata = &flag.metadata;
        if !flag.enabled {
            return Details {
                evaluation: Evaluation {
                    value: default,
                    variant: None,
                    reason: Reason::Disabled,
                    error: None,
                },
                metadata,
            };
        }
        if flag.kind.is_some_and(|k| !accepts(k)) {
            return failed(default, ErrorCode::TypeMismatch, metadata);
        }
        let (v, reason) = match FlagdSet::serve(flag, key, ctx) {
            Served::Variant(v, reason) => (v, reason),
            Served::CallerDefault(reason) => {
                return Details {
                    evaluation: Evaluation {
                        value: default,
                        variant: None,
                        reason,
                        error: None,
                    },
                    metadata,
                };
            }
            Served::Failed(code) => return failed(default, code, metadata),
        };
        match flag.variants.list.get(v as usize) {
            Some((name, value)) => match read(value) {
                Some(value) => Details {
                    evaluation: Evaluation {
                        value,
                        variant: Some(name),
                        reason,
                        error: None,
                    },
                    metadata,
                },
                None => failed(default, ErrorCode::TypeMismatch, metadata),
            },
            None => failed(default, ErrorCode::General, metadata),
        }
    }

    /// Evaluates a boolean flag.
    pub fn bool_value(&self, key: &str, ctx: &Context<'_>, default: bool) -> Details<'_, bool> {
        self.typed(key, ctx, default, |t| t == FlagType::Bool, Value::as_bool)
    }

    /// Evaluates a string flag.
    pub fn string_value<'a>(
        &'a self,
        key: &str,
        ctx: &Context<'_>,
        default: &'a str,
    ) -> Details<'a, &'a str> {
        self.typed(key, ctx, default, |t| t == FlagType::String, Value::as_str)
    }

    /// Evaluates an integer flag (a served fractional number is a `TYPE_MISMATCH`).
    pub fn int_value(&self, key: &str, ctx: &Context<'_>, default: i64) -> Details<'_, i64> {
        self.typed(
            key,
            ctx,
            default,
            |t| matches!(t, FlagType::Int | FlagType::Float),
            Value::as_i64,
        )
    }

    /// Evaluates a number flag (integer variants are converted).
    pub fn float_value(&self, key: &str, ctx: &Context<'_>, default: f64) -> Details<'_, f64> {
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
    ) -> Details<'a, &'a Value> {
        self.typed(key, ctx, default, |t| t == FlagType::Object, Some)
    }

    /// Evaluates a flag of any type, giving the served variant's JSON value (`None` when the
    /// caller's default applies).
    pub fn json_value<'a>(
        &'a self,
        key: &str,
        ctx: &Context<'_>,
    ) -> Details<'a, Option<&'a Value>> {
        self.typed(key, ctx, None, |_| true, |v| Some(Some(v)))
    }
}

#[cfg(test)]
mod tests;
