"""The tasks: classify a chunk of a job's images, or a batch of small jobs' chunks; a result per item."""

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Task
from celery.exceptions import Reject, Retry

from core import dispatch, kept_uploads, logs
from core.config import get_settings
from core.connections import get_blob_store, get_fair_share, get_job_store, get_webhook_state
from core.dispatch import FairShare
from core.jobs import ItemResult, JobStatus, JobStore, Recorded
from core.queue import BULK, PROCESS_BATCH, PROCESS_CHUNK, Chunk, ChunkItem, chunk_time_limits
from core.reading import PartReader, close_deleted_zips
from core.webhooks import notify
from ml.model import DigitModel, Prepared
from worker import models
from worker.app import app

log = logging.getLogger(__name__)
INTERNAL_ERROR = "internal error while processing this item; the operators have been told"
POISON_ERROR = (
    "not processed: its chunk was started {n} times and never finished (its worker process was "
    "killed, e.g. out of memory, or it ran out of time); it is not retried. Resubmit the image alone "
    "to find out which one it was"
)


def _prepare(model: DigitModel, reader: PartReader, item: ChunkItem) -> Prepared | str:
    """One item read and brought down to 28x28 (its bytes are let go on return), or its error."""
    try:
        data = reader.read(item.part, item.member)  # other errors (S3, upload gone) end the chunk
    except ValueError as exc:
        return str(exc)  # a bad zip entry
    try:
        return model.prepare(data)
    except ValueError as exc:  # ImageError: not an image, blank, too large
        return str(exc)
    except Exception:  # a decoder bug must not sink the whole chunk
        log.exception("item %d of job %s could not be decoded", item.index, reader.job_id)
        return "could not process image"


class OutOfTime(Exception):
    """The chunk reached its deadline (core/queue.py): it is requeued, and counted as a start."""


def classify(
    job_id: str,
    items: Sequence[ChunkItem],
    model_version: str,
    deadline: float,
    parts: Mapping[str, str] | None = None,
) -> list[ItemResult]:
    """Read, decode and shrink one item at a time (a chunk never holds more than one full-size
    image), then classify the small arrays as one batch; stops at `deadline` (monotonic).
    `parts`: a small upload's parts, sent inside the chunk (core/queue.py INLINE_UPLOAD_BYTES)."""
    return classify_many([(job_id, items, parts)], model_version, deadline)[0]


Work = tuple[str, Sequence[ChunkItem], Mapping[str, str] | None]  # job id, items, inline parts


def classify_many(works: Sequence[Work], model_version: str, deadline: float) -> list[list[ItemResult]]:
    """`classify` for the chunks of several jobs (a batch, core/batching.py), in one call of the
    model: each job's results, in its items' order."""
    settings = get_settings()
    model = models.get(model_version)
    results: list[dict[int, ItemResult]] = [{} for _ in works]
    ready: list[tuple[int, int, Prepared]] = []
    close_deleted_zips()
    for n, (job_id, items, parts) in enumerate(works):
        reader = PartReader(get_blob_store(), job_id, settings.max_image_bytes, parts)
        for item in items:
            if time.monotonic() > deadline:
                raise OutOfTime(f"chunk stopped at its deadline, before item {item.index}")
            prepared = item.error or _prepare(model, reader, item)
            if isinstance(prepared, str):
                results[n][item.index] = ItemResult(item.index, error=prepared)
            else:
                ready.append((n, item.index, prepared))
    predictions = model.predict_prepared([prepared for _, _, prepared in ready])
    for (n, index, _), p in zip(ready, predictions, strict=True):
        results[n][index] = ItemResult(index, p.digit, p.confidence, p.low_confidence, p.error)
    return [[results[n][item.index] for item in items] for n, (_, items, _) in enumerate(works)]


def _log(recorded: Recorded, seconds: float) -> None:
    """The chunk's log lines (its metrics were counted by the script that stored its results)."""
    if recorded.closed_job and recorded.status:
        log.info("job finished")
    log.info("chunk done: %d new result(s) in %.3fs", recorded.added, seconds)


@app.task(name=PROCESS_CHUNK, bind=True, max_retries=3)
def process_chunk(self: Task, payload: dict[str, Any]) -> None:
    started = time.monotonic()
    _run(self, Chunk.from_json(payload), started, started + chunk_time_limits(get_settings())[0])


@app.task(name=PROCESS_BATCH, bind=True, max_retries=3)
def process_batch(self: Task, payloads: list[dict[str, Any]]) -> None:
    """One-trip chunks of several jobs (core/batching.py): on their first delivery, every image
    classified in one call of the model; then each chunk runs as its own task would, its job
    recorded on its own. Redelivered or retried: each chunk as an ordinary one."""
    started = time.monotonic()
    deadline = started + chunk_time_limits(get_settings())[0]
    chunks = [Chunk.from_json(payload) for payload in payloads]
    ready = _classify_batch(chunks, deadline) if _first_delivery(self) else {}
    for chunk in chunks:
        with contextlib.suppress(_FailedForGood):  # logged; the others still run
            _run(self, chunk, started, deadline, ready.get(chunk.id), batched=True)


class _FailedForGood(Exception):
    """A chunk of a batch failed for good (logged, its slot handed on): the batch goes on."""


def _first_delivery(self: Task) -> bool:
    return not self.request.retries and not (self.request.delivery_info or {}).get("redelivered")


def _classify_batch(chunks: list[Chunk], deadline: float) -> dict[str, tuple[str, list[ItemResult]]]:
    """chunk id -> (model version, results) for a batch's one-trip chunks, classified together;
    empty when that fails (each chunk then does its own work, with its own error handling)."""
    version = models.current_version()
    works: list[Work] = [(c.job_id, c.items, c.parts) for c in chunks if c.one_trip]
    try:
        found = classify_many(works, version, deadline)
    except Exception:
        log.warning("a batch of %d chunk(s) could not be classified together", len(works), exc_info=True)
        return {}
    return {c.id: (version, r) for c, r in zip([c for c in chunks if c.one_trip], found, strict=True)}


def _run(
    self: Task,
    chunk: Chunk,
    started: float,
    deadline: float,
    ready: tuple[str, list[ItemResult]] | None = None,
    batched: bool = False,
) -> None:
    logs.clear()
    logs.bind(job_id=chunk.job_id, chunk=chunk.label)
    try:
        # Done, or nothing left to do: the chunk's slot in the bulk window goes to the next chunk
        # (before this chunk is acknowledged, so the next one is queued before this process is
        # free); an interactive chunk whose results were recorded was forgotten with them.
        if not _process(self, chunk, started, deadline, ready):
            dispatch.finished(self.app, get_fair_share(), chunk)
    except (Retry, Reject):
        raise  # a retry already queued; a chunk out of time requeued (counted as a start)
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
        if batched:
            raise _FailedForGood() from exc
        raise


def _process(
    self: Task, chunk: Chunk, started: float, deadline: float, ready: tuple[str, list[ItemResult]] | None
) -> bool:
    """The chunk's work; whether it was forgotten in flight with its results (`_store`)."""
    store = get_job_store()
    first_try = not self.request.retries
    if chunk.one_trip and _first_delivery(self):
        return _one_trip(self, store, chunk, started, deadline, ready)
    job_id = chunk.job_id
    # Counted per retry: a retry after an exception is a new message with retries of its own
    # (max_retries bounds those); deaths and deadlines requeue the same message.
    delivery = f"{chunk.items[0].index}:{self.request.retries}"
    indices = [i.index for i in chunk.items]
    # A one-trip chunk back after a death or its deadline: its first start was not counted.
    uncounted = int(chunk.one_trip and first_try)
    start = store.start_chunk(job_id, indices, models.current_version(), delivery, True, uncounted)
    if start.fleet_version:  # a reload moved the fleet: switch if ready here, then start for real
        version = models.follow(start.fleet_version)
        start = store.start_chunk(job_id, indices, version, delivery, False, uncounted)
    if start.status is None or start.status not in (JobStatus.queued, JobStatus.running):
        # Webhooks: a redelivery of the chunk that closed the job, then died.
        notify(get_webhook_state(), job_id)
        return False  # expired, cancelled or already closed: nothing to do
    todo = set(start.todo)
    items = [i for i in chunk.items if i.index in todo]
    if not items:
        return False  # a redelivered chunk whose results were all written
    # A chunk that kills its pool process (OOM) or runs out of time comes back; it must not do so
    # forever, taking a process with it each time (poison message): its items fail instead.
    deliveries = start.deliveries
    if deliveries > get_settings().max_chunk_deliveries:
        log.error("chunk of job %s started %d times without finishing: failing its items", job_id, deliveries)
        error = POISON_ERROR.format(n=deliveries - 1)
        poisoned = [ItemResult(i.index, error=error) for i in items]
        return _store(store, chunk, poisoned, started, start.has_webhook)
    version = start.model_version or models.current_version()
    if start.has_webhook:  # else no event to queue: skip reading the job's webhook fields
        notify(get_webhook_state(), job_id)  # webhooks: job.running
    results = _work(self, store, chunk, items, version, deadline)
    return results is not None and _store(store, chunk, results, started, start.has_webhook)


def _one_trip(
    self: Task,
    store: JobStore,
    chunk: Chunk,
    started: float,
    deadline: float,
    ready: tuple[str, list[ItemResult]] | None = None,
) -> bool:
    """A one-trip chunk's first delivery (core/queue.py): the work first (`ready`: done with its
    batch's), then one script starts the job, stores the results, closes it and forgets the
    chunk in flight. Should the fleet have moved to another model version meanwhile (a reload),
    nothing is stored: the work is done again with that version. Whether it was forgotten."""
    started_at, follow = time.time(), True
    while True:
        version = models.current_version()
        if ready is not None and ready[0] == version:
            results: list[ItemResult] | None = ready[1]
        else:
            results = _work(self, store, chunk, list(chunk.items), version, deadline)
        ready = None
        if results is None:
            return False
        seconds, start = time.monotonic() - started, (started_at, version)
        closing = _closing(chunk)
        recorded = store.record(chunk.job_id, results, chunk.tenant, seconds, start, follow, **closing)
        if not recorded.moved:
            break
        follow = models.follow(recorded.moved) != version  # switched: check again; else stay
    _keep_inline(chunk)  # after the answer was published: off /predict's path
    _finish(store, chunk, recorded, started)
    return True


def _work(
    self: Task, store: JobStore, chunk: Chunk, items: list[ChunkItem], version: str, deadline: float
) -> list[ItemResult] | None:
    """The items' results; None when the job was cancelled meanwhile. An error outside the items'
    own: the chunk is requeued (out of time) or retried (Reject, Retry), or after its last try its
    items fail."""
    job_id = chunk.job_id
    try:
        return classify(job_id, items, version, deadline, chunk.parts)
    except Exception as exc:
        if store.status(job_id) not in (JobStatus.queued, JobStatus.running):
            return None  # cancelled meanwhile (its upload may be gone already)
        if isinstance(exc, OutOfTime):
            log.warning("chunk of job %s out of time, requeued: %s", job_id, exc)
            raise Reject(exc, requeue=True) from exc  # a start like a death: counted, then poison
        if self.request.retries < self.max_retries:
            log.warning("chunk of job %s failed, retrying: %r", job_id, exc)
            raise self.retry(exc=exc, countdown=2**self.request.retries) from exc
        log.exception("chunk of job %s failed for good", job_id)
        store.fail(job_id, "some items could not be processed because of an internal error")
        return [ItemResult(i.index, error=INTERNAL_ERROR) for i in items]


def _store(store: JobStore, chunk: Chunk, results: list[ItemResult], started: float, webhook: bool) -> bool:
    """Record a chunk's results (see `_closing`); whether it was forgotten in flight with them."""
    _keep_inline(chunk)  # before its results: a job is not seen ended before its images are there
    seconds = time.monotonic() - started
    recorded = store.record(chunk.job_id, results, chunk.tenant, seconds, **_closing(chunk))
    if webhook:  # webhooks (set at job creation only): progress, or the terminal event
        notify(get_webhook_state(), chunk.job_id, progressed=recorded.added > 0)
    _finish(store, chunk, recorded, started)
    return chunk.lane != BULK


def _closing(chunk: Chunk) -> dict[str, Any]:
    """What the record script does beside storing, to save round trips: an interactive chunk
    forgotten in flight (core/dispatch.py; a bulk one refills the window after), and the upload
    kept for UPLOAD_KEEP_SECONDS when the job closes (core/kept_uploads.py)."""
    return {"forget": FairShare.in_flight(chunk), "keep_seconds": get_settings().upload_keep_seconds}


def _keep_inline(chunk: Chunk) -> None:
    """A small upload's parts came in the message: stored for review like a big upload's."""
    if chunk.parts is not None and get_settings().upload_keep_seconds > 0:
        kept_uploads.keep_inline(get_blob_store(), chunk.job_id, chunk.parts)


def _finish(store: JobStore, chunk: Chunk, recorded: Recorded, started: float) -> None:
    if recorded.closed_job and chunk.parts is None and get_settings().upload_keep_seconds <= 0:
        # Every item has its result and none is kept: the upload goes now (kept, the record
        # script noted when it goes: `_closing`).
        kept_uploads.release(get_blob_store(), store.redis, chunk.job_id, 0)
    _log(recorded, time.monotonic() - started)
