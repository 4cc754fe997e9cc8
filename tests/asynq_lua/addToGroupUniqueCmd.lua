-- redisgate test script: park a task that holds a uniqueness lock in an aggregation group.
-- Layout of Asynq's addToGroupUniqueCmd. KEYS: task hash, group zset, set of groups, unique lock.
-- ARGV: msg, task id, now (unix s), group name, lock ttl (s).
-- Returns 1; -1 when the lock is taken; 0 when the task id exists.
local task, group, groups, lock = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id = ARGV[2]
if not redis.call("SET", lock, id, "NX", "EX", ARGV[5]) then
  return -1
end
if redis.call("EXISTS", task) == 1 then
  return 0
end
redis.call("HSET", task, "msg", ARGV[1], "state", "aggregating", "group", ARGV[4],
           "unique_key", lock)
redis.call("ZADD", group, ARGV[3], id)
redis.call("SADD", groups, ARGV[4])
return 1
