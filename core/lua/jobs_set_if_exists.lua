-- Set a field of a job's hash (and count one more in a counter field) only while the job
-- exists: a job that expired meanwhile must not come back as a hash without TTL nor status (GET
-- and listings would then answer 500). core/jobs.py `fail`, core/sweep_state.py `mark_swept`.
--
-- KEYS: job hash.
-- ARGV: field, value, then optionally a counter field.
-- Returns -1 if the job is gone (nothing written); else the counter's new value, or 0 without one.

local job_key = KEYS[1]
local field, value, counter = ARGV[1], ARGV[2], ARGV[3]

if redis.call('EXISTS', job_key) == 0 then return -1 end
redis.call('HSET', job_key, field, value)
if counter then return redis.call('HINCRBY', job_key, counter, 1) end
return 0
