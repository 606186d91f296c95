//! The OFREP endpoint on a real loopback server, driven by a real OFREP client: the
//! `open-feature-ofrep` crate's provider (single evaluations, the only kind it makes), and raw
//! HTTP for what that client does not do (bulk, `ETag`/`304`) and for the exact response
//! shapes of the OFREP OpenAPI document.
//!
//! The rate-limit path (`429`) is in `tests/ofrep_rate_limit.rs`: the client remembers a
//! `Retry-After` process-wide, so it would refuse this file's other requests.
#![cfg(all(feature = "axum", feature = "openfeature"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use open_feature::provider::FeatureProvider;
use open_feature::{EvaluationContext, EvaluationErrorCode};
use open_feature_ofrep::{OfrepOptions, OfrepProvider};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use welcomedly_flags::admin::{AdminAuth, AdminDenied};
use welcomedly_flags::ofrep::{self, OfrepConfig, OfrepKey};
use welcomedly_flags::store::{Change, FlagStore, MemoryStore, SyncConfig, sync_flags};
use welcomedly_flags::{Flags, Snapshot};

const KEY: &str = "ofrep-test-key-0123456789";

const FLAGS: &str = r#"{ "flags": {
  "new-ui": { "description": "the new board",
              "variants": { "on": true, "off": false },
              "targets": [{ "variant": "on", "values": ["alice"] }],
              "fallthrough": { "variant": "off" } },
  "theme": { "variants": { "light": "light", "dark": "dark" }, "fallthrough": { "variant": "dark" } },
  "max-upload-mb": { "variants": { "small": 1, "large": 100 },
                     "rules": [{ "clauses": [{ "attribute": "plan", "op": "equals", "values": ["pro"] }],
                                 "serve": { "variant": "large" } }],
                     "fallthrough": { "variant": "small" } },
  "ratio": { "variants": { "low": 0.25, "high": 0.75 }, "fallthrough": { "variant": "high" } },
  "limits": { "variants": { "default": { "calls": 3, "queue": "main" } }, "fallthrough": { "variant": "default" } },
  "killed": { "enabled": false, "variants": { "on": true, "off": false }, "fallthrough": { "variant": "on" } },
  "pro-only": { "variants": { "on": true },
                "rules": [{ "clauses": [{ "attribute": "plan", "op": "equals", "values": ["pro"] }],
                            "serve": { "variant": "on" } }] }
} }"#;

/// A server on a free loopback port serving the OFREP router over `flags`.
async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

async fn server(flags: &Flags) -> String {
    serve(ofrep::router(
        flags.clone(),
        OfrepKey::new(KEY),
        OfrepConfig::default(),
    ))
    .await
}

fn flags() -> Flags {
    Flags::new(Snapshot::compile_json(FLAGS, 1).unwrap())
}

async fn provider(base: &str, key: &str) -> OfrepProvider {
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    OfrepProvider::new(OfrepOptions {
        base_url: base.to_owned(),
        headers,
        connect_timeout: Duration::from_secs(5),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn user(key: &str) -> EvaluationContext {
    EvaluationContext::default().with_targeting_key(key)
}

#[tokio::test]
async fn the_real_client_resolves_every_type() {
    let base = server(&flags()).await;
    let p = provider(&base, KEY).await;

    let alice = p
        .resolve_bool_value("new-ui", &user("alice"))
        .await
        .unwrap();
    assert!(alice.value);
    assert_eq!(alice.variant.as_deref(), Some("on"));
    let bob = p.resolve_bool_value("new-ui", &user("bob")).await.unwrap();
    assert!(!bob.value);
    assert_eq!(bob.variant.as_deref(), Some("off"));

    let theme = p.resolve_string_value("theme", &user("bob")).await.unwrap();
    assert_eq!(theme.value, "dark");

    let pro = user("bob").with_custom_field("plan", "pro");
    let mb = p.resolve_int_value("max-upload-mb", &pro).await.unwrap();
    assert_eq!((mb.value, mb.variant.as_deref()), (100, Some("large")));
    let mb = p
        .resolve_int_value("max-upload-mb", &user("bob"))
        .await
        .unwrap();
    assert_eq!(mb.value, 1);

    let ratio = p.resolve_float_value("ratio", &user("bob")).await.unwrap();
    assert!((ratio.value - 0.75).abs() < f64::EPSILON);
    // An integer flag read as a float converts, on the client.
    let mb = p.resolve_float_value("max-upload-mb", &pro).await.unwrap();
    assert!((mb.value - 100.0).abs() < f64::EPSILON);

    let limits = p
        .resolve_struct_value("limits", &user("bob"))
        .await
        .unwrap();
    assert_eq!(
        limits.value.fields.get("calls"),
        Some(&open_feature::Value::Int(3))
    );
    assert_eq!(
        limits.value.fields.get("queue"),
        Some(&open_feature::Value::String("main".into()))
    );
}

#[tokio::test]
async fn the_real_client_sees_every_error_path() {
    let base = server(&flags()).await;
    let p = provider(&base, KEY).await;

    // 404 FLAG_NOT_FOUND.
    let e = p
        .resolve_bool_value("nope", &user("bob"))
        .await
        .unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::FlagNotFound);

    // 400 INVALID_CONTEXT: a targeting key that is not a string.
    let bad = EvaluationContext::default().with_custom_field("targetingKey", 42_i64);
    let e = p.resolve_bool_value("new-ui", &bad).await.unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::InvalidContext);

    // The client checks the type of the value itself.
    let e = p
        .resolve_int_value("theme", &user("bob"))
        .await
        .unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::ParseError);

    // 401 through the auth hook: the client reports a general authorization error.
    let wrong = provider(&base, "not-the-key-0123456789").await;
    let e = wrong
        .resolve_bool_value("new-ui", &user("alice"))
        .await
        .unwrap_err();
    assert_eq!(
        e.code,
        EvaluationErrorCode::General("authentication/authorization error".into())
    );

    // A disabled flag is OFREP's code-default result (no `value`): open-feature-ofrep 0.1.2
    // does not know it yet and reports a PARSE_ERROR, so the caller's default applies either
    // way. The raw shape is checked in `single_shapes_follow_the_openapi_document`.
    let e = p
        .resolve_bool_value("killed", &user("bob"))
        .await
        .unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::ParseError);
}

async fn post(base: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.unwrap()
}

const AUTH: (&str, &str) = ("x-api-key", KEY);

async fn json_of(res: reqwest::Response) -> Value {
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        "application/json"
    );
    res.json().await.unwrap()
}

#[tokio::test]
async fn single_shapes_follow_the_openapi_document() {
    let base = server(&flags()).await;
    let path = "/ofrep/v1/evaluate/flags";
    let alice = r#"{"context": {"targetingKey": "alice"}}"#;

    let res = post(&base, &format!("{path}/new-ui"), alice, &[AUTH]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        json_of(res).await,
        json!({ "key": "new-ui", "value": true, "reason": "TARGETING_MATCH", "variant": "on",
                "metadata": { "description": "the new board" } })
    );
    let res = post(&base, &format!("{path}/theme"), alice, &[AUTH]).await;
    assert_eq!(
        json_of(res).await,
        json!({ "key": "theme", "value": "dark", "reason": "STATIC", "variant": "dark" })
    );
    // Code defaults: a disabled flag, and a flag with no variant for this context.
    let res = post(&base, &format!("{path}/killed"), alice, &[AUTH]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        json_of(res).await,
        json!({ "key": "killed", "reason": "DISABLED" })
    );
    let res = post(&base, &format!("{path}/pro-only"), alice, &[AUTH]).await;
    assert_eq!(
        json_of(res).await,
        json!({ "key": "pro-only", "reason": "DEFAULT" })
    );
    // An empty body is an empty context.
    let res = post(&base, &format!("{path}/new-ui"), "", &[AUTH]).await;
    assert_eq!(json_of(res).await["value"], false);

    let res = post(&base, &format!("{path}/nope"), alice, &[AUTH]).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body = json_of(res).await;
    assert_eq!(
        (&body["key"], &body["errorCode"]),
        (&json!("nope"), &json!("FLAG_NOT_FOUND"))
    );
    assert!(body["errorDetails"].is_string());

    let res = post(&base, &format!("{path}/new-ui"), "{oops", &[AUTH]).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body = json_of(res).await;
    assert_eq!(
        (&body["key"], &body["errorCode"]),
        (&json!("new-ui"), &json!("PARSE_ERROR"))
    );

    for bad in [
        r#"{"context": "alice"}"#,
        r#"{"context": {"targetingKey": ["alice"]}}"#,
    ] {
        let res = post(&base, &format!("{path}/new-ui"), bad, &[AUTH]).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(json_of(res).await["errorCode"], "INVALID_CONTEXT", "{bad}");
    }
}

#[tokio::test]
async fn bounds_and_authorization() {
    let flags = flags();
    let config = OfrepConfig::default()
        .with_max_body_bytes(1024)
        .with_max_attributes(4)
        .with_max_depth(2);
    let base = serve(ofrep::router(flags, OfrepKey::new(KEY), config)).await;
    let path = "/ofrep/v1/evaluate/flags";

    let big = format!(
        r#"{{"context": {{"targetingKey": "{}"}}}}"#,
        "a".repeat(2000)
    );
    let many = r#"{"context": {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}}"#;
    let deep = r#"{"context": {"a": {"b": [1]}}}"#;
    for body in [big.as_str(), many, deep] {
        for p in [path.to_owned(), format!("{path}/new-ui")] {
            let res = post(&base, &p, body, &[AUTH]).await;
            assert_eq!(
                res.status(),
                StatusCode::BAD_REQUEST,
                "{p} {}",
                &body[..40.min(body.len())]
            );
            assert_eq!(json_of(res).await["errorCode"], "INVALID_CONTEXT");
        }
    }
    // Within the bounds.
    let ok = r#"{"context": {"a": {"b": 1}, "b": 2, "c": 3, "targetingKey": "x"}}"#;
    assert_eq!(
        post(&base, path, ok, &[AUTH]).await.status(),
        StatusCode::OK
    );

    // Bearer and API key both work; nothing, or a wrong key, is 401.
    let bearer = format!("Bearer {KEY}");
    assert_eq!(
        post(&base, path, "", &[("authorization", &bearer)])
            .await
            .status(),
        StatusCode::OK
    );
    for headers in [&[][..], &[("x-api-key", "wrong")][..]] {
        let res = post(&base, path, "", headers).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(json_of(res).await["errorDetails"].is_string());
    }

    // A hook may refuse with 403.
    struct ReadOnlyHours;
    impl AdminAuth for ReadOnlyHours {
        fn authorize(&self, _: &Parts) -> Result<String, AdminDenied> {
            Err(AdminDenied::forbidden("not during maintenance"))
        }
    }
    let closed = serve(ofrep::router(
        flags_again(),
        ReadOnlyHours,
        OfrepConfig::default(),
    ))
    .await;
    for p in [path.to_owned(), format!("{path}/new-ui")] {
        let res = post(&closed, &p, "", &[]).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(json_of(res).await["errorDetails"], "not during maintenance");
    }
}

fn flags_again() -> Flags {
    flags()
}

#[tokio::test]
async fn bulk_etag_and_a_change_in_the_store() {
    // The flags come from a store through the sync, as in a service.
    let store: Arc<dyn FlagStore> = Arc::new(MemoryStore::new());
    store
        .write(0, FLAGS.to_owned(), Change::new("test", "seed"))
        .await
        .unwrap();
    let flags = Flags::new(Snapshot::empty());
    let sync = sync_flags(store.clone(), &flags, SyncConfig::default())
        .await
        .unwrap();
    let base = server(&flags).await;
    let path = "/ofrep/v1/evaluate/flags";
    let alice = r#"{"context": {"targetingKey": "alice", "plan": "pro"}}"#;

    let res = post(&base, path, alice, &[AUTH]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let tag = res
        .headers()
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(tag.starts_with('"') && tag.ends_with('"'), "{tag}");
    let body = json_of(res).await;
    assert_eq!(
        body,
        json!({ "flags": [
            { "key": "killed", "reason": "DISABLED" },
            { "key": "limits", "value": { "calls": 3, "queue": "main" }, "reason": "STATIC", "variant": "default" },
            { "key": "max-upload-mb", "value": 100, "reason": "TARGETING_MATCH", "variant": "large" },
            { "key": "new-ui", "value": true, "reason": "TARGETING_MATCH", "variant": "on",
              "metadata": { "description": "the new board" } },
            { "key": "pro-only", "value": true, "reason": "TARGETING_MATCH", "variant": "on" },
            { "key": "ratio", "value": 0.75, "reason": "STATIC", "variant": "high" },
            { "key": "theme", "value": "dark", "reason": "STATIC", "variant": "dark" }
        ] })
    );

    // The same tag: 304 without a body, the tag repeated.
    let res = post(&base, path, alice, &[AUTH, ("if-none-match", &tag)]).await;
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(res.headers().get("etag").unwrap().to_str().unwrap(), tag);
    assert!(res.bytes().await.unwrap().is_empty());
    // Another context sees other results: another tag, so a 200.
    let bob = r#"{"context": {"targetingKey": "bob"}}"#;
    let res = post(&base, path, bob, &[AUTH, ("if-none-match", &tag)]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_ne!(res.headers().get("etag").unwrap().to_str().unwrap(), tag);

    // A change that alice does not see (a target for carol) keeps her tag.
    let v2 = FLAGS.replace(r#""values": ["alice"]"#, r#""values": ["alice", "carol"]"#);
    let version = store
        .write(1, v2.clone(), Change::new("test", "carol"))
        .await
        .unwrap();
    assert!(sync.wait_for_version(version, Duration::from_secs(5)).await);
    let res = post(&base, path, alice, &[AUTH, ("if-none-match", &tag)]).await;
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);

    // The theme flips in the store: a new tag and the new value.
    let v3 = v2.replace(
        r#""fallthrough": { "variant": "dark" }"#,
        r#""fallthrough": { "variant": "light" }"#,
    );
    let version = store
        .write(version, v3, Change::new("test", "theme"))
        .await
        .unwrap();
    assert!(sync.wait_for_version(version, Duration::from_secs(5)).await);
    let res = post(&base, path, alice, &[AUTH, ("if-none-match", &tag)]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let new_tag = res
        .headers()
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_tag, tag);
    let body = json_of(res).await;
    let theme = body["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "theme")
        .unwrap();
    assert_eq!(theme["value"], "light");
    // The new tag matches again; a list and a weak form match too.
    for inm in [new_tag.clone(), format!("\"x\", W/{new_tag}")] {
        let res = post(&base, path, alice, &[AUTH, ("if-none-match", &inm)]).await;
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED, "{inm}");
    }
    // OFREP 0.3's change-trigger metadata (query parameters a client echoes from an event
    // stream) is accepted; the 304 decision is If-None-Match's alone.
    let triggered = format!("{path}?flagConfigEtag=abc&flagConfigLastModified=1771622898");
    let res = post(
        &base,
        &triggered,
        alice,
        &[AUTH, ("if-none-match", &new_tag)],
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    let res = post(&base, &triggered, alice, &[AUTH]).await;
    assert_eq!(res.status(), StatusCode::OK);

    // Bulk failures carry no key.
    let res = post(&base, path, "[1]", &[AUTH]).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body = json_of(res).await;
    assert_eq!(body["errorCode"], "INVALID_CONTEXT");
    assert!(body.get("key").is_none());
    let res = post(&base, path, "{", &[AUTH]).await;
    assert_eq!(json_of(res).await["errorCode"], "PARSE_ERROR");

    // The single route reads the same store.
    let p = provider(&base, KEY).await;
    let theme = p.resolve_string_value("theme", &user("bob")).await.unwrap();
    assert_eq!(theme.value, "light");
}
