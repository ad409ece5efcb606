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

broker_transport=`core.queue:RedisTransport`, kombu's Redis transport with one change: kombu
builds a new redis-py client for every publish and acknowledgement (`conn_or_acquire`), and a
client's constructor fills its table of ~170 reply callbacks: ~0.2 ms of CPU, a quarter of a
task's publish in the API and a share of every message's ack in the worker. A channel now keeps
one synchronous client over the same connection pool (redis-py clients are thread-safe; the pool
is the channel's, so a reconnect that makes a new channel makes a new client). And kombu's QoS
keeps each unacknowledged message in a sorted set (its delivery time) and a hash (the message),
both written as it is delivered and deleted as it is acked, each time a MULTI/EXEC of two
commands that the worker's event loop builds and parses: a seventh of a worker main process'
samples per /predict. `_QoS` writes and deletes the same entries, the same values, with one
script call each (kombu's restore of unacked messages reads them unchanged).
tests/test_queue_fast.py checks the setting, the entries against kombu's, and that messages still flow.

Chunks are not published through `send_task` (on redis:// brokers): `task_message` builds the
message Celery would (protocol 2, kombu's Redis envelope, priority 0, the anonymous exchange
routing to the lane's list) and `push_chunks` LPUSHes it in a pipeline, so an interactive job's
chunks ride in the MULTI/EXEC that creates the job (api/routes/jobs.py) and a batch of chunks
costs one round trip. `send_task` (Celery's producer, retry policy, declare cache) was a tenth of
the API's py-spy samples per /predict, plus a round trip. The broker is REDIS_URL, the job store's
Redis, so the pipeline can be the job store's (`broker_is`: unless CELERY_BROKER_URL points
elsewhere; then the chunks follow the job in a round trip of their own). tests/test_queue_fast.py checks that
the message equals send_task's, field for field, and that a consumer takes it.
"""

import base64
import json
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu import Exchange, Queue
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual
from kombu.utils import json as kombu_json
from kombu.utils.scheduling import priority_cycle
from redis.client import Pipeline

from core.config import Settings, get_settings

PROCESS_CHUNK = "digitq.process_chunk"
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


# KEYS: kombu's unacked index (sorted set) and unacked hash. ARGV: delivery tag, then for an add
# the delivery time and the message as kombu stores it (`[raw, exchange, routing key]`, JSON).
_UNACKED_ADD = "redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])"
_UNACKED_REMOVE = "redis.call('ZREM', KEYS[1], ARGV[1]) redis.call('HDEL', KEYS[2], ARGV[1])"


class _QoS(kombu_redis.QoS):
    """kombu's Redis QoS, its unacked entries written and removed by one script call each (above)."""

    def append(self, message: Any, delivery_tag: str) -> None:
        delivery = message.delivery_info
        stored = kombu_json.dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        self._unacked(_UNACKED_ADD, delivery_tag, time.time(), stored)
        kombu_virtual.QoS.append(self, message, delivery_tag)  # skipping kombu_redis.QoS' MULTI/EXEC

    def ack(self, delivery_tag: str) -> None:
        self._unacked(_UNACKED_REMOVE, delivery_tag)
        kombu_virtual.QoS.ack(self, delivery_tag)

    def _unacked(self, source: str, *args: Any) -> None:
        self.channel.script(source)(keys=[self.unacked_index_key, self.unacked_key], args=args)


class _Channel(kombu_redis.Channel):
    """kombu's Redis channel, keeping one synchronous client instead of one per command, and
    writing its unacked entries by script (above)."""

    QoS = _QoS
    _sync_client: Any = None
    _scripts: dict[str, Any] | None = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        if self._sync_client is None:
            self._sync_client = super()._create_client()
        return self._sync_client

    def script(self, source: str) -> Any:
        """`source` registered on the channel's client, once (registering hashes it)."""
        if self._scripts is None:
            self._scripts = {}
        if source not in self._scripts:
            self._scripts[source] = self._create_client().register_script(source)
        return self._scripts[source]


class RedisTransport(kombu_redis.Transport):
    """`broker_transport` (above): kombu's Redis transport with `_Channel`."""

    Channel = _Channel


TRANSPORT = "core.queue:RedisTransport"


def task_message(celery: Celery, chunk: Chunk) -> str:
    """The Redis list entry `send_task(PROCESS_CHUNK, args=[chunk.to_json()], queue=chunk.lane)`
    would push (protocol 2 in kombu's Redis envelope; tests/test_queue_fast.py compares the two):
    the worker consumes it unchanged. Built here, it can ride in another pipeline (the job's
    creation, `push_chunks`) instead of costing Celery's publish machinery and a round trip of
    its own. No parent/root of a calling task: those are for Celery's canvas, unused here."""
    task_id = str(uuid.uuid4())
    # argsrepr: Celery would repr the whole chunk (its inline upload included) for logs nobody reads.
    argsrepr = f"(chunk {chunk.id},)"
    headers: dict[str, Any] = {
        "lang": "py", "task": PROCESS_CHUNK, "id": task_id, "shadow": None, "eta": None,
        "expires": None, "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
        "root_id": task_id, "parent_id": None, "argsrepr": argsrepr, "kwargsrepr": "{}",
        "origin": _origin(), "ignore_result": None, "replaced_task_nesting": 0,
        "stamped_headers": None, "stamps": {},
    }  # fmt: skip
    body = json.dumps([[chunk.to_json()], {}, _EMBED]).encode()
    properties = {
        "correlation_id": task_id, "reply_to": celery.thread_oid, "argsrepr": argsrepr,
        "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": chunk.lane},
        "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
    }  # fmt: skip
    return json.dumps({
        "body": base64.b64encode(body).decode(), "content-encoding": "utf-8",
        "content-type": "application/json", "headers": headers, "properties": properties,
    })  # fmt: skip


_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@lru_cache
def _origin_of(pid: int) -> str:
    return anon_nodename()  # `gen<pid>@<host>`, as Celery names a sending process


def _origin() -> str:
    return _origin_of(os.getpid())  # a forked pool process is another sender


def push_chunks(pipe: Pipeline, celery: Celery, chunks: Iterable[Chunk]) -> int:
    """Queue chunks in `pipe` (a pipeline on the broker's Redis: see `broker_is`), each to its
    lane's list, as kombu's Redis transport does for priority 0: sent with whatever else the
    pipeline carries, in its round trip."""
    sent = 0
    for chunk in chunks:
        pipe.lpush(chunk.lane, task_message(celery, chunk))
        sent += 1
    return sent


def broker_is(celery: Celery, url: str | None) -> bool:
    """Whether the app publishes to the Redis at `url` (REDIS_URL unless CELERY_BROKER_URL or
    CELERY_BROKER_WRITE_URL says otherwise): then a pipeline on that Redis may carry chunks."""
    return bool(url) and celery.conf.broker_write_url == url


@lru_cache
def _broker_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, health_check_interval=30)


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
        # One redis-py client per channel, not per command (above); other schemes keep kombu's choice.
        broker_transport=TRANSPORT if settings.redis_url.startswith(("redis://", "rediss://")) else None,
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
        },
    )
    return app


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


def send_chunks(celery: Celery, chunks: Iterable[Chunk]) -> int:
    """Queue chunks, each to its lane, in one round trip (core/dispatch.py decides when; the
    stuck-job sweep for lost items); returns how many. A broker URL of another scheme than
    redis(s):// (`redis+socket://`) goes through Celery's own publish."""
    url = celery.conf.broker_write_url
    if not url.startswith(("redis://", "rediss://")):
        return sum(_send_task(celery, chunk) for chunk in chunks)
    pipe = _broker_client(url).pipeline(transaction=False)
    sent = push_chunks(pipe, celery, chunks)
    if sent:
        pipe.execute()
    return sent


def _send_task(celery: Celery, chunk: Chunk) -> int:
    celery.send_task(PROCESS_CHUNK, args=[chunk.to_json()], queue=chunk.lane, argsrepr=f"(chunk {chunk.id},)")
    return 1
