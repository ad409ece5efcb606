"""Workers read zip entries by name, keeping a big zip open across the chunks of a job."""

import io
from pathlib import Path

import pytest

from core.blobs import LocalBlobStore, upload_key
from core.jobs import new_job_id
from tests.helpers import make_zip
from worker import reading
from worker.reading import PartReader, close_deleted_zips


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    reading._open_zips.clear()
    return LocalBlobStore(tmp_path)


def _job_with_zip(blobs: LocalBlobStore, entries: dict[str, bytes]) -> str:
    job_id = new_job_id()
    blobs.put(upload_key(job_id, 0), io.BytesIO(make_zip(entries)))
    return job_id


def test_chunks_of_a_job_share_one_open_zip(blobs: LocalBlobStore) -> None:
    job_id = _job_with_zip(blobs, {"a/1.png": b"one", "a/2.png": b"two"})
    assert PartReader(blobs, job_id, 100).read(0, "a/1.png") == b"one"
    first = list(reading._open_zips.values())
    assert PartReader(blobs, job_id, 100).read(0, "a/2.png") == b"two"  # the next chunk
    assert list(reading._open_zips.values()) == first and len(first) == 1


def test_bad_entries_are_item_errors_and_leave_the_zip_usable(blobs: LocalBlobStore) -> None:
    job_id = _job_with_zip(blobs, {"big.png": bytes(500), "ok.png": b"fine"})
    reader = PartReader(blobs, job_id, 100)
    with pytest.raises(ValueError, match="beyond 100 bytes"):
        reader.read(0, "big.png")
    assert reader.read(0, "ok.png") == b"fine"


def test_deleted_uploads_are_let_go_and_few_zips_stay_open(blobs: LocalBlobStore) -> None:
    jobs = [_job_with_zip(blobs, {"x.png": bytes([i])}) for i in range(reading.KEEP_OPEN + 1)]
    for job_id in jobs:
        PartReader(blobs, job_id, 100).read(0, "x.png")
    assert len(reading._open_zips) == reading.KEEP_OPEN  # the oldest was closed
    blobs.delete_prefix(jobs[-1])  # its job ended: the upload is deleted
    close_deleted_zips()
    assert len(reading._open_zips) == reading.KEEP_OPEN - 1
    assert all(z.fp is not None for z in reading._open_zips.values())
