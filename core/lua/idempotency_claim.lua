-- Claim an Idempotency-Key for a new job (core/idempotency.py): the job it names already, or
-- it is reserved for this one.
--
-- KEYS: the idempotency key.
-- ARGV: the new job's id, the claim's TTL (s).
-- Returns the id of the job the key named already, or false (now claimed for the new job).

local claim_key = KEYS[1]
local job_id, ttl = ARGV[1], ARGV[2]

local earlier = redis.call('GET', claim_key)
if earlier then return earlier end
redis.call('SET', claim_key, job_id, 'EX', ttl)
return false
