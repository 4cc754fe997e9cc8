-- redisgate test script: give the tasks of abandoned aggregation sets back to their groups.
-- Layout of Asynq's reclaimStateAggregationSetsCmd. KEYS: the queue's aggregation_sets zset.
-- ARGV: now (unix s). A set key is "<group key>:<set id>", so its group is the key without its
-- last ":" segment.
local sets = KEYS[1]
for _, set in ipairs(redis.call("ZRANGEBYSCORE", sets, "-inf", ARGV[1])) do
  local group = string.match(set, "^(.*):[^:]*$")
  local members = redis.call("ZRANGE", set, 0, -1, "WITHSCORES")
  for i = 1, #members, 2 do
    redis.call("ZADD", group, members[i + 1], members[i])
  end
  redis.call("DEL", set)
end
redis.call("ZREMRANGEBYSCORE", sets, "-inf", ARGV[1])
return redis.status_reply("OK")
