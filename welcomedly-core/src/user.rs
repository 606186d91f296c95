//! Who the request's user is, as request extensions that one layer sets and others read:
//! [`UserId`] (known) and [`DeferredUser`] (known after a lookup). An authentication layer
//! (welcomedly-cluster's sessions) inserts them; rate-limit policies keyed by the user and
//! welcomedly-flags' layer read them.
//!
//! ```
//! use http::Request;
//! use welcomedly_core::UserId;
//!
//! let mut req = Request::new(());
//! req.extensions_mut().insert(UserId::new("alice"));
//! assert_eq!(req.extensions().get::<UserId>(), Some(&UserId::new("alice")));
//! ```

use std::fmt;
use std::sync::Arc;

/// The id of the authenticated user, inserted into request extensions by an authentication layer
/// (welcomedly-cluster's sessions do it), read by rate-limit policies keyed by
/// [`KeySource::User`](crate::rate_limit::KeySource::User) and by welcomedly-flags' layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(pub Arc<str>);

impl UserId {
    /// A user id.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }
}

/// The user of a request whose identity costs a lookup to learn (a session cookie whose session
/// has not been loaded), put in the request's extensions by the layer that can look it up
/// (welcomedly-cluster's sessions, when they load lazily) instead of a [`UserId`]. A layer that
/// needs the user only on some requests (feature flags, on the routes that evaluate one) calls
/// [`resolve`](Self::resolve) then, so a request that never asks costs no lookup. The lookup
/// is made at most once per request however many ask (the session handle keeps what it
/// loaded).
///
/// Rate limits do not read it: a policy keyed by the user needs a [`UserId`] before admission
/// (load the session eagerly on those routes).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use welcomedly_core::{DeferredUser, UserId};
///
/// let user = DeferredUser::new(|| async { Some(UserId::new("alice")) });
/// assert_eq!(user.resolve().await, Some(UserId::new("alice")));
/// # }
/// ```
#[derive(Clone)]
pub struct DeferredUser(Arc<LookUp>);

type LookUp =
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Option<UserId>> + Send>> + Send + Sync;

impl DeferredUser {
    /// A user found by `look_up` (an anonymous request, or a failed lookup: `None`).
    pub fn new<F, Fut>(look_up: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<UserId>> + Send + 'static,
    {
        Self(Arc::new(move || Box::pin(look_up())))
    }

    /// Looks the user up. Lookups are the provider's: welcomedly-cluster's session handle loads
    /// once per request and answers later calls from what it loaded.
    pub async fn resolve(&self) -> Option<UserId> {
        (self.0)().await
    }
}

impl fmt::Debug for DeferredUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeferredUser")
    }
}
