-- redisgate test script: archive one waiting task (pending, scheduled, retry or aggregating).
-- Layout of Asynq's archiveTaskCmd. KEYS: task hash, archived zset, set of groups.
-- ARGV: task id, now (unix s), cutoff (unix s), max archive size, queue key prefix, group key
-- prefix. Returns 1; 0 when the task does not exist; -1 when already archived; -2 when active.
local task, archived, groups = KEYS[1], KEYS[2], KEYS[3]
local id, now, cutoff, max = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local qprefix, gprefix = ARGV[5], ARGV[6]
if redis.call("EXISTS", task) == 0 then
  return 0
end
local fields = redis.call("HMGET", task, "state", "group")
local state, group = fields[1], fields[2]
if state == "active" then
  return -2
elseif state == "archived" then
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
redis.call("ZADD", archived, now, id)
redis.call("HSET", task, "state", "archived")
redis.call("ZREMRANGEBYSCORE", archived, "-inf", "(" .. cutoff)
redis.call("ZREMRANGEBYRANK", archived, 0, -(max + 1))
return 1
