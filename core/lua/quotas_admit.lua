-- Admit a submission (core/quotas.py Quotas.admit), both quotas in one step: its images taken
-- from the tenant's token bucket (refused only while other tenants have images waiting), then
-- reserved as queued, all or none.
--
-- KEYS: the tenant's bucket, the waiting tenants, the tenant's queued count, images outstanding
--   per lane.
-- ARGV: now, tenant, the queued counts' key prefix, the fleet's images/s, the burst (images),
--   images (0: a check before the upload is read, nothing taken), the queued limit, the queued
--   counts' TTL, the bucket's TTL, the job's lane.
-- Returns JSON: {verdict = 'ok'}; {verdict = 'rate', retry_after = seconds} (nothing written);
--   {verdict = 'queued', queued = the tenant's count} (nothing reserved).

local bucket_key, waiting_key, queued_key, outstanding_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now_text, tenant, queued_prefix = ARGV[1], ARGV[2], ARGV[3]
local now = tonumber(now_text)
local rate, burst, images = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local queued_limit, queued_ttl, bucket_ttl, lane = tonumber(ARGV[7]), ARGV[8], ARGV[9], ARGV[10]

local others = 0
for _, other in ipairs(redis.call('ZRANGE', waiting_key, 0, -1)) do
  if other ~= tenant then
    if tonumber(redis.call('GET', queued_prefix .. other) or '0') > 0 then
      others = others + 1
    else
      redis.call('ZREM', waiting_key, other)  -- nothing waiting: not competing
    end
  end
end
local share = rate / (others + 1)
local bucket = redis.call('HMGET', bucket_key, 'tokens', 'at', 'burst')
local tokens, at = tonumber(bucket[1] or burst), tonumber(bucket[2] or now)
-- The fleet's rate (so the burst) moves with the workers' heartbeats and measured speed: the
-- bucket keeps its fill in proportion, so a full bucket stays full when the burst grows.
local filled_at_burst = tonumber(bucket[3] or burst)
if filled_at_burst > 0 and filled_at_burst ~= burst then tokens = tokens * burst / filled_at_burst end
tokens = math.min(burst, tokens + math.max(0, now - at) * share)
local need = math.min(math.max(images, 1), burst)  -- a check (0 images): room for one
if others > 0 and tokens < need then
  return cjson.encode({verdict = 'rate', retry_after = (need - tokens) / share})
end
if images > 0 then
  local queued = tonumber(redis.call('GET', queued_key) or '0')
  if queued + images > queued_limit then return cjson.encode({verdict = 'queued', queued = queued}) end
  redis.call('INCRBY', queued_key, images)
  redis.call('EXPIRE', queued_key, queued_ttl)
  redis.call('HINCRBY', outstanding_key, lane, images)
  redis.call('EXPIRE', outstanding_key, queued_ttl)
  redis.call('ZADD', waiting_key, now, tenant)
  redis.call('EXPIRE', waiting_key, queued_ttl)
  tokens = tokens - images
  if others == 0 and tokens < 0 then tokens = 0 end  -- alone: no debt to pay once others come
end
redis.call('HSET', bucket_key, 'tokens', tostring(tokens), 'at', now_text, 'burst', tostring(burst))
redis.call('EXPIRE', bucket_key, bucket_ttl)
return cjson.encode({verdict = 'ok'})
