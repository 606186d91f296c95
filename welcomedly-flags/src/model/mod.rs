//! The JSON wire format of a flag set: what the stores keep, the admin API accepts and the
//! [`Snapshot`](crate::Snapshot) is compiled from.
//!
//! Every object is camelCase and rejects unknown fields, so a typo (`"fallthru"`) is an error,
//! not a silently ignored setting. [`FlagSet::from_json`] parses *and* validates; a parse error
//! is reported like a validation problem, with the path of the offending value.
//!
//! ```
//! use welcomedly_flags::model::FlagSet;
//!
//! let set = FlagSet::from_json(r#"{
//!   "flags": {
//!     "new-ui": {
//!       "variants": { "on": true, "off": false },
//!       "rules": [
//!         { "clauses": [{ "attribute": "country", "op": "in", "values": ["DE", "FR"] }],
//!           "serve": { "variant": "on" } }
//!       ],
//!       "fallthrough": { "rollout": { "variants": [
//!         { "variant": "on", "weight": 10000 }, { "variant": "off", "weight": 90000 }
//!       ] } }
//!     }
//!   }
//! }"#)?;
//! assert!(set.flags.contains_key("new-ui"));
//! // The canonical form parses back to the same set.
//! assert_eq!(FlagSet::from_json(&set.to_json())?, set);
//! # Ok::<(), welcomedly_flags::ValidationErrors>(())
//! ```

mod clause;
mod flag_type;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use self::clause::{Clause, Op};
pub use self::flag_type::FlagType;
pub use crate::bucketing::BucketingVersion;
use crate::problem::{Problem, ValidationErrors};

/// The attribute name that stands for the context's targeting key (OpenFeature's name).
pub const TARGETING_KEY: &str = "targetingKey";

/// A whole flag set: every flag and every segment, validated and swapped as one unit.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct FlagSet {
    /// Flags by key.
    #[serde(default)]
    pub flags: BTreeMap<String, Flag>,
    /// Reusable segments by key, referenced by `inSegment` clauses.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub segments: BTreeMap<String, Segment>,
}

impl FlagSet {
    /// An empty flag set.
    pub fn new() -> FlagSet {
        FlagSet::default()
    }

    /// Parses a flag set without validating it (for tools that edit a set before checking it).
    pub fn parse_json(text: &str) -> Result<FlagSet, ValidationErrors> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ValidationErrors::from(vec![Problem::new(
                path,
                format!(
                    "{}; fix the JSON (see the flag set format in the crate docs)",
                    err.inner()
                ),
            )])
        })
    }

    /// The canonical JSON form: pretty-printed, keys sorted, defaults left out. Stable across
    /// calls, so two equal sets give byte-equal text.
    pub fn to_json(&self) -> String {
        // Serializing plain maps, strings and numbers cannot fail; fall back to an empty object
        // rather than panicking if a future field type ever could.
        serde_json::to_string_pretty(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// One feature flag: its variants and how a context picks one.
///
/// Evaluation order: `enabled` (the kill switch) → `prerequisites` → `targets` → `rules` in
/// order → `fallthrough`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Flag {
    /// The kill switch: a disabled flag serves the caller's default, whatever its rules say.
    /// Default `true`.
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Variant name → value. All values of one flag have one type: boolean, string, number or
    /// JSON object/array.
    pub variants: BTreeMap<String, serde_json::Value>,
    /// Flags that must serve one of the listed variants for this flag to be evaluated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prerequisites: Vec<Prerequisite>,
    /// Explicit targeting keys per variant, checked before the rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Target>,
    /// Ordered rules; the first whose clauses all match serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Served when no target or rule matched; without it the caller's default is served with
    /// reason `DEFAULT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallthrough: Option<Serve>,
    /// The bucketing salt of this flag's rollouts. Default: the flag key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// The bucketing algorithm of this flag's rollouts. Default `v1`.
    #[serde(default, skip_serializing_if = "BucketingVersion::is_default")]
    pub bucketing: BucketingVersion,
}

fn enabled_default() -> bool {
    true
}

impl Flag {
    /// A flag with these variants, enabled, with no targeting and no fallthrough.
    pub fn new(variants: BTreeMap<String, serde_json::Value>) -> Flag {
        Flag {
            enabled: true,
            description: None,
            variants,
            prerequisites: Vec::new(),
            targets: Vec::new(),
            rules: Vec::new(),
            fallthrough: None,
            salt: None,
            bucketing: BucketingVersion::default(),
        }
    }
}

/// "This flag requires flag `flag` to serve one of `variants`."
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Prerequisite {
    /// The key of the required flag.
    pub flag: String,
    /// Variants of the required flag that satisfy the prerequisite (at least one).
    pub variants: Vec<String>,
}

/// Targeting keys that get one variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Target {
    /// The variant served to these keys.
    pub variant: String,
    /// Targeting keys.
    pub values: Vec<String>,
}

/// A targeting rule: when every clause matches, `serve` decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Rule {
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Clauses, all of which must match (an empty list matches every context).
    #[serde(default)]
    pub clauses: Vec<Clause>,
    /// What the rule serves.
    pub serve: Serve,
}

/// What a rule or the fallthrough serves: exactly one of a fixed `variant` or a `rollout`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Serve {
    /// A fixed variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// A percentage rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

impl Serve {
    /// Serve one fixed variant.
    pub fn variant(name: impl Into<String>) -> Serve {
        Serve {
            variant: Some(name.into()),
            rollout: None,
        }
    }

    /// Serve a rollout.
    pub fn rollout(rollout: Rollout) -> Serve {
        Serve {
            variant: None,
            rollout: Some(rollout),
        }
    }
}

/// A percentage rollout: weights out of [`crate::bucketing::TOTAL`] (100 000, so one unit is
/// 0.001 %), assigned by bucketing the `bucketBy` attribute with the flag's salt.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Rollout {
    /// The attribute to bucket by. Default: the targeting key. A context without it does not
    /// match the rollout (the next rule, or the caller's default, applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_by: Option<String>,
    /// Variants and their weights, in bucket order; the weights sum to 100 000.
    pub variants: Vec<WeightedVariant>,
}

/// One slice of a [`Rollout`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct WeightedVariant {
    /// The variant.
    pub variant: String,
    /// Its share, out of 100 000.
    pub weight: u32,
}

impl WeightedVariant {
    /// A variant with a weight out of 100 000.
    pub fn new(variant: impl Into<String>, weight: u32) -> WeightedVariant {
        WeightedVariant {
            variant: variant.into(),
            weight,
        }
    }
}

/// A reusable set of contexts: explicit included/excluded targeting keys plus rules.
///
/// A context is in the segment when its key is included, or when it is not excluded and one of
/// the rules matches. A key may not be both included and excluded.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Segment {
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Targeting keys always in the segment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included: Vec<String>,
    /// Targeting keys never in the segment, whatever the rules say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
    /// Rules; a context matching any of them is in the segment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<SegmentRule>,
}

/// A segment rule: every clause must match.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct SegmentRule {
    /// Clauses, all of which must match.
    pub clauses: Vec<Clause>,
}
