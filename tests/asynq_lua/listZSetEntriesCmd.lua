-- redisgate test script: a page of a scheduled/retry/archived/completed zset or a group, as
-- msg/score/result triples.
-- Layout of Asynq's listZSetEntriesCmd. KEYS: the zset. ARGV: start, stop, task key prefix.
local out = {}
local page = redis.call("ZRANGE", KEYS[1], ARGV[1], ARGV[2], "WITHSCORES")
for i = 1, #page, 2 do
  local fields = redis.call("HMGET", ARGV[3] .. page[i], "msg", "result")
  out[#out + 1] = fields[1]
  out[#out + 1] = page[i + 1]
  out[#out + 1] = fields[2]
end
return out
