-- A slot at a webhook receiver for one attempt (core/webhook_receivers.py ReceiverSlots.take),
-- unless the receiver is at its cap; lapsed slots (their worker died) are freed first.
--
-- KEYS: the receiver's slots (sorted set, scored by when each lapses).
-- ARGV: now, the slot's end, event id, the cap, the set's TTL (ms).
-- Returns 1 if taken (or held already), 0 at the cap.

local slots_key = KEYS[1]
local now, slot_end, event_id, cap, ttl_ms = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]

redis.call('ZREMRANGEBYSCORE', slots_key, '-inf', now)
if not redis.call('ZSCORE', slots_key, event_id) and redis.call('ZCARD', slots_key) >= cap then
  return 0
end
redis.call('ZADD', slots_key, slot_end, event_id)
redis.call('PEXPIRE', slots_key, ttl_ms)
return 1
