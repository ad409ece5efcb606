-- A tenant with waiting chunks joins the ring's end, unless it is in it already
-- (core/dispatch.py FairShare.add).
--
-- KEYS: the tenants ring.
-- ARGV: tenant, the ring's TTL (s).
-- Returns nothing.

local tenants_key = KEYS[1]
local tenant, ttl = ARGV[1], ARGV[2]

if not redis.call('LPOS', tenants_key, tenant) then redis.call('RPUSH', tenants_key, tenant) end
redis.call('EXPIRE', tenants_key, ttl)
