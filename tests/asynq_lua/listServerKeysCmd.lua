-- redisgate test script: the live members of a registry zset, pruning the expired ones.
-- Layout of Asynq's listServerKeysCmd (also listWorkersCmd, listSchedulerKeysCmd).
-- KEYS: asynq:servers, asynq:workers or asynq:schedulers. ARGV: now (unix s).
-- Scores are expiry times; this "read" removes what expired before now.
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", "(" .. ARGV[1])
return redis.call("ZRANGE", KEYS[1], 0, -1)
