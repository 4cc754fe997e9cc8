-- redisgate test script: enqueue a task that holds a uniqueness lock.
-- Layout of Asynq's enqueueUniqueCmd. KEYS: unique lock, task hash, pending list.
-- ARGV: task id, lock ttl (s), msg, now (ns).
-- Returns 1; -1 when the lock is taken; 0 when the task id exists.
local lock, task, pending = KEYS[1], KEYS[2], KEYS[3]
local id = ARGV[1]
if not redis.call("SET", lock, id, "NX", "EX", ARGV[2]) then
  return -1
end
if redis.call("EXISTS", task) == 1 then
  return 0
end
redis.call("HSET", task, "msg", ARGV[3], "state", "pending", "pending_since", ARGV[4],
           "unique_key", lock)
redis.call("LPUSH", pending, id)
return 1
