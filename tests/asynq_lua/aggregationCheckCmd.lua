-- redisgate test script: decide whether a group is ready, and if so stage its tasks in a set.
-- Layout of Asynq's aggregationCheckCmd. KEYS: group zset, new aggregation set zset, the
-- queue's aggregation_sets zset, the queue's set of groups.
-- ARGV: max size, max delay (s), grace period (s), set deadline (unix s), now (unix s),
-- group name. 0 for max size or max delay means "no limit".
-- Returns 1 when a set was staged, else 0.
local group, set, sets, groups = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local max_size, max_delay, grace = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local deadline, now, name = ARGV[4], tonumber(ARGV[5]), ARGV[6]

local size = redis.call("ZCARD", group)
if size == 0 then
  redis.call("SREM", groups, name)
  return 0
end

-- Move the first n members (all when n is nil) of the group into the set.
local function stage(n)
  local last = n and (n - 1) or -1
  local members = redis.call("ZRANGE", group, 0, last, "WITHSCORES")
  for i = 1, #members, 2 do
    redis.call("ZADD", set, members[i + 1], members[i])
  end
  redis.call("ZREMRANGEBYRANK", group, 0, last)
  if redis.call("ZCARD", group) == 0 then
    redis.call("SREM", groups, name)
  end
  redis.call("ZADD", sets, deadline, set)
  return 1
end

if max_size > 0 and size >= max_size then
  return stage(max_size)
end
if max_delay > 0 then
  local oldest = redis.call("ZRANGE", group, 0, 0, "WITHSCORES")
  if now - tonumber(oldest[2]) >= max_delay then
    return stage(nil)
  end
end
local newest = redis.call("ZREVRANGE", group, 0, 0, "WITHSCORES")
if now - tonumber(newest[2]) >= grace then
  return stage(nil)
end
return 0
