-- redisgate test script: take a token of a counting semaphore if one is free.
-- Layout of x/rate's acquireCmd. KEYS: asynq:sema:<scope>. ARGV: max tokens, now (unix s),
-- token deadline (unix s), task id. Tokens are zset members scored by their deadline; expired
-- ones are dropped first. Returns 1 when the token was taken, else 0.
local sema = KEYS[1]
redis.call("ZREMRANGEBYSCORE", sema, "-inf", ARGV[2])
if redis.call("ZCARD", sema) >= tonumber(ARGV[1]) then
  return 0
end
redis.call("ZADD", sema, ARGV[3], ARGV[4])
return 1
