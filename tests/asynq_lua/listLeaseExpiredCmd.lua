-- redisgate test script: the messages of tasks whose lease ran out before a cutoff.
-- Layout of Asynq's listLeaseExpiredCmd. KEYS: lease zset. ARGV: cutoff (unix s), task key
-- prefix. Tasks whose hash is gone are skipped.
local expired = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1])
local msgs = {}
for _, id in ipairs(expired) do
  local msg = redis.call("HGET", ARGV[2] .. id, "msg")
  if msg then
    msgs[#msgs + 1] = msg
  end
end
return msgs
