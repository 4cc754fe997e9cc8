-- redisgate test script: delete every task of a scheduled, retry, archived or completed zset.
-- Layout of Asynq's deleteAllCmd. KEYS: the zset. ARGV: task key prefix, queue name (unused).
-- Uniqueness locks still held by the deleted tasks are released. Returns how many were deleted.
local ids = redis.call("ZRANGE", KEYS[1], 0, -1)
for _, id in ipairs(ids) do
  local task = ARGV[1] .. id
  local lock = redis.call("HGET", task, "unique_key")
  if lock and lock ~= "" and redis.call("GET", lock) == id then
    redis.call("DEL", lock)
  end
  redis.call("DEL", task)
end
redis.call("DEL", KEYS[1])
return #ids
