"""Wait for a job to end without polling and without a thread per waiting request.

The Lua scripts that end a job (the last result recorded, a cancel) PUBLISH its id on
`CLOSED_CHANNEL` (core/jobs.py). Each API process (each event loop) holds one subscription and
wakes the requests waiting on that id: a thousand waiting requests cost one Redis connection and
a future each. A waiter registers before it reads the job's status, so a job that ends between
the two is seen one way or the other (/predict registers before it even creates its job, and
then needs no read of its status while the subscription stays up; a small job closed by one call
comes with its results: `<id> {"model_version": ..., "results": [...]}`, and /predict reads
nothing at all). When the subscription drops, every
waiter is woken once it is back, to read its job's status (a close published in between was
missed), and each reads it once more when its time runs out.
"""

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable

import redis
import redis.asyncio as aioredis

from core import job_keys
from core.config import get_settings
from core.job_keys import CLOSED_CHANNEL
from core.jobs import TERMINAL, ItemResult, Job, JobStatus, JobStore
from core.redis_owner import client_options

log = logging.getLogger(__name__)
RECONNECT_SECONDS = 0.5
Ended = bool | bytes  # what a wait gives: ended or not, or ended with the answer its close published
SUBSCRIBE_SECONDS = 2.0  # how long a waiter gives the subscription to come up before reading alone


class Completions:
    """The job-closed subscription of one event loop, and the requests waiting on it."""

    def __init__(self, url: str) -> None:
        # No socket timeout: the subscription waits for messages as long as none come.
        self.redis = aioredis.Redis.from_url(
            url, health_check_interval=30, **client_options(url, asynchronous=True, timeouts=False)
        )
        # Per job id, the futures of its waiters: set by the job's close (True, or its published
        # answer), False by a lost subscription.
        self._waiters: dict[str, set[asyncio.Future[Ended]]] = {}
        self._subscribed = asyncio.Event()
        self._generation = 0  # subscriptions made so far: a waiter compares it to know none dropped
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name="digitq-completions")

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(CLOSED_CHANNEL)
                    async for message in pubsub.listen():
                        if message["type"] == "subscribe":
                            self._generation += 1
                            self._subscribed.set()
                            # Subscribed again after a drop: closes published meanwhile were
                            # missed, so every waiter reads its job's status once more.
                            for job_id in list(self._waiters):
                                self._wake(job_id, False)
                        elif message["type"] == "message":
                            job_id, _, answer = message["data"].partition(b" ")
                            self._wake(job_id.decode(), answer or True)
            except (redis.RedisError, OSError) as exc:
                log.warning("job-closed subscription lost (%s); reconnecting", type(exc).__name__)
            self._subscribed.clear()
            await asyncio.sleep(RECONNECT_SECONDS)

    def _wake(self, job_id: str, closed: Ended) -> None:
        for future in self._waiters.get(job_id, ()):
            if not future.done():
                future.set_result(closed)

    async def _ended(self, job_id: str) -> bool:
        raw = await self.redis.hget(job_keys.job(job_id), "status")
        return isinstance(raw, bytes) and JobStatus(raw.decode()) in TERMINAL

    async def read(self, job_id: str, limit: int) -> tuple[Job | None, list[ItemResult | None]]:
        """The job and the results of its first `limit` items, in one round trip (no thread)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            JobStore.queue_job_with_results(pipe, job_id, limit)
            replies = await pipe.execute()
        return JobStore.job_with_results(job_id, limit, replies)

    async def wait(
        self, job_id: str, timeout: float, create: Callable[[], Awaitable[object]] | None = None
    ) -> Ended:
        """Whether the job ended within `timeout` s (False also for a job that does not exist):
        its published answer (bytes, core/jobs.py ANSWER_MAX_ITEMS) when its close carried one.

        `create`: makes the job `job_id`, called once this waiter is registered. While the
        subscription stays up from then on, the job's close cannot go unseen, so no read of its
        status is needed: the answer costs no Redis round trip beyond the notification.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), min(timeout, SUBSCRIBE_SECONDS))
        generation = self._generation if self._subscribed.is_set() else -1
        waiters = self._waiters.setdefault(job_id, set())
        future: asyncio.Future[Ended] = loop.create_future()
        waiters.add(future)  # before reading (or creating): a close from now on wakes it
        try:
            if create is not None:
                await create()
            unseen = create is not None and generation == self._generation  # watched since before it existed
            while True:
                if future.done() and future.result():
                    return future.result()  # its close was published
                if not (unseen and not future.done()) and await self._ended(job_id):
                    return True
                unseen = False
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                try:
                    if ended := await asyncio.wait_for(future, remaining):
                        return ended
                except TimeoutError:
                    return await self._ended(job_id)  # a close lost while reconnecting is seen here
                waiters.discard(future)  # woken by a lost subscription: watch again, then read
                future = loop.create_future()
                waiters.add(future)
        finally:
            waiters.discard(future)
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


_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis]" = weakref.WeakKeyDictionary()


def get_async_redis() -> aioredis.Redis:
    """This event loop's plain async client (no subscription): for the per-request counts, so that
    an ordinary request never starts the job-closed listener (TestClient closes a loop per request,
    and a listener cancelled mid-subscribe can hold that close up)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        url = get_settings().redis_url
        if not url:
            raise RuntimeError("REDIS_URL is not set (make run sets it for the embedded Redis)")
        client = _clients[loop] = aioredis.Redis.from_url(url, **client_options(url, asynchronous=True))
    return client
