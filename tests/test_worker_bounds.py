"""Issue 8, what one chunk may cost a worker: memory, time, and how often it may kill one.

One stack, one worker node with one pool process (so the process a chunk runs in is known),
chunks not bounded by pixels (each test makes its own chunk), a 9 s visibility timeout: a
chunk's deadline is then 4.5 s, its hard time limit 6 s.
"""

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from core.queue import chunk_time_limits
from devstack.stack import Stack
from tests.helpers import (
    all_results,
    cpu_seconds,
    make_zip,
    peak_rss_bytes,
    png,
    pool_children,
    running_stack,
    wait_for_job,
    wait_until,
)

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)

# worker/tasks.py's POISON_ERROR, MAX_CHUNK_DELIVERIES=3: the fourth start fails the items.
POISONED = "its chunk was started 3 times and never finished"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"WORKER_PROCESSES": "1", "VISIBILITY_TIMEOUT": "9", "CHUNK_MAX_PIXELS": str(10**12)}
    with running_stack(tmp_path_factory.mktemp("bounds"), **env) as stack:
        assert chunk_time_limits(stack.settings) == (4.5, 6.0)
        yield stack


@pytest.fixture(scope="module")
def client(one_process: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=one_process.api_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def forty_megapixels() -> bytes:
    """A 40-megapixel PNG (the most an image may have) of ~45 KB: ~0.1 s to decode."""
    image = np.zeros((5000, 8000), np.uint8)
    image[1000:4000, 3500:4500] = 255
    return png(image)


def pool_process(stack: Stack, other_than: int | None = None) -> int:
    def found() -> int | None:
        children = [c for c in pool_children(stack.processes["worker1"].pid) if c != other_than]
        return children[0] if children else None

    return wait_until(found, 60, 0.02, "a pool process")


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def submit(client: httpx.Client, archive: bytes) -> str:
    answer = client.post("/jobs", files=[("files", ("a.zip", archive))])
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


@pytest.mark.perf  # a memory bound; reading one entry at a time: tests/test_reading.py
def test_a_zip_bomb_is_read_one_entry_at_a_time(one_process: Stack, client: httpx.Client) -> None:
    """30 entries of 20 MiB of zeros deflate to 0.6 MB: one chunk by compressed bytes, which the
    pool process held in memory all at once (5.3 GB for the issue's 250 entries)."""
    zeros = bytes(20 * 2**20)  # MAX_IMAGE_BYTES: each entry is accepted
    archive = make_zip({f"zeros-{i}.png": zeros for i in range(30)})
    pid = pool_process(one_process)
    before = peak_rss_bytes(pid)
    job = wait_for_job(client, submit(client, archive), timeout=180)
    assert job["counts"] == {"total": 30, "done": 30, "failed": 30}
    assert pool_process(one_process) == pid  # it survived
    grown = peak_rss_bytes(pid) - before
    assert grown < 200 * 2**20, f"the pool process' peak memory grew by {grown / 2**20:.0f} MiB"


def test_a_chunk_that_kills_its_process_every_time_ends_its_items(
    one_process: Stack, client: httpx.Client, forty_megapixels: bytes
) -> None:
    """As an OOM killer would: the process working on the chunk dies, every time. The chunk came
    back (task_reject_on_worker_lost) and killed the next process, until the job expired."""
    archive = make_zip({f"big-{i}.png": forty_megapixels for i in range(10)})  # ~1 s of work
    stop = threading.Event()
    kills: list[int] = []

    def oom_killer() -> None:
        seen: dict[int, float] = {}  # CPU time of each pool process when first seen
        while not stop.is_set():
            for pid in pool_children(one_process.processes["worker1"].pid):
                busy = cpu_seconds(pid) - seen.setdefault(pid, cpu_seconds(pid))
                if pid not in kills and busy > 0.3:  # working on the chunk (idle: ~0 s)
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
            stop.wait(0.01)

    killer = threading.Thread(target=oom_killer, daemon=True)
    killer.start()
    try:
        job = wait_for_job(client, submit(client, archive), timeout=120)
    finally:
        stop.set()
        killer.join()
    assert len(kills) == 3, kills  # MAX_CHUNK_DELIVERIES
    assert job["counts"] == {"total": 10, "done": 10, "failed": 10}
    assert all(POISONED in item["error"] for item in all_results(client, job["id"]))
    pool_process(one_process)  # the pool is whole again


def test_a_chunk_past_its_deadline_is_stopped_not_redelivered_while_it_runs(
    one_process: Stack, client: httpx.Client, forty_megapixels: bytes
) -> None:
    """A chunk needing more than the visibility timeout was handed to a second process while the
    first still worked on it; now it stops at its deadline, and after MAX_CHUNK_DELIVERIES starts
    its items fail."""
    archive = make_zip({f"big-{i}.png": forty_megapixels for i in range(120)})  # > 12 s of work
    job = wait_for_job(client, submit(client, archive), timeout=120)
    assert job["counts"] == {"total": 120, "done": 120, "failed": 120}
    assert all(POISONED in item["error"] for item in all_results(client, job["id"]))


def test_a_frozen_chunk_is_killed_at_the_hard_time_limit_and_requeued(
    one_process: Stack, client: httpx.Client, forty_megapixels: bytes
) -> None:
    """A process stuck mid-chunk (SIGSTOP: as deep in a C call, or swapping) never reaches its
    deadline check. The hard limit kills it and the chunk is requeued (task_acks_on_timeout=False; Celery's
    default acknowledges it, and its items never got a result)."""
    archive = make_zip({f"big-{i}.png": forty_megapixels for i in range(6)})  # well within 4.5 s
    pid = pool_process(one_process)
    idle = cpu_seconds(pid)
    job_id = submit(client, archive)
    wait_until(lambda: cpu_seconds(pid) > idle + 0.3, 60, 0.01, "the chunk to start")
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: gone(pid), 30, 0.1, "the frozen process to be killed")
    job = wait_for_job(client, job_id, timeout=60)
    assert job["status"] == "succeeded" and job["counts"] == {"total": 6, "done": 6, "failed": 0}
