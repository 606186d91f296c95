//! One error shape for every error the example returns: `application/problem+json` (RFC 9457)
//! with a `type`, `title`, `status` and a `detail` that says what to fix, answered through
//! welcomedly-core's [`Problem`](welcomedly_core::problem::Problem) builder.

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// A problem+json error response.
#[derive(Debug)]
pub(crate) struct Problem {
    status: StatusCode,
    detail: String,
}

impl Problem {
    pub(crate) fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        welcomedly_core::problem::Problem::new(self.status)
            .detail(self.detail)
            .into_response()
    }
}

/// axum's JSON rejections (malformed JSON 400, wrong shape 422, missing content type 415, body
/// too large 413) as problems, keeping axum's status and its explanation of what was wrong.
impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        let what = match &rejection {
            JsonRejection::MissingJsonContentType(_) => {
                "send the body as JSON with the header content-type: application/json".to_owned()
            }
            _ => format!(
                "the body is not the JSON this route expects ({}): fix it and retry",
                rejection.body_text()
            ),
        };
        Self::new(rejection.status(), what)
    }
}

impl From<BytesRejection> for Problem {
    fn from(rejection: BytesRejection) -> Self {
        let what = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "the body is larger than this route accepts ({}): send a smaller one",
                rejection.body_text()
            )
        } else {
            format!("the body could not be read ({})", rejection.body_text())
        };
        Self::new(rejection.status(), what)
    }
}

/// The fallback of unknown routes.
pub(crate) async fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no such route: see the example's HTTP contract (GET /api/ping, POST /auth/login, GET /health, …)",
    )
}

/// The fallback of known routes called with the wrong method.
pub(crate) async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route exists but does not take that method: see the example's HTTP contract",
    )
}
