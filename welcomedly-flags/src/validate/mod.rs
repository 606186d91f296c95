//! Validation of a whole flag set: every problem found, each with the path of the offending
//! value and what to do about it.
//!
//! A flag set is checked as one unit before it is compiled or stored; an invalid update is
//! rejected as a whole and the last good snapshot stays in service.
//!
//! Every instance compiles every update, so what an update may cost is bounded: nesting depth
//! ([`MAX_DEPTH`]) and regular expressions ([`MAX_REGEX_PATTERNS`] distinct patterns per set,
//! [`MAX_REGEX_LEN`] bytes each, [`MAX_REGEX_COMPILED`] compiled). The stores and the admin API
//! compile on a blocking thread, never on an async worker.
//!
//! ```
//! use welcomedly_flags::model::FlagSet;
//!
//! let err = FlagSet::from_json(r#"{ "flags": {
//!   "a": { "variants": { "on": true }, "prerequisites": [{ "flag": "b", "variants": ["on"] }] },
//!   "b": { "variants": { "on": true }, "prerequisites": [{ "flag": "a", "variants": ["on"] }],
//!          "fallthrough": { "variant": "of" } }
//! } }"#).unwrap_err();
//! let paths: Vec<&str> = err.problems().iter().map(|p| p.path()).collect();
//! assert_eq!(paths, ["flags.b.fallthrough.variant", "flags.b.prerequisites[0].flag"]);
//! println!("{err}");
//! ```

mod graph;
mod structure;

use std::fmt;

use serde::Serialize;

use crate::model::FlagSet;

/// Chains of prerequisites, and of segments nested in segments, may be at most this deep (the
/// flag or segment itself counts as one level). Evaluation recurses along them.
pub const MAX_DEPTH: usize = 64;

/// A flag set may hold at most this many *distinct* regular expressions (`matches` operands,
/// in flags and segments together; a pattern used by several clauses counts once and is compiled
/// once). Every instance compiles every pattern on each update and at each start: this cap and
/// [`MAX_REGEX_COMPILED`] bound that work to about 0.1 s of CPU and 30 MB per flag set, where
/// 40 unbounded patterns took 1.1 s and 224 MB.
pub const MAX_REGEX_PATTERNS: usize = 64;

/// The longest regular expression accepted, in bytes of its source text.
pub const MAX_REGEX_LEN: usize = 256;

/// The most memory one compiled regular expression may take (`RegexBuilder::size_limit`), and
/// the lazy DFA cache it may grow per matching thread (`RegexBuilder::dfa_size_limit`), in
/// bytes: 256 KiB. Short patterns can exceed it: Unicode classes are large and counted
/// repetitions copy them (`\w{1000}` is a thousand copies of `\w`), so a pattern over it is
/// refused with a hint to use an ASCII class (`[a-z0-9_]`, `(?-u:\w)`) or a smaller count.
pub const MAX_REGEX_COMPILED: usize = 256 * 1024;

/// One problem in a flag set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    path: String,
    message: String,
}

impl Problem {
    /// A problem at `path` (e.g. `flags.new-ui.rules[2].clauses[0].values[0]`).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Where: dotted map keys and `[index]` list positions from the root of the flag set; empty
    /// for the document as a whole.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong and what to do.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a flag set was rejected: one or more [`Problem`]s.
///
/// Serializes as `{"problems": [{"path": …, "message": …}, …]}` (the admin API's 422 body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationErrors {
    problems: Vec<Problem>,
}

impl ValidationErrors {
    /// Every problem, in the order found.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Whether a problem is reported at exactly `path`.
    pub fn has_problem_at(&self, path: &str) -> bool {
        self.problems.iter().any(|p| p.path == path)
    }
}

impl From<Vec<Problem>> for ValidationErrors {
    fn from(problems: Vec<Problem>) -> ValidationErrors {
        ValidationErrors { problems }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid flag set ({n} problem{})",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n- {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Checks `set` as a whole (see [`FlagSet::validate`]). Validating is compiling: what
/// validates is exactly what compiles, and operands (regexes, semvers, dates, segment names) are
/// checked by the code that parses them.
pub(crate) fn validate(set: &FlagSet) -> Result<(), ValidationErrors> {
    crate::Snapshot::compile(set, 0).map(drop)
}

/// The checks that need no compiling: variants, references, weights, duplicates, cycles.
pub(crate) fn check_structure(set: &FlagSet, problems: &mut Vec<Problem>) {
    structure::check(set, problems);
}
