//! OFREP's `429` with `Retry-After`, from welcomedly-core's `RateLimitLayer` in front of the
//! OFREP router, seen by raw HTTP and by the real `open-feature-ofrep` client, which then
//! refuses further calls itself until the time it was given (it keeps that time process-wide,
//! hence this file of its own).
#![cfg(all(feature = "axum", feature = "openfeature"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use open_feature::provider::FeatureProvider;
use open_feature::{EvaluationContext, EvaluationErrorCode};
use open_feature_ofrep::{OfrepOptions, OfrepProvider};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use welcomedly_core::rate_limit::{KeySource, Policy, Quota, RateLimitLayer};
use welcomedly_flags::ofrep::{self, OfrepConfig, OfrepKey};
use welcomedly_flags::{Flags, Snapshot};

const KEY: &str = "ofrep-rate-limit-key-0123";

#[tokio::test]
async fn a_limited_client_gets_429_with_retry_after_and_waits() {
    let flags = Flags::new(
        Snapshot::compile_json(
            r#"{ "flags": { "on": { "variants": { "on": true }, "fallthrough": { "variant": "on" } } } }"#,
            1,
        )
        .unwrap(),
    );
    // Two evaluations a minute per OFREP key.
    let limits = RateLimitLayer::builder()
        .policy(
            Policy::new("ofrep", Quota::per_minute(2))
                .path_prefix("/ofrep/")
                .key(KeySource::Header(http::header::AUTHORIZATION)),
        )
        .build()
        .unwrap();
    let app: axum::Router =
        ofrep::router(flags, OfrepKey::new(KEY), OfrepConfig::default()).layer(limits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut headers = HeaderMap::new();
    let bearer = format!("Bearer {KEY}");
    headers.insert("authorization", HeaderValue::from_str(&bearer).unwrap());
    let client = OfrepProvider::new(OfrepOptions {
        base_url: base.clone(),
        headers,
        connect_timeout: Duration::from_secs(5),
        ..Default::default()
    })
    .await
    .unwrap();
    let ctx = EvaluationContext::default().with_targeting_key("u1");

    // Raw: two admitted, then 429 with a Retry-After in seconds.
    let http = reqwest::Client::new();
    let url = format!("{base}/ofrep/v1/evaluate/flags");
    for _ in 0..2 {
        let res = http
            .post(&url)
            .header("authorization", &bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = http
        .post(&url)
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = res
        .headers()
        .get("retry-after")
        .expect("429 carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");

    // The real client: its call is refused with a general "rate limit" error...
    let e = client.resolve_bool_value("on", &ctx).await.unwrap_err();
    assert_eq!(
        e.code,
        EvaluationErrorCode::General("Rate limit exceeded".into())
    );
    let limited = limits.stats()[0].limited;
    assert_eq!(limited, 2);
    // ... and it honours Retry-After: the next call does not reach the server.
    let e = client.resolve_bool_value("on", &ctx).await.unwrap_err();
    assert_eq!(
        e.code,
        EvaluationErrorCode::General("Rate limit exceeded".into())
    );
    let stats = &limits.stats()[0];
    assert_eq!((stats.admitted, stats.limited), (2, limited));
}
