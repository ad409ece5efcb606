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
  (core/uploads.py, from each image's header). Measured, the slowest decoders cost ~20 ns per
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

Two lanes (issue 9): jobs of at most INTERACTIVE_MAX_ITEMS images go to INTERACTIVE, the rest
to BULK, and every worker consumes both, interactive first. What gives the order:
- kombu's Redis transport waits for work with one `BRPOP k1 k2 ... timeout` over the worker's
  queues, and Redis answers from the first non-empty key in the order given.
- The order given is the channel's queue cycle (`_brpop_start`: `_queue_cycle.consume()`), in the
  order the worker subscribed, which is `task_queues`' order below. kombu's default cycle is
  `round_robin`: after each message `_brpop_read` calls `_queue_cycle.rotate(queue)`, moving the
  queue just served to the end, so the next BRPOP would list BULK first and a worker would
  alternate lanes (half its picks bulk while interactive work waits). kombu's `priority` cycle
  does not rotate, but keeps the subscription order, which changes at run time: `celery control
  cancel_consumer`/`add_consumer` (tests pause workers that way) appends a re-added queue at the
  end. `queue_order_strategy` also takes a cycle class: `LaneOrder` below never rotates and
  always lists the lanes in LANES' order, so every BRPOP reads INTERACTIVE, then BULK, whatever
  happened to the subscriptions. An idle worker still never waits while bulk work is queued:
  BRPOP returns from BULK as soon as INTERACTIVE is empty.
- Why it holds with acks_late and worker_prefetch_multiplier=1: the prefetch count is
  1 x pool processes and, with acks_late, a chunk counts against it until it has finished. kombu
  registers a BRPOP only while `channel.qos.can_consume()` (delivered - acknowledged < prefetch
  count), so a worker never holds a chunk that no process is running: it asks Redis for one only
  when a process is free, and that BRPOP picks from INTERACTIVE first. An interactive chunk
  therefore waits at most for the first running chunk to finish (one chunk time), never behind
  the bulk queue.
  (Celery's Redis "priorities", the other mechanism, are four sub-lists per queue read by the same
  BRPOP: approximate, and they would not bound the bulk lane; two queues are simpler and exact.)
The bulk lane is not fed all at once: core/dispatch.py keeps a small window of chunks in it and
hands the slots out round-robin across API keys, then their jobs.

worker_send_task_events off, task_send_sent_event off: task events are for Flower, which switches
the workers' events on itself while it runs (its `enable_events` option, every few seconds);
without Flower they were a third of a worker main process' CPU per single-image chunk, and the
sent event a tenth of the API's per submission (`make bench-latency`).

Only public APIs and documented settings of Celery and kombu (issue 22): chunks are published
with `send_task` (`send_chunks`, one producer for a batch), the lanes' order is kombu's documented
`queue_order_strategy` transport option, and which chunks are queued or running is digitq's own
record (core/dispatch.py: each chunk is tracked from before it is sent until its task finishes),
never kombu's internal keys. The broker's keys may carry kombu's documented `global_keyprefix`
(BROKER_KEY_PREFIX): nothing of digitq reads or writes them by name but the queue-depth gauge,
which adds the prefix (`broker_key`).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu import Exchange, Queue
from kombu.utils.scheduling import priority_cycle

from core.config import Settings, get_settings

PROCESS_CHUNK = "digitq.process_chunk"
PROCESS_BATCH = "digitq.process_batch"  # one-trip chunks of several jobs (core/batching.py)
INTERACTIVE = "digitq.interactive"
BULK = "digitq.bulk"
LANES = (INTERACTIVE, BULK)  # the order every worker reads them in
# A job whose upload is at most this many bytes in all (a few small images: the interactive case)
# sends its parts inside its chunks (`Chunk.parts`, base64 in the JSON message) instead of writing
# them to the blob store for the worker to read back and delete: no disk or S3 round trip on
# either side. 64 KiB is ~100 typical 28x28 PNGs; a message stays under ~90 KB in Redis.
INLINE_UPLOAD_BYTES = 64 * 1024
# A small job's only chunk, its upload inline and no webhook asked for, is a one-trip chunk
# (`Chunk.one_trip`): on its first delivery the worker classifies it, then starts, records and
# closes it in one script (core/jobs.py `record`), instead of a start script before its work and a
# record script after (one /predict: a round trip and ~0.3 ms of the pool's CPU less). Its job
# shows `queued` until then, so only chunks of a few milliseconds' work take that path: at most
# this many decoded pixels (~20 ms at the slowest decoders' 20 ns/pixel; a 28x28 digit is 784).
# A redelivered or retried one-trip chunk starts as any other, its uncounted first start counted
# then (the poison count, above, stays exact).
ONE_TRIP_MAX_PIXELS = 1_000_000


@dataclass(frozen=True)
class InFlight:
    """A chunk's entry in its in-flight set (core/dispatch.py `FairShare.in_flight`)."""

    key: str  # the set
    chunk_id: str  # `<job>:<first index>`
    prefix: str  # the fair-share keys' prefix (its job's chunks hash is `<prefix>chunks:<job>`)


@dataclass(frozen=True, slots=True)
class ChunkItem:
    """One image of a chunk: its index in the job, upload part, zip member, error known upfront."""

    index: int
    part: int
    member: str | None = None
    error: str | None = None

    def to_json(self) -> list[Any]:  # compact on the wire: a chunk holds up to CHUNK_SIZE of them
        return [self.index, self.part, self.member, self.error]


@dataclass(frozen=True)
class Chunk:
    """What one task carries: a run of a job's items (a JSON object on the wire)."""

    job_id: str
    items: tuple[ChunkItem, ...]
    tenant: str = ""  # who the job counts against (quotas, fair share): core/quotas.tenant()
    lane: str = BULK
    parts: dict[str, str] | None = None  # a small upload's parts its items are in: {part: base64}
    one_trip: bool = False  # its job's only chunk, small, no webhook: started by its record (above)

    @property
    def id(self) -> str:
        """Unique within the job: its first item (chunks never overlap)."""
        return f"{self.job_id}:{self.items[0].index}"

    @property
    def label(self) -> str:
        return f"{self.items[0].index}-{self.items[-1].index}"

    def to_json(self) -> dict[str, Any]:
        items = [item.to_json() for item in self.items]
        out: dict[str, Any] = {"job": self.job_id, "tenant": self.tenant, "lane": self.lane, "items": items}
        if self.parts is not None:
            out["parts"] = self.parts
        if self.one_trip:
            out["one_trip"] = True
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Chunk":
        items = tuple(ChunkItem(*item) for item in raw["items"])
        tenant, lane, parts = raw.get("tenant", ""), raw.get("lane", BULK), raw.get("parts")
        return cls(raw["job"], items, tenant, lane, parts, bool(raw.get("one_trip")))


class LaneOrder(priority_cycle):
    """kombu's queue cycle for the workers' BRPOP: the lanes in LANES' order, never rotated."""

    def consume(self, n: int) -> list[str]:
        rank = {lane: i for i, lane in enumerate(LANES)}
        return sorted(self.items[:n], key=lambda queue: rank.get(queue, len(LANES)))


def lane_for(n_items: int, settings: Settings | None = None) -> str:
    """The queue a job of `n_items` images goes to (API routes use this, and only this)."""
    limit = (settings or get_settings()).interactive_max_items
    return INTERACTIVE if n_items <= limit else BULK


def broker_key(settings: Settings, queue: str) -> str:
    """The Redis key of a broker queue's list: its name behind kombu's `global_keyprefix`."""
    return settings.broker_key_prefix + queue


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
        # In LANES' order: the order of each worker's BRPOP (above). Each lane names its own
        # exchange and routing key (without them Celery binds every queue to the default one's).
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in LANES],
        task_default_queue=BULK,
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
            "queue_order_strategy": "core.queue:LaneOrder",  # INTERACTIVE, then BULK (above)
            # kombu prefixes every key of the broker's (lists, unacked, bindings) with this.
            "global_keyprefix": settings.broker_key_prefix,
        },
    )
    return app


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


def send_chunks(celery: Celery, chunks: Iterable[Chunk]) -> int:
    """Publish chunks, each to its lane, with Celery's `send_task` over one producer (one pooled
    connection for the batch); returns how many. Callers track them first (core/dispatch.py):
    a chunk lost between its tracking and here is sent again by the sweeper."""
    sent = 0
    with celery.producer_or_acquire() as producer:
        for chunk in chunks:
            # argsrepr: Celery would repr the whole chunk (its inline upload included) for logs.
            argsrepr = f"(chunk {chunk.id},)"
            celery.send_task(
                PROCESS_CHUNK, args=[chunk.to_json()], queue=chunk.lane, argsrepr=argsrepr, producer=producer
            )
            sent += 1
    return sent
