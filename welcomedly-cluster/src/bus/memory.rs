//! The in-process stand-in for Redis, for a single instance without Redis (the embedded
//! default): the same topics, tiers, offsets, catch-up and gap notices, within one process.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::offset::{Offset, StreamId};
use super::stream::Read;
use super::{Entry, lock};

/// A durable topic's retained history.
#[derive(Default)]
struct History {
    n: u64,
    last: StreamId,
    entries: VecDeque<Entry>,
}

pub(super) struct Memory {
    /// One epoch per process: a restart loses the history, which subscribers resuming from
    /// an offset of the previous process are told (`Gap::EpochChanged`).
    epoch: u64,
    retention: usize,
    topics: Mutex<HashMap<Arc<str>, History>>,
}

impl Memory {
    pub(super) fn new(retention: u64) -> Self {
        Self {
            epoch: fastrand::u64(1..),
            retention: usize::try_from(retention).unwrap_or(usize::MAX).max(1),
            topics: Mutex::new(HashMap::new()),
        }
    }

    /// Appends a durable event and returns it with its offset.
    pub(super) fn append(&self, topic: &Arc<str>, payload: Arc<str>) -> Entry {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut topics = lock(&self.topics);
        let history = topics.entry(topic.clone()).or_default();
        // Like Redis: the time in ms, a sequence within the same ms (or a clock that went back).
        let id = if now > history.last.ms {
            StreamId { ms: now, seq: 0 }
        } else {
            StreamId {
                ms: history.last.ms,
                seq: history.last.seq.saturating_add(1),
            }
        };
        history.n += 1;
        history.last = id;
        let entry = Entry {
            payload,
            offset: Some(Offset {
                id,
                epoch: self.epoch,
                n: history.n,
            }),
        };
        history.entries.push_back(entry.clone());
        while history.entries.len() > self.retention {
            history.entries.pop_front();
        }
        entry
    }

    pub(super) fn tip(&self, topic: &str) -> Option<Offset> {
        lock(&self.topics)
            .get(topic)
            .and_then(|h| h.entries.back())
            .and_then(|e| e.offset)
    }

    pub(super) fn range_after(&self, topic: &str, after: StreamId, count: usize) -> Vec<Read> {
        let topics = lock(&self.topics);
        let Some(history) = topics.get(topic) else {
            return Vec::new();
        };
        let start = history
            .entries
            .partition_point(|e| e.offset.is_some_and(|o| o.id <= after));
        history
            .entries
            .iter()
            .skip(start)
            .take(count)
            .filter_map(|e| {
                e.offset.map(|o| Read {
                    id: o.id,
                    entry: Some(e.clone()),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_ordered_numbered_and_bounded() {
        let m = Memory::new(3);
        let topic: Arc<str> = Arc::from("t");
        let offsets: Vec<Offset> = (0..5)
            .map(|i| m.append(&topic, Arc::from(i.to_string())).offset.unwrap())
            .collect();
        assert!(offsets.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(m.tip("t"), offsets.last().copied());
        let all = m.range_after("t", StreamId::ZERO, 10);
        assert_eq!(all.len(), 3, "retention 3");
        assert_eq!(all[0].entry.as_ref().unwrap().offset.unwrap().n, 3);
        let rest = m.range_after("t", offsets[3].id, 10);
        assert_eq!(rest.len(), 1);
        assert!(m.range_after("other", StreamId::ZERO, 10).is_empty());
    }
}
