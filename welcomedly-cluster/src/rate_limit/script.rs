//! The Lua scripts of the Redis backend: GCRA on Redis server time, the same arithmetic as
//! `welcomedly_core::rate_limit::backend::Gcra`, in integer microseconds.
//!
//! Lua numbers are doubles: microseconds since the epoch (~1.8e15) are exact below 2^53 (~9e15),
//! and TATs are written with `%.0f` because Lua's default number format (`%.14g`) would round them.

/// Decides every check of one request atomically, charging them only if all admit (deciding and
/// charging in one script, so concurrent requests can never all pass on one unspent quota).
///
/// `KEYS[i]`: the state key of check i. `ARGV`: per check, 4 values — interval µs, window µs,
/// charge (0/1), shadow (0/1). Returns, per check, 4 integers: allowed (0/1), remaining,
/// reset µs, retry-after µs.
pub const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local out = {}
local tats = {}
local admit = true
for i = 1, n do
  local b = (i - 1) * 4
  local interval = tonumber(ARGV[b + 1])
  local window = tonumber(ARGV[b + 2])
  local tat = tonumber(redis.call('GET', KEYS[i]) or 0) or 0
  if tat < now then tat = now end
  local new_tat = tat + interval
  local ahead = new_tat - now
  local o = (i - 1) * 4
  if ahead <= window then
    out[o + 1] = 1
    out[o + 2] = math.floor((window - ahead) / interval)
    out[o + 3] = ahead
    out[o + 4] = 0
    tats[i] = new_tat
  else
    out[o + 1] = 0
    out[o + 2] = 0
    out[o + 3] = tat - now
    out[o + 4] = ahead - window
    tats[i] = false
    if ARGV[b + 4] ~= '1' then admit = false end
  end
end
if admit then
  for i = 1, n do
    if tats[i] and ARGV[(i - 1) * 4 + 3] == '1' then
      local ttl = math.ceil((tats[i] - now) / 1000)
      if ttl < 1 then ttl = 1 end
      redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
    end
  end
end
return out
";

/// Gives back one admitted request's charge (a policy that charges only some response
/// statuses reserves at admission and refunds the others; a request one slot's checks admitted
/// and another slot's rejected gives back what the first charged): each key's TAT moves back
/// one interval, never below now; a key that would be whole again is deleted.
///
/// `KEYS[i]`: a state key (every key in one Redis Cluster slot); `ARGV[i]`: its interval µs.
/// Returns how many keys were refunded (for one key: 1 when something was refunded, 0
/// otherwise).
pub const REFUND: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local refunded = 0
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or 0) or 0
  if tat > now then
    tat = tat - tonumber(ARGV[i])
    if tat <= now then
      redis.call('DEL', KEYS[i])
    else
      local ttl = math.ceil((tat - now) / 1000)
      if ttl < 1 then ttl = 1 end
      redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', ttl)
    end
    refunded = refunded + 1
  end
end
return refunded
";

/// Decides the checks of several requests in one call (coalesced: requests that arrived while
/// the previous call was in flight), each request exactly as [`ACQUIRE`] would, one after the
/// other in arrival order: a request is charged only if all its checks admit, a rejected one
/// consumes nothing, and a later request sees what an earlier one charged. Every request of a
/// call is decided at the same Redis server time.
///
/// `KEYS`: the state keys of every check, request after request. `ARGV[1]`: the number of
/// requests; then per request its number of checks `n`, followed by `n` × 4 values as in
/// [`ACQUIRE`] (interval µs, window µs, charge 0/1, shadow 0/1). Returns, per check in `KEYS`
/// order, 4 integers as [`ACQUIRE`] does.
pub const ACQUIRE_BATCH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
local o = 0
local k = 0
local a = 2
for r = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  local tats = {}
  local admit = true
  for i = 1, n do
    local b = a + (i - 1) * 4
    local interval = tonumber(ARGV[b + 1])
    local window = tonumber(ARGV[b + 2])
    local tat = tonumber(redis.call('GET', KEYS[k + i]) or 0) or 0
    if tat < now then tat = now end
    local new_tat = tat + interval
    local ahead = new_tat - now
    if ahead <= window then
      out[o + 1] = 1
      out[o + 2] = math.floor((window - ahead) / interval)
      out[o + 3] = ahead
      out[o + 4] = 0
      tats[i] = new_tat
    else
      out[o + 1] = 0
      out[o + 2] = 0
      out[o + 3] = tat - now
      out[o + 4] = ahead - window
      tats[i] = false
      if ARGV[b + 4] ~= '1' then admit = false end
    end
    o = o + 4
  end
  if admit then
    for i = 1, n do
      if tats[i] and ARGV[a + (i - 1) * 4 + 3] == '1' then
        local ttl = math.ceil((tats[i] - now) / 1000)
        if ttl < 1 then ttl = 1 end
        redis.call('SET', KEYS[k + i], string.format('%.0f', tats[i]), 'PX', ttl)
      end
    end
  end
  k = k + n
  a = a + 1 + n * 4
end
return out
";
