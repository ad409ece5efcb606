"""Job state in Redis: one hash per job, the item names in input order, one result per item
(and, per chunk, how often it was started: `:deliveries`).

Results are written per item with HSETNX inside a Lua script that also bumps the counters and
closes the job when the last item lands. A chunk delivered twice therefore never duplicates or
loses an item, and the counters always equal the number of stored results.

This is the only module that reads or writes a job's keys: a chunk starts with one call
(`start_chunk`), ends with one (`record`, which counts its metrics too), or, a one-trip chunk (a
small job's only chunk, core/queue.py), does both in `record` after its work; and the webhook
state on the job hash goes through `webhook_trigger`/`record_webhook_attempt`.
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

from core import fleet, listing, quotas
from core.metrics import KEY as METRICS_KEY
from core.metrics import OBSERVE_LUA

PREFIX = "digitq:job:"
# Per job: how often each chunk was started (`start_chunk`), a field per chunk, expiring with the
# job: kept apart from the job hash, which the API reads whole.
DELIVERIES_SUFFIX = ":deliveries"
# Pub/sub channel: the id of every job that ends (last item recorded, or cancelled), published by
# the Lua scripts that end it, so `Prefer: wait` and /predict learn of it without polling.
CLOSED_CHANNEL = "digitq:jobs:closed"
# A job of at most this many images closed by one call that stored all its results (a /predict, a
# small /predict_batch) is published with them: `<job id> {"model_version": ..., "results": [...]}`.
ANSWER_MAX_ITEMS = 100
IDEMPOTENCY_PREFIX = "digitq:idempotency:"
# Jobs not yet closed, scored by creation time: what the stuck-job sweep (worker/stuck_jobs.py) reads
# instead of a SCAN. A job leaves it when it closes; entries older than the TTL are pruned.
ACTIVE = "digitq:jobs:active"
# An Idempotency-Key is first claimed for this long only: if the attempt that claimed it dies
# before its job exists (API killed mid-upload), a retry may create the job after this. Storing
# a 200 MB upload takes seconds; creating the job extends the claim to the job's TTL.
CLAIM_SECONDS = 300
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


# KEYS: job hash, results hash, the tenant's queued-images count (core/quotas.py), active index,
# closed channel, metrics hash (core/metrics.py), the fleet's model version (core/fleet.py), the
# images outstanding per lane (core/quotas.py).
# ARGV: now, job id, options (JSON, below), then (index, result json, failed 0/1) triples in item
# order. Options: `seconds` and `items`, the chunk's work (its figures are counted here, with its
# results); `start` (a time) and `model`: a one-trip chunk (core/queue.py Chunk.one_trip) starts
# here, after its work: the job marked running (if it still is queued) with the version pinned;
# with `follow`, only if the fleet serves that version (else nothing is written: {'moved',
# fleet version}; the caller switches, works again and records without `follow`).
# A close whose call stored every one of the job's results (at most ANSWER_MAX_ITEMS, in item
# order) publishes them with the job id: the request waiting for it (api/waiting.py) needs no read.
# {added, failed, closed 0/1, status, created_at}
_RECORD = (
    OBSERVE_LUA
    + f"local ANSWER_MAX_ITEMS = {ANSWER_MAX_ITEMS}\n"
    + """
local job, results, queued, metrics = KEYS[1], KEYS[2], KEYS[3], KEYS[6]
if redis.call('EXISTS', job) == 0 then return -1 end
local opts = cjson.decode(ARGV[3])
local status = redis.call('HGET', job, 'status')
if opts.follow then
  local fleet = redis.call('GET', KEYS[7])
  if fleet and fleet ~= opts.model then return {'moved', fleet} end
end
local created = redis.call('HGET', job, 'created_at')
if opts.start then
  -- Cancelled (or closed) before this chunk started: like a start that finds it so, no write.
  if status ~= 'queued' and status ~= 'running' then return {0, 0, 0, status, created} end
  redis.call('HSETNX', job, 'model_version', opts.model)
  if status == 'queued' then redis.call('HSET', job, 'status', 'running', 'started_at', opts.start) end
end
local added, failed = 0, 0
for i = 4, #ARGV, 3 do
  if redis.call('HSETNX', results, ARGV[i], ARGV[i + 1]) == 1 then
    added = added + 1
    if ARGV[i + 2] == '1' then failed = failed + 1 end
  end
end
-- HSETNX may have just created the results hash: it dies with its job (EXPIRE before it existed was a no-op).
local ttl = redis.call('PTTL', job)
if ttl > 0 then redis.call('PEXPIRE', results, ttl) end
redis.call('HINCRBY', job, 'done', added)
redis.call('HINCRBY', job, 'failed', failed)
if added > 0 then
  redis.call('HSET', job, 'progress_at', ARGV[1])
  redis.call('HINCRBY', metrics, 'items_processed', added)
  redis.call('HINCRBY', metrics, 'items_failed', failed)
  if opts.seconds then
    observe(metrics, 'chunk_seconds', opts.seconds, 1)
    if opts.items > 0 then observe(metrics, 'item_seconds', opts.seconds / opts.items, opts.items) end
  end
end
-- The quota gets its images back as they finish; a cancelled job gave back the rest already.
if (status == 'queued' or status == 'running') and added > 0 and redis.call('EXISTS', queued) == 1 then
  if redis.call('DECRBY', queued, added) < 0 then redis.call('SET', queued, 0, 'KEEPTTL') end
end
-- And the lane's outstanding count (a job from before it was kept has no lane: not counted either).
local lane = redis.call('HGET', job, 'lane')
local open = status == 'queued' or status == 'running'
if open and added > 0 and lane and redis.call('EXISTS', KEYS[8]) == 1 then
  if redis.call('HINCRBY', KEYS[8], lane, -added) < 0 then redis.call('HSET', KEYS[8], lane, 0) end
end
local done = tonumber(redis.call('HGET', job, 'done'))
local total = tonumber(redis.call('HGET', job, 'total'))
local closed = 0
if done >= total and (status == 'queued' or status == 'running') then
  status = 'succeeded'
  if redis.call('HEXISTS', job, 'error') == 1 then status = 'failed' end
  redis.call('HSET', job, 'status', status, 'finished_at', ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[2])
  local message = ARGV[2]
  if status == 'succeeded' and added == total and total <= ANSWER_MAX_ITEMS then
    local answer = {}
    for i = 4, #ARGV, 3 do
      if ARGV[i] ~= tostring(#answer) then answer = nil; break end  -- not in item order: no answer
      table.insert(answer, ARGV[i + 1])
    end
    if answer then
      local version = redis.call('HGET', job, 'model_version') or ''
      message = message .. ' {"model_version":' .. cjson.encode(version) .. ',"results":['
        .. table.concat(answer, ',') .. ']}'
    end
  end
  redis.call('PUBLISH', KEYS[5], message)
  -- Counted with the close, so a /metrics scrape never sees a closed job it has not counted.
  redis.call('HINCRBY', metrics, 'jobs_finished:' .. status, 1)
  observe(metrics, 'job_seconds', math.max(0, tonumber(ARGV[1]) - tonumber(created)), 1)
  closed = 1
end
return {added, failed, closed, status, created}
"""
)

# KEYS: job hash, results hash, deliveries hash, the fleet's model version (core/fleet.py). ARGV:
# now, model version, the chunk's delivery field, the job TTL (s), follow the fleet 1/0, starts
# of this delivery that went uncounted (a one-trip chunk's first, core/queue.py), then item
# indices. A chunk starts: nothing to do if the job is gone or closed; else, when following and
# the fleet has moved to another version than the caller's, only that version (the caller
# switches, then starts again: nothing was written); else the items without a result, and (if
# any) the job's model version pinned (the first chunk's wins), queued -> running and the delivery
# counted (`:deliveries`), all in one round trip (the fleet's version read included: a reload
# is seen at the next chunk). {status, version, deliveries, has webhook 0/1, fleet version or
# false, todo...}
_START_CHUNK = """
local job = KEYS[1]
local status = redis.call('HGET', job, 'status')
if not status then return {false, false, 0, 0, false} end
if status ~= 'queued' and status ~= 'running' then return {status, false, 0, 0, false} end
local fleet = redis.call('GET', KEYS[4])
if ARGV[5] == '1' and fleet and fleet ~= ARGV[2] then return {status, false, 0, 0, fleet} end
local out = {status, false, 0, redis.call('HEXISTS', job, 'webhook_url'), false}
for i = 7, #ARGV do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 0 then table.insert(out, ARGV[i]) end
end
if #out > 5 then
  redis.call('HSETNX', job, 'model_version', ARGV[2])
  if status == 'queued' then
    redis.call('HSET', job, 'status', 'running', 'started_at', ARGV[1])
    out[1] = 'running'
  end
  if ARGV[3] ~= '' then
    local by = 1
    if redis.call('HEXISTS', KEYS[3], ARGV[3]) == 0 then by = 1 + tonumber(ARGV[6]) end
    out[3] = redis.call('HINCRBY', KEYS[3], ARGV[3], by)
    redis.call('EXPIRE', KEYS[3], ARGV[4])
  end
end
out[2] = redis.call('HGET', job, 'model_version')
return out
"""

# KEYS: idempotency key. ARGV: job id, ttl. The job id it names already, or reserve it.
_CLAIM = """
local earlier = redis.call('GET', KEYS[1])
if earlier then return earlier end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""

# KEYS: job hash. ARGV: field, value[, counter field]. Set the field (and count one more in the
# counter: its new value) only on a job that still exists: a job that expired meanwhile must not
# come back as a hash without TTL nor status (GET and listings would then answer 500). -1: gone.
_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] then return redis.call('HINCRBY', KEYS[1], ARGV[3], 1) end
return 0
"""

# KEYS: job hash, the tenant's queued-images count, active index, closed channel, metrics hash,
# images outstanding per lane. ARGV: now, new status, error message, job id.
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[1])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('PUBLISH', KEYS[4], ARGV[4])
redis.call('HINCRBY', KEYS[5], 'jobs_finished:' .. ARGV[2], 1)
local left = tonumber(redis.call('HGET', KEYS[1], 'total')) - tonumber(redis.call('HGET', KEYS[1], 'done'))
if left > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('DECRBY', KEYS[2], left) < 0 then redis.call('SET', KEYS[2], 0, 'KEEPTTL') end
end
local lane = redis.call('HGET', KEYS[1], 'lane')
if left > 0 and lane and redis.call('EXISTS', KEYS[6]) == 1 then
  if redis.call('HINCRBY', KEYS[6], lane, -left) < 0 then redis.call('HSET', KEYS[6], lane, 0) end
end
return 1
"""


# Webhook delivery state (core/webhooks.py). KEYS: job hash.
# ARGV: last status, last error, next attempt at, delivered 0/1, gone 0/1.
# Never recreates a job that expired meanwhile (it would live forever without a TTL).
_ATTEMPTED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'webhook_attempts', 1)
redis.call('HSET', KEYS[1], 'webhook_last_status', ARGV[1], 'webhook_last_error', ARGV[2],
           'webhook_next_at', ARGV[3])
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'webhook_delivered', '1') end
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'webhook_gone', '1') end
return 1
"""


def new_job_id() -> str:
    return uuid.uuid4().hex


Raw = bytes | str  # what redis-py may answer (bytes here: the client doesn't decode)


def _text(value: Raw) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _opt_float(value: Raw | None) -> float | None:
    return float(value) if value else None


def _opt_str(value: Raw | None) -> str | None:
    return _text(value) if value else None


class JobStore:
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        self._record = client.register_script(_RECORD)
        self._start_chunk = client.register_script(_START_CHUNK)
        self._finish = client.register_script(_FINISH)
        self._claim = client.register_script(_CLAIM)
        self._webhook_attempted = client.register_script(_ATTEMPTED)
        self._set_if_exists = client.register_script(_SET_IF_EXISTS)

    @staticmethod
    def _keys(job_id: str) -> tuple[str, str, str]:
        base = PREFIX + job_id
        return base, base + ":names", base + ":results"

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
        claim naming this job, kept from now on as long as the job; `also`: more commands for the
        same round trip (the submission's metrics)."""
        job, names_key, results = self._keys(job_id)
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
            pipe.expire(IDEMPOTENCY_PREFIX + claim, self.ttl)
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
            key = self._keys(job_id)[0]
            pipe.hgetall(key)
            pipe.pttl(key)
        replies = pipe.execute()
        return [self._job(i, r, t) for i, r, t in zip(job_ids, replies[::2], replies[1::2], strict=True)]

    @staticmethod
    def _job(job_id: str, raw: dict, ttl_ms: int) -> Job | None:
        if not raw:
            return None
        h = {_text(k): v for k, v in raw.items()}
        return Job(
            id=job_id,
            status=JobStatus(_text(h["status"])),
            created_at=float(h["created_at"]),
            started_at=_opt_float(h.get("started_at")),
            finished_at=_opt_float(h.get("finished_at")),
            total=int(h["total"]),
            done=int(h["done"]),
            failed=int(h["failed"]),
            model_version=_opt_str(h.get("model_version")),
            error=_opt_str(h.get("error")),
            owner=_opt_str(h.get("owner")),
            expires_at=time.time() + ttl_ms / 1000 if ttl_ms > 0 else None,
            metadata=json.loads(h["metadata"]) if h.get("metadata") else None,
            webhook={k[8:]: _text(v) for k, v in h.items() if k.startswith("webhook_")} or None,
        )

    @staticmethod
    def key(job_id: str) -> str:
        """The job's hash (fields `status`, `total`, ...), for a reader on another client (api/waiting.py)."""
        return JobStore._keys(job_id)[0]

    @staticmethod
    def queue_job_with_results(pipe: Pipeline | AsyncPipeline, job_id: str, limit: int) -> None:
        """Queue on `pipe` (a sync or an asyncio pipeline: api/waiting.py reads on the event loop)
        the reads of the job and of the results of its first `limit` items; `job_with_results`
        turns the pipeline's replies into them."""
        job_key, _, results_key = JobStore._keys(job_id)
        pipe.hgetall(job_key)
        pipe.pttl(job_key)
        pipe.hmget(results_key, [str(i) for i in range(limit)] or ["-"])

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
        raw = self.redis.hget(self._keys(job_id)[0], "status")
        return JobStatus(_text(raw)) if raw else None

    def names(self, job_id: str, offset: int, limit: int) -> list[str]:
        raw = self.redis.lrange(self._keys(job_id)[1], offset, offset + limit - 1)
        return [_text(n) for n in raw]

    def results(self, job_id: str, indices: Sequence[int]) -> list[ItemResult | None]:
        if not indices:
            return []
        raw = self.redis.hmget(self._keys(job_id)[2], [str(i) for i in indices])
        return [ItemResult.from_json(i, r) if r else None for i, r in zip(indices, raw, strict=True)]

    def missing(self, job_id: str, indices: Sequence[int]) -> list[int]:
        """The indices that have no result yet (a redelivered chunk skips the rest)."""
        return [i for i, r in zip(indices, self.results(job_id, indices), strict=True) if r is None]

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
        the start counted under `delivery` (in the job's `:deliveries` hash). `follow`: if the fleet
        serves another version than `model_version` (a reload), only that is returned
        (`fleet_version`), nothing done: switch to it, then start again. `uncounted`: earlier
        starts of this delivery that were not counted (a one-trip chunk's first), added to the
        count the first time it is counted."""
        job, _, results = self._keys(job_id)
        keys = [job, results, job + DELIVERIES_SUFFIX, fleet.CURRENT_KEY]
        args: list[str | float] = [time.time(), model_version, delivery, self.ttl, int(follow), uncounted]
        args += indices
        reply = self._start_chunk(keys=keys, args=args)
        status = JobStatus(_text(reply[0])) if reply[0] else None
        todo = [int(i) for i in reply[5:]]
        moved = _opt_str(reply[4])
        return ChunkStart(status, _opt_str(reply[1]), todo, int(reply[2]), bool(reply[3]), moved)

    def record(
        self,
        job_id: str,
        results: Iterable[ItemResult],
        tenant: str = "",
        seconds: float | None = None,
        start: tuple[float, str] | None = None,
        follow: bool = False,
    ) -> Recorded:
        """Store the results that are not stored yet, closing the job with its last item, and
        give the tenant's queued-images quota back its finished items; the items' figures are
        counted (core/metrics.py), and `seconds`: the chunk's work time, observed.
        `start`: (started at, model version) of a one-trip chunk, which starts here; `follow`:
        only if the fleet serves that version, else nothing is written (`moved`)."""
        job, _, results_key = self._keys(job_id)
        now = time.time()
        triples: list[Any] = []
        for r in results:
            triples += [r.index, r.to_json(), int(r.error is not None)]
        options: dict[str, Any] = {}
        if seconds is not None:
            options.update(seconds=seconds, items=len(triples) // 3)
        if start is not None:
            options.update(start=start[0], model=start[1], follow=follow)
        keys = [job, results_key, quotas.queued_key(tenant), ACTIVE, CLOSED_CHANNEL, METRICS_KEY]
        keys += [fleet.CURRENT_KEY, quotas.OUTSTANDING]
        reply = self._record(keys=keys, args=[repr(now), job_id, json.dumps(options), *triples])
        if reply == -1:
            return Recorded(0, 0, False)  # the job expired meanwhile
        if reply[0] in (b"moved", "moved"):
            return Recorded(0, 0, False, moved=_text(reply[1]))
        added, failed, closed, status, created = reply
        seconds = max(0.0, now - float(created)) if closed else None
        return Recorded(int(added), int(failed), bool(closed), JobStatus(_text(status)), seconds)

    def claim_submission(self, key: str, job_id: str) -> str | None:
        """Reserve an idempotency key for a new job (for CLAIM_SECONDS, until `create` extends it);
        returns the job it already names, if any."""
        earlier = self._claim(keys=[IDEMPOTENCY_PREFIX + key], args=[job_id, CLAIM_SECONDS])
        return _text(earlier) if earlier else None

    def release_submission(self, key: str) -> None:
        """Free a key whose job could not be created, so that a retry can create it."""
        self.redis.delete(IDEMPOTENCY_PREFIX + key)

    def cancel(self, job_id: str, tenant: str = "") -> bool:
        """Close a queued or running job; its unfinished items go back to the tenant's quota."""
        keys = [self._keys(job_id)[0], quotas.queued_key(tenant), ACTIVE, CLOSED_CHANNEL, METRICS_KEY]
        keys.append(quotas.OUTSTANDING)
        args: list[Any] = [time.time(), JobStatus.cancelled.value, "", job_id]
        return self._finish(keys=keys, args=args) == 1

    def webhook_trigger(self, job_id: str) -> tuple[str, str, str, str]:
        """What deciding on a webhook event needs: status, url, events, gone ('' when unset)."""
        fields = ["status", "webhook_url", "webhook_events", "webhook_gone"]
        raw = self.redis.hmget(self._keys(job_id)[0], fields)
        status, url, events, gone = (_text(v) if v else "" for v in raw)
        return status, url, events, gone

    def record_webhook_attempt(
        self, job_id: str, status: int | None, error: str, next_at: float | None, delivered: bool, gone: bool
    ) -> None:
        args: list[str | float] = [status or "", error[:500], next_at or "", int(delivered), int(gone)]
        self._webhook_attempted(keys=[self._keys(job_id)[0]], args=args)

    def fail(self, job_id: str, error: str) -> None:
        """Remember a job-level error; the job ends as failed once its items are accounted for.
        Nothing is written for a job that no longer exists."""
        self._set_if_exists(keys=[self._keys(job_id)[0]], args=["error", cap(error, MAX_ERROR_CHARS)])

    # The stuck-job sweep (worker/stuck_jobs.py).
    def active(self) -> list[tuple[str, float]]:
        """Jobs not closed yet, oldest first, with their creation time; expired ones are pruned."""
        self.redis.zremrangebyscore(ACTIVE, "-inf", time.time() - self.ttl)
        entries: list[tuple[Raw, float]] = self.redis.zrange(ACTIVE, 0, -1, withscores=True)  # type: ignore[assignment]
        return [(_text(member), float(score)) for member, score in entries]

    def forget_active(self, job_id: str) -> None:
        """Drop a job from the active index (it expired, or closed without the scripts seeing it)."""
        self.redis.zrem(ACTIVE, job_id)

    def sweep_state(self, job_id: str) -> tuple[float, int, int]:
        """(last sign of life: creation, a result stored or a sweep; sweeps so far; upload parts)."""
        fields = ["created_at", "progress_at", "swept_at", "sweeps", "parts"]
        raw = self.redis.hmget(self._keys(job_id)[0], fields)
        created, progress, swept, sweeps, parts = (_opt_float(v) for v in raw)
        return max(created or 0, progress or 0, swept or 0), int(sweeps or 0), int(parts or 0)

    def upload_parts(self, job_id: str) -> tuple[int, bool]:
        """How many parts the job's upload has, and whether they travelled in its messages (then
        the workers store them as they run: core/kept_uploads.py), to read its items back: the
        API shows their images."""
        parts, inline = self.redis.hmget(self._keys(job_id)[0], ["parts", "inline_parts"])
        return int(parts or 0) or int(inline or 0), bool(inline)

    def mark_swept(self, job_id: str) -> int:
        """Note that the sweep re-queued the job's missing items; returns how many times it has
        (0 for a job that no longer exists: nothing is written)."""
        args = ["swept_at", repr(time.time()), "sweeps"]
        return max(0, int(self._set_if_exists(keys=[self._keys(job_id)[0]], args=args)))

    def missing_all(self, job_id: str, total: int) -> list[int]:
        """Every index of the job that has no result yet."""
        stored = {int(i) for i in self.redis.hkeys(self._keys(job_id)[2])}
        return [i for i in range(total) if i not in stored]
