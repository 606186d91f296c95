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
        let given = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                AdminDenied::unauthorized("send the admin token as Authorization: Bearer <token>")
            })?;
        if !self.token.is_empty()
            && constant_time_eq(given.trim().as_bytes(), self.token.as_bytes())
        {
            Ok(self.actor.clone())
        } else {
            Err(AdminDenied::unauthorized(
                "the admin token is not valid: check WELCOMEDLY_ADMIN_TOKEN",
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
