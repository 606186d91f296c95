//! Resolving the master through Sentinels. A placeholder with the signature the link calls:
//! the Sentinel engineer fills it in (branch `sentinel`).

use std::time::Duration;

use redis::ConnectionInfo;

use crate::config::RedisUrl;

/// Asks `sentinels` (`host:port` each) where `master` is now, within `timeout`, and returns
/// the master's address with `url`'s credentials and database
/// (see [`crate::link::info_at`]).
pub(crate) async fn resolve_master(
    sentinels: &[String],
    master: &str,
    url: &RedisUrl,
    timeout: Duration,
) -> Result<ConnectionInfo, String> {
    let _ = (sentinels, url, timeout);
    Err(format!(
        "cannot resolve Redis master {master:?} through Sentinel: Sentinel support is not built yet"
    ))
}
