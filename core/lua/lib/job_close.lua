-- A job's end, shared by the scripts that end one (jobs_record.lua: its last result stored;
-- jobs_finish.lua: cancelled).

-- Whether a job with this status still takes results (a closed one keeps its status).
local function is_open(status)
  return status == 'queued' or status == 'running'
end

-- Close the job: its final status and end time, off the active index (core/job_keys.py ACTIVE),
-- announced on the closed channel (`message`: its id, maybe followed by its answer) and counted
-- by status in the metrics hash, in the same step, so a /metrics scrape never sees a closed job
-- it has not counted.
local function close_job(job_key, job_id, status, now, active_key, closed_channel, metrics_key, message)
  redis.call('HSET', job_key, 'status', status, 'finished_at', now)
  redis.call('ZREM', active_key, job_id)
  redis.call('PUBLISH', closed_channel, message)
  redis.call('HINCRBY', metrics_key, 'jobs_finished:' .. status, 1)
end
