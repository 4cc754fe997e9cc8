-- redisgate test script: archive every task of a scheduled or retry zset.
-- Layout of Asynq's archiveAllCmd. KEYS: the zset, archived zset. ARGV: now (unix s), cutoff,
-- max archive size, task key prefix, queue name (unused). Returns how many tasks moved.
local source, archived = KEYS[1], KEYS[2]
local now, cutoff, max = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ids = redis.call("ZRANGE", source, 0, -1)
for _, id in ipairs(ids) do
  redis.call("ZADD", archived, now, id)
  redis.call("HSET", ARGV[4] .. id, "state", "archived")
end
redis.call("ZREMRANGEBYSCORE", archived, "-inf", "(" .. cutoff)
redis.call("ZREMRANGEBYRANK", archived, 0, -(max + 1))
redis.call("DEL", source)
return #ids
