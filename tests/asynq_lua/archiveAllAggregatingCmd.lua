-- redisgate test script: archive every task of an aggregation group.
-- Layout of Asynq's archiveAllAggregatingCmd. KEYS: group zset, archived zset, set of groups.
-- ARGV: now (unix s), cutoff, max archive size, task key prefix, group name.
-- Returns how many tasks moved.
local group, archived, groups = KEYS[1], KEYS[2], KEYS[3]
local now, cutoff, max = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ids = redis.call("ZRANGE", group, 0, -1)
for _, id in ipairs(ids) do
  redis.call("ZADD", archived, now, id)
  redis.call("HSET", ARGV[4] .. id, "state", "archived")
end
redis.call("ZREMRANGEBYSCORE", archived, "-inf", "(" .. cutoff)
redis.call("ZREMRANGEBYRANK", archived, 0, -(max + 1))
redis.call("DEL", group)
redis.call("SREM", groups, ARGV[5])
return #ids
