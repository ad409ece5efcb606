-- A chunk starts (core/jobs.py JobStore.start_chunk), in one round trip per chunk: nothing to do
-- if the job is gone or closed; else, when following and the fleet has moved to another model
-- version than the caller's, only that version (nothing written: the caller switches, then
-- starts again); else the chunk's items without a result and, if there are any, the job's model
-- version pinned (the first chunk's wins), queued -> running, and the start counted per delivery.
--
-- KEYS: job hash, results hash, deliveries hash (core/job_keys.py), the fleet's model version
--   (core/fleet.py).
-- ARGV: now, the caller's model version, the delivery's field in the deliveries hash ('': not
--   counted), the job TTL (s), follow the fleet 1/0, starts of this delivery that went
--   uncounted (a one-trip chunk's first, core/queue.py), then the chunk's item indices.
-- Returns JSON {status, model_version, deliveries (this delivery's starts, this one included;
--   0: nothing to do), has_webhook, fleet_version (when following and it differs), todo (the
--   indices without a result)}; {} when the job is gone.

local job_key, results_key, deliveries_key, fleet_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, version, delivery, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local follow, uncounted = ARGV[5] == '1', tonumber(ARGV[6])
local FIRST_INDEX = 7  -- ARGV: the first item index

local status = redis.call('HGET', job_key, 'status')
if not status then return cjson.encode({}) end
if status ~= 'queued' and status ~= 'running' then return cjson.encode({status = status}) end
local fleet = redis.call('GET', fleet_key)
if follow and fleet and fleet ~= version then
  return cjson.encode({status = status, fleet_version = fleet})
end

local out = {status = status, deliveries = 0, has_webhook = redis.call('HEXISTS', job_key, 'webhook_url') == 1}
local todo = {}
for i = FIRST_INDEX, #ARGV do
  if redis.call('HEXISTS', results_key, ARGV[i]) == 0 then table.insert(todo, tonumber(ARGV[i])) end
end
if #todo > 0 then
  out.todo = todo
  redis.call('HSETNX', job_key, 'model_version', version)
  if status == 'queued' then
    redis.call('HSET', job_key, 'status', 'running', 'started_at', now)
    out.status = 'running'
  end
  if delivery ~= '' then
    local by = 1
    if redis.call('HEXISTS', deliveries_key, delivery) == 0 then by = 1 + uncounted end
    out.deliveries = redis.call('HINCRBY', deliveries_key, delivery, by)
    redis.call('EXPIRE', deliveries_key, ttl)
  end
end
out.model_version = redis.call('HGET', job_key, 'model_version') or nil
return cjson.encode(out)
