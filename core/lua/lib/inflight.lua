-- forget_inflight(in-flight set, chunk id `<job>:<first index>`, fair-share key prefix): a
-- finished chunk off its in-flight set and out of its job's chunks hash (core/dispatch.py);
-- a chunk already forgotten changes nothing. Returns whether it was in flight.
local function forget_inflight(inflight_key, chunk_id, prefix)
  if redis.call('ZREM', inflight_key, chunk_id) == 0 then return false end
  local sep = string.find(chunk_id, ':', 1, true)
  local job_id, index = string.sub(chunk_id, 1, sep - 1), string.sub(chunk_id, sep + 1)
  redis.call('HDEL', prefix .. 'chunks:' .. job_id, index)
  return true
end
