-- Claim due webhook events (core/webhooks.py Outbox.claim): each pushed to its lease's end at
-- once, so no other worker claims it while this one sends it.
--
-- KEYS: the due set.
-- ARGV: now, the lease's end, how many at most.
-- Returns the claimed event ids.

local due_key = KEYS[1]
local now, lease_end, count = ARGV[1], ARGV[2], tonumber(ARGV[3])

local ids = redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'LIMIT', 0, count)
for _, id in ipairs(ids) do redis.call('ZADD', due_key, lease_end, id) end
return ids
