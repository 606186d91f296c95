//! The Lua scripts of membership. Every script reads the time with Redis `TIME`, so all
//! instances judge liveness on one clock (see the module docs on clock skew), and every key a
//! script touches is declared and shares the `{prefix}` hash tag (one Redis Cluster slot).

/// One heartbeat: reaps members whose expiry has passed (at most 100 per call), (re)adds this
/// instance with expiry `now + timeout`, stores its description, refreshes the safety-net TTL of
/// its presence hash, and counts the live members.
///
/// **Outages pause the clock**: when no instance has heartbeated for more than two intervals
/// but less than ten timeouts (the latest expiry in the set, minus the timeout, is when the
/// last heartbeat of anyone landed), nobody could reach Redis — a failover, a frozen or
/// restarted primary — and every other member's expiry is pushed back by that gap before
/// anything is reaped, so a failover never declares live instances dead. A longer gap (the
/// whole fleet was stopped) shifts nothing: stale members are reaped at once.
///
/// `KEYS[1]` the members sorted set (member = instance id, score = expiry in Redis-time ms),
/// `KEYS[2]` the descriptions hash (instance id → JSON), `KEYS[3]` this instance's presence hash.
/// `ARGV[1]` instance id, `ARGV[2]` timeout in ms, `ARGV[3]` description JSON, `ARGV[4]`
/// presence-hash TTL in ms, `ARGV[5]` heartbeat interval in ms.
///
/// Returns `{now_ms, joined, live_count, reaped_id...}`: `joined` is 1 when this instance was
/// not listed as live before the call (first heartbeat, Redis restarted, or it was away longer
/// than the timeout), 0 otherwise.
pub(crate) const HEARTBEAT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local timeout = tonumber(ARGV[2])
local gap = 0
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if top[2] then
  gap = now - (tonumber(top[2]) - timeout)
  if gap <= 2 * tonumber(ARGV[5]) or gap > 10 * timeout then gap = 0 end
end
if gap > 0 then
  local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do
    if all[i] ~= id then redis.call('ZADD', KEYS[1], 'XX', tonumber(all[i + 1]) + gap, all[i]) end
  end
end
local own = redis.call('ZSCORE', KEYS[1], id)
local joined = 0
if (not own) or tonumber(own) <= now then joined = 1 end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)
local out = {}
local reaped = {}
for _, m in ipairs(expired) do
  if m ~= id then reaped[#reaped + 1] = m end
end
if #reaped > 0 then
  redis.call('ZREM', KEYS[1], unpack(reaped))
  redis.call('HDEL', KEYS[2], unpack(reaped))
end
redis.call('ZADD', KEYS[1], now + timeout, id)
redis.call('HSET', KEYS[2], id, ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
local live = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
out[1] = tostring(now)
out[2] = tostring(joined)
out[3] = tostring(live)
for _, m in ipairs(reaped) do out[#out + 1] = m end
return out
";

/// Takes the presences of a reaped instance: returns its presence keys and deletes its hash, or
/// returns nothing when the instance is listed again (it came back between the reap and this
/// call: its presences are its own again).
///
/// `KEYS[1]` the members sorted set, `KEYS[2]` the reaped instance's presence hash. `ARGV[1]`
/// the reaped instance's id.
pub(crate) const REAP: &str = r"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {} end
local keys = redis.call('HKEYS', KEYS[2])
redis.call('DEL', KEYS[2])
return keys
";

/// The live members: `{now_ms, id, expiry_ms, description, id, expiry_ms, description, ...}`
/// (a missing description is the empty string). Read-only. After an outage nobody could
/// heartbeat through (see [`HEARTBEAT`]), and before the first heartbeat after it, the members
/// live when the last heartbeat landed are listed (their expiry counted from then).
///
/// `KEYS[1]` the members sorted set, `KEYS[2]` the descriptions hash. `ARGV[1]` the timeout in
/// ms, `ARGV[2]` the heartbeat interval in ms.
pub(crate) const LIST: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local timeout = tonumber(ARGV[1])
local since = now
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if top[2] then
  local gap = now - (tonumber(top[2]) - timeout)
  if gap > 2 * tonumber(ARGV[2]) and gap <= 10 * timeout then since = now - gap end
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. since, '+inf', 'WITHSCORES')
local out = {tostring(now)}
for i = 1, #ids, 2 do
  out[#out + 1] = ids[i]
  out[#out + 1] = ids[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], ids[i]) or ''
end
return out
";

/// Leaves at once: removes this instance from the members, its description and its presence
/// hash.
///
/// `KEYS[1]` the members sorted set, `KEYS[2]` the descriptions hash, `KEYS[3]` this
/// instance's presence hash. `ARGV[1]` the instance id.
pub(crate) const LEAVE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return 1
";
