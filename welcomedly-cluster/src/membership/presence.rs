//! Presence: who is connected to this instance (refcounted), the diffs it broadcasts, and the
//! cluster-wide view.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};

use crate::Error;

/// Whether a presence appeared or went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PresenceChange {
    /// The key is now present on the instance.
    Joined,
    /// The key is no longer present on the instance.
    Left,
}

/// Why a presence changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PresenceCause {
    /// The key's first connection on the instance ([`Membership::join`](super::Membership::join)).
    Connected,
    /// The key's last connection on the instance ended (its last [`PresenceGuard`] dropped).
    Disconnected,
    /// The instance left the cluster ([`Membership::leave`](super::Membership::leave)).
    InstanceLeft,
    /// The instance stopped heartbeating and was reaped by another instance, which announces
    /// this diff on the dead instance's behalf.
    InstanceDied,
    /// The instance was away (Redis restarted, or it missed the timeout) and is listed again
    /// with its presences.
    InstanceRejoined,
}

/// One presence change, broadcast locally by
/// [`Membership::presence_diffs`](super::Membership::presence_diffs) and meant to be forwarded
/// to the event bus.
///
/// Serde: `{"change":"joined","instance":"web-1-…","key":"agent:42","cause":"connected"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PresenceDiff {
    /// Joined or left.
    pub change: PresenceChange,
    /// The instance the presence is (or was) on.
    pub instance: String,
    /// The presence key (app-chosen, such as `agent:42`).
    pub key: String,
    /// Why.
    pub cause: PresenceCause,
}

/// Every presence of the live members, keyed by presence key, with the instances each is
/// connected to. Built from the live member list, so a dead instance's presences are never in
/// it. From [`Membership::cluster_presence`](super::Membership::cluster_presence).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPresence {
    by_key: BTreeMap<String, BTreeSet<String>>,
}

impl ClusterPresence {
    pub(crate) fn insert(&mut self, key: String, instance: &str) {
        self.by_key
            .entry(key)
            .or_default()
            .insert(instance.to_owned());
    }

    /// Whether `key` is connected to any live instance.
    pub fn contains(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    /// The live instances `key` is connected to (empty when it is nowhere).
    pub fn instances_of(&self, key: &str) -> impl Iterator<Item = &str> {
        self.by_key
            .get(key)
            .into_iter()
            .flat_map(|s| s.iter().map(String::as_str))
    }

    /// Every present key, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.by_key.keys().map(String::as_str)
    }

    /// How many distinct keys are present.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether nobody is present.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// One connection's presence: the key stays present on this instance while at least one guard
/// for it lives. Dropping the last one removes it (a [`PresenceCause::Disconnected`] diff).
/// Hold it for the lifetime of the connection (an SSE stream, a WebSocket).
#[must_use = "the presence ends when the guard is dropped"]
pub struct PresenceGuard {
    shared: Weak<PresenceShared>,
    key: String,
}

impl PresenceGuard {
    /// The presence key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Debug for PresenceGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceGuard")
            .field("key", &self.key)
            .finish()
    }
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.release(&self.key);
        }
    }
}

/// Presence within one process, without Redis: the same refcounted [`PresenceGuard`]s and
/// [`PresenceDiff`]s as [`Membership`](super::Membership)'s, for a single instance (the
/// embedded default). Its [`snapshot`](Self::snapshot) is what
/// [`Membership::cluster_presence`](super::Membership::cluster_presence) answers in a cluster.
///
/// ```
/// use welcomedly_cluster::membership::LocalPresence;
///
/// let presence = LocalPresence::new("web-1");
/// let mut diffs = presence.diffs();
/// let tab = presence.join("agent:42").unwrap();
/// assert!(presence.snapshot().contains("agent:42"));
/// drop(tab);
/// assert!(!presence.snapshot().contains("agent:42"));
/// assert_eq!(diffs.try_recv().unwrap().key, "agent:42");
/// ```
#[derive(Debug, Clone)]
pub struct LocalPresence {
    shared: Arc<PresenceShared>,
}

impl LocalPresence {
    /// An empty presence table for `instance`, with the defaults of
    /// [`MembershipConfig`](super::MembershipConfig) (keys up to 256 bytes, 100 000 keys, 1024
    /// buffered diffs).
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            shared: PresenceShared::new(instance.into(), 1024, 256, 100_000),
        }
    }

    /// Marks `key` present while the guard lives (refcounted, like
    /// [`Membership::join`](super::Membership::join)).
    ///
    /// # Errors
    ///
    /// The key is empty or too long, or the table is full.
    pub fn join(&self, key: impl Into<String>) -> Result<PresenceGuard, Error> {
        self.shared.join(key.into())
    }

    /// A receiver of this table's joins and leaves.
    pub fn diffs(&self) -> broadcast::Receiver<PresenceDiff> {
        self.shared.subscribe()
    }

    /// Every present key, on this instance.
    pub fn snapshot(&self) -> ClusterPresence {
        let mut out = ClusterPresence::default();
        for (key, _) in self.shared.local() {
            out.insert(key, &self.shared.instance);
        }
        out
    }

    /// The present keys with their connection counts, sorted.
    pub fn local(&self) -> Vec<(String, u32)> {
        self.shared.local()
    }
}

/// The local presence table and what the heartbeat task must write.
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// Key → open connections on this instance.
    pub(crate) counts: HashMap<String, u32>,
    /// Keys whose presence changed since the last write to Redis.
    pub(crate) pending: HashSet<String>,
    /// Rewrite the whole presence hash at the next write (after a failed write or a rejoin).
    pub(crate) resync: bool,
    /// The instance left: no more joins, no more diffs.
    pub(crate) left: bool,
}

/// State shared by the membership and its guards.
#[derive(Debug)]
pub(crate) struct PresenceShared {
    pub(crate) instance: String,
    table: Mutex<Table>,
    diffs: broadcast::Sender<PresenceDiff>,
    /// Wakes the heartbeat task to write pending changes.
    pub(crate) wake: Notify,
    max_key_len: usize,
    max_keys: usize,
}

impl PresenceShared {
    pub(crate) fn new(
        instance: String,
        capacity: usize,
        max_key_len: usize,
        max_keys: usize,
    ) -> Arc<Self> {
        let (diffs, _) = broadcast::channel(capacity.max(1));
        Arc::new(Self {
            instance,
            table: Mutex::new(Table::default()),
            diffs,
            wake: Notify::new(),
            max_key_len,
            max_keys,
        })
    }

    pub(crate) fn table(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent between statements; a panic elsewhere must not stop
        // presence bookkeeping.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<PresenceDiff> {
        self.diffs.subscribe()
    }

    pub(crate) fn emit(
        &self,
        change: PresenceChange,
        instance: &str,
        key: String,
        cause: PresenceCause,
    ) {
        // No receiver is not an error: nobody listens yet.
        let _ = self.diffs.send(PresenceDiff {
            change,
            instance: instance.to_owned(),
            key,
            cause,
        });
    }

    pub(crate) fn join(self: &Arc<Self>, key: String) -> Result<PresenceGuard, Error> {
        if key.is_empty() || key.len() > self.max_key_len {
            return Err(Error::invalid(format!(
                "a presence key must be 1 to {} bytes long (got {} bytes): use a short id such as \"agent:42\", not client text",
                self.max_key_len,
                key.len()
            )));
        }
        let first = {
            let mut table = self.table();
            if table.left {
                return Err(Error::invalid(
                    "this instance has left the cluster (Membership::leave was called): presences can no longer be added",
                ));
            }
            let at_limit = table.counts.len() >= self.max_keys;
            match table.counts.get_mut(&key) {
                Some(n) => {
                    *n = n.saturating_add(1);
                    false
                }
                None if at_limit => {
                    return Err(Error::invalid(format!(
                        "this instance already holds {} presence keys, the configured maximum (MembershipConfig::max_presences): raise it or check for leaked guards",
                        self.max_keys
                    )));
                }
                None => {
                    table.counts.insert(key.clone(), 1);
                    table.pending.insert(key.clone());
                    true
                }
            }
        };
        if first {
            self.emit(
                PresenceChange::Joined,
                &self.instance,
                key.clone(),
                PresenceCause::Connected,
            );
            self.wake.notify_one();
        }
        Ok(PresenceGuard {
            shared: Arc::downgrade(self),
            key,
        })
    }

    fn release(&self, key: &str) {
        let last = {
            let mut table = self.table();
            if table.left {
                return;
            }
            match table.counts.get_mut(key) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    table.counts.remove(key);
                    table.pending.insert(key.to_owned());
                    true
                }
                None => false,
            }
        };
        if last {
            self.emit(
                PresenceChange::Left,
                &self.instance,
                key.to_owned(),
                PresenceCause::Disconnected,
            );
            self.wake.notify_one();
        }
    }

    /// Marks the instance as left and announces that each of its presences left with it.
    pub(crate) fn leave(&self) {
        let keys: Vec<String> = {
            let mut table = self.table();
            if table.left {
                return;
            }
            table.left = true;
            table.pending.clear();
            table.counts.drain().map(|(k, _)| k).collect()
        };
        for key in keys {
            self.emit(
                PresenceChange::Left,
                &self.instance,
                key,
                PresenceCause::InstanceLeft,
            );
        }
    }

    /// This instance's presence keys and their connection counts.
    pub(crate) fn local(&self) -> Vec<(String, u32)> {
        let table = self.table();
        let mut v: Vec<(String, u32)> = table.counts.iter().map(|(k, n)| (k.clone(), *n)).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn connections_are_refcounted_and_diffs_follow_transitions() {
        let shared = PresenceShared::new("i1".to_owned(), 16, 16, 2);
        let mut rx = shared.subscribe();
        let a = shared.join("agent:1".to_owned()).unwrap();
        let b = shared.join("agent:1".to_owned()).unwrap();
        assert_eq!(shared.local(), vec![("agent:1".to_owned(), 2)]);
        let d = rx.try_recv().unwrap();
        assert_eq!(
            (d.change, d.cause),
            (PresenceChange::Joined, PresenceCause::Connected)
        );
        assert!(rx.try_recv().is_err(), "a second connection is not a diff");
        drop(a);
        assert!(rx.try_recv().is_err());
        drop(b);
        let d = rx.try_recv().unwrap();
        assert_eq!(
            (d.change, d.cause),
            (PresenceChange::Left, PresenceCause::Disconnected)
        );
        assert!(shared.local().is_empty());
        assert!(shared.table().pending.contains("agent:1"));
    }

    #[test]
    fn keys_are_bounded() {
        let shared = PresenceShared::new("i1".to_owned(), 16, 8, 2);
        assert!(shared.join(String::new()).is_err());
        assert!(shared.join("x".repeat(9)).is_err());
        let _a = shared.join("a".to_owned()).unwrap();
        let _b = shared.join("b".to_owned()).unwrap();
        let e = shared.join("c".to_owned()).unwrap_err();
        assert!(e.to_string().contains("max_presences"), "{e}");
        // Another connection of a present key is still accepted at the limit.
        let _a2 = shared.join("a".to_owned()).unwrap();
    }

    #[test]
    fn leaving_announces_every_presence_and_refuses_new_ones() {
        let shared = PresenceShared::new("i1".to_owned(), 16, 16, 8);
        let g = shared.join("a".to_owned()).unwrap();
        let mut rx = shared.subscribe();
        shared.leave();
        let d = rx.try_recv().unwrap();
        assert_eq!(
            (d.change, d.cause),
            (PresenceChange::Left, PresenceCause::InstanceLeft)
        );
        drop(g);
        assert!(rx.try_recv().is_err(), "no second Left after leaving");
        assert!(shared.join("b".to_owned()).is_err());
    }

    #[test]
    fn a_diff_serializes_as_documented() {
        let d = PresenceDiff {
            change: PresenceChange::Joined,
            instance: "web-1".to_owned(),
            key: "agent:42".to_owned(),
            cause: PresenceCause::Connected,
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"change":"joined","instance":"web-1","key":"agent:42","cause":"connected"}"#
        );
    }
}
