"""Upload inspection: format sniffing, junk entries, unsafe names, chunking and its bounds."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from core.uploads import (
    MAX_PIXELS,
    EntryBudget,
    Item,
    UploadError,
    chunks,
    header_pixels,
    is_junk,
    part_items,
    sniff,
    unsafe_reason,
)
from tests.helpers import empty_entries_zip, png


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n....", "png"),
        (b"\xff\xd8\xff\xe0", "jpeg"),
        (b"GIF89a", "gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (b"II*\x00", "tiff"),
        (b"PK\x03\x04", "zip"),
        (b"%PDF-1.7", None),
        (b"hello", None),
    ],
)
def test_sniff(head: bytes, kind: str | None) -> None:
    assert sniff(head) == kind


@pytest.mark.parametrize(
    "name", ["__MACOSX/a/._x.png", ".DS_Store", "a/.hidden.png", ".git/x.png", "dir/", "a/Thumbs.db"]
)
def test_junk_is_skipped(name: str) -> None:
    assert is_junk(name)


@pytest.mark.parametrize("name", ["a/1.png", "x.jpeg", "deep/er/3.bmp"])
def test_images_are_not_junk(name: str) -> None:
    assert not is_junk(name) and unsafe_reason(name) is None


@pytest.mark.parametrize("name", ["/etc/x.png", "C:/x.png", "a/../../x.png", "..\\x.png", "C:\\x.png"])
def test_unsafe_names(name: str) -> None:
    assert unsafe_reason(name)


def test_windows_separators_are_fine() -> None:
    assert unsafe_reason("scans\\batch1\\7.png") is None


def test_chunks_respect_count_and_bytes() -> None:
    items = [Item(name=f"{i}", part=0, member=f"{i}", size=100) for i in range(10)]
    by_count = list(chunks(items, max_items=4, max_bytes=10**6))
    assert [len(c) for c in by_count] == [4, 4, 2]
    by_bytes = list(chunks(items, max_items=100, max_bytes=250))
    assert [len(c) for c in by_bytes] == [2, 2, 2, 2, 2]
    assert [t.index for c in by_bytes for t in c] == list(range(10))


def _zip(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    buffer.seek(0)
    return buffer


def _chunk_sizes(data: io.BytesIO, **bounds: int) -> list[int]:
    _, items = part_items(data, "a.zip", 0, 20 * 2**20)
    limits = {"max_items": 250, "max_bytes": 8 * 2**20, "max_pixels": 100_000_000, **bounds}
    return [len(c) for c in chunks(items, **limits)]


def test_chunks_are_bounded_by_uncompressed_bytes() -> None:
    """Chunks counted compressed bytes: 250 entries of 20 MiB of zeros deflate to ~5 MB, one chunk."""
    bomb = _zip({f"{i}.png": bytes(5 * 2**20) for i in range(3)})  # ~5 KB each once deflated
    assert _chunk_sizes(bomb) == [1, 1, 1]  # 5 MiB each: two would pass 8 MiB


def test_chunks_are_bounded_by_decoded_pixels() -> None:
    big = png(np.zeros((5000, 8000), np.uint8))  # 40 MP in ~40 KB
    assert _chunk_sizes(_zip({f"{i}.png": big for i in range(5)})) == [2, 2, 1]
    buffer = io.BytesIO()  # 30 MP in ~30 KB, its size read by Pillow's header parser
    Image.fromarray(np.zeros((5000, 6000), np.uint8)).save(buffer, "TIFF", compression="tiff_adobe_deflate")
    tiff = buffer.getvalue()
    assert _chunk_sizes(_zip({f"{i}.tif": tiff for i in range(3)}), max_pixels=50_000_000) == [1, 1, 1]
    small = png(np.zeros((28, 28), np.uint8))
    assert _chunk_sizes(_zip({f"{i}.png": small for i in range(300)})) == [250, 50]


def test_header_pixels() -> None:
    assert header_pixels(png(np.zeros((30, 40), np.uint8))) == 1200
    assert header_pixels(png(np.zeros((30, 40), np.uint8), "JPEG")) == 1200
    assert header_pixels(b"not an image") == MAX_PIXELS  # unknown: the worst an image may cost
    assert header_pixels(png(np.zeros((2, 2), np.uint8))[:20]) == MAX_PIXELS  # truncated


@pytest.mark.parametrize(
    ("method", "error"),
    [
        (zipfile.ZIP_STORED, None),
        (zipfile.ZIP_DEFLATED, None),
        (zipfile.ZIP_BZIP2, "entry is compressed with bzip2; only stored and deflate entries are read"),
        (zipfile.ZIP_LZMA, "entry is compressed with lzma; only stored and deflate entries are read"),
    ],
)
def test_only_stored_and_deflated_entries_are_read(method: int, error: str | None) -> None:
    _, [item] = part_items(_zip({"a.png": png(np.zeros((28, 28), np.uint8))}, method), "a.zip", 0, 2**20)
    assert item.error == error


@pytest.mark.parametrize("declared", [None, 1], ids=["honest", "end-record-lies"])
def test_a_zip_with_too_many_entries_is_refused_before_it_is_listed(declared: int | None) -> None:
    archive = io.BytesIO(empty_entries_zip(70_000, declared))  # zip64 end records when honest
    with pytest.raises(UploadError) as refused:
        part_items(archive, "a.zip", 0, 2**20, EntryBudget(max_items=100))
    assert refused.value.status == 413 and "more than 1200 zip entries" in str(refused.value)


def test_the_entry_budget_leaves_room_for_macos_twins_and_is_shared_by_parts() -> None:
    image = png(np.zeros((28, 28), np.uint8))
    macos = _zip({f"{i}.png": image for i in range(100)} | {f"__MACOSX/._{i}.png": b"x" for i in range(100)})
    budget = EntryBudget(max_items=100)
    _, items = part_items(macos, "a.zip", 0, 2**20, budget)
    assert len(items) == 100 and budget.left == 1000
    with pytest.raises(UploadError):
        part_items(io.BytesIO(empty_entries_zip(1001)), "b.zip", 1, 2**20, budget)
