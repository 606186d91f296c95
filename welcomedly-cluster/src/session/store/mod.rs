//! Where sessions live: [`MemoryStore`] (one process, the embedded default) and
//! [`RedisSessionStore`] (every instance), behind one [`SessionStore`] handle.
//!
//! Both keep a session's values as separate fields, so concurrent requests of one user that
//! change different keys both persist, and both keep a per-user index of sessions (bounded,
//! cleaned of expired entries on every write) for "log out everywhere".

mod cache;
mod memory;
mod redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

pub use self::cache::SessionCacheStats;
pub use self::memory::MemoryStore;
pub use self::redis::{LOAD_SCRIPT, RedisSessionConfig, RedisSessionStore};
use super::error::SessionError;
use super::id::SessionId;

/// What a store holds for one session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Record {
    /// Key → the value's JSON text.
    pub(crate) data: HashMap<String, String>,
    /// The logged-in user.
    pub(crate) user: Option<Arc<str>>,
    /// Absolute expiry, in milliseconds since the Unix epoch.
    pub(crate) deadline_ms: u64,
}

/// A new record's place: the session it replaces (id cycling) and the per-user bound.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Create<'a> {
    pub(crate) id: SessionId,
    pub(crate) record: &'a Record,
    /// The session this one replaces (its id cycled), and that session's user.
    pub(crate) replaces: Option<(SessionId, Option<&'a str>)>,
    pub(crate) idle: Duration,
    pub(crate) max_per_user: usize,
}

/// A session this process ended, told to the [`SessionWatch`](crate::session::SessionWatch)es
/// of this store so their streams end at once rather than at their next check.
#[derive(Debug, Clone)]
pub(crate) enum Ended {
    /// One session (logged out, or its id cycled).
    Session(SessionId),
    /// Every session of a user (log out everywhere).
    User(Arc<str>),
}

/// How many local "session ended" notices a slow watcher may lag behind before it re-checks
/// the store instead.
const ENDED_CAPACITY: usize = 64;

/// The store the session layer uses: a cheap handle (clone it freely).
#[derive(Debug, Clone)]
pub struct SessionStore {
    kind: Kind,
    ended: broadcast::Sender<Ended>,
}

#[derive(Debug, Clone)]
enum Kind {
    Memory(MemoryStore),
    Redis(RedisSessionStore),
}

impl SessionStore {
    /// A fresh memory store with default bounds (see [`MemoryStore::new`]).
    pub fn memory() -> Self {
        MemoryStore::new().into()
    }

    /// The current time on this store's clock, in milliseconds since the Unix epoch.
    pub(crate) fn now_ms(&self) -> u64 {
        match &self.kind {
            Kind::Memory(m) => m.now_ms(),
            Kind::Redis(_) => system_now_ms(),
        }
    }

    /// Loads the session and slides its idle expiry, in one step. `None`: unknown or expired.
    pub(crate) async fn load(
        &self,
        id: SessionId,
        idle: Duration,
    ) -> Result<Option<Record>, SessionError> {
        match &self.kind {
            Kind::Memory(m) => m.load(id, idle),
            Kind::Redis(r) => r.load(id, idle).await,
        }
    }

    /// Whether the session is live (known, before its idle and absolute expiry), without
    /// sliding its idle expiry.
    pub(crate) async fn is_live(&self, id: SessionId) -> Result<bool, SessionError> {
        match &self.kind {
            Kind::Memory(m) => Ok(m.is_live(id)),
            Kind::Redis(r) => r.is_live(id).await,
        }
    }

    /// Local notices of sessions this process ended.
    pub(crate) fn ended(&self) -> broadcast::Receiver<Ended> {
        self.ended.subscribe()
    }

    fn tell(&self, ended: Ended) {
        // Nobody watching is fine.
        let _ = self.ended.send(ended);
    }

    /// Writes the changed fields of a live session. `false`: it ended meanwhile (logged out
    /// elsewhere, expired), and nothing was written.
    pub(crate) async fn update(
        &self,
        id: SessionId,
        set: &[(&str, &str)],
        remove: &[&str],
        idle: Duration,
    ) -> Result<bool, SessionError> {
        match &self.kind {
            Kind::Memory(m) => m.update(id, set, remove, idle),
            Kind::Redis(r) => r.update(id, set, remove, idle).await,
        }
    }

    /// Writes a whole new session (ending the one it replaces) and indexes it by user.
    pub(crate) async fn create(&self, create: Create<'_>) -> Result<(), SessionError> {
        let replaced = create.replaces.map(|(old, _)| old);
        match &self.kind {
            Kind::Memory(m) => m.create(create),
            Kind::Redis(r) => r.create(create).await,
        }?;
        if let Some(old) = replaced {
            self.tell(Ended::Session(old));
        }
        Ok(())
    }

    /// Ends one session.
    pub(crate) async fn delete(
        &self,
        id: SessionId,
        user: Option<&str>,
    ) -> Result<(), SessionError> {
        match &self.kind {
            Kind::Memory(m) => m.delete(id, user),
            Kind::Redis(r) => r.delete(id, user).await,
        }?;
        self.tell(Ended::Session(id));
        Ok(())
    }

    /// Ends every session of `user`; returns how many were indexed.
    pub(crate) async fn delete_user(&self, user: &str) -> Result<u64, SessionError> {
        let n = match &self.kind {
            Kind::Memory(m) => m.delete_user(user),
            Kind::Redis(r) => r.delete_user(user).await,
        }?;
        self.tell(Ended::User(Arc::from(user)));
        Ok(n)
    }
}

impl From<MemoryStore> for SessionStore {
    fn from(m: MemoryStore) -> Self {
        Self {
            kind: Kind::Memory(m),
            ended: broadcast::channel(ENDED_CAPACITY).0,
        }
    }
}

impl From<RedisSessionStore> for SessionStore {
    fn from(r: RedisSessionStore) -> Self {
        Self {
            kind: Kind::Redis(r),
            ended: broadcast::channel(ENDED_CAPACITY).0,
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch (instances share absolute deadlines, so this is
/// the clock they agree on).
pub(crate) fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
