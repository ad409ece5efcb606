"""The Celery application shared by the API (which only sends tasks, by name) and the workers.

Reliability settings, and why:
- task_acks_late + task_reject_on_worker_lost: a chunk is acknowledged only after its results
  are written; if the pool process dies mid-chunk, the message goes back to the queue at once.
- visibility_timeout (Redis transport): when a whole worker dies (SIGKILL, lost machine) its
  unacknowledged chunks are redelivered after this many seconds instead of kombu's default
  hour. Chunks are small (CHUNK_SIZE images, a few MB) so one takes well under a second or two,
  far below the timeout: a healthy chunk is never redelivered while it runs. If it ever were,
  results are written per item with HSETNX, so a second delivery cannot duplicate anything.
- unacked_restore_interval/throttle: sweep for expired unacked messages every few seconds.
- worker_cancel_long_running_tasks_on_connection_loss: when the connection to Redis drops, a
  running chunk can no longer be acknowledged and is redelivered after the reconnect; stop it
  rather than finish it twice (Celery 6's default; without it Celery warns on every drop).
- task_acks_on_failure_or_timeout stays true (the default), on purpose: a chunk whose task
  raised is gone either way on Redis. With false, Celery rejects it without requeueing, and
  kombu's Redis transport deletes a rejected message just like an acknowledged one; requeueing
  it instead would loop forever on a chunk that always fails. So the chunk task retries every
  error itself (worker/tasks.py: a retry is a new message, queued before the old one is
  acknowledged), and the stuck-job sweep (worker/stuck_jobs.py) re-queues or fails whatever is still
  lost. tests/test_stuck_jobs.py checks both and that the setting is what this says.
- worker_prefetch_multiplier=1: a worker holds one chunk per pool process, so the chunks of a
  big zip spread over every worker instead of piling up in the first one's prefetch buffer.
- worker_send_task_events off, task_send_sent_event off: task events are for Flower, which
  switches the workers' events on itself while it runs (its `enable_events` option, every few
  seconds); without Flower they were a third of a worker main process' CPU per single-image
  chunk, and the sent event a tenth of the API's per submission (`make bench-latency`).
"""

from collections.abc import Iterable, Mapping
from functools import lru_cache

from celery import Celery

from core.config import Settings, get_settings

PROCESS_CHUNK = "digitq.process_chunk"
# What a task carries per item (a list once through JSON): index, part, zip member, preset error.
TaskItem = tuple[int, int, str | None, str | None]
QUEUE = "digitq"
# A job whose upload is at most this many bytes in all (a few small images: the interactive case)
# sends its parts inside the task message, base64 in the JSON (`parts` kwarg: {part: base64}),
# instead of writing them to the blob store for the worker to read back and delete: no disk or
# S3 round trip on either side. 64 KiB is ~100 typical 28x28 PNGs, or one phone-camera thumbnail;
# a message stays under ~90 KB in Redis, while one pool process holds it.
INLINE_UPLOAD_BYTES = 64 * 1024


def make_celery(settings: Settings) -> Celery:
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set (make run sets it for the embedded Redis)")
    app = Celery("digitq", broker=settings.redis_url)
    restore_every = max(1, min(5, settings.visibility_timeout // 3))
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,  # see above: the task retries, the sweep resolves
        task_ignore_result=True,
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_send_task_events=False,  # Flower turns them on while it runs (see above)
        task_send_sent_event=False,
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


def send_chunks(
    celery: Celery, job_id: str, chunks: Iterable[list[TaskItem]], inline: Mapping[int, str] | None = None
) -> int:
    """Queue a job's chunks (the API at submission, the stuck-job sweep for lost items).

    `inline`: a small upload's parts ({part: base64}, INLINE_UPLOAD_BYTES); each chunk carries
    the parts its items are in."""
    sent = 0
    for chunk in chunks:
        kwargs = {} if inline is None else {"parts": {str(i[1]): inline[i[1]] for i in chunk}}
        celery.send_task(PROCESS_CHUNK, args=[job_id, chunk], kwargs=kwargs)
        sent += 1
    return sent
