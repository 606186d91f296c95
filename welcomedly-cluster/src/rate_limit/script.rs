//! The Lua scripts of the Redis backend: GCRA on Redis server time, the same arithmetic as
//! `welcomedly_core::rate_limit::backend::Gcra`, in integer microseconds.
//!
//! Lua numbers are doubles: microseconds since the epoch (~1.8e15) are exact below 2^53 (~9e15),
//! and TATs are written with `%.0f` because Lua's default number format (`%.14g`) would round them.

// The two acquire scripts share their GCRA core: one Lua fragment, composed at compile time
// (`concat!` of literal macros, so the scripts stay `&'static str` constants with no cost at
// run time). The fragment decides one request's `n` checks, whose keys start after `KEYS[k]`
// and whose 4 arguments each start after `ARGV[a]`, writing 4 values per check from `out[o + 1]`
// on, and charges them only if all admit.

/// Redis server time in microseconds, as `now`.
macro_rules! server_now {
    () => {
        "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"
    };
}

/// One request's checks, decided and (all admitted) charged: GCRA with a cost of one interval.
macro_rules! decide_request {
    () => {
        "local tats = {}
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
"
    };
}

/// Decides every check of one request atomically, charging them only if all admit (deciding and
/// charging in one script, so concurrent requests can never all pass on one unspent quota).
///
/// `KEYS[i]`: the state key of check i. `ARGV`: per check, 4 values — interval µs, window µs,
/// charge (0/1), shadow (0/1). Returns, per check, 4 integers: allowed (0/1), remaining,
/// reset µs, retry-after µs.
pub const ACQUIRE: &str = concat!(
    server_now!(),
    "local n = #KEYS
local out = {}
local o = 0
local k = 0
local a = 0
",
    decide_request!(),
    "return out
"
);

/// Gives back one admitted request's charge (a policy that charges only some response
/// statuses reserves at admission and refunds the others; a request one slot's checks admitted
/// and another slot's rejected gives back what the first charged): each key's TAT moves back
/// one interval, never below now; a key that would be whole again is deleted.
///
/// `KEYS[i]`: a state key (every key in one Redis Cluster slot); `ARGV[i]`: its interval µs
/// (what one request costs; the give-back of a lease's `u` unspent tokens sends `u` intervals).
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
pub const ACQUIRE_BATCH: &str = concat!(
    server_now!(),
    "local out = {}
local o = 0
local k = 0
local a = 2
for r = 1, tonumber(ARGV[1]) do
local n = tonumber(ARGV[a])
",
    decide_request!(),
    "k = k + n
a = a + 1 + n * 4
end
return out
"
);

/// Takes a lease: grants up to `want` tokens of one key's budget at once (a slice an instance
/// then spends locally), after giving back `give_back` tokens of the instance's previous lease of
/// that key (unspent when it expired), in one atomic run. GCRA as in [`ACQUIRE`], with a cost of
/// `granted` intervals: the grant is `min(want, what the key has left now)`, and the key's state
/// advances by exactly what was granted (reserve before spending). A give-back moves the key's
/// TAT back by its tokens' intervals, never below now (the rule of [`REFUND`]).
///
/// `KEYS[1]`: the state key. `ARGV`: interval µs, window µs, want, give_back. Returns 4 integers:
/// granted (0 when the key has nothing left), remaining after the grant, reset µs (time until
/// the key is whole again), retry-after µs (when nothing was granted).
pub const LEASE: &str = concat!(
    server_now!(),
    "local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local back = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0) or 0
if back > 0 then tat = tat - back * interval end
if tat < now then tat = now end
local n = math.floor((window - (tat - now)) / interval)
if n > want then n = want end
if n < 1 then
  if back > 0 then
    if tat > now then
      redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.max(1, math.ceil((tat - now) / 1000)))
    else
      redis.call('DEL', KEYS[1])
    end
  end
  return {0, 0, tat - now, tat + interval - now - window}
end
local new_tat = tat + n * interval
local ahead = new_tat - now
local ttl = math.ceil(ahead / 1000)
if ttl < 1 then ttl = 1 end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl)
return {n, math.floor((window - ahead) / interval), ahead, 0}
"
);
