//! The compiled, immutable snapshot a service evaluates flags against.
//!
//! [`Snapshot::compile`] validates a [`FlagSet`] and compiles it: flags indexed by key in a
//! foldhash map, variants by position, regexes, semvers, dates and key sets parsed, each
//! rollout's salt pre-hashed. Evaluation then only reads: it takes no lock and allocates nothing
//! (a counting-allocator test in `tests/no_alloc.rs` holds it to that).
//!
//! ```
//! use welcomedly_flags::{Context, Reason, Snapshot};
//!
//! let snapshot = Snapshot::compile_json(r#"{ "flags": {
//!   "max-upload-mb": { "variants": { "small": 1, "large": 100 },
//!                      "rules": [{ "clauses": [{ "attribute": "plan", "op": "in", "values": ["pro", "team"] }],
//!                                  "serve": { "variant": "large" } }],
//!                      "fallthrough": { "variant": "small" } }
//! } }"#, 7)?;
//! assert_eq!(snapshot.version(), 7);
//! let pro = Context::new("u1").with("plan", "team");
//! assert_eq!(snapshot.int_value("max-upload-mb", &pro, 5).value, 100);
//! let free = Context::new("u2");
//! assert_eq!(snapshot.int_value("max-upload-mb", &free, 5).value, 1);
//! assert_eq!(snapshot.int_value("max-upload-mb", &free, 5).reason, Reason::Fallthrough);
//! // Asking for another type is the caller's default with TYPE_MISMATCH.
//! assert_eq!(snapshot.bool_value("max-upload-mb", &free, false).error.map(|e| e.as_str()), Some("TYPE_MISMATCH"));
//! # Ok::<(), welcomedly_flags::ValidationErrors>(())
//! ```

mod compile;
mod document;
mod resolve;
mod typed;

pub use self::document::DocumentFormat;

use std::collections::HashMap;
use std::fmt;

use foldhash::fast::RandomState;
use serde_json::Value;

use crate::bucketing::Bucketer;
use crate::eval::{CompiledClause, CompiledSegment};
use crate::model::FlagSet;
pub use crate::model::FlagType;
use crate::problem::ValidationErrors;

/// What a rule or the fallthrough serves, compiled.
#[derive(Debug)]
pub(crate) enum CompiledServe {
    Variant(u32),
    Rollout {
        bucket_by: Box<str>,
        /// `(end, variant)`: buckets below `end` (and at or above the previous end) get `variant`.
        slices: Box<[(u32, u32)]>,
    },
}

#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub(crate) clauses: Box<[CompiledClause]>,
    pub(crate) serve: CompiledServe,
}

#[derive(Debug)]
pub(crate) struct CompiledPrerequisite {
    pub(crate) flag: u32,
    pub(crate) variants: Box<[u32]>,
}

#[derive(Debug)]
pub(crate) struct CompiledFlag {
    pub(crate) key: Box<str>,
    pub(crate) enabled: bool,
    pub(crate) kind: FlagType,
    /// Variant names and values, by id (key order).
    pub(crate) variants: Box<[(Box<str>, Value)]>,
    pub(crate) prerequisites: Box<[CompiledPrerequisite]>,
    pub(crate) targets: HashMap<Box<str>, u32, RandomState>,
    pub(crate) rules: Box<[CompiledRule]>,
    pub(crate) fallthrough: Option<CompiledServe>,
    pub(crate) bucketer: Bucketer,
    /// No prerequisites, targets or rules, and a fixed fallthrough.
    pub(crate) is_static: bool,
    /// The variant an enabled static flag always serves: evaluation skips resolution.
    pub(crate) static_variant: Option<u32>,
}

/// An immutable, compiled flag set with a version. Cheap to share behind an `Arc`; see
/// [`Flags`](crate::Flags) for the swappable handle.
pub struct Snapshot {
    version: u64,
    source: FlagSet,
    index: HashMap<Box<str>, u32, RandomState>,
    flags: Box<[CompiledFlag]>,
    segments: Box<[CompiledSegment]>,
    /// Every regular expression of the set by pattern (clones of those in the clauses), for
    /// [`Snapshot::compile_next`] to reuse.
    regexes: HashMap<String, regex::Regex>,
    /// Set when the snapshot was compiled from a flagd file: then `flags` and `segments` are
    /// empty and every evaluation goes to the flagd set.
    #[cfg(feature = "flagd")]
    flagd: Option<Box<document::FlagdSource>>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("flags", &self.flags.len())
            .field("segments", &self.segments.len())
            .finish_non_exhaustive()
    }
}

impl Default for Snapshot {
    fn default() -> Snapshot {
        Snapshot::empty()
    }
}

impl Snapshot {
    /// A snapshot without flags, version 0: every evaluation returns the caller's default with
    /// `FLAG_NOT_FOUND`.
    pub fn empty() -> Snapshot {
        Snapshot {
            version: 0,
            source: FlagSet::default(),
            index: HashMap::default(),
            flags: Box::new([]),
            segments: Box::new([]),
            regexes: HashMap::new(),
            #[cfg(feature = "flagd")]
            flagd: None,
        }
    }

    /// Validates and compiles `set`. Every problem is listed on failure.
    pub fn compile(set: &FlagSet, version: u64) -> Result<Snapshot, ValidationErrors> {
        compile::compile(set, version, None)
    }

    /// Parses, validates and compiles a flag set in its JSON form.
    pub fn compile_json(text: &str, version: u64) -> Result<Snapshot, ValidationErrors> {
        Snapshot::compile(&FlagSet::parse_json(text)?, version)
    }

    /// [`Snapshot::compile`] for the snapshot that replaces `previous`: regular expressions
    /// whose pattern `previous` holds too are reused, not compiled again, so an update compiles
    /// only its new patterns. The result is the same as [`Snapshot::compile`]'s.
    pub fn compile_next(
        set: &FlagSet,
        version: u64,
        previous: &Snapshot,
    ) -> Result<Snapshot, ValidationErrors> {
        compile::compile(set, version, Some(previous))
    }

    /// [`Snapshot::compile_next`] from the JSON form.
    pub fn compile_json_next(
        text: &str,
        version: u64,
        previous: &Snapshot,
    ) -> Result<Snapshot, ValidationErrors> {
        Snapshot::compile_next(&FlagSet::parse_json(text)?, version, previous)
    }

    /// The version given to [`Snapshot::compile`].
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The flag set this snapshot was compiled from (empty for a snapshot compiled from a flagd
    /// file: see `Snapshot::flagd`).
    pub fn flag_set(&self) -> &FlagSet {
        &self.source
    }

    /// The number of flags.
    pub fn len(&self) -> usize {
        #[cfg(feature = "flagd")]
        if let Some(f) = &self.flagd {
            return f.set.len();
        }
        self.flags.len()
    }

    /// Whether there are no flags.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flag keys, in key order.
    // One binding, extended with the flagd side when that feature is on.
    #[allow(clippy::let_and_return)]
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        let native = self.flags.iter().map(|f| &*f.key);
        // A flagd snapshot has no native flags, so the chain is one side or the other.
        #[cfg(feature = "flagd")]
        let native = native.chain(self.flagd.iter().flat_map(|f| f.set.keys()));
        native
    }

    /// The type of flag `key`'s variants, or `None` for an unknown flag (and, in a flagd
    /// snapshot, for a flag with a problem or without variants).
    pub fn flag_type(&self, key: &str) -> Option<FlagType> {
        #[cfg(feature = "flagd")]
        if let Some(f) = &self.flagd {
            return f.set.flag_type(key);
        }
        self.flag(key).map(|(_, f)| f.kind)
    }

    #[inline]
    fn flag(&self, key: &str) -> Option<(u32, &CompiledFlag)> {
        let id = *self.index.get(key)?;
        Some((id, self.flags.get(id as usize)?))
    }
}
