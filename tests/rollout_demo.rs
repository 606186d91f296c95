//! The call center's guarded rollout as a user drives it: two instances on one Redis, the
//! contract's routes (`POST /admin/rollouts/new-checkout`, `GET /api/checkout`), a healthy
//! change completing and a faulty one (`WELCOMEDLY_DEMO_FAULT=errors=0.2`) rolled back on
//! every instance.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::{Duration, Instant};

use support::call_center::*;
use support::rollouts::{FLAG_PATH, admin, instances, start_rollout};
use welcomedly_testkit::RedisServer;

const PLAN: &str = r#"{"stages": [
    {"percent": 20, "minDurationSecs": 1, "minSamples": 60},
    {"percent": 60, "minDurationSecs": 1, "minSamples": 60},
    {"percent": 100}]}"#;

/// Anonymous checkouts on every instance until the rollout's state is `want`: the
/// responses' paths, and the last status.
fn drive_until(apps: &[Instance], want: &str, within: Duration) -> serde_json::Value {
    let started = Instant::now();
    let mut last_poll = Instant::now();
    loop {
        for app in apps {
            for _ in 0..20 {
                let r = app.request("GET", "/api/checkout", None);
                assert!(r.status == 200 || r.status == 500, "{}", r.body);
            }
        }
        if last_poll.elapsed() > Duration::from_millis(700) {
            last_poll = Instant::now();
            let s = admin(&apps[0], "GET", FLAG_PATH, "");
            assert_eq!(s.status, 200, "{}", s.body);
            let status: serde_json::Value = serde_json::from_str(&s.body).unwrap();
            if status["state"] == want {
                return status;
            }
            assert!(
                started.elapsed() < within,
                "not {want} after {within:?}: {status:#}"
            );
        }
    }
}

fn paths(app: &Instance, n: usize) -> (usize, usize) {
    let mut new = 0;
    for _ in 0..n {
        let r = app.request("GET", "/api/checkout", None);
        if r.body.contains(r#""path":"new""#) || r.status == 500 {
            new += 1;
        }
    }
    (new, n - new)
}

#[test]
fn a_healthy_checkout_completes_and_a_failing_one_is_rolled_back() {
    // Healthy: every stage, then the new path for everyone.
    let redis = RedisServer::start().unwrap();
    let apps = instances(&redis, "");
    let bad = admin(
        &apps[0],
        "POST",
        FLAG_PATH,
        r#"{"stages": [{"percent": 0}]}"#,
    );
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(bad.body.contains("stages[0].percent"), "{}", bad.body);
    start_rollout(&apps[1], PLAN);
    let s = drive_until(&apps, "completed", Duration::from_secs(60));
    let actions: Vec<&str> = s["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["start", "advance", "complete"], "{s:#}");
    std::thread::sleep(Duration::from_millis(500));
    for app in &apps {
        assert_eq!(paths(app, 40), (40, 0));
    }
    let metrics = apps[0].request("GET", "/metrics", None).body;
    assert!(
        metrics.contains("welcomedly_rollout_rollbacks_total"),
        "{metrics}"
    );
    for app in apps {
        assert!(app.terminate().success());
    }
    drop(redis);

    // Failing: 20 % of the new path's requests fail; rolled back, the old path everywhere.
    let redis = RedisServer::start().unwrap();
    let apps = instances(&redis, "errors=0.2");
    let slow = r#"{"stages": [{"percent": 50, "minDurationSecs": 600}, {"percent": 100}]}"#;
    start_rollout(&apps[0], slow);
    let s = drive_until(&apps, "rolled_back", Duration::from_secs(60));
    let last = s["decisions"].as_array().unwrap().last().unwrap();
    assert_eq!(last["action"], "rollback", "{s:#}");
    assert_eq!(last["evidence"][0]["evidence"]["verdict"], "regression");
    std::thread::sleep(Duration::from_millis(500));
    for app in &apps {
        assert_eq!(paths(app, 40), (0, 40), "no instance serves the new path");
    }
    let again = admin(&apps[1], "POST", &format!("{FLAG_PATH}/resume"), "");
    assert_eq!(again.status, 409, "{}", again.body);
    for app in apps {
        assert!(app.terminate().success());
    }
}
