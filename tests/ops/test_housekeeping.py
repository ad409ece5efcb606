"""Local copies of uploads are swept once their job is over, kept uploads once due, and the
labelled-data store works on S3 (real Redis, moto's S3 server)."""

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
import redis

from core import kept_uploads
from core.blobs import BlobStore, LocalBlobStore, S3BlobStore, make_labelled_store, upload_key
from core.config import Settings
from core.feedback import export
from core.jobs import ItemResult, JobStore, new_job_id
from core.labelled import LabelledStore, Record
from core.labelled import records as records_in
from devstack.embedded_redis import EmbeddedRedis
from tests.helpers import png, running_stack, wait_until
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


def test_a_kept_upload_outlives_its_job_on_s3_until_due(
    store: JobStore, tmp_path: Path, s3_server: str
) -> None:
    """Issue 20: a finished job's upload stays for its review, then the sweep deletes it from the bucket."""
    blobs = S3BlobStore(BUCKET, "kept-test", tmp_path)
    job_id = _stored(blobs, new_job_id())
    store.create(job_id, ["a.png"])
    store.record(job_id, [ItemResult(0, 3, 0.9)])
    kept_uploads.release(blobs, store.redis, job_id, keep_seconds=3600)
    assert job_id not in sweep_uploads(blobs, store)
    assert blobs.local_path(upload_key(job_id, 0)).exists()
    kept_uploads.release(blobs, store.redis, job_id, keep_seconds=1)
    wait_until(lambda: job_id in sweep_uploads(blobs, store), 10, 0.2, "the keep time to end")
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"kept-test/{job_id}/")


def test_the_labelled_store_on_s3(store: JobStore, tmp_path: Path, s3_server: str) -> None:
    """Issue 20: records under `<prefix>/labelled/`, replaced, deleted per key, exported per digit."""
    settings = Settings(blob_url=f"s3://{BUCKET}/labelled-test", data_dir=tmp_path)
    labelled = LabelledStore(make_labelled_store(settings), store.redis, limit=10)
    job_id = new_job_id()
    records = [Record(job_id, i, i, png(np.full((8, 8), 200)), "v1", i, 0.5, "key-a", 0.0) for i in range(3)]
    labelled.put(records)
    labelled.put([Record(job_id, 0, 9, records[0].png, "v1", 0, 0.5, "key-a", 1.0)])  # relabelled
    labelled.put([Record(job_id, 0, 4, records[0].png, "v1", 0, 0.5, "key-b", 1.0)])  # another key
    listing = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="labelled-test/labelled/")
    assert len(listing["Contents"]) == 4 and labelled.count() == 4
    assert export(tmp_path / "out", settings) == {1: 1, 2: 1, 4: 1, 9: 1}
    assert labelled.delete_key("key-a") == 3 and labelled.count() == 1
    assert [r.key_id for r in records_in(make_labelled_store(settings))] == ["key-b"]
