"""Putting a job's chunks on the queue: `dispatch()`, the bulk lane's fair share, and the record
of every chunk queued or running (both lanes), from which the sweeps work.

An interactive job (core/queue.py `lane_for`) sends its chunks at once, right after the job is
created (api/routes/jobs.py tracks them in the MULTI/EXEC that creates the job, then publishes
them). A bulk job does not: its chunks wait in Redis, and only a small window of bulk chunks is
in the broker or running at any time (BULK_IN_FLIGHT_CHUNKS; by default the live pool processes
+ 2, enough to keep every process busy since a chunk refills the window before it is
acknowledged). Each free slot goes to the next API key in a ring of keys with waiting chunks, and
within that key to the next of its jobs, so two keys share the workers evenly whatever their
number of jobs, and a new key's job starts within about one chunk time.

Keys (all bounded, all expiring after JOB_TTL_SECONDS of no writes):
- `digitq:fair:tenants`: ring (LIST) of the tenants with waiting chunks.
- `digitq:fair:tenant:<tenant>`: ring of that tenant's jobs with waiting chunks.
- `digitq:fair:queue:<job>`: the job's waiting chunks (first item indices), in order.
- `digitq:fair:chunks:<job>`: HASH first index -> chunk JSON, of waiting and in-flight chunks
  (both lanes): what the stuck-job sweep reads to know which items some chunk still carries.
- `digitq:fair:inflight`: ZSET `<job>:<first index>` -> when it was (re)sent, of the bulk lane:
  the window, so at most its size.
- `digitq:fair:inflight:interactive`: the same for the interactive lane (not counted against the
  window): its chunks from before they are published until their task finishes.
The scripts touch a job's keys by name (Lua builds them): fine on one Redis, not on a cluster.

Crashes: a chunk whose worker dies stays in flight while the broker redelivers it (acks_late,
visibility timeout). A chunk is taken off its in-flight set (and the window refilled, in the
bulk lane) in one script when its task finishes; a process may die between tracking chunks and
publishing them (the API after creating a job, a worker after a refill picked them), or the
publish may fail, or a message may be lost in the broker: the chunks stay in flight and the
sweeper (each worker's main process, every few seconds) publishes again any that stayed there
longer than STALE_AFTER (2 x the visibility timeout: longer than a redelivered chunk can take),
and refills the window, so no job is left stuck. A chunk sent twice is harmless: results are
written per item with HSETNX (core/jobs.py), and a task skips the items already stored.
"""

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace

import redis
from celery import Celery
from redis.client import Pipeline

from core import fleet, scripts
from core.config import Settings
from core.queue import BULK, Chunk, InFlight, lane_for, send_chunks

log = logging.getLogger(__name__)

PREFIX = "digitq:fair:"
TENANTS = PREFIX + "tenants"
INFLIGHT = PREFIX + "inflight"  # the bulk lane's window
INFLIGHT_INTERACTIVE = PREFIX + "inflight:interactive"
SLACK = 2  # chunks queued beyond one per pool process: the next one is there when a process frees


class FairShare:
    """The bulk lane's waiting chunks and its window (state in Redis, shared by every process)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self.ttl = settings.job_ttl_seconds
        self.stale_after = 2.0 * settings.visibility_timeout
        self._refill = scripts.register(client, "dispatch_refill")
        self._stale = scripts.register(client, "dispatch_stale")
        self._join = scripts.register(client, "dispatch_join")
        self._done = scripts.register(client, "dispatch_done")
        self._budget, self._budget_until = 1 + SLACK, 0.0

    def budget(self) -> int:
        """How many bulk chunks may be in the broker or running at once (the fleet's size is
        read from the heartbeats at most once per heartbeat period: it is called per chunk)."""
        if self.settings.bulk_in_flight_chunks:
            return self.settings.bulk_in_flight_chunks
        now = time.monotonic()
        if now >= self._budget_until:
            self._budget = max(fleet.processes(self.redis), 1) + SLACK
            self._budget_until = now + fleet.HEARTBEAT_SECONDS
        return self._budget

    def add(self, chunks: Sequence[Chunk]) -> None:
        """Queue a new job's chunks (all of one job and tenant) behind the window."""
        job_id, tenant = chunks[0].job_id, chunks[0].tenant
        chunks_key, queue, ring = (f"{PREFIX}{kind}:{name}" for kind, name in
                                   (("chunks", job_id), ("queue", job_id), ("tenant", tenant)))  # fmt: skip
        pipe = self.redis.pipeline()
        for start in range(0, len(chunks), 1000):
            part = chunks[start : start + 1000]
            pipe.hset(chunks_key, mapping={str(c.items[0].index): json.dumps(c.to_json()) for c in part})
            pipe.rpush(queue, *[c.items[0].index for c in part])
        pipe.rpush(ring, job_id)
        for key in (chunks_key, queue, ring):
            pipe.expire(key, self.ttl)
        pipe.execute()
        # After its job is in its ring: a refill that sees the tenant also sees the job.
        self._join(keys=[TENANTS], args=[tenant, self.ttl])

    def refill(self, finished: Chunk | None = None) -> list[Chunk]:
        """Take `finished` off the window, then fill it: the chunks the caller must send now."""
        args: list[str | int | float] = [self.budget(), time.time(), self.ttl, PREFIX]
        if finished is not None:
            args.append(finished.id)
        raw = self._refill(keys=[TENANTS, INFLIGHT], args=args)
        return [Chunk.from_json(json.loads(r)) for r in raw]

    def track(self, pipe: Pipeline, chunks: Sequence[Chunk]) -> None:
        """Record chunks about to be published straight to their lane, in flight from now (in
        `pipe`: the job's creation, so no worker can finish one before it is tracked)."""
        now = time.time()
        for chunk in chunks:
            carried = f"{PREFIX}chunks:{chunk.job_id}"
            pipe.hset(carried, str(chunk.items[0].index), json.dumps(chunk.to_json()))
            pipe.expire(carried, self.ttl)
            pipe.zadd(inflight_of(chunk), {chunk.id: now})
        for key in {inflight_of(chunk) for chunk in chunks}:
            pipe.expire(key, self.ttl)

    def done(self, chunk: Chunk) -> None:
        """An interactive chunk finished: no longer in flight (a bulk one: `refill(chunk)`)."""
        self._done(keys=[inflight_of(chunk)], args=[chunk.id, PREFIX])

    @staticmethod
    def in_flight(chunk: Chunk) -> InFlight | None:
        """An interactive chunk's in-flight entry, for the script that records its results to
        forget (core/jobs.py `record`: `done` in the same round trip); None for a bulk chunk,
        whose finish also refills the window (`finished`)."""
        return None if chunk.lane == BULK else InFlight(inflight_of(chunk), chunk.id, PREFIX)

    def stale(self) -> list[Chunk]:
        """In-flight chunks not finished long after they were sent (lost sends, lost messages):
        send them again. A one-trip chunk goes again as an ordinary one (core/queue.py)."""
        now = time.time()
        found = []
        for inflight in (INFLIGHT, INFLIGHT_INTERACTIVE):
            raw = self._stale(keys=[inflight], args=[now - self.stale_after, now, PREFIX])
            found += [replace(Chunk.from_json(json.loads(r)), one_trip=False) for r in raw]
        return found

    def carried(self, job_id: str) -> set[int]:
        """The job's item indices in chunks waiting for the window or in flight, in either lane
        (the stuck-job sweep leaves those to this module's sweeper)."""
        found: set[int] = set()
        for raw in self.redis.hvals(f"{PREFIX}chunks:{job_id}"):
            found.update(item[0] for item in json.loads(raw)["items"])
        return found

    def forget(self, job_id: str) -> None:
        """A cancelled job's waiting chunks are never sent (its ring entry goes on the next refill)."""
        self.redis.delete(f"{PREFIX}queue:{job_id}", f"{PREFIX}chunks:{job_id}")


def inflight_of(chunk: Chunk) -> str:
    return INFLIGHT if chunk.lane == BULK else INFLIGHT_INTERACTIVE


def dispatch(celery: Celery, fair: FairShare, chunks: Sequence[Chunk], tracked: bool = False) -> None:
    """Put a new job's chunks to work: all at once in the interactive lane (tracked first, unless
    `tracked` already, in the job's creation), else behind the window."""
    if not chunks:
        return
    if chunks[0].lane != BULK:
        if not tracked:
            pipe = fair.redis.pipeline(transaction=False)
            fair.track(pipe, chunks)
            pipe.execute()
        send_chunks(celery, chunks)
        return
    fair.add(chunks)
    send_chunks(celery, fair.refill())


def resend(celery: Celery, fair: FairShare, chunks: Sequence[Chunk]) -> int:
    """Publish chunks straight to their lanes, tracked (the stuck-job sweep's lost items: few and
    rare, the window need not pace them; a bulk one counts in the window until it finishes)."""
    if not chunks:
        return 0
    pipe = fair.redis.pipeline(transaction=False)
    fair.track(pipe, chunks)
    pipe.execute()
    return send_chunks(celery, chunks)


def finished(celery: Celery, fair: FairShare, chunk: Chunk) -> None:
    """A chunk is done (or has nothing left to do): no longer in flight; in the bulk lane, its
    window slot goes to the next chunk."""
    if chunk.lane == BULK:
        send_chunks(celery, fair.refill(chunk))
    else:
        fair.done(chunk)


def sweep(celery: Celery, fair: FairShare) -> int:
    """Catch up what crashed processes missed: lost sends and missed refills. Returns chunks sent."""
    chunks = fair.stale() + fair.refill()
    if chunks:
        log.info("fair-share sweep sent %d chunk(s)", len(chunks))
    send_chunks(celery, chunks)
    return len(chunks)


__all__ = ["FairShare", "dispatch", "finished", "lane_for", "resend", "sweep"]
