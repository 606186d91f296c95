//! The OpenFeature Remote Evaluation Protocol (OFREP) core API (feature `axum`): any
//! language's OpenFeature SDK, through its OFREP provider, evaluates this service's flags.
//!
//! | route | what |
//! |---|---|
//! | `POST /ofrep/v1/evaluate/flags/{key}` | one flag (server-side providers, dynamic context) |
//! | `POST /ofrep/v1/evaluate/flags` | every flag (web and mobile providers, static context); `ETag`, `304` on `If-None-Match` |
//!
//! The request body is `{"context": {"targetingKey": "user-1", "plan": "pro", ...}}` (an empty
//! body, or no `context`, is an empty context). Strings, integers, numbers and booleans are
//! attributes; arrays and objects are attributes too (flagd targeting reads into them with
//! `var` paths; no clause of the native model matches them); `null` is left out. Everything is
//! accepted within the bounds.
//!
//! Answers, as the OFREP OpenAPI document shapes them (`application/json`):
//!
//! | situation | status | body |
//! |---|---|---|
//! | a variant served | `200` | `{"key", "value", "reason", "variant", "metadata"?}` |
//! | the caller's default applies (disabled flag: `DISABLED`; no variant matched: `DEFAULT`) | `200` | `{"key", "reason"}` without `value`: OFREP's *code default* result, the provider serves its default |
//! | unknown flag (single) | `404` | `{"key", "errorCode": "FLAG_NOT_FOUND", "errorDetails"}` |
//! | the body is not JSON | `400` | `{"key", "errorCode": "PARSE_ERROR", "errorDetails"}` (bulk: without `key`) |
//! | `context` not an object, a non-string `targetingKey`, over the bounds | `400` | `{"key", "errorCode": "INVALID_CONTEXT", "errorDetails"}` (bulk: without `key`) |
//! | the auth hook refuses | `401` / `403` | `{"errorDetails"}` |
//! | the flag's definition failed to parse (imported flags) | `400` (bulk: an entry) | `{"key", "errorCode": "PARSE_ERROR", "errorDetails"}` |
//! | the flag failed to evaluate | `500` (bulk: a `{"key", "errorCode": "GENERAL"}` entry) | `{"errorDetails"}` |
//! | bulk, `If-None-Match` holds the current `ETag` | `304` | none |
//!
//! `metadata` carries a native flag's `description` when it has one, and a flagd flag's
//! metadata (flag-set metadata overlaid with the flag's) when it is not empty. Bulk answers
//! `{"flags": [...]}` in key order; its `ETag` is a hash of that body, so it changes exactly
//! when what this context sees changes (a flag edit that does not change this context's
//! results keeps the tag), and is the same on every instance serving the same flag set.
//!
//! **The OpenAPI document**: OFREP 0.3.0 (open-feature/protocol `service/openapi.yaml`). Beyond
//! 0.1.0: a result without `value` is the *code default* (ADR-0006); the bulk answer carries
//! the flag set's `metadata` (a flagd file's top-level metadata; none for a native set); the
//! change-trigger query parameters `flagConfigEtag` and `flagConfigLastModified` are accepted and
//! take no part in the `304` decision, which is `If-None-Match`'s alone. Not offered: the
//! optional `eventStreams` of the bulk answer (ADR-0008 SSE change notices) and the
//! `/ofrep/v1/configuration` extension; a request without `context` or `targetingKey` (which
//! the document marks required) is evaluated as an empty context rather than refused.
//!
//! **Authorization** goes through the admin API's [`AdminAuth`] hook: [`OfrepKey`] takes
//! OFREP's two schemes (`Authorization: Bearer <key>` or `X-API-Key: <key>`), [`OpenAccess`]
//! lets every caller in, and any other hook works. **Bounds**: the body
//! ([`OfrepConfig::max_body_bytes`]), the context's attributes
//! ([`OfrepConfig::max_attributes`]) and their nesting ([`OfrepConfig::max_depth`]).
//! **Rate limits** (`429` with `Retry-After` in seconds — RFC 9110 allows seconds or a date;
//! the document's example is a date, and OFREP clients read both) come from
//! welcomedly-core's `RateLimitLayer` put in front of this router, like any route's.
//!
//! ```
//! use axum::body::Body;
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//! use welcomedly_flags::ofrep::{self, OfrepConfig, OpenAccess};
//! use welcomedly_flags::{Flags, Snapshot};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let flags = Flags::new(Snapshot::compile_json(r#"{ "flags": { "new-ui": {
//!   "variants": { "on": true, "off": false },
//!   "targets": [{ "variant": "on", "values": ["alice"] }],
//!   "fallthrough": { "variant": "off" }
//! } } }"#, 1)?);
//! let app: axum::Router = ofrep::router(flags, OpenAccess, OfrepConfig::default());
//!
//! let res = app
//!     .oneshot(
//!         Request::post("/ofrep/v1/evaluate/flags/new-ui")
//!             .header("content-type", "application/json")
//!             .body(Body::from(r#"{"context": {"targetingKey": "alice"}}"#))?,
//!     )
//!     .await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! let body = axum::body::to_bytes(res.into_body(), 1 << 16).await?;
//! let json: serde_json::Value = serde_json::from_slice(&body)?;
//! assert_eq!(json["value"], true);
//! assert_eq!(json["reason"], "TARGETING_MATCH");
//! assert_eq!(json["variant"], "on");
//! # Ok(())
//! # }
//! ```

mod auth;
mod request;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use serde_json::{Map, Value};

pub use self::auth::{API_KEY_HEADER, OfrepKey, OpenAccess};
use self::request::BadRequest;
use crate::admin::AdminAuth;
use crate::eval::ErrorCode;
use crate::{Flags, Snapshot};

/// The bulk evaluation route.
pub const BULK_PATH: &str = "/ofrep/v1/evaluate/flags";

/// Bounds of what one OFREP request may make the service spend. Plain data with documented
/// defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OfrepConfig {
    /// The largest request body read, in bytes; a larger one is `400 INVALID_CONTEXT`.
    /// Default 64 KiB.
    pub max_body_bytes: usize,
    /// The most attributes a context may have. Default 64.
    pub max_attributes: usize,
    /// How deep an attribute may nest arrays and objects (a scalar is 1). Default 8.
    pub max_depth: usize,
}

impl Default for OfrepConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_attributes: 64,
            max_depth: 8,
        }
    }
}

impl OfrepConfig {
    /// These settings with at most `bytes` of request body.
    #[must_use]
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// These settings with at most `count` context attributes.
    #[must_use]
    pub fn with_max_attributes(mut self, count: usize) -> Self {
        self.max_attributes = count;
        self
    }

    /// These settings with attributes nested at most `depth` levels.
    #[must_use]
    pub fn with_max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }
}

struct Ofrep {
    flags: Flags,
    auth: Box<dyn AdminAuth>,
    config: OfrepConfig,
}

/// The OFREP routes (`POST /ofrep/v1/evaluate/flags` and `POST
/// /ofrep/v1/evaluate/flags/{key}`), evaluating against `flags`' current snapshot and
/// authorising every request with `auth`. Merge it into the application's router.
pub fn router<S: Clone + Send + Sync + 'static>(
    flags: Flags,
    auth: impl AdminAuth,
    config: OfrepConfig,
) -> Router<S> {
    let state = Arc::new(Ofrep {
        flags,
        auth: Box::new(auth),
        config,
    });
    Router::new()
        .route(BULK_PATH, post(bulk))
        .route(&format!("{BULK_PATH}/{{key}}"), post(single))
        .with_state(state)
}

/// One flag's result, as OFREP's `evaluationSuccess` or `evaluationFailure`.
#[derive(Serialize)]
#[serde(untagged)]
enum Entry<'a> {
    #[serde(rename_all = "camelCase")]
    Success {
        key: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<&'a Value>,
        reason: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        variant: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<Metadata<'a>>,
    },
    #[serde(rename_all = "camelCase")]
    Failure {
        key: &'a str,
        error_code: &'static str,
        error_details: String,
    },
}

/// `metadata`: a native flag's `description`, or a flagd flag's metadata.
#[derive(Serialize)]
#[serde(untagged)]
enum Metadata<'a> {
    Description { description: &'a str },
    Flagd(&'a Map<String, Value>),
}

/// Evaluates flag `key` for `attributes`; `None` when there is no such flag.
fn evaluate<'a>(
    snapshot: &'a Snapshot,
    key: &'a str,
    attributes: &Map<String, Value>,
) -> Option<Entry<'a>> {
    let ctx = request::context(attributes);
    let eval = snapshot.json_value(key, &ctx);
    let code = match eval.error {
        None => {
            let metadata = match snapshot.metadata(key) {
                Some(m) if m.is_empty() => None,
                Some(m) => Some(Metadata::Flagd(m)),
                None => snapshot
                    .flag_set()
                    .flags
                    .get(key)
                    .and_then(|f| f.description.as_deref())
                    .map(|description| Metadata::Description { description }),
            };
            return Some(Entry::Success {
                key,
                value: eval.value,
                reason: eval.reason.as_str(),
                variant: eval.variant,
                metadata,
            });
        }
        Some(ErrorCode::FlagNotFound) => return None,
        Some(code) => code,
    };
    let details = match code {
        ErrorCode::ParseError => format!("flag {key:?} could not be parsed: fix its definition"),
        _ => format!("flag {key:?} failed to evaluate: check its definition and the service log"),
    };
    tracing::warn!(
        flag = key,
        code = code.as_str(),
        "an OFREP evaluation failed"
    );
    Some(Entry::Failure {
        key,
        error_code: code.as_str(),
        error_details: details,
    })
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    json_bytes(status, bytes)
}

fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut res = (status, bytes).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// `generalErrorResponse`.
fn general(status: StatusCode, details: impl Into<String>) -> Response {
    json(
        status,
        &serde_json::json!({ "errorDetails": details.into() }),
    )
}

/// Authorises the request and reads its context; `Err` is the answer.
async fn read(
    ofrep: &Ofrep,
    req: Request,
    key: Option<&str>,
) -> Result<(HeaderMap, Map<String, Value>), Response> {
    let (parts, body) = req.into_parts();
    if let Err(denied) = ofrep.auth.authorize(&parts) {
        return Err(general(denied.status, denied.detail));
    }
    let bad = |e: BadRequest| {
        let body = match key {
            Some(key) => {
                serde_json::json!({ "key": key, "errorCode": e.code, "errorDetails": e.details })
            }
            None => serde_json::json!({ "errorCode": e.code, "errorDetails": e.details }),
        };
        json(StatusCode::BAD_REQUEST, &body)
    };
    let limit = ofrep.config.max_body_bytes;
    let bytes = axum::body::to_bytes(Body::new(body), limit)
        .await
        .map_err(|_| {
            bad(BadRequest {
                code: "INVALID_CONTEXT",
                details: format!(
                    "the request body could not be read or is over {limit} bytes: send a smaller context"
                ),
            })
        })?;
    let attributes = request::parse(&bytes, &ofrep.config).map_err(bad)?;
    Ok((parts.headers, attributes))
}

async fn single(
    State(ofrep): State<Arc<Ofrep>>,
    Path(key): Path<String>,
    req: Request,
) -> Response {
    let (_, attributes) = match read(&ofrep, req, Some(&key)).await {
        Ok(read) => read,
        Err(res) => return res,
    };
    let snapshot = ofrep.flags.load();
    match evaluate(&snapshot, &key, &attributes) {
        Some(entry @ Entry::Success { .. }) => json(StatusCode::OK, &entry),
        Some(Entry::Failure {
            error_code: "PARSE_ERROR",
            key,
            error_details,
        }) => json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({ "key": key, "errorCode": "PARSE_ERROR", "errorDetails": error_details }),
        ),
        Some(Entry::Failure { error_details, .. }) => {
            general(StatusCode::INTERNAL_SERVER_ERROR, error_details)
        }
        None => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({
                "key": key,
                "errorCode": "FLAG_NOT_FOUND",
                "errorDetails": "no flag has this key",
            }),
        ),
    }
}

#[derive(Serialize)]
struct Bulk<'a> {
    flags: Vec<Entry<'a>>,
    /// OFREP 0.2+: the flag set's metadata (a flagd file's top-level `metadata`).
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a Map<String, Value>>,
}

async fn bulk(State(ofrep): State<Arc<Ofrep>>, req: Request) -> Response {
    let (headers, attributes) = match read(&ofrep, req, None).await {
        Ok(read) => read,
        Err(res) => return res,
    };
    let snapshot = ofrep.flags.snapshot();
    let flags = snapshot
        .keys()
        .filter_map(|key| evaluate(&snapshot, key, &attributes))
        .collect();
    let metadata = snapshot.set_metadata();
    let Ok(body) = serde_json::to_vec(&Bulk { flags, metadata }) else {
        return general(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the bulk evaluation could not be serialized (a bug): report it",
        );
    };
    let tag = format!("\"{:016x}\"", crate::store::fnv1a64(&body));
    let tag_value = HeaderValue::from_str(&tag).ok();
    let mut res = if none_match(&headers, &tag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        json_bytes(StatusCode::OK, body)
    };
    if let Some(tag) = tag_value {
        res.headers_mut().insert(header::ETAG, tag);
    }
    res
}

/// Whether `If-None-Match` lists `tag` (weak comparison, as RFC 9110 asks for this header) or
/// is `*`.
fn none_match(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let mut h = HeaderMap::new();
        assert!(!none_match(&h, "\"a\""));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"b\", W/\"a\""),
        );
        assert!(none_match(&h, "\"a\""));
        assert!(!none_match(&h, "\"c\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(none_match(&h, "\"c\""));
    }
}
