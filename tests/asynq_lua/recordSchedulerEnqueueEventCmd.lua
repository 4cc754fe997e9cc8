-- redisgate test script: remember that a cron entry enqueued a task, keeping the newest events.
-- Layout of Asynq's recordSchedulerEnqueueEventCmd. KEYS: asynq:scheduler_history:<entry id>.
-- ARGV: time (unix s), encoded event, how many events to keep.
local history = KEYS[1]
redis.call("ZADD", history, ARGV[1], ARGV[2])
redis.call("ZREMRANGEBYRANK", history, 0, -(tonumber(ARGV[3]) + 1))
return redis.status_reply("OK")
