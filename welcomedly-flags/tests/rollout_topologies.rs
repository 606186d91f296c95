//! Guarded rollouts on the other Redis topologies the link supports: a 3-master Redis Cluster
//! (welcomedly-testkit's `RedisCluster`, a replica per master) and a Sentinel group
//! (`RedisSentinel`, a primary and a replica). Three instances (each its own link, flag store,
//! sync, attribution, flags layer and agent) serve in-process traffic. On each topology a
//! healthy change completes through every stage while the node holding the rollout's keys
//! fails over mid-rollout; the rollout may freeze meanwhile, but no stage is ever stepped
//! twice: every decision any agent took is in the final state once, in order.
//!
//! Every key of a rollout is `{wd:rollout:<flag>}:…` (one slot per flag): on the cluster, a
//! script or pipeline naming keys of two slots would fail with `CROSSSLOT`, so these runs check
//! the layout on a real cluster too.
#![cfg(feature = "redis")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use support::{FLAG, Instance, actions, send_as_users, treatment_share, wait_past_first_stage};
use tower::{Layer, service_fn};
use welcomedly_flags::layer::RequestFlags;
use welcomedly_flags::rollout::agent::DecisionEvent;
use welcomedly_flags::rollout::plan::Plan;
use welcomedly_redis::LinkConfig;
use welcomedly_testkit::{RedisCluster, RedisSentinel};

/// Four stages: long enough that a failover lands in the middle.
const PLAN: &str = r#"{"stages": [
    {"percent": 10, "minDurationSecs": 1, "minSamples": 200},
    {"percent": 30, "minDurationSecs": 2, "minSamples": 200},
    {"percent": 60, "minDurationSecs": 2, "minSamples": 200},
    {"percent": 100}]}"#;

/// A noisy shared box and failovers: a generous budget for every command and the flag store.
async fn instance(link: LinkConfig) -> Instance {
    support::instance(link, Duration::from_millis(300)).await
}

/// Serves `n` requests of distinct users on `inst`, 1 % of each arm's failing.
async fn serve(inst: &Instance, n: u64, seq: &AtomicU64) {
    let served = Arc::new(AtomicU64::new(0));
    let svc = inst.layer.layer(service_fn(move |req: Request<()>| {
        let flags = req.extensions().get::<RequestFlags>().cloned().unwrap();
        // Evaluated: the request counts for the arm it was served.
        let _on = flags.is_enabled(FLAG);
        let k = served.fetch_add(1, Ordering::Relaxed) + 1;
        async move {
            let mut res = Response::new(());
            if k.is_multiple_of(100) {
                *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            Ok::<_, Infallible>(res)
        }
    }));
    send_as_users(svc, n, seq).await;
}

/// Load on every instance until `stop`.
fn load(instances: Arc<Vec<Instance>>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let seq = AtomicU64::new(0);
        while !stop.load(Ordering::Relaxed) {
            for inst in instances.iter() {
                serve(inst, 40, &seq).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// Every decision any agent publishes, in the order they arrive.
fn record_decisions(instances: &[Instance]) -> Arc<Mutex<Vec<DecisionEvent>>> {
    let seen: Arc<Mutex<Vec<DecisionEvent>>> = Arc::default();
    for inst in instances {
        let mut rx = inst.agent.decisions();
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok(e) = rx.recv().await {
                seen.lock().unwrap().push(e);
            }
        });
    }
    seen
}

/// The status as the first instance that can read it reports it (`frozen` included).
async fn status(instances: &[Instance]) -> serde_json::Value {
    for inst in instances {
        if let Ok(s) = inst.agent.status(FLAG).await {
            return s;
        }
    }
    panic!("no instance knows the rollout");
}

/// Starts the rollout, waits for the first advance, runs `failover`, waits for the end and
/// checks that every stage stepped once: the states seen after the failover.
async fn roll_out_through<F>(links: Vec<LinkConfig>, failover: F) -> Vec<String>
where
    F: FnOnce() -> Duration,
{
    let mut v = Vec::new();
    for link in links {
        v.push(instance(link).await);
    }
    let instances = Arc::new(v);
    let decisions = record_decisions(&instances);
    let stop = Arc::new(AtomicBool::new(false));
    let load = load(instances.clone(), stop.clone());
    instances[0]
        .agent
        .start_rollout(FLAG, Plan::from_json(PLAN).unwrap(), "test")
        .await
        .unwrap();

    // Mid-rollout: after the first advance.
    wait_past_first_stage(|| status(&instances), Duration::from_secs(40)).await;
    let took = tokio::task::block_in_place(failover);
    println!("failed over in {took:?}");

    let mut states = Vec::new();
    let started = Instant::now();
    let s = loop {
        let s = status(&instances).await;
        let state = s["state"].as_str().unwrap().to_owned();
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        if state == "completed" {
            break s;
        }
        assert!(
            state == "running" || state == "frozen",
            "{state} after the failover: {s:#}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "not completed 90 s after the failover: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(
        states.len() >= 2,
        "the rollout had completed before the failover was over: {states:?}"
    );

    // Every stage stepped once, in order.
    assert_eq!(
        actions(&s),
        [
            ("start".to_owned(), 0),
            ("advance".to_owned(), 0),
            ("advance".to_owned(), 1),
            ("complete".to_owned(), 2),
        ],
        "every stage stepped once: {s:#}"
    );
    // And no agent took (and published) a decision the state does not hold: a step taken on
    // a write the failover lost and taken again would show here twice.
    let published: Vec<(String, u64)> = decisions
        .lock()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e.decision.action.as_str().to_owned(),
                e.decision.stage as u64,
            )
        })
        .collect();
    assert_eq!(published, actions(&s), "published decisions: {published:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for inst in instances.iter() {
        assert_eq!(
            treatment_share(inst),
            1.0,
            "every instance serves the change"
        );
    }
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_completes_on_a_redis_cluster_through_a_failover_of_its_shard() {
    let cluster = Arc::new(RedisCluster::start().unwrap());
    let slot = RedisCluster::slot_of(format!("{{wd:rollout:{FLAG}}}:state").as_bytes());
    let links = (0..3)
        .map(|_| LinkConfig::cluster(cluster.seed_urls()))
        .collect();
    let c = cluster.clone();
    let states = roll_out_through(links, move || c.failover(slot).unwrap().took).await;
    println!("cluster, CLUSTER FAILOVER of slot {slot}'s master mid-rollout: {states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_completes_on_sentinel_through_a_failover() {
    let group = Arc::new(RedisSentinel::start().unwrap());
    let links = (0..3)
        .map(|_| LinkConfig::sentinel(group.sentinel_addrs(), group.master_name(), "redis://"))
        .collect();
    let g = group.clone();
    let states = roll_out_through(links, move || g.failover().unwrap().took).await;
    println!("Sentinel, SENTINEL FAILOVER mid-rollout: {states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_completes_on_sentinel_when_its_primary_is_killed() {
    let group = Arc::new(RedisSentinel::start().unwrap());
    let links = (0..3)
        .map(|_| LinkConfig::sentinel(group.sentinel_addrs(), group.master_name(), "redis://"))
        .collect();
    let g = group.clone();
    let states = roll_out_through(links, move || g.kill_primary().unwrap().took).await;
    println!("Sentinel, primary SIGKILLed mid-rollout: {states:?}");
}
