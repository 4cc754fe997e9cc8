-- redisgate test script: a task succeeded and is not kept.
-- Layout of Asynq's doneCmd. KEYS: active list, lease zset, task hash, processed:<date>,
-- processed total. ARGV: task id, daily counter expiry (unix s), max int64.
local active, lease, task, daily, total = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id = ARGV[1]
if redis.call("LREM", active, 0, id) == 0 or redis.call("ZREM", lease, id) == 0 then
  return redis.error_reply("NOT FOUND")
end
redis.call("DEL", task)
if redis.call("INCR", daily) == 1 then
  redis.call("EXPIREAT", daily, ARGV[2])
end
-- The total wraps to 1 instead of overflowing.
if redis.call("GET", total) == ARGV[3] then
  redis.call("SET", total, 1)
else
  redis.call("INCR", total)
end
return redis.status_reply("OK")
