-- One more refused upload (core/quotas.py Quotas.refused); the counter's window starts with the
-- first refusal.
--
-- KEYS: the refusals counter.
-- ARGV: the window (s).
-- Returns the count in this window.

local counter_key = KEYS[1]
local window = ARGV[1]

local count = redis.call('INCR', counter_key)
if count == 1 or redis.call('TTL', counter_key) < 0 then redis.call('EXPIRE', counter_key, window) end
return count
