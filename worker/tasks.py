"""The one task: classify a chunk of a job's images and store a result per item."""

import logging
import time
from collections.abc import Sequence

from celery import Task
from celery.exceptions import Reject, Retry

from core.config import get_settings
from core.connections import get_blob_store, get_job_store
from core.jobs import TERMINAL, ItemResult, JobStore, Recorded
from core.queue import PROCESS_CHUNK, TaskItem, chunk_time_limits
from core.webhooks import notify
from ml.model import DigitModel, Prepared
from worker import models
from worker.app import app
from worker.reading import PartReader, close_deleted_zips

log = logging.getLogger(__name__)
INTERNAL_ERROR = "internal error while processing this item; the operators have been told"
POISON_ERROR = (
    "not processed: its chunk was started {n} times and never finished (its worker process was "
    "killed, e.g. out of memory, or it ran out of time); it is not retried. Resubmit the image alone "
    "to find out which one it was"
)


def _prepare(model: DigitModel, reader: PartReader, item: TaskItem) -> Prepared | str:
    """One item read and brought down to 28x28 (its bytes are let go on return), or its error."""
    index, part, member, _ = item
    try:
        data = reader.read(part, member)  # other errors (S3, a cancelled job's upload) end the chunk
    except ValueError as exc:
        return str(exc)  # a bad zip entry
    try:
        return model.prepare(data)
    except ValueError as exc:  # ImageError: not an image, blank, too large
        return str(exc)
    except Exception:  # a decoder bug must not sink the whole chunk
        log.exception("item %d of job %s could not be decoded", index, reader.job_id)
        return "could not process image"


class OutOfTime(Exception):
    """The chunk reached its deadline (core/queue.py): it is requeued, and counted as a start."""


def classify(job_id: str, items: Sequence[TaskItem], model_version: str, deadline: float) -> list[ItemResult]:
    """Read, decode and shrink one item at a time (a chunk never holds more than one full-size
    image), then classify the small arrays as one batch; stops at `deadline` (monotonic)."""
    settings = get_settings()
    model = models.get(model_version)
    results: dict[int, ItemResult] = {}
    ready: list[tuple[int, Prepared]] = []
    close_deleted_zips()
    reader = PartReader(get_blob_store(), job_id, settings.max_image_bytes)
    for item in items:
        if time.monotonic() > deadline:
            raise OutOfTime(f"chunk stopped at its deadline, before item {item[0]}")
        index, error = item[0], item[3]
        prepared = error or _prepare(model, reader, item)
        if isinstance(prepared, str):
            results[index] = ItemResult(index, error=prepared)
        else:
            ready.append((index, prepared))
    predictions = model.predict_prepared([prepared for _, prepared in ready])
    for (index, _), p in zip(ready, predictions, strict=True):
        results[index] = ItemResult(index, p.digit, p.confidence, p.low_confidence, p.error)
    return [results[item[0]] for item in items]


NOTHING_NEW = Recorded(added=0, failed=0, closed_job=False)


def _outcome(recorded: Recorded) -> dict[str, int]:
    """What the chunk stored, for the task_postrun metrics (worker/app.py)."""
    return {"added": recorded.added, "failed": recorded.failed}


@app.task(name=PROCESS_CHUNK, bind=True, max_retries=3)
def process_chunk(self: Task, job_id: str, items: list[TaskItem]) -> dict[str, int]:
    deadline = time.monotonic() + chunk_time_limits(get_settings())[0]
    try:
        return _process_chunk(self, job_id, items, deadline)
    except (Retry, Reject):
        raise  # a retry already queued; a chunk out of time requeued (counted as a start)
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


def _process_chunk(self: Task, job_id: str, items: list[TaskItem], deadline: float) -> dict[str, int]:
    store = get_job_store()
    status = store.status(job_id)
    if status is None or status in TERMINAL:
        notify(store, job_id)  # webhooks: a redelivery of the chunk that closed the job, then died
        return _outcome(NOTHING_NEW)  # expired, cancelled or already closed: nothing to do
    todo = set(store.missing(job_id, [i[0] for i in items]))
    chunk = items[0][0] if items else 0
    items = [i for i in items if i[0] in todo]
    if not items:
        return _outcome(NOTHING_NEW)  # a redelivered chunk whose results were all written
    # A chunk that kills its pool process (OOM) or runs out of time comes back; it must not do so
    # forever, taking a process with it each time (poison message): its items fail instead.
    # Counted per retry: a retry after an exception is a new message with retries of its own
    # (max_retries bounds those); deaths and deadlines requeue the same message.
    deliveries = store.count_delivery(job_id, f"{chunk}:{self.request.retries}")
    if deliveries > get_settings().max_chunk_deliveries:
        log.error("chunk of job %s started %d times without finishing: failing its items", job_id, deliveries)
        error = POISON_ERROR.format(n=deliveries - 1)
        return _store(store, job_id, [ItemResult(i[0], error=error) for i in items])
    version = store.pin_model_version(job_id, models.current().version)
    store.mark_running(job_id, version)
    notify(store, job_id)  # webhooks: job.running
    try:
        results = classify(job_id, items, version, deadline)
    except Exception as exc:
        if store.status(job_id) in TERMINAL:
            return _outcome(NOTHING_NEW)  # cancelled meanwhile (its upload may be gone already)
        if isinstance(exc, OutOfTime):
            log.warning("chunk of job %s out of time, requeued: %s", job_id, exc)
            raise Reject(exc, requeue=True) from exc  # a start like a death: counted, then poison
        if self.request.retries < self.max_retries:
            log.warning("chunk of job %s failed, retrying: %r", job_id, exc)
            raise self.retry(exc=exc, countdown=2**self.request.retries) from exc
        log.exception("chunk of job %s failed for good", job_id)
        store.fail(job_id, "some items could not be processed because of an internal error")
        results = [ItemResult(i[0], error=INTERNAL_ERROR) for i in items]
    return _store(store, job_id, results)


def _store(store: JobStore, job_id: str, results: list[ItemResult]) -> dict[str, int]:
    recorded = store.record(job_id, results)
    notify(store, job_id, progressed=recorded.added > 0)  # webhooks: job.progress, or the terminal event
    if recorded.closed_job:
        get_blob_store().delete_prefix(job_id)  # every item has its result: the upload can go
    return _outcome(recorded)
