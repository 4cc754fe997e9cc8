-- redisgate test script: delete one waiting task, and its uniqueness lock if it holds it.
-- Layout of Asynq's deleteTaskCmd. KEYS: task hash, set of groups.
-- ARGV: task id, queue key prefix, group key prefix.
-- Returns 1; 0 when the task does not exist; -1 when it is active.
local task, groups = KEYS[1], KEYS[2]
local id, qprefix, gprefix = ARGV[1], ARGV[2], ARGV[3]
if redis.call("EXISTS", task) == 0 then
  return 0
end
local fields = redis.call("HMGET", task, "state", "group", "unique_key")
local state, group, lock = fields[1], fields[2], fields[3]
if state == "active" then
  return -1
elseif state == "pending" then
  redis.call("LREM", qprefix .. "pending", 0, id)
elseif state == "aggregating" then
  redis.call("ZREM", gprefix .. group, id)
  if redis.call("ZCARD", gprefix .. group) == 0 then
    redis.call("SREM", groups, group)
  end
else
  redis.call("ZREM", qprefix .. state, id)
end
if lock and lock ~= "" and redis.call("GET", lock) == id then
  redis.call("DEL", lock)
end
redis.call("DEL", task)
return 1
