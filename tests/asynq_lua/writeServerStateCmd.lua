-- redisgate test script: a server's heartbeat record and its workers.
-- Layout of Asynq's writeServerStateCmd. KEYS: asynq:servers:{id}, asynq:workers:{id}.
-- ARGV: ttl (s), server info, then (task id, worker info) pairs.
local server, workers = KEYS[1], KEYS[2]
local ttl = ARGV[1]
redis.call("SETEX", server, ttl, ARGV[2])
redis.call("DEL", workers)
for i = 3, #ARGV - 1, 2 do
  redis.call("HSET", workers, ARGV[i], ARGV[i + 1])
end
redis.call("EXPIRE", workers, ttl)
return redis.status_reply("OK")
