"""What the stuck-job sweep (worker/stuck_jobs.py) reads and marks on jobs: the index of jobs not
closed yet (core/job_keys.py ACTIVE), each job's last sign of life and sweeps so far, and the
items without a result.
"""

import time

import redis

from core import job_keys, scripts
from core.job_keys import ACTIVE
from core.jobs import Raw, opt_float, text


class SweepState:
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        self._set_if_exists = scripts.register(client, "jobs_set_if_exists")

    def active(self) -> list[tuple[str, float]]:
        """Jobs not closed yet, oldest first, with their creation time; expired ones are pruned."""
        self.redis.zremrangebyscore(ACTIVE, "-inf", time.time() - self.ttl)
        entries: list[tuple[Raw, float]] = self.redis.zrange(ACTIVE, 0, -1, withscores=True)  # type: ignore[assignment]
        return [(text(member), float(score)) for member, score in entries]

    def forget_active(self, job_id: str) -> None:
        """Drop a job from the active index (it expired, or closed without the scripts seeing it)."""
        self.redis.zrem(ACTIVE, job_id)

    def state(self, job_id: str) -> tuple[float, int, int]:
        """(last sign of life: creation, a result stored or a sweep; sweeps so far; upload parts)."""
        fields = ["created_at", "progress_at", "swept_at", "sweeps", "parts"]
        raw = self.redis.hmget(job_keys.job(job_id), fields)
        created, progress, swept, sweeps, parts = (opt_float(v) for v in raw)
        return max(created or 0, progress or 0, swept or 0), int(sweeps or 0), int(parts or 0)

    def mark_swept(self, job_id: str) -> int:
        """Note that the sweep re-queued the job's missing items; returns how many times it has
        (0 for a job that no longer exists: nothing is written)."""
        args = ["swept_at", repr(time.time()), "sweeps"]
        return max(0, int(self._set_if_exists(keys=[job_keys.job(job_id)], args=args)))

    def missing_all(self, job_id: str, total: int) -> list[int]:
        """Every index of the job that has no result yet."""
        stored = {int(i) for i in self.redis.hkeys(job_keys.results(job_id))}
        return [i for i in range(total) if i not in stored]
