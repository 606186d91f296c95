//! Where rollouts live in Redis: the state (fenced, compare-and-set), the lease, and the
//! fleet's per-arm counts in time buckets, every key of one flag on one Redis Cluster slot.
//!
//! | key | what |
//! |---|---|
//! | `{wd:rollout:<flag>}:state` | the [`RolloutState`] as JSON |
//! | `{wd:rollout:<flag>}:rev` | the state's revision (compare-and-set) |
//! | `{wd:rollout:<flag>}:lease` | the acting instance's fencing token, with a TTL |
//! | `{wd:rollout:<flag>}:holder` | the acting instance's id (for the status), with the lease's TTL |
//! | `{wd:rollout:<flag>}:fence` | the fencing counter (`INCR`) |
//! | `{wd:rollout:<flag>}:n:<unix second>` | one second of counts from every instance (a hash, 2 h TTL) |
//! | `{wd:rollout:<flag>}:decisions` | channel: every decision as JSON |
//! | `wd:rollouts` | the set of flags with an active rollout (at most [`MAX_GUARDED`]) |
//!
//! Every write of the state runs in one script that checks the lease holds the writer's token
//! (the controller) and the revision it read: a paused old leader whose lease expired is
//! refused, and so is a controller racing an operator's pause.

use std::fmt;
use std::time::Duration;

use welcomedly_redis::redis::{self, Script};
use welcomedly_redis::{Link, Retry};

use super::attribution::{ArmCounts, LATENCY_BUCKETS, MAX_GUARDED};
use super::controller::RolloutState;

/// The set of flags with an active rollout.
pub const REGISTRY_KEY: &str = "wd:rollouts";
/// How long a count bucket is kept.
const BUCKET_TTL_SECS: u64 = 2 * 3600;
/// Buckets read per round trip.
const READ_CHUNK: usize = 256;

/// A rollout store failure: Redis could not be reached or refused the call (the rollout
/// freezes), or the stored state is not a rollout.
#[derive(Debug)]
pub struct StoreFailure {
    message: String,
    not_run: bool,
}

impl StoreFailure {
    fn redis(what: &str, e: &welcomedly_redis::Error) -> Self {
        let why = if e.is_budget() {
            "took longer than the link's budget"
        } else if e.is_not_connected() {
            "found Redis not connected (the link reconnects in the background)"
        } else if e.is_server() {
            "was refused by Redis (check nothing else writes the wd:rollout keys)"
        } else {
            "failed on the connection"
        };
        Self {
            message: format!("the rollout {what} {why}: check that Redis runs and is reachable"),
            not_run: e.is_not_connected(),
        }
    }

    fn corrupt(flag: &str) -> Self {
        Self {
            message: format!(
                "the rollout state of {flag:?} in Redis is not a rollout: delete {{wd:rollout:{flag}}}:state and start again"
            ),
            not_run: false,
        }
    }

    /// Whether the call certainly did not run (no connection): counts may be put back.
    pub fn did_not_run(&self) -> bool {
        self.not_run
    }
}

impl fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreFailure {}

/// The outcome of a state write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Stored; the new revision.
    Ok(u64),
    /// Someone else wrote first; the current revision.
    Conflict(u64),
    /// The writer's lease is gone (another instance acts now).
    Fenced,
}

/// The rollouts of one Redis (or Redis Cluster), over the instance's [`Link`].
#[derive(Clone)]
pub struct RolloutStore {
    link: Link,
    write: Script,
    acquire: Script,
    renew: Script,
    flush: Script,
}

impl fmt::Debug for RolloutStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RolloutStore").finish_non_exhaustive()
    }
}

fn key(flag: &str, what: &str) -> String {
    format!("{{wd:rollout:{flag}}}:{what}")
}

/// `KEYS`: state, rev, lease. `ARGV`: token (`""` for an operator), expected revision, state
/// JSON, channel, decision JSON (`""`: nothing to publish).
const WRITE: &str = r"
if ARGV[1] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[1] then return {2, 0} end
local rev = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if rev ~= tonumber(ARGV[2]) then return {0, rev} end
redis.call('SET', KEYS[1], ARGV[3])
rev = redis.call('INCR', KEYS[2])
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return {1, rev}
";

/// `KEYS`: lease, fence, holder. `ARGV`: TTL ms, holder id. A new token when the lease is
/// free, else 0.
const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[1])
return token
";

/// `KEYS`: lease, holder. `ARGV`: token, TTL ms. 1 when renewed, 0 when the lease is another's.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
";

/// `KEYS`: the bucket. `ARGV`: TTL s, then field/increment pairs.
const FLUSH: &str = r"
for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
";

impl RolloutStore {
    /// A store on `link`.
    pub fn new(link: Link) -> Self {
        Self {
            link,
            write: Script::new(WRITE),
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            flush: Script::new(FLUSH),
        }
    }

    /// The flags with an active rollout (at most [`MAX_GUARDED`] are returned).
    ///
    /// # Errors
    ///
    /// Redis failed.
    pub async fn active(&self) -> Result<Vec<String>, StoreFailure> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(REGISTRY_KEY);
        let mut flags: Vec<String> = self
            .link
            .query(&cmd, Retry::Once)
            .await
            .map_err(|e| StoreFailure::redis("listing", &e))?;
        flags.sort();
        flags.truncate(MAX_GUARDED);
        Ok(flags)
    }

    /// Adds `flag` to (or removes it from) the active set. Adding fails when
    /// [`MAX_GUARDED`] rollouts are active already.
    ///
    /// # Errors
    ///
    /// Redis failed, or the set is full (`Ok(false)`).
    pub async fn set_active(&self, flag: &str, active: bool) -> Result<bool, StoreFailure> {
        if active {
            let current = self.active().await?;
            if current.len() >= MAX_GUARDED && !current.iter().any(|f| f == flag) {
                return Ok(false);
            }
        }
        let mut cmd = redis::cmd(if active { "SADD" } else { "SREM" });
        cmd.arg(REGISTRY_KEY).arg(flag);
        let _: i64 = self
            .link
            .query(&cmd, Retry::Once)
            .await
            .map_err(|e| StoreFailure::redis("registry update", &e))?;
        Ok(true)
    }

    /// The state of `flag`'s rollout and its revision (`None`: never started).
    ///
    /// # Errors
    ///
    /// Redis failed or the state is not a rollout.
    pub async fn load(&self, flag: &str) -> Result<Option<(RolloutState, u64)>, StoreFailure> {
        let (state_key, rev_key) = (key(flag, "state"), key(flag, "rev"));
        welcomedly_redis::debug_assert_same_slot("the rollout state read", &[&state_key, &rev_key]);
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(state_key).cmd("GET").arg(rev_key);
        let (state, rev): (Option<String>, Option<u64>) = self
            .link
            .query_pipe(&pipe, Retry::Once)
            .await
            .map_err(|e| StoreFailure::redis("state read", &e))?;
        let Some(state) = state else { return Ok(None) };
        let state: RolloutState =
            serde_json::from_str(&state).map_err(|_| StoreFailure::corrupt(flag))?;
        Ok(Some((state, rev.unwrap_or(0))))
    }

    /// Writes `state` if the revision is still `expected` and, for a controller (`token`), the
    /// lease still holds its token; publishes `decision` on the flag's decision channel.
    ///
    /// # Errors
    ///
    /// Redis failed (the write may or may not have happened: read the state again).
    pub async fn write(
        &self,
        state: &RolloutState,
        expected: u64,
        token: Option<u64>,
        decision: Option<&str>,
    ) -> Result<Written, StoreFailure> {
        let flag = &state.flag;
        let json = serde_json::to_string(state).unwrap_or_default();
        let keys = [key(flag, "state"), key(flag, "rev"), key(flag, "lease")];
        welcomedly_redis::debug_assert_same_slot("the rollout state write", &keys);
        let [state_key, rev_key, lease_key] = keys;
        let mut inv = self.write.prepare_invoke();
        inv.key(state_key)
            .key(rev_key)
            .key(lease_key)
            .arg(token.map(|t| t.to_string()).unwrap_or_default())
            .arg(expected)
            .arg(json)
            .arg(key(flag, "decisions"))
            .arg(decision.unwrap_or_default());
        let (code, rev): (i64, u64) = self
            .link
            .invoke(&inv, Retry::Never)
            .await
            .map_err(|e| StoreFailure::redis("state write", &e))?;
        Ok(match code {
            1 => Written::Ok(rev),
            2 => Written::Fenced,
            _ => Written::Conflict(rev),
        })
    }

    /// Takes the lease of `flag`'s controller for `ttl` when it is free: a new fencing token.
    ///
    /// # Errors
    ///
    /// Redis failed.
    pub async fn acquire(&self, flag: &str, ttl: Duration) -> Result<Option<u64>, StoreFailure> {
        self.acquire_as(flag, ttl, "").await
    }

    /// [`acquire`](Self::acquire), naming the holder (an instance id, shown by
    /// [`lease`](Self::lease)).
    ///
    /// # Errors
    ///
    /// Redis failed.
    pub async fn acquire_as(
        &self,
        flag: &str,
        ttl: Duration,
        holder: &str,
    ) -> Result<Option<u64>, StoreFailure> {
        let keys = [key(flag, "lease"), key(flag, "fence"), key(flag, "holder")];
        welcomedly_redis::debug_assert_same_slot("the rollout lease", &keys);
        let [lease_key, fence_key, holder_key] = keys;
        let mut inv = self.acquire.prepare_invoke();
        inv.key(lease_key)
            .key(fence_key)
            .key(holder_key)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(holder);
        let token: u64 = self
            .link
            .invoke(&inv, Retry::Never)
            .await
            .map_err(|e| StoreFailure::redis("lease", &e))?;
        Ok((token > 0).then_some(token))
    }

    /// Extends the lease when it still holds `token`.
    ///
    /// # Errors
    ///
    /// Redis failed.
    pub async fn renew(&self, flag: &str, token: u64, ttl: Duration) -> Result<bool, StoreFailure> {
        let keys = [key(flag, "lease"), key(flag, "holder")];
        welcomedly_redis::debug_assert_same_slot("the rollout lease renewal", &keys);
        let [lease_key, holder_key] = keys;
        let mut inv = self.renew.prepare_invoke();
        inv.key(lease_key)
            .key(holder_key)
            .arg(token)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let held: i64 = self
            .link
            .invoke(&inv, Retry::Once)
            .await
            .map_err(|e| StoreFailure::redis("lease renewal", &e))?;
        Ok(held == 1)
    }

    /// The current lease of `flag`'s controller: its token and holder (`""` when unnamed), or
    /// `None` when no instance holds it.
    ///
    /// # Errors
    ///
    /// Redis failed.
    pub async fn lease(&self, flag: &str) -> Result<Option<(u64, String)>, StoreFailure> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(key(flag, "lease"))
            .cmd("GET")
            .arg(key(flag, "holder"));
        let (token, holder): (Option<u64>, Option<String>) = self
            .link
            .query_pipe(&pipe, Retry::Once)
            .await
            .map_err(|e| StoreFailure::redis("lease read", &e))?;
        Ok(token.map(|t| (t, holder.unwrap_or_default())))
    }

    /// Adds one instance's counts into the bucket of second `sec`.
    ///
    /// # Errors
    ///
    /// Redis failed ([`StoreFailure::did_not_run`]: nothing was added).
    pub async fn flush(
        &self,
        flag: &str,
        sec: u64,
        control: &ArmCounts,
        treatment: &ArmCounts,
    ) -> Result<(), StoreFailure> {
        let mut inv = self.flush.prepare_invoke();
        inv.key(key(flag, &format!("n:{sec}"))).arg(BUCKET_TTL_SECS);
        for (prefix, c) in [("c", control), ("t", treatment)] {
            for (name, n) in [("r", c.requests), ("e", c.errors), ("n", c.counter)] {
                if n > 0 {
                    inv.arg(format!("{prefix}:{name}")).arg(n);
                }
            }
            for (i, n) in c.latency.iter().enumerate() {
                if *n > 0 {
                    inv.arg(format!("{prefix}:h{i}")).arg(*n);
                }
            }
        }
        let _: i64 = self
            .link
            .invoke(&inv, Retry::Never)
            .await
            .map_err(|e| StoreFailure::redis("count flush", &e))?;
        Ok(())
    }

    /// The fleet's counts of `flag` from second `from` to second `to`, both included.
    ///
    /// # Errors
    ///
    /// Redis failed: the caller must not decide on partial numbers.
    pub async fn counts(
        &self,
        flag: &str,
        from: u64,
        to: u64,
    ) -> Result<(ArmCounts, ArmCounts), StoreFailure> {
        let mut control = ArmCounts::default();
        let mut treatment = ArmCounts::default();
        let mut sec = from;
        while sec <= to {
            let end = to.min(sec + READ_CHUNK as u64 - 1);
            let mut pipe = redis::pipe();
            for s in sec..=end {
                pipe.cmd("HGETALL").arg(key(flag, &format!("n:{s}")));
            }
            let buckets: Vec<Vec<(String, u64)>> =
                self.link
                    .query_pipe(&pipe, Retry::Once)
                    .await
                    .map_err(|e| StoreFailure::redis("count read", &e))?;
            for bucket in buckets {
                for (field, n) in bucket {
                    add_field(&mut control, &mut treatment, &field, n);
                }
            }
            sec = end + 1;
        }
        Ok((control, treatment))
    }
}

fn add_field(control: &mut ArmCounts, treatment: &mut ArmCounts, field: &str, n: u64) {
    let Some((arm, name)) = field.split_once(':') else {
        return;
    };
    let c = match arm {
        "c" => control,
        "t" => treatment,
        _ => return,
    };
    let slot = match name {
        "r" => &mut c.requests,
        "e" => &mut c.errors,
        "n" => &mut c.counter,
        h => match h
            .strip_prefix('h')
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < LATENCY_BUCKETS)
            .and_then(|i| c.latency.get_mut(i))
        {
            Some(slot) => slot,
            None => return,
        },
    };
    *slot = slot.saturating_add(n);
}
