-- redisgate test script: schedule a task that holds a uniqueness lock.
-- Layout of Asynq's scheduleUniqueCmd. KEYS: unique lock, task hash, scheduled zset.
-- ARGV: task id, lock ttl (s), process at (unix s), msg.
-- Returns 1; -1 when the lock is taken; 0 when the task id exists.
local lock, task, scheduled = KEYS[1], KEYS[2], KEYS[3]
local id = ARGV[1]
if not redis.call("SET", lock, id, "NX", "EX", ARGV[2]) then
  return -1
end
if redis.call("EXISTS", task) == 1 then
  return 0
end
redis.call("HSET", task, "msg", ARGV[4], "state", "scheduled", "unique_key", lock)
redis.call("ZADD", scheduled, ARGV[3], id)
return 1
