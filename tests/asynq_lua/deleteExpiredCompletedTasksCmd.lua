-- redisgate test script: delete completed tasks past their retention, a batch at a time.
-- Layout of Asynq's deleteExpiredCompletedTasksCmd. KEYS: completed zset.
-- ARGV: now (unix s), task key prefix, batch size. Returns how many were deleted.
local completed = KEYS[1]
local ids = redis.call("ZRANGEBYSCORE", completed, "-inf", ARGV[1], "LIMIT", 0, ARGV[3])
for _, id in ipairs(ids) do
  redis.call("DEL", ARGV[2] .. id)
  redis.call("ZREM", completed, id)
end
return #ids
