-- redisgate test script: put an active task back at the head of the pending list (shutdown).
-- Layout of Asynq's requeueCmd. KEYS: active list, lease zset, pending list, task hash.
-- ARGV: task id.
local active, lease, pending, task = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id = ARGV[1]
if redis.call("LREM", active, 0, id) == 0 or redis.call("ZREM", lease, id) == 0 then
  return redis.error_reply("NOT FOUND")
end
redis.call("RPUSH", pending, id)
redis.call("HSET", task, "state", "pending")
return redis.status_reply("OK")
