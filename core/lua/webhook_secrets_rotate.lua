-- A new current signing secret for an API key (core/webhook_secrets.py SigningSecrets.rotate);
-- the old one stays valid until the end of its grace.
--
-- KEYS: the key's secrets hash.
-- ARGV: the new secret, the old one's end of grace (epoch s).
-- Returns nothing.

local secrets_key = KEYS[1]
local secret, previous_until = ARGV[1], ARGV[2]

local old = redis.call('HGET', secrets_key, 'current')
if old then redis.call('HSET', secrets_key, 'previous', old, 'previous_until', previous_until) end
redis.call('HSET', secrets_key, 'current', secret)
