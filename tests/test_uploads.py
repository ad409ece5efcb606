"""Upload inspection: format sniffing, junk entries, unsafe names, chunking."""

import pytest

from api.uploads import Item, chunks, is_junk, sniff, unsafe_reason


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
