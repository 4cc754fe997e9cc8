-- redisgate test script: a page of a pending or active list, as msg/result pairs.
-- Layout of Asynq's listMessagesCmd. KEYS: pending or active list. ARGV: start, stop, task key
-- prefix.
local out = {}
for _, id in ipairs(redis.call("LRANGE", KEYS[1], ARGV[1], ARGV[2])) do
  local fields = redis.call("HMGET", ARGV[3] .. id, "msg", "result")
  out[#out + 1] = fields[1]
  out[#out + 1] = fields[2]
end
return out
