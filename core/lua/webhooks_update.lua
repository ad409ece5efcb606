-- Keep a webhook event's body and/or schedule its next attempt (core/webhooks.py Outbox), only
-- while the event exists (an expired one would come back without a TTL; its id leaves the due set).
--
-- KEYS: the event's hash, the due set.
-- ARGV: event id, body ('': unchanged), next attempt's time ('': none), the due set's TTL (s).
-- Returns 1 if written, 0 if the event is gone.

local event_key, due_key = KEYS[1], KEYS[2]
local event_id, body, next_at, due_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

if redis.call('EXISTS', event_key) == 0 then redis.call('ZREM', due_key, event_id) return 0 end
if body ~= '' then redis.call('HSET', event_key, 'body', body) end
if next_at ~= '' then
  redis.call('HINCRBY', event_key, 'attempts', 1)
  redis.call('ZADD', due_key, next_at, event_id)
  redis.call('EXPIRE', due_key, due_ttl)
end
return 1
