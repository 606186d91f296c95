//! Health checks for welcomedly-core's registry: the writer affects readiness, each replica
//! reports degraded only.

use std::sync::Weak;

use sqlx::Database;
use welcomedly_core::health::{Affects, CheckOutcome, HealthRegistry, check_fn};

use crate::Router;
use crate::router::Inner;

impl<DB: Database> Router<DB> {
    /// Registers `db.primary` (affects readiness: unhealthy while no node takes writes) and one
    /// `db.replica.<i>` per replica (reported only: degraded while it is out of rotation, with
    /// why). The checks read the probes' state; they run no query. They hold the router weakly.
    pub fn register_health(&self, registry: &HealthRegistry) {
        let weak = std::sync::Arc::downgrade(&self.inner);
        registry.register(
            "db.primary",
            check_fn(move || {
                let outcome = primary_outcome(&weak);
                async move { outcome }
            }),
            Affects::Readiness,
        );
        for index in 1..self.inner.nodes.len() {
            let weak = std::sync::Arc::downgrade(&self.inner);
            registry.register(
                format!("db.replica.{}", index - 1),
                check_fn(move || {
                    let outcome = replica_outcome(&weak, index);
                    async move { outcome }
                }),
                Affects::Nothing,
            );
        }
    }
}

fn primary_outcome<DB: Database>(weak: &Weak<Inner<DB>>) -> CheckOutcome {
    let Some(inner) = weak.upgrade() else {
        return CheckOutcome::unhealthy("the database router was dropped");
    };
    let router = Router { inner };
    if router.has_writer() {
        return CheckOutcome::Healthy;
    }
    let first = router.inner.first();
    let why = first
        .ejection()
        .map(|e| e.describe())
        .unwrap_or_else(|| "in recovery".to_owned());
    CheckOutcome::unhealthy(format!(
        "no database node accepts writes (primary {}: {why}): bring the primary back or promote a replica",
        first.url
    ))
}

fn replica_outcome<DB: Database>(weak: &Weak<Inner<DB>>, index: usize) -> CheckOutcome {
    let Some(inner) = weak.upgrade() else {
        return CheckOutcome::degraded("the database router was dropped");
    };
    let Some(node) = inner.nodes.get(index) else {
        return CheckOutcome::degraded("no such replica");
    };
    match node.ejection() {
        None => CheckOutcome::Healthy,
        Some(e) => CheckOutcome::degraded(format!(
            "{} {} is out of rotation ({}): its reads go to other nodes",
            node.label,
            node.url,
            e.describe()
        )),
    }
}
