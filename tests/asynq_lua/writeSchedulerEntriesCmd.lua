-- redisgate test script: a scheduler's heartbeat: its current cron entries.
-- Layout of Asynq's writeSchedulerEntriesCmd. KEYS: asynq:schedulers:{id}.
-- ARGV: ttl (s), then one encoded entry per argument.
local key = KEYS[1]
redis.call("DEL", key)
for i = 2, #ARGV do
  redis.call("LPUSH", key, ARGV[i])
end
redis.call("EXPIRE", key, ARGV[1])
return redis.status_reply("OK")
