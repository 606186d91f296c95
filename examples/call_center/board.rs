//! The live agent board: one HTML page with its stylesheet and script, embedded in the binary
//! (no build step) and served by every instance.
//!
//! The page logs in, sets the user's own status, and follows every agent's status through
//! `GET /api/events` (SSE; the browser resumes with `Last-Event-ID` on whichever instance the
//! load balancer picks). It shows which instance served the page (written into it here) and
//! which one holds the stream (the stream's `hello` event), so a viewer sees that there is no
//! affinity. A supervisor also sees the campaigns (through the DB router) and, when the
//! `campaign-stats` flag is on for them, the flag-gated statistics. Every logged-in user sees
//! the guarded rollouts (`GET /api/rollouts` and the stream's `rollout` events, see
//! `rollouts`): each stage's share, the arms side by side, the last decision with its reason,
//! and `frozen` while Redis cannot be read.
//!
//! Nothing is fetched from anywhere else: the `Content-Security-Policy` allows this origin only.

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("board/index.html");
const CSS: &str = include_str!("board/board.css");
const JS: &str = include_str!("board/board.js");

/// Everything from this origin, nothing inline, nothing from elsewhere, never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// `GET /`, `GET /board.css`, `GET /board.js`.
pub(crate) fn routes(instance: &str) -> Router {
    let page = Bytes::from(INDEX.replace("__INSTANCE__", &escape_html(instance)));
    Router::new()
        .route(
            "/",
            get(move || async move { asset(page, "text/html; charset=utf-8") }),
        )
        .route(
            "/board.css",
            get(|| async {
                asset(
                    Bytes::from_static(CSS.as_bytes()),
                    "text/css; charset=utf-8",
                )
            }),
        )
        .route(
            "/board.js",
            get(|| async {
                asset(
                    Bytes::from_static(JS.as_bytes()),
                    "text/javascript; charset=utf-8",
                )
            }),
        )
}

fn asset(body: Bytes, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Revalidated on every load: a new version of the binary serves its own page.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

/// `text` safe inside HTML text and attribute values.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
