-- redisgate test script: a queue's current counts, as name/value pairs.
-- Layout of Asynq's currentStatsCmd. KEYS: pending, active, scheduled, retry, archived,
-- completed, processed:<date>, failed:<date>, processed, failed, paused, groups.
-- ARGV: task key prefix, group key prefix.
local out = {}
local function put(name, value)
  out[#out + 1] = name
  out[#out + 1] = value
end
put("pending", redis.call("LLEN", KEYS[1]))
put("active", redis.call("LLEN", KEYS[2]))
local zsets = {"scheduled", "retry", "archived", "completed"}
for i, name in ipairs(zsets) do
  put(name, redis.call("ZCARD", KEYS[2 + i]))
end
local counters = {"processed_today", "failed_today", "processed", "failed"}
for i, name in ipairs(counters) do
  put(name, tonumber(redis.call("GET", KEYS[6 + i]) or "0"))
end
put("paused", redis.call("EXISTS", KEYS[11]))
-- The oldest pending task is the list's tail.
local oldest = redis.call("LRANGE", KEYS[1], -1, -1)[1]
local since = 0
if oldest then
  since = tonumber(redis.call("HGET", ARGV[1] .. oldest, "pending_since") or "0")
end
put("oldest_pending_since", since)
local groups, waiting = 0, 0
for _, name in ipairs(redis.call("SMEMBERS", KEYS[12])) do
  groups = groups + 1
  waiting = waiting + redis.call("ZCARD", ARGV[2] .. name)
end
put("groups", groups)
put("aggregating", waiting)
return out
