-- redisgate test script: delete every task of an aggregation group.
-- Layout of Asynq's deleteAllAggregatingCmd. KEYS: group zset, set of groups.
-- ARGV: task key prefix, group name. Returns how many were deleted.
local ids = redis.call("ZRANGE", KEYS[1], 0, -1)
for _, id in ipairs(ids) do
  redis.call("DEL", ARGV[1] .. id)
end
redis.call("DEL", KEYS[1])
redis.call("SREM", KEYS[2], ARGV[2])
return #ids
