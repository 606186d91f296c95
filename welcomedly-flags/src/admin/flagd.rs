//! flagd flag files through the admin API (features `axum` and `flagd`).
//!
//! A request is about a flagd file when its `Content-Type` is `application/vnd.flagd+json` (a
//! `PUT`), its `Accept` names that type (a `GET`) or it has the query parameter
//! `?format=flagd`. A `PUT` of the root stores the file as written, after the whole file is
//! compiled: a file that is not JSON is `400`; one that is not a flagd file or passes a bound of
//! [`FlagdLimits`](crate::flagd::FlagdLimits) is `422`; nothing is stored either way. A flag of
//! the file with a problem of its own (unknown operator, missing `$ref`) does not refuse the
//! file: it evaluates as `PARSE_ERROR`, as flagd says, and the answer lists it under
//! `problems`. The write is the same compare-and-set on `If-Match` as a native one, announced
//! the same way, so every instance compiles the file from the store.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Admin, ApiError, FormatQuery, Result, diff, json_response};
use crate::flagd::{FlagdError, FlagdSet};
use crate::snapshot::DocumentFormat;
use crate::store::{Change, Document};

const FLAGD_MEDIA_TYPE: &str = DocumentFormat::Flagd.media_type();

/// Whether `value` (a `Content-Type` or an `Accept`) names the flagd media type.
fn is_flagd_type(value: &str) -> bool {
    value
        .split(',')
        .filter_map(|t| t.split(';').next())
        .any(|t| t.trim().eq_ignore_ascii_case(FLAGD_MEDIA_TYPE))
}

/// Whether a `PUT` carries a flagd file (`Content-Type` or `?format=flagd`).
pub(super) fn put_is_flagd(headers: &HeaderMap, query: &FormatQuery) -> bool {
    query.is_flagd()
        || headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_flagd_type)
}

/// Whether a `GET` asks for a flagd file (`Accept` or `?format=flagd`).
pub(super) fn get_is_flagd(headers: &HeaderMap, query: &FormatQuery) -> bool {
    query.is_flagd()
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_flagd_type)
}

fn flagd_response(version: u64, body: String) -> Response {
    let mut res = (StatusCode::OK, body).into_response();
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(FLAGD_MEDIA_TYPE),
    );
    if let Ok(tag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        headers.insert(header::ETAG, tag);
    }
    res
}

/// `GET` of the root when the stored document is a flagd file (it is returned as stored) or the
/// caller asked for one (a native set is exported: flags that do not map are left out, see
/// [`export`](crate::flagd::export)). `None`: answer natively.
pub(super) fn get_set(doc: &Document, wants_flagd: bool) -> Option<Response> {
    if doc.version > 0 && DocumentFormat::of(&doc.body) == DocumentFormat::Flagd {
        return Some(flagd_response(doc.version, doc.body.clone()));
    }
    if !wants_flagd {
        return None;
    }
    let set = if doc.version == 0 || doc.body.trim().is_empty() {
        crate::FlagSet::new()
    } else {
        crate::FlagSet::parse_json(&doc.body).ok()?
    };
    let export = crate::flagd::export(&set);
    let body = serde_json::to_string_pretty(&export.file).unwrap_or_default();
    let mut res = flagd_response(doc.version, body);
    // How many flags did not map (skipped) or map approximately: the file alone cannot say.
    res.headers_mut().insert(
        "x-flagd-export-notes",
        HeaderValue::from(export.notes.len()),
    );
    Some(res)
}

/// The refusal of a whole file: `400` when it is not JSON, `422` otherwise.
fn refused(e: &FlagdError) -> ApiError {
    let status = match e {
        FlagdError::Syntax(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(
        status,
        format!("{e}; nothing was stored: fix the file and PUT it again"),
    )
}

/// `PUT` of the root with a flagd file: compile it whole, then compare-and-set on `expected`.
pub(super) async fn put_set(
    admin: &Admin,
    actor: String,
    expected: u64,
    text: &str,
) -> Result<Response> {
    let owned = text.to_owned();
    // Compiling a large file takes CPU: on a blocking thread, as the native validation.
    let set = tokio::task::spawn_blocking(move || FlagdSet::parse(&owned))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "compiling the flagd file failed on its thread (a bug); nothing was stored: retry, and report it if it persists",
            )
        })?
        .map_err(|e| refused(&e))?;
    // Every instance tells the formats apart by content (see DocumentFormat): a file that would
    // read as a native set must say what it is, or the instances would refuse it.
    if !set.is_empty() && DocumentFormat::of(text) != DocumentFormat::Flagd {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the file's flags have no \"state\" (flagd requires it): give each flag its state, or add \"$schema\": \"https://flagd.dev/schema/v0/flags.json\"; nothing was stored",
        ));
    }
    let doc = admin.store.load().await.map_err(|e| ApiError::store(&e))?;
    if doc.version != expected {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            format!(
                "the flag set changed (now version {}, you sent {expected}): GET it again and reapply your change",
                doc.version
            ),
        ));
    }
    let change = Change::new(actor, "replaced the whole flag set with a flagd file").with_diff(
        diff::document_change((doc.version, &doc.body), (doc.version + 1, text)),
    );
    let version = admin
        .store
        .write(expected, text.to_owned(), change)
        .await
        .map_err(|e| {
            if e.is_conflict() {
                ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "the flag set changed while saving: GET it again and reapply your change",
                )
            } else {
                ApiError::store(&e)
            }
        })?;
    let problems: Vec<_> = set
        .problems()
        .iter()
        .map(|p| serde_json::json!({ "flag": p.flag, "message": p.message }))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        Some(format!("\"{version}\"")),
        &serde_json::json!({ "version": version, "format": "flagd", "problems": problems }),
    ))
}
