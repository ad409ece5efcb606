"""Job state in Redis: one hash per job, the item names in input order, one result per item
(and, per chunk, how often it was started), under the keys core/job_keys.py names.

Results are written per item with HSETNX inside a Lua script (core/lua/jobs_record.lua) that also
bumps the counters and closes the job when the last item lands. A chunk delivered twice therefore
never duplicates or loses an item, and the counters always equal the number of stored results.

This module and its siblings are the only code that reads or writes a job's keys, each for one
concern:
- here, `JobStore`: a job's life. Created; read (`get`, `names`, `results`); a chunk starts with one
  call (`start_chunk`), ends with one (`record`, which counts its metrics too), or, a one-trip
  chunk (a small job's only chunk, core/queue.py), does both in `record` after its work;
  `cancel` and `fail` end it otherwise.
- core/idempotency.py: Idempotency-Key claims (`SubmissionClaims`).
- core/webhook_state.py: the webhook delivery state kept on the job hash (`WebhookState`).
- core/sweep_state.py: what the stuck-job sweep reads and marks (`SweepState`).
- core/labels.py: people's labels on the items.
"""

import json
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.client import Pipeline
from redis.typing import EncodableT, FieldT

from core import fleet, job_keys, kept_uploads, listing, quotas, scripts
from core.job_keys import ACTIVE, CLOSED_CHANNEL
from core.metrics import KEY as METRICS_KEY
from core.metrics import LUA_VALUES as METRICS_LUA_VALUES
from core.queue import InFlight

# A job of at most this many images closed by one call that stored all its results (a /predict, a
# small /predict_batch) is published with them: `<job id> {"model_version": ..., "results": [...]}`
# (written into core/lua/jobs_record.lua by the loader).
ANSWER_MAX_ITEMS = 100
JOB_ID = re.compile(r"[0-9a-f]{32}")  # what new_job_id() makes; anything else names no job
# Names and error texts are stored for a week (names once, errors per item): cap them.
MAX_NAME_CHARS = 512
MAX_ERROR_CHARS = 512


def cap(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with a marker saying so."""
    return text if len(text) <= limit else text[: limit - 15] + "…[truncated]"


def is_job_id(value: str) -> bool:
    return JOB_ID.fullmatch(value) is not None


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled}


@dataclass(frozen=True)
class Job:
    id: str
    status: JobStatus
    created_at: float
    started_at: float | None
    finished_at: float | None
    total: int
    done: int
    failed: int
    model_version: str | None
    error: str | None
    owner: str | None = None  # who submitted it (a digest of their API key), when keys are on
    expires_at: float | None = None  # when Redis deletes the job and its results
    metadata: dict[str, str] | None = None  # the client's own labels, echoed back (issue 11)
    webhook: dict[str, str] | None = None  # `webhook_*` hash fields, prefix removed (core/webhooks.py)


@dataclass(frozen=True)
class ItemResult:
    index: int
    digit: int | None = None
    confidence: float | None = None
    low_confidence: bool = False
    error: str | None = None

    def to_json(self) -> str:
        # The usual item, written directly: json.dumps costs ~6 us an item, 250 a chunk. repr is
        # json's float form; NaN and infinities (never a confidence) are left to json.dumps.
        confidence = self.confidence
        if (
            self.error is None
            and type(self.digit) is int
            and type(confidence) is float
            and math.isfinite(confidence)
        ):
            low = "true" if self.low_confidence else "false"
            return f"[{self.digit},{confidence!r},{low},null]"
        error = None if self.error is None else cap(self.error, MAX_ERROR_CHARS)
        return json.dumps([self.digit, self.confidence, self.low_confidence, error], separators=(",", ":"))

    @classmethod
    def from_json(cls, index: int, raw: bytes | str) -> "ItemResult":
        digit, confidence, low_confidence, error = json.loads(raw)
        return cls(index, digit, confidence, low_confidence, error)


@dataclass(frozen=True)
class Recorded:
    """What a chunk stored: all the task needs for its metrics and log line."""

    added: int  # results that were new (a redelivered chunk adds none)
    failed: int  # of those, errors
    closed_job: bool  # this call stored the job's last item
    status: JobStatus | None = None  # the job's, after this call (None: it expired)
    job_seconds: float | None = None  # created -> finished, when this call closed the job
    moved: str | None = None  # a one-trip record refused: the fleet serves this other version


@dataclass(frozen=True)
class ChunkStart:
    """A chunk's job as the chunk starts: what is left to do, and with which model version."""

    status: JobStatus | None  # None: the job expired
    model_version: str | None
    todo: list[int]  # the chunk's items without a result (a redelivered chunk may have none)
    deliveries: int = 0  # starts of this delivery's chunk so far, this one included (0: nothing to do)
    has_webhook: bool = False  # the job asked for webhooks (set at creation only): else no events
    fleet_version: str | None = None  # `follow`: the fleet's version, when it is not the caller's


def new_job_id() -> str:
    return uuid.uuid4().hex


Raw = bytes | str  # what redis-py may answer (bytes here: the client doesn't decode)


def text(value: Raw) -> str:
    return value.decode() if isinstance(value, bytes) else value


def opt_float(value: Raw | None) -> float | None:
    return float(value) if value else None


def opt_str(value: Raw | None) -> str | None:
    return text(value) if value else None


class JobStore:
    """A job's life in Redis: created, read, started and recorded per chunk, cancelled or failed."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        self._record = scripts.register(
            client,
            "jobs_record",
            ANSWER_MAX_ITEMS=ANSWER_MAX_ITEMS,
            KEPT_EXTRA_SECONDS=kept_uploads.KEPT_EXTRA_SECONDS,
            **METRICS_LUA_VALUES,
        )
        self._start_chunk = scripts.register(client, "jobs_start_chunk")
        self._finish = scripts.register(client, "jobs_finish")
        self._set_if_exists = scripts.register(client, "jobs_set_if_exists")

    def create(
        self,
        job_id: str,
        names: Sequence[str],
        owner: str | None = None,
        extra: Mapping[str, EncodableT] | None = None,
        claim: str | None = None,
        also: Callable[[Pipeline], object] | None = None,
    ) -> None:
        """`extra`: more hash fields (`metadata`, `webhook_*`, `parts`); `claim`: the Idempotency-Key
        claim naming this job (core/idempotency.py), kept from now on as long as the job; `also`:
        more commands for the same round trip (the submission's metrics)."""
        job, names_key, results = job_keys.job(job_id), job_keys.names(job_id), job_keys.results(job_id)
        pipe = self.redis.pipeline()
        created_at = time.time()
        fields: dict[FieldT, EncodableT] = {"status": JobStatus.queued.value, "created_at": created_at}
        fields.update(total=len(names), done=0, failed=0)
        if owner:
            fields["owner"] = owner
        fields.update(extra or {})
        pipe.hset(job, mapping=fields)
        names = [cap(name, MAX_NAME_CHARS) for name in names]
        listing.add(pipe, owner, job_id, created_at, self.ttl)
        pipe.zadd(ACTIVE, {job_id: created_at})
        pipe.expire(ACTIVE, self.ttl)
        if claim:
            pipe.expire(job_keys.idempotency(claim), self.ttl)
        for start in range(0, len(names), 10_000):
            pipe.rpush(names_key, *names[start : start + 10_000])
        for key in (job, names_key, results):
            pipe.expire(key, self.ttl)
        if also is not None:
            also(pipe)
        pipe.execute()

    def get(self, job_id: str) -> Job | None:
        return self.get_many([job_id])[0]

    def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        """Several jobs in one round trip (listings)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            key = job_keys.job(job_id)
            pipe.hgetall(key)
            pipe.pttl(key)
        replies = pipe.execute()
        return [self._job(i, r, t) for i, r, t in zip(job_ids, replies[::2], replies[1::2], strict=True)]

    @staticmethod
    def _job(job_id: str, raw: dict, ttl_ms: int) -> Job | None:
        if not raw:
            return None
        h = {text(k): v for k, v in raw.items()}
        return Job(
            id=job_id,
            status=JobStatus(text(h["status"])),
            created_at=float(h["created_at"]),
            started_at=opt_float(h.get("started_at")),
            finished_at=opt_float(h.get("finished_at")),
            total=int(h["total"]),
            done=int(h["done"]),
            failed=int(h["failed"]),
            model_version=opt_str(h.get("model_version")),
            error=opt_str(h.get("error")),
            owner=opt_str(h.get("owner")),
            expires_at=time.time() + ttl_ms / 1000 if ttl_ms > 0 else None,
            metadata=json.loads(h["metadata"]) if h.get("metadata") else None,
            webhook={k[8:]: text(v) for k, v in h.items() if k.startswith("webhook_")} or None,
        )

    @staticmethod
    def queue_job_with_results(pipe: Pipeline | AsyncPipeline, job_id: str, limit: int) -> None:
        """Queue on `pipe` (a sync or an asyncio pipeline: api/waiting.py reads on the event loop)
        the reads of the job and of the results of its first `limit` items; `job_with_results`
        turns the pipeline's replies into them."""
        job_key = job_keys.job(job_id)
        pipe.hgetall(job_key)
        pipe.pttl(job_key)
        pipe.hmget(job_keys.results(job_id), [str(i) for i in range(limit)] or ["-"])

    @staticmethod
    def job_with_results(
        job_id: str, limit: int, replies: Sequence[Any]
    ) -> tuple[Job | None, list[ItemResult | None]]:
        """The job and its first `limit` results from the replies `queue_job_with_results` queued."""
        raw, ttl, results = replies
        job = JobStore._job(job_id, raw, ttl)
        count = min(limit, job.total) if job else 0
        return job, [ItemResult.from_json(i, r) if r else None for i, r in enumerate(results[:count])]

    def status(self, job_id: str) -> JobStatus | None:
        raw = self.redis.hget(job_keys.job(job_id), "status")
        return JobStatus(text(raw)) if raw else None

    def names(self, job_id: str, offset: int, limit: int) -> list[str]:
        raw = self.redis.lrange(job_keys.names(job_id), offset, offset + limit - 1)
        return [text(n) for n in raw]

    def results(self, job_id: str, indices: Sequence[int]) -> list[ItemResult | None]:
        if not indices:
            return []
        raw = self.redis.hmget(job_keys.results(job_id), [str(i) for i in indices])
        return [ItemResult.from_json(i, r) if r else None for i, r in zip(indices, raw, strict=True)]

    def missing(self, job_id: str, indices: Sequence[int]) -> list[int]:
        """The indices that have no result yet (a redelivered chunk skips the rest)."""
        return [i for i, r in zip(indices, self.results(job_id, indices), strict=True) if r is None]

    def upload_parts(self, job_id: str) -> tuple[int, bool]:
        """How many parts the job's upload has, and whether they travelled in its messages (then
        the workers store them as they run: core/kept_uploads.py), to read its items back: the
        API shows their images."""
        parts, inline = self.redis.hmget(job_keys.job(job_id), ["parts", "inline_parts"])
        return int(parts or 0) or int(inline or 0), bool(inline)

    def start_chunk(
        self,
        job_id: str,
        indices: Sequence[int],
        model_version: str,
        delivery: str = "",
        follow: bool = False,
        uncounted: int = 0,
    ) -> ChunkStart:
        """One call as a chunk starts: which of `indices` are still to do and, when some are,
        the job marked running, its model version pinned (the first chunk to start wins) and
        the start counted under `delivery` (in the job's deliveries hash). `follow`: if the fleet
        serves another version than `model_version` (a reload), only that is returned
        (`fleet_version`), nothing done: switch to it, then start again. `uncounted`: earlier
        starts of this delivery that were not counted (a one-trip chunk's first), added to the
        count the first time it is counted."""
        keys = [
            job_keys.job(job_id),
            job_keys.results(job_id),
            job_keys.deliveries(job_id),
            fleet.CURRENT_KEY,
        ]
        args: list[str | float] = [time.time(), model_version, delivery, self.ttl, int(follow), uncounted]
        args += indices
        reply = json.loads(self._start_chunk(keys=keys, args=args))
        status = reply.get("status")
        return ChunkStart(
            status=JobStatus(status) if status else None,
            model_version=reply.get("model_version"),
            todo=[int(i) for i in reply.get("todo") or ()],
            deliveries=int(reply.get("deliveries", 0)),
            has_webhook=bool(reply.get("has_webhook")),
            fleet_version=reply.get("fleet_version"),
        )

    def record(
        self,
        job_id: str,
        results: Iterable[ItemResult],
        tenant: str = "",
        seconds: float | None = None,
        start: tuple[float, str] | None = None,
        follow: bool = False,
        forget: InFlight | None = None,
        keep_seconds: int = 0,
    ) -> Recorded:
        """Store the results that are not stored yet, closing the job with its last item, and
        give the tenant's queued-images quota back its finished items; the items' figures are
        counted (core/metrics.py), and `seconds`: the chunk's work time, observed.
        `start`: (started at, model version) of a one-trip chunk, which starts here; `follow`:
        only if the fleet serves that version, else nothing is written (`moved`).
        In the same round trip, unless `moved`: `forget`, the chunk taken off its in-flight set
        (core/dispatch.py); `keep_seconds`, the job's upload kept that long from its close
        (core/kept_uploads.py)."""
        now = time.time()
        triples: list[Any] = []
        for r in results:
            triples += [r.index, r.to_json(), int(r.error is not None)]
        options: dict[str, Any] = {}
        if seconds is not None:
            options.update(seconds=seconds, items=len(triples) // 3)
        if start is not None:
            options.update(start=start[0], model=start[1], follow=follow)
        if forget is not None:
            options.update(forget=forget.chunk_id, prefix=forget.prefix)
        if keep_seconds > 0:
            options.update(keep=keep_seconds)
        keys = [job_keys.job(job_id), job_keys.results(job_id), quotas.queued_key(tenant), quotas.OUTSTANDING]
        keys += [ACTIVE, CLOSED_CHANNEL, METRICS_KEY, fleet.CURRENT_KEY]
        keys += [forget.key if forget else "", kept_uploads.KEPT]
        reply = json.loads(self._record(keys=keys, args=[repr(now), job_id, json.dumps(options), *triples]))
        if reply.get("gone"):
            return Recorded(0, 0, False)  # the job expired meanwhile
        if "moved" in reply:
            return Recorded(0, 0, False, moved=reply["moved"])
        closed = bool(reply["closed"])
        seconds = max(0.0, now - float(reply["created_at"])) if closed else None
        return Recorded(
            int(reply["added"]), int(reply["failed"]), closed, JobStatus(reply["status"]), seconds
        )

    def cancel(self, job_id: str, tenant: str = "") -> bool:
        """Close a queued or running job; its unfinished items go back to the tenant's quota."""
        keys = [job_keys.job(job_id), quotas.queued_key(tenant), quotas.OUTSTANDING]
        keys += [ACTIVE, CLOSED_CHANNEL, METRICS_KEY]
        args: list[Any] = [time.time(), JobStatus.cancelled.value, "", job_id]
        return self._finish(keys=keys, args=args) == 1

    def fail(self, job_id: str, error: str) -> None:
        """Remember a job-level error; the job ends as failed once its items are accounted for.
        Nothing is written for a job that no longer exists."""
        self._set_if_exists(keys=[job_keys.job(job_id)], args=["error", cap(error, MAX_ERROR_CHARS)])
