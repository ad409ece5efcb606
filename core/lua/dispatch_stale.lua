-- In-flight chunks sent long ago and not finished (core/dispatch.py FairShare.stale): claimed
-- (their time becomes now, so another sweeper does not send them too) and returned; an entry
-- whose chunk is gone (its job expired or was cancelled) is dropped.
--
-- KEYS: an in-flight set.
-- ARGV: sent before this time is stale, now, the fair-share key prefix.
-- Returns the stale chunks' JSON (at most 1000).

local inflight_key = KEYS[1]
local stale_before, now, prefix = ARGV[1], ARGV[2], ARGV[3]

local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', inflight_key, '-inf', stale_before, 'LIMIT', 0, 1000)) do
  local sep = string.find(id, ':', 1, true)
  local job_id, index = string.sub(id, 1, sep - 1), string.sub(id, sep + 1)
  local chunk = redis.call('HGET', prefix .. 'chunks:' .. job_id, index)
  if chunk then
    redis.call('ZADD', inflight_key, now, id)
    table.insert(out, chunk)
  else
    redis.call('ZREM', inflight_key, id)
  end
end
return out
