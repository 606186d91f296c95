//! The admin router over the memory store, driven as HTTP: auth, If-Match, whole-set
//! validation, history, and instances picking the changes up through the sync.
#![cfg(feature = "axum")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use welcomedly_flags::admin::{self, BearerToken};
use welcomedly_flags::store::{FlagStore, MemoryStore, SyncConfig, sync_flags};
use welcomedly_flags::{Context, Flags, Snapshot};

const TOKEN: &str = "Bearer t0ken";

fn app(store: &Arc<MemoryStore>) -> axum::Router {
    let store: Arc<dyn FlagStore> = store.clone();
    admin::router(store, BearerToken::new("t0ken", "ops"), "/admin/flags")
}

struct Res {
    status: StatusCode,
    etag: Option<String>,
    json: serde_json::Value,
    content_type: Option<String>,
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Res {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let etag = res
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Res {
        status,
        etag,
        json,
        content_type,
    }
}

const KILL: &str = r#"{"variants": {"on": true, "off": false}, "fallthrough": {"variant": "on"}}"#;

#[tokio::test]
async fn writes_need_a_token_and_a_precondition_and_reach_every_instance() {
    let store = Arc::new(MemoryStore::new());
    let app = app(&store);

    // No token, a wrong token.
    let r = call(&app, "GET", "/admin/flags", &[], "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.content_type.as_deref(), Some("application/problem+json"));
    let r = call(
        &app,
        "GET",
        "/admin/flags",
        &[("authorization", "Bearer nope")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // An instance following the store.
    let flags = Flags::new(Snapshot::empty());
    let sync = sync_flags(store.clone(), &flags, SyncConfig::default())
        .await
        .unwrap();

    // Create with If-None-Match: *.
    let auth = ("authorization", TOKEN);
    let r = call(
        &app,
        "PUT",
        "/admin/flags/new-ui",
        &[auth, ("if-none-match", "*")],
        KILL,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let tag = r.etag.clone().unwrap();
    assert!(sync.wait_for_version(1, Duration::from_secs(5)).await);
    let ctx = Context::new("u1");
    assert!(flags.snapshot().bool_value("new-ui", &ctx, false).value);

    // Creating it again, or replacing it without If-Match, is refused.
    let r = call(
        &app,
        "PUT",
        "/admin/flags/new-ui",
        &[auth, ("if-none-match", "*")],
        KILL,
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = call(&app, "PUT", "/admin/flags/new-ui", &[auth], KILL).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_REQUIRED);

    // The kill switch, with the ETag from GET.
    let r = call(&app, "GET", "/admin/flags/new-ui", &[auth], "").await;
    assert_eq!(r.etag.as_deref(), Some(tag.as_str()));
    let killed = KILL.replacen('{', r#"{"enabled": false, "#, 1);
    let r = call(
        &app,
        "PUT",
        "/admin/flags/new-ui",
        &[auth, ("if-match", &tag)],
        &killed,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert!(sync.wait_for_version(2, Duration::from_secs(5)).await);
    let snapshot = flags.snapshot();
    let e = snapshot.bool_value("new-ui", &ctx, false);
    assert_eq!(e.reason.as_str(), "DISABLED");

    // The old ETag is stale now.
    let r = call(
        &app,
        "PUT",
        "/admin/flags/new-ui",
        &[auth, ("if-match", &tag)],
        KILL,
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);

    // History: newest first, with who and the diff.
    let r = call(&app, "GET", "/admin/flags/_history?limit=10", &[auth], "").await;
    assert_eq!(r.status, StatusCode::OK);
    let changes = r.json.as_array().unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0]["actor"], "ops");
    assert_eq!(changes[0]["summary"], "changed flag new-ui");
    // The diff names the path that changed and the ETags before and after.
    let diff = &changes[0]["diff"];
    assert_eq!(
        diff["changes"],
        serde_json::json!([{ "path": "enabled", "before": true, "after": false }])
    );
    assert_eq!(diff["before"]["etag"], tag.as_str());
    assert_eq!(diff["after"]["etag"], r_etag(&app, auth).await);
}

/// The current ETag of flag `new-ui`.
async fn r_etag(app: &axum::Router, auth: (&str, &str)) -> String {
    call(app, "GET", "/admin/flags/new-ui", &[auth], "")
        .await
        .etag
        .unwrap()
}

#[tokio::test]
async fn history_entries_of_a_large_flag_stay_small_and_say_what_changed() {
    let store = Arc::new(MemoryStore::new());
    let app = app(&store);
    let auth = ("authorization", TOKEN);
    // A flag of about 300 KB: 20,000 targeted keys.
    let keys: Vec<String> = (0..20_000).map(|i| format!("customer-{i:08}")).collect();
    let big = serde_json::json!({
        "variants": { "on": true, "off": false },
        "targets": [{ "variant": "on", "values": keys }],
        "fallthrough": { "variant": "off" }
    });
    let r = call(
        &app,
        "PUT",
        "/admin/flags/big",
        &[auth, ("if-none-match", "*")],
        &big.to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let mut changed = big.clone();
    changed["fallthrough"]["variant"] = "on".into();
    changed["targets"][0]["values"][7] = "customer-x".into();
    let tag = r.etag.unwrap();
    let r = call(
        &app,
        "PUT",
        "/admin/flags/big",
        &[auth, ("if-match", &tag)],
        &changed.to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = call(&app, "DELETE", "/admin/flags/big", &[auth], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);

    let r = call(&app, "GET", "/admin/flags/_history", &[auth], "").await;
    let h = r.json.as_array().unwrap();
    assert_eq!(h.len(), 3);
    for entry in h {
        let size = entry.to_string().len();
        assert!(
            size < 2048,
            "a history entry of {size} bytes for a 300 KB flag: {entry}"
        );
    }
    // Deleted: the whole flag, by size and digest.
    assert_eq!(h[0]["summary"], "deleted flag big");
    assert_eq!(h[0]["diff"]["after"], serde_json::Value::Null);
    assert_eq!(h[0]["diff"]["changes"][0]["path"], "");
    assert!(h[0]["diff"]["changes"][0]["before"]["digest"].is_string());
    // Changed: the two paths, with their values, and the definitions' ETags and sizes.
    let diff = &h[1]["diff"];
    assert_eq!(
        diff["changes"],
        serde_json::json!([
            { "path": "fallthrough.variant", "before": "off", "after": "on" },
            { "path": "targets[0].values[7]", "before": "customer-00000007", "after": "customer-x" }
        ])
    );
    assert_eq!(diff["more"], 0);
    assert_eq!(diff["before"]["etag"], tag.as_str());
    assert!(diff["after"]["bytes"].as_u64().unwrap() > 300_000);
    assert_eq!(
        (h[1]["version"].as_u64(), h[1]["actor"].as_str()),
        (Some(2), Some("ops"))
    );
    assert!(h[1]["at_unix_ms"].as_u64().unwrap() > 0);
    // Created.
    assert_eq!(h[2]["diff"]["before"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_whole_set_replacement_lists_the_keys_it_added_removed_and_changed() {
    let store = Arc::new(MemoryStore::new());
    let app = app(&store);
    let auth = ("authorization", TOKEN);
    let set = |keys: &[&str], killed: &str| {
        let flags: Vec<String> = keys
            .iter()
            .map(|k| {
                let def = if *k == killed {
                    KILL.replacen('{', r#"{"enabled": false, "#, 1)
                } else {
                    KILL.to_owned()
                };
                format!(r#""{k}": {def}"#)
            })
            .collect();
        format!(r#"{{"flags": {{{}}}}}"#, flags.join(","))
    };
    let r = call(
        &app,
        "PUT",
        "/admin/flags",
        &[auth, ("if-match", "\"0\"")],
        &set(&["a", "b", "c"], ""),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = call(
        &app,
        "PUT",
        "/admin/flags",
        &[auth, ("if-match", "\"1\"")],
        &set(&["b", "c", "d"], "c"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = call(&app, "GET", "/admin/flags/_history?limit=1", &[auth], "").await;
    let diff = &r.json[0]["diff"];
    assert_eq!(
        diff["flags"],
        serde_json::json!({ "added": ["d"], "removed": ["a"], "changed": ["c"], "more": 0 })
    );
    assert_eq!(diff["before"]["version"], 1);
    assert_eq!(diff["after"]["version"], 2);
    assert_eq!(diff["after"]["flags"], 3);
}

#[tokio::test]
async fn an_invalid_change_is_refused_with_every_problem_and_nothing_is_stored() {
    let store = Arc::new(MemoryStore::new());
    let app = app(&store);
    let auth = ("authorization", TOKEN);
    let r = call(
        &app,
        "PUT",
        "/admin/flags/base",
        &[auth, ("if-none-match", "*")],
        KILL,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let child = r#"{"variants": {"on": true, "off": false}, "prerequisites": [{"flag": "base", "variants": ["on"]}],
                    "fallthrough": {"variant": "on"}}"#;
    let r = call(
        &app,
        "PUT",
        "/admin/flags/child",
        &[auth, ("if-none-match", "*")],
        child,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);

    // Deleting what another flag requires would break the set.
    let r = call(&app, "DELETE", "/admin/flags/base", &[auth], "").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    assert!(!r.json["problems"].as_array().unwrap().is_empty());

    // Unknown fields and bad variants are listed with their paths.
    let bad =
        r#"{"variants": {"on": true}, "fallthrough": {"variant": "missing"}, "colour": "red"}"#;
    let r = call(
        &app,
        "PUT",
        "/admin/flags/x",
        &[auth, ("if-none-match", "*")],
        bad,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let path = r.json["problems"][0]["path"].as_str().unwrap().to_owned();
    assert!(path.starts_with("flags.x"), "{path}");
    let bad = r#"{"variants": {"on": true}, "fallthrough": {"variant": "missing"}}"#;
    let r = call(
        &app,
        "PUT",
        "/admin/flags/x",
        &[auth, ("if-none-match", "*")],
        bad,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);

    // A bad key.
    let r = call(
        &app,
        "PUT",
        "/admin/flags/_x",
        &[auth, ("if-none-match", "*")],
        KILL,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Nothing of it was stored: still version 2 with two flags.
    let r = call(&app, "GET", "/admin/flags", &[auth], "").await;
    assert_eq!(r.json["version"], 2);
    assert_eq!(r.etag.as_deref(), Some("\"2\""));
    assert_eq!(r.json["flags"].as_object().unwrap().len(), 2);

    // Deleting the dependent first, then the base, works.
    let r = call(&app, "DELETE", "/admin/flags/child", &[auth], "").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(&app, "DELETE", "/admin/flags/base", &[auth], "").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(&app, "GET", "/admin/flags/base", &[auth], "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_whole_set_is_replaced_only_with_a_current_if_match() {
    let store = Arc::new(MemoryStore::new());
    let app = app(&store);
    let auth = ("authorization", TOKEN);
    let set = format!(r#"{{"flags": {{"a": {KILL}, "b": {KILL}}}}}"#);
    let r = call(&app, "PUT", "/admin/flags", &[auth], &set).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_REQUIRED);
    let r = call(
        &app,
        "PUT",
        "/admin/flags",
        &[auth, ("if-match", "\"0\"")],
        &set,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.etag.as_deref(), Some("\"1\""));
    let r = call(
        &app,
        "PUT",
        "/admin/flags",
        &[auth, ("if-match", "\"0\"")],
        &set,
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = call(
        &app,
        "PUT",
        "/admin/flags",
        &[auth, ("if-match", "\"1\"")],
        "{not json",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn validating_a_write_leaves_the_async_thread_free_for_other_requests() {
    // A current-thread runtime: a compile on the async thread would stall every other task
    // until it ends. A task beside the PUT counts how often it gets to run meanwhile.
    let store = Arc::new(MemoryStore::new());
    let app = app(&store);
    let auth = ("authorization", TOKEN);
    let rules: Vec<serde_json::Value> = (0..64)
        .map(|i| {
            serde_json::json!({
                "clauses": [{ "attribute": "name", "op": "matches", "values": [format!(r"\w{{5}}|x{i}")] }],
                "serve": { "variant": "on" }
            })
        })
        .collect();
    let flag = serde_json::json!({ "variants": { "on": true, "off": false }, "rules": rules });
    let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = ticks.clone();
    let ticker = tokio::spawn(async move {
        loop {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::task::yield_now().await;
        }
    });
    let before = ticks.load(std::sync::atomic::Ordering::Relaxed);
    let r = call(
        &app,
        "PUT",
        "/admin/flags/regexes",
        &[auth, ("if-none-match", "*")],
        &flag.to_string(),
    )
    .await;
    let during = ticks.load(std::sync::atomic::Ordering::Relaxed) - before;
    ticker.abort();
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert!(
        during > 10,
        "another task ran {during} times while the write was validated: the compile blocked the async thread"
    );
}
