//! One test per rule of Go's `CrossOriginProtection`, the exemptions, and the 403 response.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::convert::Infallible;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt, service_fn};

use super::*;

fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn verdict(
    layer: &CrossOriginLayer,
    method: &str,
    headers: &[(&str, &str)],
) -> Result<(), Refusal> {
    layer.check(&req(method, "/auth/logout", headers))
}

const HOST: (&str, &str) = ("host", "app.example.com");

#[test]
fn safe_methods_always_pass() {
    let l = CrossOriginLayer::new();
    let hostile = [
        HOST,
        ("sec-fetch-site", "cross-site"),
        ("origin", "https://evil.example"),
    ];
    for m in ["GET", "HEAD", "OPTIONS"] {
        assert_eq!(verdict(&l, m, &hostile), Ok(()), "{m}");
    }
    // Exactly those three, as Go: every other method, extension ones included, is checked.
    for m in ["POST", "PUT", "PATCH", "DELETE", "get", "PROPFIND"] {
        assert_eq!(verdict(&l, m, &hostile), Err(Refusal::FetchMetadata), "{m}");
    }
}

#[test]
fn sec_fetch_site_same_origin_or_none_passes() {
    let l = CrossOriginLayer::new();
    for v in ["same-origin", "none"] {
        // Even with an Origin that does not match: Sec-Fetch-Site decides.
        let h = [
            HOST,
            ("sec-fetch-site", v),
            ("origin", "https://evil.example"),
        ];
        assert_eq!(verdict(&l, "POST", &h), Ok(()), "{v}");
    }
}

#[test]
fn sec_fetch_site_anything_else_is_refused() {
    let l = CrossOriginLayer::new();
    for v in ["cross-site", "same-site", "Same-Origin", "bogus"] {
        // Even with an Origin that matches the host: Sec-Fetch-Site decides.
        let h = [
            HOST,
            ("sec-fetch-site", v),
            ("origin", "https://app.example.com"),
        ];
        assert_eq!(verdict(&l, "POST", &h), Err(Refusal::FetchMetadata), "{v}");
    }
}

#[test]
fn without_sec_fetch_site_the_origin_host_must_be_the_host() {
    let l = CrossOriginLayer::new();
    for (origin, ok) in [
        ("https://app.example.com", true),
        ("http://app.example.com", true), // no scheme in Host: Go fails open here (HSTS)
        ("https://app.example.com:8443", false), // ports are compared
        ("https://evil.example", false),
        ("https://app.example.com.evil.example", false),
        ("null", false),
        ("app.example.com", false),
        ("https://user@app.example.com", true), // Go's Host drops the user info
    ] {
        let want = if ok {
            Ok(())
        } else {
            Err(Refusal::OriginMismatch)
        };
        assert_eq!(
            verdict(&l, "POST", &[HOST, ("origin", origin)]),
            want,
            "{origin}"
        );
        // An empty Sec-Fetch-Site is no Sec-Fetch-Site (Go's Header.Get).
        let h = [HOST, ("origin", origin), ("sec-fetch-site", "")];
        assert_eq!(verdict(&l, "POST", &h), want, "{origin}");
    }
    // A port in both.
    let h = [
        ("host", "localhost:3000"),
        ("origin", "http://localhost:3000"),
    ];
    assert_eq!(verdict(&l, "POST", &h), Ok(()));
    // No Host at all: an Origin never matches.
    assert_eq!(
        verdict(&l, "POST", &[("origin", "https://app.example.com")]),
        Err(Refusal::OriginMismatch)
    );
}

#[test]
fn the_authority_of_an_absolute_target_is_the_host() {
    let l = CrossOriginLayer::new();
    let r = req(
        "POST",
        "http://app.example.com/auth/logout",
        &[
            ("host", "other.example"),
            ("origin", "https://app.example.com"),
        ],
    );
    assert_eq!(l.check(&r), Ok(()));
}

#[test]
fn neither_header_passes_it_is_not_a_browser() {
    let l = CrossOriginLayer::new();
    assert_eq!(verdict(&l, "POST", &[HOST]), Ok(()));
    assert_eq!(verdict(&l, "DELETE", &[]), Ok(()));
    assert_eq!(verdict(&l, "POST", &[HOST, ("origin", "")]), Ok(()));
}

#[test]
fn a_trusted_origin_is_exempt_from_both_checks() {
    let l = CrossOriginLayer::new().trusted_origins([
        "https://admin.example.com".parse().unwrap(),
        "HTTP://Localhost:5173".parse().unwrap(),
    ]);
    let h = [
        HOST,
        ("origin", "https://admin.example.com"),
        ("sec-fetch-site", "same-site"),
    ];
    assert_eq!(verdict(&l, "POST", &h), Ok(()));
    let h = [HOST, ("origin", "https://admin.example.com")];
    assert_eq!(verdict(&l, "POST", &h), Ok(()));
    let h = [
        HOST,
        ("origin", "http://localhost:5173"),
        ("sec-fetch-site", "cross-site"),
    ];
    assert_eq!(verdict(&l, "POST", &h), Ok(()));
    // Exact match only.
    for o in [
        "https://admin.example.com:443",
        "https://admin.example.com/",
        "http://admin.example.com",
        "https://evil.admin.example.com",
    ] {
        let h = [HOST, ("origin", o), ("sec-fetch-site", "cross-site")];
        assert_eq!(verdict(&l, "POST", &h), Err(Refusal::FetchMetadata), "{o}");
    }
    // Sec-Fetch-Site without Origin cannot be trusted.
    let h = [HOST, ("sec-fetch-site", "cross-site")];
    assert_eq!(verdict(&l, "POST", &h), Err(Refusal::FetchMetadata));
}

#[test]
fn trusted_origins_are_validated_as_go_does() {
    for ok in [
        "https://a.example",
        "http://localhost:8080",
        "https://[::1]:8443",
    ] {
        assert!(ok.parse::<TrustedOrigin>().is_ok(), "{ok}");
    }
    for bad in [
        "",
        "a.example",
        "https://",
        "https://a.example/",
        "https://a.example/path",
        "https://a.example?q",
        "https://a.example#f",
        "https://u@a.example",
        "https://a.example:80x",
        "1https://a.example",
        "https://a example",
    ] {
        let e = bad.parse::<TrustedOrigin>().unwrap_err();
        assert!(e.to_string().starts_with("the trusted origin"), "{e}");
    }
}

#[test]
fn a_bypass_pattern_is_exempt_but_only_for_clean_paths() {
    let l = CrossOriginLayer::new()
        .insecure_bypass("POST /sso/callback".parse().unwrap())
        .insecure_bypass("/webhooks/".parse().unwrap());
    let hostile = [
        HOST,
        ("origin", "https://idp.example"),
        ("sec-fetch-site", "cross-site"),
    ];
    let check = |m: &str, p: &str| l.check(&req(m, p, &hostile));
    assert_eq!(check("POST", "/sso/callback"), Ok(()));
    assert_eq!(check("PUT", "/sso/callback"), Err(Refusal::FetchMetadata));
    assert_eq!(
        check("POST", "/sso/callback/x"),
        Err(Refusal::FetchMetadata)
    );
    assert_eq!(check("DELETE", "/webhooks/github"), Ok(()));
    assert_eq!(check("POST", "/webhooks/a/b?x=1"), Ok(()));
    for sneaky in ["/webhooks/../auth/logout", "/webhooks//x", "/webhooks/./x"] {
        assert_eq!(
            check("POST", sneaky),
            Err(Refusal::FetchMetadata),
            "{sneaky}"
        );
    }
    // Without Sec-Fetch-Site, the bypass is consulted after the Origin comparison.
    let old = [HOST, ("origin", "https://idp.example")];
    assert_eq!(l.check(&req("POST", "/sso/callback", &old)), Ok(()));
    for bad in ["sso", "post /x", "/a/{id}", "/a/../b", "POST  "] {
        assert!(bad.parse::<BypassPattern>().is_err(), "{bad}");
    }
}

#[test]
fn origin_hosts_are_parsed_as_go_url_parse() {
    use super::check::origin_host;
    assert_eq!(origin_host("https://a.example"), Some("a.example"));
    assert_eq!(
        origin_host("https://a.example:8443/x?y#z"),
        Some("a.example:8443")
    );
    assert_eq!(origin_host("https://u:p@a.example"), Some("a.example"));
    assert_eq!(origin_host("//a.example"), Some("a.example"));
    assert_eq!(origin_host("null"), Some(""));
    assert_eq!(origin_host("mailto:a@b"), Some(""));
    assert_eq!(origin_host(":a.example"), None);
    assert_eq!(origin_host("https://a.example:x"), None);
    assert_eq!(origin_host("https://a\u{1}.example"), None);
    assert_eq!(origin_host("https://[::1]:80"), Some("[::1]:80"));
}

#[tokio::test]
async fn a_refusal_is_a_403_problem_and_the_service_is_not_called() {
    let layer = CrossOriginLayer::new();
    let svc = layer.layer(service_fn(|_req: Request<String>| async {
        panic!("the inner service must not run for a refused request");
        #[allow(unreachable_code)]
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let forged = Request::builder()
        .method(Method::POST)
        .uri("/auth/logout")
        .header("host", "app.example.com")
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(String::new())
        .unwrap();
    let res = svc.oneshot(forged).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["status"], 403);
    assert_eq!(json["reason"], "origin");
    assert!(
        json["detail"]
            .as_str()
            .unwrap()
            .contains("Origin does not match Host")
    );
    assert!(!String::from_utf8_lossy(&body).contains("evil.example"));
    assert_eq!(layer.stats().refused_origin, 1);
    assert_eq!(layer.stats().refused_fetch_metadata, 0);
}

#[tokio::test]
async fn an_allowed_request_reaches_the_service_untouched() {
    let layer = CrossOriginLayer::new();
    let svc = layer.layer(service_fn(|req: Request<String>| async move {
        Ok::<_, Infallible>(Response::new(req.into_body()))
    }));
    let own = Request::post("/x")
        .header("sec-fetch-site", "same-origin")
        .body("hello".to_owned())
        .unwrap();
    let res = svc.oneshot(own).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
}

#[test]
fn the_layer_service_future_and_body_are_send_and_sync() {
    fn both<T: Send + Sync>() {}
    type Inner = tower::util::BoxCloneSyncService<Request<String>, Response<String>, Infallible>;
    both::<CrossOriginLayer>();
    both::<CrossOrigin<Inner>>();
    both::<ResponseBody<String>>();
    fn send<T: Send>() {}
    send::<ResponseFuture<<Inner as tower::Service<Request<String>>>::Future>>();
}
