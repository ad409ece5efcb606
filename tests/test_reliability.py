"""Killed workers lose no job and duplicate no result (acks_late, reject_on_worker_lost,
a short Redis visibility timeout, and per-item HSETNX results), with the bulk lane's window in
use (core/dispatch.py): the killed chunk keeps its slot until its redelivery finishes."""

import base64
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from core import fleet
from core.job_keys import PREFIX
from devstack.stack import Stack
from tests.helpers import (
    all_results,
    make_zip,
    png,
    pool_children,
    running_stack,
    wait_for_job,
    wait_until,
)

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)

IMAGES = 3000


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"WORKERS": "2", "WORKER_PROCESSES": "1", "CHUNK_SIZE": "50", "VISIBILITY_TIMEOUT": "5"}
    with running_stack(tmp_path_factory.mktemp("reliability"), **env) as stack:
        yield stack


@pytest.fixture(scope="module")
def big_zip(digits) -> bytes:
    images, _ = digits
    return make_zip({f"{i:05d}.png": png(images[i % len(images)]) for i in range(IMAGES)})


def submit_and_wait_until_started(client: httpx.Client, archive: bytes) -> str:
    job_id = client.post("/jobs", files=[("files", ("big.zip", archive))]).json()["id"]
    wait_until(lambda: client.get(f"/jobs/{job_id}").json()["counts"]["done"], 30, 0.01, "the job to start")
    return job_id


def assert_window_in_use(stack: Stack, job_id: str) -> None:
    """The job's chunks are not all in the broker: some still wait for the window."""
    from core.dispatch import PREFIX as FAIR

    assert redis.Redis.from_url(stack.redis_url or "").llen(f"{FAIR}queue:{job_id}") > 0


def assert_every_item_exactly_once(stack: Stack, client: httpx.Client, job_id: str) -> None:
    job = wait_for_job(client, job_id, timeout=120)
    assert job["status"] == "succeeded", job
    assert job["counts"] == {"total": IMAGES, "done": IMAGES, "failed": 0}
    stored = redis.Redis.from_url(stack.redis_url or "").hlen(f"{PREFIX}{job_id}:results")
    assert stored == IMAGES
    items = all_results(client, job_id)
    assert [it["index"] for it in items] == list(range(IMAGES))
    assert all(it["status"] == "done" and it["digit"] is not None for it in items)


def test_sigkill_of_a_pool_process_mid_job(two_workers: Stack, big_zip: bytes) -> None:
    with httpx.Client(base_url=two_workers.api_url, timeout=30) as client:
        job_id = submit_and_wait_until_started(client, big_zip)
        assert_window_in_use(two_workers, job_id)
        [child] = pool_children(two_workers.processes["worker1"].pid)
        os.kill(child, signal.SIGKILL)  # the chunk in flight is rejected and requeued at once
        assert_every_item_exactly_once(two_workers, client, job_id)


def test_sigkill_of_a_whole_worker_mid_job(two_workers: Stack, big_zip: bytes) -> None:
    with httpx.Client(base_url=two_workers.api_url, timeout=30) as client:
        job_id = submit_and_wait_until_started(client, big_zip)
        assert_window_in_use(two_workers, job_id)
        redis_client = redis.Redis.from_url(two_workers.redis_url or "")
        [heartbeat] = redis_client.keys(f"{fleet.WORKER_PREFIX}worker2@*")
        victim = two_workers.processes["worker2"]
        os.killpg(victim.pid, signal.SIGKILL)  # main and pool process: nobody can requeue
        two_workers.processes.pop("worker2").wait()
        # /ready stops listing it once its heartbeat expires (HEARTBEAT_TTL), while worker1 stays.
        assert 0 < redis_client.ttl(heartbeat) <= fleet.HEARTBEAT_TTL
        listed = lambda: {w["hostname"].split("@")[0] for w in client.get("/ready").json()["workers"]}  # noqa: E731
        wait_until(lambda: listed() == {"worker1"}, 30, 0.1, "/ready to drop the killed worker")
        assert not redis_client.exists(heartbeat)
        # worker1 finishes the rest; worker2's unacknowledged chunk comes back after the
        # visibility timeout (5 s here), not kombu's default hour (the wait gives up after 120 s).
        assert_every_item_exactly_once(two_workers, client, job_id)


def test_redis_restart_mid_job_loses_nothing(two_workers: Stack, big_zip: bytes) -> None:
    """Redis restarts (append-only file replayed): workers reconnect and the job completes."""
    assert two_workers.redis is not None
    with httpx.Client(base_url=two_workers.api_url, timeout=30) as client:
        job_id = submit_and_wait_until_started(client, big_zip)
        two_workers.redis.stop()
        assert client.get(f"/jobs/{job_id}").status_code == 503
        time.sleep(1)  # Redis stays down a moment (not a wait for anything)
        two_workers.redis.start()
        assert_every_item_exactly_once(two_workers, client, job_id)


def test_a_redelivered_one_trip_chunk_starts_as_any_other_and_counts_both_starts(
    two_workers: Stack, digits
) -> None:
    """A one-trip chunk (core/queue.py) does not count its first start; redelivered (kombu marks a
    message it restores after a death: here a consumer that goes away without acknowledging it),
    it goes through the start script, which counts that first start too: the poison limit holds
    at the same number of deaths."""
    from core.job_keys import DELIVERIES_SUFFIX
    from core.jobs import JobStore, new_job_id
    from core.queue import INTERACTIVE, Chunk, make_celery, send_chunks
    from core.uploads import Item, chunks

    client = redis.Redis.from_url(two_workers.redis_url or "")
    store, job_id = JobStore(client, 3600), new_job_id()
    store.create(job_id, ["a.png"])
    [items] = chunks([Item(name="a.png", part=0)], 250, 2**20)
    parts = {"0": base64.b64encode(png(digits[0][0])).decode()}
    chunk = Chunk(job_id, tuple(items), lane=INTERACTIVE, parts=parts, one_trip=True)
    celery = make_celery(two_workers.settings.model_copy(update={"redis_url": two_workers.redis_url}))
    # The workers stopped (not paused by remote control: after the Redis restart above, the
    # control broadcast's connection may be the one Redis closed), so only this test consumes.
    workers = [name for name in two_workers.processes if name.startswith("worker")]
    for name in workers:
        two_workers.stop_process(name)
    try:
        send_chunks(celery, [chunk])
        with celery.connection_for_write() as connection:
            queue = connection.SimpleQueue(INTERACTIVE)
            assert Chunk.from_json(queue.get(timeout=10).payload[0][0]) == chunk
        # Gone without an acknowledgement: kombu put it back, marked redelivered.
    finally:
        for name in workers:
            two_workers.start_worker(name)
    wait_until(lambda: store.status(job_id) == "succeeded", 60, 0.02, "the job")
    assert client.hgetall(PREFIX + job_id + DELIVERIES_SUFFIX) == {b"0:0": b"2"}
