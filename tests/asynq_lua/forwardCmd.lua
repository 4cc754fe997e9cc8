-- redisgate test script: move due scheduled or retry tasks on (at most 100 per call).
-- Layout of Asynq's forwardCmd. KEYS: scheduled or retry zset, pending list.
-- ARGV: now (unix s), task key prefix, now (ns), group key prefix.
-- A due task that belongs to a group goes to that group's zset, any other to pending.
-- Returns how many tasks moved.
local source, pending = KEYS[1], KEYS[2]
local now, tprefix, now_ns, gprefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local due = redis.call("ZRANGEBYSCORE", source, "-inf", now, "LIMIT", 0, 100)
for _, id in ipairs(due) do
  local task = tprefix .. id
  local group = redis.call("HGET", task, "group")
  if group and group ~= "" then
    redis.call("ZADD", gprefix .. group, now, id)
    redis.call("HSET", task, "state", "aggregating")
  else
    redis.call("LPUSH", pending, id)
    redis.call("HSET", task, "state", "pending", "pending_since", now_ns)
  end
  redis.call("ZREM", source, id)
end
return #due
