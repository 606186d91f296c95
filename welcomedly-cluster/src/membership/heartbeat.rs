//! The heartbeat task: membership's one writer. It heartbeats, writes presence changes and
//! reaps dead instances, through the instance's link. It does not reconnect: the link does; a
//! heartbeat that fails is tried again at the next tick.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::{PoisonError, Weak};

use tokio::time::Instant;
use welcomedly_redis::Retry;

use super::handle::{Inner, millis};
use super::presence::{PresenceCause, PresenceChange};
use crate::Error;

/// Presence keys per `HSET`/`HDEL`, so a resync of a large table stays a few bounded commands.
const CHUNK: usize = 500;
/// Reaps kept for a retry at most; beyond, the presence hashes expire by their TTL.
const MAX_PENDING_REAPS: usize = 1000;

/// One heartbeat, then the presence writes and reaps it calls for.
pub(crate) async fn beat(inner: &Inner) -> Result<(), Error> {
    welcomedly_redis::debug_assert_same_slot(
        "the membership heartbeat",
        &[
            &inner.keys.members,
            &inner.keys.info,
            &inner.keys.own_presence,
        ],
    );
    let mut invocation = inner.scripts.heartbeat.key(&inner.keys.members);
    invocation
        .key(&inner.keys.info)
        .key(&inner.keys.own_presence)
        .arg(inner.id.as_str())
        .arg(millis(inner.timeout))
        .arg(&inner.description)
        .arg(millis(inner.presence_ttl))
        .arg(millis(inner.interval));
    // Retry::Never: the reply of a second run would lose what the first one said (the
    // instances it reaped, whether this one had to rejoin). A failed heartbeat is tried again
    // at the next tick, well within the timeout.
    let reply: Vec<String> = inner
        .call("the membership heartbeat", Retry::Never, |mut c| {
            let invocation = &invocation;
            async move { invocation.invoke_async(&mut c).await }
        })
        .await?;
    let (joined, live, reaped) = match reply.as_slice() {
        [_now, joined, live, reaped @ ..] => (joined == "1", live.parse::<u32>().ok(), reaped),
        _ => {
            return Err(Error::redis(
                "the membership heartbeat came back in an unexpected shape: check that nothing else writes under the membership prefix",
                "unexpected reply",
            ));
        }
    };
    inner.heartbeats.fetch_add(1, Ordering::Relaxed);
    *inner
        .last_heartbeat
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(std::time::Instant::now());
    if inner.degraded.swap(false, Ordering::AcqRel) && inner.listed.load(Ordering::Relaxed) {
        tracing::info!(instance = %inner.id, "membership heartbeats reach Redis again");
    }
    if let Some(n) = live {
        inner.set_live(n);
    }
    if joined {
        let rejoin = inner.listed.swap(true, Ordering::AcqRel);
        let keys: Vec<String> = {
            let mut table = inner.presence.table();
            table.resync = true;
            if rejoin {
                table.counts.keys().cloned().collect()
            } else {
                Vec::new()
            }
        };
        if rejoin {
            // Redis lost this instance (restarted, or the instance was away past the timeout
            // and reaped, its presences announced as gone): it is back with all of them.
            tracing::info!(instance = %inner.id, presences = keys.len(), "listed as a member again");
            for key in keys {
                inner.presence.emit(
                    PresenceChange::Joined,
                    &inner.id.to_string(),
                    key,
                    PresenceCause::InstanceRejoined,
                );
            }
        } else {
            tracing::info!(instance = %inner.id, "joined the cluster");
        }
    }
    let pending: Vec<String> = {
        let mut p = inner
            .pending_reaps
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        p.extend(reaped.iter().cloned());
        std::mem::take(&mut *p)
    };
    write_presence(inner).await.inspect_err(|_| {
        keep_reaps(inner, pending.clone());
    })?;
    for (i, dead) in pending.iter().enumerate() {
        if let Err(e) = reap(inner, dead).await {
            keep_reaps(inner, pending.get(i..).unwrap_or_default().to_vec());
            return Err(e);
        }
    }
    Ok(())
}

/// Puts reaps back for the next heartbeat (bounded: the members set lists at most so many).
fn keep_reaps(inner: &Inner, reaps: Vec<String>) {
    let mut p = inner
        .pending_reaps
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    p.extend(reaps);
    p.dedup();
    p.truncate(MAX_PENDING_REAPS);
}

/// Writes what changed in the local presence table (all of it after a rejoin or a failed write).
pub(crate) async fn write_presence(inner: &Inner) -> Result<(), Error> {
    let (resync, present, absent) = {
        let mut table = inner.presence.table();
        if table.left || (!table.resync && table.pending.is_empty()) {
            return Ok(());
        }
        let resync = std::mem::take(&mut table.resync);
        let pending = std::mem::take(&mut table.pending);
        if resync {
            (true, table.counts.keys().cloned().collect(), Vec::new())
        } else {
            let (present, absent): (Vec<String>, Vec<String>) = pending
                .into_iter()
                .partition(|k| table.counts.contains_key(k));
            (false, present, absent)
        }
    };
    let key = &inner.keys.own_presence;
    let mut pipe = redis::pipe();
    pipe.atomic();
    if resync {
        pipe.cmd("DEL").arg(key).ignore();
    }
    for chunk in present.chunks(CHUNK) {
        let cmd = pipe.cmd("HSET").arg(key);
        for k in chunk {
            cmd.arg(k).arg(1);
        }
        cmd.ignore();
    }
    for chunk in absent.chunks(CHUNK) {
        pipe.cmd("HDEL").arg(key).arg(chunk).ignore();
    }
    pipe.cmd("PEXPIRE")
        .arg(key)
        .arg(millis(inner.presence_ttl))
        .ignore();
    // Idempotent (one MULTI/EXEC of HSET/HDEL/PEXPIRE, a DEL first on a resync): safe to run
    // again on a new connection.
    let written: Result<(), Error> = inner
        .call("writing presences", Retry::Once, |mut c| {
            let pipe = &pipe;
            async move { pipe.query_async(&mut c).await }
        })
        .await;
    if written.is_err() {
        // Rewrite the whole table next time: simpler than merging back what was taken, and
        // correct whatever changed meanwhile.
        inner.presence.table().resync = true;
    }
    written
}

/// Takes the presences of `dead` (reaped by this heartbeat) and announces each as gone.
async fn reap(inner: &Inner, dead: &str) -> Result<(), Error> {
    let presence = inner.keys.presence_of(dead);
    welcomedly_redis::debug_assert_same_slot(
        "the membership reap",
        &[&inner.keys.members, &presence],
    );
    let mut invocation = inner.scripts.reap.key(&inner.keys.members);
    invocation.key(presence).arg(dead);
    // Retry::Never: the script takes the keys and deletes them, so a second run would return
    // nothing and the presences would never be announced as gone.
    let keys: Vec<String> = inner
        .call(
            "reaping a dead instance's presences",
            Retry::Never,
            |mut c| {
                let invocation = &invocation;
                async move { invocation.invoke_async(&mut c).await }
            },
        )
        .await?;
    inner.reaped.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        instance = %inner.id,
        dead,
        presences = keys.len(),
        timeout_ms = millis(inner.timeout),
        "an instance missed its heartbeats past the timeout: removed it and its presences"
    );
    for key in keys {
        inner
            .presence
            .emit(PresenceChange::Left, dead, key, PresenceCause::InstanceDied);
    }
    Ok(())
}

/// The heartbeat loop. Holds the membership weakly, and strongly only for one bounded Redis
/// call at a time (never while sleeping), so dropping the last
/// [`Membership`](super::Membership) ends it (its `Drop` also aborts it).
pub(crate) async fn run(inner: Weak<Inner>) {
    let Some(strong) = inner.upgrade() else {
        return;
    };
    let presence = Arc::clone(&strong.presence);
    let mut next_beat = Instant::now() + strong.interval;
    let mut consecutive = 0u32;
    drop(strong);
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.is_left() {
            return;
        }
        if Instant::now() >= next_beat {
            let started = Instant::now();
            let result = beat(&strong).await;
            // Whatever happened, the next try is one interval later: the link reconnects by
            // itself, so there is no private retry loop here.
            next_beat = started + strong.interval;
            match result {
                Ok(()) => consecutive = 0,
                Err(e) => {
                    strong.failures.fetch_add(1, Ordering::Relaxed);
                    consecutive = consecutive.saturating_add(1);
                    log_failure(&strong, &e, consecutive);
                    strong.set_degraded(&e);
                }
            }
        } else if let Err(e) = write_presence(&strong).await {
            // Woken by a presence change between heartbeats, and the write failed.
            strong.failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "presence write failed: the whole table is rewritten with the next heartbeat");
        }
        drop(strong);
        if Instant::now() < next_beat {
            tokio::select! {
                () = tokio::time::sleep_until(next_beat) => {}
                () = presence.wake.notified() => {}
            }
        }
    }
}

/// Every failure in a row at debug, the first and every tenth at warn: a long outage stays
/// visible without flooding the log.
fn log_failure(inner: &Inner, e: &Error, consecutive: u32) {
    if consecutive <= 1 || consecutive.is_multiple_of(10) {
        tracing::warn!(error = %e, instance = %inner.id, consecutive, "membership cannot heartbeat into Redis");
    } else {
        tracing::debug!(error = %e, instance = %inner.id, consecutive, "membership cannot heartbeat into Redis");
    }
}
