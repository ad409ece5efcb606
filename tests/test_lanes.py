"""The lane order (core/queue.py) on a real Redis, through the task consumer a worker uses."""

import socket

import pytest

from core.config import Settings
from core.queue import BULK, INTERACTIVE, Chunk, ChunkItem, lane_for, make_celery, send_chunk


def test_small_jobs_take_the_interactive_lane() -> None:
    settings = Settings(interactive_max_items=16)
    assert [lane_for(n, settings) for n in (1, 16, 17, 100_000)] == [INTERACTIVE, INTERACTIVE, BULK, BULK]


def test_a_worker_takes_every_interactive_chunk_before_bulk_and_each_once(redis_url: str) -> None:
    """Bulk chunks queued before interactive ones: the worker's task consumer (the
    app's queues, transport options and a prefetch of one) takes every interactive one first, and
    each chunk once. kombu's default round-robin cycle would alternate lanes after the first."""
    app = make_celery(Settings(redis_url=redis_url))
    for n in range(6):  # each bulk chunk queued before the interactive one sent with it
        send_chunk(app, Chunk(f"bulk-{n}", (ChunkItem(0, 0),), lane=BULK))
        if n < 4:
            send_chunk(app, Chunk(f"interactive-{n}", (ChunkItem(0, 0),), lane=INTERACTIVE))
    got: list[str] = []

    def take(body: object, message) -> None:
        got.append(message.delivery_info["routing_key"])
        message.ack()

    with app.connection_for_read() as connection:
        consumer = app.amqp.TaskConsumer(connection, callbacks=[take])
        consumer.qos(prefetch_count=1)
        with consumer:
            while len(got) < 10:
                connection.drain_events(timeout=10)
            with pytest.raises(socket.timeout):  # nothing more: no lane got another's chunks
                connection.drain_events(timeout=1)
    assert got == [INTERACTIVE] * 4 + [BULK] * 6
