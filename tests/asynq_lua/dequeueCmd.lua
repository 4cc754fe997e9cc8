-- redisgate test script: move the oldest pending task to active and lease it.
-- Layout of Asynq's dequeueCmd. KEYS: pending list, paused flag, active list, lease zset.
-- ARGV: lease expiry (unix s), task key prefix. Returns the task's msg, or nil when the queue
-- is paused or empty.
local pending, paused, active, lease = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call("EXISTS", paused) == 1 then
  return nil
end
local id = redis.call("RPOPLPUSH", pending, active)
if not id then
  return nil
end
local task = ARGV[2] .. id
redis.call("HSET", task, "state", "active")
redis.call("HDEL", task, "pending_since")
redis.call("ZADD", lease, ARGV[1], id)
return redis.call("HGET", task, "msg")
