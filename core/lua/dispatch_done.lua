-- A finished chunk forgotten (core/dispatch.py FairShare.done): off its in-flight set, out of its
-- job's chunks hash.
--
-- KEYS: an in-flight set.
-- ARGV: the chunk's id (`<job>:<first index>`), the fair-share key prefix.
-- Returns nothing.

-- #include inflight.lua

local inflight_key = KEYS[1]
local chunk_id, prefix = ARGV[1], ARGV[2]

forget_inflight(inflight_key, chunk_id, prefix)
