"""Local copies of uploads are swept once their job is over (real Redis, moto's S3 server)."""

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import redis

from core.blobs import BlobStore, LocalBlobStore, S3BlobStore, upload_key
from core.jobs import ItemResult, JobStore, new_job_id
from devstack.embedded_redis import EmbeddedRedis
from tests.helpers import running_stack, wait_until
from tests.ops.ops_helpers import BUCKET
from worker.housekeeping import ORPHAN_AFTER_SECONDS, sweep_uploads

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobStore]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False)
    server.start()
    yield JobStore(redis.Redis.from_url(server.url), ttl_seconds=600)
    server.stop()


def _stored(blobs: BlobStore, job_id: str) -> str:
    blobs.put(upload_key(job_id, 0), io.BytesIO(b"not really a png"))
    blobs.local_path(upload_key(job_id, 0))  # on S3: the worker's download into its cache
    return job_id


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _cases(blobs: BlobStore, store: JobStore, root: Path) -> dict[str, str]:
    finished, running, cancelled = new_job_id(), new_job_id(), new_job_id()
    for job_id in (finished, running, cancelled):
        store.create(job_id, ["a.png", "b.png"])
        _stored(blobs, job_id)
    store.record(finished, [ItemResult(0, 3, 0.9), ItemResult(1, error="blank image")])
    store.record(running, [ItemResult(0, 3, 0.9)])
    store.cancel(cancelled)
    submitting = _stored(blobs, new_job_id())  # the API stores the upload, then creates the job
    expired = _stored(blobs, new_job_id())
    _age(root / expired, ORPHAN_AFTER_SECONDS + 60)
    return {
        finished: "finished",
        running: "running",
        cancelled: "cancelled",
        submitting: "submitting",
        expired: "expired",
    }


def test_local_uploads_of_finished_and_expired_jobs_are_swept(store: JobStore, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    cases = _cases(blobs, store, tmp_path)
    swept = sweep_uploads(blobs, store)
    assert sorted(cases[j] for j in swept) == ["cancelled", "expired", "finished"]
    left = {cases[p.name] for p in tmp_path.iterdir()}
    assert left == {"running", "submitting"}
    assert sweep_uploads(blobs, store) == []


def test_s3_cache_is_swept_but_the_bucket_is_left_alone(
    store: JobStore, tmp_path: Path, s3_server: str
) -> None:
    blobs = S3BlobStore(BUCKET, "sweep-test", tmp_path)
    cases = _cases(blobs, store, tmp_path)
    swept = sweep_uploads(blobs, store)
    assert sorted(cases[j] for j in swept) == ["cancelled", "expired", "finished"]
    assert {cases[p.name] for p in tmp_path.iterdir()} == {"running", "submitting"}
    listing = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="sweep-test/")
    # Deleting from the bucket is the job of whoever closes or cancels the job, not of a sweep.
    assert len(listing["Contents"]) == 5


def test_a_starting_worker_sweeps_what_a_crash_left_behind(tmp_path: Path) -> None:
    uploads = tmp_path / "uploads"
    orphan, fresh = uploads / new_job_id(), uploads / new_job_id()
    for path in (orphan, fresh):
        path.mkdir(parents=True)
        (path / "part-0").write_bytes(b"left behind")
    _age(orphan, ORPHAN_AFTER_SECONDS + 60)
    with running_stack(tmp_path, WORKER_PROCESSES="1"):
        wait_until(lambda: not orphan.exists(), 20, 0.2, "the orphaned upload to be swept")
        assert not orphan.exists()
        assert fresh.exists()
