//! The layer and handle over the memory store.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::header::{COOKIE, SET_COOKIE};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Service, ServiceExt, service_fn};
use welcomedly_core::UserId;

use super::*;

fn layer(config: SessionConfig) -> SessionLayer {
    SessionLayer::new(SessionStore::memory(), config).unwrap()
}

type App = tower::util::BoxCloneService<Request<String>, Response<SessionBody<String>>, Infallible>;

fn app<F, Fut>(layer: &SessionLayer, f: F) -> App
where
    F: Fn(Request<String>, Session) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<String, SessionError>> + Send + 'static,
{
    let svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(move |req: Request<String>| {
            let f = f.clone();
            async move {
                let session = req.extensions().get::<Session>().cloned().unwrap();
                Ok::<_, Infallible>(match f(req, session).await {
                    Ok(text) => Response::new(text),
                    Err(e) => e
                        .to_response::<bytes::Bytes>()
                        .map(|b| String::from_utf8(b.to_vec()).unwrap()),
                })
            }
        }));
    tower::util::BoxCloneService::new(svc)
}

struct Answer {
    status: StatusCode,
    set_cookie: Option<String>,
    body: String,
}

impl Answer {
    /// `name=value` of the Set-Cookie.
    fn cookie(&self) -> String {
        self.set_cookie
            .as_deref()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    }
}

async fn send(app: &App, cookie: Option<&str>) -> Answer {
    let mut req = Request::get("/").body(String::new()).unwrap();
    if let Some(c) = cookie {
        req.headers_mut().insert(COOKIE, c.parse().unwrap());
    }
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let set_cookie = res
        .headers()
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        set_cookie,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

#[tokio::test]
async fn a_request_without_cookie_never_calls_the_store() {
    let l = layer(SessionConfig::default());
    let a = app(&l, |_, s: Session| async move {
        Ok(format!("{:?}", s.get::<u32>("n").await?))
    });
    let answer = send(&a, None).await;
    assert_eq!(answer.body, "None");
    assert!(answer.set_cookie.is_none());
    let untouched = app(&l, |_, _| async { Ok(String::new()) });
    send(
        &untouched,
        Some("__Host-wd_session=00112233445566778899aabbccddeeff"),
    )
    .await;
    assert_eq!(
        l.stats().loads,
        0,
        "lazy: an untouched session is not loaded"
    );
}

#[tokio::test]
async fn values_persist_and_the_cookie_is_set_once() {
    let l = layer(SessionConfig::default());
    let a = app(&l, |_, s: Session| async move {
        let n: u32 = s.get("n").await?.unwrap_or(0);
        s.insert("n", &(n + 1)).await?;
        Ok(n.to_string())
    });
    let first = send(&a, None).await;
    assert_eq!(first.body, "0");
    let text = first.set_cookie.clone().unwrap();
    assert!(text.contains("HttpOnly") && text.contains("SameSite=Lax") && text.contains("Secure"));
    let cookie = first.cookie();
    assert_eq!(send(&a, Some(&cookie)).await.body, "1");
    let third = send(&a, Some(&cookie)).await;
    assert_eq!(third.body, "2");
    assert!(third.set_cookie.is_none());
    let read = app(&l, |_, s: Session| async move {
        Ok(format!("{:?}", s.get::<u32>("n").await?))
    });
    let before = l.stats().writes;
    assert_eq!(send(&read, Some(&cookie)).await.body, "Some(3)");
    assert_eq!(l.stats().writes, before, "a read writes nothing");
}

#[tokio::test]
async fn log_in_cycles_the_id_and_log_out_ends_it() {
    let l = layer(SessionConfig::default());
    let a = app(&l, |req: Request<String>, s: Session| async move {
        match req.uri().query() {
            Some("login") => s.log_in("alice").await?,
            Some("logout") => s.log_out().await?,
            Some("cart") => s.insert("cart", &[1, 2]).await?,
            _ => {}
        }
        Ok(format!(
            "{:?} {:?}",
            s.user_id().await?.map(|u| u.0),
            s.get::<Vec<u8>>("cart").await?
        ))
    });
    let send_to = |q: &'static str, cookie: Option<String>| {
        let a = a.clone();
        async move {
            let mut req = Request::get(format!("/?{q}")).body(String::new()).unwrap();
            if let Some(c) = cookie {
                req.headers_mut().insert(COOKIE, c.parse().unwrap());
            }
            let res = a.oneshot(req).await.unwrap();
            let set = res
                .headers()
                .get(SET_COOKIE)
                .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (set, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let (anon, body) = send_to("cart", None).await;
    assert_eq!(body, "None Some([1, 2])");
    let anon = anon.unwrap();
    let (authed, body) = send_to("login", Some(anon.clone())).await;
    assert_eq!(
        body, "Some(\"alice\") Some([1, 2])",
        "values survive the login"
    );
    let authed = authed.unwrap();
    assert_ne!(authed, anon, "the id cycled");
    let (_, body) = send_to("", Some(anon.clone())).await;
    assert_eq!(body, "None None", "the pre-login id is worth nothing");
    let (_, body) = send_to("", Some(authed.clone())).await;
    assert_eq!(body, "Some(\"alice\") Some([1, 2])");
    let (removed, _) = send_to("logout", Some(authed.clone())).await;
    assert_eq!(removed.unwrap(), "__Host-wd_session=");
    let (_, body) = send_to("", Some(authed)).await;
    assert_eq!(body, "None None");
}

#[tokio::test]
async fn log_out_everywhere_ends_every_session_of_the_user() {
    let l = layer(SessionConfig::default());
    let login = app(&l, |_, s: Session| async move {
        s.log_in("bob").await?;
        Ok(String::new())
    });
    let everywhere = app(&l, |_, s: Session| async move {
        Ok(s.log_out_everywhere().await?.to_string())
    });
    let who = app(&l, |_, s: Session| async move {
        Ok(format!("{:?}", s.user_id().await?.map(|u| u.0)))
    });
    let phone = send(&login, None).await.cookie();
    let laptop = send(&login, None).await.cookie();
    assert_eq!(send(&who, Some(&phone)).await.body, "Some(\"bob\")");
    assert_eq!(send(&everywhere, Some(&laptop)).await.body, "2");
    assert_eq!(send(&who, Some(&phone)).await.body, "None");
    assert_eq!(send(&who, Some(&laptop)).await.body, "None");
}

#[tokio::test]
async fn malformed_forged_and_unknown_cookies_are_no_session() {
    let l = layer(SessionConfig {
        signing_keys: vec!["a-signing-key-of-some-length".to_owned()],
        ..SessionConfig::default()
    });
    let a = app(&l, |_, s: Session| async move {
        Ok(format!("{:?}", s.user_id().await?))
    });
    for bad in [
        "__Host-wd_session=%00%ff",
        "__Host-wd_session=0011223344556677889g00112233445566",
        "__Host-wd_session=not-an-id",
        &format!("__Host-wd_session={}", "a".repeat(10_000)),
    ] {
        let answer = send(&a, Some(bad)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "None");
        assert!(answer.set_cookie.unwrap().contains("Max-Age=0"));
    }
    let forged = format!(
        "__Host-wd_session=00112233445566778899aabbccddeeff.{}",
        "0".repeat(32)
    );
    assert_eq!(send(&a, Some(&forged)).await.body, "None");
    let login = app(&l, |_, s: Session| async move {
        s.log_in("carol").await?;
        Ok(String::new())
    });
    let good = send(&login, None).await.cookie();
    assert!(good.contains('.'), "signed: {good}");
    assert_eq!(send(&a, Some(&good)).await.body, "Some(UserId(\"carol\"))");
    let stats = l.stats();
    assert!(stats.malformed_cookies >= 3, "{stats:?}");
    assert_eq!(stats.forged_cookies, 1, "{stats:?}");
    assert_eq!(stats.loads, 1, "refused cookies cost no load: {stats:?}");
}

#[tokio::test]
async fn concurrent_requests_changing_different_keys_both_persist() {
    let l = layer(SessionConfig::default());
    let start = app(&l, |_, s: Session| async move {
        s.insert("seed", &0).await?;
        Ok(String::new())
    });
    let cookie = send(&start, None).await.cookie();
    let write = app(&l, |req: Request<String>, s: Session| async move {
        let key = req.uri().query().unwrap().to_owned();
        // Both requests have loaded before either writes.
        let _ = s.get::<u32>("seed").await?;
        tokio::task::yield_now().await;
        s.insert(&key, &1).await?;
        Ok(String::new())
    });
    let mut tasks = Vec::new();
    for i in 0..20 {
        let w = write.clone();
        let c = cookie.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = Request::get(format!("/?k{i}")).body(String::new()).unwrap();
            req.headers_mut().insert(COOKIE, c.parse().unwrap());
            w.oneshot(req).await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let read = app(&l, |_, s: Session| async move {
        let mut n = 0;
        for i in 0..20 {
            n += s.get::<u32>(&format!("k{i}")).await?.unwrap_or(0);
        }
        Ok(n.to_string())
    });
    assert_eq!(send(&read, Some(&cookie)).await.body, "20");
}

#[tokio::test]
async fn eager_loading_puts_the_user_in_the_extensions() {
    let l = layer(SessionConfig {
        load_eagerly: true,
        ..SessionConfig::default()
    });
    let login = app(&l, |_, s: Session| async move {
        s.log_in("dave").await?;
        Ok(String::new())
    });
    let who = app(&l, |req: Request<String>, _| async move {
        Ok(format!(
            "{:?}",
            req.extensions().get::<UserId>().map(|u| u.0.clone())
        ))
    });
    let cookie = send(&login, None).await.cookie();
    assert_eq!(send(&who, Some(&cookie)).await.body, "Some(\"dave\")");
    assert_eq!(send(&who, None).await.body, "None");
}

/// Lazy (the default): a request with a cookie carries a `DeferredUser`; nothing is loaded
/// until something resolves it, and then once (the handler's own reads reuse the load).
#[tokio::test]
async fn lazy_loading_leaves_a_deferred_user_looked_up_once_when_asked() {
    use welcomedly_core::DeferredUser;
    let l = layer(SessionConfig::default());
    let login = app(&l, |_, s: Session| async move {
        s.log_in("dave").await?;
        Ok(String::new())
    });
    let untouched = app(&l, |req: Request<String>, _| async move {
        Ok(format!(
            "{} {}",
            req.extensions().get::<UserId>().is_some(),
            req.extensions().get::<DeferredUser>().is_some()
        ))
    });
    let asked = app(&l, |req: Request<String>, s: Session| async move {
        let deferred = req.extensions().get::<DeferredUser>().cloned().unwrap();
        let first = deferred.resolve().await.map(|u| u.0);
        let again = deferred.resolve().await.map(|u| u.0);
        let direct = s.user_id().await?.map(|u| u.0);
        Ok(format!("{first:?} {again:?} {direct:?}"))
    });
    let cookie = send(&login, None).await.cookie();
    let loads = l.stats().loads;
    assert_eq!(send(&untouched, Some(&cookie)).await.body, "false true");
    assert_eq!(l.stats().loads, loads, "nobody asked: no load");
    assert_eq!(send(&untouched, None).await.body, "false false");
    assert_eq!(
        send(&asked, Some(&cookie)).await.body,
        "Some(\"dave\") Some(\"dave\") Some(\"dave\")"
    );
    assert_eq!(l.stats().loads, loads + 1, "one load for three questions");
}

#[test]
fn settings_are_validated() {
    let zero = SessionConfig {
        idle_timeout: std::time::Duration::ZERO,
        ..SessionConfig::default()
    };
    assert!(
        SessionLayer::new(SessionStore::memory(), zero)
            .unwrap_err()
            .is_config()
    );
}

#[test]
fn services_layers_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SessionLayer>();
    send_sync::<Session>();
    send_sync::<SessionStore>();
    send_sync::<SessionError>();
    send_sync::<
        SessionService<
            tower::util::BoxCloneSyncService<Request<String>, Response<String>, Infallible>,
        >,
    >();
    fn send_only<T: Send>() {}
    send_only::<
        ResponseFuture<
            std::future::Ready<Result<Response<String>, Infallible>>,
            String,
            Infallible,
        >,
    >();
    let _ = Arc::new(0);
}

#[allow(dead_code)]
fn service_is_a_service(l: &SessionLayer) {
    fn is_service<S: Service<Request<String>>>(_: &S) {}
    let svc = tower::Layer::layer(
        l,
        service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }),
    );
    is_service(&svc);
}

#[tokio::test]
async fn logging_in_as_another_user_drops_the_previous_users_values() {
    let l = layer(SessionConfig::default());
    let a = app(&l, |req: Request<String>, s: Session| async move {
        match req.uri().query() {
            Some("alice") => {
                s.log_in("alice").await?;
                s.insert("secret", "alice's").await?;
            }
            Some("bob") => s.log_in("bob").await?,
            _ => {}
        }
        Ok(format!("{:?}", s.get::<String>("secret").await?))
    });
    let mut req = Request::get("/?alice").body(String::new()).unwrap();
    req.headers_mut().insert(COOKIE, "x=1".parse().unwrap());
    let res = a.clone().oneshot(req).await.unwrap();
    let cookie = res.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let mut req = Request::get("/?bob").body(String::new()).unwrap();
    req.headers_mut().insert(COOKIE, cookie.parse().unwrap());
    let res = a.oneshot(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"None");
}

/// Two session cookies (one planted, say): no session, and the reply deletes neither, since a
/// removal could only hit this host's own cookie, the legitimate one.
#[tokio::test]
async fn several_session_cookies_are_no_session_and_nothing_is_deleted() {
    let l = layer(SessionConfig::default());
    let login = app(&l, |_, s: Session| async move {
        s.log_in("erin").await?;
        Ok(String::new())
    });
    let who = app(&l, |_, s: Session| async move {
        Ok(format!("{:?}", s.user_id().await?.map(|u| u.0)))
    });
    let good = send(&login, None).await.cookie();
    let planted = "__Host-wd_session=00112233445566778899aabbccddeeff";
    let answer = send(&who, Some(&format!("{planted}; {good}"))).await;
    assert_eq!(answer.body, "None");
    assert!(answer.set_cookie.is_none(), "{:?}", answer.set_cookie);
    // The legitimate cookie still works once the planted one is gone.
    assert_eq!(send(&who, Some(&good)).await.body, "Some(\"erin\")");
}

#[tokio::test]
async fn the_counters_are_exported_as_metrics() {
    let metrics = welcomedly_core::telemetry::Metrics::new().unwrap();
    let l = layer(SessionConfig::default());
    l.register_metrics(metrics.meter());
    let login = app(&l, |_, s: Session| async move {
        s.log_in("dana").await?;
        Ok(String::new())
    });
    let who = app(&l, |_, s: Session| async move {
        Ok(format!("{:?}", s.user_id().await?))
    });
    let cookie = send(&login, None).await.cookie();
    send(&who, Some(&cookie)).await;
    send(&who, Some("__Host-wd_session=not-an-id")).await;
    send(
        &who,
        Some("__Host-wd_session=00112233445566778899aabbccddeeff"),
    )
    .await;

    let text = metrics.encode().unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    };
    let stats = l.stats();
    assert_eq!(value("welcomedly_session_loads_total{"), stats.loads as f64);
    assert_eq!(
        value("welcomedly_session_writes_total{"),
        stats.writes as f64
    );
    assert!(stats.loads >= 2 && stats.writes >= 1, "{stats:?}");
    assert_eq!(
        value(r#"welcomedly_session_refused_total{reason="malformed_cookie""#),
        1.0
    );
    assert_eq!(
        value(r#"welcomedly_session_refused_total{reason="unknown_session""#),
        1.0
    );
    assert_eq!(
        value(r#"welcomedly_session_refused_total{reason="forged_cookie""#),
        0.0
    );
    assert_eq!(value("welcomedly_session_writes_after_end_total{"), 0.0);
}
