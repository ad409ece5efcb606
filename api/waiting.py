"""Wait for a job to end without polling and without a thread per waiting request.

The Lua scripts that end a job (the last result recorded, a cancel) PUBLISH its id on
`CLOSED_CHANNEL` (core/jobs.py). Each API process (each event loop) holds one subscription and
wakes the requests waiting on that id: a thousand waiting requests cost one Redis connection and
a future each. A waiter registers before it reads the job's status, so a job that ends between
the two is seen one way or the other; when the subscription drops, every waiter is woken to read
the status again, and each reads it once more when its time runs out, so a message lost while
reconnecting costs at most the wait, never a wrong answer.
"""

import asyncio
import contextlib
import logging
import weakref

import redis
import redis.asyncio as aioredis

from core.config import get_settings
from core.jobs import CLOSED_CHANNEL, PREFIX, TERMINAL, ItemResult, Job, JobStatus, JobStore

log = logging.getLogger(__name__)
RECONNECT_SECONDS = 0.5
SUBSCRIBE_SECONDS = 2.0  # how long a waiter gives the subscription to come up before reading alone


class Completions:
    """The job-closed subscription of one event loop, and the requests waiting on it."""

    def __init__(self, url: str) -> None:
        self.redis = aioredis.Redis.from_url(url, health_check_interval=30)
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._subscribed = asyncio.Event()
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name="digitq-completions")

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(CLOSED_CHANNEL)
                    async for message in pubsub.listen():
                        if message["type"] == "subscribe":
                            self._subscribed.set()
                        elif message["type"] == "message":
                            self._wake(message["data"].decode())
            except (redis.RedisError, OSError) as exc:
                log.warning("job-closed subscription lost (%s); reconnecting", type(exc).__name__)
            self._subscribed.clear()
            for job_id in list(self._waiters):  # a close may have been missed: read again
                self._wake(job_id)
            await asyncio.sleep(RECONNECT_SECONDS)

    def _wake(self, job_id: str) -> None:
        for future in self._waiters.get(job_id, ()):
            if not future.done():
                future.set_result(None)

    async def status(self, job_id: str) -> JobStatus | None:
        raw = await self.redis.hget(PREFIX + job_id, "status")
        return JobStatus(raw.decode()) if raw else None

    async def read(self, job_id: str, limit: int) -> tuple[Job | None, list[ItemResult | None]]:
        """The job and the results of its first `limit` items, in one round trip (no thread)."""
        job_key, _, results_key = JobStore._keys(job_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(job_key)
            pipe.pttl(job_key)
            pipe.hmget(results_key, [str(i) for i in range(limit)] or ["-"])
            raw, ttl, results = await pipe.execute()
        job = JobStore._job(job_id, raw, ttl)
        count = min(limit, job.total) if job else 0
        return job, [ItemResult.from_json(i, r) if r else None for i, r in enumerate(results[:count])]

    async def wait(self, job_id: str, timeout: float) -> JobStatus | None:
        """Until the job ends or `timeout` s pass; its status then (None: no such job)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), min(timeout, SUBSCRIBE_SECONDS))
        waiters = self._waiters.setdefault(job_id, set())
        try:
            while True:
                future = loop.create_future()
                waiters.add(future)  # before reading: a close from now on wakes it
                try:
                    status = await self.status(job_id)
                    remaining = deadline - loop.time()
                    if status is None or status in TERMINAL or remaining <= 0:
                        return status
                    try:
                        await asyncio.wait_for(future, remaining)
                    except TimeoutError:
                        return await self.status(job_id)
                finally:
                    waiters.discard(future)
        finally:
            if not waiters and self._waiters.get(job_id) is waiters:
                del self._waiters[job_id]


_by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Completions]" = weakref.WeakKeyDictionary()


def get_completions() -> Completions:
    """This event loop's subscription (one per API process; TestClient runs a loop per request)."""
    loop = asyncio.get_running_loop()
    completions = _by_loop.get(loop)
    if completions is None:
        url = get_settings().redis_url
        if not url:
            raise RuntimeError("REDIS_URL is not set (make run sets it for the embedded Redis)")
        completions = _by_loop[loop] = Completions(url)
    return completions
