-- Renew a slot at a webhook receiver (core/webhook_receivers.py ReceiverSlots.renew), only one
-- still held.
--
-- KEYS: the receiver's slots.
-- ARGV: the slot's new end, event id, the set's TTL (ms).
-- Returns nothing.

local slots_key = KEYS[1]
local slot_end, event_id, ttl_ms = ARGV[1], ARGV[2], ARGV[3]

if redis.call('ZADD', slots_key, 'XX', 'CH', slot_end, event_id) == 1 then
  redis.call('PEXPIRE', slots_key, ttl_ms)
end
