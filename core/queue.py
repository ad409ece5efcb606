"""The Celery application shared by the API (which only sends tasks, by name) and the workers.

Reliability settings, and why:
- task_acks_late + task_reject_on_worker_lost: a chunk is acknowledged only after its results
  are written; if the pool process dies mid-chunk, the message goes back to the queue at once.
- visibility_timeout (Redis transport): when a whole worker dies (SIGKILL, lost machine) its
  unacknowledged chunks are redelivered after this many seconds instead of kombu's default
  hour. kombu cannot tell a dead worker from a slow one: it requeues ANY delivery unacknowledged
  for that long, even while a live process works on it, and every other process then takes the
  same chunk in turn. So no chunk may run that long:
- A chunk's deadline (1/2 of the visibility timeout) and task_time_limit (2/3): a chunk still
  running at its deadline stops before its next item and is requeued (counted, see below); one
  stuck past the hard limit (deep in a decoder's C call, swapping, stopped) has its pool process
  killed. Both stop it before kombu would hand it to a second process. The deadline is checked
  by the task between items rather than being Celery's task_soft_time_limit: that one raises an
  exception wherever the task happens to be, and raised inside redis-py while it held its
  connection pool's lock it left the lock taken, so the task's next Redis call hung until the
  hard limit (seen in tests/test_worker_bounds.py).
- task_acks_on_timeout=False: after a hard time limit the message is requeued, not acknowledged
  (acknowledged, as task_acks_on_failure_or_timeout alone would have it, the chunk is gone: the
  stuck-job sweep would have to notice it minutes later). The requeued chunk is a start like any
  other, and the poison count (below) ends a chunk that always runs out of time.
- Chunks are bounded so that a healthy one always ends well before its deadline: at most
  CHUNK_SIZE images, CHUNK_MAX_BYTES uncompressed bytes and CHUNK_MAX_PIXELS decoded pixels
  (api/uploads.py, from each image's header). Measured, the slowest decoders cost ~20 ns per
  pixel (a 40-megapixel 1-bit BMP: 0.8 s; float TIFF 0.36 s; JPEG 0.01 s thanks to draft mode),
  so 100 megapixels take ~2 s and 250 small images ~0.1 s: a 15 s deadline leaves a margin of
  5x or more for a loaded machine. Only a chunk that is not healthy reaches its deadline.
- Poison chunks: each start of a chunk is counted in Redis (`digitq:job:<id>:deliveries`, per
  chunk and retry: an exception's retries are bounded by max_retries instead); after
  MAX_CHUNK_DELIVERIES starts (a pool process OOM-killed each time, or out of time each time)
  its remaining items fail with an error saying so, instead of killing process after process
  until the job expires. Results are written per item with HSETNX, so a chunk started twice
  never duplicates anything.
- unacked_restore_interval/throttle: sweep for expired unacked messages every few seconds.
- worker_cancel_long_running_tasks_on_connection_loss: when the connection to Redis drops, a
  running chunk can no longer be acknowledged and is redelivered after the reconnect; stop it
  rather than finish it twice (Celery 6's default; without it Celery warns on every drop).
- task_acks_on_failure_or_timeout stays true (the default; for timeouts see above), on purpose:
  a chunk whose task raised is gone either way on Redis. With false, Celery rejects it without requeueing, and
  kombu's Redis transport deletes a rejected message just like an acknowledged one; requeueing
  it instead would loop forever on a chunk that always fails. So the chunk task retries every
  error itself (worker/tasks.py: a retry is a new message, queued before the old one is
  acknowledged), and the stuck-job sweep (worker/stuck_jobs.py) re-queues or fails whatever is still
  lost. tests/test_stuck_jobs.py checks both and that the setting is what this says.
- worker_prefetch_multiplier=1: a worker holds one chunk per pool process, so the chunks of a
  big zip spread over every worker instead of piling up in the first one's prefetch buffer.
"""

from collections.abc import Iterable
from functools import lru_cache

from celery import Celery

from core.config import Settings, get_settings

PROCESS_CHUNK = "digitq.process_chunk"
# What a task carries per item (a list once through JSON): index, part, zip member, preset error.
TaskItem = tuple[int, int, str | None, str | None]
QUEUE = "digitq"


def chunk_time_limits(settings: Settings) -> tuple[float, float]:
    """(deadline, hard limit): seconds a chunk may run, both below the visibility timeout."""
    return settings.visibility_timeout / 2, settings.visibility_timeout * 2 / 3


def make_celery(settings: Settings) -> Celery:
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set (make run sets it for the embedded Redis)")
    app = Celery("digitq", broker=settings.redis_url)
    restore_every = max(1, min(5, settings.visibility_timeout // 3))
    _, hard_limit = chunk_time_limits(settings)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_time_limit=hard_limit,
        task_acks_on_failure_or_timeout=True,  # see above: the task retries, the sweep resolves
        task_acks_on_timeout=False,  # but a hard time limit requeues (see above), counted as a start
        task_ignore_result=True,
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_send_task_events=True,  # Flower's live view
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": restore_every,
            "unacked_restore_throttle": 1,
        },
    )
    return app


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


def send_chunks(celery: Celery, job_id: str, chunks: Iterable[list[TaskItem]]) -> int:
    """Queue a job's chunks (the API at submission, the stuck-job sweep for lost items)."""
    sent = 0
    for chunk in chunks:
        celery.send_task(PROCESS_CHUNK, args=[job_id, chunk])
        sent += 1
    return sent
