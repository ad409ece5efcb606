-- observe(metrics hash, histogram, seconds, count): `count` observations of `seconds`, in the
-- fields core/metrics.py `_observe` writes (bucket, count, sum), buckets non-cumulative.
-- tests/test_record_fast.py pins it to the Python helper, bucket edges included.
-- ${METRIC_BUCKETS}: core/metrics.py BUCKETS as a Lua table {name = {'0.1', ...}}, filled in by
-- the loader (core/scripts.py), so the bounds are written once, in Python.
local METRIC_BUCKETS = ${METRIC_BUCKETS}

local function observe(metrics, name, seconds, count)
  local label = '+Inf'
  for _, bound in ipairs(METRIC_BUCKETS[name]) do  -- bisect_left: the first bound >= seconds
    if seconds <= tonumber(bound) then label = bound; break end
  end
  redis.call('HINCRBY', metrics, name .. ':bucket:' .. label, count)
  redis.call('HINCRBY', metrics, name .. ':count', count)
  redis.call('HINCRBYFLOAT', metrics, name .. ':sum', seconds * count)
end
