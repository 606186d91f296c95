//! [`Conn`]: what a call on the link runs on — the shared multiplexed connection to one node, or
//! the cluster connection — and, on a cluster, the script cache that makes `NOSCRIPT` a detour
//! on the key's node instead of a fan-out to every node.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, ErrorKind, Pipeline, RedisFuture, ServerErrorKind, Value};

/// Scripts the cluster connection knows the source of, at most this many (components have a
/// handful; a program loading scripts in a loop must not grow it without bound).
const MAX_SCRIPTS: usize = 256;

/// A connection a call on the [`Link`](crate::Link) runs on: what the closure given to
/// [`Link::call_within`](crate::Link::call_within) receives. Use it like any redis-rs async
/// connection (`cmd.query_async(&mut conn)`, `invocation.invoke_async(&mut conn)`).
///
/// On one node (or a Sentinel's master) it is the shared multiplexed connection. On a Redis
/// Cluster it is the cluster connection, which routes each command to the node serving its
/// key's slot and follows `MOVED`/`ASK`; there:
/// - `EVALSHA` answered `NOSCRIPT` (a promoted replica, a `SCRIPT FLUSH`) is sent again as
///   `EVAL` with the same keys, so to the same node — never `SCRIPT LOAD`, which goes to every
///   node and fails while one is down;
/// - `SCRIPT LOAD` is not sent: the source is kept for that fallback and its SHA1 answered, as
///   Redis would (redis-rs' `invoke_async` loads a script after `NOSCRIPT`);
/// - `PING` goes to one node (redis-rs would send it to every primary, failing while one is
///   down).
///
/// Every key of one command, pipeline or script must share a slot on a cluster.
#[derive(Clone)]
pub struct Conn(Kind);

#[derive(Clone)]
enum Kind {
    Node(MultiplexedConnection),
    Cluster {
        conn: ClusterConnection,
        scripts: Arc<Scripts>,
    },
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Kind::Node(_) => "Conn::Node",
            Kind::Cluster { .. } => "Conn::Cluster",
        })
    }
}

impl Conn {
    pub(crate) fn node(conn: MultiplexedConnection) -> Self {
        Self(Kind::Node(conn))
    }

    pub(crate) fn cluster(conn: ClusterConnection, scripts: Arc<Scripts>) -> Self {
        Self(Kind::Cluster { conn, scripts })
    }

    /// Whether this is a Redis Cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self.0, Kind::Cluster { .. })
    }

    /// The cluster connection, on a cluster.
    pub(crate) fn as_cluster(&self) -> Option<&ClusterConnection> {
        match &self.0 {
            Kind::Cluster { conn, .. } => Some(conn),
            Kind::Node(_) => None,
        }
    }
}

/// Script sources by SHA1, for `EVAL` after `NOSCRIPT` on a cluster.
#[derive(Default)]
pub(crate) struct Scripts(Mutex<HashMap<String, Arc<[u8]>>>);

impl Scripts {
    fn get(&self, sha: &[u8]) -> Option<Arc<[u8]>> {
        let sha = std::str::from_utf8(sha).ok()?.to_ascii_lowercase();
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&sha)
            .cloned()
    }

    /// Keeps `source`; its SHA1, or `None` when the cache is full.
    fn insert(&self, source: &[u8]) -> Option<String> {
        let text = String::from_utf8_lossy(source);
        let sha = redis::Script::new(&text).get_hash().to_owned();
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(&sha) {
            if map.len() >= MAX_SCRIPTS {
                return None;
            }
            map.insert(sha.clone(), Arc::from(source));
        }
        Some(sha)
    }
}

/// The command's name and its arguments after it.
fn name_of(cmd: &Cmd) -> Option<(Vec<u8>, Vec<&[u8]>)> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(bytes) => bytes,
        // A cursor argument: never a name, a script or its hash.
        _ => b"".as_slice(),
    });
    let name = args.next()?.to_ascii_uppercase();
    Some((name, args.collect()))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let (conn, scripts) = match &mut self.0 {
            Kind::Node(conn) => return conn.req_packed_command(cmd),
            Kind::Cluster { conn, scripts } => (conn, scripts),
        };
        let Some((name, args)) = name_of(cmd) else {
            return conn.req_packed_command(cmd);
        };
        match (name.as_slice(), args.as_slice()) {
            (b"SCRIPT", [sub, source]) if sub.eq_ignore_ascii_case(b"LOAD") => {
                let answer = scripts.insert(source).map(|sha| Value::BulkString(sha.into_bytes())).ok_or_else(|| {
                    redis::RedisError::from((
                        ErrorKind::Client,
                        "too many distinct Lua scripts for the Redis Cluster link",
                        format!("it keeps at most {MAX_SCRIPTS} script sources to recover from NOSCRIPT; load fewer scripts"),
                    ))
                });
                std::future::ready(answer).boxed()
            }
            (b"PING", []) => conn
                .route_command(
                    cmd.clone(),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                )
                .boxed(),
            (b"EVALSHA", [sha, rest @ ..]) => {
                let scripts = scripts.clone();
                let (sha, rest) = (sha.to_vec(), rest.to_vec());
                async move {
                    let first = conn.req_packed_command(cmd).await;
                    // redis-rs hands a server error back as a value (converted later) or,
                    // after its own handling, as an error: either may be `NOSCRIPT`.
                    let noscript = match &first {
                        Ok(Value::ServerError(e)) => e.kind() == Some(ServerErrorKind::NoScript),
                        Err(e) => e.kind() == ErrorKind::Server(ServerErrorKind::NoScript),
                        Ok(_) => false,
                    };
                    if !noscript {
                        return first;
                    }
                    // Unknown source: redis-rs' `invoke_async` loads it (kept here) and calls
                    // again, which finds it.
                    let Some(source) = scripts.get(&sha) else {
                        return first;
                    };
                    let mut eval = redis::cmd("EVAL");
                    eval.arg(&*source);
                    for arg in &rest {
                        eval.arg(*arg);
                    }
                    conn.req_packed_command(&eval).await
                }
                .boxed()
            }
            _ => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Kind::Node(conn) => conn.req_packed_commands(pipeline, offset, count),
            Kind::Cluster { conn, .. } => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Kind::Node(conn) => conn.get_db(),
            Kind::Cluster { conn, .. } => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_sources_are_kept_by_their_sha1_and_bounded() {
        let scripts = Scripts::default();
        let source = "return redis.call('GET', KEYS[1])";
        let sha = scripts.insert(source.as_bytes()).unwrap();
        assert_eq!(sha, redis::Script::new(source).get_hash());
        // Redis answers hashes in lower case; either case finds it.
        assert_eq!(
            scripts.get(sha.to_ascii_uppercase().as_bytes()).as_deref(),
            Some(source.as_bytes())
        );
        assert!(scripts.get(b"0000").is_none());
        for i in 1..MAX_SCRIPTS {
            assert!(scripts.insert(format!("return {i}").as_bytes()).is_some());
        }
        assert!(scripts.insert(b"return 'one too many'").is_none());
        // A source already kept is still answered when full.
        assert_eq!(scripts.insert(source.as_bytes()), Some(sha));
    }

    #[test]
    fn a_commands_name_and_arguments() {
        let mut cmd = redis::cmd("evalsha");
        cmd.arg("abc").arg(1).arg("k");
        let (name, args) = name_of(&cmd).unwrap();
        assert_eq!(name, b"EVALSHA");
        assert_eq!(args, vec![b"abc".as_slice(), b"1", b"k"]);
    }
}
