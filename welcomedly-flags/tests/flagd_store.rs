//! flagd files through the admin API and the Redis store, against a real `redis-server`: a
//! file PUT on instance A's admin API reaches instance B through the store's push and B
//! evaluates it (through `Flags`, OFREP and change subscriptions); an invalid file is refused
//! with a clear problem and the previous set stays, in the store and on B; the set goes back
//! to the native format the same way.
#![cfg(all(feature = "redis", feature = "axum", feature = "flagd"))]
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
use serde_json::{Value, json};
use tower::ServiceExt;
use welcomedly_flags::admin::{self, BearerToken};
use welcomedly_flags::ofrep::{self, OfrepConfig, OpenAccess};
use welcomedly_flags::store::{FlagStore, RedisStore, RedisStoreConfig, SyncConfig, sync_flags};
use welcomedly_flags::{ChangeKind, Context, DocumentFormat, ErrorCode, Flags, Snapshot};
use welcomedly_redis::{Link, LinkConfig};
use welcomedly_testkit::RedisServer;

const TOKEN: &str = "flagd-store-admin-token";
const FLAGD: &str = "application/vnd.flagd+json";

/// The file A writes: one flag with targeting, one with an unknown operator (a per-flag
/// `PARSE_ERROR` that does not refuse the file), flag-set metadata.
const FILE_V1: &str = r#"{
  "$schema": "https://flagd.dev/schema/v0/flags.json",
  "flags": {
    "new-checkout": {
      "state": "ENABLED",
      "variants": { "on": true, "off": false },
      "defaultVariant": "off",
      "targeting": { "if": [{ "in": [{ "var": "plan" }, ["pro", "team"]] }, "on", "off"] },
      "metadata": { "owner": "checkout" }
    },
    "broken": {
      "state": "ENABLED",
      "variants": { "a": "a" },
      "defaultVariant": "a",
      "targeting": { "no_such_operator": [1] }
    }
  },
  "metadata": { "flagSetId": "shop" }
}"#;

async fn store(redis: &RedisServer) -> Arc<RedisStore> {
    let link = Link::connect(LinkConfig::new(redis.url())).await.unwrap();
    Arc::new(
        RedisStore::new(&link, RedisStoreConfig::default())
            .await
            .unwrap(),
    )
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flagd_file_put_on_one_instance_is_evaluated_on_another_and_a_bad_one_loses_nothing() {
    let redis = RedisServer::start().unwrap();
    let (store_a, store_b) = (store(&redis).await, store(&redis).await);
    let admin_a: axum::Router = admin::router(
        store_a.clone(),
        BearerToken::new(TOKEN, "ops"),
        "/admin/flags",
    );
    let flags_b = Flags::new(Snapshot::empty());
    let _sync_b = sync_flags(store_b.clone(), &flags_b, SyncConfig::default())
        .await
        .unwrap();
    let mut watch = flags_b.watch("new-checkout");

    // A flagd file, by its content type, on A.
    let (status, headers, body) = call(
        &admin_a,
        "PUT",
        "/admin/flags",
        &[("content-type", FLAGD), ("if-match", "\"0\"")],
        FILE_V1,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["etag"], "\"1\"");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["version"], 1);
    assert_eq!(answer["format"], "flagd");
    // The broken flag loads as flagd says, and the answer names it.
    assert_eq!(answer["problems"][0]["flag"], "broken", "{answer}");

    // B evaluates it after the push.
    assert!(
        eventually(Duration::from_secs(2), || flags_b.version() == 1).await,
        "B did not get version 1"
    );
    let snapshot = flags_b.snapshot();
    assert_eq!(snapshot.format(), DocumentFormat::Flagd);
    let pro = Context::new("u1").with("plan", "pro");
    let free = Context::new("u2").with("plan", "free");
    let on = snapshot.bool_value("new-checkout", &pro, false);
    assert!(on.value);
    assert_eq!(on.reason.as_str(), "TARGETING_MATCH");
    assert!(!snapshot.bool_value("new-checkout", &free, true).value);
    assert_eq!(
        snapshot.string_value("broken", &pro, "x").error,
        Some(ErrorCode::ParseError)
    );
    assert_eq!(
        snapshot.metadata("new-checkout").unwrap()["owner"],
        "checkout"
    );
    let change = watch.changed().await.unwrap();
    assert_eq!((change.kind, change.version), (ChangeKind::Added, 1));

    // OFREP on B: flag metadata on the entry, the file's flag-set metadata on the bulk answer.
    let ofrep_b: axum::Router = ofrep::router(flags_b.clone(), OpenAccess, OfrepConfig::default());
    let (status, _, body) = call(
        &ofrep_b,
        "POST",
        "/ofrep/v1/evaluate/flags",
        &[("content-type", "application/json")],
        r#"{"context": {"targetingKey": "u1", "plan": "pro"}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bulk: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(bulk["metadata"], json!({ "flagSetId": "shop" }), "{bulk}");
    let entry = bulk["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "new-checkout")
        .unwrap();
    assert_eq!(entry["value"], true);
    assert_eq!(entry["metadata"]["owner"], "checkout");
    assert_eq!(entry["metadata"]["flagSetId"], "shop");
    let broken = bulk["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "broken")
        .unwrap();
    assert_eq!(broken["errorCode"], "PARSE_ERROR");

    // GET on A gives the file back as stored, with its media type; single-flag routes say to
    // edit the file as a whole.
    let (status, headers, body) = call(&admin_a, "GET", "/admin/flags", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], FLAGD);
    assert_eq!(headers["etag"], "\"1\"");
    assert_eq!(body, FILE_V1);
    let (status, _, body) = call(&admin_a, "GET", "/admin/flags/new-checkout", &[], "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Invalid files: not JSON (400), not a flagd file (422), flags without a state (422), a
    // stale If-Match (412). Each is problem+json; nothing is stored and B keeps version 1.
    for (file, want) in [
        ("{\"flags\": {", StatusCode::BAD_REQUEST),
        (r#"{"flags": []}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (
            r#"{"flags": {"x": {"variants": {"a": 1}, "defaultVariant": "a"}}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (status, headers, body) = call(
            &admin_a,
            "PUT",
            "/admin/flags?format=flagd",
            &[("if-match", "\"1\"")],
            file,
        )
        .await;
        assert_eq!(status, want, "{file}: {body}");
        assert_eq!(headers["content-type"], "application/problem+json");
        let problem: Value = serde_json::from_str(&body).unwrap();
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("nothing was stored"),
            "{problem}"
        );
    }
    let (status, _, _) = call(
        &admin_a,
        "PUT",
        "/admin/flags",
        &[("content-type", FLAGD), ("if-match", "\"0\"")],
        FILE_V1,
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(store_a.load().await.unwrap().version, 1);
    assert_eq!(store_a.load().await.unwrap().body, FILE_V1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(flags_b.version(), 1);
    assert!(
        flags_b
            .snapshot()
            .bool_value("new-checkout", &pro, false)
            .value
    );

    // A second file through `?format=flagd`: the changed flag's watchers hear of it.
    let v2 = FILE_V1.replace(r#""on", "off"] }"#, r#""off", "on"] }"#);
    let (status, _, body) = call(
        &admin_a,
        "PUT",
        "/admin/flags?format=flagd",
        &[("if-match", "\"1\"")],
        &v2,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let change = tokio::time::timeout(Duration::from_secs(2), watch.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((change.kind, change.version), (ChangeKind::Updated, 2));
    assert!(
        !flags_b
            .snapshot()
            .bool_value("new-checkout", &pro, true)
            .value
    );
    // The history says what changed, without the definitions.
    let history = store_a.history(1).await.unwrap();
    assert_eq!(history[0].diff["format"], "flagd");
    assert_eq!(history[0].diff["flags"]["changed"], json!(["new-checkout"]));

    // Back to the native format: a native PUT replaces the file.
    let native = r#"{"flags": {"new-checkout": {"variants": {"on": true}, "fallthrough": {"variant": "on"}}}}"#;
    let (status, _, body) = call(
        &admin_a,
        "PUT",
        "/admin/flags",
        &[("content-type", "application/json"), ("if-match", "\"2\"")],
        native,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(eventually(Duration::from_secs(2), || flags_b.version() == 3).await);
    let snapshot = flags_b.snapshot();
    assert_eq!(snapshot.format(), DocumentFormat::Native);
    assert!(snapshot.bool_value("new-checkout", &free, false).value);
    assert_eq!(snapshot.keys().collect::<Vec<_>>(), ["new-checkout"]);
    // And the native set exports as flagd on request.
    let (status, headers, body) =
        call(&admin_a, "GET", "/admin/flags", &[("accept", FLAGD)], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], FLAGD);
    let exported: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        exported["flags"]["new-checkout"]["defaultVariant"], "on",
        "{exported}"
    );
}
