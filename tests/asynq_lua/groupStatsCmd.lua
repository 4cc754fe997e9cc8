-- redisgate test script: the size of every aggregation group of a queue, as name/size pairs.
-- Layout of Asynq's groupStatsCmd. KEYS: the queue's set of groups. ARGV: group key prefix.
local out = {}
for _, name in ipairs(redis.call("SMEMBERS", KEYS[1])) do
  out[#out + 1] = name
  out[#out + 1] = redis.call("ZCARD", ARGV[1] .. name)
end
return out
