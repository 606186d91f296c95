//! Shared by the guarded-rollout tests (`tests/rollout.rs`, `tests/rollout_topologies.rs`), not a
//! test target itself: one in-process instance (its own link, flag store, sync, attribution,
//! flags layer and rollout agent), the tunings the tests share, and readers of the rollout's
//! status and of the flag an instance serves.
// Each test crate that includes this uses only some of it; unwrap and panics are allowed by
// the including crate's own `#![allow]`.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use tower::{Service, ServiceExt};
use welcomedly_flags::layer::FlagsLayer;
use welcomedly_flags::rollout::agent::{AgentConfig, RolloutAgent};
use welcomedly_flags::rollout::attribution::Attribution;
use welcomedly_flags::rollout::store::RolloutStore;
use welcomedly_flags::store::{
    Change, FlagStore, FlagSyncHandle, RedisStore, RedisStoreConfig, SyncConfig, sync_flags,
};
use welcomedly_flags::{Context, Flags, Snapshot};
use welcomedly_redis::{Backoff, Link, LinkConfig};

/// The flag every rollout test rolls out.
pub const FLAG: &str = "new-checkout";

/// The flag set each store starts with: `FLAG` off for everyone.
pub const SEED: &str = r#"{"flags": {"new-checkout": {"variants": {"on": true, "off": false},
    "fallthrough": {"variant": "off"}}}}"#;

/// One instance of the service, in process.
pub struct Instance {
    pub flags: Flags,
    pub agent: RolloutAgent,
    pub layer: FlagsLayer,
    pub _sync: FlagSyncHandle,
}

/// A noisy shared box (and failovers): fast reconnects, and `budget` for each command.
pub fn tuned(mut link: LinkConfig, budget: Duration) -> LinkConfig {
    link.backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    link.min_outage = Duration::from_millis(20);
    link.budget = budget;
    link
}

/// Agents that tick fast, with a short lease and settle time.
pub fn agent_config() -> AgentConfig {
    let mut c = AgentConfig::default();
    c.tick = Duration::from_millis(100);
    c.lease_ttl = Duration::from_millis(800);
    c.settle = Duration::from_millis(300);
    c
}

/// An instance on `link` ([`tuned`] with `budget`, which its flag store takes too); the first
/// one seeds the store with [`SEED`].
pub async fn instance(link: LinkConfig, budget: Duration) -> Instance {
    let link = Link::connect(tuned(link, budget)).await.unwrap();
    let mut sc = RedisStoreConfig::default();
    sc.budget = budget;
    let store: Arc<dyn FlagStore> = Arc::new(RedisStore::new(&link, sc).await.unwrap());
    if store.load().await.unwrap().version == 0 {
        let _ = store
            .write(0, SEED.into(), Change::new("test", "seed"))
            .await;
    }
    let flags = Flags::new(Snapshot::empty());
    let mut sync = SyncConfig::default();
    sync.retry_interval = Duration::from_millis(20);
    sync.max_retry_interval = Duration::from_millis(200);
    let sync = sync_flags(store.clone(), &flags, sync).await.unwrap();
    let attribution = Attribution::new();
    let agent = RolloutAgent::start(
        RolloutStore::new(link),
        store,
        attribution.clone(),
        agent_config(),
    );
    let layer = FlagsLayer::new(flags.clone())
        .key_header(http::HeaderName::from_static("x-user"))
        .attribution(attribution);
    Instance {
        flags,
        agent,
        layer,
        _sync: sync,
    }
}

/// Sends `n` requests through `svc`, each of a distinct user (`x-user: user-<seq>`).
pub async fn send_as_users<S>(svc: S, n: u64, seq: &AtomicU64)
where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone,
{
    for _ in 0..n {
        let id = seq.fetch_add(1, Ordering::Relaxed);
        let req = Request::get("/")
            .header("x-user", format!("user-{id}"))
            .body(())
            .unwrap();
        svc.clone().oneshot(req).await.unwrap();
    }
}

/// The share of 2000 users `inst` serves the treatment now.
pub fn treatment_share(inst: &Instance) -> f64 {
    let snapshot = inst.flags.snapshot();
    let on = (0..2000)
        .filter(|i| {
            let key = format!("probe-{i}");
            snapshot.bool_value(FLAG, &Context::new(&key), false).value
        })
        .count();
    on as f64 / 2000.0
}

/// The decisions of a rollout's status as (action, stage).
pub fn actions(status: &serde_json::Value) -> Vec<(String, u64)> {
    status["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["action"].as_str().unwrap().to_owned(),
                d["stage"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Polls `status` every `every` until `done` holds for what it returns, and returns that; fails
/// after `within`, saying it is not `what` yet and the last status.
pub async fn wait_for<F, Fut>(
    what: &str,
    mut status: F,
    within: Duration,
    every: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value
where
    F: FnMut() -> Fut,
    Fut: Future<Output = serde_json::Value>,
{
    let started = Instant::now();
    loop {
        let s = status().await;
        if done(&s) {
            return s;
        }
        assert!(
            started.elapsed() < within,
            "not {what} after {within:?}: {s:#}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Polls `status` every 50 ms until the rollout has advanced past its first stage.
pub async fn wait_past_first_stage<F, Fut>(status: F, within: Duration) -> serde_json::Value
where
    F: FnMut() -> Fut,
    Fut: Future<Output = serde_json::Value>,
{
    let every = Duration::from_millis(50);
    wait_for("past stage 0", status, within, every, |s| {
        s["stage"].as_u64().unwrap() >= 1
    })
    .await
}
