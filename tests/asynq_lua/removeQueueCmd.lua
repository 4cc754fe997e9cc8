-- redisgate test script: remove an empty queue's keys.
-- Layout of Asynq's removeQueueCmd. KEYS: pending, active, scheduled, retry, archived, lease.
-- ARGV: task key prefix. Returns 1, or -1 (and changes nothing) while any task is left.
if redis.call("LLEN", KEYS[1]) + redis.call("LLEN", KEYS[2]) > 0 then
  return -1
end
for i = 3, 5 do
  if redis.call("ZCARD", KEYS[i]) > 0 then
    return -1
  end
end
redis.call("DEL", KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
return 1
