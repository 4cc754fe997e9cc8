-- redisgate test script: drop an aggregation set and its tasks once the aggregate is enqueued.
-- Layout of Asynq's deleteAggregationSetCmd. KEYS: aggregation set zset, the queue's
-- aggregation_sets zset. ARGV: task key prefix.
local set, sets = KEYS[1], KEYS[2]
for _, id in ipairs(redis.call("ZRANGE", set, 0, -1)) do
  redis.call("DEL", ARGV[1] .. id)
end
redis.call("DEL", set)
redis.call("ZREM", sets, set)
return redis.status_reply("OK")
