//! Guarded rollouts against a real `redis-server`, with three instances (each its own link,
//! flag store, sync, attribution, flags layer and rollout agent) serving in-process traffic:
//! a healthy change completes through every stage; +3 points of errors is rolled back on every
//! instance; the acting instance dropped mid-rollout is replaced without a double step; Redis
//! frozen (SIGSTOP) freezes the rollout, which goes on when Redis is back.
#![cfg(feature = "redis")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use support::{
    FLAG, Instance, SEED, actions, send_as_users, treatment_share, wait_for, wait_past_first_stage,
};
use tower::{Layer, service_fn};
use welcomedly_flags::layer::RequestFlags;
use welcomedly_flags::rollout::controller::Action;
use welcomedly_flags::rollout::plan::Plan;
use welcomedly_flags::rollout::store::RolloutStore;
use welcomedly_flags::store::{Change, Fence, FlagStore, RedisStore, RedisStoreConfig};
use welcomedly_redis::{Link, LinkConfig};
use welcomedly_testkit::RedisServer;

/// Every command (and the flag store) may take 200 ms.
const BUDGET: Duration = Duration::from_millis(200);

fn link_config(redis: &RedisServer) -> LinkConfig {
    support::tuned(LinkConfig::new(redis.url()), BUDGET)
}

async fn instance(redis: &RedisServer) -> Instance {
    support::instance(LinkConfig::new(redis.url()), BUDGET).await
}

/// Serves `n` requests of distinct users on `inst`: the treatment fails `treatment_errors` of
/// its requests, the control `control_errors` (exact shares, spread evenly).
async fn serve(
    inst: &Instance,
    n: u64,
    seq: &AtomicU64,
    control_errors: f64,
    treatment_errors: f64,
) {
    let failed_c = Arc::new(AtomicU64::new(0));
    let failed_t = Arc::new(AtomicU64::new(0));
    let served_c = Arc::new(AtomicU64::new(0));
    let served_t = Arc::new(AtomicU64::new(0));
    let svc = inst.layer.layer(service_fn(move |req: Request<()>| {
        let flags = req.extensions().get::<RequestFlags>().cloned().unwrap();
        let (fc, ft, sc, st) = (
            failed_c.clone(),
            failed_t.clone(),
            served_c.clone(),
            served_t.clone(),
        );
        async move {
            let on = flags.is_enabled(FLAG);
            let (share, served, failed) = if on {
                (treatment_errors, st, ft)
            } else {
                (control_errors, sc, fc)
            };
            let k = served.fetch_add(1, Ordering::Relaxed) + 1;
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss
            )]
            let fail = ((k as f64) * share) as u64 > failed.load(Ordering::Relaxed);
            if fail {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            let status = if fail {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            };
            let mut res = Response::new(());
            *res.status_mut() = status;
            Ok::<_, Infallible>(res)
        }
    }));
    send_as_users(svc, n, seq).await;
}

/// Load on every live instance until `stop`.
fn load(
    instances: Arc<tokio::sync::RwLock<Vec<Instance>>>,
    stop: Arc<AtomicBool>,
    control_errors: f64,
    treatment_errors: f64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let seq = AtomicU64::new(0);
        while !stop.load(Ordering::Relaxed) {
            {
                let all = instances.read().await;
                for inst in all.iter() {
                    serve(inst, 40, &seq, control_errors, treatment_errors).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

async fn status_of(instances: &tokio::sync::RwLock<Vec<Instance>>) -> serde_json::Value {
    let all = instances.read().await;
    let agent = &all.first().unwrap().agent;
    agent.status(FLAG).await.unwrap()
}

async fn wait_state(
    instances: &tokio::sync::RwLock<Vec<Instance>>,
    state: &str,
    within: Duration,
) -> serde_json::Value {
    let every = Duration::from_millis(100);
    wait_for(
        state,
        || status_of(instances),
        within,
        every,
        |s| s["state"] == state,
    )
    .await
}

type Fleet = Arc<tokio::sync::RwLock<Vec<Instance>>>;

async fn fleet(redis: &RedisServer, n: usize) -> Fleet {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(instance(redis).await);
    }
    Arc::new(tokio::sync::RwLock::new(v))
}

/// The load on a fleet.
struct Load {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Load {
    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.unwrap();
    }
}

/// `n` instances on `redis` under load (the arms failing `control_errors` and
/// `treatment_errors` of their requests), and the rollout of `plan` started on instance `on`.
async fn roll_out_under_load(
    redis: &RedisServer,
    n: usize,
    control_errors: f64,
    treatment_errors: f64,
    on: usize,
    plan: &str,
) -> (Fleet, Load) {
    let instances = fleet(redis, n).await;
    let stop = Arc::new(AtomicBool::new(false));
    let handle = load(
        instances.clone(),
        stop.clone(),
        control_errors,
        treatment_errors,
    );
    instances.read().await[on]
        .agent
        .start_rollout(FLAG, Plan::from_json(plan).unwrap(), "test")
        .await
        .unwrap();
    (instances, Load { stop, handle })
}

const FAST: &str = r#"{"stages": [
    {"percent": 10, "minDurationSecs": 1, "minSamples": 300},
    {"percent": 50, "minDurationSecs": 1, "minSamples": 300},
    {"percent": 100}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_change_completes_through_every_stage() {
    let redis = RedisServer::start().unwrap();
    let (instances, load) = roll_out_under_load(&redis, 3, 0.01, 0.01, 0, FAST).await;
    let s = wait_state(&instances, "completed", Duration::from_secs(40)).await;
    load.stop().await;
    assert_eq!(
        actions(&s),
        [
            ("start".to_owned(), 0),
            ("advance".to_owned(), 0),
            ("complete".to_owned(), 1)
        ],
        "{s:#}"
    );
    let advance = &s["decisions"][1];
    assert!(
        advance["evidence"][0]["control"]["trials"]
            .as_u64()
            .unwrap()
            >= 300
    );
    assert_eq!(
        advance["evidence"][0]["evidence"]["verdict"], "holds",
        "{s:#}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for inst in instances.read().await.iter() {
        assert_eq!(treatment_share(inst), 1.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_points_more_errors_roll_back_on_every_instance() {
    let redis = RedisServer::start().unwrap();
    // Long stages: only the guard can end this rollout.
    let slow = r#"{"stages": [{"percent": 50, "minDurationSecs": 600}, {"percent": 100}]}"#;
    let (instances, load) = roll_out_under_load(&redis, 3, 0.01, 0.04, 1, slow).await;
    let s = wait_state(&instances, "rolled_back", Duration::from_secs(60)).await;
    let rollback = s["decisions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(rollback["action"], "rollback");
    let errors = &rollback["evidence"][0];
    assert_eq!(errors["guard"], "errorRatio");
    assert_eq!(errors["evidence"]["verdict"], "regression", "{s:#}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for inst in instances.read().await.iter() {
        assert_eq!(
            treatment_share(inst),
            0.0,
            "no instance serves the treatment"
        );
    }
    // And it stays so: nothing advances a rolled back rollout.
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.stop().await;
    let again = status_of(&instances).await;
    assert_eq!(again["state"], "rolled_back");
    assert_eq!(again["decisions"], s["decisions"]);
    for inst in instances.read().await.iter() {
        assert_eq!(treatment_share(inst), 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_dropped_mid_rollout_is_replaced_without_a_double_step() {
    let redis = RedisServer::start().unwrap();
    let four = r#"{"stages": [
        {"percent": 5, "minDurationSecs": 1, "minSamples": 100},
        {"percent": 20, "minDurationSecs": 1, "minSamples": 200},
        {"percent": 50, "minDurationSecs": 2, "minSamples": 300},
        {"percent": 100}]}"#;
    let (instances, load) = roll_out_under_load(&redis, 3, 0.01, 0.01, 2, four).await;
    // Wait for the first advance, then drop whoever acts.
    wait_past_first_stage(|| status_of(&instances), Duration::from_secs(30)).await;
    {
        let mut all = instances.write().await;
        let leader = all
            .iter()
            .position(|i| i.agent.is_leader(FLAG))
            .expect("one instance acts");
        assert_eq!(
            all.iter().filter(|i| i.agent.is_leader(FLAG)).count(),
            1,
            "exactly one instance acts"
        );
        all.remove(leader);
    }
    let s = wait_state(&instances, "completed", Duration::from_secs(60)).await;
    load.stop().await;
    assert_eq!(
        actions(&s),
        [
            ("start".to_owned(), 0),
            ("advance".to_owned(), 0),
            ("advance".to_owned(), 1),
            ("complete".to_owned(), 2)
        ],
        "every stage stepped once: {s:#}"
    );
    let all = instances.read().await;
    let leaders = all.iter().filter(|i| i.agent.is_leader(FLAG)).count();
    assert!(leaders <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_freezes_the_rollout_which_goes_on_after() {
    let redis = RedisServer::start().unwrap();
    let p = r#"{"stages": [
        {"percent": 10, "minDurationSecs": 4, "minSamples": 300},
        {"percent": 100}]}"#;
    let (instances, load) = roll_out_under_load(&redis, 2, 0.01, 0.01, 0, p).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.pause().unwrap();
    let paused_at = welcomedly_flags_now_ms();
    // Every instance reports the freeze (its status falls back to what it last knew).
    let s = wait_state(&instances, "frozen", Duration::from_secs(10)).await;
    assert!(
        s["frozenBecause"].as_str().unwrap().contains("Redis"),
        "{s:#}"
    );
    // Longer than the stage's minimum time: nothing is decided while frozen.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let resumed_at = welcomedly_flags_now_ms();
    redis.resume().unwrap();
    let s = wait_state(&instances, "completed", Duration::from_secs(40)).await;
    load.stop().await;
    for d in s["decisions"].as_array().unwrap() {
        let at = d["atMs"].as_u64().unwrap();
        assert!(
            !(paused_at + 500..resumed_at).contains(&at),
            "a decision while Redis was frozen: {d:#}"
        );
    }
    assert_eq!(actions(&s).len(), 2, "{s:#}");
}

fn welcomedly_flags_now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_pause_resume_and_abort_and_bad_plans_are_refused() {
    let redis = RedisServer::start().unwrap();
    let instances = fleet(&redis, 1).await;
    let all = instances.read().await;
    let agent = &all[0].agent;
    let err = agent
        .start_rollout(
            FLAG,
            Plan::from_json(r#"{"treatment": "nope"}"#).unwrap(),
            "test",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("treatment"), "{err}");
    agent
        .start_rollout(FLAG, Plan::default(), "test")
        .await
        .unwrap();
    let again = agent.start_rollout(FLAG, Plan::default(), "test").await;
    assert!(again.unwrap_err().to_string().contains("abort it"));
    let p = agent.operate(FLAG, Action::Pause, "ops").await.unwrap();
    assert_eq!(p.phase.as_str(), "paused");
    agent.operate(FLAG, Action::Resume, "ops").await.unwrap();
    agent.operate(FLAG, Action::Abort, "ops").await.unwrap();
    let s = agent.status(FLAG).await.unwrap();
    assert_eq!(s["state"], "aborted");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(treatment_share(&all[0]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_old_leader_cannot_write_after_its_lease_expired() {
    let redis = RedisServer::start().unwrap();
    let old = RolloutStore::new(Link::connect(link_config(&redis)).await.unwrap());
    let new = RolloutStore::new(Link::connect(link_config(&redis)).await.unwrap());
    let ttl = Duration::from_millis(300);
    let state = welcomedly_flags::rollout::controller::RolloutState::start(
        FLAG,
        Plan::default(),
        "test",
        1,
    );
    use welcomedly_flags::rollout::store::Written;
    assert_eq!(
        old.write(&state, 0, None, None).await.unwrap(),
        Written::Ok(1)
    );
    let t1 = old.acquire(FLAG, ttl).await.unwrap().unwrap();
    assert_eq!(
        new.acquire(FLAG, ttl).await.unwrap(),
        None,
        "one holder at a time"
    );
    assert!(old.renew(FLAG, t1, ttl).await.unwrap());
    // The old leader pauses past its TTL; the other takes over with a larger token.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t2 = new.acquire(FLAG, ttl).await.unwrap().unwrap();
    assert!(t2 > t1);
    assert!(!old.renew(FLAG, t1, ttl).await.unwrap());
    let mut stale = state.clone();
    stale.stage = 1;
    assert_eq!(
        old.write(&stale, 1, Some(t1), None).await.unwrap(),
        Written::Fenced
    );
    assert_eq!(
        new.write(&state, 0, Some(t2), None).await.unwrap(),
        Written::Conflict(1),
        "a stale revision is refused too"
    );
    assert_eq!(
        new.write(&stale, 1, Some(t2), None).await.unwrap(),
        Written::Ok(2)
    );
    let (stored, rev) = old.load(FLAG).await.unwrap().unwrap();
    assert_eq!((stored.stage, rev), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flag_store_refuses_a_flag_write_of_an_old_leader() {
    let redis = RedisServer::start().unwrap();
    let side = || async {
        let link = Link::connect(link_config(&redis)).await.unwrap();
        let mut sc = RedisStoreConfig::default();
        sc.budget = Duration::from_millis(500);
        let flags = RedisStore::new(&link, sc).await.unwrap();
        (RolloutStore::new(link), flags)
    };
    let (old_lease, old) = side().await;
    let (new_lease, new) = side().await;
    let ttl = Duration::from_millis(300);
    assert_eq!(
        old.write(0, SEED.into(), Change::new("t", "seed"))
            .await
            .unwrap(),
        1
    );
    let t1 = old_lease.acquire(FLAG, ttl).await.unwrap().unwrap();
    old.raise_fence(Fence::new(FLAG, t1)).await.unwrap();
    let stage = r#"{"flags": {"new-checkout": {"variants": {"on": true, "off": false},
        "fallthrough": {"variant": "on"}}}}"#;
    assert_eq!(
        old.write_fenced(
            1,
            stage.into(),
            Change::new("t", "stage 1"),
            Fence::new(FLAG, t1)
        )
        .await
        .unwrap(),
        2
    );
    // The old leader pauses past its lease; the new one takes it and fences the flag store.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t2 = new_lease.acquire(FLAG, ttl).await.unwrap().unwrap();
    assert!(t2 > t1);
    new.raise_fence(Fence::new(FLAG, t2)).await.unwrap();
    // The old leader wakes up and writes its stale stage: refused, and it says why.
    let e = old
        .write_fenced(
            2,
            SEED.into(),
            Change::new("t", "stale"),
            Fence::new(FLAG, t1),
        )
        .await
        .unwrap_err();
    assert!(e.is_fenced(), "{e}");
    assert_eq!(e.fenced_by(), Some(t2));
    assert!(
        e.to_string().contains(&format!("fencing token {t1}"))
            && e.to_string().contains("another instance acts"),
        "{e}"
    );
    let doc = new.load().await.unwrap();
    assert_eq!((doc.version, doc.body.as_str()), (2, stage));
    assert!(
        old.raise_fence(Fence::new(FLAG, t1))
            .await
            .unwrap_err()
            .is_fenced()
    );
    // The new leader's write passes, and so does an operator's (unfenced) one.
    assert_eq!(
        new.write_fenced(
            2,
            SEED.into(),
            Change::new("t", "rollback"),
            Fence::new(FLAG, t2)
        )
        .await
        .unwrap(),
        3
    );
    assert_eq!(
        old.write(3, SEED.into(), Change::new("ops", "edit"))
            .await
            .unwrap(),
        4
    );
    // Another flag's fence is its own; the token sits next to the document, on its slot.
    assert_eq!(
        old.write_fenced(
            4,
            SEED.into(),
            Change::new("t", "x"),
            Fence::new("other", 1)
        )
        .await
        .unwrap(),
        5
    );
    assert_eq!(
        redis.command(&["HGET", "{wd:flags}:fences", FLAG]).unwrap(),
        t2.to_string()
    );
    // A fenced write that loses the compare-and-set is still a conflict, not a fence.
    let e = new
        .write_fenced(
            1,
            SEED.into(),
            Change::new("t", "late"),
            Fence::new(FLAG, t2),
        )
        .await
        .unwrap_err();
    assert!(e.is_conflict() && !e.is_fenced(), "{e}");
}
