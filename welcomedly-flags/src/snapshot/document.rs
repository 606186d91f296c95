//! A stored flag document in either format: the native [`FlagSet`](crate::FlagSet) JSON or a
//! flagd flag file (feature `flagd`). The stores keep the text as written; every instance
//! compiles it with [`Snapshot::compile_document`], which tells the formats apart.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

use super::Snapshot;
use crate::problem::{Problem, ValidationErrors};

/// The format of a flag document.
///
/// The two cannot be confused: the native format rejects unknown fields, and a flagd file is
/// recognised by what the native format never has: a top-level `$schema`, `$evaluators` or
/// `metadata` member, or a flag with a `state`. Anything else (including text that is not
/// JSON, whose error the native parser reports) is native.
///
/// ```
/// use welcomedly_flags::DocumentFormat;
///
/// let flagd = r#"{ "flags": { "a": { "state": "ENABLED", "variants": { "on": true }, "defaultVariant": "on" } } }"#;
/// assert_eq!(DocumentFormat::of(flagd), DocumentFormat::Flagd);
/// let native = r#"{ "flags": { "a": { "variants": { "on": true }, "fallthrough": { "variant": "on" } } } }"#;
/// assert_eq!(DocumentFormat::of(native), DocumentFormat::Native);
/// assert_eq!(DocumentFormat::of(r#"{ "$schema": "https://flagd.dev/schema/v0/flags.json", "flags": {} }"#), DocumentFormat::Flagd);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DocumentFormat {
    /// The native flag set ([`FlagSet`](crate::FlagSet)'s JSON).
    Native,
    /// A flagd flag file (flagd.dev/reference/flag-definitions).
    Flagd,
}

impl DocumentFormat {
    /// The format of `text` (see the type's docs for the rule).
    pub fn of(text: &str) -> DocumentFormat {
        #[derive(Deserialize)]
        struct Sniff {
            #[serde(rename = "$schema", default)]
            schema: Option<IgnoredAny>,
            #[serde(rename = "$evaluators", default)]
            evaluators: Option<IgnoredAny>,
            #[serde(default)]
            metadata: Option<IgnoredAny>,
            #[serde(default)]
            flags: Option<Map<String, Value>>,
        }
        let Ok(sniff) = serde_json::from_str::<Sniff>(text) else {
            return DocumentFormat::Native;
        };
        let flagd_flag = sniff
            .flags
            .iter()
            .flat_map(|f| f.values())
            .any(|f| f.get("state").is_some());
        if sniff.schema.is_some()
            || sniff.evaluators.is_some()
            || sniff.metadata.is_some()
            || flagd_flag
        {
            DocumentFormat::Flagd
        } else {
            DocumentFormat::Native
        }
    }

    /// The media type the admin API uses for this format: `application/json` or
    /// `application/vnd.flagd+json`.
    pub const fn media_type(self) -> &'static str {
        match self {
            DocumentFormat::Native => "application/json",
            DocumentFormat::Flagd => FLAGD_MEDIA_TYPE,
        }
    }
}

/// The media type of a flagd flag file in the admin API.
const FLAGD_MEDIA_TYPE: &str = "application/vnd.flagd+json";

/// A snapshot's flagd side: the compiled file and its JSON (for change subscriptions).
#[cfg(feature = "flagd")]
#[derive(Debug)]
pub(crate) struct FlagdSource {
    pub(crate) set: crate::flagd::FlagdSet,
    pub(crate) raw: Value,
}

impl Snapshot {
    /// Compiles a stored document in either format (see [`DocumentFormat`]): what the stores'
    /// [`sync_flags`](crate::store::sync_flags) runs on every instance. A flagd file's
    /// whole-file errors (not JSON, not a flagd file, over a bound) are one problem at the root;
    /// a flag of it with a problem of its own loads and evaluates as `PARSE_ERROR`, as flagd
    /// says. Without the `flagd` feature a flagd file is refused with a problem that says so.
    pub fn compile_document(
        text: &str,
        version: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ValidationErrors> {
        match DocumentFormat::of(text) {
            DocumentFormat::Native => match previous {
                Some(previous) => Snapshot::compile_json_next(text, version, previous),
                None => Snapshot::compile_json(text, version),
            },
            #[cfg(feature = "flagd")]
            DocumentFormat::Flagd => Snapshot::compile_flagd(text, version)
                .map_err(|e| ValidationErrors::from(vec![Problem::new("", e.to_string())])),
            #[cfg(not(feature = "flagd"))]
            DocumentFormat::Flagd => Err(ValidationErrors::from(vec![Problem::new(
                "",
                "this is a flagd flag file, and this build reads only the native format: enable the flagd feature of welcomedly-flags",
            )])),
        }
    }

    /// A snapshot of a flagd flag file (within the default
    /// [`FlagdLimits`](crate::flagd::FlagdLimits)): evaluated through the same typed calls as a
    /// native one, with flagd's results (see the `flagd` module). Its
    /// [`flag_set`](Snapshot::flag_set) is empty.
    #[cfg(feature = "flagd")]
    #[cfg_attr(docsrs, doc(cfg(feature = "flagd")))]
    pub fn compile_flagd(text: &str, version: u64) -> Result<Snapshot, crate::flagd::FlagdError> {
        let set = crate::flagd::FlagdSet::parse(text)?;
        // Parsed once more as plain JSON for change subscriptions: it parsed already, so this
        // cannot fail; `Null` would only make every flag look changed.
        let raw = serde_json::from_str(text).unwrap_or(Value::Null);
        let mut snapshot = Snapshot::empty();
        snapshot.version = version;
        snapshot.flagd = Some(Box::new(FlagdSource { set, raw }));
        Ok(snapshot)
    }

    /// The flagd file this snapshot was compiled from, if it was.
    #[cfg(feature = "flagd")]
    #[cfg_attr(docsrs, doc(cfg(feature = "flagd")))]
    pub fn flagd(&self) -> Option<&crate::flagd::FlagdSet> {
        self.flagd.as_deref().map(|f| &f.set)
    }

    /// The format this snapshot was compiled from.
    pub fn format(&self) -> DocumentFormat {
        #[cfg(feature = "flagd")]
        if self.flagd.is_some() {
            return DocumentFormat::Flagd;
        }
        DocumentFormat::Native
    }

    /// Flag `key`'s metadata: a flagd flag's (flag-set metadata overlaid with its own); `None`
    /// for a native flag (its `description` is in [`flag_set`](Snapshot::flag_set)) or an
    /// unknown one.
    pub fn metadata(&self, key: &str) -> Option<&Map<String, Value>> {
        #[cfg(feature = "flagd")]
        if let Some(f) = &self.flagd {
            return f.set.flag_metadata(key);
        }
        let _ = key;
        None
    }

    /// The flag-set metadata: a flagd file's top-level `metadata`; `None` for a native set or
    /// a flagd file without metadata.
    pub fn set_metadata(&self) -> Option<&Map<String, Value>> {
        #[cfg(feature = "flagd")]
        if let Some(f) = &self.flagd {
            return Some(f.set.metadata()).filter(|m| !m.is_empty());
        }
        None
    }

    /// The flagd file as JSON, for change subscriptions.
    pub(crate) fn flagd_raw(&self) -> Option<&Value> {
        #[cfg(feature = "flagd")]
        if let Some(f) = &self.flagd {
            return Some(&f.raw);
        }
        None
    }
}
