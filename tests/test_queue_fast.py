"""What core/queue.py's reasons say about kombu's Redis transport, checked on a real Redis (fast tier)."""

import redis
from kombu import Connection

from core.config import Settings
from core.queue import make_celery


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
