-- redisgate test script: run every task of a scheduled, retry or archived zset now.
-- Layout of Asynq's runAllCmd. KEYS: the zset, pending list. ARGV: task key prefix.
-- Returns how many tasks moved.
local source, pending = KEYS[1], KEYS[2]
local ids = redis.call("ZRANGE", source, 0, -1)
for _, id in ipairs(ids) do
  redis.call("LPUSH", pending, id)
  redis.call("HSET", ARGV[1] .. id, "state", "pending")
end
redis.call("DEL", source)
return #ids
