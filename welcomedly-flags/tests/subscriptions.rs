//! Change subscriptions: a flag's watchers hear of changes to its own definition, to a
//! prerequisite at any depth and to a segment it uses (also nested); unrelated flags stay quiet.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use tokio::sync::broadcast::error::TryRecvError;
use welcomedly_flags::{ChangeKind, FlagChange, Flags, Snapshot};

const BASE: &str = r#"{
  "segments": {
    "inner": { "included": ["u1"] },
    "outer": { "rules": [{ "clauses": [{ "op": "inSegment", "values": ["inner"] }] }] },
    "other": { "included": ["z"] }
  },
  "flags": {
    "a": { "variants": { "on": true, "off": false }, "prerequisites": [{ "flag": "b", "variants": ["on"] }], "fallthrough": { "variant": "on" } },
    "b": { "variants": { "on": true, "off": false }, "prerequisites": [{ "flag": "c", "variants": ["on"] }], "fallthrough": { "variant": "on" } },
    "c": { "variants": { "on": true, "off": false }, "fallthrough": { "variant": "on" } },
    "seg": { "variants": { "on": true, "off": false },
             "rules": [{ "clauses": [{ "op": "inSegment", "values": ["outer"] }], "serve": { "variant": "on" } }] },
    "lonely": { "variants": { "on": true, "off": false } }
  }
}"#;

fn changes_after(edit: impl Fn(&str) -> String) -> Vec<(String, ChangeKind)> {
    let flags = Flags::new(Snapshot::compile_json(BASE, 1).unwrap());
    let mut rx = flags.subscribe();
    flags.replace(Snapshot::compile_json(&edit(BASE), 2).unwrap());
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(FlagChange {
                key, kind, version, ..
            }) => {
                assert_eq!(version, 2);
                out.push((key.to_string(), kind));
            }
            Err(TryRecvError::Empty) => return out,
            Err(e) => panic!("{e:?}"),
        }
    }
}

fn updated(keys: &[&str]) -> Vec<(String, ChangeKind)> {
    keys.iter()
        .map(|k| ((*k).to_owned(), ChangeKind::Updated))
        .collect()
}

#[test]
fn same_set_changes_nothing() {
    assert_eq!(changes_after(str::to_owned), []);
}

#[test]
fn a_deep_prerequisite_change_reaches_every_dependant() {
    let changes = changes_after(|s| {
        s.replace(
            r#""c": { "variants": { "on": true, "off": false }, "fallthrough": { "variant": "on" } }"#,
            r#""c": { "variants": { "on": true, "off": false }, "fallthrough": { "variant": "off" } }"#,
        )
    });
    assert_eq!(changes, updated(&["a", "b", "c"]));
}

#[test]
fn a_nested_segment_change_reaches_the_flags_using_it() {
    let changes =
        changes_after(|s| s.replace(r#""included": ["u1"]"#, r#""included": ["u1", "u2"]"#));
    assert_eq!(changes, updated(&["seg"]));
    // A segment nobody uses changes no flag.
    let changes = changes_after(|s| s.replace(r#""included": ["z"]"#, r#""included": ["y"]"#));
    assert_eq!(changes, []);
}

#[test]
fn added_and_removed_flags() {
    let changes = changes_after(|s| {
        s.replace(
            r#""lonely": { "variants": { "on": true, "off": false } }"#,
            r#""fresh": { "variants": { "on": true } }"#,
        )
    });
    assert_eq!(
        changes,
        [
            ("fresh".to_owned(), ChangeKind::Added),
            ("lonely".to_owned(), ChangeKind::Removed)
        ]
    );
}

#[test]
fn removing_a_prerequisite_edge_is_a_change() {
    let changes = changes_after(|s| {
        s.replace(
            r#""prerequisites": [{ "flag": "b", "variants": ["on"] }], "#,
            "",
        )
    });
    assert_eq!(changes, updated(&["a"]));
}

#[tokio::test]
async fn watch_follows_one_key_and_reports_a_lag() {
    let flags = Flags::with_change_capacity(Snapshot::compile_json(BASE, 1).unwrap(), 2);
    let mut watch = flags.watch("a");
    assert_eq!(watch.key(), "a");
    let off = BASE.replace(
        r#""c": { "variants": { "on": true, "off": false }, "fallthrough": { "variant": "on" } }"#,
        r#""c": { "variants": { "on": true, "off": false }, "fallthrough": { "variant": "off" } }"#,
    );
    // lonely alone changes: the watcher of "a" is not woken for it.
    let lonely = BASE.replace(
        r#""lonely": { "variants": { "on": true, "off": false } }"#,
        r#""lonely": { "variants": { "on": true } }"#,
    );
    flags.replace(Snapshot::compile_json(&lonely, 2).unwrap());
    flags.replace(Snapshot::compile_json(&off, 3).unwrap());
    let change = watch.changed().await.unwrap();
    // Version 3 sent a, b, c (and lonely back): more than the capacity of 2, so the watcher lagged.
    assert_eq!(
        (&*change.key, change.kind, change.version),
        ("a", ChangeKind::Missed, 3)
    );

    let mut watch = flags.watch("a");
    let only_a = off.replace(
        r#""prerequisites": [{ "flag": "b", "variants": ["on"] }], "fallthrough": { "variant": "on" }"#,
        r#""prerequisites": [{ "flag": "b", "variants": ["on"] }], "fallthrough": { "variant": "off" }"#,
    );
    flags.replace(Snapshot::compile_json(&only_a, 4).unwrap());
    let change = watch.changed().await.unwrap();
    assert_eq!(
        (&*change.key, change.kind, change.version),
        ("a", ChangeKind::Updated, 4)
    );

    assert!(!flags.replace_if_newer(Snapshot::compile_json(BASE, 4).unwrap()));
    assert!(flags.replace_if_newer(Snapshot::compile_json(&off, 5).unwrap()));
    assert_eq!(flags.version(), 5);
    assert_eq!(flags.snapshot().version(), 5);

    drop(flags);
    assert_eq!(watch.changed().await.map(|c| c.version), Some(5));
    assert!(watch.changed().await.is_none());
}

#[test]
fn handle_is_send_sync_and_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Flags>();
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Snapshot>();
    send_sync::<welcomedly_flags::FlagWatch>();
}
