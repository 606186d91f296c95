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

use crate::model::FlagSet;
pub use crate::problem::{Problem, ValidationErrors};

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

/// The checks that need no compiling: variants, references, weights, duplicates, cycles.
pub(crate) fn check_structure(set: &FlagSet, problems: &mut Vec<Problem>) {
    structure::check(set, problems);
}
