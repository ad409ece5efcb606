-- People's labels on a job's items (core/labels.py set_labels): every label of a request, the
-- hash's TTL set to the job's and the counts added to /metrics, in one step.
--
-- KEYS: job hash, the job's labels hash, metrics hash.
-- ARGV: (item index, digit or '') pairs; '' clears the item's label.
-- Returns JSON: {gone = true} when the job is gone (nothing written); else {set, cleared}.

local job_key, labels_key, metrics_key = KEYS[1], KEYS[2], KEYS[3]

if redis.call('EXISTS', job_key) == 0 then return cjson.encode({gone = true}) end
local set, cleared = 0, 0
for i = 1, #ARGV, 2 do
  local index, digit = ARGV[i], ARGV[i + 1]
  if digit == '' then
    cleared = cleared + redis.call('HDEL', labels_key, index)
  else
    redis.call('HSET', labels_key, index, digit)
    set = set + 1
  end
end
local ttl = redis.call('PTTL', job_key)
if ttl > 0 then redis.call('PEXPIRE', labels_key, ttl) end
if set > 0 then redis.call('HINCRBY', metrics_key, 'labels_set', set) end
if cleared > 0 then redis.call('HINCRBY', metrics_key, 'labels_cleared', cleared) end
return cjson.encode({set = set, cleared = cleared})
