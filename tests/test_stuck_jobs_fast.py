"""The stuck-job sweep's decisions, on a real Redis without workers (fast tier): what it re-queues,
what it leaves alone, and when it gives up. tests/test_stuck_jobs.py runs it in real workers."""

import io
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from core.blobs import LocalBlobStore, upload_key
from core.config import Settings
from core.dispatch import FairShare, resend
from core.job_keys import PREFIX
from core.jobs import ItemResult, JobStore, new_job_id
from core.queue import LANES, Chunk, ChunkItem, make_celery
from core.sweep_state import SweepState
from core.uploads import part_items
from tests.helpers import make_zip, png
from worker.stuck_jobs import LOCK, MAX_SWEEPS, StuckJobs


@dataclass
class Sweep:
    client: redis.Redis
    store: JobStore
    blobs: LocalBlobStore
    settings: Settings
    archive: bytes

    def stalled_job(self, stored: list[int]) -> str:
        """A job created an hour ago whose items other than `stored` have no result, none queued."""
        job_id = new_job_id()
        self.blobs.put(upload_key(job_id, 0), io.BytesIO(self.archive))
        _, items = part_items(io.BytesIO(self.archive), "a.zip", 0, self.settings.max_image_bytes)
        self.store.create(job_id, [item.name for item in items], extra={"parts": 1})
        self.store.record(job_id, [ItemResult(i, 1, 0.9) for i in stored])
        an_hour_ago = time.time() - 3600
        self.client.hset(PREFIX + job_id, mapping={"created_at": an_hour_ago, "progress_at": an_hour_ago})
        return job_id

    def run(self) -> list[str]:
        self.client.delete(LOCK)  # as if the period's lock had expired
        return StuckJobs(self.store, self.blobs, make_celery(self.settings), self.settings).sweep()

    def queued(self) -> list[tuple[str, list[int]]]:
        """The chunks published since the last call (taken off the broker by a consumer), each
        also tracked as in flight (core/dispatch.py: what the sweep reads)."""
        found = []
        with make_celery(self.settings).connection_for_write() as connection:
            for lane in LANES:
                queue = connection.SimpleQueue(lane)
                while True:
                    try:
                        message = queue.get_nowait()
                    except queue.Empty:
                        break
                    chunk = Chunk.from_json(message.payload[0][0])
                    message.ack()
                    assert {i.index for i in chunk.items} <= self.fair().carried(chunk.job_id)
                    found.append((chunk.job_id, [i.index for i in chunk.items]))
                queue.close()
        return found

    def fair(self) -> FairShare:
        return FairShare(self.client, self.settings)


@pytest.fixture
def sweep(redis_url: str, tmp_path: Path, digits) -> Sweep:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    settings = Settings(redis_url=redis_url, data_dir=tmp_path, stuck_job_seconds=60, chunk_size=4)
    archive = make_zip({f"{i}.png": png(digits[0][i]) for i in range(10)})
    store = JobStore(client, settings.job_ttl_seconds)
    return Sweep(client, store, LocalBlobStore(tmp_path / "uploads"), settings, archive)


def test_lost_items_are_re_queued_in_chunks_once(sweep: Sweep) -> None:
    job_id = sweep.stalled_job(stored=[0, 1, 2, 3, 8])
    assert sweep.run() == [job_id]
    queued = sweep.queued()
    assert sorted(i for _, indices in queued for i in indices) == [4, 5, 6, 7, 9]
    assert {j for j, _ in queued} == {job_id} and len(queued) == 2
    assert sweep.run() == []  # swept just now
    sweep.client.hset(PREFIX + job_id, "progress_at", time.time() - 3600)
    assert sweep.run() == []  # and its chunks are in flight (tracked), though no longer in the broker
    assert sweep.queued() == []


def test_only_a_chunk_that_finished_stops_carrying_its_items(sweep: Sweep) -> None:
    """The sweep reads digitq's record of chunks in flight: a finished chunk (its task done or
    failed for good, core/dispatch.py `finished`) carries nothing, and its missing items are lost."""
    job_id = sweep.stalled_job(stored=[0])
    items = tuple(ChunkItem(i, 0, f"{i}.png") for i in range(1, 10))
    chunk = Chunk(job_id, items)
    resend(make_celery(sweep.settings), sweep.fair(), [chunk])
    assert sweep.run() == []
    from core.dispatch import finished

    finished(make_celery(sweep.settings), sweep.fair(), chunk)
    assert sweep.fair().carried(job_id) == set()
    assert sweep.run() == [job_id]


def test_a_job_still_moving_or_with_queued_chunks_is_left_alone(sweep: Sweep) -> None:
    moving = sweep.stalled_job(stored=[0])
    sweep.client.hset(PREFIX + moving, "progress_at", time.time())  # a result just now
    assert sweep.run() == [] and sweep.queued() == []
    waiting = sweep.stalled_job(stored=[0])  # its missing items wait in the queue (a backlog)
    sweep.client.hset(PREFIX + moving, "progress_at", time.time() - 3600)
    for job_id in (moving, waiting):
        items = tuple(ChunkItem(i, 0, f"{i}.png") for i in range(1, 10))
        resend(make_celery(sweep.settings), sweep.fair(), [Chunk(job_id, items)])
    assert sweep.run() == [] and len(sweep.queued()) == 2


def test_after_max_sweeps_the_lost_items_fail_the_job_saying_why(sweep: Sweep) -> None:
    job_id = sweep.stalled_job(stored=[0])
    sweep.client.hset(PREFIX + job_id, "sweeps", MAX_SWEEPS)
    assert sweep.run() == [job_id]
    job = sweep.store.get(job_id)
    assert job is not None and job.status == "failed" and job.done == 10 and job.failed == 9
    assert f"re-queued {MAX_SWEEPS} times" in (job.error or "")
    assert sweep.queued() == [] and SweepState(sweep.client, 3600).active() == []


def test_a_lost_small_upload_sent_inline_fails_its_items_at_once(sweep: Sweep) -> None:
    """Its parts lived only in its task messages (INLINE_UPLOAD_BYTES): nothing to re-list."""
    job_id = sweep.stalled_job(stored=[0])
    sweep.client.hset(PREFIX + job_id, "parts", 0)
    sweep.blobs.delete_prefix(job_id)
    assert sweep.run() == [job_id]
    assert sweep.queued() == []
    assert sweep.store.status(job_id) == "failed"
    lost = sweep.store.results(job_id, [1])[0]
    assert lost is not None and "no longer available" in (lost.error or "")
