"""People's labels on a job's items (issue 20): one Redis hash per job, `<job>:labels`
({index: digit}), beside core/jobs.py's keys and expiring with the job.

A batch is written by one script: every label of a request, or none (the API validates them
all first), the hash's TTL set to the job's and the counts added to /metrics in the same step.
"""

import json
from collections.abc import Mapping, Sequence

import redis

from core import job_keys, scripts
from core.metrics import KEY as METRICS_KEY


def key(job_id: str) -> str:
    return job_keys.labels(job_id)


class JobGone(Exception):
    """The job expired between its check and the write."""


def set_labels(client: redis.Redis, job_id: str, labels: Mapping[int, int | None]) -> tuple[int, int]:
    """Set (a digit) or clear (None) each item's label, all in one step; (set, cleared)."""
    args: list[str | int] = []
    for index, digit in labels.items():
        args += [index, "" if digit is None else digit]
    keys = [job_keys.job(job_id), key(job_id), METRICS_KEY]
    reply = json.loads(scripts.register(client, "labels_set")(keys=keys, args=args))
    if reply.get("gone"):
        raise JobGone(job_id)
    return int(reply["set"]), int(reply["cleared"])


def get_labels(client: redis.Redis, job_id: str, indices: Sequence[int]) -> list[int | None]:
    if not indices:
        return []
    raw = client.hmget(key(job_id), [str(i) for i in indices])
    return [None if value is None else int(value) for value in raw]
