//! Every key-naming command the Redis components send stays in one Redis Cluster slot, judged
//! by a real cluster: the rate limiter (checks of two client keys in one request, a rejection
//! and its refunds), sessions (anonymous session, login with id cycling, log out everywhere),
//! membership (heartbeats, presence, listing, leaving) and the bus (durable and ephemeral
//! publishes, a durable subscription) run on one node whose slow log records every command;
//! then a 3-master `RedisCluster` names each command's keys (`COMMAND GETKEYS`) and their slots
//! (`CLUSTER KEYSLOT`). The multi-key `ACQUIRE` of two client keys, as it was sent before
//! checks were grouped by slot, is refused there with `CROSSSLOT`: the check can fail.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::http::{Request, StatusCode, header};
use axum::routing::{post, put};
use tower::{ServiceExt, service_fn};
use welcomedly_cluster::bus::{BusConfig, Topic};
use welcomedly_cluster::membership::{Membership, MembershipConfig};
use welcomedly_cluster::rate_limit::{RedisBackend, RedisRateLimitConfig};
use welcomedly_cluster::session::{
    RedisSessionConfig, RedisSessionStore, Session, SessionConfig, SessionError, SessionLayer,
};
use welcomedly_core::InstanceId;
use welcomedly_core::client_ip::ClientIp;
use welcomedly_core::rate_limit::backend::Key;
use welcomedly_core::rate_limit::{KeySource, Policy, Quota, RateLimitLayer};
use welcomedly_redis::{Link, LinkConfig};
use welcomedly_testkit::{RedisCluster, RedisClusterConfig, RedisServer, Reply};

type Params = Query<HashMap<String, String>>;

async fn set(session: Session, Query(q): Params) -> Result<&'static str, SessionError> {
    session.insert(&q["k"], &q["v"]).await?;
    Ok("ok")
}

async fn login(session: Session, Query(q): Params) -> Result<&'static str, SessionError> {
    session.log_in(q["user"].as_str()).await?;
    Ok("ok")
}

async fn logout_everywhere(session: Session) -> Result<String, SessionError> {
    Ok(session.log_out_everywhere().await?.to_string())
}

/// Sends one request to `app`: its status and the `name=value` of its Set-Cookie.
async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    cookie: Option<&str>,
) -> (StatusCode, Option<String>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let cookie = res
        .headers()
        .get(header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    (res.status(), cookie)
}

/// Runs every component's Redis work on `redis`.
async fn workload(redis: &RedisServer) {
    let link = Link::connect(LinkConfig::new(redis.url())).await.unwrap();

    // Rate limits: two policies keyed by two client keys (two slots), admitted then rejected.
    let mut config = RedisRateLimitConfig::default();
    config.budget = Duration::from_millis(500);
    config.remembered_rejections = 0;
    let layer = RateLimitLayer::builder()
        .backend(RedisBackend::new(&link, config).await.unwrap())
        .policy(Policy::new("ip", Quota::per_minute(100)))
        .policy(
            Policy::new("key", Quota::per_minute(1)).key(KeySource::Header(
                http::HeaderName::from_static("x-api-key"),
            )),
        )
        .build()
        .unwrap();
    let limited = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(http::Response::new(String::new()))
        }));
    for expected in [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS] {
        let mut r = Request::get("/api").body(String::new()).unwrap();
        r.extensions_mut()
            .insert(ClientIp("192.0.2.1".parse().unwrap()));
        r.headers_mut().insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(limited.clone().oneshot(r).await.unwrap().status(), expected);
    }

    // Sessions: an anonymous session, a login that cycles its id, a second login, log out
    // everywhere.
    let store = RedisSessionStore::new(&link, RedisSessionConfig::default())
        .await
        .unwrap();
    let app = Router::new()
        .route("/set", put(set))
        .route("/login", post(login))
        .route("/logout-everywhere", post(logout_everywhere))
        .layer(SessionLayer::new(store, SessionConfig::default()).unwrap());
    let (_, anon) = send(&app, "PUT", "/set?k=cart&v=1", None).await;
    let (status, authed) = send(&app, "POST", "/login?user=erin", anon.as_deref()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(&app, "POST", "/login?user=erin", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(&app, "POST", "/logout-everywhere", authed.as_deref()).await;
    assert_eq!(status, StatusCode::OK);

    // Membership: heartbeats, a presence, the views, leaving.
    let mut config = MembershipConfig::default();
    config.heartbeat_interval = Duration::from_millis(50);
    config.timeout = Duration::from_millis(400);
    let m = Membership::new(&link, config, InstanceId::new("web-1"))
        .await
        .unwrap();
    let guard = m.join("agent:1").unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(m.members().await.unwrap().len(), 1);
    m.cluster_presence().await.unwrap();
    drop(guard);
    m.leave().await.unwrap();

    // The bus: a durable subscription and publish, an ephemeral publish.
    let bus = BusConfig::new().build(&link).await.unwrap();
    let durable = Topic::<String>::durable("calls").unwrap();
    let mut sub = bus.subscribe(&durable).await;
    bus.publish(&durable, &"e1".to_owned()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .unwrap();
    bus.publish(
        &Topic::<String>::ephemeral("agents").unwrap(),
        &"e2".to_owned(),
    )
    .await
    .unwrap();
}

/// Every top-level command since `SLOWLOG RESET`, as its arguments.
fn recorded(redis: &RedisServer) -> Vec<Vec<String>> {
    let Reply::Array(entries) = redis.query(&["SLOWLOG", "GET", "-1"]).unwrap() else {
        panic!("SLOWLOG GET answered something else than an array");
    };
    entries
        .iter()
        .filter_map(|e| match e {
            Reply::Array(fields) => match fields.get(3) {
                Some(Reply::Array(args)) => Some(args.iter().map(Reply::to_text).collect()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_the_components_send_names_one_slot() {
    let redis = RedisServer::start().unwrap();
    redis
        .command(&["CONFIG", "SET", "slowlog-log-slower-than", "0"])
        .unwrap();
    redis
        .command(&["CONFIG", "SET", "slowlog-max-len", "100000"])
        .unwrap();
    redis.command(&["SLOWLOG", "RESET"]).unwrap();
    workload(&redis).await;
    let commands = recorded(&redis);

    let cluster = RedisCluster::start_with(
        &RedisClusterConfig::default()
            .masters(3)
            .replicas_per_master(0),
    )
    .unwrap();
    let node = cluster.ports()[0];
    let mut checked = BTreeSet::new();
    for args in &commands {
        // Slow-log entries cut long argument lists ("... (N more arguments)"): keys come first,
        // so the cut ones still name theirs.
        if args.iter().any(|a| a.contains("more arguments)"))
            && !args[0].eq_ignore_ascii_case("evalsha")
            && !args[0].eq_ignore_ascii_case("eval")
        {
            continue;
        }
        let mut getkeys = vec!["COMMAND", "GETKEYS"];
        getkeys.extend(args.iter().map(String::as_str));
        let keys = match cluster.query_on(node, &getkeys) {
            Ok(Reply::Array(keys)) => keys.iter().map(Reply::to_text).collect::<Vec<_>>(),
            // A command without keys (PING, INFO, PUBLISH, SUBSCRIBE, ...).
            _ => continue,
        };
        let slots: BTreeSet<String> = keys
            .iter()
            .map(|k| {
                cluster
                    .command_on(node, &["CLUSTER", "KEYSLOT", k])
                    .unwrap()
            })
            .collect();
        assert_eq!(
            slots.len(),
            1,
            "{args:?} names keys {keys:?} in slots {slots:?}"
        );
        for k in &keys {
            assert_eq!(
                welcomedly_redis::key_slot(k.as_bytes()).to_string(),
                cluster
                    .command_on(node, &["CLUSTER", "KEYSLOT", k])
                    .unwrap(),
                "key_slot disagrees with Redis on {k:?}"
            );
        }
        checked.insert(args[0].to_ascii_lowercase());
    }
    println!("commands checked: {} ({checked:?})", commands.len());
    for expected in [
        "evalsha",
        "eval",
        "del",
        "zrem",
        "zrange",
        "hkeys",
        "xrevrange",
    ] {
        assert!(
            checked.contains(expected),
            "the workload sent no {expected}: {checked:?}"
        );
    }

    // The call this branch split: both checks of the request in one ACQUIRE, on the node of
    // its first key.
    let link = Link::connect(LinkConfig::new(redis.url())).await.unwrap();
    let backend = RedisBackend::new(&link, RedisRateLimitConfig::default())
        .await
        .unwrap();
    let layer = RateLimitLayer::builder()
        .backend(backend.clone())
        .policy(Policy::new("ip", Quota::per_minute(100)))
        .policy(
            Policy::new("key", Quota::per_minute(1)).key(KeySource::Header(
                http::HeaderName::from_static("x-api-key"),
            )),
        )
        .build()
        .unwrap();
    let a = backend.key_name(&layer.policies()[0], &Key::Ip("192.0.2.1".parse().unwrap()));
    let b = backend.key_name(&layer.policies()[1], &Key::Header("k1".parse().unwrap()));
    let owner = cluster.node_for(a.as_bytes()).unwrap();
    let e = cluster
        .command_on(
            owner,
            &[
                "EVAL",
                welcomedly_cluster::rate_limit::ACQUIRE_SCRIPT,
                "2",
                &a,
                &b,
                "1",
                "1",
                "1",
                "0",
                "1",
                "1",
                "1",
                "0",
            ],
        )
        .unwrap_err();
    assert!(e.to_string().contains("CROSSSLOT"), "{e}");
}
