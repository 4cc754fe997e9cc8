-- redisgate test script: estimate a queue's memory use from a sample of its tasks.
-- Layout of Asynq's memoryUsageCmd. KEYS: active, pending, scheduled, retry, archived,
-- completed, groups. ARGV: task key prefix, tasks sampled per state, groups sampled, group key
-- prefix. Runs MEMORY USAGE (Redis >= 4.0) on the sampled task hashes.
local prefix, sample, group_sample, gprefix = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  ARGV[4]
local function usage(key)
  return redis.call("MEMORY", "USAGE", key) or 0   -- nil for a key that vanished
end
-- The sampled ids' average size, times the number of ids, plus the container itself.
local function estimate(container, ids, count)
  local total = 0
  for _, id in ipairs(ids) do
    total = total + usage(prefix .. id)
  end
  local bytes = usage(container)
  if #ids > 0 then
    bytes = bytes + math.floor(total / #ids * count)
  end
  return bytes
end
local bytes = 0
for i = 1, 2 do
  bytes = bytes + estimate(KEYS[i], redis.call("LRANGE", KEYS[i], 0, sample - 1),
                           redis.call("LLEN", KEYS[i]))
end
for i = 3, 6 do
  bytes = bytes + estimate(KEYS[i], redis.call("ZRANGE", KEYS[i], 0, sample - 1),
                           redis.call("ZCARD", KEYS[i]))
end
local seen = 0
for _, name in ipairs(redis.call("SMEMBERS", KEYS[7])) do
  if seen >= group_sample then
    break
  end
  local group = gprefix .. name
  bytes = bytes + estimate(group, redis.call("ZRANGE", group, 0, sample - 1),
                           redis.call("ZCARD", group))
  seen = seen + 1
end
return bytes
