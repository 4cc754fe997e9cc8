-- redisgate test script: delete every pending task.
-- Layout of Asynq's deleteAllPendingCmd. KEYS: pending list. ARGV: task key prefix.
-- Returns how many were deleted.
local ids = redis.call("LRANGE", KEYS[1], 0, -1)
for _, id in ipairs(ids) do
  redis.call("DEL", ARGV[1] .. id)
end
redis.call("DEL", KEYS[1])
return #ids
