-- Store a chunk's results, count them, give their images back to the quota and close the job
-- with its last item (core/jobs.py JobStore.record). Runs per chunk: kept to one round trip.
--
-- KEYS: job hash, results hash, the tenant's queued-images count and the images outstanding per
--   lane (core/quotas.py), active index, closed channel (core/job_keys.py), metrics hash
--   (core/metrics.py), the fleet's model version (core/fleet.py), the chunk's in-flight set
--   (core/dispatch.py), the kept uploads (core/kept_uploads.py).
-- ARGV: now, job id, options (JSON), then (index, result JSON, failed 0/1) triples in item order.
--   Options: `seconds` and `items`, the chunk's work (observed here, with its results); `start`
--   (a time) and `model`: a one-trip chunk (core/queue.py) starts here, after its work: the job
--   marked running (if still queued) with the version pinned; with `follow`, only if the fleet
--   serves that version (else nothing is written, and the caller works again on the fleet's).
--   `forget` (a chunk id) and `prefix`: the chunk is done, off its in-flight set (what
--   core/dispatch.py FairShare.done would do, in this round trip); `keep`: seconds the upload is
--   kept once the job closes (core/kept_uploads.py `release`, in this round trip).
-- Returns JSON: {gone = true} (the job expired); {moved = the fleet's version} (following, and
--   the fleet serves another: nothing written); else {added, failed, closed (this call closed
--   the job), status (after this call), created_at}.
-- A close whose call stored every one of the job's results (at most ${ANSWER_MAX_ITEMS}, in item
-- order) publishes them after the job id: the request waiting for it (api/waiting.py) needs no read.

-- #include observe.lua
-- #include job_close.lua
-- #include give_back.lua
-- #include inflight.lua

local job_key, results_key, queued_key, outstanding_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local active_key, closed_channel, metrics_key, fleet_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local inflight_key, kept_key = KEYS[9], KEYS[10]
local now, job_id, opts = ARGV[1], ARGV[2], cjson.decode(ARGV[3])
local FIRST_RESULT = 4  -- ARGV: the first triple's index
local ANSWER_MAX_ITEMS = ${ANSWER_MAX_ITEMS}

if opts.follow then
  local fleet = redis.call('GET', fleet_key)
  if fleet and fleet ~= opts.model then return cjson.encode({moved = fleet}) end
end
-- From here the chunk is done (whatever is left to store): no longer in flight.
if opts.forget then forget_inflight(inflight_key, opts.forget, opts.prefix) end
if redis.call('EXISTS', job_key) == 0 then return cjson.encode({gone = true}) end
local status = redis.call('HGET', job_key, 'status')
local created = redis.call('HGET', job_key, 'created_at')
local function answer(added, failed, closed)
  return cjson.encode({added = added, failed = failed, closed = closed, status = status, created_at = created})
end
if opts.start then
  -- Cancelled (or closed) before this chunk started: like a start that finds it so, no write.
  if not is_open(status) then return answer(0, 0, false) end
  redis.call('HSETNX', job_key, 'model_version', opts.model)
  if status == 'queued' then redis.call('HSET', job_key, 'status', 'running', 'started_at', opts.start) end
end

local added, failed = 0, 0
for i = FIRST_RESULT, #ARGV, 3 do
  if redis.call('HSETNX', results_key, ARGV[i], ARGV[i + 1]) == 1 then
    added = added + 1
    if ARGV[i + 2] == '1' then failed = failed + 1 end
  end
end
-- HSETNX may have just created the results hash: it dies with its job (EXPIRE before it existed was a no-op).
local ttl = redis.call('PTTL', job_key)
if ttl > 0 then redis.call('PEXPIRE', results_key, ttl) end
redis.call('HINCRBY', job_key, 'done', added)
redis.call('HINCRBY', job_key, 'failed', failed)
if added > 0 then
  redis.call('HSET', job_key, 'progress_at', now)
  redis.call('HINCRBY', metrics_key, 'items_processed', added)
  redis.call('HINCRBY', metrics_key, 'items_failed', failed)
  if opts.seconds then
    observe(metrics_key, 'chunk_seconds', opts.seconds, 1)
    if opts.items > 0 then observe(metrics_key, 'item_seconds', opts.seconds / opts.items, opts.items) end
  end
end
-- A cancelled job gave back the rest of its images already.
if is_open(status) then give_back(job_key, added, queued_key, outstanding_key) end

-- The job's answer, published with its close: every result, stored by this call, in item order.
local function answer_message(total)
  if not (status == 'succeeded' and added == total and total <= ANSWER_MAX_ITEMS) then return job_id end
  local results = {}
  for i = FIRST_RESULT, #ARGV, 3 do
    if ARGV[i] ~= tostring(#results) then return job_id end  -- not in item order: no answer
    table.insert(results, ARGV[i + 1])
  end
  local version = redis.call('HGET', job_key, 'model_version') or ''
  return job_id .. ' {"model_version":' .. cjson.encode(version) .. ',"results":['
    .. table.concat(results, ',') .. ']}'
end

local done = tonumber(redis.call('HGET', job_key, 'done'))
local total = tonumber(redis.call('HGET', job_key, 'total'))
local closed = false
if done >= total and is_open(status) then
  status = 'succeeded'
  if redis.call('HEXISTS', job_key, 'error') == 1 then status = 'failed' end
  close_job(job_key, job_id, status, now, active_key, closed_channel, metrics_key, answer_message(total))
  observe(metrics_key, 'job_seconds', math.max(0, tonumber(now) - tonumber(created)), 1)
  if opts.keep then
    redis.call('ZADD', kept_key, tonumber(now) + opts.keep, job_id)
    redis.call('EXPIRE', kept_key, opts.keep + ${KEPT_EXTRA_SECONDS})
  end
  closed = true
end
return answer(added, failed, closed)
