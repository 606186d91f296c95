//! [`SessionWatch`]: follows one session from a long-lived connection (an event stream, a
//! WebSocket) so the connection can end when the session does.
//!
//! A request's [`Session`](super::Session) is checked once, when the request arrives; a stream
//! opened by that request may stay open for hours. [`Session::watch`](super::Session::watch)
//! hands out a watch whose [`ended`](SessionWatch::ended) resolves when the session ends,
//! whatever ended it:
//!
//! - a logout, a "log out everywhere" or an id cycle **in this process**: at once (the store
//!   tells its watches);
//! - the same **on another instance**, an idle or absolute expiry, a per-user eviction: at the
//!   next check, one store read every `every` (pass the stream's heartbeat).
//!
//! A check does **not** slide the idle expiry: an open stream is not user activity. A board
//! left open on an unattended screen still logs out after the idle timeout, which is what the
//! idle timeout is for; the stream then ends and the page asks for a login.
//!
//! ```
//! use std::time::Duration;
//! use welcomedly_cluster::session::Session;
//!
//! # async fn stream(session: Session) -> Result<(), welcomedly_cluster::session::SessionError> {
//! if let Some(mut watch) = session.watch().await? {
//!     tokio::select! {
//!         () = watch.ended(Duration::from_secs(15)) => { /* close the stream */ }
//!         // () = next_event() => { … }
//!     }
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};

use super::error::SessionError;
use super::id::SessionId;
use super::store::{Ended, SessionStore};

/// Follows one stored session until it ends, from a long-lived connection opened by one of its
/// requests (an event stream, a WebSocket). From [`Session::watch`](super::Session::watch).
///
/// [`ended`](Self::ended) resolves when the session ends, whatever ended it: a logout, a "log
/// out everywhere" or an id cycle in this process at once (the store tells its watches); the
/// same on another instance, an idle or absolute expiry, or a per-user eviction at the next
/// check (one store read per check: pass the stream's heartbeat). A check does not slide the
/// idle expiry: an open stream is not user activity, so a page left open on an unattended
/// screen still logs out after the idle timeout. Holds no lock and no connection.
pub struct SessionWatch {
    store: SessionStore,
    id: SessionId,
    user: Option<Arc<str>>,
    local: broadcast::Receiver<Ended>,
}

impl fmt::Debug for SessionWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the id: a live id is a credential.
        f.debug_struct("SessionWatch")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl SessionWatch {
    pub(crate) fn new(store: SessionStore, id: SessionId, user: Option<Arc<str>>) -> Self {
        let local = store.ended();
        Self {
            store,
            id,
            user,
            local,
        }
    }

    /// The logged-in user of the watched session, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Whether the session is still live in the store (one store read), without sliding its
    /// idle expiry.
    ///
    /// # Errors
    ///
    /// The store is unavailable or slower than its budget.
    pub async fn is_live(&self) -> Result<bool, SessionError> {
        self.store.is_live(self.id).await
    }

    /// Resolves when the session has ended: at once for an end in this process, else at the
    /// first check (every `every`, at least 10 ms) that finds it gone. A check that fails (the
    /// store is down) keeps the session: an outage is not a logout, and a stream must not be
    /// cut by a Redis blip. Cancel-safe.
    pub async fn ended(&mut self, every: Duration) {
        let every = every.max(Duration::from_millis(10));
        let mut failures = 0u32;
        // A deadline, not a sleep per turn: notices about other sessions must not push the
        // check back.
        let mut next = tokio::time::Instant::now() + every;
        loop {
            let check_now = tokio::select! {
                () = tokio::time::sleep_until(next) => true,
                notice = self.local.recv() => match notice {
                    Ok(Ended::Session(id)) if id == self.id => return,
                    Ok(Ended::User(user)) if self.user.as_deref() == Some(&*user) => return,
                    Ok(_) => false,
                    // Missed some notices: ours may be among them.
                    Err(RecvError::Lagged(_)) => true,
                    // The store lives as long as this watch: cannot happen; keep checking.
                    Err(RecvError::Closed) => {
                        tokio::time::sleep_until(next).await;
                        true
                    }
                },
            };
            if !check_now {
                continue;
            }
            next = tokio::time::Instant::now() + every;
            match self.is_live().await {
                Ok(true) => failures = 0,
                Ok(false) => return,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        tracing::debug!(error = %e, "cannot check that a streamed session is still live: keeping the stream, checking again at the next heartbeat");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
impl super::SessionLayer {
    /// A request's session handle without a request (no cookie presented), for tests of the
    /// crate's other modules.
    pub(crate) fn session_for_tests(&self) -> super::Session {
        super::Session::new(self.shared.clone(), None, super::handle::CookieChange::Keep)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::session::MemoryStore;
    use crate::session::store::{Create, Record};

    const IDLE: Duration = Duration::from_secs(60);
    const HEARTBEAT: Duration = Duration::from_secs(15);

    /// A memory store on a clock the test moves, and a logged-in session of `user` in it.
    async fn session(user: &str) -> (MemoryStore, Arc<AtomicU64>, SessionStore, SessionId) {
        let now = Arc::new(AtomicU64::new(1_000_000));
        let clock = now.clone();
        let memory = MemoryStore::new().with_clock(move || clock.load(Ordering::Relaxed));
        let store = SessionStore::from(memory.clone());
        let id = SessionId::generate().unwrap();
        let record = Record {
            user: Some(Arc::from(user)),
            deadline_ms: 1_000_000 + 3_600_000,
            ..Record::default()
        };
        store
            .create(Create {
                id,
                record: &record,
                replaces: None,
                idle: IDLE,
                max_per_user: 8,
            })
            .await
            .unwrap();
        (memory, now, store, id)
    }

    /// Whether `watch.ended(HEARTBEAT)` resolves within `within` of virtual time.
    async fn ends_within(watch: &mut SessionWatch, within: Duration) -> bool {
        tokio::time::timeout(within, watch.ended(HEARTBEAT))
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_logout_in_this_process_ends_the_watch_at_once() {
        let (_, _, store, id) = session("ana").await;
        let mut watch = SessionWatch::new(store.clone(), id, Some(Arc::from("ana")));
        let mut other = SessionWatch::new(store.clone(), id, Some(Arc::from("ana")));
        assert!(!ends_within(&mut watch, HEARTBEAT * 3).await, "live");
        store.delete(id, Some("ana")).await.unwrap();
        assert!(ends_within(&mut watch, Duration::from_millis(1)).await);
        assert!(ends_within(&mut other, Duration::from_millis(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_logout_everywhere_on_another_instance_ends_it_within_a_heartbeat() {
        let (memory, _, store, id) = session("ana").await;
        let mut watch = SessionWatch::new(store, id, Some(Arc::from("ana")));
        // Another instance: the same sessions, but its notices do not reach this process.
        let elsewhere = SessionStore::from(memory);
        elsewhere.delete_user("ana").await.unwrap();
        assert!(!ends_within(&mut watch, Duration::from_millis(1)).await);
        assert!(ends_within(&mut watch, HEARTBEAT).await);
        // Someone else's logout here is not ours.
        let (_, _, store, id) = session("bob").await;
        let mut watch = SessionWatch::new(store.clone(), id, Some(Arc::from("bob")));
        store.delete_user("ana").await.unwrap();
        assert!(!ends_within(&mut watch, HEARTBEAT * 2).await);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_expiry_ends_it_and_checks_do_not_slide_the_idle_expiry() {
        let (memory, now, store, id) = session("ana").await;
        let mut watch = SessionWatch::new(store, id, Some(Arc::from("ana")));
        // Four heartbeats' worth of checks while the clock moves past the idle timeout: the
        // checks themselves must not keep the session alive.
        for _ in 0..4 {
            assert!(!ends_within(&mut watch, HEARTBEAT + Duration::from_millis(1)).await);
            now.fetch_add(HEARTBEAT.as_millis() as u64, Ordering::Relaxed);
        }
        now.fetch_add(1, Ordering::Relaxed);
        assert!(!memory.is_live(id), "idle for more than 60 s");
        assert!(ends_within(&mut watch, HEARTBEAT).await);
    }
}
