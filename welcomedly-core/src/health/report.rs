//! What `/health` and `/health/ready` answer: [`HealthReport`] and [`ReadinessReport`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::{Affects, CheckOutcome};

/// The overall verdict of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Status {
    /// Every check is healthy.
    Ok,
    /// Ready, but some check is degraded, or a check that does not affect readiness is unhealthy.
    Degraded,
    /// A check that affects readiness is unhealthy: the load balancer should send no traffic.
    Unavailable,
    /// The instance is shutting down: the load balancer should send no new traffic.
    Draining,
}

impl Status {
    /// `true` when the load balancer may send traffic (`Ok` or `Degraded`): HTTP 200.
    pub fn is_ready(self) -> bool {
        matches!(self, Self::Ok | Self::Degraded)
    }
}

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CheckStatus {
    /// See [`CheckOutcome::Healthy`].
    Healthy,
    /// See [`CheckOutcome::Degraded`].
    Degraded,
    /// See [`CheckOutcome::Unhealthy`]; also a check that timed out or panicked.
    Unhealthy,
}

/// One check's line in a [`HealthReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    status: CheckStatus,
    latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip)]
    affects: Affects,
    #[serde(skip)]
    latency: Duration,
}

impl CheckReport {
    pub(super) fn new(outcome: CheckOutcome, latency: Duration, affects: Affects) -> Self {
        let (status, error) = match outcome {
            CheckOutcome::Healthy => (CheckStatus::Healthy, None),
            CheckOutcome::Degraded(reason) => (CheckStatus::Degraded, Some(reason)),
            CheckOutcome::Unhealthy(reason) => (CheckStatus::Unhealthy, Some(reason)),
        };
        // Microsecond precision: a loopback Redis PING takes ~0.03 ms, which whole milliseconds
        // would report as 0.
        let latency_ms = (latency.as_secs_f64() * 1_000_000.0).round() / 1_000.0;
        Self {
            status,
            latency_ms,
            error,
            affects,
            latency,
        }
    }

    /// The check's verdict.
    pub fn status(&self) -> CheckStatus {
        self.status
    }

    /// How long the check took (the timeout when it timed out).
    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// Why the check is degraded or unhealthy.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Whether this check takes part in readiness.
    pub fn affects(&self) -> Affects {
        self.affects
    }

    fn fails_readiness(&self) -> bool {
        self.affects == Affects::Readiness && self.status == CheckStatus::Unhealthy
    }
}

/// The JSON body of `GET /health`:
/// `{status, instance_id, version, uptime_s, checks: {name: {status, latency_ms, error?}}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    status: Status,
    instance_id: String,
    version: String,
    uptime_s: u64,
    checks: BTreeMap<String, CheckReport>,
}

impl HealthReport {
    pub(super) fn new(
        draining: bool,
        instance_id: String,
        version: String,
        uptime: Duration,
        checks: BTreeMap<String, CheckReport>,
    ) -> Self {
        let status = if draining {
            Status::Draining
        } else if checks.values().any(CheckReport::fails_readiness) {
            Status::Unavailable
        } else if checks.values().any(|c| c.status != CheckStatus::Healthy) {
            Status::Degraded
        } else {
            Status::Ok
        };
        Self {
            status,
            instance_id,
            version,
            uptime_s: uptime.as_secs(),
            checks,
        }
    }

    /// The overall verdict.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Not draining and no readiness check unhealthy: `/health` answers 200.
    pub fn is_ready(&self) -> bool {
        self.status.is_ready()
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The service version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whole seconds since the registry was created.
    pub fn uptime_s(&self) -> u64 {
        self.uptime_s
    }

    /// Each check's result, by name.
    pub fn checks(&self) -> &BTreeMap<String, CheckReport> {
        &self.checks
    }

    /// One check's result.
    pub fn check(&self, name: &str) -> Option<&CheckReport> {
        self.checks.get(name)
    }

    /// The readiness view of this report (what `/health/ready` answers).
    pub fn readiness(&self) -> ReadinessReport {
        let failing = self
            .checks
            .iter()
            .filter(|(_, c)| c.fails_readiness())
            .map(|(name, c)| (name.clone(), c.error.clone().unwrap_or_default()))
            .collect();
        ReadinessReport {
            ready: self.is_ready(),
            status: self.status,
            instance_id: self.instance_id.clone(),
            failing,
        }
    }
}

/// The JSON body of `GET /health/ready`: `{ready, status, instance_id, failing: {name: error}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadinessReport {
    ready: bool,
    status: Status,
    instance_id: String,
    failing: BTreeMap<String, String>,
}

impl ReadinessReport {
    /// `true` when the load balancer may send traffic: 200, else 503.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The verdict; [`Status::Draining`] during shutdown.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The readiness checks that failed, with their errors.
    pub fn failing(&self) -> &BTreeMap<String, String> {
        &self.failing
    }
}
