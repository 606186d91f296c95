//! Behaviour of the layer as a whole, on a manual clock.

use std::convert::Infallible;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use tower::{Service, ServiceExt, service_fn};

use super::backend::*;
use super::*;
use crate::UserId;
use crate::client_ip::ClientIp;

type Body = http_body_util::Full<bytes::Bytes>;

fn layer(policies: Vec<Policy>) -> (RateLimitLayer<LocalBackend<ManualClock>>, ManualClock) {
    let clock = ManualClock::new();
    let mut b = RateLimitLayer::builder().backend(LocalBackend::with_clock(clock.clone()));
    for p in policies {
        b = b.policy(p);
    }
    (b.build().unwrap(), clock)
}

/// A service answering with the status in the `x-status` request header (default 200).
fn svc(
    l: &RateLimitLayer<LocalBackend<ManualClock>>,
) -> impl Service<
    Request<Body>,
    Response = Response<ResponseBody<Body>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send {
    tower::ServiceBuilder::new()
        .layer(l.clone())
        .service(service_fn(|req: Request<Body>| async move {
            let status = req
                .headers()
                .get("x-status")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(200);
            let mut res = Response::new(Body::from("ok"));
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(res)
        }))
}

fn req(method: Method, path: &str, ip: &str) -> Request<Body> {
    let mut r = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::default())
        .unwrap();
    r.extensions_mut().insert(ClientIp(ip.parse().unwrap()));
    r
}

async fn send<S>(s: &mut S, r: Request<Body>) -> Response<ResponseBody<Body>>
where
    S: Service<Request<Body>, Response = Response<ResponseBody<Body>>, Error = Infallible>,
{
    s.ready().await.unwrap().call(r).await.unwrap()
}

#[tokio::test]
async fn rejects_with_problem_json_and_headers_then_admits_after_retry_after() {
    let (l, clock) = layer(vec![Policy::new("login", Quota::per_minute(5))]);
    let mut s = svc(&l);
    for i in 0..5u64 {
        let res = send(&mut s, req(Method::POST, "/auth/login", "192.0.2.1")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()["ratelimit"],
            format!("\"login\";r={};t={}", 4 - i, 12 * (i + 1)).as_str()
        );
        assert_eq!(res.headers()["ratelimit-policy"], "\"login\";q=5;w=60");
    }
    clock.advance(Duration::from_millis(500));
    let res = send(&mut s, req(Method::POST, "/auth/login", "192.0.2.1")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // 11.5 s to wait, rounded up.
    assert_eq!(res.headers()["retry-after"], "12");
    assert_eq!(res.headers()["ratelimit"], "\"login\";r=0;t=60");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["status"], 429);
    assert_eq!(json["policy"], "login");
    // Another client is not affected.
    let res = send(&mut s, req(Method::POST, "/auth/login", "192.0.2.2")).await;
    assert_eq!(res.status(), StatusCode::OK);
    // Waiting what Retry-After said is enough.
    clock.advance(Duration::from_secs(12));
    let res = send(&mut s, req(Method::POST, "/auth/login", "192.0.2.1")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let stats = l.stats();
    assert_eq!(stats[0].admitted, 7);
    assert_eq!(stats[0].limited, 1);
    assert_eq!(stats[0].keys, Some(2));
}

#[tokio::test]
async fn a_request_rejected_by_one_policy_consumes_nothing_from_the_others() {
    let (l, _clock) = layer(vec![
        Policy::new("api", Quota::per_minute(10)).path_prefix("/api"),
        Policy::new("upload", Quota::per_minute(2)).path_prefix("/api/upload"),
    ]);
    let mut s = svc(&l);
    for _ in 0..2 {
        let res = send(&mut s, req(Method::POST, "/api/upload", "192.0.2.1")).await;
        assert_eq!(res.status(), StatusCode::OK);
        // The tightest policy is reported.
        assert!(
            res.headers()["ratelimit"]
                .to_str()
                .unwrap()
                .starts_with("\"upload\"")
        );
    }
    for _ in 0..20 {
        let res = send(&mut s, req(Method::POST, "/api/upload", "192.0.2.1")).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    // 2 of the api policy's 10 were used; the 20 rejected uploads took nothing.
    for i in 0..8 {
        let res = send(&mut s, req(Method::GET, "/api/agents", "192.0.2.1")).await;
        assert_eq!(res.status(), StatusCode::OK, "api request {i}");
    }
    let res = send(&mut s, req(Method::GET, "/api/agents", "192.0.2.1")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn charging_by_status_never_locks_out_successful_logins() {
    let (l, _clock) = layer(vec![
        Policy::new("login", Quota::per_minute(3))
            .method(Method::POST)
            .path("/auth/login")
            .charge_only_statuses([StatusCode::UNAUTHORIZED]),
    ]);
    let mut s = svc(&l);
    for _ in 0..10 {
        let res = send(&mut s, req(Method::POST, "/auth/login", "192.0.2.1")).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    for _ in 0..3 {
        let mut r = req(Method::POST, "/auth/login", "192.0.2.1");
        r.headers_mut().insert("x-status", "401".parse().unwrap());
        assert_eq!(send(&mut s, r).await.status(), StatusCode::UNAUTHORIZED);
    }
    // Three failures used the quota: even a correct password now waits.
    let res = send(&mut s, req(Method::POST, "/auth/login", "192.0.2.1")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// The bypass found in review: charge-by-status peeked at admission and charged at the
/// response, so failed logins whose bodies arrived together all reached the handler.
#[tokio::test]
async fn concurrent_slow_requests_on_a_charge_by_status_policy_admit_at_most_the_burst() {
    let (l, _clock) = layer(vec![
        Policy::new("login", Quota::per_minute(5))
            .method(Method::POST)
            .path("/auth/login")
            .charge_only_statuses([StatusCode::UNAUTHORIZED]),
    ]);
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let svc = {
        let (reached, gate) = (reached.clone(), gate.clone());
        tower::ServiceBuilder::new()
            .layer(l.clone())
            .service(service_fn(move |_req: Request<Body>| {
                let (reached, gate) = (reached.clone(), gate.clone());
                async move {
                    reached.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    // A slow password check: every request is in flight at once.
                    let _permit = gate.acquire().await;
                    let mut res = Response::new(Body::from("no"));
                    *res.status_mut() = StatusCode::UNAUTHORIZED;
                    Ok::<_, Infallible>(res)
                }
            }))
    };
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(svc.oneshot(req(
            Method::POST,
            "/auth/login",
            "192.0.2.1",
        ))));
    }
    // Let every request reach the limiter (and the admitted ones the handler) before any answers.
    for _ in 0..10_000 {
        let finished = tasks.iter().filter(|t| t.is_finished()).count();
        if finished >= 35 && reached.load(std::sync::atomic::Ordering::SeqCst) >= 5 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 5);
    gate.add_permits(40);
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().unwrap().status());
    }
    let count = |s: StatusCode| statuses.iter().filter(|x| **x == s).count();
    assert_eq!(count(StatusCode::UNAUTHORIZED), 5);
    assert_eq!(count(StatusCode::TOO_MANY_REQUESTS), 35);
}

#[tokio::test]
async fn reservations_of_uncharged_statuses_are_refunded() {
    let (l, _clock) = layer(vec![
        Policy::new("login", Quota::per_minute(2)).charge_only_statuses([StatusCode::UNAUTHORIZED]),
    ]);
    let mut s = svc(&l);
    // In flight together, two requests hold the whole burst: a third is rejected...
    let held_a = s
        .ready()
        .await
        .unwrap()
        .call(req(Method::POST, "/", "192.0.2.1"));
    let held_b = s
        .ready()
        .await
        .unwrap()
        .call(req(Method::POST, "/", "192.0.2.1"));
    let third = send(&mut s, req(Method::POST, "/", "192.0.2.1")).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    // ...and once they answer 200 (not charged), their reservations come back.
    assert_eq!(held_a.await.unwrap().status(), StatusCode::OK);
    assert_eq!(held_b.await.unwrap().status(), StatusCode::OK);
    for _ in 0..2 {
        let mut r = req(Method::POST, "/", "192.0.2.1");
        r.headers_mut().insert("x-status", "401".parse().unwrap());
        assert_eq!(send(&mut s, r).await.status(), StatusCode::UNAUTHORIZED);
    }
    let res = send(&mut s, req(Method::POST, "/", "192.0.2.1")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_rejected_request_gives_back_what_other_policies_reserved() {
    let (l, _clock) = layer(vec![
        Policy::new("api", Quota::per_minute(3)).path_prefix("/api"),
        Policy::new("upload", Quota::per_minute(1)).path_prefix("/api/upload"),
    ]);
    let mut s = svc(&l);
    assert_eq!(
        send(&mut s, req(Method::POST, "/api/upload", "192.0.2.1"))
            .await
            .status(),
        StatusCode::OK
    );
    for _ in 0..5 {
        let res = send(&mut s, req(Method::POST, "/api/upload", "192.0.2.1")).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    // The five rejected uploads reserved api capacity and gave it back: two api calls remain.
    for _ in 0..2 {
        let res = send(&mut s, req(Method::GET, "/api/x", "192.0.2.1")).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = send(&mut s, req(Method::GET, "/api/x", "192.0.2.1")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn shadow_policies_count_but_never_reject() {
    let (l, _clock) = layer(vec![Policy::new("new", Quota::per_minute(1)).shadow(true)]);
    let mut s = svc(&l);
    for _ in 0..5 {
        let res = send(&mut s, req(Method::GET, "/", "192.0.2.1")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("ratelimit").is_none());
    }
    let st = &l.stats()[0];
    assert_eq!((st.admitted, st.limited, st.shadow_limited), (1, 0, 4));
}

#[tokio::test]
async fn otherwise_applies_only_to_requests_no_other_policy_matched() {
    let (l, _clock) = layer(vec![
        Policy::new("api", Quota::per_minute(100)).path_prefix("/api"),
        Policy::new("general", Quota::per_minute(1)).otherwise(),
    ]);
    let mut s = svc(&l);
    for _ in 0..5 {
        let res = send(&mut s, req(Method::GET, "/api/x", "192.0.2.1")).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(
        send(&mut s, req(Method::GET, "/about", "192.0.2.1"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&mut s, req(Method::GET, "/about", "192.0.2.1"))
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_matched_policy_without_a_key_falls_through_to_otherwise() {
    let (l, _clock) = layer(vec![
        Policy::new("per-user", Quota::per_minute(100))
            .path_prefix("/api")
            .key(KeySource::User),
        Policy::new("general", Quota::per_minute(2)).otherwise(),
    ]);
    let mut s = svc(&l);
    // Anonymous requests to the user-keyed route are limited by `general`, not by nothing.
    for _ in 0..2 {
        let res = send(&mut s, req(Method::GET, "/api/x", "192.0.2.1")).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = send(&mut s, req(Method::GET, "/api/x", "192.0.2.1")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // A logged-in user is counted by the user policy alone.
    for _ in 0..5 {
        let mut r = req(Method::GET, "/api/x", "192.0.2.1");
        r.extensions_mut().insert(UserId::new("alice"));
        assert_eq!(send(&mut s, r).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn user_keyed_policies_skip_anonymous_requests() {
    let (l, _clock) = layer(vec![
        Policy::new("per-user", Quota::per_minute(1)).key(KeySource::User),
    ]);
    let mut s = svc(&l);
    for _ in 0..3 {
        let res = send(&mut s, req(Method::GET, "/", "192.0.2.1")).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let mut alice = req(Method::GET, "/", "192.0.2.1");
    alice.extensions_mut().insert(UserId::new("alice"));
    assert_eq!(send(&mut s, alice).await.status(), StatusCode::OK);
    let mut alice = req(Method::GET, "/", "192.0.2.9");
    alice.extensions_mut().insert(UserId::new("alice"));
    assert_eq!(
        send(&mut s, alice).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Users behind one address each get the policy's quota; anonymous requests share the address's
/// and never spend a user's.
#[tokio::test]
async fn user_or_client_ip_gives_each_user_behind_one_address_a_budget() {
    let (l, _clock) = layer(vec![
        Policy::new("api", Quota::per_minute(2)).key(KeySource::UserOrClientIp),
    ]);
    let mut s = svc(&l);
    let as_user = |user: &str| {
        let mut r = req(Method::GET, "/api", "192.0.2.1");
        r.extensions_mut().insert(UserId::new(user));
        r
    };
    for user in ["alice", "bob"] {
        for _ in 0..2 {
            assert_eq!(send(&mut s, as_user(user)).await.status(), StatusCode::OK);
        }
        assert_eq!(
            send(&mut s, as_user(user)).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    for _ in 0..2 {
        let res = send(&mut s, req(Method::GET, "/api", "192.0.2.1")).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = send(&mut s, req(Method::GET, "/api", "192.0.2.1")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// A failure budget keyed by a derived key (a digest an outer layer took from the body) charges
/// only the failures, per key; requests without the key are not limited by it.
#[tokio::test]
async fn derived_keys_count_failures_per_key() {
    let (l, _clock) = layer(vec![
        Policy::new("account", Quota::per_minute(2))
            .key(KeySource::Derived("account".into()))
            .charge_only_statuses([StatusCode::UNAUTHORIZED]),
    ]);
    let mut s = svc(&l);
    let login = |account: &str, status: u16| {
        let mut r = req(Method::POST, "/login", "192.0.2.1");
        r.extensions_mut()
            .insert(DerivedKey::new("account", account));
        r.headers_mut()
            .insert("x-status", status.to_string().parse().unwrap());
        r
    };
    for _ in 0..2 {
        let res = send(&mut s, login("d1", 401)).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    // Successes are not charged, but a spent budget refuses them too.
    assert_eq!(
        send(&mut s, login("d1", 200)).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(&mut s, login("d2", 200)).await.status(),
        StatusCode::OK
    );
    for _ in 0..3 {
        let mut r = req(Method::POST, "/login", "192.0.2.1");
        r.headers_mut().insert("x-status", "401".parse().unwrap());
        assert_eq!(send(&mut s, r).await.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn header_modes() {
    let clock = ManualClock::new();
    let l = RateLimitLayer::builder()
        .backend(LocalBackend::with_clock(clock))
        .headers(HeaderMode::Never)
        .policy(Policy::new("p", Quota::per_minute(1)))
        .build()
        .unwrap();
    let mut s = svc(&l);
    let res = send(&mut s, req(Method::GET, "/", "192.0.2.1")).await;
    assert!(res.headers().get("ratelimit").is_none());
    let res = send(&mut s, req(Method::GET, "/", "192.0.2.1")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().get("ratelimit").is_none());
    assert_eq!(res.headers()["retry-after"], "60");
}

#[test]
fn build_errors_say_what_to_fix() {
    let e = RateLimitLayer::builder().build().unwrap_err();
    assert!(matches!(e, BuildError::NoPolicies));
    let e = RateLimitLayer::builder()
        .policy(Policy::new("a\"b", Quota::per_minute(1)))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("invalid"), "{e}");
    let e = RateLimitLayer::builder()
        .policy(Policy::new("a", Quota::per_minute(1)))
        .policy(Policy::new("a", Quota::per_minute(2)))
        .build()
        .unwrap_err();
    assert!(matches!(e, BuildError::DuplicateName { .. }));
    let e = RateLimitLayer::builder()
        .policy(Policy::new("zero", Quota::per_minute(0)))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("\"zero\""), "{e}");
    // One backend cannot serve two layers (their policy indexes would collide).
    let backend = std::sync::Arc::new(LocalBackend::new());
    backend
        .prepare(&[])
        .expect("first layer prepares the backend");
    assert!(backend.prepare(&[]).is_err());
}

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    type Inner = tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;
    assert_send_sync::<RateLimitLayer>();
    assert_send_sync::<RateLimit<Inner, LocalBackend>>();
    assert_send_sync::<LocalBackend<ManualClock>>();
    fn assert_send<T: Send>() {}
    assert_send::<ResponseFuture<Inner, Body, LocalBackend>>();
    assert_send::<ResponseBody<Body>>();
}

proptest! {
    /// Whatever the sequence of requests and pauses, a client that waits `Retry-After` seconds
    /// after a 429 is admitted by its next request.
    #[test]
    fn waiting_retry_after_is_always_enough(
        count in 1u32..20, burst in 1u32..10,
        steps in proptest::collection::vec((0u64..3000, 0usize..3), 1..60),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let (l, clock) = layer(vec![Policy::new("p", Quota::per_second(count).with_burst(burst))]);
            let mut s = svc(&l);
            let ips = ["192.0.2.1", "192.0.2.2", "2001:db8::1"];
            for (pause_ms, who) in steps {
                clock.advance(Duration::from_millis(pause_ms));
                let res = send(&mut s, req(Method::GET, "/", ips[who])).await;
                if res.status() == StatusCode::TOO_MANY_REQUESTS {
                    let wait: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                    prop_assert!(wait >= 1);
                    clock.advance(Duration::from_secs(wait));
                    let again = send(&mut s, req(Method::GET, "/", ips[who])).await;
                    prop_assert_eq!(again.status(), StatusCode::OK);
                }
            }
            Ok(())
        })?;
    }
}

proptest! {
    /// Forged `X-Forwarded-For` / `Forwarded` headers from a peer that is not a trusted proxy
    /// never change the key: however the headers vary, the peer's quota runs out after its burst.
    #[test]
    fn forged_forwarding_headers_never_change_the_key(
        forged in proptest::collection::vec(
            (any::<[u8; 4]>(), any::<bool>(), "[ -~]{0,40}"), 1..40),
    ) {
        use crate::client_ip::{ClientIpLayer, PeerAddr, TrustedProxies};
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let (l, _clock) = layer(vec![Policy::new("p", Quota::per_minute(3))]);
            let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
            let mut s = tower::ServiceBuilder::new()
                .layer(ClientIpLayer::new(trusted))
                .service(svc(&l));
            let mut admitted = 0;
            for (ip, use_forwarded, junk) in forged {
                let mut r = Request::get("/").body(Body::default()).unwrap();
                r.extensions_mut().insert(PeerAddr("203.0.113.50:4000".parse().unwrap()));
                let ip = std::net::Ipv4Addr::from(ip);
                let (name, value) = if use_forwarded {
                    ("forwarded", format!("for={ip};{junk}"))
                } else {
                    ("x-forwarded-for", format!("{junk}, {ip}"))
                };
                if let Ok(v) = http::HeaderValue::from_str(&value) {
                    r.headers_mut().insert(name, v);
                }
                if s.ready().await.unwrap().call(r).await.unwrap().status() == StatusCode::OK {
                    admitted += 1;
                }
            }
            prop_assert!(admitted <= 3, "admitted {}", admitted);
            Ok(())
        })?;
    }
}

/// Issue 20: a request that fails because of us (503: our session store or hashing pool is
/// down) spends nothing of a policy that charges every other response; concurrent requests
/// still cannot overshoot, as each is reserved at admission.
#[tokio::test]
async fn refund_statuses_spend_nothing_and_still_reserve_at_admission() {
    let (l, _clock) = layer(vec![
        Policy::new("login", Quota::per_minute(2))
            .refund_statuses([StatusCode::SERVICE_UNAVAILABLE]),
    ]);
    let mut s = svc(&l);
    let unavailable = || {
        let mut r = req(Method::POST, "/auth/login", "192.0.2.1");
        r.headers_mut().insert("x-status", "503".parse().unwrap());
        r
    };
    for _ in 0..10 {
        assert_eq!(
            send(&mut s, unavailable()).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    // The whole budget is left for the responses that are charged.
    for _ in 0..2 {
        let res = send(&mut s, req(Method::POST, "/auth/login", "192.0.2.1")).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = send(&mut s, req(Method::POST, "/auth/login", "192.0.2.1")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);

    // In flight together, two 503-to-be requests hold the whole burst of another client.
    let held_a = s.ready().await.unwrap().call(unavailable_from("192.0.2.2"));
    let held_b = s.ready().await.unwrap().call(unavailable_from("192.0.2.2"));
    let third = send(&mut s, req(Method::POST, "/auth/login", "192.0.2.2")).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        held_a.await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        held_b.await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let after = send(&mut s, req(Method::POST, "/auth/login", "192.0.2.2")).await;
    assert_eq!(after.status(), StatusCode::OK);
}

fn unavailable_from(ip: &str) -> Request<Body> {
    let mut r = req(Method::POST, "/auth/login", ip);
    r.headers_mut().insert("x-status", "503".parse().unwrap());
    r
}

/// A refund only gives back what the backend's own store charged: a decision that charged
/// nothing (fail-open) refunds nothing.
#[test]
fn the_local_backend_refunds_only_its_own_charges() {
    let (l, _clock) = layer(vec![Policy::new("login", Quota::per_minute(1))]);
    let spec = l.policies()[0].clone();
    let backend = LocalBackend::with_clock(ManualClock::new());
    backend.prepare_policies(std::slice::from_ref(&spec));
    let key = Key::Ip("192.0.2.3".parse().unwrap());
    let decide = || backend.decide(&[Check::new(&spec, &key)], 1)[0].allowed;
    assert!(decide());
    assert!(!decide());
    RateLimitBackend::refund(&backend, &spec, &key, DecisionSource::FailOpen);
    assert!(!decide(), "a fail-open admission charged nothing to refund");
    RateLimitBackend::refund(&backend, &spec, &key, DecisionSource::Store);
    assert!(decide());
}

/// Two concurrent requests for one key that fit the burst exactly are both admitted, however
/// their threads interleave: the clock is read under the key's lock (before, a request that
/// read the clock first but took the lock second was refused — a spurious 429 seen for a
/// double click on a login during a Redis outage).
#[test]
fn concurrent_requests_within_the_burst_are_never_refused() {
    let (l, _clock) = layer(vec![Policy::new("pair", Quota::per_hour(2))]);
    let spec = l.policies()[0].clone();
    let backend = LocalBackend::new();
    backend.prepare_policies(std::slice::from_ref(&spec));
    let refused = std::sync::atomic::AtomicU32::new(0);
    for i in 0..3000u32 {
        let key = Key::Ip(std::net::Ipv4Addr::from(0x0a00_0000 | i).into());
        let both = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    both.wait();
                    if !backend.decide(&[Check::new(&spec, &key)], 1)[0].allowed {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
    }
    assert_eq!(
        refused.into_inner(),
        0,
        "requests within the burst were refused"
    );
}
