-- redisgate test script: daily processed/failed counters for n days.
-- Layout of Asynq's historicalStatsCmd. KEYS: processed:<date>, failed:<date> pairs.
-- Returns one value per key (nil where the counter does not exist).
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call("GET", KEYS[i])
end
return out
