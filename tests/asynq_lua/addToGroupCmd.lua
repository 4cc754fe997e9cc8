-- redisgate test script: park a task in an aggregation group.
-- Layout of Asynq's addToGroupCmd. KEYS: task hash, group zset, the queue's set of groups.
-- ARGV: msg, task id, now (unix s), group name. Returns 1, or 0 when the task id exists.
local task, group, groups = KEYS[1], KEYS[2], KEYS[3]
if redis.call("EXISTS", task) == 1 then
  return 0
end
redis.call("HSET", task, "msg", ARGV[1], "state", "aggregating", "group", ARGV[4])
redis.call("ZADD", group, ARGV[3], ARGV[2])
redis.call("SADD", groups, ARGV[4])
return 1
