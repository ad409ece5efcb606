-- Admit labelled records into the store's index (core/labelled.py LabelledStore.put): the names
-- are added (a name there already costs nothing) unless that would take the store over its
-- limit: then nothing is.
--
-- KEYS: the index hash ({record name: key id}).
-- ARGV: the limit, the key id, then the record names.
-- Returns the count of new names (>= 0), or -(room left) - 1 when refused.

local index_key = KEYS[1]
local limit, key_id = tonumber(ARGV[1]), ARGV[2]
local FIRST_NAME = 3  -- ARGV: the first record name

local new = 0
for i = FIRST_NAME, #ARGV do
  if redis.call('HEXISTS', index_key, ARGV[i]) == 0 then new = new + 1 end
end
local count = redis.call('HLEN', index_key)
if count + new > limit then return -(limit - count) - 1 end
for i = FIRST_NAME, #ARGV do redis.call('HSET', index_key, ARGV[i], key_id) end
return new
