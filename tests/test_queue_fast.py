"""core/queue.py and core/dispatch.py over kombu's Redis transport, on a real Redis (fast tier):
chunks go out through Celery's public `send_task`, are tracked in digitq's own keys from before
they are published until they finish, and kombu's documented `global_keyprefix` works."""

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import redis
from fastapi.testclient import TestClient
from kombu import Connection
from kombu.transport import redis as kombu_redis

from core import dispatch
from core.config import Settings
from core.dispatch import INFLIGHT_INTERACTIVE, PREFIX, FairShare
from core.queue import BULK, INTERACTIVE, LANES, PROCESS_CHUNK, Chunk, ChunkItem, make_celery, send_chunks
from tests.helpers import png, wait_until


def test_a_rejected_message_is_deleted_so_failed_chunks_are_retried_by_the_task(redis_url: str) -> None:
    """Why task_acks_on_failure_or_timeout stays true: with false, Celery rejects a failed task's
    message without requeueing, and on Redis that deletes it just like an acknowledgement."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    with Connection(redis_url) as connection:
        queue = connection.SimpleQueue("digitq-test-reject")
        queue.put({"chunk": 1})
        message = queue.get(timeout=5)
        assert client.hlen("unacked") == 1  # delivered, held until acknowledged
        message.reject(requeue=False)
        assert client.hlen("unacked") == 0 and client.llen("digitq-test-reject") == 0  # gone
        queue.close()
    conf = make_celery(Settings(redis_url=redis_url)).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.task_acks_on_failure_or_timeout is True


def test_only_kombus_own_transport_and_documented_options(redis_url: str) -> None:
    conf = make_celery(Settings(redis_url=redis_url)).conf
    assert conf.broker_transport is None  # kombu's Redis transport as it ships
    assert set(conf.broker_transport_options) <= set(kombu_redis.Channel.from_transport_options)


def test_chunks_are_published_with_send_task_and_taken_by_a_consumer(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    app = make_celery(Settings(redis_url=redis_url))
    inline = Chunk(
        "b" * 32, (ChunkItem(0, 0), ChunkItem(1, 0, "x/1.png", "bad")), "t", INTERACTIVE, {"0": "aGk="}
    )
    bulk = Chunk("c" * 32, (ChunkItem(7, 1),), "", BULK)
    assert send_chunks(app, [inline, bulk, inline]) == 3
    assert client.llen(INTERACTIVE) == 2 and client.llen(BULK) == 1
    with app.connection_for_write() as connection:
        for lane, chunk in ((INTERACTIVE, inline), (BULK, bulk)):
            queue = connection.SimpleQueue(lane)
            message = queue.get(timeout=5)
            assert message.headers["task"] == PROCESS_CHUNK
            assert message.headers["argsrepr"] == f"(chunk {chunk.id},)"  # not the inline upload
            assert Chunk.from_json(message.payload[0][0]) == chunk
            message.ack()
            queue.close()


def test_an_interactive_job_is_tracked_when_created_then_published(
    make_client: Callable[..., TestClient], redis_url: str
) -> None:
    """Its chunk is in digitq's in-flight record (the sweeps' source) from the job's creation,
    and in the broker's lane: REDIS_URL's, or CELERY_BROKER_URL's when that points elsewhere."""
    elsewhere = redis_url.rsplit("/", 1)[0] + "/1"
    broker = redis.Redis.from_url(elsewhere)
    broker.flushdb()
    store = redis.Redis.from_url(redis_url)
    image = png(np.zeros((28, 28), dtype=np.uint8))
    for env, queued_in, empty in (({}, store, broker), ({"CELERY_BROKER_URL": elsewhere}, broker, store)):
        client = make_client(**env)
        response = client.post("/jobs", files={"files": ("a.png", image)})
        assert response.status_code == 202
        job_id = response.json()["id"]
        assert store.zscore(INFLIGHT_INTERACTIVE, f"{job_id}:0") is not None
        assert store.hexists(f"{PREFIX}chunks:{job_id}", "0") and store.ttl(INFLIGHT_INTERACTIVE) > 0
        # Published by the API's batcher thread (core/batching.py), right after the answer or before.
        wait_until(lambda: queued_in.llen(INTERACTIVE) == 1, what="the chunk in the broker")  # noqa: B023
        assert empty.llen(INTERACTIVE) == 0
        queued_in.delete(INTERACTIVE)


def test_a_tracked_chunk_never_published_is_sent_by_the_sweeper_and_forgotten_when_done(
    redis_url: str,
) -> None:
    """The API died after creating the job, before publishing its chunk (or the message was lost):
    the sweeper publishes it again once it is stale, as an ordinary chunk (not one-trip)."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    settings = Settings(redis_url=redis_url, visibility_timeout=5)
    app, fair = make_celery(settings), FairShare(client, settings)
    chunk = Chunk("d" * 32, (ChunkItem(0, 0),), "t", INTERACTIVE, {"0": "aGk="}, one_trip=True)
    pipe = client.pipeline()
    fair.track(pipe, [chunk])
    pipe.execute()
    assert dispatch.sweep(app, fair) == 0 and client.llen(INTERACTIVE) == 0  # not stale yet
    client.zadd(INFLIGHT_INTERACTIVE, {chunk.id: 1.0})  # sent long ago
    assert fair.carried(chunk.job_id) == {0}
    assert dispatch.sweep(app, fair) == 1 and client.llen(INTERACTIVE) == 1
    assert dispatch.sweep(app, fair) == 0  # claimed: sent once per stale period
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue(INTERACTIVE)
        message = queue.get(timeout=5)
        assert Chunk.from_json(message.payload[0][0]) == replace(chunk, one_trip=False)
        message.ack()
        queue.close()
    dispatch.finished(app, fair, chunk)
    assert fair.carried(chunk.job_id) == set() and client.zcard(INFLIGHT_INTERACTIVE) == 0


def test_the_broker_key_prefix_is_kombus_global_keyprefix_for_every_broker_key(
    make_client: Callable[..., TestClient], redis_url: str
) -> None:
    """BROKER_KEY_PREFIX: the lanes, kombu's unacked messages and their restore all use it, and
    /ready's queue depth reads the prefixed lanes; no broker key goes unprefixed."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    prefix = "dq1:"
    app = make_celery(Settings(redis_url=redis_url, broker_key_prefix=prefix))
    chunk = Chunk("e" * 32, (ChunkItem(0, 0),), "t", INTERACTIVE)
    send_chunks(app, [chunk])
    assert client.llen(prefix + INTERACTIVE) == 1 and client.llen(INTERACTIVE) == 0
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue(INTERACTIVE)
        message = queue.get(timeout=5)  # delivered, not acknowledged: kombu holds it as unacked
        assert client.hlen(prefix + "unacked") == 1 and not client.exists("unacked")
        assert message.delivery_info.get("redelivered") is not True
    # The consumer went away without acknowledging: kombu put the message back, in the prefixed lane.
    assert client.llen(prefix + INTERACTIVE) == 1 and client.hlen(prefix + "unacked") == 0
    unprefixed = [k.decode() for k in client.scan_iter() if not k.decode().startswith((prefix, "digitq:"))]
    assert unprefixed == []
    api = make_client(BROKER_KEY_PREFIX=prefix)
    assert api.get("/ready").json()["queue_depth"] == 1
    assert api.post("/jobs", files={"files": ("a.png", png(np.zeros((28, 28))))}).status_code == 202
    wait_until(lambda: sum(client.llen(prefix + lane) for lane in LANES) == 2, what="the job's task")


def test_a_job_whose_publish_fails_is_accepted_and_left_to_the_sweeper(
    make_client: Callable[..., TestClient], redis_url: str
) -> None:
    """The broker is unreachable right after the job was created: the job exists, holds its
    reservation and its tracked chunk (the sweeper publishes it later), so the answer is 202."""
    from socket import socket

    with socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{unused.getsockname()[1]}/0"  # nothing listens there
    store = redis.Redis.from_url(redis_url)
    client = make_client(CELERY_BROKER_URL=dead)
    response = client.post("/jobs", files={"files": ("a.png", png(np.zeros((28, 28))))})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert store.zscore(INFLIGHT_INTERACTIVE, f"{job_id}:0") is not None
    assert int(store.get("digitq:quota:queued:anonymous") or 0) == 1
