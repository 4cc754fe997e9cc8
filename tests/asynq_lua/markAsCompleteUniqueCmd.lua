-- redisgate test script: a task holding a uniqueness lock succeeded and is kept.
-- Layout of Asynq's markAsCompleteUniqueCmd: markAsCompleteCmd's KEYS plus the lock as KEYS[7].
local active, lease, completed, task = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local daily, total, lock = KEYS[5], KEYS[6], KEYS[7]
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
if redis.call("GET", lock) == id then
  redis.call("DEL", lock)
end
return redis.status_reply("OK")
