-- Release the reload lock (core/fleet.py PendingReload.release): the candidate is deleted only if
-- it is still this reload's (it may have expired and been taken by another).
--
-- KEYS: the candidate.
-- ARGV: this reload's candidate JSON, as stored.
-- Returns 1 if deleted, else 0.

local candidate_key = KEYS[1]
local request = ARGV[1]

if redis.call('GET', candidate_key) == request then return redis.call('DEL', candidate_key) end
return 0
