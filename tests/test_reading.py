"""Workers read zip entries by name, keeping a big zip open across the chunks of a job."""

import base64
import io
import random
import zipfile
from pathlib import Path

import pytest

from core import reading
from core.blobs import LocalBlobStore, upload_key
from core.jobs import new_job_id
from core.reading import PartReader, close_deleted_zips
from tests.helpers import make_zip


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


def _zip_of(entries: dict[str, bytes], method: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_entries_read_at_their_offset_equal_zipfiles_own_read(blobs: LocalBlobStore, method: int) -> None:
    """The fast entry read gives what ZipFile.read gives, for every entry of a real zip."""
    rng = random.Random(7)
    entries = {f"d/{i}.png": rng.randbytes(rng.randrange(0, 3000)) * rng.randrange(1, 4) for i in range(40)}
    data = _zip_of(entries, method)
    job_id = new_job_id()
    blobs.put(upload_key(job_id, 0), io.BytesIO(data))
    reader = PartReader(blobs, job_id, 20_000)
    assert {name: reader.read(0, name) for name in entries} == entries
    inline = PartReader(blobs, job_id, 20_000, {"0": base64.b64encode(data).decode()})
    assert inline.read(0, "d/3.png") == entries["d/3.png"]


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_corrupt_entry_is_an_item_error(blobs: LocalBlobStore, method: int) -> None:
    payload = bytes(range(256)) * 8
    data = bytearray(_zip_of({"a.png": payload, "b.png": b"fine"}, method))
    at = data.index(b"a.png") + len("a.png") + 40  # inside a.png's data, past its local header
    data[at] ^= 0xFF
    job_id = new_job_id()
    blobs.put(upload_key(job_id, 0), io.BytesIO(bytes(data)))
    reader = PartReader(blobs, job_id, 10_000)
    with pytest.raises(ValueError, match="corrupted zip entry"):
        reader.read(0, "a.png")
    assert reader.read(0, "b.png") == b"fine"


def test_an_entry_whose_header_understates_its_size_is_cut_at_the_limit(blobs: LocalBlobStore) -> None:
    """The central directory says 10 bytes; the stream holds 100,000: refused as too big, and
    never decompressed past the limit."""
    data = bytearray(_zip_of({"bomb.png": bytes(100_000)}, zipfile.ZIP_DEFLATED))
    central = data.rindex(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")  # uncompressed size
    job_id = new_job_id()
    blobs.put(upload_key(job_id, 0), io.BytesIO(bytes(data)))
    with pytest.raises(ValueError, match="beyond 1000 bytes"):
        PartReader(blobs, job_id, 1000).read(0, "bomb.png")
