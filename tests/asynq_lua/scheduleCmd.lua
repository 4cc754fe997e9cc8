-- redisgate test script: schedule a task for later.
-- Layout of Asynq's scheduleCmd. KEYS: task hash, scheduled zset. ARGV: msg, process at (unix s),
-- task id. Returns 1, or 0 when the task id exists.
local task, scheduled = KEYS[1], KEYS[2]
if redis.call("EXISTS", task) == 1 then
  return 0
end
redis.call("HSET", task, "msg", ARGV[1], "state", "scheduled")
redis.call("ZADD", scheduled, ARGV[2], ARGV[3])
return 1
