-- redisgate test script: the messages of the tasks in an aggregation set.
-- Layout of Asynq's readAggregationSetCmd. KEYS: aggregation set zset. ARGV: task key prefix.
local msgs = {}
for _, id in ipairs(redis.call("ZRANGE", KEYS[1], 0, -1)) do
  msgs[#msgs + 1] = redis.call("HGET", ARGV[1] .. id, "msg")
end
return msgs
