"""`GET /jobs`: each owner's jobs, newest first, from an index instead of a SCAN.

One sorted set per owner (the digest of its API key, or `open` without keys), member the job id,
score its creation time. It is bounded: entries older than JOB_TTL_SECONDS (their jobs are gone)
are pruned on every submission, and the whole set expires a TTL after the owner's last one.
Entries whose job vanished early (a shorter TTL once) are skipped, and pruned with the rest.

The cursor is a job id (`after=`): the page starts just below it (ZREVRANK), so jobs submitted
meanwhile never shift a client's pages. A status filter reads job hashes until it has a page or
has read SCAN_BUDGET of them; the page may then be short, and `next` resumes where it stopped,
so no request costs more than a bounded amount of work even when few jobs match.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import redis

INDEX_PREFIX = "digitq:owner:"
SCAN_BUDGET = 5_000  # job hashes one filtered listing request may read


class UnknownCursor(LookupError):
    """`after=` names no job of this owner's listing (another owner's, or expired)."""


class Listed(Protocol):
    """A job as a listing needs it (core/jobs.py `Job`): this module is below core/jobs.py, which
    indexes each job here when it creates it, so it names no type of that module."""

    @property
    def status(self) -> str: ...


J = TypeVar("J", bound=Listed)


class Jobs(Protocol[J]):
    """Where a listing reads the jobs it finds in the index (core/jobs.py `JobStore`)."""

    @property
    def redis(self) -> "redis.Redis": ...

    def get_many(self, job_ids: Sequence[str]) -> list[J | None]: ...


@dataclass(frozen=True)
class Page(Generic[J]):
    jobs: list[J]
    next_after: str | None  # the cursor of the next page, or None at the end


def index_key(owner: str | None) -> str:
    return f"{INDEX_PREFIX}{owner or 'open'}:jobs"


def add(pipe: "redis.client.Pipeline", owner: str | None, job_id: str, at: float, ttl: int) -> None:
    """Index a new job (inside the pipeline that creates it), pruning entries that expired."""
    key = index_key(owner)
    pipe.zadd(key, {job_id: at})
    pipe.zremrangebyscore(key, "-inf", at - ttl)
    pipe.expire(key, ttl)


def page(
    store: Jobs[J],
    owner: str | None,
    limit: int,
    after: str | None = None,
    status: str | None = None,
    budget: int = SCAN_BUDGET,
) -> Page[J]:
    client, key = store.redis, index_key(owner)
    start = 0
    if after:
        rank = client.zrevrank(key, after)
        if rank is None:
            raise UnknownCursor(after)
        start = int(rank) + 1  # type: ignore[arg-type]  # no WITHSCORE: an int
    found: list[J] = []
    last: str | None = None
    batch = limit if status is None else max(limit, 500)
    first = start
    while len(found) < limit and start - first < budget:
        count = min(batch, budget - (start - first))
        raw = client.zrevrange(key, start, start + count - 1)
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in raw]
        if not ids:
            break
        for job_id, job in zip(ids, store.get_many(ids), strict=True):
            start += 1
            last = job_id
            if job is not None and (status is None or job.status == status):
                found.append(job)
                if len(found) == limit:
                    break
    more = last is not None and client.zcard(key) > start
    return Page(found, last if more else None)
