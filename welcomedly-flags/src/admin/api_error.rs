//! [`ApiError`]: how the admin routers (flags, and rollouts with feature `redis`) refuse a
//! request, and the checks they share: who the caller is ([`authorize`]) and whether a flag key
//! is one ([`check_key`]). Every refusal is one problem+json answer, built by
//! welcomedly-core's [`Problem`].

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use welcomedly_core::problem::Problem;

use super::auth::{AdminAuth, AdminDenied};
use crate::ValidationErrors;
use crate::store::StoreError;

/// The longest flag key the admin routers accept.
pub(crate) const MAX_KEY_LEN: usize = 128;

/// An admin request refused: its status, what to do, and for a rejected document every
/// problem found (the `problems` extension member).
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    detail: String,
    problems: Option<ValidationErrors>,
}

impl ApiError {
    /// A refusal with `status`, saying `detail`.
    pub(crate) fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            problems: None,
        }
    }

    /// `422`: the document has problems; `detail` says what was not done.
    pub(crate) fn invalid(detail: String, errors: ValidationErrors) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail,
            problems: Some(errors),
        }
    }

    /// The store failed: `503` (retry) when it is unavailable, `500` otherwise. The store's
    /// own messages say what to do and hold no secret.
    pub(crate) fn store(e: &StoreError) -> Self {
        let status = if e.is_unavailable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        Self::new(status, e.to_string())
    }
}

impl From<AdminDenied> for ApiError {
    fn from(denied: AdminDenied) -> Self {
        Self::new(denied.status, denied.detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut problem = Problem::new(self.status).detail(self.detail);
        if let Some(errors) = self.problems {
            let problems = serde_json::to_value(errors.problems()).unwrap_or_default();
            problem = problem.extension("problems", problems);
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            problem = problem.retry_after(std::time::Duration::from_secs(1));
        }
        problem.into_response()
    }
}

/// The caller's name (the actor recorded in the history), or the hook's refusal. The hook sees
/// the request head; the routers only pass the headers it needs.
pub(crate) fn authorize(auth: &dyn AdminAuth, headers: &HeaderMap) -> Result<String, ApiError> {
    let mut parts = http::Request::new(()).into_parts().0;
    parts.headers = headers.clone();
    auth.authorize(&parts).map_err(ApiError::from)
}

/// `400` unless `key` is 1-128 letters, digits, `-`, `_` or `.`, starting with a letter or digit.
pub(crate) fn check_key(key: &str) -> Result<(), ApiError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a flag key is 1-128 letters, digits, '-', '_' or '.', starting with a letter or digit",
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
    use http_body_util::BodyExt;

    use super::*;
    use crate::Problem as FlagProblem;

    async fn answer(e: ApiError) -> (StatusCode, HeaderMap, serde_json::Value) {
        let res = e.into_response();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&body).unwrap(),
        )
    }

    #[tokio::test]
    async fn an_invalid_document_lists_every_problem() {
        let errors = ValidationErrors::from(vec![
            FlagProblem::new("flags.a", "unknown segment \"x\""),
            FlagProblem::new("", "empty"),
        ]);
        let (status, headers, body) = answer(ApiError::invalid("two".into(), errors)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(headers[CONTENT_TYPE], "application/problem+json");
        assert!(headers.get(RETRY_AFTER).is_none());
        assert_eq!(body["status"], 422);
        assert_eq!(body["detail"], "two");
        assert_eq!(body["problems"][0]["path"], "flags.a");
        assert_eq!(body["problems"][0]["message"], "unknown segment \"x\"");
        assert_eq!(body["problems"][1]["path"], "");
    }

    #[tokio::test]
    async fn unavailable_says_when_to_retry_and_a_refused_caller_gets_the_hooks_status() {
        let (status, headers, body) =
            answer(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "down")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[RETRY_AFTER], "1");
        assert!(body.get("problems").is_none());
        let (status, _, body) = answer(AdminDenied::forbidden("read only").into()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["title"], "Forbidden");
        assert_eq!(body["detail"], "read only");
    }

    #[test]
    fn flag_keys() {
        for good in ["a", "new-ui", "x.y_z", "9"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_KEY_LEN + 1);
        for bad in ["", "-a", ".a", "a b", "a/b", "é", long.as_str()] {
            assert_eq!(
                check_key(bad).err().map(|e| e.status),
                Some(StatusCode::BAD_REQUEST)
            );
        }
        assert!(check_key(&"a".repeat(MAX_KEY_LEN)).is_ok());
    }
}
