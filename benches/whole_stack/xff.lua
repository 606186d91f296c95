-- wrk script: every request carries its own X-Forwarded-For, counting through 10.0.0.0/8
-- (16,777,216 addresses), so per-IP rate limits (call_center's api policy: 200/min) admit them all.
-- Usage: wrk ... -s xff.lua <url> -- <offset>   (run.sh passes a random offset per wrk run)

local next_id = 0

function setup(thread)
   thread:set("thread_id", next_id)
   next_id = next_id + 1
end

local counter = 0
local headers = {}

function init(args)
   local offset = tonumber(args[1] or "0") or 0
   -- 4,194,304 addresses per thread: far more than a run sends.
   counter = offset + (thread_id or 0) * 4194304
   for k, v in pairs(wrk.headers) do headers[k] = v end
   -- run.sh sets a session cookie for the authenticated-read variant (redis-me).
   local cookie = os.getenv("WRK_COOKIE")
   if cookie and cookie ~= "" then headers["Cookie"] = cookie end
end

function request()
   counter = counter + 1
   local n = counter % 16777216
   headers["X-Forwarded-For"] = string.format("10.%d.%d.%d",
      math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
   return wrk.format(nil, nil, headers)
end
