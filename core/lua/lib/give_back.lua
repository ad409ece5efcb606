-- give_back(job hash, images, the tenant's queued count, images outstanding per lane): the quota
-- (core/quotas.py) gets `images` of an open job back, as its results are stored
-- (jobs_record.lua) or, at a cancel, the rest at once (jobs_finish.lua), so the counts never
-- drift from the results. The tenant's count and the lane's (the job's `lane` field; a job
-- without one counts in no lane) never go below zero, and a count that expired is not created
-- again (it would live without a TTL).
local function give_back(job_key, images, queued_key, outstanding_key)
  if images <= 0 then return end
  if redis.call('EXISTS', queued_key) == 1 then
    if redis.call('DECRBY', queued_key, images) < 0 then redis.call('SET', queued_key, 0, 'KEEPTTL') end
  end
  local lane = redis.call('HGET', job_key, 'lane')
  if lane and redis.call('EXISTS', outstanding_key) == 1 then
    if redis.call('HINCRBY', outstanding_key, lane, -images) < 0 then
      redis.call('HSET', outstanding_key, lane, 0)
    end
  end
end
