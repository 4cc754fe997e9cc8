-- redisgate test script: a task succeeded and is kept for its retention period.
-- Layout of Asynq's markAsCompleteCmd. KEYS: active list, lease zset, completed zset, task hash,
-- processed:<date>, processed total. ARGV: task id, daily counter expiry, keep until (unix s),
-- msg, max int64.
local active, lease, completed, task = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local daily, total = KEYS[5], KEYS[6]
local id = ARGV[1]
if redis.call("LREM", active, 0, id) == 0 or redis.call("ZREM", lease, id) == 0 then
  return redis.error_reply("NOT FOUND")
end
redis.call("ZADD", completed, ARGV[3], id)
redis.call("HSET", task, "msg", ARGV[4], "state", "completed")
if redis.call("INCR", daily) == 1 then
  redis.call("EXPIREAT", daily, ARGV[2])
end
if redis.call("GET", total) == ARGV[5] then
  redis.call("SET", total, 1)
else
  redis.call("INCR", total)
end
return redis.status_reply("OK")
