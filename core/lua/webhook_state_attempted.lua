-- A webhook delivery attempt recorded on its job's hash (core/webhook_state.py): the job shows
-- its delivery state. Never recreates a job that expired meanwhile (it would live without a TTL).
--
-- KEYS: job hash.
-- ARGV: the attempt's HTTP status ('': none), its error, the next attempt's time ('': none),
--   delivered 1/0, gone (the receiver refused for good) 1/0.
-- Returns 1 if written, 0 if the job is gone.

local job_key = KEYS[1]
local last_status, last_error, next_at, delivered, gone = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

if redis.call('EXISTS', job_key) == 0 then return 0 end
redis.call('HINCRBY', job_key, 'webhook_attempts', 1)
redis.call('HSET', job_key, 'webhook_last_status', last_status, 'webhook_last_error', last_error,
           'webhook_next_at', next_at)
if delivered == '1' then redis.call('HSET', job_key, 'webhook_delivered', '1') end
if gone == '1' then redis.call('HSET', job_key, 'webhook_gone', '1') end
return 1
