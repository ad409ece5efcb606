"""People's labels on a job's items (issue 20): one Redis hash per job, `<job>:labels`
({index: digit}), beside core/jobs.py's keys and expiring with the job.

A batch is written by one script: every label of a request, or none (the API validates them
all first), the hash's TTL set to the job's and the counts added to /metrics in the same step.
"""

from collections.abc import Mapping, Sequence

import redis

from core.jobs import PREFIX
from core.metrics import KEY as METRICS_KEY

SUFFIX = ":labels"

# KEYS: job hash, labels hash, metrics hash. ARGV: (index, digit or '') pairs; '' clears.
# -1 when the job is gone (nothing written), else {set, cleared}.
_SET = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local set, cleared = 0, 0
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    cleared = cleared + redis.call('HDEL', KEYS[2], ARGV[i])
  else
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    set = set + 1
  end
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
if set > 0 then redis.call('HINCRBY', KEYS[3], 'labels_set', set) end
if cleared > 0 then redis.call('HINCRBY', KEYS[3], 'labels_cleared', cleared) end
return {set, cleared}
"""


def key(job_id: str) -> str:
    return PREFIX + job_id + SUFFIX


class JobGone(Exception):
    """The job expired between its check and the write."""


def set_labels(client: redis.Redis, job_id: str, labels: Mapping[int, int | None]) -> tuple[int, int]:
    """Set (a digit) or clear (None) each item's label, all in one step; (set, cleared)."""
    args: list[str | int] = []
    for index, digit in labels.items():
        args += [index, "" if digit is None else digit]
    keys = [PREFIX + job_id, key(job_id), METRICS_KEY]
    reply = client.register_script(_SET)(keys=keys, args=args)
    if reply == -1:
        raise JobGone(job_id)
    return int(reply[0]), int(reply[1])


def get_labels(client: redis.Redis, job_id: str, indices: Sequence[int]) -> list[int | None]:
    if not indices:
        return []
    raw = client.hmget(key(job_id), [str(i) for i in indices])
    return [None if value is None else int(value) for value in raw]
