"""The lane order (core/queue.py) on a real Redis through kombu's own consumer, as a worker reads."""

from kombu import Queue

from core.config import Settings
from core.queue import BULK, INTERACTIVE, LANES, lane_for, make_celery


def test_small_jobs_take_the_interactive_lane() -> None:
    settings = Settings(interactive_max_items=16)
    assert [lane_for(n, settings) for n in (1, 16, 17, 100_000)] == [INTERACTIVE, INTERACTIVE, BULK, BULK]


def test_a_consumer_takes_every_interactive_message_before_bulk(redis_url: str) -> None:
    """Bulk messages first in the broker, then interactive ones: the consumer (with the workers'
    transport options and prefetch of one) takes all interactive ones first. kombu's default
    round-robin cycle would alternate lanes after the first message."""
    waiting = 4
    app = make_celery(Settings(redis_url=redis_url))
    got: list[str] = []
    with app.connection_for_write() as connection:
        producer = connection.Producer()
        for lane in (BULK, INTERACTIVE):
            for n in range(waiting + 2 if lane == BULK else waiting):
                producer.publish({"n": n}, routing_key=lane, declare=[Queue(lane)], serializer="json")

    def take(body: dict, message) -> None:
        got.append(message.delivery_info["routing_key"])
        message.ack()

    with app.connection_for_read() as connection:
        queues = [Queue(lane) for lane in LANES]
        with connection.Consumer(queues, callbacks=[take], prefetch_count=1, accept=["json"]):
            while len(got) < 2 * waiting + 2:
                connection.drain_events(timeout=10)
    assert got == [INTERACTIVE] * waiting + [BULK] * (waiting + 2)
