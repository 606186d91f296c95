//! [`MemoryStore`]: sessions in this process, for a single instance and for tests.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::{Create, Record, millis, system_now_ms};
use crate::session::error::SessionError;
use crate::session::id::SessionId;

type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Sessions in process memory: the embedded default (one instance; sessions end with the
/// process). Bounded: at most [`max_sessions`](Self::max_sessions) live sessions (expired ones
/// are swept as it fills), then new sessions are refused with a 503 rather than growing
/// without bound.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Mem>>,
    clock: Clock,
    max_sessions: usize,
}

#[derive(Default)]
struct Mem {
    sessions: HashMap<SessionId, Entry>,
    /// User → (absolute deadline, session), oldest first.
    users: HashMap<Arc<str>, Vec<(u64, SessionId)>>,
}

struct Entry {
    record: Record,
    idle_until: u64,
}

impl Entry {
    fn is_live(&self, now: u64) -> bool {
        now < self.idle_until && now < self.record.deadline_ms
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("sessions", &self.len())
            .field("max_sessions", &self.max_sessions)
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store holding at most 100 000 sessions, on the system clock.
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            clock: Arc::new(system_now_ms),
            max_sessions: 100_000,
        }
    }

    /// Sets the bound on live sessions.
    #[must_use]
    pub fn max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = n.max(1);
        self
    }

    /// Replaces the clock (milliseconds since the Unix epoch), so tests can move time.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Sessions held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether the store holds no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    fn lock(&self) -> MutexGuard<'_, Mem> {
        // A panic elsewhere while holding the lock leaves consistent maps (every change is
        // a single insert or remove): keep serving.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn load(
        &self,
        id: SessionId,
        idle: Duration,
    ) -> Result<Option<Record>, SessionError> {
        let now = self.now_ms();
        let mut mem = self.lock();
        let live = match mem.sessions.get_mut(&id) {
            None => return Ok(None),
            Some(e) if e.is_live(now) => {
                e.idle_until = now.saturating_add(millis(idle)).min(e.record.deadline_ms);
                return Ok(Some(e.record.clone()));
            }
            Some(_) => false,
        };
        if !live {
            mem.remove(id);
        }
        Ok(None)
    }

    /// Whether the session is live, without sliding its idle expiry.
    pub(crate) fn is_live(&self, id: SessionId) -> bool {
        let now = self.now_ms();
        self.lock()
            .sessions
            .get(&id)
            .is_some_and(|e| e.is_live(now))
    }

    pub(crate) fn update(
        &self,
        id: SessionId,
        set: &[(&str, &str)],
        remove: &[&str],
        idle: Duration,
    ) -> Result<bool, SessionError> {
        let now = self.now_ms();
        let mut mem = self.lock();
        let Some(e) = mem.sessions.get_mut(&id) else {
            return Ok(false);
        };
        if !e.is_live(now) {
            mem.remove(id);
            return Ok(false);
        }
        for (k, v) in set {
            e.record.data.insert((*k).to_owned(), (*v).to_owned());
        }
        for k in remove {
            e.record.data.remove(*k);
        }
        e.idle_until = now.saturating_add(millis(idle)).min(e.record.deadline_ms);
        Ok(true)
    }

    pub(crate) fn create(&self, c: Create<'_>) -> Result<(), SessionError> {
        let now = self.now_ms();
        let mut mem = self.lock();
        if let Some((old, _)) = c.replaces {
            mem.remove(old);
        }
        if mem.sessions.len() >= self.max_sessions {
            mem.sweep(now);
            if mem.sessions.len() >= self.max_sessions {
                return Err(SessionError::unavailable(
                    format!(
                        "the memory session store holds its maximum of {} sessions: raise MemoryStore::max_sessions or use the Redis store",
                        self.max_sessions
                    ),
                    Duration::from_secs(60),
                    None,
                ));
            }
        }
        let record = c.record.clone();
        if let Some(user) = &record.user {
            let list = mem.users.entry(user.clone()).or_default();
            list.retain(|(deadline, _)| *deadline > now);
            list.push((record.deadline_ms, c.id));
            let extra = list.len().saturating_sub(c.max_per_user.max(1));
            let evicted: Vec<SessionId> = list.drain(..extra).map(|(_, id)| id).collect();
            for id in evicted {
                mem.sessions.remove(&id);
            }
        }
        let idle_until = now.saturating_add(millis(c.idle)).min(record.deadline_ms);
        mem.sessions.insert(c.id, Entry { record, idle_until });
        Ok(())
    }

    pub(crate) fn delete(&self, id: SessionId, _user: Option<&str>) -> Result<(), SessionError> {
        self.lock().remove(id);
        Ok(())
    }

    pub(crate) fn delete_user(&self, user: &str) -> Result<u64, SessionError> {
        let mut mem = self.lock();
        let Some(list) = mem.users.remove(user) else {
            return Ok(0);
        };
        let n = list.len() as u64;
        for (_, id) in list {
            mem.sessions.remove(&id);
        }
        Ok(n)
    }
}

impl Mem {
    /// Removes a session and its index entry.
    fn remove(&mut self, id: SessionId) {
        let Some(e) = self.sessions.remove(&id) else {
            return;
        };
        if let Some(user) = e.record.user
            && let Some(list) = self.users.get_mut(&user)
        {
            list.retain(|(_, s)| *s != id);
            if list.is_empty() {
                self.users.remove(&user);
            }
        }
    }

    /// Drops every expired session and index entry.
    fn sweep(&mut self, now: u64) {
        self.sessions.retain(|_, e| e.is_live(now));
        let sessions = &self.sessions;
        self.users.retain(|_, list| {
            list.retain(|(_, id)| sessions.contains_key(id));
            !list.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    fn store() -> (MemoryStore, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(1_000_000));
        let clock = now.clone();
        (
            MemoryStore::new().with_clock(move || clock.load(Ordering::Relaxed)),
            now,
        )
    }

    fn record(user: Option<&str>, deadline_ms: u64) -> Record {
        Record {
            data: HashMap::from([("k".to_owned(), "1".to_owned())]),
            user: user.map(Arc::from),
            deadline_ms,
        }
    }

    fn create(s: &MemoryStore, id: SessionId, r: &Record, max: usize) {
        s.create(Create {
            id,
            record: r,
            replaces: None,
            idle: Duration::from_secs(10),
            max_per_user: max,
        })
        .unwrap();
    }

    #[test]
    fn idle_expiry_slides_and_absolute_expiry_does_not() {
        let (s, now) = store();
        let id = SessionId::generate().unwrap();
        let idle = Duration::from_secs(10);
        create(&s, id, &record(None, 1_000_000 + 25_000), 8);
        for _ in 0..2 {
            now.fetch_add(9_000, Ordering::Relaxed);
            assert!(s.load(id, idle).unwrap().is_some(), "each load slides");
        }
        now.fetch_add(9_000, Ordering::Relaxed); // 27 s: past the absolute deadline
        assert!(s.load(id, idle).unwrap().is_none());
        let id = SessionId::generate().unwrap();
        create(&s, id, &record(None, u64::MAX), 8);
        now.fetch_add(10_001, Ordering::Relaxed);
        assert!(s.load(id, idle).unwrap().is_none(), "idle too long");
        assert!(!s.update(id, &[("a", "1")], &[], idle).unwrap());
    }

    #[test]
    fn fields_change_separately() {
        let (s, _) = store();
        let id = SessionId::generate().unwrap();
        let idle = Duration::from_secs(10);
        create(&s, id, &record(None, u64::MAX), 8);
        assert!(s.update(id, &[("a", "1")], &[], idle).unwrap());
        assert!(s.update(id, &[("b", "2")], &["k"], idle).unwrap());
        let r = s.load(id, idle).unwrap().unwrap();
        assert_eq!(r.data.len(), 2);
        assert_eq!(r.data["a"], "1");
        assert_eq!(r.data["b"], "2");
    }

    #[test]
    fn the_user_index_is_bounded_and_logs_out_everywhere() {
        let (s, _) = store();
        let idle = Duration::from_secs(10);
        let ids: Vec<SessionId> = (0..5).map(|_| SessionId::generate().unwrap()).collect();
        for (i, id) in ids.iter().enumerate() {
            create(&s, *id, &record(Some("alice"), 2_000_000 + i as u64), 3);
        }
        // The two oldest were ended by the bound.
        assert!(s.load(ids[0], idle).unwrap().is_none());
        assert!(s.load(ids[1], idle).unwrap().is_none());
        assert!(s.load(ids[4], idle).unwrap().is_some());
        let bob = SessionId::generate().unwrap();
        create(&s, bob, &record(Some("bob"), u64::MAX), 3);
        assert_eq!(s.delete_user("alice").unwrap(), 3);
        assert!(s.load(ids[4], idle).unwrap().is_none());
        assert!(s.load(bob, idle).unwrap().is_some());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_full_store_refuses_new_sessions_after_sweeping() {
        let (s, now) = store();
        let s = s.max_sessions(2);
        create(
            &s,
            SessionId::generate().unwrap(),
            &record(None, u64::MAX),
            8,
        );
        create(
            &s,
            SessionId::generate().unwrap(),
            &record(None, u64::MAX),
            8,
        );
        let r = record(None, u64::MAX);
        let e = s
            .create(Create {
                id: SessionId::generate().unwrap(),
                record: &r,
                replaces: None,
                idle: Duration::from_secs(10),
                max_per_user: 8,
            })
            .unwrap_err();
        assert!(e.is_unavailable());
        now.fetch_add(11_000, Ordering::Relaxed);
        create(&s, SessionId::generate().unwrap(), &r, 8);
        assert_eq!(s.len(), 1);
    }
}
