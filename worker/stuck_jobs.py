"""No stuck jobs: a periodic sweep finds jobs that stopped moving and re-queues or fails their lost items.

A job can stall with items that no chunk will ever deliver: the API died between creating the
job and queueing its last chunk, or a chunk was lost (a task that failed for good outside the
per-item work is acknowledged and dropped, a message deleted by hand, a Redis that lost its
last second of writes). Acknowledgements and visibility timeouts cannot help: the message is gone.

Detection is generic: a queued or running job with no sign of life (creation, a stored result,
the last sweep) for STUCK_JOB_SECONDS, whose missing items are in no chunk waiting for the bulk
window, queued or running, is stuck. Which chunks those are is digitq's own record
(core/dispatch.py `FairShare.carried`: each chunk is tracked before it is published until its
task finishes), not the broker's keys; a tracked chunk whose message was lost is that module's
sweeper's to send again. Its missing items are re-listed from the stored upload (with the API's own
listing, so indices, zip members and preset errors are the same) and queued again as chunks
through the normal send path; results are written per item with HSETNX, so an item that turns
up twice is still stored once. After MAX_SWEEPS re-queues, or when the upload is gone, the
missing items get an error result saying why and the job ends `failed`.

Every worker main process runs the sweep (the `stuck-job-sweep` duty, worker/scheduler.py); a short Redis lock
lets one of them do it per period. The record of chunks is read only when a job looks stuck.
"""

import logging
import time

from celery import Celery

from core import kept_uploads
from core.blobs import BlobStore, upload_key
from core.config import Settings
from core.dispatch import FairShare, resend
from core.jobs import TERMINAL, ItemResult, JobStore
from core.queue import lane_for
from core.quotas import tenant_of
from core.sweep_state import SweepState
from core.uploads import EntryBudget, Item, job_chunks, part_items
from core.webhook_state import WebhookState
from core.webhooks import notify

log = logging.getLogger(__name__)

LOCK = "digitq:sweep:lock"
MAX_SWEEPS = 3  # re-queues of one job before its still-missing items are failed
LOST = "this item was lost before a worker could process it ({why}); submit it again"


def sweep_every(settings: Settings) -> float:
    return max(1.0, min(30.0, settings.stuck_job_seconds / 4))


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
        self.state = SweepState(store.redis, store.ttl)
        self.hooks = WebhookState(store.redis)

    def sweep(self, hostname: str = "") -> list[str]:
        """Resolve the stuck jobs (when this process holds the period's lock); returns their ids."""
        client = self.store.redis
        if not client.set(LOCK, hostname or "sweeper", nx=True, ex=max(1, int(sweep_every(self.settings)))):
            return []  # another worker sweeps this period
        now = time.time()
        stalled: dict[str, tuple[int, int, list[int]]] = {}
        for job_id, _created in self.state.active():
            job = self.store.get(job_id)
            if job is None or job.status in TERMINAL:
                self.state.forget_active(job_id)  # expired, or closed by an older version
                continue
            alive_at, sweeps, parts = self.state.state(job_id)
            if now - alive_at < self.settings.stuck_job_seconds:
                continue
            missing = self.state.missing_all(job_id, job.total)
            if missing:
                stalled[job_id] = (sweeps, parts, missing)
        resolved = []
        for job_id, (sweeps, parts, missing) in stalled.items():
            carried = self.fair.carried(job_id)
            lost = [i for i in missing if i not in carried]
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
        self.state.mark_swept(job_id)
        tenant, lane = tenant_of(job.owner), lane_for(job.total, self.settings)
        todo = job_chunks(job_id, items, tenant, lane, self.settings, only=set(lost))
        # Straight to the job's lane (tracked): lost items are few and rare, no window needed.
        sent = resend(self.celery, self.fair, todo)
        log.warning("job %s was stuck: re-queued %d lost item(s) in %d chunk(s)", job_id, len(lost), sent)

    def _fail(self, job_id: str, lost: list[int], why: str) -> None:
        self.store.fail(job_id, f"{len(lost)} item(s) were lost before a worker processed them ({why})")
        job = self.store.get(job_id)
        tenant = tenant_of(job.owner if job else None)
        recorded = self.store.record(
            job_id, [ItemResult(i, error=LOST.format(why=why)) for i in lost], tenant
        )
        # Its items' figures and, when it closed the job, the job's were counted by the record script.
        notify(self.hooks, job_id)
        if recorded.closed_job:
            kept_uploads.release(self.blobs, self.store.redis, job_id, self.settings.upload_keep_seconds)
        log.warning("job %s was stuck: failed %d lost item(s): %s", job_id, len(lost), why)
