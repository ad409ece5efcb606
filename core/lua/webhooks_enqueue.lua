-- Queue a webhook event once (core/webhooks.py Outbox.enqueue): an id queued already is not
-- queued again.
--
-- KEYS: the event's hash, the due set.
-- ARGV: event id, job id, event type, now, the event's TTL (s), the due set's TTL (s).
-- Returns 1 if queued, 0 if it was already.

local event_key, due_key = KEYS[1], KEYS[2]
local event_id, job_id, kind, now, event_ttl, due_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

if redis.call('EXISTS', event_key) == 1 then return 0 end
redis.call('HSET', event_key, 'job', job_id, 'type', kind, 'created', now, 'attempts', 0)
redis.call('EXPIRE', event_key, event_ttl)
redis.call('ZADD', due_key, now, event_id)
redis.call('EXPIRE', due_key, due_ttl)
return 1
