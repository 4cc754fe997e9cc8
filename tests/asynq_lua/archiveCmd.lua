-- redisgate test script: a task failed for good and goes to the archive.
-- Layout of Asynq's archiveCmd (v0.25 on). KEYS: task hash, active list, lease zset,
-- archived zset, processed:<date>, failed:<date>, processed total, failed total, and the bare
-- task key prefix. ARGV: task id, msg, now (unix s), cutoff (unix s), max archive size,
-- daily counter expiry, max int64.
-- Archived tasks older than the cutoff, or beyond the max size, are deleted. ZRANGEBYSCORE
-- rather than ZRANGE ... BYSCORE keeps it working on Redis 5.0.
local task, active, lease, archived, prefix = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[9]
local id = ARGV[1]
if redis.call("LREM", active, 0, id) == 0 or redis.call("ZREM", lease, id) == 0 then
  return redis.error_reply("NOT FOUND")
end
redis.call("ZADD", archived, ARGV[3], id)
redis.call("HSET", task, "msg", ARGV[2], "state", "archived")
local function evict(ids)
  for _, old in ipairs(ids) do
    redis.call("ZREM", archived, old)
    redis.call("DEL", prefix .. old)
  end
end
evict(redis.call("ZRANGEBYSCORE", archived, "-inf", "(" .. ARGV[4]))
evict(redis.call("ZRANGE", archived, 0, -(tonumber(ARGV[5]) + 1)))
for i = 5, 6 do
  if redis.call("INCR", KEYS[i]) == 1 then
    redis.call("EXPIREAT", KEYS[i], ARGV[6])
  end
  if redis.call("GET", KEYS[i + 2]) == ARGV[7] then
    redis.call("SET", KEYS[i + 2], 1)
  else
    redis.call("INCR", KEYS[i + 2])
  end
end
return redis.status_reply("OK")
