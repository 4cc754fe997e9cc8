-- redisgate test script: a task failed and will be retried later.
-- Layout of Asynq's retryCmd. KEYS: task hash, active list, lease zset, retry zset,
-- processed:<date>, failed:<date>, processed total, failed total.
-- ARGV: task id, msg, retry at (unix s), daily counter expiry, counts as failure (1/0),
-- max int64.
local task, active, lease, retry = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id = ARGV[1]
if redis.call("LREM", active, 0, id) == 0 or redis.call("ZREM", lease, id) == 0 then
  return redis.error_reply("NOT FOUND")
end
redis.call("ZADD", retry, ARGV[3], id)
redis.call("HSET", task, "msg", ARGV[2], "state", "retry")
if ARGV[5] == "1" then
  for i = 5, 6 do                       -- processed and failed, daily then total
    if redis.call("INCR", KEYS[i]) == 1 then
      redis.call("EXPIREAT", KEYS[i], ARGV[4])
    end
    if redis.call("GET", KEYS[i + 2]) == ARGV[6] then
      redis.call("SET", KEYS[i + 2], 1)
    else
      redis.call("INCR", KEYS[i + 2])
    end
  end
end
return redis.status_reply("OK")
