"""No stuck jobs (issue 13): a job whose chunks were never all queued, or whose chunk was lost, is
found by the workers' periodic sweep and completed (lost items re-queued) or failed with an error
saying why; a chunk that fails outside the per-item work is retried, not dropped."""

import io
import json
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from core.blobs import make_blob_store, upload_key
from core.dispatch import FairShare, resend
from core.job_keys import PREFIX
from core.jobs import JobStore, new_job_id
from core.queue import BULK, Chunk, ChunkItem, make_celery
from core.uploads import chunks, part_items
from devstack.stack import Stack
from tests.helpers import all_results, make_zip, png, running_stack, wait_for_job, wait_until

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)

IMAGES = 60
CHUNK = 10


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # VISIBILITY_TIMEOUT 5: a chunk in flight for 10 s without finishing is published again.
    env = {
        "WORKER_PROCESSES": "1",
        "CHUNK_SIZE": str(CHUNK),
        "STUCK_JOB_SECONDS": "3",
        "VISIBILITY_TIMEOUT": "5",
    }
    with running_stack(tmp_path_factory.mktemp("sweeper"), **env) as s:
        yield s


@pytest.fixture(scope="module")
def archive(digits) -> bytes:
    images, _ = digits
    return make_zip({f"d/{i:03d}.png": png(images[i]) for i in range(IMAGES)} | {"../evil.png": b"x"})


def redis_of(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.redis_url or "")


def half_submitted(stack: Stack, archive: bytes, send: int) -> str:
    """What the API leaves when it dies after creating the job and queueing `send` of its chunks
    (its own listing and tracked send path, stopped early)."""
    job_id = new_job_id()
    settings = stack.settings.model_copy(update={"redis_url": stack.redis_url})
    make_blob_store(settings).put(upload_key(job_id, 0), io.BytesIO(archive))
    _, items = part_items(io.BytesIO(archive), "a.zip", 0, settings.max_image_bytes)
    store = JobStore(redis_of(stack), settings.job_ttl_seconds)
    store.create(job_id, [item.name for item in items], extra={"parts": 1})
    planned = list(chunks(items, settings.chunk_size, settings.chunk_max_bytes))
    sent = [Chunk(job_id, tuple(run)) for run in planned[:send]]
    resend(make_celery(settings), FairShare(redis_of(stack), settings), sent)
    return job_id


def assert_every_item_once(stack: Stack, client: httpx.Client, job_id: str) -> list[dict]:
    job = wait_for_job(client, job_id, timeout=90)
    total = IMAGES + 1
    assert job["status"] == "succeeded", job
    assert job["counts"] == {"total": total, "done": total, "failed": 1}  # ../evil.png: a preset error
    assert redis_of(stack).hlen(f"{PREFIX}{job_id}:results") == total
    items = all_results(client, job_id)
    assert [it["index"] for it in items] == list(range(total))
    assert items[-1]["status"] == "failed" and "unsafe path" in items[-1]["error"]
    return items


def sweeps(stack: Stack, job_id: str) -> int:
    return int(redis_of(stack).hget(PREFIX + job_id, "sweeps") or 0)


def test_a_job_whose_api_died_before_queueing_every_chunk_is_completed(stack: Stack, archive) -> None:
    job_id = half_submitted(stack, archive, send=2)
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        assert_every_item_once(stack, client, job_id)
    assert sweeps(stack, job_id) == 1


def test_a_job_whose_queued_chunk_was_deleted_is_completed(stack: Stack, archive) -> None:
    """The message is gone from the broker but the chunk is still in flight in digitq's record:
    the window's sweeper publishes it again (stale after 2 x VISIBILITY_TIMEOUT), not the
    stuck-job sweep."""
    client = redis_of(stack)
    stack.stop_process("worker1")  # nobody takes the chunks while one is being lost
    try:
        job_id = half_submitted(stack, archive, send=99)
        assert client.llen(BULK) == 7
        assert client.lpop(BULK)  # the newest message: the last chunk (kombu pushes on the left)
    finally:
        stack.start_worker("worker1")
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        assert_every_item_once(stack, api, job_id)
    assert sweeps(stack, job_id) == 0


def test_lost_items_whose_upload_is_gone_fail_the_job_saying_why(stack: Stack, archive) -> None:
    job_id = half_submitted(stack, archive, send=0)
    settings = stack.settings.model_copy(update={"redis_url": stack.redis_url})
    make_blob_store(settings).delete_prefix(job_id)  # e.g. removed by hand, or an S3 lifecycle rule
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        job = wait_for_job(client, job_id, timeout=90)
        assert job["status"] == "failed", job
        assert "lost before a worker processed them" in job["error"] and "no longer available" in job["error"]
        assert job["counts"]["done"] == IMAGES + 1
        items = all_results(client, job_id)
    lost = [it for it in items if it["error"] and "lost" in it["error"]]
    assert len(lost) == IMAGES + 1 and all("submit it again" in it["error"] for it in lost)


def retried_message_of(client: redis.Redis, job_id: str) -> bool:
    """A message of this job's chunk that Celery re-sent as a retry (queued, or held by the worker
    for its countdown: then in kombu's `unacked` hash). The test observes Celery and kombu here;
    digitq itself never reads their keys."""
    unacked = [json.dumps(json.loads(v)[0]).encode() for v in client.hvals("unacked")]
    for raw in client.lrange(BULK, 0, -1) + unacked:
        headers = json.loads(raw).get("headers", {})
        if job_id in str(headers.get("argsrepr")) and headers.get("retries", 0) >= 1:
            return True
    return False


def test_a_chunk_failing_outside_the_item_work_is_retried_not_dropped(stack: Stack, digits) -> None:
    images, _ = digits
    client = redis_of(stack)
    job_id = new_job_id()
    settings = stack.settings.model_copy(update={"redis_url": stack.redis_url})
    data = png(images[0])
    make_blob_store(settings).put(upload_key(job_id, 0), io.BytesIO(data))
    store = JobStore(client, settings.job_ttl_seconds)
    store.create(job_id, ["a.png"], extra={"parts": 1})
    # Storing the result fails (the results key has the wrong type): an error in Redis, after the
    # item work. The task must send the chunk again rather than let Celery drop it.
    client.set(f"{PREFIX}{job_id}:results", "not a hash", ex=600)
    resend(make_celery(settings), FairShare(client, settings), [Chunk(job_id, (ChunkItem(0, 0),))])
    wait_until(lambda: retried_message_of(client, job_id), 60, 0.05, "the chunk to be re-sent as a retry")
    client.delete(f"{PREFIX}{job_id}:results")  # Redis is fine again
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        job = wait_for_job(api, job_id, timeout=60)
    assert job["status"] == "succeeded" and job["counts"]["done"] == 1
    assert sweeps(stack, job_id) == 0  # the retry did it, not the sweep


def test_the_sweep_leaves_a_job_alone_while_its_chunks_wait_in_the_queue(stack: Stack, archive) -> None:
    stack.stop_process("worker1")
    try:
        job_id = half_submitted(stack, archive, send=99)
        client = redis_of(stack)
        store = JobStore(client, 60)
        # Long past STUCK_JOB_SECONDS, but every missing item is in a queued chunk: not stuck.
        client.hset(PREFIX + job_id, "created_at", time.time() - 3600)
        from core.config import Settings
        from worker.stuck_jobs import StuckJobs

        sweeper_settings = Settings(redis_url=stack.redis_url, stuck_job_seconds=3, chunk_size=CHUNK)
        celery = make_celery(sweeper_settings)
        blobs = make_blob_store(stack.settings)
        client.delete("digitq:sweep:lock")
        assert StuckJobs(store, blobs, celery, sweeper_settings).sweep() == []
        assert client.llen(BULK) == 7  # nothing re-queued
    finally:
        stack.start_worker("worker1")
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        assert_every_item_once(stack, api, job_id)
    assert sweeps(stack, job_id) == 0
