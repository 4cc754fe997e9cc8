-- redisgate test script: forget a server that shut down.
-- Layout of Asynq's clearServerStateCmd. KEYS: asynq:servers:{id}, asynq:workers:{id}.
redis.call("DEL", KEYS[1], KEYS[2])
return redis.status_reply("OK")
