-- redisgate test script: enqueue a task to a queue's pending list.
-- Layout of Asynq's enqueueCmd. KEYS: task hash, pending list. ARGV: msg, task id, now (ns).
-- Returns 1, or 0 when a task with this id already exists.
local task, pending = KEYS[1], KEYS[2]
if redis.call("EXISTS", task) == 1 then
  return 0
end
redis.call("HSET", task, "msg", ARGV[1], "state", "pending", "pending_since", ARGV[3])
redis.call("LPUSH", pending, ARGV[2])
return 1
