//! Logins: argon2 on a small fixed pool of hashing threads, and the keys the login limits count
//! by.
//!
//! - `POST /auth/login` checks an argon2id hash and logs the session in (a new id: no
//!   fixation). A wrong password and an unknown user get the same 401 body after the same work
//!   (unknown names are checked against a dummy hash).
//! - **Hashing is bounded** ([`HashPool`]): one thread per two cores (at least one), each
//!   reusing one preallocated 19 MiB argon2 buffer, fed through a bounded queue
//!   ([`QUEUED_PER_WORKER`] per thread). When the queue is full the login is answered at once with
//!   `503` problem+json and `Retry-After: 1`; nothing queues without bound, and a flood of logins
//!   costs the workers' buffers (~19 MiB each), never one buffer per login in flight.
//! - **Limits** (`app::rate_limits`): every login 20/min per client IP; failed logins (401) 5/min
//!   per client IP *and account*, and 10/min per account from every address (cluster-wide with
//!   Redis). The account is a SHA-256 digest of the user name ([`account_key`], a layer outside
//!   the limits that reads the small JSON body), never the name itself; unknown names are
//!   counted the same way, so a 429 says nothing about whether a user exists.
//! - **The NAT trade-off**: the failure budget is keyed by address *and* account, so one person
//!   behind a NAT who mistypes five times is throttled for that name only; everyone else behind
//!   the address logs in. The price: one address may try 20 logins a minute spread over many
//!   names (password spraying) instead of 5, and anyone may spend an account's budget of 10
//!   failures a minute, which then refuses that account's right password too for up to a minute
//!   (a throttle, not a lockout: the budget refills continuously).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Json, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use welcomedly_cluster::session::Session;
use welcomedly_core::rate_limit::DerivedKey;

use crate::problem::Problem;

/// The login route.
pub(crate) const LOGIN_PATH: &str = "/auth/login";

/// The name of the [`DerivedKey`] holding the digest of the user name a login names.
pub(crate) const ACCOUNT_KEY: &str = "account";

/// The largest login body read (a user name and a password in JSON are far smaller); larger
/// ones are refused with 413 before any limit or hash runs.
pub(crate) const MAX_LOGIN_BODY: usize = 16 * 1024;

/// Logins that may wait for a hashing thread, per thread: at ~25 ms a hash (release build), a
/// queued login waits at most ~0.2 s.
pub(crate) const QUEUED_PER_WORKER: usize = 8;

/// The longest part of a client-chosen user name written to the log.
const MAX_LOGGED_USERNAME: usize = 32;

/// Why the pool did not run a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoolError {
    /// Every thread is busy and the queue is full: answer 503 at once.
    Busy,
    /// The pool's threads are gone (cannot happen while the process runs; treated as busy).
    Gone,
}

type Job = Box<dyn FnOnce(&mut [Block]) + Send>;

/// A fixed pool of password-hashing threads, each with one argon2 memory buffer allocated at
/// start and reused for every hash, fed through a bounded queue.
///
/// Why not `spawn_blocking`: every blocking thread that hashes once allocates its own 19 MiB,
/// and glibc keeps each thread's arena after it exits (measured: 3 bursts of 40 failed logins
/// left 2 GB resident), while nothing bounds how many run at once.
#[derive(Clone)]
pub(crate) struct HashPool {
    jobs: SyncSender<Job>,
    workers: usize,
    params: Params,
}

impl std::fmt::Debug for HashPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashPool")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl HashPool {
    /// One thread per two cores (at least one: the other cores keep serving requests while a
    /// flood of logins hashes), [`QUEUED_PER_WORKER`] queued logins per thread, argon2id with
    /// the crate's default cost (19 MiB, t=2, p=1).
    pub(crate) fn for_this_machine() -> Result<Self, String> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = (cores / 2).max(1);
        Self::new(workers, workers * QUEUED_PER_WORKER, Params::default())
    }

    /// `workers` threads, at most `queue` jobs waiting, hashes with `params` (each thread holds
    /// `params.block_count()` KiB).
    pub(crate) fn new(workers: usize, queue: usize, params: Params) -> Result<Self, String> {
        let (jobs, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let blocks = params.block_count();
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || work(&rx, blocks))
                .map_err(|e| {
                    format!("cannot start the password-hashing threads ({e}): raise the process's thread limit")
                })?;
        }
        Ok(Self {
            jobs,
            workers: workers.max(1),
            params,
        })
    }

    /// Runs `job` on a hashing thread with that thread's memory, or fails at once with
    /// [`PoolError::Busy`] when the queue is full. A job whose caller is gone (the client hung
    /// up while it waited) is skipped.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut [Block]) -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |memory| {
            if !tx.is_closed() {
                let _ = tx.send(job(memory));
            }
        });
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => PoolError::Busy,
            TrySendError::Disconnected(_) => PoolError::Gone,
        })?;
        rx.await.map_err(|_| PoolError::Gone)
    }

    /// A PHC string (`$argon2id$v=19$m=…`) of `password` with a fresh random salt.
    pub(crate) async fn hash(&self, password: String) -> Result<String, String> {
        let params = self.params.clone();
        self.run(move |memory| hash_with(memory, &params, password.as_bytes()))
            .await
            .map_err(|_| "the password-hashing threads are unavailable".to_owned())?
    }
}

/// A hashing thread: takes jobs until the pool is dropped, with one buffer for its whole life.
fn work(jobs: &Mutex<Receiver<Job>>, blocks: usize) {
    let mut memory = vec![Block::default(); blocks];
    loop {
        // The lock is held only while waiting for the next job, never while hashing.
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else { return };
        // A panicking job must not take the thread (and its buffer) with it.
        if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut memory))).is_err() {
            tracing::error!(
                "a password-hashing job panicked: that login fails, the thread goes on"
            );
        }
    }
}

/// Hashes `password` with `params` in `memory`, as a PHC string.
fn hash_with(memory: &mut [Block], params: &Params, password: &[u8]) -> Result<String, String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot hash the password: {e}");
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let raw_salt = salt.decode_b64(&mut salt_buf).map_err(|e| fail(&e))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password, raw_salt, &mut out, memory)
        .map_err(|e| fail(&e))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| fail(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| fail(&e))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `stored`, computed in `memory` (a stored hash
/// needing more memory than the pool holds never matches). The comparison is constant-time
/// (`Output`'s equality).
fn verify_with(memory: &mut [Block], stored: &str, password: &[u8]) -> bool {
    let Ok(hash) = PasswordHash::new(stored) else {
        return false;
    };
    let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) = (
        Algorithm::try_from(hash.algorithm),
        Params::try_from(&hash),
        hash.salt,
        hash.hash,
    ) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = [0u8; Output::MAX_LENGTH];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, out, memory)
        .is_ok()
        && Output::new(out).is_ok_and(|o| o == expected)
}

/// The demo users: name → argon2 hash of the demo password.
pub(crate) struct Users {
    hashes: BTreeMap<&'static str, String>,
    /// Verified against for unknown names, so a login takes as long whoever it names.
    dummy: String,
}

/// The demo users' names.
pub(crate) const DEMO_USERS: [&str; 2] = ["agent", "supervisor"];

/// What a login check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checked {
    /// The user exists and the password is theirs.
    Valid,
    /// Unknown user or wrong password (the same answer, after the same work).
    Invalid,
    /// The hashing threads are all busy: retry in a moment.
    Busy,
}

impl Users {
    /// Hashes `password` for each demo user (argon2id, a random salt each) on the pool.
    pub(crate) async fn seed(pool: &HashPool, password: String) -> Result<Self, String> {
        let mut hashes = BTreeMap::new();
        for user in DEMO_USERS {
            hashes.insert(user, pool.hash(password.clone()).await?);
        }
        Ok(Users {
            hashes,
            dummy: pool.hash("not the password of anyone".to_owned()).await?,
        })
    }

    /// Whether `password` is `user`'s, checked on the pool.
    async fn check(self: &Arc<Self>, pool: &HashPool, user: &str, password: String) -> Checked {
        let known = self.hashes.contains_key(user);
        let users = self.clone();
        let user = user.to_owned();
        let verified = pool
            .run(move |memory| {
                let stored = users.hashes.get(user.as_str()).unwrap_or(&users.dummy);
                verify_with(memory, stored, password.as_bytes())
            })
            .await;
        match verified {
            Ok(true) if known => Checked::Valid,
            Ok(_) => Checked::Invalid,
            Err(PoolError::Busy | PoolError::Gone) => Checked::Busy,
        }
    }
}

/// What the login route shares.
pub(crate) struct Logins {
    users: Arc<Users>,
    pool: HashPool,
}

impl Logins {
    /// Starts the hashing pool and hashes the demo users' password on it.
    pub(crate) async fn start(demo_password: String) -> Result<Arc<Self>, String> {
        let pool = HashPool::for_this_machine()?;
        let users = Users::seed(&pool, demo_password).await?;
        Ok(Arc::new(Self {
            users: Arc::new(users),
            pool,
        }))
    }
}

/// `POST /auth/login`.
pub(crate) fn routes(logins: Arc<Logins>) -> Router {
    Router::new()
        .route(LOGIN_PATH, post(login))
        .with_state(logins)
}

#[derive(Deserialize)]
struct Login {
    username: String,
    password: String,
}

async fn login(
    State(logins): State<Arc<Logins>>,
    session: Session,
    body: Result<Json<Login>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => return Problem::from(rejection).into_response(),
    };
    match logins
        .users
        .check(&logins.pool, &body.username, body.password)
        .await
    {
        Checked::Valid => {}
        Checked::Busy => {
            // Before any answer about the user: the same for every name.
            return (
                [(header::RETRY_AFTER, "1")],
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many logins are being checked right now: retry in a second",
                ),
            )
                .into_response();
        }
        Checked::Invalid => {
            // The name is the client's choice: logged capped, never whole.
            tracing::info!(
                user = %crate::app::capped(&body.username, MAX_LOGGED_USERNAME),
                user_len = body.username.len(),
                "login refused"
            );
            return Problem::new(
                StatusCode::UNAUTHORIZED,
                "unknown user or wrong password: check both and retry (failed logins are rate limited)",
            )
            .into_response();
        }
    }
    if let Err(e) = session.log_in(body.username.as_str()).await {
        return e.into_response();
    }
    tracing::info!(user = %body.username, "login");
    Json(serde_json::json!({ "user": body.username })).into_response()
}

/// The digest a login's account is counted by: SHA-256 of the user name (domain-separated),
/// cut to 128 bits, in hex. Never the name: it is client text of any length and content.
pub(crate) fn account_digest(username: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"welcomedly.login-account\0");
    h.update(username.as_bytes());
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Only the field the account key needs; a body without it gets no account key (the handler
/// then answers 400/422 and no failure budget is charged).
#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow)]
    username: Cow<'a, str>,
}

/// A middleware outside the rate limits (`axum::middleware::from_fn`): for `POST /auth/login`,
/// reads the body (at most [`MAX_LOGIN_BODY`] bytes, else 413) and puts the [`account_digest`]
/// of the user name it names in the request's extensions as the [`DerivedKey`]
/// [`ACCOUNT_KEY`], which the per-account login limits count by. Other requests pass untouched.
pub(crate) async fn account_key(req: Request, next: Next) -> Response {
    if req.method() != Method::POST || req.uri().path() != LOGIN_PATH {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_LOGIN_BODY).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let too_large = e
                .into_inner()
                .downcast::<http_body_util::LengthLimitError>()
                .is_ok();
            return if too_large {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the login body is larger than {MAX_LOGIN_BODY} bytes: send only {{\"username\", \"password\"}}"
                    ),
                )
            } else {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "the login body could not be read: send it again",
                )
            }
            .into_response();
        }
    };
    if let Ok(named) = serde_json::from_slice::<Named<'_>>(&bytes) {
        parts.extensions.insert(DerivedKey::new(
            ACCOUNT_KEY,
            account_digest(&named.username),
        ));
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cheap cost for tests: 64 KiB, one pass.
    fn small() -> Params {
        Params::new(64, 1, 1, None).unwrap()
    }

    #[tokio::test]
    async fn hashes_verify_with_the_reused_memory_and_with_argon2_itself() {
        use argon2::password_hash::PasswordVerifier;
        let pool = HashPool::new(1, 4, small()).unwrap();
        let phc = pool.hash("s3cret".to_owned()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        // The standard verifier agrees (the PHC string is well-formed).
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"s3cret", &parsed)
                .is_ok()
        );
        for (password, expected) in [("s3cret", true), ("wrong", false), ("s3cret", true)] {
            let stored = phc.clone();
            let ok = pool
                .run(move |m| verify_with(m, &stored, password.as_bytes()))
                .await
                .unwrap();
            assert_eq!(ok, expected, "{password}");
        }
        // Garbage never matches.
        let ok = pool
            .run(|m| verify_with(m, "$argon2id$nonsense", b"x"))
            .await
            .unwrap();
        assert!(!ok);
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        // One thread, one queued job: the third concurrent job is refused without waiting.
        let pool = HashPool::new(1, 1, small()).unwrap();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let blocker: Job = Box::new(move |_| {
            let _ = wait.recv();
        });
        assert!(pool.jobs.try_send(blocker).is_ok());
        // Once the thread has taken the blocker, the filler takes the one queue place.
        while pool.jobs.try_send(Box::new(|_| {})).is_err() {
            std::thread::yield_now();
        }
        assert_eq!(pool.run(|_| ()).await, Err(PoolError::Busy));
        release.send(()).unwrap();
        // Free again once the thread has run the filler.
        let mut again = pool.run(|_| 7).await;
        for _ in 0..1000 {
            if again != Err(PoolError::Busy) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            again = pool.run(|_| 7).await;
        }
        assert_eq!(again, Ok(7));
    }

    #[tokio::test]
    async fn unknown_users_do_the_same_work_and_fail() {
        let pool = HashPool::new(1, 4, small()).unwrap();
        let users = Arc::new(Users::seed(&pool, "pw".to_owned()).await.unwrap());
        assert_eq!(
            users.check(&pool, "agent", "pw".to_owned()).await,
            Checked::Valid
        );
        assert_eq!(
            users.check(&pool, "agent", "no".to_owned()).await,
            Checked::Invalid
        );
        // The dummy's own password on an unknown name is still refused.
        assert_eq!(
            users
                .check(&pool, "ghost", "not the password of anyone".to_owned())
                .await,
            Checked::Invalid
        );
    }

    #[test]
    fn account_digests_are_fixed_length_and_hide_the_name() {
        let d = account_digest("agent");
        assert_eq!(d.len(), 32);
        assert!(d.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(d, account_digest("Agent"));
        assert_eq!(account_digest(&"x".repeat(4000)).len(), 32);
    }
}
