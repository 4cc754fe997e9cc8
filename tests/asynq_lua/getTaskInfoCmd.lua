-- redisgate test script: one task's message, state, next run time and result.
-- Layout of Asynq's getTaskInfoCmd. KEYS: task hash. ARGV: task id, now (unix s), queue key
-- prefix. Errors with NOT FOUND when the task does not exist.
local task = KEYS[1]
if redis.call("EXISTS", task) == 0 then
  return redis.error_reply("NOT FOUND")
end
local fields = redis.call("HMGET", task, "msg", "state", "result")
local state = fields[2]
local next_run = 0
if state == "scheduled" or state == "retry" then
  next_run = tonumber(redis.call("ZSCORE", ARGV[3] .. state, ARGV[1]) or "0")
elseif state == "pending" then
  next_run = tonumber(ARGV[2])
end
return {fields[1], state, next_run, fields[3]}
