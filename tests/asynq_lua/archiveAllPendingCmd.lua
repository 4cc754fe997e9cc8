-- redisgate test script: archive every pending task.
-- Layout of Asynq's archiveAllPendingCmd. KEYS: pending list, archived zset.
-- ARGV: now (unix s), cutoff, max archive size, task key prefix. Returns how many moved.
local pending, archived = KEYS[1], KEYS[2]
local now, cutoff, max = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ids = redis.call("LRANGE", pending, 0, -1)
for _, id in ipairs(ids) do
  redis.call("ZADD", archived, now, id)
  redis.call("HSET", ARGV[4] .. id, "state", "archived")
end
redis.call("ZREMRANGEBYSCORE", archived, "-inf", "(" .. cutoff)
redis.call("ZREMRANGEBYRANK", archived, 0, -(max + 1))
redis.call("DEL", pending)
return #ids
