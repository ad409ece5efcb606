-- Close an open job now (core/jobs.py JobStore.cancel): its status, an optional job-level
-- error, and the images it had not finished given back to the quota (core/quotas.py).
--
-- KEYS: job hash, the tenant's queued-images count, images outstanding per lane, active index,
--   closed channel, metrics hash.
-- ARGV: now, the new status, error ('': none), job id.
-- Returns 1 if this call closed the job; 0 if it was gone or closed already (nothing written).

-- #include job_close.lua
-- #include give_back.lua

local job_key, queued_key, outstanding_key = KEYS[1], KEYS[2], KEYS[3]
local active_key, closed_channel, metrics_key = KEYS[4], KEYS[5], KEYS[6]
local now, status, error_text, job_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

if not is_open(redis.call('HGET', job_key, 'status')) then return 0 end
if error_text ~= '' then redis.call('HSET', job_key, 'error', error_text) end
close_job(job_key, job_id, status, now, active_key, closed_channel, metrics_key, job_id)
local total = tonumber(redis.call('HGET', job_key, 'total'))
local done = tonumber(redis.call('HGET', job_key, 'done'))
give_back(job_key, total - done, queued_key, outstanding_key)
return 1
