-- Extend the leases of webhook events still being sent (core/webhooks.py Outbox.renew): an
-- event is renewed only while it holds the lease it was given; once settled (removed or
-- rescheduled), never.
--
-- KEYS: the due set.
-- ARGV: the new lease end, then (event id, the lease end it holds) pairs.
-- Returns the ids renewed.

local due_key = KEYS[1]
local lease_end = ARGV[1]
local FIRST_PAIR = 2  -- ARGV: the first pair's index

local renewed = {}
for i = FIRST_PAIR, #ARGV, 2 do
  local event_id, held = ARGV[i], ARGV[i + 1]
  local score = redis.call('ZSCORE', due_key, event_id)
  if score and tonumber(score) == tonumber(held) then
    redis.call('ZADD', due_key, 'XX', lease_end, event_id)
    table.insert(renewed, event_id)
  end
end
return renewed
