"""Lanes (core/queue.py) and the bulk window at submission (core/dispatch.py), on a real Redis."""

import socket
from collections.abc import Callable

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from core.config import Settings
from core.dispatch import PREFIX, SLACK, FairShare
from core.queue import BULK, INTERACTIVE, Chunk, ChunkItem, lane_for, make_celery, send_chunks
from tests.helpers import make_zip, png


def test_small_jobs_take_the_interactive_lane() -> None:
    settings = Settings(interactive_max_items=16)
    assert [lane_for(n, settings) for n in (1, 16, 17, 100_000)] == [INTERACTIVE, INTERACTIVE, BULK, BULK]


def test_a_worker_takes_every_interactive_chunk_before_bulk_and_each_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Bulk chunks queued before interactive ones: the worker's task consumer (the
    app's queues, transport options and a prefetch of one) takes every interactive one first, and
    each chunk once, whatever order it subscribed in. kombu's default round-robin cycle would
    alternate lanes after the first; its priority cycle would follow the subscription order."""
    redis_client.flushall()  # the session's Redis: no other test's chunks in the lanes
    app = make_celery(Settings(redis_url=redis_url))
    for n in range(6):  # each bulk chunk queued before the interactive one sent with it
        send_chunks(app, [Chunk(f"bulk-{n}", (ChunkItem(0, 0),), lane=BULK)])
        if n < 4:
            send_chunks(app, [Chunk(f"interactive-{n}", (ChunkItem(0, 0),), lane=INTERACTIVE)])
    got: list[str] = []

    def take(body: object, message) -> None:
        got.append(message.delivery_info["routing_key"])
        message.ack()

    with app.connection_for_read() as connection:
        # Subscribed bulk first (as after a worker's consumers were cancelled and re-added in
        # another order): the lane order does not depend on it.
        queues = sorted(app.amqp.queues.values(), key=lambda q: q.name != BULK)
        consumer = app.amqp.TaskConsumer(connection, queues=queues, callbacks=[take])
        consumer.qos(prefetch_count=1)
        with consumer:
            while len(got) < 10:
                connection.drain_events(timeout=10)
            with pytest.raises(socket.timeout):  # nothing more: no lane got another's chunks
                connection.drain_events(timeout=1)
    assert got == [INTERACTIVE] * 4 + [BULK] * 6


def test_a_bulk_job_sends_only_the_window_and_metrics_show_the_lanes(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    """Fast tier (no workers, so nothing drains): a small job's chunk goes to the interactive lane,
    a bulk job puts only the window in the broker (no live worker: 1 + SLACK chunks)."""
    client = make_client(CHUNK_SIZE="10")
    image = png(np.zeros((28, 28), dtype=np.uint8))
    assert client.post("/jobs", files=[("files", ("one.png", image))]).status_code == 202
    archive = make_zip({f"{i}.png": image for i in range(400)})  # 40 chunks
    bulk = client.post("/jobs", files=[("files", ("bulk.zip", archive))]).json()["id"]
    assert redis_client.llen(INTERACTIVE) == 1
    assert redis_client.llen(BULK) == 1 + SLACK
    assert redis_client.llen(f"{PREFIX}queue:{bulk}") == 40 - (1 + SLACK)
    metrics = client.get("/metrics").text
    assert 'digitq_queue_depth{lane="interactive"} 1.0' in metrics
    assert f'digitq_queue_depth{{lane="bulk"}} {1.0 + SLACK}' in metrics
    assert "digitq_bulk_tenants_waiting 1.0" in metrics
    assert client.delete(f"/jobs/{bulk}").status_code == 200  # its waiting chunks are dropped
    assert not redis_client.exists(f"{PREFIX}queue:{bulk}", f"{PREFIX}chunks:{bulk}")


def test_the_window_is_handed_out_round_robin_across_keys_then_their_jobs(redis_client: redis.Redis) -> None:
    """Key A has two jobs, key B one: slots alternate A, B, and A's alternate between its jobs."""
    redis_client.flushall()  # the fast tier's Redis is shared by the session
    fair = FairShare(redis_client, Settings(bulk_in_flight_chunks=6))

    def job(job_id: str, tenant: str, n: int = 10) -> list[Chunk]:
        return [Chunk(job_id, (ChunkItem(i, 0),), tenant) for i in range(n)]

    fair.add(job("a1", "A"))
    fair.add(job("a2", "A"))
    fair.add(job("b1", "B"))
    first = fair.refill()
    assert [c.job_id for c in first] == ["a1", "b1", "a2", "b1", "a1", "b1"]
    assert fair.refill() == []  # the window is full
    again = fair.refill(first[1])  # b1's chunk finished: one slot, to the next in the ring
    assert [(c.job_id, c.items[0].index) for c in again] == [("a2", 1)]
    assert fair.refill(first[1]) == []  # the same chunk finishing twice frees one slot, not two
    fair.forget("a2")  # cancelled: its waiting chunks are never sent
    assert {c.job_id for c in fair.refill(first[0]) + fair.refill(first[2])} <= {"a1", "b1"}
