-- redisgate test script: run every task of an aggregation group now.
-- Layout of Asynq's runAllAggregatingCmd. KEYS: group zset, pending list, set of groups.
-- ARGV: task key prefix, group name. Returns how many tasks moved.
local group, pending, groups = KEYS[1], KEYS[2], KEYS[3]
local ids = redis.call("ZRANGE", group, 0, -1)
for _, id in ipairs(ids) do
  redis.call("LPUSH", pending, id)
  redis.call("HSET", ARGV[1] .. id, "state", "pending")
end
redis.call("DEL", group)
redis.call("SREM", groups, ARGV[2])
return #ids
