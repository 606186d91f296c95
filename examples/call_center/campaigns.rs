//! Campaigns through the DB router: writes on the primary, reads on replicas, and
//! read-your-writes carried in a cookie — or, on the embedded default, one in-memory SQLite.
//!
//! Every campaign route needs a login (401 without one): reads any logged-in user, writes a
//! supervisor (403 for the others).
//!
//! `POST /api/campaigns` (`{"name", "status"?}`) answers 201 with the campaign;
//! `GET /api/campaigns?limit=&after=` lists them newest first, a page at a time (`limit` 1-100,
//! default 50): the answer's `next` is the cursor of the following page (`null` on the last),
//! a keyset on the id (`WHERE id < cursor`, never `OFFSET`: a page costs the same however deep,
//! and a campaign created meanwhile neither repeats nor hides a row). `GET /api/campaigns/{id}`
//! fetches one, and `GET /api/stats` counts them by status (behind the `campaign-stats` flag:
//! 404 for whom it is off). With PostgreSQL every read of a client that just wrote waits for
//! (or skips) replicas that have not replayed its write.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Json, Path, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Sqlite};
use welcomedly_cluster::session::Session;
use welcomedly_core::health::HealthRegistry;
use welcomedly_db::{Consistency, ConsistencyLayer, RouterConfig};
use welcomedly_flags::layer::FlagGateLayer;

use crate::problem::Problem;

/// The database behind the campaigns.
pub(crate) enum Db {
    /// A primary and its streaming replicas.
    Pg(welcomedly_db::Router<Postgres>),
    /// One in-memory SQLite (the embedded default: no server needed).
    Lite(welcomedly_db::Router<Sqlite>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
enum CampaignStatus {
    #[default]
    Active,
    Paused,
    Finished,
}

impl CampaignStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Finished => "finished",
        }
    }
}

#[derive(Debug, Serialize)]
struct Campaign {
    id: i64,
    name: String,
    status: String,
}

/// A row as sqlx reads it (no derive macros needed).
type Row = (i64, String, String);

impl From<Row> for Campaign {
    fn from((id, name, status): Row) -> Self {
        Self { id, name, status }
    }
}

#[derive(Deserialize)]
struct NewCampaign {
    name: String,
    #[serde(default)]
    status: CampaignStatus,
}

/// The PostgreSQL schema: sqlx's migrator, which serialises instances starting at once with an
/// advisory lock and records what ran in `_sqlx_migrations`, so each migration runs once.
static PG_MIGRATIONS: sqlx::migrate::Migrator =
    sqlx::migrate!("examples/call_center/migrations/postgres");

/// The same schema for the embedded SQLite, in SQLite's types (a second directory: the key and
/// timestamp columns are not portable between the two).
static LITE_MIGRATIONS: sqlx::migrate::Migrator =
    sqlx::migrate!("examples/call_center/migrations/sqlite");

/// Connects (PostgreSQL from `config`, else in-memory SQLite), runs the migrations, and
/// registers the router's health checks. With PostgreSQL the schema floor is then published,
/// so no read goes to a replica that has not replayed the schema.
pub(crate) async fn connect(
    config: Option<RouterConfig>,
    registry: &HealthRegistry,
    meter: &opentelemetry::metrics::Meter,
) -> Result<Db, Box<dyn std::error::Error>> {
    match config {
        Some(config) => {
            let router = config.connect().await?;
            router.register_health(registry);
            router.register_metrics(meter);
            migrate(&router).await?;
            Ok(Db::Pg(router))
        }
        None => {
            // One connection: every connection to `sqlite::memory:` is a database of its own.
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect("sqlite::memory:")
                .await?;
            LITE_MIGRATIONS
                .run(&pool)
                .await
                .map_err(|e| format!("cannot create the campaigns table in SQLite: {e}"))?;
            Ok(Db::Lite(welcomedly_db::Router::single(pool)))
        }
    }
}

/// Runs the PostgreSQL migrations on the primary, then publishes the schema floor.
pub(crate) async fn migrate(
    router: &welcomedly_db::Router<Postgres>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = router.write_connection().await?;
    if let Err(e) = PG_MIGRATIONS.run(&mut *conn).await {
        // The migrator's advisory lock is held by the session: end it rather than give the
        // connection back to the pool with the lock.
        conn.close_on_drop();
        return Err(format!(
            "cannot migrate the campaigns schema on the primary: {e}; fix the migration or the database and restart"
        )
        .into());
    }
    drop(conn);
    router.publish_floor().await?;
    Ok(())
}

/// The users who may create campaigns (the demo's one supervisor).
const SUPERVISORS: [&str; 1] = ["supervisor"];
/// Campaigns per page when the client does not say.
const DEFAULT_PAGE: i64 = 50;
/// The largest page a client may ask for.
const MAX_PAGE: i64 = 100;

pub(crate) fn routes(db: Arc<Db>, secret: &[u8], secure: bool) -> Router {
    Router::new()
        .route("/api/campaigns", get(list).post(create))
        .route("/api/campaigns/{id}", get(fetch))
        .route(
            "/api/stats",
            get(stats).layer(FlagGateLayer::new(crate::flags::STATS_FLAG)),
        )
        .with_state(db)
        // Outside the flag gate: an anonymous caller learns nothing, not even whether the
        // feature is on for some name.
        .route_layer(middleware::from_fn(require_login))
        .layer(ConsistencyLayer::new(secret).secure(secure))
}

/// 401 without a logged-in user; 403 for a write by someone who is not a supervisor (503 when
/// the session store is down).
async fn require_login(session: Session, req: Request, next: Next) -> Response {
    let user = match session.user_id().await {
        Ok(Some(user)) => user,
        Ok(None) => {
            return Problem::new(
                StatusCode::UNAUTHORIZED,
                "campaigns need a login: POST /auth/login first and send the session cookie",
            )
            .into_response();
        }
        Err(e) => return e.into_response(),
    };
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if !read && !SUPERVISORS.contains(&&*user.0) {
        return Problem::new(
            StatusCode::FORBIDDEN,
            "only a supervisor may create or change campaigns: log in as one",
        )
        .into_response();
    }
    next.run(req).await
}

fn db_error(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "campaigns: database call failed");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the campaigns database is not available right now: retry in a moment",
    )
    .into_response()
}

async fn create(
    State(db): State<Arc<Db>>,
    Extension(consistency): Extension<Consistency>,
    body: Result<Json<NewCampaign>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => return Problem::from(rejection).into_response(),
    };
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a campaign name is 1 to 200 characters",
        )
        .into_response();
    }
    const INSERT: &str =
        "INSERT INTO campaigns (name, status) VALUES ($1, $2) RETURNING id, name, status";
    let created = match &*db {
        Db::Pg(router) => {
            let status = body.status.as_str();
            let row = router
                .write_with(async |conn| {
                    sqlx::query_as::<_, Row>(INSERT)
                        .bind(name)
                        .bind(status)
                        .fetch_one(conn)
                        .await
                })
                .await;
            match (row, router.token().await) {
                (Ok(row), Ok(token)) => {
                    consistency.record(token);
                    Ok(row)
                }
                (Ok(row), Err(e)) => {
                    // Stored; only the read-your-writes guarantee of the next read is lost.
                    tracing::warn!(error = %e, "no WAL position after a write");
                    Ok(row)
                }
                (Err(e), _) => return db_error(e),
            }
        }
        Db::Lite(router) => match router.write() {
            Ok(pool) => {
                sqlx::query_as::<_, Row>(INSERT)
                    .bind(name)
                    .bind(body.status.as_str())
                    .fetch_one(&*pool)
                    .await
            }
            Err(e) => return db_error(e),
        },
    };
    match created {
        Ok(c) => (StatusCode::CREATED, Json(Campaign::from(c))).into_response(),
        Err(e) => db_error(e),
    }
}

/// `?limit=&after=` of the list, as text: parsed by hand so a bad one gets a problem that
/// says what to send.
#[derive(Deserialize)]
struct Page {
    limit: Option<String>,
    after: Option<String>,
}

impl Page {
    /// The page size and the id every row must be below.
    fn parse(&self) -> Result<(i64, i64), Problem> {
        let limit = match self.limit.as_deref() {
            None => DEFAULT_PAGE,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                _ => {
                    return Err(Problem::new(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "limit must be a whole number from 1 to {MAX_PAGE} (default {DEFAULT_PAGE})"
                        ),
                    ));
                }
            },
        };
        let below = match self.after.as_deref() {
            None => i64::MAX,
            Some(v) => match v.parse::<i64>() {
                Ok(id) if id > 0 && v.bytes().all(|b| b.is_ascii_digit()) => id,
                _ => {
                    return Err(Problem::new(
                        StatusCode::BAD_REQUEST,
                        "after is not a cursor: pass the `next` of the previous page as is, or leave it out for the first page",
                    ));
                }
            },
        };
        Ok((limit, below))
    }
}

async fn list(
    State(db): State<Arc<Db>>,
    Extension(consistency): Extension<Consistency>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let page = match page {
        Ok(Query(page)) => page,
        Err(_) => {
            return Problem::new(
                StatusCode::BAD_REQUEST,
                "the query string is not limit=N&after=CURSOR: fix it and retry",
            )
            .into_response();
        }
    };
    let (limit, below) = match page.parse() {
        Ok(p) => p,
        Err(problem) => return problem.into_response(),
    };
    // One row more than the page: whether there is a next page, without a COUNT.
    const LIST: &str =
        "SELECT id, name, status FROM campaigns WHERE id < $1 ORDER BY id DESC LIMIT $2";
    let rows = match &*db {
        Db::Pg(router) => {
            let token = consistency.token();
            sqlx::query_as::<_, Row>(LIST)
                .bind(below)
                .bind(limit + 1)
                .fetch_all(&*router.read_after(token.as_ref()).await)
                .await
        }
        Db::Lite(router) => {
            sqlx::query_as::<_, Row>(LIST)
                .bind(below)
                .bind(limit + 1)
                .fetch_all(&*router.read())
                .await
        }
    };
    match rows {
        Ok(mut rows) => {
            let more = rows.len() as i64 > limit;
            rows.truncate(usize::try_from(limit).unwrap_or(0));
            let next = more
                .then(|| rows.last().map(|(id, _, _)| id.to_string()))
                .flatten();
            let rows: Vec<Campaign> = rows.into_iter().map(Campaign::from).collect();
            Json(serde_json::json!({ "campaigns": rows, "next": next })).into_response()
        }
        Err(e) => db_error(e),
    }
}

async fn fetch(
    State(db): State<Arc<Db>>,
    Extension(consistency): Extension<Consistency>,
    Path(id): Path<i64>,
) -> Response {
    const ONE: &str = "SELECT id, name, status FROM campaigns WHERE id = $1";
    let row = match &*db {
        Db::Pg(router) => {
            let token = consistency.token();
            sqlx::query_as::<_, Row>(ONE)
                .bind(id)
                .fetch_optional(&*router.read_after(token.as_ref()).await)
                .await
        }
        Db::Lite(router) => {
            sqlx::query_as::<_, Row>(ONE)
                .bind(id)
                .fetch_optional(&*router.read())
                .await
        }
    };
    match row {
        Ok(Some(c)) => Json(Campaign::from(c)).into_response(),
        Ok(None) => Problem::new(
            StatusCode::NOT_FOUND,
            format!("there is no campaign {id}: list them with GET /api/campaigns"),
        )
        .into_response(),
        Err(e) => db_error(e),
    }
}

/// Campaigns counted by status: the flag-gated feature.
async fn stats(
    State(db): State<Arc<Db>>,
    Extension(consistency): Extension<Consistency>,
) -> Response {
    const COUNT: &str = "SELECT status, COUNT(*) FROM campaigns GROUP BY status ORDER BY status";
    let rows: Result<Vec<(String, i64)>, sqlx::Error> = match &*db {
        Db::Pg(router) => {
            let token = consistency.token();
            sqlx::query_as(COUNT)
                .fetch_all(&*router.read_after(token.as_ref()).await)
                .await
        }
        Db::Lite(router) => sqlx::query_as(COUNT).fetch_all(&*router.read()).await,
    };
    match rows {
        Ok(rows) => {
            let total: i64 = rows.iter().map(|(_, n)| n).sum();
            let by_status: serde_json::Map<String, serde_json::Value> = rows
                .into_iter()
                .map(|(status, n)| (status, n.into()))
                .collect();
            Json(serde_json::json!({
                "feature": crate::flags::STATS_FLAG,
                "campaigns": total,
                "by_status": by_status,
            }))
            .into_response()
        }
        Err(e) => db_error(e),
    }
}
