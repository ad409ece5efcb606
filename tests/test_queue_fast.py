"""What core/queue.py's reasons say about kombu's Redis transport, checked on a real Redis (fast tier)."""

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import redis
from celery import Celery
from fastapi.testclient import TestClient
from kombu import Connection

from core.config import Settings
from core.queue import (
    BULK,
    INTERACTIVE,
    PROCESS_CHUNK,
    TRANSPORT,
    Chunk,
    ChunkItem,
    _Channel,
    make_celery,
    send_chunks,
)
from tests.helpers import png


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


def test_a_channel_keeps_one_redis_client_and_still_publishes_and_acknowledges(redis_url: str) -> None:
    """broker_transport: kombu's Redis transport made a redis-py client per command; ours keeps
    one per channel. Chunks still go out, come in and are acknowledged through it."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    app = make_celery(Settings(redis_url=redis_url))
    assert app.conf.broker_transport == TRANSPORT
    chunk = Chunk("a" * 32, (ChunkItem(0, 0),), "tenant", INTERACTIVE)
    for _ in range(3):
        send_chunks(app, [chunk])
    assert client.llen(INTERACTIVE) == 3
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        assert isinstance(channel, _Channel)
        assert channel._create_client() is channel._create_client()  # kombu's gave a new one each time
        queue = connection.SimpleQueue(INTERACTIVE)
        message = queue.get(timeout=5)
        assert message.payload[0][0]["job"] == "a" * 32 and client.hlen("unacked") == 1
        message.ack()
        assert client.hlen("unacked") == 0 and client.llen(INTERACTIVE) == 2
        queue.close()


def test_unacked_entries_are_kombus_own(redis_url: str) -> None:
    """_QoS writes the unacked index and hash by script: the same entries kombu's QoS writes (its
    restore of a dead worker's messages reads them), and removes them on ack as kombu does."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    ours, kombus = make_celery(Settings(redis_url=redis_url)), Celery("stock", broker=redis_url)
    chunk = Chunk("a" * 32, (ChunkItem(0, 0),), "tenant", INTERACTIVE)
    entries = []
    for app in (ours, kombus):
        send_chunks(ours, [chunk])
        with app.connection_for_write() as connection:
            queue = connection.SimpleQueue(INTERACTIVE)
            message = queue.get(timeout=5)
            tag = message.delivery_tag
            before = time.time()
            raw, exchange, routing_key = json.loads(client.hget("unacked", tag))
            assert before - 5 < client.zscore("unacked_index", tag) <= before
            entries.append((raw, exchange, routing_key))
            message.ack()
            assert not client.hexists("unacked", tag) and client.zscore("unacked_index", tag) is None
            queue.close()
    (our_raw, *ours_rest), (kombus_raw, *kombus_rest) = entries
    assert ours_rest == kombus_rest == ["", INTERACTIVE]
    assert our_raw.keys() == kombus_raw.keys() and our_raw["body"] == kombus_raw["body"]


def test_a_url_of_another_scheme_keeps_kombus_transport() -> None:
    app = make_celery(Settings(redis_url="redis+socket:///tmp/digitq-test.sock"))
    assert app.conf.broker_transport is None


def _comparable(raw: bytes) -> dict[str, Any]:
    """A queued message with what differs per message (ids, delivery tag) blanked, its body decoded."""
    message = json.loads(raw)
    headers, properties = message["headers"], message["properties"]
    assert headers["id"] == headers["root_id"] == properties["correlation_id"]
    headers["id"] = headers["root_id"] = properties["correlation_id"] = properties["delivery_tag"] = None
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def test_chunks_are_queued_as_celerys_send_task_queues_them(redis_url: str) -> None:
    """core.queue.task_message builds the message itself (to push it in another pipeline): it must
    be what `send_task` would queue, field for field, and the worker's consumer must take it."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    app = make_celery(Settings(redis_url=redis_url))
    inline = Chunk(
        "b" * 32, (ChunkItem(0, 0), ChunkItem(1, 0, "x/1.png", "bad")), "t", INTERACTIVE, {"0": "aGk="}
    )
    for chunk in (inline, Chunk("c" * 32, (ChunkItem(7, 1),), "", BULK)):
        app.send_task(
            PROCESS_CHUNK, args=[chunk.to_json()], queue=chunk.lane, argsrepr=f"(chunk {chunk.id},)"
        )
        reference = client.lpop(chunk.lane)
        assert send_chunks(app, [chunk]) == 1
        ours = client.lpop(chunk.lane)
        assert reference is not None and ours is not None
        assert _comparable(ours) == _comparable(reference)
        assert json.loads(ours)["headers"]["id"] != json.loads(reference)["headers"]["id"]
    send_chunks(app, [inline])
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue(INTERACTIVE)
        message = queue.get(timeout=5)
        assert message.headers["task"] == PROCESS_CHUNK
        assert Chunk.from_json(message.payload[0][0]) == inline
        message.ack()
        queue.close()


def test_an_interactive_jobs_chunks_go_to_the_broker_even_when_it_is_not_the_job_stores_redis(
    make_client: Callable[..., TestClient], redis_url: str
) -> None:
    """They ride in the job's creation pipeline only when the broker is REDIS_URL (core.queue
    `broker_is`); with CELERY_BROKER_URL elsewhere, the worker reads them there."""
    elsewhere = redis_url.rsplit("/", 1)[0] + "/1"
    broker = redis.Redis.from_url(elsewhere)
    broker.flushdb()
    store = redis.Redis.from_url(redis_url)
    image = png(np.zeros((28, 28), dtype=np.uint8))
    for env, queued_in, empty in (({}, store, broker), ({"CELERY_BROKER_URL": elsewhere}, broker, store)):
        client = make_client(**env)
        assert client.post("/jobs", files={"files": ("a.png", image)}).status_code == 202
        assert queued_in.llen(INTERACTIVE) == 1 and empty.llen(INTERACTIVE) == 0
        queued_in.delete(INTERACTIVE)
