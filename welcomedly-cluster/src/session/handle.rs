//! [`Session`]: the per-request handle handlers use. Lazy: nothing is loaded until a method
//! that needs the data is awaited; changed values are written when the response is ready.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, MutexGuard};
use welcomedly_core::UserId;

use super::cookie::CookieCodec;
use super::error::SessionError;
use super::id::SessionId;
use super::store::{Create, Record, SessionStore, millis};
use super::watch::SessionWatch;

/// What the layer shares with every request's handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: SessionStore,
    pub(crate) codec: CookieCodec,
    pub(crate) idle: Duration,
    pub(crate) absolute: Duration,
    pub(crate) max_per_user: usize,
    pub(crate) eager: bool,
    pub(crate) counters: Counters,
}

/// The layer's counters (see [`SessionStats`]).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) malformed: AtomicU64,
    pub(crate) forged: AtomicU64,
    pub(crate) unknown: AtomicU64,
    pub(crate) ended_meanwhile: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) writes: AtomicU64,
}

/// Counters of a [`SessionLayer`](super::SessionLayer) since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SessionStats {
    /// Session cookies that were not a session id (treated as no session).
    pub malformed_cookies: u64,
    /// Session cookies whose signature no key verified (treated as no session).
    pub forged_cookies: u64,
    /// Well-formed cookies naming no live session (expired, logged out, or guessed).
    pub unknown_sessions: u64,
    /// Writes dropped because the session had ended meanwhile (logged out on another
    /// instance): a late write never revives a logged-out session.
    pub writes_after_end: u64,
    /// Store loads.
    pub loads: u64,
    /// Store writes (changed values, logins, id cycles, logouts).
    pub writes: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> SessionStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SessionStats {
            malformed_cookies: get(&self.malformed),
            forged_cookies: get(&self.forged),
            unknown_sessions: get(&self.unknown),
            writes_after_end: get(&self.ended_meanwhile),
            loads: get(&self.loads),
            writes: get(&self.writes),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// The session of one request, in its extensions (a cheap clone; extract it with the `axum`
/// feature or `req.extensions().get::<Session>()`).
///
/// Values are serde values stored as JSON, each key separately: two concurrent requests that
/// change different keys both persist. The first method that needs the data loads it (one
/// store round trip, which also slides the idle expiry); a request without a session cookie
/// never calls the store. Changes are written, the changed keys only, when the response is
/// ready (or at [`save`](Self::save)); [`log_in`](Self::log_in), [`cycle_id`](Self::cycle_id),
/// [`log_out`](Self::log_out) and [`log_out_everywhere`](Self::log_out_everywhere) take effect
/// at once.
///
/// Every method fails with a [`SessionError`] only when the store is unavailable (answer it
/// with its 503) or a value has the wrong type; an unknown or expired session is simply empty.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    presented: Option<SessionId>,
    touched: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    loaded: bool,
    /// The stored session's id, when there is one.
    stored: Option<SessionId>,
    record: Record,
    dirty: HashSet<String>,
    cookie: CookieChange,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum CookieChange {
    #[default]
    Keep,
    Set(SessionId),
    Remove,
}

/// What the layer does with the response.
pub(crate) enum Finish {
    /// Done: add this `Set-Cookie`, if any.
    Done(Option<HeaderValue>),
    /// Changes to write (or the handle is busy): await [`Session::finish`].
    Write,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("has_cookie", &self.inner.presented.is_some())
            .field("touched", &self.inner.touched.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(
        shared: Arc<Shared>,
        presented: Option<SessionId>,
        cookie: CookieChange,
    ) -> Self {
        Self {
            inner: Arc::new(Handle {
                shared,
                presented,
                touched: AtomicBool::new(cookie != CookieChange::Keep),
                state: Mutex::new(State {
                    cookie,
                    ..State::default()
                }),
            }),
        }
    }

    /// Whether the request carried a valid session cookie (no store call).
    pub fn has_cookie(&self) -> bool {
        self.inner.presented.is_some()
    }

    async fn loaded(&self) -> Result<MutexGuard<'_, State>, SessionError> {
        self.inner.touched.store(true, Ordering::Relaxed);
        let mut state = self.inner.state.lock().await;
        if !state.loaded {
            if let Some(id) = self.inner.presented {
                let shared = &self.inner.shared;
                bump(&shared.counters.loads);
                match shared.store.load(id, shared.idle).await? {
                    Some(record) => {
                        state.stored = Some(id);
                        state.record = record;
                    }
                    None => {
                        bump(&shared.counters.unknown);
                        tracing::debug!(
                            "the session cookie names no live session: treated as no session"
                        );
                        state.cookie = CookieChange::Remove;
                    }
                }
            }
            state.loaded = true;
        }
        Ok(state)
    }

    /// The value under `key`, `None` when absent.
    ///
    /// # Errors
    ///
    /// The store is unavailable, or the value is not a `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let state = self.loaded().await?;
        match state.record.data.get(key) {
            None => Ok(None),
            Some(text) => serde_json::from_str(text)
                .map(Some)
                .map_err(|e| SessionError::value(key, e)),
        }
    }

    /// Sets `key` to `value` (written with the response; only if it changed). A request without
    /// a session starts one (a fresh id, never one the client chose).
    ///
    /// # Errors
    ///
    /// The store is unavailable, or `value` does not serialize.
    pub async fn insert<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), SessionError> {
        let text = serde_json::to_string(value).map_err(|e| SessionError::value(key, e))?;
        let mut state = self.loaded().await?;
        if state.record.data.get(key) != Some(&text) {
            state.record.data.insert(key.to_owned(), text);
            state.dirty.insert(key.to_owned());
        }
        Ok(())
    }

    /// Removes `key`; returns whether it was there.
    ///
    /// # Errors
    ///
    /// The store is unavailable.
    pub async fn remove(&self, key: &str) -> Result<bool, SessionError> {
        let mut state = self.loaded().await?;
        let was = state.record.data.remove(key).is_some();
        if was {
            state.dirty.insert(key.to_owned());
        }
        Ok(was)
    }

    /// The logged-in user, `None` when anonymous.
    ///
    /// # Errors
    ///
    /// The store is unavailable.
    pub async fn user_id(&self) -> Result<Option<UserId>, SessionError> {
        let state = self.loaded().await?;
        Ok(state.record.user.clone().map(UserId))
    }

    /// A watch that follows this session after the request (for an event stream or a
    /// WebSocket it opens): [`SessionWatch::ended`] resolves when the session ends, here or on
    /// another instance, by logout or expiry. `None` without a stored session. Loads the
    /// session if it was not yet; the watch itself never slides the idle expiry.
    ///
    /// # Errors
    ///
    /// The store is unavailable.
    pub async fn watch(&self) -> Result<Option<SessionWatch>, SessionError> {
        let state = self.loaded().await?;
        Ok(state.stored.map(|id| {
            SessionWatch::new(
                self.inner.shared.store.clone(),
                id,
                state.record.user.clone(),
            )
        }))
    }

    /// Logs `user` in: the session moves to a fresh id, so an id planted before the login is
    /// worth nothing (fixation), its absolute expiry starts again, and it joins the user's
    /// index. Its values are kept (an anonymous cart survives the login), unless another user
    /// was logged in on it. Takes effect at once.
    ///
    /// # Errors
    ///
    /// The store is unavailable (nothing changed: the client can retry).
    pub async fn log_in(&self, user: impl Into<Arc<str>>) -> Result<(), SessionError> {
        let mut state = self.loaded().await?;
        let shared = &self.inner.shared;
        let mut record = state.record.clone();
        let user: Arc<str> = user.into();
        if record.user.as_ref().is_some_and(|u| *u != user) {
            // Another user's values do not carry over to this one.
            record.data.clear();
        }
        record.user = Some(user);
        record.deadline_ms = shared
            .store
            .now_ms()
            .saturating_add(millis(shared.absolute));
        self.replace(&mut state, record).await
    }

    /// Moves the session to a fresh id, values, user and expiry kept: call it on any privilege
    /// change ([`log_in`](Self::log_in) does). Takes effect at once; no-op without a stored
    /// session.
    ///
    /// # Errors
    ///
    /// The store is unavailable.
    pub async fn cycle_id(&self) -> Result<(), SessionError> {
        let mut state = self.loaded().await?;
        if state.stored.is_none() {
            return Ok(());
        }
        let record = state.record.clone();
        self.replace(&mut state, record).await
    }

    async fn replace(&self, state: &mut State, record: Record) -> Result<(), SessionError> {
        let shared = &self.inner.shared;
        let id = new_id()?;
        let old_user = state.record.user.clone();
        bump(&shared.counters.writes);
        shared
            .store
            .create(Create {
                id,
                record: &record,
                replaces: state.stored.map(|old| (old, old_user.as_deref())),
                idle: shared.idle,
                max_per_user: shared.max_per_user,
            })
            .await?;
        state.stored = Some(id);
        state.record = record;
        state.dirty.clear();
        state.cookie = CookieChange::Set(id);
        Ok(())
    }

    /// Ends this session (its values gone, the cookie removed). Takes effect at once on every
    /// instance.
    ///
    /// # Errors
    ///
    /// The store is unavailable (the session is still live: retry).
    pub async fn log_out(&self) -> Result<(), SessionError> {
        let mut state = self.loaded().await?;
        if let Some(id) = state.stored {
            let shared = &self.inner.shared;
            bump(&shared.counters.writes);
            shared
                .store
                .delete(id, state.record.user.as_deref())
                .await?;
        }
        end(&mut state);
        Ok(())
    }

    /// Ends every session of this session's user, on every device and instance (this one
    /// included); returns how many were ended. Without a logged-in user, ends this session.
    ///
    /// # Errors
    ///
    /// The store is unavailable.
    pub async fn log_out_everywhere(&self) -> Result<u64, SessionError> {
        let mut state = self.loaded().await?;
        let shared = &self.inner.shared;
        let n = match (state.record.user.clone(), state.stored) {
            (Some(user), Some(id)) => {
                bump(&shared.counters.writes);
                let n = shared.store.delete_user(&user).await?;
                // Also this one, should the index have lost it.
                shared.store.delete(id, Some(&user)).await?;
                n
            }
            (None, Some(id)) => {
                bump(&shared.counters.writes);
                shared.store.delete(id, None).await?;
                1
            }
            (_, None) => 0,
        };
        end(&mut state);
        Ok(n)
    }

    /// Writes the changed values now instead of when the response is ready, so the handler
    /// can answer a failure itself.
    ///
    /// # Errors
    ///
    /// The store is unavailable (the changes stay pending: the layer tries again at the end).
    pub async fn save(&self) -> Result<(), SessionError> {
        let mut state = self.inner.state.lock().await;
        self.write(&mut state).await
    }

    async fn write(&self, state: &mut State) -> Result<(), SessionError> {
        if !state.loaded || state.dirty.is_empty() {
            return Ok(());
        }
        let shared = &self.inner.shared;
        match state.stored {
            Some(id) => {
                let set: Vec<(&str, &str)> = state
                    .dirty
                    .iter()
                    .filter_map(|k| state.record.data.get_key_value(k.as_str()))
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let remove: Vec<&str> = state
                    .dirty
                    .iter()
                    .filter(|k| !state.record.data.contains_key(k.as_str()))
                    .map(String::as_str)
                    .collect();
                bump(&shared.counters.writes);
                let live = shared.store.update(id, &set, &remove, shared.idle).await?;
                if !live {
                    bump(&shared.counters.ended_meanwhile);
                    tracing::debug!(
                        "the session ended before its changes were written (logged out elsewhere, or expired): changes dropped"
                    );
                    end(state);
                }
            }
            None if state.record.data.is_empty() => {}
            None => {
                let mut record = std::mem::take(&mut state.record);
                record.deadline_ms = shared
                    .store
                    .now_ms()
                    .saturating_add(millis(shared.absolute));
                let result = self.replace(state, record.clone()).await;
                if result.is_err() {
                    state.record = record;
                }
                result?;
            }
        }
        state.dirty.clear();
        Ok(())
    }

    /// At the end of the request: the `Set-Cookie` at once when nothing is to be written.
    pub(crate) fn try_finish(&self) -> Finish {
        if !self.inner.touched.load(Ordering::Relaxed) {
            return Finish::Done(None);
        }
        match self.inner.state.try_lock() {
            Ok(state) if state.dirty.is_empty() => Finish::Done(self.cookie_header(state.cookie)),
            _ => Finish::Write,
        }
    }

    /// At the end of the request: writes what changed, then the `Set-Cookie`.
    pub(crate) async fn finish(&self) -> Result<Option<HeaderValue>, SessionError> {
        let mut state = self.inner.state.lock().await;
        self.write(&mut state).await?;
        Ok(self.cookie_header(state.cookie))
    }

    fn cookie_header(&self, change: CookieChange) -> Option<HeaderValue> {
        let codec = &self.inner.shared.codec;
        match change {
            CookieChange::Keep => None,
            CookieChange::Set(id) => codec.set_cookie(id),
            CookieChange::Remove => Some(codec.removal()),
        }
    }

    /// Loads now (the eager mode) and returns the user; errors leave the handle unloaded, so
    /// a handler that needs the session meets the error itself.
    pub(crate) async fn preload(&self) -> Option<UserId> {
        match self.user_id().await {
            Ok(user) => user,
            Err(e) => {
                tracing::debug!(error = %e, "eager session load failed; the handler will retry if it uses the session");
                None
            }
        }
    }
}

fn end(state: &mut State) {
    state.stored = None;
    state.record = Record::default();
    state.dirty.clear();
    state.cookie = CookieChange::Remove;
}

fn new_id() -> Result<SessionId, SessionError> {
    SessionId::generate().ok_or_else(|| {
        SessionError::unavailable(
            "the operating system refused randomness for a session id: check the host's entropy source",
            Duration::from_secs(1),
            None,
        )
    })
}
