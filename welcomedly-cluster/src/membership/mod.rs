//! Membership and presence: which instances are alive, and who is connected to each.
//!
//! Every instance heartbeats into Redis (default every second). An instance whose last heartbeat
//! is older than the timeout (default 3 s) is dead: it is no longer listed by
//! [`Membership::members`], and the next heartbeat of any survivor reaps it. Leaving at drain
//! ([`Membership::leave`]) is immediate.
//!
//! - **Members** live in one sorted set, `{prefix}:members`, scored by expiry time (last
//!   heartbeat + timeout); descriptions (start time, metadata such as the address) in the hash
//!   `{prefix}:info`. Listing is `ZRANGEBYSCORE (now +inf`, never `SCAN`/`KEYS`; each heartbeat
//!   removes expired entries (at most 100 per heartbeat). Every key carries the `{prefix}` hash
//!   tag (the prefix may hold no brace), so on a Redis Cluster every script and the presence
//!   pipeline touch one slot (checked before each call by
//!   [`debug_assert_same_slot`](welcomedly_redis::debug_assert_same_slot)), and every key a
//!   script touches is declared. Keys written: the members sorted set, the descriptions hash,
//!   each instance's own presence hash (`{prefix}:presence:<instance>`).
//! - **Clock**: every "now" is Redis's (`TIME` inside the scripts, so on a cluster it is the
//!   clock of the node holding the keys, never a separate `TIME` that a cluster client sends
//!   to a random node), never an instance's. Clock
//!   skew between instances therefore cannot make a live instance look dead or keep a dead one
//!   listed; the only clock that matters is the Redis primary's, which moves forward at the
//!   same rate for everyone. (After a Redis failover the new primary's clock takes over; NTP
//!   keeps the step far below the timeout.) `started_at` is the instance's own clock and only
//!   informational.
//! - **Presence**: [`Membership::join`] marks a key (an agent, a user: app-chosen, bounded in
//!   length and count) present on this instance while its [`PresenceGuard`] lives, refcounted
//!   for several connections of one key. Each instance writes its own hash
//!   `{prefix}:presence:<instance>`; the cluster view ([`Membership::cluster_presence`]) reads
//!   the hashes of live members only, so a dead instance's presences disappear with it the
//!   moment its heartbeat expires (no ghosts), before any cleanup. The survivor that reaps a
//!   dead instance deletes its hash and announces its presences as gone; a hash nobody reaps
//!   (every instance died) expires by its own TTL (10 × timeout, at least 30 s).
//! - **Outages pause the clock**: after a failover the promoted replica holds the heartbeats
//!   of before the fault, all older than the outage. When no instance has heartbeated for more
//!   than two intervals and at most ten timeouts (the latest expiry in the set tells when the
//!   last heartbeat landed), the first heartbeat after the outage pushes every other member's
//!   expiry back by that gap before it reaps anything, and the listing counts from the last
//!   heartbeat that landed: a failover longer than the timeout declares no live instance dead
//!   (tested: a SIGKILLed cluster master, 2.1–2.3 s to promote, 2 s timeout: 3 of 3 listed
//!   throughout, where without it 0 were listed after the promotion). An instance that died
//!   just before the outage goes one timeout after heartbeats resume; after a longer gap (the
//!   whole fleet was stopped) nothing is shifted and stale members go at once. Every instance
//!   must use the same timeout.
//! - **Diffs**: joins and leaves are broadcast locally as typed, serde [`PresenceDiff`]s
//!   ([`Membership::presence_diffs`]); forward them to the event bus. Each change is announced
//!   by exactly one instance: the one the connection is on, or the one that reaped a dead
//!   instance. A diff is at most once: one reaped while Redis blinks can be lost — rebuild from
//!   [`Membership::cluster_presence`] after a lag or a reconnect.
//! - **Without Redis**: [`LocalPresence`] is the same table, guards and diffs within one
//!   process (the embedded default of a single instance).
//! - **Feeds**: [`Membership::feed`] keeps the rate limiter's
//!   [`LiveInstances`](crate::rate_limit::LiveInstances) at the live count (so
//!   `WELCOMEDLY_INSTANCES` need not be set by hand); [`Membership`] is a
//!   [`HealthCheck`](welcomedly_core::health::HealthCheck) that reports `Degraded` while it
//!   cannot heartbeat (since when the cluster has not heard from it).
//! - **Redis discipline**: every call goes through the instance's
//!   [`Link`](welcomedly_redis::Link) (its connection, reconnects, health check and metrics)
//!   within membership's budget (default 250 ms); a failed heartbeat is tried again at the next
//!   tick. After Redis restarts, each instance is listed again at its next heartbeat and
//!   rewrites its presences.
//! - **Drain**: [`Membership::leave_when_draining`] leaves the moment the drain starts (or call
//!   [`leave`](Membership::leave) yourself). Dropping the last clone without leaving stops the
//!   heartbeat and nothing else, exactly like a crash: the others drop the instance after the
//!   timeout.
//!
//! ```no_run
//! use welcomedly_cluster::membership::{Membership, MembershipConfig};
//! use welcomedly_cluster::rate_limit::{RedisBackend, RedisRateLimitConfig};
//! use welcomedly_core::InstanceId;
//! use welcomedly_redis::{Link, LinkConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let link = Link::connect(LinkConfig::new("redis://127.0.0.1:6379/")).await?;
//! let config = MembershipConfig::default().with_metadata("addr", "10.0.0.7:3000");
//! let membership = Membership::new(&link, config, InstanceId::generate()).await?;
//! let limiter = RedisBackend::new(&link, RedisRateLimitConfig::default()).await?;
//! membership.feed(limiter.live_instances()); // the fallback divides by the live count
//!
//! // One guard per connection (an SSE stream, a WebSocket) of agent 42.
//! let guard = membership.join("agent:42")?;
//! for member in membership.members().await? {
//!     println!("{} last heard at {:?}", member.id, member.last_heartbeat());
//! }
//! assert!(membership.cluster_presence().await?.contains("agent:42"));
//! drop(guard);
//!
//! // Register the health check (Degraded while heartbeats fail; never fails readiness):
//! // registry.register("membership", membership.clone(), Affects::Nothing);
//! // Leave at drain: gone from every instance's view at once.
//! // membership.leave_when_draining(drain.signal())?;
//! membership.leave().await?;
//! # Ok(())
//! # }
//! ```

mod config;
mod handle;
mod heartbeat;
mod member;
mod presence;
mod script;

pub use config::MembershipConfig;
pub use handle::Membership;
pub use member::Member;
pub use presence::{
    ClusterPresence, LocalPresence, PresenceCause, PresenceChange, PresenceDiff, PresenceGuard,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        send_sync::<Membership>();
        send_sync::<MembershipConfig>();
        send_sync::<PresenceGuard>();
        send_sync::<PresenceDiff>();
        send_sync::<ClusterPresence>();
        send_sync::<Member>();
    }
}
