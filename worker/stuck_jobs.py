"""No stuck jobs: a periodic sweep finds jobs that stopped moving and re-queues or fails their lost items.

A job can stall with items that no chunk will ever deliver: the API died between creating the
job and queueing its last chunk, or a chunk was lost (a task that failed for good outside the
per-item work is acknowledged and dropped, a message deleted by hand, a Redis that lost its
last second of writes). Acknowledgements and visibility timeouts cannot help: the message is gone.

Detection is generic: a queued or running job with no sign of life (creation, a stored result,
the last sweep) for STUCK_JOB_SECONDS, whose missing items are in no queued or unacknowledged
message, is stuck. Its missing items are re-listed from the stored upload (with the API's own
listing, so indices, zip members and preset errors are the same) and queued again as chunks
through the normal send path; results are written per item with HSETNX, so an item that turns
up twice is still stored once. After MAX_SWEEPS re-queues, or when the upload is gone, the
missing items get an error result saying why and the job ends `failed`.

Every worker main process runs the sweep (worker/models.py's watcher thread); a short Redis lock
lets one of them do it per period. The queue is read only when a job looks stuck, and only up to
SCAN_LIMIT messages: a longer backlog means jobs are waiting, not lost, and the check waits.
"""

import base64
import json
import logging
import time
from collections.abc import Iterable, Iterator

import redis
from celery import Celery

from api.uploads import EntryBudget, Item, chunks, part_items
from core import kept_uploads
from core.blobs import BlobStore, upload_key
from core.config import Settings
from core.dispatch import FairShare
from core.jobs import TERMINAL, ItemResult, JobStore
from core.queue import LANES, Chunk, lane_for, send_chunks
from core.quotas import tenant_of
from core.webhooks import notify

log = logging.getLogger(__name__)

LOCK = "digitq:sweep:lock"
QUEUES = LANES  # every broker queue a chunk can wait in
MAX_SWEEPS = 3  # re-queues of one job before its still-missing items are failed
SCAN_LIMIT = 20_000  # queued messages read per sweep at most
UNACKED = "unacked"  # kombu's Redis transport: messages delivered and not yet acknowledged
LOST = "this item was lost before a worker could process it ({why}); submit it again"


def sweep_every(settings: Settings) -> float:
    return max(1.0, min(30.0, settings.stuck_job_seconds / 4))


def _messages(client: redis.Redis) -> Iterator[bytes] | None:
    """Every queued and unacknowledged Celery message, raw; None when there are too many to read."""
    if sum(client.llen(q) for q in QUEUES) + client.hlen(UNACKED) > SCAN_LIMIT:
        return None

    def read() -> Iterator[bytes]:
        for queue in QUEUES:
            for start in range(0, SCAN_LIMIT, 500):
                page: list[bytes] = client.lrange(queue, start, start + 499)  # type: ignore[assignment]
                yield from page
                if len(page) < 500:
                    break
        for raw in client.hvals(UNACKED):
            yield json.dumps(json.loads(raw)[0]).encode()  # [message, exchange, routing key]

    return read()


def queued_indices(
    client: redis.Redis, job_ids: Iterable[str], fair: FairShare | None = None
) -> dict[str, set[int]] | None:
    """For each job, the item indices some queued or in-flight chunk still carries, or a chunk
    waiting for the bulk window (core/dispatch.py: its own sweeper sends those)."""
    wanted = {job_id.encode(): job_id for job_id in job_ids}
    found: dict[str, set[int]] = {job_id: set() for job_id in wanted.values()}
    if fair is not None:
        for waiting in found:
            found[waiting].update(fair.carried(waiting))
    messages = _messages(client)
    if messages is None:
        return None
    for raw in messages:
        # argsrepr (plain text in the headers) names the job: decode only those messages.
        job_id = next((j for b, j in wanted.items() if b in raw), None)
        if job_id is None:
            continue
        carried = _carried(raw)
        if carried and carried[0] == job_id:
            found[job_id].update(carried[1])
    return found


def _carried(raw: bytes) -> tuple[str, list[int]] | None:
    """The job and item indices a chunk task's message carries (args: one Chunk, core/queue.py)."""
    try:
        chunk = Chunk.from_json(json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0])
        return chunk.job_id, [item.index for item in chunk.items]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def relist(blobs: BlobStore, job_id: str, parts: int, settings: Settings) -> list[Item]:
    """The job's items as the API listed them at submission, from its stored upload."""
    items: list[Item] = []
    for part in range(parts):
        with blobs.open(upload_key(job_id, part)) as data:  # S3: ranged GETs, not a download
            budget = EntryBudget(settings.max_items_per_job)  # as the API listed it
            items += part_items(data, f"part-{part + 1}", part, settings.max_image_bytes, budget)[1]
    return items


class StuckJobs:
    def __init__(
        self,
        store: JobStore,
        blobs: BlobStore,
        celery: Celery,
        settings: Settings,
        fair: FairShare | None = None,
    ) -> None:
        self.store, self.blobs, self.celery, self.settings = store, blobs, celery, settings
        self.fair = fair or FairShare(store.redis, settings)

    def sweep(self, hostname: str = "") -> list[str]:
        """Resolve the stuck jobs (when this process holds the period's lock); returns their ids."""
        client = self.store.redis
        if not client.set(LOCK, hostname or "sweeper", nx=True, ex=max(1, int(sweep_every(self.settings)))):
            return []  # another worker sweeps this period
        now = time.time()
        stalled: dict[str, tuple[int, int, list[int]]] = {}
        for job_id, _created in self.store.active():
            job = self.store.get(job_id)
            if job is None or job.status in TERMINAL:
                self.store.forget_active(job_id)  # expired, or closed by an older version
                continue
            alive_at, sweeps, parts = self.store.sweep_state(job_id)
            if now - alive_at < self.settings.stuck_job_seconds:
                continue
            missing = self.store.missing_all(job_id, job.total)
            if missing:
                stalled[job_id] = (sweeps, parts, missing)
        if not stalled:
            return []
        queued = queued_indices(client, stalled, self.fair)
        if queued is None:
            log.info("%d job(s) look stuck but the queue is too long to check; later", len(stalled))
            return []
        resolved = []
        for job_id, (sweeps, parts, missing) in stalled.items():
            lost = [i for i in missing if i not in queued[job_id]]
            if lost:
                self._resolve(job_id, sweeps, parts, lost)
                resolved.append(job_id)
        return resolved

    def _resolve(self, job_id: str, sweeps: int, parts: int, lost: list[int]) -> None:
        if sweeps >= MAX_SWEEPS:
            why = f"re-queued {sweeps} times without a result"
            return self._fail(job_id, lost, why)
        try:
            items = relist(self.blobs, job_id, parts, self.settings) if parts else []
        except Exception as exc:  # the upload is gone (deleted, expired) or unreadable
            log.warning("job %s: its upload cannot be re-listed: %r", job_id, exc)
            items = []
        job = self.store.get(job_id)
        if job is None or not items or len(items) != job.total:
            return self._fail(job_id, lost, "its upload is no longer available")
        self.store.mark_swept(job_id)
        s = self.settings
        tenant, lane = tenant_of(job.owner), lane_for(job.total, s)
        todo = chunks(items, s.chunk_size, s.chunk_max_bytes, s.chunk_max_pixels, only=set(lost))
        # Straight to the job's lane: lost items are few and rare, the window need not pace them.
        sent = send_chunks(self.celery, [Chunk(job_id, tuple(run), tenant, lane) for run in todo])
        log.warning("job %s was stuck: re-queued %d lost item(s) in %d chunk(s)", job_id, len(lost), sent)

    def _fail(self, job_id: str, lost: list[int], why: str) -> None:
        self.store.fail(job_id, f"{len(lost)} item(s) were lost before a worker processed them ({why})")
        job = self.store.get(job_id)
        tenant = tenant_of(job.owner if job else None)
        recorded = self.store.record(
            job_id, [ItemResult(i, error=LOST.format(why=why)) for i in lost], tenant
        )
        # Its items' figures and, when it closed the job, the job's were counted by the record script.
        notify(self.store, job_id)
        if recorded.closed_job:
            kept_uploads.release(self.blobs, self.store.redis, job_id, self.settings.upload_keep_seconds)
        log.warning("job %s was stuck: failed %d lost item(s): %s", job_id, len(lost), why)
