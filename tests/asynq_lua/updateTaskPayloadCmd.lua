-- redisgate test script: replace a waiting task's message (its payload lives inside it).
-- Layout of Asynq's updateTaskPayloadCmd. KEYS: task hash. ARGV: new msg.
-- Returns 1; 0 when the task does not exist; -1 when it is active.
local task = KEYS[1]
if redis.call("EXISTS", task) == 0 then
  return 0
end
if redis.call("HGET", task, "state") == "active" then
  return -1
end
redis.call("HSET", task, "msg", ARGV[1])
return 1
