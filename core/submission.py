"""Submitting a job: store the upload, create the job within the caller's quotas, queue its chunks.

The service behind every upload route (/jobs, /predict, /predict_batch): they list the upload
(core/uploads.py `list_upload`) and call `create_job`; the stuck-job sweep re-queues lost items
with the same chunking (core/uploads.py `job_chunks`). Nothing here knows HTTP: the routes turn
QuotaExceeded into its 429 (api/routes/jobs.py).
"""

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import BinaryIO

from celery import Celery
from redis.client import Pipeline

from core import logs, metrics
from core.batching import Batcher
from core.blobs import BlobStore, upload_key
from core.config import Settings
from core.dispatch import FairShare, dispatch
from core.idempotency import SubmissionClaims
from core.jobs import JobStore, new_job_id
from core.queue import BULK, ONE_TRIP_MAX_PIXELS, Chunk, lane_for
from core.quotas import QuotaExceeded, Quotas, tenant_of
from core.uploads import Item, inline_parts
from core.uploads import job_chunks as job_chunks_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submission:
    """What creating a job needs: the settings, the stores, the queue, the quotas and the caller
    (one dependency for the routes that submit: /jobs, /predict, /predict_batch)."""

    settings: Settings
    store: JobStore
    claims: SubmissionClaims  # Idempotency-Keys
    blobs: BlobStore
    celery: Celery
    fair: FairShare
    quotas: Quotas
    caller: str | None
    batcher: Batcher | None = None  # one-trip chunks published together (core/batching.py)


def create_job(
    sub: Submission,
    files: Sequence[BinaryIO],
    items: list[Item],
    extra: Mapping[str, str | int] | None = None,
    idempotency_key: str | None = None,
    job_id: str | None = None,
) -> tuple[str, bool]:
    """Store the upload, create the job (`job_id`, or a new id) and queue its chunks: (job id, replayed).

    `files`: the upload's parts, as listed into `items` (core/uploads.py). Within the caller's
    quotas (QuotaExceeded otherwise, which the routes answer with a 429): its images taken from
    the submission rate's bucket and reserved as queued, in one round trip (core/quotas.py;
    api/gate.py checked the bucket before the upload was read).
    `replayed`: the Idempotency-Key named an earlier job, whose id is returned instead.
    Blocking (disk or S3, Redis): async routes run it in the thread pool.
    """
    if sub.batcher and lane_for(len(items), sub.settings) != BULK:
        with sub.batcher.arriving():  # a batch being formed waits for this one (core/batching.py)
            return _create_job(sub, files, items, extra, idempotency_key, job_id)
    return _create_job(sub, files, items, extra, idempotency_key, job_id)


def _create_job(
    sub: Submission,
    files: Sequence[BinaryIO],
    items: list[Item],
    extra: Mapping[str, str | int] | None,
    idempotency_key: str | None,
    job_id: str | None,
) -> tuple[str, bool]:
    tenant = tenant_of(sub.caller)
    job_id = job_id or new_job_id()
    claim = None
    if idempotency_key:
        claim = idempotency_claim(sub.caller, idempotency_key)
        earlier = sub.claims.claim(claim, job_id)
        if earlier:
            return earlier, True
    reserved = False
    try:
        settings = sub.settings
        lane = lane_for(len(items), settings)
        _within_quota(sub.quotas, tenant, len(items), lane)  # all the images, or none
        reserved = True
        inline = inline_parts(files)
        for part, data in enumerate(files if inline is None else ()):
            data.seek(0)
            sub.blobs.put(upload_key(job_id, part), data)
        # `parts`: how many stored uploads to re-list should the stuck-job sweep need to re-queue
        # lost items (worker/stuck_jobs.py); none for an upload that lives in its messages only.
        # `lane`: which outstanding count (core/quotas.py) its results give back to.
        fields = {**(extra or {}), "parts": 0 if inline else len(files), "lane": lane}
        if inline is not None:  # the workers store them for review (core/kept_uploads.py)
            fields["inline_parts"] = len(files)
        job_chunks = job_chunks_of(job_id, items, tenant, lane, settings, inline)
        names = [item.name for item in items]
        # An interactive job's chunks are tracked in the MULTI/EXEC that creates it and published
        # once it exists (core/dispatch.py: lost in between, the sweeper sends them); a bulk job's
        # go behind the window once it exists.
        interactive = lane != BULK
        if interactive and _one_trip(job_chunks, items, fields):
            job_chunks = [replace(job_chunks[0], one_trip=True)]
        also = partial(_submitted, sub.fair, job_chunks if interactive else [], len(items))
        sub.store.create(job_id, names, owner=sub.caller, extra=fields, claim=claim, also=also)
    except Exception:
        if reserved:
            sub.quotas.release(tenant, len(items), lane)
        if claim:
            sub.claims.release(claim)
        raise
    # The job exists and holds its reservation from here on, whatever happens to the publish.
    with logs.bound(job_id=job_id):
        try:
            if sub.batcher and job_chunks[0].one_trip:
                sub.batcher.submit(job_chunks[0])  # published with concurrent ones (core/batching.py)
            else:
                dispatch(sub.celery, sub.fair, job_chunks, tracked=interactive)
        except Exception:
            if not interactive:
                raise  # its chunks may be untracked: the stuck-job sweep re-queues them
            log.warning("job submitted; its chunks are published by the sweeper", exc_info=True)
            return job_id, False
        log.info("job submitted")
    return job_id, False


def _one_trip(job_chunks: list[Chunk], items: list[Item], fields: Mapping[str, object]) -> bool:
    """Whether the job's chunk may start in the script that records it (core/queue.py ONE_TRIP_MAX_PIXELS)."""
    small = sum(item.pixels for item in items) <= ONE_TRIP_MAX_PIXELS
    return len(job_chunks) == 1 and job_chunks[0].parts is not None and small and "webhook_url" not in fields


def _submitted(fair: FairShare, tracked: list[Chunk], items: int, pipe: Pipeline) -> None:
    """In the pipeline that creates the job: its metrics, and its interactive chunks tracked."""
    metrics.job_submitted(pipe, items=items)
    fair.track(pipe, tracked)


def _within_quota(quotas: Quotas, tenant: str, images: int, lane: str = BULK) -> None:
    """`Quotas.admit` of the images; over a quota raises QuotaExceeded, counted in /metrics."""
    try:
        quotas.admit(tenant, images, lane)
    except QuotaExceeded as exc:
        metrics.refused(quotas.redis, exc.reason)
        raise


def idempotency_claim(caller: str | None, idempotency_key: str) -> str:
    """Scoped to the caller: two API keys may pick the same string."""
    return hashlib.sha256(f"{caller or ''}:{idempotency_key}".encode()).hexdigest()
