-- Give back a reservation whose job could not be created (core/quotas.py Quotas.release). Never
-- below zero, never without a TTL (a DECRBY of a count that expired meanwhile would create a
-- negative count that never expires, and grant extra quota): a count that reaches zero is deleted.
--
-- KEYS: the tenant's queued count, images outstanding per lane.
-- ARGV: images to give back, the lane.
-- Returns the tenant's count left.

local queued_key, outstanding_key = KEYS[1], KEYS[2]
local images, lane = tonumber(ARGV[1]), ARGV[2]

local left = tonumber(redis.call('GET', queued_key) or '0') - images
if left > 0 then redis.call('SET', queued_key, left, 'KEEPTTL') else redis.call('DEL', queued_key) end
local in_lane = tonumber(redis.call('HGET', outstanding_key, lane) or '0') - images
if in_lane > 0 then
  redis.call('HSET', outstanding_key, lane, in_lane)
else
  redis.call('HDEL', outstanding_key, lane)
end
return left
