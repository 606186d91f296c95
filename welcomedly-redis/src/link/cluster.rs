//! The Redis Cluster connection: redis-rs' `cluster-async` with explicit settings, so that no
//! retry sleeps for seconds and our per-call budget is what bounds a call.
//!
//! What redis-rs does (1.8.1, read from its source) and what we set:
//! - `MOVED` (refreshes the slot map, follows at once), `ASK` (follows at once), `READONLY`
//!   (refreshes the slot map): handled inside, counted against `retries`;
//! - `CLUSTERDOWN`, `TRYAGAIN`, `MASTERDOWN`, `LOADING`: waits and retries. Its default wait
//!   is at least 1.28 s per retry, 16 retries; ours: [`RETRIES`] retries waiting 10–100 ms
//!   (jittered), so a call past the ≈ 1 s `CLUSTERDOWN` of a failover fails within its budget
//!   instead of sleeping;
//! - a dead node: the request fails with a connection error, that node is reconnected and
//!   the slot map refreshed; other nodes' calls are untouched. The link does not rebuild the
//!   whole cluster connection for that (see [`Link`](super::Link)).
//! - response timeout: per attempt, [`LinkConfig::connect_timeout`] (default 1 s), and no
//!   overall timeout: the link's budget bounds every call. Not the budget itself: an attempt
//!   that times out is sent again by redis-rs, and a command that ran late (an `INCR`) would
//!   then run twice; at 1 s, every caller has given up and redis-rs drops a request nobody
//!   waits for instead of re-sending it.

use std::time::Duration;

use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{ConnectionInfo, RedisResult};

use crate::config::LinkConfig;

/// Retries of one command inside redis-rs (redirections included).
pub(crate) const RETRIES: u32 = 3;
/// The shortest and longest wait before a retry after `CLUSTERDOWN`/`TRYAGAIN` (ms).
const MIN_RETRY_WAIT_MS: u64 = 10;
const MAX_RETRY_WAIT_MS: u64 = 100;

/// Connects to the cluster through `nodes` (any reachable one gives the slot map).
pub(crate) async fn connect(
    nodes: &[ConnectionInfo],
    config: &LinkConfig,
) -> RedisResult<ClusterConnection> {
    builder(nodes, config).build()?.get_async_connection().await
}

/// The client settings (see the module docs).
fn builder(nodes: &[ConnectionInfo], config: &LinkConfig) -> ClusterClientBuilder {
    let mut builder = ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.connect_timeout.max(config.budget))
        .overall_response_timeout(None)
        .retries(RETRIES)
        .min_retry_wait(MIN_RETRY_WAIT_MS)
        .max_retry_wait(MAX_RETRY_WAIT_MS)
        // wait = factor × base^retry, clamped to [min, max], jittered: ≈ 20, 40, 80 ms.
        .retry_wait_formula(10, 2);
    // Credentials of the first node apply to every node it learns of.
    if let Some(first) = nodes.first() {
        let settings = first.redis_settings();
        if let Some(user) = settings.username() {
            builder = builder.username(user);
        }
        if let Some(password) = settings.password() {
            builder = builder.password(password);
        }
    }
    builder
}

/// How long failures on a cluster must go on, nothing succeeding in between, before the whole
/// cluster connection is rebuilt from the seed nodes: longer than a failover (2–4 s), so one
/// dead master is never a reason to rebuild.
pub(crate) const REBUILD_AFTER: Duration = Duration::from_secs(5);
