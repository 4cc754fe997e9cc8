-- redisgate test script: a task holding a uniqueness lock succeeded and is not kept.
-- Layout of Asynq's doneUniqueCmd: doneCmd's KEYS plus the unique lock as KEYS[6].
local active, lease, task, daily, total, lock = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  KEYS[6]
local id = ARGV[1]
if redis.call("LREM", active, 0, id) == 0 or redis.call("ZREM", lease, id) == 0 then
  return redis.error_reply("NOT FOUND")
end
redis.call("DEL", task)
if redis.call("INCR", daily) == 1 then
  redis.call("EXPIREAT", daily, ARGV[2])
end
if redis.call("GET", total) == ARGV[3] then
  redis.call("SET", total, 1)
else
  redis.call("INCR", total)
end
-- Release the lock only if this task still owns it.
if redis.call("GET", lock) == id then
  redis.call("DEL", lock)
end
return redis.status_reply("OK")
