//! axum conveniences: [`Session`] as an extractor and [`SessionError`] as a response.

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use super::error::SessionError;
use super::handle::Session;

/// Takes the [`Session`] the [`SessionLayer`](super::SessionLayer) put in the extensions; a
/// route outside the layer is a 500 that says so.
impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or_else(SessionError::no_layer)
    }
}

/// The problem+json answer of [`SessionError::to_response`]: `503` with `Retry-After` when the
/// store is unavailable, so a handler can use `?` on every session call.
impl IntoResponse for SessionError {
    fn into_response(self) -> Response {
        if self.is_unavailable() {
            // The outage itself is logged once, at warn, by the store's supervisor.
            tracing::debug!(error = %self, "session store unavailable: answering 503");
        } else {
            tracing::error!(error = %self, "session error: answering 500");
        }
        self.to_response()
    }
}
