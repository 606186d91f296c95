//! What a history entry records about a change: fingerprints (ETag and size) of the before and
//! after definitions and the paths that changed, with small values shown and large ones
//! digested. Bounded whatever the flags' size: a history entry stays a few KiB where the whole
//! before/after of a 1 MiB flag set would take 2 MiB.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::store::{bounded, digest};

/// The most changed paths an entry lists (the rest are counted in `more`).
pub(super) const MAX_PATHS: usize = 16;
/// The most flag or segment keys a whole-set entry lists (the rest are counted in `more`).
pub(super) const MAX_KEYS: usize = 32;
/// The longest path, key or value shown, in bytes of JSON; a longer value is replaced by its
/// size and digest, a longer path or key is cut.
pub(super) const MAX_SHOWN: usize = 128;

/// `{"etag": <the admin API's ETag of it>, "bytes": <size of its JSON>}`, or null when absent.
pub(super) fn fingerprint<T: Serialize>(value: Option<&T>) -> Value {
    let Some(value) = value else {
        return Value::Null;
    };
    let text = serde_json::to_string(value).unwrap_or_default();
    json!({ "etag": super::etag_of(&text), "bytes": text.len() })
}

/// A value as an entry shows it: itself when small, else `{"bytes", "digest"}`.
fn show(value: &Value) -> Value {
    let text = serde_json::to_string(value).unwrap_or_default();
    if text.len() <= MAX_SHOWN {
        value.clone()
    } else {
        json!({ "bytes": text.len(), "digest": digest(text.as_bytes()) })
    }
}

struct Paths {
    shown: Vec<Value>,
    more: usize,
}

impl Paths {
    fn record(&mut self, path: &str, before: Option<&Value>, after: Option<&Value>) {
        if self.shown.len() >= MAX_PATHS {
            self.more += 1;
            return;
        }
        let mut entry = Map::new();
        entry.insert("path".into(), Value::String(bounded(path, MAX_SHOWN)));
        if let Some(b) = before {
            entry.insert("before".into(), show(b));
        }
        if let Some(a) = after {
            entry.insert("after".into(), show(a));
        }
        self.shown.push(Value::Object(entry));
    }

    /// Records every leaf where `before` and `after` differ: objects by key, arrays by index.
    fn walk(&mut self, path: &mut String, before: Option<&Value>, after: Option<&Value>) {
        match (before, after) {
            (Some(b), Some(a)) if b == a => {}
            (Some(Value::Object(b)), Some(Value::Object(a))) => {
                let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
                for key in keys {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                    self.walk(path, b.get(key), a.get(key));
                    path.truncate(len);
                }
            }
            (Some(Value::Array(b)), Some(Value::Array(a))) => {
                for i in 0..b.len().max(a.len()) {
                    let len = path.len();
                    path.push('[');
                    path.push_str(itoa::Buffer::new().format(i));
                    path.push(']');
                    self.walk(path, b.get(i), a.get(i));
                    path.truncate(len);
                }
            }
            _ => self.record(path, before, after),
        }
    }
}

/// The entry's diff for one flag: `{"key", "before", "after", "changes", "more"}`, where
/// `before`/`after` are [`fingerprint`]s and `changes` lists up to [`MAX_PATHS`] paths (relative to
/// the flag; `""` for the whole flag when it was created or deleted) with their old and new
/// values.
pub(super) fn flag_change<T: Serialize>(key: &str, before: Option<&T>, after: Option<&T>) -> Value {
    let b = before.and_then(|v| serde_json::to_value(v).ok());
    let a = after.and_then(|v| serde_json::to_value(v).ok());
    let mut paths = Paths {
        shown: Vec::new(),
        more: 0,
    };
    paths.walk(&mut String::new(), b.as_ref(), a.as_ref());
    json!({
        "key": key,
        "before": fingerprint(before),
        "after": fingerprint(after),
        "changes": paths.shown,
        "more": paths.more,
    })
}

/// Which keys were added, removed or changed between two maps, up to [`MAX_KEYS`] in all.
fn keys<T: PartialEq>(before: &BTreeMap<String, T>, after: &BTreeMap<String, T>) -> Value {
    let mut lists: [Vec<String>; 3] = Default::default();
    let mut listed = 0;
    let mut more = 0;
    for key in before
        .keys()
        .chain(after.keys().filter(|k| !before.contains_key(*k)))
    {
        let which = match (before.get(key), after.get(key)) {
            (Some(_), None) => 1,
            (None, Some(_)) => 0,
            (Some(b), Some(a)) if b != a => 2,
            _ => continue,
        };
        if listed >= MAX_KEYS {
            more += 1;
            continue;
        }
        listed += 1;
        if let Some(list) = lists.get_mut(which) {
            list.push(bounded(key, MAX_SHOWN));
        }
    }
    let [added, removed, changed] = lists;
    json!({ "added": added, "removed": removed, "changed": changed, "more": more })
}

/// The entry's diff for a whole-set replacement: each set's version, size, digest and counts,
/// and which flags and segments were added, removed or changed.
pub(super) fn set_change(before: (u64, &crate::FlagSet), after: (u64, &crate::FlagSet)) -> Value {
    let summary = |(version, set): (u64, &crate::FlagSet)| {
        let text = set.to_json();
        json!({
            "version": version,
            "bytes": text.len(),
            "digest": digest(text.as_bytes()),
            "flags": set.flags.len(),
            "segments": set.segments.len(),
        })
    };
    json!({
        "before": summary(before),
        "after": summary(after),
        "flags": keys(&before.1.flags, &after.1.flags),
        "segments": keys(&before.1.segments, &after.1.segments),
    })
}

/// The diff of a whole-document write where either side is a flagd file: `{"format", "before",
/// "after", "flags"}`, `before` and `after` being `{"version", "bytes", "digest", "flags"}` of
/// each document's text and `flags` the keys `added`, `removed` and `changed` (each flag's JSON
/// compared; a flag whose format changed counts as changed).
#[cfg(feature = "flagd")]
pub(super) fn document_change(before: (u64, &str), after: (u64, &str)) -> Value {
    let flags = |text: &str| -> BTreeMap<String, Value> {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(mut doc)) => match doc.remove("flags") {
                Some(Value::Object(flags)) => flags.into_iter().collect(),
                _ => BTreeMap::new(),
            },
            _ => BTreeMap::new(),
        }
    };
    let (b, a) = (flags(before.1), flags(after.1));
    let summary = |(version, text): (u64, &str), flags: &BTreeMap<String, Value>| {
        json!({
            "version": version,
            "bytes": text.len(),
            "digest": digest(text.as_bytes()),
            "flags": flags.len(),
        })
    };
    json!({
        "format": "flagd",
        "before": summary(before, &b),
        "after": summary(after, &a),
        "flags": keys(&b, &a),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn changed_leaves_are_listed_by_path_with_small_values_shown_and_large_ones_digested() {
        let big = "v".repeat(1000);
        let before = json!({ "enabled": true, "rules": [{ "values": ["a", "b"] }], "note": big });
        let after =
            json!({ "enabled": false, "rules": [{ "values": ["a", "c", "d"] }], "note": "short" });
        let d = flag_change("f", Some(&before), Some(&after));
        let changes = d["changes"].as_array().unwrap();
        let paths: Vec<&str> = changes
            .iter()
            .map(|c| c["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "enabled",
                "note",
                "rules[0].values[1]",
                "rules[0].values[2]"
            ]
        );
        assert_eq!(changes[0]["before"], true);
        assert_eq!(changes[1]["before"]["bytes"], 1002);
        assert_eq!(changes[1]["after"], "short");
        assert_eq!(changes[3].get("before"), None);
        assert_eq!(d["more"], 0);
        assert_eq!(
            d["before"]["bytes"],
            serde_json::to_string(&before).unwrap().len()
        );
    }

    #[test]
    fn a_change_everywhere_lists_the_first_paths_and_counts_the_rest() {
        let before =
            json!({ "targets": (0..10_000).map(|i| format!("user-{i}")).collect::<Vec<_>>() });
        let after =
            json!({ "targets": (1..10_001).map(|i| format!("user-{i}")).collect::<Vec<_>>() });
        let d = flag_change("f", Some(&before), Some(&after));
        assert_eq!(d["changes"].as_array().unwrap().len(), MAX_PATHS);
        assert_eq!(d["more"], 10_000 - MAX_PATHS);
        assert!(d.to_string().len() < 4096, "{}", d.to_string().len());
    }

    #[test]
    fn a_created_flag_is_one_change_at_the_root() {
        let after = json!({ "variants": { "on": true } });
        let d = flag_change::<Value>("f", None, Some(&after));
        assert_eq!(d["before"], Value::Null);
        assert_eq!(d["changes"], json!([{ "path": "", "after": after }]));
    }
}
