//! [`Member`]: one live instance as the cluster sees it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A live instance, as listed by [`Membership::members`](super::Membership::members).
///
/// Times are milliseconds since the Unix epoch. `last_heartbeat_ms` and `expires_at_ms` are on
/// Redis's clock (every instance reads the same one); `started_at_ms` is the instance's own
/// wall clock at start, informational only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Member {
    /// The instance id (welcomedly-core's `InstanceId`).
    pub id: String,
    /// When the instance built its membership, on its own clock.
    pub started_at_ms: u64,
    /// Its last heartbeat, on Redis's clock.
    pub last_heartbeat_ms: u64,
    /// When it is considered dead unless it heartbeats again, on Redis's clock.
    pub expires_at_ms: u64,
    /// What the instance told about itself (its address, version, …); see
    /// [`MembershipConfig::metadata`](super::MembershipConfig::metadata).
    pub metadata: BTreeMap<String, String>,
}

impl Member {
    /// [`started_at_ms`](Self::started_at_ms) as a `SystemTime`.
    pub fn started_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.started_at_ms)
    }

    /// [`last_heartbeat_ms`](Self::last_heartbeat_ms) as a `SystemTime`.
    pub fn last_heartbeat(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.last_heartbeat_ms)
    }
}

/// What an instance stores about itself in the descriptions hash (JSON), beside its score.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Description {
    pub(crate) started_at_ms: u64,
    pub(crate) timeout_ms: u64,
    #[serde(default)]
    pub(crate) metadata: BTreeMap<String, String>,
}

/// Parses the [`LIST`](super::script::LIST) reply. Entries whose score or description cannot be
/// read are still listed (an instance is live by its score), with what could be read.
pub(crate) fn parse_list(reply: &[String]) -> Option<(u64, Vec<Member>)> {
    let (now, rest) = reply.split_first()?;
    let now = now.parse::<u64>().ok()?;
    let members = rest
        .chunks_exact(3)
        .filter_map(|c| match c {
            [id, score, description] => {
                let expires_at_ms = parse_score(score)?;
                let d = serde_json::from_str::<Description>(description).ok();
                let timeout = d.as_ref().map_or(0, |d| d.timeout_ms);
                Some(Member {
                    id: id.clone(),
                    started_at_ms: d.as_ref().map_or(0, |d| d.started_at_ms),
                    last_heartbeat_ms: expires_at_ms.saturating_sub(timeout),
                    expires_at_ms,
                    metadata: d.map(|d| d.metadata).unwrap_or_default(),
                })
            }
            _ => None,
        })
        .collect();
    Some((now, members))
}

/// A sorted-set score as Redis prints it (`"1733000000123"`, or `"1.733e+12"` for large ones).
fn parse_score(score: &str) -> Option<u64> {
    score.parse::<u64>().ok().or_else(|| {
        let f = score.parse::<f64>().ok()?;
        (f.is_finite() && f >= 0.0).then_some(f as u64)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn a_list_reply_is_parsed() {
        let d = r#"{"started_at_ms":5,"timeout_ms":3000,"metadata":{"addr":"10.0.0.1:3000"}}"#;
        let reply: Vec<String> = ["1000", "a", "4000", d, "b", "4500", "garbage"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let (now, members) = parse_list(&reply).unwrap();
        assert_eq!(now, 1000);
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].id, "a");
        assert_eq!(members[0].last_heartbeat_ms, 1000);
        assert_eq!(members[0].metadata["addr"], "10.0.0.1:3000");
        // An unreadable description still lists the member: it is live by its score.
        assert_eq!(members[1].id, "b");
        assert_eq!(members[1].expires_at_ms, 4500);
        assert!(parse_list(&[]).is_none());
        assert_eq!(parse_score("1.5e+3"), Some(1500));
    }
}
