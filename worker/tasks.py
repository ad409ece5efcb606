"""The one task: classify a chunk of a job's images and store a result per item."""

import logging
from collections.abc import Mapping, Sequence

from celery import Task
from celery.exceptions import Retry

from core.config import get_settings
from core.connections import get_blob_store, get_job_store
from core.jobs import TERMINAL, ItemResult, Recorded
from core.queue import PROCESS_CHUNK, TaskItem
from core.webhooks import notify
from worker import models
from worker.app import app
from worker.reading import PartReader, close_deleted_zips

log = logging.getLogger(__name__)
INTERNAL_ERROR = "internal error while processing this item; the operators have been told"


def classify(
    job_id: str, items: Sequence[TaskItem], model_version: str, parts: Mapping[str, str] | None = None
) -> list[ItemResult]:
    settings = get_settings()
    model = models.get(model_version)
    results: dict[int, ItemResult] = {}
    readable: list[tuple[int, bytes]] = []
    close_deleted_zips()
    reader = PartReader(get_blob_store(), job_id, settings.max_image_bytes, parts)
    for index, part, member, error in items:
        if error:
            results[index] = ItemResult(index, error=error)
            continue
        try:
            readable.append((index, reader.read(part, member)))
        except ValueError as exc:
            results[index] = ItemResult(index, error=str(exc))
    predictions = model.predict_images([data for _, data in readable])
    for (index, _), p in zip(readable, predictions, strict=True):
        results[index] = ItemResult(index, p.digit, p.confidence, p.low_confidence, p.error)
    return [results[item[0]] for item in items]


NOTHING_NEW = Recorded(added=0, failed=0, closed_job=False)


def _outcome(recorded: Recorded) -> dict[str, int]:
    """What the chunk stored, for the task_postrun metrics (worker/app.py)."""
    return {"added": recorded.added, "failed": recorded.failed}


@app.task(name=PROCESS_CHUNK, bind=True, max_retries=3)
def process_chunk(
    self: Task, job_id: str, items: list[TaskItem], parts: dict[str, str] | None = None
) -> dict[str, int]:
    """`parts`: a small upload's parts, sent inline (core/queue.py INLINE_UPLOAD_BYTES)."""
    try:
        return _process_chunk(self, job_id, items, parts)
    except Retry:
        raise
    except Exception as exc:
        # Outside the per-item work (Redis, the upload store): a failed task's message is
        # acknowledged and dropped (core/queue.py), so send the chunk again instead (a retry is a
        # new message, queued before this one is acknowledged). After the last try, the stuck-job
        # sweep (worker/stuck_jobs.py) re-queues or fails the items.
        if self.request.retries < self.max_retries:
            log.warning("chunk of job %s failed outside the item work, retrying: %r", job_id, exc)
            raise self.retry(exc=exc, countdown=2**self.request.retries) from exc
        log.exception("chunk of job %s failed for good; the stuck-job sweep will resolve its items", job_id)
        raise


def _process_chunk(
    self: Task, job_id: str, items: list[TaskItem], parts: dict[str, str] | None
) -> dict[str, int]:
    store = get_job_store()
    status = store.status(job_id)
    if status is None or status in TERMINAL:
        notify(store, job_id)  # webhooks: a redelivery of the chunk that closed the job, then died
        return _outcome(NOTHING_NEW)  # expired, cancelled or already closed: nothing to do
    todo = set(store.missing(job_id, [i[0] for i in items]))
    items = [i for i in items if i[0] in todo]
    if not items:
        return _outcome(NOTHING_NEW)  # a redelivered chunk whose results were all written
    version = store.pin_model_version(job_id, models.current().version)
    store.mark_running(job_id, version)
    notify(store, job_id)  # webhooks: job.running
    try:
        results = classify(job_id, items, version, parts)
    except Exception as exc:
        if store.status(job_id) in TERMINAL:
            return _outcome(NOTHING_NEW)  # cancelled meanwhile (its upload may be gone already)
        if self.request.retries < self.max_retries:
            log.warning("chunk of job %s failed, retrying: %r", job_id, exc)
            raise self.retry(exc=exc, countdown=2**self.request.retries) from exc
        log.exception("chunk of job %s failed for good", job_id)
        store.fail(job_id, "some items could not be processed because of an internal error")
        results = [ItemResult(i[0], error=INTERNAL_ERROR) for i in items]
    recorded = store.record(job_id, results)
    notify(store, job_id, progressed=recorded.added > 0)  # webhooks: job.progress, or the terminal event
    if recorded.closed_job and parts is None:
        get_blob_store().delete_prefix(job_id)  # every item has its result: the upload can go
    return _outcome(recorded)
