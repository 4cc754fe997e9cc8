-- redisgate test script: run a waiting task now (scheduled, retry, archived or aggregating).
-- Layout of Asynq's runTaskCmd. KEYS: task hash, pending list, the queue's set of groups.
-- ARGV: task id, queue key prefix, group key prefix.
-- Returns 1; 0 when the task does not exist; -1 when it is active; -2 when already pending.
local task, pending, groups = KEYS[1], KEYS[2], KEYS[3]
local id, qprefix, gprefix = ARGV[1], ARGV[2], ARGV[3]
if redis.call("EXISTS", task) == 0 then
  return 0
end
local fields = redis.call("HMGET", task, "state", "group")
local state, group = fields[1], fields[2]
if state == "active" then
  return -1
elseif state == "pending" then
  return -2
elseif state == "aggregating" then
  redis.call("ZREM", gprefix .. group, id)
  if redis.call("ZCARD", gprefix .. group) == 0 then
    redis.call("SREM", groups, group)
  end
else
  redis.call("ZREM", qprefix .. state, id)
end
redis.call("LPUSH", pending, id)
redis.call("HSET", task, "state", "pending")
return 1
