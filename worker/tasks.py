"""The one task: classify a chunk of a job's images and store a result per item."""

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Task
from celery.exceptions import Retry

from core import dispatch, logs, metrics
from core.config import get_settings
from core.connections import get_blob_store, get_fair_share, get_job_store
from core.jobs import ItemResult, JobStatus, Recorded
from core.queue import PROCESS_CHUNK, Chunk, ChunkItem
from core.webhooks import notify
from worker import models
from worker.app import app
from worker.reading import PartReader, close_deleted_zips

log = logging.getLogger(__name__)
INTERNAL_ERROR = "internal error while processing this item; the operators have been told"


def classify(
    job_id: str, items: Sequence[ChunkItem], model_version: str, parts: Mapping[str, str] | None = None
) -> list[ItemResult]:
    """`parts`: a small upload's parts, sent inside the chunk (core/queue.py INLINE_UPLOAD_BYTES)."""
    settings = get_settings()
    model = models.get(model_version)
    results: dict[int, ItemResult] = {}
    readable: list[tuple[int, bytes]] = []
    close_deleted_zips()
    reader = PartReader(get_blob_store(), job_id, settings.max_image_bytes, parts)
    for item in items:
        if item.error:
            results[item.index] = ItemResult(item.index, error=item.error)
            continue
        try:
            readable.append((item.index, reader.read(item.part, item.member)))
        except ValueError as exc:
            results[item.index] = ItemResult(item.index, error=str(exc))
    predictions = model.predict_images([data for _, data in readable])
    for (index, _), p in zip(readable, predictions, strict=True):
        results[index] = ItemResult(index, p.digit, p.confidence, p.low_confidence, p.error)
    return [results[item.index] for item in items]


def _count(recorded: Recorded, seconds: float, items: int) -> None:
    """The chunk's metrics (core/metrics.py) and log line; never fails the chunk."""
    try:
        client = get_job_store().redis
        if recorded.added:
            metrics.chunk_done(client, recorded.added, recorded.failed, seconds, items)
        if recorded.closed_job and recorded.status and recorded.job_seconds is not None:
            metrics.job_finished(client, recorded.status, recorded.job_seconds)
            log.info("job finished")
    except Exception:
        log.warning("could not record metrics", exc_info=True)
    log.info("chunk done: %d new result(s) in %.3fs", recorded.added, seconds)


@app.task(name=PROCESS_CHUNK, bind=True, max_retries=3)
def process_chunk(self: Task, payload: dict[str, Any]) -> None:
    chunk = Chunk.from_json(payload)
    logs.clear()
    logs.bind(job_id=chunk.job_id, chunk=chunk.label)
    started = time.monotonic()
    try:
        _process(self, chunk, started)
        # Done, or nothing left to do: the chunk's slot in the bulk window goes to the next chunk
        # (before this chunk is acknowledged, so the next one is queued before this process is free).
        dispatch.finished(self.app, get_fair_share(), chunk)
    except Retry:
        raise
    except Exception as exc:
        # Outside the per-item work (Redis, the upload store): a failed task's message is
        # acknowledged and dropped (core/queue.py), so send the chunk again instead (a retry is a
        # new message, queued before this one is acknowledged). After the last try, the stuck-job
        # sweep (worker/stuck_jobs.py) re-queues or fails the items.
        if self.request.retries < self.max_retries:
            log.warning("chunk of job %s failed outside the item work, retrying: %r", chunk.job_id, exc)
            raise self.retry(exc=exc, countdown=2**self.request.retries) from exc
        log.exception(
            "chunk of job %s failed for good; the stuck-job sweep will resolve its items", chunk.job_id
        )
        # Its window slot goes on (else the window's sweeper would send it again and again); the
        # stuck-job sweep sees its items carried by nothing and re-queues them a bounded number of times.
        with contextlib.suppress(Exception):
            dispatch.finished(self.app, get_fair_share(), chunk)
        raise


def _process(self: Task, chunk: Chunk, started: float) -> None:
    store = get_job_store()
    job_id = chunk.job_id
    start = store.start_chunk(job_id, [i.index for i in chunk.items], models.current().version)
    if start.status is None or start.status not in (JobStatus.queued, JobStatus.running):
        notify(store, job_id)  # webhooks: a redelivery of the chunk that closed the job, then died
        return  # expired, cancelled or already closed: nothing to do
    todo = set(start.todo)
    items = [i for i in chunk.items if i.index in todo]
    if not items:
        return  # a redelivered chunk whose results were all written
    version = start.model_version or models.current().version
    notify(store, job_id)  # webhooks: job.running
    try:
        results = classify(job_id, items, version, chunk.parts)
    except Exception as exc:
        if store.status(job_id) not in (JobStatus.queued, JobStatus.running):
            return  # cancelled meanwhile (its upload may be gone already)
        if self.request.retries < self.max_retries:
            log.warning("chunk of job %s failed, retrying: %r", job_id, exc)
            raise self.retry(exc=exc, countdown=2**self.request.retries) from exc
        log.exception("chunk of job %s failed for good", job_id)
        store.fail(job_id, "some items could not be processed because of an internal error")
        results = [ItemResult(i.index, error=INTERNAL_ERROR) for i in items]
    recorded = store.record(job_id, results, chunk.tenant)
    notify(store, job_id, progressed=recorded.added > 0)  # webhooks: job.progress, or the terminal event
    if recorded.closed_job and chunk.parts is None:
        get_blob_store().delete_prefix(job_id)  # every item has its result: the upload can go
    _count(recorded, time.monotonic() - started, len(items))
