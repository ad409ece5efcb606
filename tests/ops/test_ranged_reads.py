"""A worker host reads only the zip entries its chunk needs from S3 (issue 23): ranged GETs at the
offsets the central directory gives, against moto's S3 server over HTTP. Nothing is written to the
host's disk, and a chunk of a big zip costs about its own entries, not the whole part."""

import io
import os
import zipfile
from pathlib import Path

import pytest

from core import reading
from core.blobs import RangedObject, S3BlobStore, upload_key
from core.jobs import new_job_id
from core.reading import PartReader
from tests.helpers import make_zip
from tests.ops.ops_helpers import BUCKET

ENTRY_BYTES = 20_000
ENTRIES = 200  # a 4 MB zip of incompressible entries


@pytest.fixture
def blobs(s3_server: str, tmp_path: Path) -> S3BlobStore:
    reading._open_zips.clear()
    return S3BlobStore(BUCKET, "ranged-test", tmp_path / "blob-cache")


def _ranged(archive: zipfile.ZipFile) -> RangedObject:
    raw = archive.fp.raw  # type: ignore[union-attr]  # the BufferedReader over the S3 object
    assert isinstance(raw, RangedObject)
    return raw


def test_a_chunk_fetches_its_entries_not_the_whole_zip(blobs: S3BlobStore, tmp_path: Path) -> None:
    entries = {f"digits/{i:04d}.png": os.urandom(ENTRY_BYTES) for i in range(ENTRIES)}
    data = make_zip(entries)
    job_id = new_job_id()
    blobs.put(upload_key(job_id, 0), io.BytesIO(data))

    chunk = [f"digits/{i:04d}.png" for i in range(100, 110)]  # one chunk's 10 entries, mid-zip
    reader = PartReader(blobs, job_id, max_image_bytes=ENTRY_BYTES * 2)
    assert [reader.read(0, name) for name in chunk] == [entries[name] for name in chunk]

    (archive,) = reading._open_zips.values()
    ranged = _ranged(archive)
    # The directory (~12 KB), the end record, and the 10 entries (200 KB) in 64 KiB reads.
    assert ranged.fetched < len(data) / 10, f"{ranged.fetched} of {len(data)} bytes fetched"
    assert ranged.fetched >= 10 * ENTRY_BYTES
    assert ranged.requests <= 10
    assert not (tmp_path / "blob-cache").exists(), "the part was downloaded to disk"

    # The next chunk of the same job (same pool process) reuses the directory already read.
    before = ranged.requests
    nxt = PartReader(blobs, job_id, max_image_bytes=ENTRY_BYTES * 2)
    assert nxt.read(0, "digits/0150.png") == entries["digits/0150.png"]
    assert ranged.requests - before <= 1


def test_plain_parts_and_missing_uploads(blobs: S3BlobStore) -> None:
    job_id = new_job_id()
    blobs.put(upload_key(job_id, 0), io.BytesIO(b"\x89PNG one image"))
    reader = PartReader(blobs, job_id, max_image_bytes=1000)
    assert reader.read(0, None) == b"\x89PNG one image"
    with pytest.raises(FileNotFoundError):
        PartReader(blobs, job_id, max_image_bytes=1000).read(1, "x.png")  # no such part


def test_a_corrupt_entry_read_by_ranges_is_an_item_error(blobs: S3BlobStore) -> None:
    a = os.urandom(5000)  # incompressible: deflate keeps it verbatim, so it can be found and broken
    data = bytearray(make_zip({"a.png": a, "b.png": b"B" * 5000}))
    at = data.index(a[1000:1100])
    data[at : at + 100] = bytes(100)  # the CRC no longer matches
    job_id = new_job_id()
    blobs.put(upload_key(job_id, 0), io.BytesIO(bytes(data)))
    reader = PartReader(blobs, job_id, max_image_bytes=10_000)
    with pytest.raises(ValueError, match="corrupted zip entry"):
        reader.read(0, "a.png")
    assert reader.read(0, "b.png") == b"B" * 5000


def test_a_zip_opened_again_reads_its_directory_from_the_process_cache(blobs: S3BlobStore) -> None:
    """Fair share interleaves jobs: a process alternating between more zips than it keeps open
    (reading.KEEP_OPEN) opens each again; its directory (~60 B an entry) is not fetched again."""
    from core import blobs as blob_module

    blob_module._tails.clear()
    jobs = []
    for n in range(reading.KEEP_OPEN + 1):
        job_id = new_job_id()
        blobs.put(
            upload_key(job_id, 0),
            io.BytesIO(make_zip({f"{i:04d}.png": bytes([n]) * 300 for i in range(2000)})),
        )
        jobs.append(job_id)
    for job_id in jobs:  # the first is closed when the last opens
        PartReader(blobs, job_id, 1000).read(0, "0000.png")
    assert len(reading._open_zips) == reading.KEEP_OPEN
    first_open = _ranged(reading._open_zips[upload_key(jobs[-1], 0)])
    assert first_open.fetched > 2000 * 46  # its directory came from S3

    assert PartReader(blobs, jobs[0], 1000).read(0, "1500.png") == bytes([0]) * 300  # opened again
    again = _ranged(reading._open_zips[upload_key(jobs[0], 0)])
    assert again.requests == 1 and again.fetched <= 64 * 1024  # the entry only: no HEAD, no directory
