//! Who may administer flags: the [`AdminAuth`] hook and a ready-made [`BearerToken`].

use std::fmt;

use http::StatusCode;
use http::request::Parts;

/// Decides whether a request may use the admin router, and who it is (for the history).
pub trait AdminAuth: Send + Sync + 'static {
    /// The actor (a user or service name recorded in the history), or why the request is
    /// refused.
    ///
    /// # Errors
    ///
    /// [`AdminDenied`]: answered as problem+json with its status (401 or 403).
    fn authorize(&self, parts: &Parts) -> Result<String, AdminDenied>;
}

/// A refused admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminDenied {
    pub(crate) status: StatusCode,
    pub(crate) detail: String,
}

impl AdminDenied {
    /// `401 Unauthorized`: no credentials, or not valid ones.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            detail: detail.into(),
        }
    }

    /// `403 Forbidden`: valid credentials without the right to change flags.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            detail: detail.into(),
        }
    }
}

/// `Authorization: Bearer <token>` with one shared token (compared in constant time); the
/// history records `actor` for every change.
#[derive(Clone)]
pub struct BearerToken {
    token: String,
    actor: String,
}

impl BearerToken {
    /// Accepts `token`, recording changes as made by `actor`.
    pub fn new(token: impl Into<String>, actor: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            actor: actor.into(),
        }
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerToken")
            .field("token", &"***")
            .field("actor", &self.actor)
            .finish()
    }
}

impl AdminAuth for BearerToken {
    fn authorize(&self, parts: &Parts) -> Result<String, AdminDenied> {
        let given = bearer(parts).ok_or_else(|| {
            AdminDenied::unauthorized("send the admin token as Authorization: Bearer <token>")
        })?;
        if matches_secret(given, &self.token) {
            Ok(self.actor.clone())
        } else {
            Err(AdminDenied::unauthorized(
                "the admin token is not valid: check WELCOMEDLY_ADMIN_TOKEN",
            ))
        }
    }
}

/// The credential of `Authorization: Bearer <credential>`, if the request has one.
pub(crate) fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Whether the credential a client sent (surrounding spaces ignored) is `secret`, compared in
/// constant time; an empty secret matches nothing (a service configured without one is closed,
/// never open).
pub(crate) fn matches_secret(given: &str, secret: &str) -> bool {
    let (a, b) = (given.trim().as_bytes(), secret.as_bytes());
    !b.is_empty()
        && a.len() == b.len()
        && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn head(authorization: Option<&str>) -> Parts {
        let mut req = http::Request::builder();
        if let Some(value) = authorization {
            req = req.header(http::header::AUTHORIZATION, value);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn one_bearer_check_for_every_hook() {
        assert_eq!(bearer(&head(Some("Bearer s3cret"))), Some("s3cret"));
        assert_eq!(bearer(&head(Some("Basic czNjcmV0"))), None);
        assert_eq!(bearer(&head(None)), None);
        assert!(matches_secret(" s3cret ", "s3cret"));
        assert!(!matches_secret("s3cre", "s3cret"));
        assert!(!matches_secret("s3cres", "s3cret"));
        // A service configured without a secret is closed, never open.
        assert!(!matches_secret("", ""));
        let auth = BearerToken::new("s3cret", "ops");
        assert_eq!(auth.authorize(&head(Some("Bearer s3cret"))).unwrap(), "ops");
        let denied = auth.authorize(&head(Some("Bearer nope"))).unwrap_err();
        assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
        assert!(!format!("{auth:?}").contains("s3cret"));
    }
}
