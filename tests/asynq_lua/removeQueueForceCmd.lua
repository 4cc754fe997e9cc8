-- redisgate test script: remove a queue and all its waiting tasks.
-- Layout of Asynq's removeQueueForceCmd. KEYS: pending, active, scheduled, retry, archived,
-- lease. ARGV: task key prefix. Returns 1, or -1 (and changes nothing) while a task is active.
if redis.call("LLEN", KEYS[2]) > 0 then
  return -1
end
local function drop(ids)
  for _, id in ipairs(ids) do
    redis.call("DEL", ARGV[1] .. id)
  end
end
drop(redis.call("LRANGE", KEYS[1], 0, -1))
for i = 3, 5 do
  drop(redis.call("ZRANGE", KEYS[i], 0, -1))
end
redis.call("DEL", KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
return 1
