-- Fill the bulk lane's window (core/dispatch.py FairShare.refill): each free slot goes to the
-- next tenant of the ring with waiting chunks, and within it to its next job; optionally a
-- finished chunk is taken off the window first.
--
-- KEYS: the tenants ring, the bulk in-flight set.
-- ARGV: the window's size, now, the TTL (s), the fair-share key prefix, then optionally the
--   finished chunk's id (`<job>:<first index>`).
-- Returns the chunks' JSON, for the caller to send.

-- #include inflight.lua

local tenants_key, inflight_key = KEYS[1], KEYS[2]
local budget, now, ttl, prefix = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local finished = ARGV[5]
local MAX_STEPS = 10000  -- rings emptied on the way cost steps too: bounded all the same

if finished then forget_inflight(inflight_key, finished, prefix) end
local out = {}
local steps = 0
while redis.call('ZCARD', inflight_key) < budget and steps < MAX_STEPS do
  steps = steps + 1
  local tenant = redis.call('LMOVE', tenants_key, tenants_key, 'LEFT', 'RIGHT')
  if not tenant then break end
  local ring = prefix .. 'tenant:' .. tenant
  local job_id = redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
  if job_id then
    local queue = prefix .. 'queue:' .. job_id
    local index = redis.call('LPOP', queue)
    if redis.call('LLEN', queue) == 0 then redis.call('LREM', ring, 0, job_id) end
    if index then
      local chunk = redis.call('HGET', prefix .. 'chunks:' .. job_id, index)
      if chunk then
        redis.call('ZADD', inflight_key, now, job_id .. ':' .. index)
        redis.call('EXPIRE', inflight_key, ttl)
        table.insert(out, chunk)
      end
    end
  end
  if redis.call('LLEN', ring) == 0 then redis.call('LREM', tenants_key, 0, tenant) end
end
return out
