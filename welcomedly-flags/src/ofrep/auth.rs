//! Who may evaluate through OFREP: [`OfrepKey`] (the two schemes of OFREP's OpenAPI document)
//! and [`OpenAccess`]. Both implement the admin API's [`AdminAuth`] hook, so any hook written
//! for the admin router (a session check, an mTLS header set by the proxy, …) serves OFREP too.

use std::fmt;

use http::request::Parts;

use crate::admin::{AdminAuth, AdminDenied, bearer, matches_secret};

/// The API-key header of OFREP's `ApiKeyAuth` security scheme.
pub const API_KEY_HEADER: &str = "x-api-key";

/// One shared key, accepted as `Authorization: Bearer <key>` (OFREP's `BearerAuth`) or as
/// `X-API-Key: <key>` (its `ApiKeyAuth`), compared in constant time.
#[derive(Clone)]
pub struct OfrepKey {
    key: String,
}

impl OfrepKey {
    /// Accepts `key` (an empty key accepts nothing).
    pub fn new(key: impl Into<String>) -> Self {
        Self { key: key.into() }
    }
}

impl fmt::Debug for OfrepKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OfrepKey").field("key", &"***").finish()
    }
}

impl AdminAuth for OfrepKey {
    fn authorize(&self, parts: &Parts) -> Result<String, AdminDenied> {
        let from_bearer = bearer(parts);
        let api_key = parts
            .headers
            .get(API_KEY_HEADER)
            .and_then(|v| v.to_str().ok());
        let Some(given) = from_bearer.or(api_key) else {
            return Err(AdminDenied::unauthorized(
                "send the OFREP key as Authorization: Bearer <key> or X-API-Key: <key>",
            ));
        };
        if matches_secret(given, &self.key) {
            Ok(String::from("ofrep"))
        } else {
            Err(AdminDenied::unauthorized(
                "the OFREP key is not valid: check the key the service was configured with",
            ))
        }
    }
}

/// Every request may evaluate: for an endpoint that only the application's own clients reach
/// (OFREP is read-only evaluation; it changes nothing).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAccess;

impl AdminAuth for OpenAccess {
    fn authorize(&self, _parts: &Parts) -> Result<String, AdminDenied> {
        Ok(String::from("anonymous"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parts(name: &str, value: &str) -> Parts {
        http::Request::builder()
            .header(name, value)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn bearer_and_api_key_are_both_accepted() {
        let auth = OfrepKey::new("k-123");
        assert!(
            auth.authorize(&parts("authorization", "Bearer k-123"))
                .is_ok()
        );
        assert!(auth.authorize(&parts("x-api-key", "k-123")).is_ok());
        let wrong = auth.authorize(&parts("x-api-key", "k-124")).unwrap_err();
        assert_eq!(wrong.status, http::StatusCode::UNAUTHORIZED);
        let none = auth.authorize(&parts("x-other", "k-123")).unwrap_err();
        assert_eq!(none.status, http::StatusCode::UNAUTHORIZED);
        assert!(
            OfrepKey::new("")
                .authorize(&parts("x-api-key", ""))
                .is_err()
        );
    }
}
