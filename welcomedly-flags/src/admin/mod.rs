//! The flags admin API (feature `axum`): list, get, put with `If-Match`, delete, and the history
//! of changes (who, when, diff), over a [`FlagStore`], behind an [`AdminAuth`] hook.
//!
//! | route | what |
//! |---|---|
//! | `GET {base}` | the whole flag set, `ETag: "<document version>"`; a stored flagd file as stored, and a native set exported as flagd with `Accept: application/vnd.flagd+json` or `?format=flagd` |
//! | `PUT {base}` | replace the whole set (flags and segments); `If-Match: "<version>"` required; a flagd file with `Content-Type: application/vnd.flagd+json` or `?format=flagd` (feature `flagd`) |
//! | `GET {base}/{key}` | one flag, `ETag` a hash of its definition |
//! | `PUT {base}/{key}` | create (`If-None-Match: *`) or replace (`If-Match: <etag>`) one flag |
//! | `DELETE {base}/{key}` | delete one flag (`If-Match` optional); refused while others depend on it |
//! | `GET {base}/_history?limit=N` | the latest changes, newest first |
//!
//! A history entry is `{"version", "actor", "at_unix_ms", "summary", "diff"}`. Its `diff` is
//! bounded (a few KiB, whatever the size of the flags) and says what changed without copying
//! the definitions:
//!
//! - one flag (`PUT`/`DELETE {base}/{key}`): `{"key", "before", "after", "changes", "more"}`;
//!   `before` and `after` are `{"etag", "bytes"}` of the definition (the `etag` is the ETag a
//!   `GET` of that version returned) or `null` when the flag did not exist; `changes` lists up
//!   to 16 paths inside the flag that changed (`"rules[0].clauses[1].values[2]"`, `""` for the
//!   whole flag when created or deleted), each with its `before` and `after` value, or
//!   `{"bytes", "digest"}` for a value over 128 bytes; `more` counts the paths not listed.
//! - the whole set (`PUT {base}`): `{"before", "after", "flags", "segments"}`; `before` and
//!   `after` are `{"version", "bytes", "digest", "flags", "segments"}` of each set; `flags` and
//!   `segments` list the keys `added`, `removed` and `changed` (up to 32 in all, `more` for the
//!   rest).
//!
//! The store keeps the history within a number of entries and a byte budget (see
//! [`DEFAULT_HISTORY_BYTES`](crate::store::DEFAULT_HISTORY_BYTES)).
//!
//! Every write validates the *whole* resulting set before it is stored (a change that breaks a
//! prerequisite elsewhere is refused): `422` with every problem listed (`{"problems": [{"path",
//! "message"}]}` inside the problem+json body). A stale `If-Match` is `412`; a missing one `428`.
//! Writes go through the store's compare-and-set, retried when another admin wrote meanwhile.
//! Every error is `application/problem+json`.
//!
//! **flagd files** (feature `flagd`): the whole set may be a flagd flag file, stored as written
//! and compiled by every instance ([`Snapshot::compile_document`]): see `PUT {base}` above. The
//! whole file is compiled before it is stored (not JSON: `400`; not a flagd file or over a
//! bound: `422`; nothing stored); a flag with a problem of its own loads and evaluates as
//! `PARSE_ERROR`, as flagd says, and the `200` answer lists it under `problems`. While the set
//! is a flagd file, the single-flag routes answer `409`: edit the file as a whole.
//!
//! ```
//! use std::sync::Arc;
//! use welcomedly_flags::admin::{self, BearerToken};
//! use welcomedly_flags::store::MemoryStore;
//!
//! let store = Arc::new(MemoryStore::new());
//! let app: axum::Router = admin::router(store, BearerToken::new("s3cret", "admin"), "/admin/flags");
//! # let _ = app;
//! ```

mod api_error;
mod auth;
mod diff;
#[cfg(feature = "flagd")]
mod flagd;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

pub use auth::{AdminAuth, AdminDenied, BearerToken};

pub(crate) use api_error::{ApiError, authorize, check_key};
pub(crate) use auth::{bearer, matches_secret};

use crate::model::{Flag, FlagSet};
use crate::store::{Change, Document, FlagStore};
use crate::{Snapshot, ValidationErrors};

/// How many times a write is retried when another writer changed the document meanwhile.
const CAS_ATTEMPTS: usize = 5;
/// The largest request body accepted (a whole flag set).
const MAX_BODY: usize = 1024 * 1024;

struct Admin {
    store: Arc<dyn FlagStore>,
    auth: Box<dyn AdminAuth>,
}

/// The admin routes under `base` (for instance `"/admin/flags"`), writing to `store` and
/// authorising every request with `auth`. Merge it into the application's router; instances
/// pick the changes up through their [`FlagSync`](crate::store::FlagSync).
pub fn router<S: Clone + Send + Sync + 'static>(
    store: Arc<dyn FlagStore>,
    auth: impl AdminAuth,
    base: &str,
) -> Router<S> {
    let base = base.trim_end_matches('/');
    let admin = Arc::new(Admin {
        store,
        auth: Box::new(auth),
    });
    Router::new()
        .route(base, get(get_set).put(put_set))
        .route(&format!("{base}/_history"), get(history))
        .route(
            &format!("{base}/{{key}}"),
            get(get_flag).put(put_flag).delete(delete_flag),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(admin)
}

type AdminState = State<Arc<Admin>>;

type Result<T> = std::result::Result<T, ApiError>;

/// `422`: the change would leave an invalid set.
fn invalid_set(errors: ValidationErrors) -> ApiError {
    ApiError::invalid(
        format!(
            "the change would leave an invalid flag set ({} problem(s)); nothing was stored: fix them and retry",
            errors.problems().len()
        ),
        errors,
    )
}

/// `?format=native|flagd` on the root.
#[derive(Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

impl FormatQuery {
    /// Whether `format=flagd`; any value but `flagd` and `native` is a `400`, and `flagd`
    /// without the feature a `415`.
    fn check(&self) -> Result<bool> {
        match self.format.as_deref() {
            None | Some("native") => Ok(false),
            Some("flagd") if cfg!(feature = "flagd") => Ok(true),
            Some("flagd") => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "this build does not read flagd files: enable the flagd feature of welcomedly-flags",
            )),
            Some(_) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "format must be native or flagd",
            )),
        }
    }

    #[cfg(feature = "flagd")]
    fn is_flagd(&self) -> bool {
        self.format.as_deref() == Some("flagd")
    }
}

async fn load_doc(admin: &Admin) -> Result<Document> {
    admin.store.load().await.map_err(|e| ApiError::store(&e))
}

async fn load(admin: &Admin) -> Result<(u64, FlagSet)> {
    parse_doc(load_doc(admin).await?)
}

/// The stored native set; `409` for a flagd file (edited as a whole only).
fn parse_doc(doc: Document) -> Result<(u64, FlagSet)> {
    if doc.version > 0 && crate::DocumentFormat::of(&doc.body) == crate::DocumentFormat::Flagd {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the flag set is a flagd file: GET and PUT it as a whole on the admin root (format=flagd)",
        ));
    }
    if doc.version == 0 || doc.body.trim().is_empty() {
        return Ok((doc.version, FlagSet::new()));
    }
    // What is stored was validated when written; a hand-edited document may not be: say so.
    let set = FlagSet::parse_json(&doc.body).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the stored flag set does not parse ({e}): replace it with PUT on the admin root"
            ),
        )
    })?;
    Ok((doc.version, set))
}

/// A stable tag of a flag's definition (FNV-1a over its canonical JSON), the same on every
/// instance.
fn etag(flag: &Flag) -> String {
    etag_of(&serde_json::to_string(flag).unwrap_or_default())
}

/// The ETag of a definition's canonical JSON `text`.
fn etag_of(text: &str) -> String {
    format!("\"{:016x}\"", crate::store::fnv1a64(text.as_bytes()))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn json_response(
    status: StatusCode,
    etag: Option<String>,
    body: &impl serde::Serialize,
) -> Response {
    let mut res = (status, axum::Json(body)).into_response();
    if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(&t).ok()) {
        res.headers_mut().insert(header::ETAG, tag);
    }
    res
}

/// Validates `set` as a whole by compiling it, on a blocking thread: a set's regular
/// expressions take milliseconds of CPU to compile, which would stall every other request of
/// this async worker thread.
async fn validate(set: &FlagSet, version: u64) -> Result<()> {
    let set = set.clone();
    tokio::task::spawn_blocking(move || Snapshot::compile(&set, version).map(drop))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "validating the flag set failed on its thread (a bug); nothing was stored: retry, and report it if it persists",
            )
        })?
        .map_err(invalid_set)
}

/// Validates `next` as a whole, then writes it if the store is still at `version`.
async fn store(admin: &Admin, version: u64, next: &FlagSet, change: Change) -> Result<u64> {
    validate(next, version + 1).await?;
    admin
        .store
        .write(version, next.to_json(), change)
        .await
        .map_err(|e| {
            if e.is_conflict() {
                ApiError::new(StatusCode::CONFLICT, "conflict")
            } else {
                ApiError::store(&e)
            }
        })
}

async fn get_set(
    State(admin): AdminState,
    headers: HeaderMap,
    Query(q): Query<FormatQuery>,
) -> Result<Response> {
    authorize(admin.auth.as_ref(), &headers)?;
    q.check()?;
    let doc = load_doc(&admin).await?;
    #[cfg(feature = "flagd")]
    if let Some(res) = flagd::get_set(&doc, flagd::get_is_flagd(&headers, &q)) {
        return Ok(res);
    }
    let (version, set) = parse_doc(doc)?;
    Ok(json_response(
        StatusCode::OK,
        Some(format!("\"{version}\"")),
        &serde_json::json!({ "version": version, "flags": set.flags, "segments": set.segments }),
    ))
}

async fn put_set(
    State(admin): AdminState,
    headers: HeaderMap,
    Query(q): Query<FormatQuery>,
    body: Bytes,
) -> Result<Response> {
    let actor = authorize(admin.auth.as_ref(), &headers)?;
    q.check()?;
    let expected = header_str(&headers, header::IF_MATCH)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::PRECONDITION_REQUIRED,
                "send If-Match with the ETag of GET on the admin root, so a concurrent change is not overwritten",
            )
        })?
        .trim_matches('"')
        .parse::<u64>()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "If-Match must be the quoted document version from the ETag"))?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the body is not UTF-8 JSON"))?;
    #[cfg(feature = "flagd")]
    if flagd::put_is_flagd(&headers, &q) {
        return flagd::put_set(&admin, actor, expected, text).await;
    }
    let next = FlagSet::parse_json(text).map_err(invalid_set)?;
    // A native set may replace a flagd file: the diff then starts from an empty set.
    let (version, current) = match load(&admin).await {
        Err(p) if p.status == StatusCode::CONFLICT => {
            (load_doc(&admin).await?.version, FlagSet::new())
        }
        other => other?,
    };
    if version != expected {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            format!(
                "the flag set changed (now version {version}, you sent {expected}): GET it again and reapply your change"
            ),
        ));
    }
    let change = Change::new(actor, "replaced the whole flag set")
        .with_diff(diff::set_change((version, &current), (version + 1, &next)));
    let new_version = match store(&admin, version, &next, change).await {
        Err(p) if p.status == StatusCode::CONFLICT => {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "the flag set changed while saving: GET it again and reapply your change",
            ));
        }
        other => other?,
    };
    Ok(json_response(
        StatusCode::OK,
        Some(format!("\"{new_version}\"")),
        &serde_json::json!({ "version": new_version }),
    ))
}

async fn get_flag(
    State(admin): AdminState,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Response> {
    authorize(admin.auth.as_ref(), &headers)?;
    check_key(&key)?;
    let (_, set) = load(&admin).await?;
    let flag = set.flags.get(&key).ok_or_else(|| not_found(&key))?;
    Ok(json_response(StatusCode::OK, Some(etag(flag)), flag))
}

fn not_found(key: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("there is no flag {key:?}: create it with PUT (If-None-Match: *)"),
    )
}

/// What a single-flag write does to the set it loaded; `Err` stops the write.
type Edit<'a> = &'a (dyn Fn(&mut FlagSet) -> Result<(String, serde_json::Value)> + Send + Sync);

/// Loads, checks preconditions and edits, validates and writes, retrying on a concurrent write.
async fn edit_flag(
    admin: &Admin,
    headers: &HeaderMap,
    key: &str,
    actor: &str,
    edit: Edit<'_>,
) -> Result<(u64, Option<String>)> {
    let if_match = header_str(headers, header::IF_MATCH);
    let if_none_match = header_str(headers, header::IF_NONE_MATCH);
    for _ in 0..CAS_ATTEMPTS {
        let (version, mut set) = load(admin).await?;
        match (set.flags.get(key), if_match, if_none_match) {
            (Some(_), _, Some("*")) => {
                return Err(ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    format!(
                        "flag {key:?} exists already: send If-Match with its ETag to replace it"
                    ),
                ));
            }
            (Some(flag), Some(tag), _) if tag != etag(flag) && tag != "*" => {
                return Err(ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    format!(
                        "flag {key:?} changed since you read it: GET it again and reapply your change"
                    ),
                ));
            }
            (None, Some(_), _) => return Err(not_found(key)),
            _ => {}
        }
        let (summary, diff) = edit(&mut set)?;
        let change = Change::new(actor, summary).with_diff(diff);
        match store(admin, version, &set, change).await {
            Ok(v) => return Ok((v, set.flags.get(key).map(etag))),
            Err(p) if p.status == StatusCode::CONFLICT => continue,
            Err(p) => return Err(p),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "the flag set kept changing while saving: retry",
    ))
}

async fn put_flag(
    State(admin): AdminState,
    headers: HeaderMap,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let actor = authorize(admin.auth.as_ref(), &headers)?;
    check_key(&key)?;
    let flag: Flag = {
        let mut de = serde_json::Deserializer::from_slice(&body);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = match e.path().to_string() {
                p if p == "." => format!("flags.{key}"),
                p => format!("flags.{key}.{p}"),
            };
            invalid_set(ValidationErrors::from(vec![crate::Problem::new(
                path,
                format!("{}; fix the JSON of the flag", e.inner()),
            )]))
        })?
    };
    let requires_precondition = header_str(&headers, header::IF_MATCH).is_none()
        && header_str(&headers, header::IF_NONE_MATCH) != Some("*");
    let edit = |set: &mut FlagSet| {
        let before = set.flags.get(&key).cloned();
        if before.is_some() && requires_precondition {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_REQUIRED,
                format!(
                    "flag {key:?} exists: send If-Match with its ETag (from GET) to replace it"
                ),
            ));
        }
        let summary = match before {
            Some(_) => format!("changed flag {key}"),
            None => format!("created flag {key}"),
        };
        let diff = diff::flag_change(&key, before.as_ref(), Some(&flag));
        set.flags.insert(key.clone(), flag.clone());
        Ok((summary, diff))
    };
    let (version, tag) = edit_flag(&admin, &headers, &key, &actor, &edit).await?;
    Ok(json_response(
        StatusCode::OK,
        tag,
        &serde_json::json!({ "version": version, "key": key }),
    ))
}

async fn delete_flag(
    State(admin): AdminState,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Response> {
    let actor = authorize(admin.auth.as_ref(), &headers)?;
    check_key(&key)?;
    let edit = |set: &mut FlagSet| {
        let before = set.flags.remove(&key).ok_or_else(|| not_found(&key))?;
        Ok((
            format!("deleted flag {key}"),
            diff::flag_change(&key, Some(&before), None),
        ))
    };
    let (version, _) = edit_flag(&admin, &headers, &key, &actor, &edit).await?;
    Ok(json_response(
        StatusCode::OK,
        None,
        &serde_json::json!({ "version": version, "deleted": key }),
    ))
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

async fn history(
    State(admin): AdminState,
    headers: HeaderMap,
    Query(q): Query<HistoryQuery>,
) -> Result<Response> {
    authorize(admin.auth.as_ref(), &headers)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let changes = admin
        .store
        .history(limit)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(json_response(StatusCode::OK, None, &changes))
}
